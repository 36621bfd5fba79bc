//! manifests/ builds and is valid, offline:
//!
//! - `kubectl kustomize` builds every overlay and example (in a temporary copy with a stand-in .wasm,
//!   the build artifact `just manifests` copies in), and every object of a Kubernetes kind passes
//!   `kubernetes-validate --strict` (PyPI, pinned in scripts/setup.sh) against the 1.32 schemas;
//! - the custom resources (ServiceMonitor, Certificate/Issuer, WasmPlugin, EnvoyFilter) are checked
//!   structurally (apiVersion, kind, required and known fields); the EnvoyFilter's cluster is
//!   validated by the real Envoy (`--mode validate`);
//! - the DaemonSet and the sidecar get every file the rendered bootstrap names, and every file the
//!   SDS resources it loads name in turn, from a volume item or key (not merely a mounted
//!   directory); the DaemonSet probes Envoy's admin port and binds the ports the Services and
//!   ServiceMonitors use; the manifests' SDS files are the rendered ones;
//! - the ServiceMonitors' and the plain scrape config's relabelings, run through a small simulator of
//!   Prometheus relabeling, give job="kube-scheduler"… and instance="<node IP>:<port>" without the
//!   proxy pod's name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::{json, Value};

const K8S_VERSION: &str = "1.32.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(rel: &str) -> PathBuf {
    let p = root().join(rel);
    assert!(p.exists(), "{} is missing: run scripts/setup.sh (or ./run setup)", p.display());
    p
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of manifests/ with what `just manifests` would add: a stand-in .wasm (not valid wasm; only
/// its presence matters to kustomize) and the renderer's sidecar bootstrap.
fn manifests_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("manifests");
    copy_dir(&root().join("manifests"), &m);
    let fake_wasm: Vec<u8> = b"\0asm\x01\0\0\0".iter().copied().chain((0..=255u8).cycle().take(4096)).collect();
    for d in ["base", "examples/sidecar"] {
        std::fs::write(m.join(d).join("metrics_gate.wasm"), &fake_wasm).unwrap();
    }
    let sidecar = root().join("envoy/examples/sidecar.yaml");
    let text = std::fs::read_to_string(&sidecar).unwrap_or_else(|_| {
        eprintln!("note: {} not rendered yet; using a stand-in", sidecar.display());
        "{}\n".into()
    });
    std::fs::write(m.join("examples/sidecar/envoy-sidecar.yaml"), text).unwrap();
    dir
}

fn kustomize(dir: &Path) -> String {
    let out = Command::new("kubectl").arg("kustomize").arg(dir).output().expect("kubectl (with kustomize) must be installed");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `kubernetes-validate --strict` on `yaml`; Err(output) on any error.
fn k8s_validate(yaml: &str) -> Result<(), String> {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    let out = Command::new(tool(".venv/bin/kubernetes-validate"))
        .args(["--strict", "--no-warn", "-k", K8S_VERSION])
        .arg(file.path())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && !text.contains("ERROR") {
        Ok(())
    } else {
        Err(text)
    }
}

struct Built {
    name: &'static str,
    objects: Vec<Value>,
}

/// Every overlay and example, built and schema-validated.
fn build_all() -> Vec<Built> {
    let tmp = manifests_copy();
    let m = tmp.path().join("manifests");
    let mut built = Vec::new();
    for name in ["overlays/control-plane", "overlays/all-nodes", "examples/sidecar", "examples/istio"] {
        let yaml = kustomize(&m.join(name));
        k8s_validate(&yaml).unwrap_or_else(|e| panic!("{name}: Kubernetes schema validation failed:\n{e}"));
        built.push(Built { name, objects: docs(&yaml) });
    }
    for name in ["examples/cert-manager/certificate.yaml", "examples/prometheus-metrics-reader-binding.yaml"] {
        let yaml = std::fs::read_to_string(m.join(name)).unwrap();
        k8s_validate(&yaml).unwrap_or_else(|e| panic!("{name}: Kubernetes schema validation failed:\n{e}"));
        built.push(Built { name, objects: docs(&yaml) });
    }
    built
}

fn kind(o: &Value) -> (&str, &str) {
    (o["apiVersion"].as_str().unwrap_or(""), o["kind"].as_str().unwrap_or(""))
}

fn find<'a>(objs: &'a [Value], k: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == k && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {k} {name}"))
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().map(|m| m.keys().map(|k| k.as_str()).collect()).unwrap_or_default()
}

fn only_keys(what: &str, v: &Value, allowed: &[&str]) {
    for k in keys(v) {
        assert!(allowed.contains(&k), "{what}: unknown field {k:?} (known: {allowed:?})");
    }
}

// ---- Custom resources, structurally -------------------------------------------------------------

const RELABEL_FIELDS: &[&str] = &["sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"];
const RELABEL_ACTIONS: &[&str] = &[
    "replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase", "uppercase", "keepequal",
    "dropequal",
];

fn check_service_monitor(o: &Value) {
    let name = o["metadata"]["name"].as_str().unwrap();
    only_keys(name, &o["spec"], &[
        "selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels", "sampleLimit",
        "attachMetadata",
    ]);
    assert!(o["spec"]["selector"].is_object(), "{name}: spec.selector is required");
    let eps = o["spec"]["endpoints"].as_array().expect("spec.endpoints");
    assert!(!eps.is_empty(), "{name}: no endpoints");
    for ep in eps {
        only_keys(name, ep, &[
            "port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "tlsConfig", "bearerTokenFile",
            "bearerTokenSecret", "authorization", "honorLabels", "honorTimestamps", "relabelings",
            "metricRelabelings", "params", "followRedirects", "enableHttp2", "filterRunning",
        ]);
        assert!(ep["port"].is_string(), "{name}: endpoint.port (a Service port name) is required");
        assert!(matches!(ep["scheme"].as_str(), Some("http" | "https")), "{name}: scheme");
        only_keys(name, &ep["tlsConfig"], &[
            "ca", "caFile", "cert", "certFile", "keyFile", "keySecret", "serverName", "insecureSkipVerify",
        ]);
        if let Some(secret) = ep["tlsConfig"]["ca"].get("secret") {
            assert!(secret["name"].is_string() && secret["key"].is_string(), "{name}: tlsConfig.ca.secret");
        }
        for r in ep["relabelings"].as_array().into_iter().flatten() {
            only_keys(name, r, RELABEL_FIELDS);
            let action = r["action"].as_str().unwrap_or("replace");
            assert!(RELABEL_ACTIONS.contains(&action.to_ascii_lowercase().as_str()), "{name}: action {action}");
        }
    }
}

/// The filter's configuration fields (README, "Plugin configuration"); the filter refuses others.
const PLUGIN_FIELDS: &[&str] = &[
    "apiserver", "allowed_paths", "audiences", "authorization", "identity_headers", "retry_after_seconds",
    "max_token_bytes",
];

fn check_custom(o: &Value, envoy_checked: &mut usize) {
    let name = o["metadata"]["name"].as_str().unwrap_or("?").to_string();
    match kind(o) {
        ("monitoring.coreos.com/v1", "ServiceMonitor") => check_service_monitor(o),
        ("cert-manager.io/v1", "Issuer" | "ClusterIssuer") => {
            let spec = keys(&o["spec"]);
            let types = ["selfSigned", "ca", "acme", "vault", "venafi"];
            assert_eq!(spec.iter().filter(|k| types.contains(k)).count(), 1, "{name}: exactly one issuer type");
        }
        ("cert-manager.io/v1", "Certificate") => {
            let s = &o["spec"];
            only_keys(&name, s, &[
                "secretName", "issuerRef", "dnsNames", "ipAddresses", "uris", "commonName", "duration", "renewBefore",
                "isCA", "privateKey", "usages", "subject", "secretTemplate", "emailAddresses", "keystores",
                "revisionHistoryLimit",
            ]);
            assert!(s["secretName"].is_string(), "{name}: spec.secretName");
            assert!(s["issuerRef"]["name"].is_string(), "{name}: spec.issuerRef.name");
        }
        ("extensions.istio.io/v1alpha1", "WasmPlugin") => {
            let s = &o["spec"];
            only_keys(&name, s, &[
                "selector", "targetRef", "targetRefs", "url", "sha256", "imagePullPolicy", "imagePullSecret",
                "pluginConfig", "pluginName", "phase", "priority", "failStrategy", "vmConfig", "match", "type",
            ]);
            let url = s["url"].as_str().expect("spec.url");
            assert!(["oci://", "file://", "https://"].iter().any(|p| url.starts_with(p)), "{name}: url {url}");
            assert_eq!(s["phase"], "AUTHN", "{name}: runs before Istio's authorization");
            assert_eq!(s["failStrategy"], "FAIL_CLOSE", "{name}: must fail closed");
            only_keys(&format!("{name}.pluginConfig"), &s["pluginConfig"], PLUGIN_FIELDS);
        }
        ("networking.istio.io/v1alpha3", "EnvoyFilter") => {
            for p in o["spec"]["configPatches"].as_array().expect("spec.configPatches") {
                let apply_to = p["applyTo"].as_str().unwrap();
                assert!(["CLUSTER", "LISTENER", "HTTP_FILTER", "NETWORK_FILTER", "ROUTE_CONFIGURATION"].contains(&apply_to));
                assert!(p["patch"]["operation"].is_string(), "{name}: patch.operation");
                if apply_to == "CLUSTER" && p["patch"]["operation"] == "ADD" {
                    envoy_validate_cluster(&p["patch"]["value"]);
                    *envoy_checked += 1;
                }
            }
        }
        other => panic!("{name}: no check for {other:?}: add one to manifests_valid.rs"),
    }
}

/// Loads `cluster` into a bootstrap with the real Envoy in `--mode validate`, its files (SDS, token,
/// CA) provided in a temporary directory.
fn envoy_validate_cluster(cluster: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_string_lossy().into_owned();
    let ca = metrics_gate_host_tests::tls::TestCa::new("cluster-ca");
    std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
    std::fs::write(dir.path().join("token"), "proxy-token").unwrap();
    std::fs::write(dir.path().join("sds.yaml"), metrics_gate_envoy::sds_resource(&format!("{d}/token"))).unwrap();
    let text = cluster.to_string().replace("/etc/metrics-gate/credentials", &d);
    let bootstrap = json!({
        "node": {"id": "t", "cluster": "t"},
        "static_resources": {"clusters": [serde_json::from_str::<Value>(&text).unwrap()]},
    });
    let file = dir.path().join("bootstrap.json");
    std::fs::write(&file, bootstrap.to_string()).unwrap();
    let out = Command::new(tool(".venv/bin/envoy"))
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Envoy refuses the EnvoyFilter's cluster:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn overlays_and_examples_build_and_validate() {
    let built = build_all();
    let mut envoy_checked = 0;
    for b in &built {
        for o in &b.objects {
            let (api, _) = kind(o);
            let core = !api.contains('.') || api.ends_with(".k8s.io/v1") || api.starts_with("apps/");
            if !core {
                check_custom(o, &mut envoy_checked);
            }
        }
    }
    assert_eq!(envoy_checked, 1, "the Istio EnvoyFilter's cluster was not validated");
}

#[test]
fn validator_rejects_a_schema_error() {
    // Proves the validation above can fail: a DaemonSet with a string where an integer belongs.
    let broken = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers:\n      - name: c\n        image: i\n        ports: [{containerPort: ten}]\n";
    assert!(k8s_validate(broken).is_err(), "kubernetes-validate accepted a broken DaemonSet");
    let unknown_field = broken.replace("ports: [{containerPort: ten}]", "portz: []");
    assert!(k8s_validate(&unknown_field).is_err(), "strict validation accepted an unknown field");
}

// ---- The DaemonSet against the bootstrap it runs ------------------------------------------------

/// Every string value of `key` anywhere in `v`.
fn strings_of(v: &Value, key: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_string());
                    }
                }
                strings_of(x, key, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| strings_of(x, key, out)),
        _ => {}
    }
}

fn bootstrap_of(objs: &[Value]) -> Value {
    bootstrap_named(objs, "metrics-gate-bootstrap-")
}

fn bootstrap_named(objs: &[Value], prefix: &str) -> Value {
    let cm = objs
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"].as_str().unwrap().starts_with(prefix))
        .expect("bootstrap ConfigMap");
    let text = cm["data"]["envoy.yaml"].as_str().expect("data.envoy.yaml");
    docs(text).into_iter().next().expect("bootstrap document")
}

fn envoy_container(ds: &Value) -> &Value {
    ds["spec"]["template"]["spec"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == "envoy").unwrap()
}

fn mounted(container: &Value, path: &str) -> bool {
    container["volumeMounts"].as_array().unwrap().iter().any(|m| {
        let mp = m["mountPath"].as_str().unwrap();
        path == mp || path.starts_with(&format!("{}/", mp.trim_end_matches('/')))
    })
}

/// Where a file inside a container comes from.
#[derive(Debug)]
enum Source {
    /// A key of a ConfigMap built here (its text is known).
    ConfigMapKey { text: Option<String> },
    /// A key of a Secret, a ServiceAccount token, or the pod's automounted ServiceAccount files.
    Provided,
    /// A file in an emptyDir that an init container writes.
    InitWritten,
    /// A directory: a mount point.
    Directory,
}

/// The keys a `configMap`/`secret` volume or projected source puts in the volume, with the
/// ConfigMap's text for each key when the ConfigMap is built here. External objects must list
/// `items`, except the serving Secret, a `kubernetes.io/tls` Secret (tls.crt, tls.key).
fn source_keys(objs: &[Value], kind: &str, src: &Value) -> Result<Vec<(String, Option<String>)>, String> {
    let name = src["name"].as_str().or_else(|| src["secretName"].as_str()).unwrap_or("?");
    let obj = objs.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name);
    let text_of = |key: &str| obj.and_then(|o| o["data"][key].as_str().map(String::from));
    if let Some(items) = src["items"].as_array() {
        let mut out = Vec::new();
        for i in items {
            let key = i["key"].as_str().unwrap();
            if let Some(o) = obj {
                if o["data"].get(key).is_none() && o["binaryData"].get(key).is_none() {
                    return Err(format!("{kind} {name} has no key {key}"));
                }
            }
            out.push((i["path"].as_str().unwrap().to_string(), text_of(key)));
        }
        return Ok(out);
    }
    match obj {
        Some(o) => Ok(keys(&o["data"]).into_iter().chain(keys(&o["binaryData"])).map(|k| (k.to_string(), text_of(k))).collect()),
        None if kind == "Secret" => Ok(vec![("tls.crt".into(), None), ("tls.key".into(), None)]),
        None => Err(format!("{kind} {name} is not built here and lists no items")),
    }
}

/// What provides `path` inside `container` of `pod`: a volume item or key, not merely a mounted
/// directory. Err says why nothing does.
fn resolve(objs: &[Value], pod: &Value, container: &Value, path: &str) -> Result<Source, String> {
    let inside = |mp: &str| path == mp || path.starts_with(&format!("{}/", mp.trim_end_matches('/')));
    let mounts = container["volumeMounts"].as_array().unwrap();
    let Some(m) = mounts.iter().filter(|m| inside(m["mountPath"].as_str().unwrap())).max_by_key(|m| m["mountPath"].as_str().unwrap().len()) else {
        const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
        if pod["automountServiceAccountToken"] != false && inside(SA_DIR) {
            let rel = path.strip_prefix(SA_DIR).unwrap().trim_start_matches('/');
            return match rel {
                "" => Ok(Source::Directory),
                "ca.crt" | "token" | "namespace" => Ok(Source::Provided),
                _ => Err(format!("the automounted ServiceAccount volume has no {rel}")),
            };
        }
        return Err("not mounted".into());
    };
    let mount_path = m["mountPath"].as_str().unwrap();
    let mut rel = path[mount_path.len()..].trim_start_matches('/').to_string();
    if let Some(sub) = m["subPath"].as_str() {
        rel = if rel.is_empty() { sub.to_string() } else { format!("{sub}/{rel}") };
    }
    if rel.is_empty() {
        return Ok(Source::Directory);
    }
    let name = m["name"].as_str().unwrap();
    let vol = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).ok_or(format!("no volume {name}"))?;
    let mut files = Vec::new();
    if vol["configMap"].is_object() {
        files = source_keys(objs, "ConfigMap", &vol["configMap"])?;
    } else if vol["secret"].is_object() {
        files = source_keys(objs, "Secret", &vol["secret"])?.into_iter().map(|(k, _)| (k, None)).collect();
    } else if let Some(sources) = vol["projected"]["sources"].as_array() {
        for s in sources {
            if s["configMap"].is_object() {
                files.extend(source_keys(objs, "ConfigMap", &s["configMap"])?);
            } else if s["secret"].is_object() {
                files.extend(source_keys(objs, "Secret", &s["secret"])?.into_iter().map(|(k, _)| (k, None)));
            } else if let Some(p) = s["serviceAccountToken"]["path"].as_str() {
                files.push((p.to_string(), None));
            } else {
                return Err(format!("volume {name}: projected source {s} not understood"));
            }
        }
    } else if vol["emptyDir"].is_object() {
        // Written by an init container that mounts the same volume.
        let inits = pod["initContainers"].as_array().cloned().unwrap_or_default();
        let written = inits.iter().any(|c| {
            let script = c["command"].to_string() + &c["args"].to_string();
            c["volumeMounts"].as_array().into_iter().flatten().any(|im| {
                im["name"] == name && script.contains(&format!("> {}/{rel}", im["mountPath"].as_str().unwrap().trim_end_matches('/')))
            })
        });
        return if written { Ok(Source::InitWritten) } else { Err(format!("emptyDir {name}: no init container writes {rel}")) };
    } else {
        return Err(format!("volume {name}: kind not understood"));
    }
    let is_secret = vol["secret"].is_object();
    if let Some((_, text)) = files.iter().find(|(k, _)| *k == rel) {
        return Ok(if is_secret || text.is_none() { Source::Provided } else { Source::ConfigMapKey { text: text.clone() } });
    }
    if files.iter().any(|(k, _)| k.starts_with(&format!("{rel}/"))) {
        return Ok(Source::Directory);
    }
    let have: Vec<&str> = files.iter().map(|(k, _)| k.as_str()).collect();
    Err(format!("volume {name} holds only {have:?}"))
}

/// Absolute file and directory paths `v` names (`filename`, `path`), route paths excepted.
fn files_named(v: &Value) -> Vec<String> {
    let mut files = Vec::new();
    strings_of(v, "filename", &mut files);
    strings_of(v, "path", &mut files);
    files.retain(|f| f.starts_with('/') && !f.starts_with("/apis/"));
    files.sort();
    files.dedup();
    files
}

/// Every file the bootstrap reads, and every file the SDS resources it loads read in turn, is
/// provided by a volume item or key of `container` (not merely inside a mounted directory); every
/// SDS resource file is a ConfigMap key built here. Returns the problems.
fn check_files_provided(objs: &[Value], pod: &Value, container: &Value, boot: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut sds_paths = Vec::new();
    let mut sources = Vec::new();
    collect_key(boot, "path_config_source", &mut sources);
    for s in &sources {
        sds_paths.push(s["path"].as_str().unwrap().to_string());
    }
    if sds_paths.is_empty() {
        problems.push("the bootstrap loads no SDS resource file".into());
    }
    let mut todo: Vec<(String, String)> = files_named(boot).into_iter().map(|f| (f, "the bootstrap".to_string())).collect();
    let mut seen = Vec::new();
    while let Some((f, by)) = todo.pop() {
        if seen.contains(&f) {
            continue;
        }
        seen.push(f.clone());
        match resolve(objs, pod, container, &f) {
            Err(e) => problems.push(format!("{by} reads {f}, which no volume provides: {e}")),
            Ok(Source::ConfigMapKey { text: Some(text) }) if sds_paths.contains(&f) => match serde_yaml_ng::from_str::<Value>(&text) {
                Ok(sds) if sds["resources"].is_array() => {
                    todo.extend(files_named(&sds).into_iter().map(|g| (g, f.clone())));
                }
                _ => problems.push(format!("{f} (SDS) is not an SDS resource file")),
            },
            Ok(other) if sds_paths.contains(&f) => {
                problems.push(format!("{f} (SDS) is not a ConfigMap key built here: {other:?}"))
            }
            Ok(_) => {}
        }
    }
    problems
}

/// Every object value of `key` anywhere in `v`.
fn collect_key(v: &Value, key: &str, out: &mut Vec<Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    out.push(x.clone());
                }
                collect_key(x, key, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_key(x, key, out)),
        _ => {}
    }
}

#[test]
fn daemonset_runs_the_bootstrap_it_ships() {
    let built = build_all();
    for b in built.iter().filter(|b| b.name.starts_with("overlays/")) {
        let objs = &b.objects;
        let ds = find(objs, "DaemonSet", "metrics-gate");
        let pod = &ds["spec"]["template"]["spec"];
        let envoy = envoy_container(ds);
        let boot = bootstrap_of(objs);
        let n = b.name;

        // Placement and hardening.
        assert_eq!(pod["hostNetwork"], true, "{n}");
        assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet", "{n}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{n}");
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{n}");
        for c in pod["containers"].as_array().unwrap().iter().chain(pod["initContainers"].as_array().unwrap()) {
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{n}");
            assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]), "{n}");
            assert!(c["resources"]["limits"]["memory"].is_string(), "{n}: memory limit");
            assert!(c["image"].as_str().unwrap().starts_with("envoyproxy/envoy:v1.40."), "{n}: stock Envoy 1.40");
        }

        // Files: everything the bootstrap reads is mounted into the envoy container.
        let mut files = Vec::new();
        strings_of(&boot, "filename", &mut files);
        strings_of(&boot, "path", &mut files);
        files.retain(|f| f.starts_with("/etc/") || f.starts_with("/var/") || f.starts_with("/run/"));
        assert!(files.iter().any(|f| f.ends_with(".wasm")), "{n}: no .wasm in the bootstrap");
        for f in &files {
            assert!(mounted(envoy, f), "{n}: the bootstrap reads {f}, which the envoy container does not mount");
        }
        let problems = check_files_provided(objs, pod, envoy, &boot);
        assert!(problems.is_empty(), "{n}:\n{}", problems.join("\n"));
        let args: Vec<&str> = envoy["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let config = args.iter().skip_while(|a| **a != "--config-path" && **a != "-c").nth(1).expect("--config-path");
        assert!(mounted(envoy, config), "{n}: {config} not mounted");
        assert!(matches!(resolve(objs, pod, envoy, config), Ok(Source::InitWritten)), "{n}: nothing writes {config}");

        // The credentials volume: the SDS file and the token side by side, the token with the
        // apiserver's audience (the apiserver must accept it for the review callouts).
        let vols = pod["volumes"].as_array().unwrap();
        let cred = vols.iter().find(|v| v["name"] == "credentials").expect("credentials volume");
        let sources = cred["projected"]["sources"].as_array().unwrap();
        let sat = sources.iter().find_map(|s| s.get("serviceAccountToken")).expect("serviceAccountToken");
        assert!(sat.get("audience").is_none(), "{n}: the proxy's token must carry the apiserver's audience");
        let sds_cm = sources.iter().find_map(|s| s.get("configMap")).expect("sds configMap");
        let sds_cm = find(objs, "ConfigMap", sds_cm["name"].as_str().unwrap());
        let sds: Value = serde_yaml_ng::from_str(sds_cm["data"]["sds.yaml"].as_str().unwrap()).unwrap();
        let cred_mount = envoy["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "credentials").unwrap();
        let token_file = format!("{}/{}", cred_mount["mountPath"].as_str().unwrap(), sat["path"].as_str().unwrap());
        let want: Value = serde_json::from_str(&metrics_gate_envoy::sds_resource(&token_file)).unwrap();
        assert_eq!(sds, want, "{n}: sds.yaml does not name the projected token {token_file}");
        assert!(
            files.contains(&format!("{}/sds.yaml", cred_mount["mountPath"].as_str().unwrap())),
            "{n}: the bootstrap's SDS path is not the projected sds.yaml"
        );

        // Probes hit the admin port on loopback.
        let admin = &boot["admin"]["address"]["socket_address"];
        assert_eq!(admin["address"], "127.0.0.1", "{n}: admin must stay on loopback");
        for probe in ["readinessProbe", "livenessProbe"] {
            let get = &envoy[probe]["httpGet"];
            assert_eq!(get["host"], "127.0.0.1", "{n} {probe}");
            assert_eq!(get["port"], admin["port_value"], "{n} {probe}: not Envoy's admin port");
            assert_eq!(get["path"], "/ready", "{n} {probe}");
        }

        // Listeners: ${NODE_IP}, and exactly the ports of the containerPorts and the Services.
        let mut listener_ports = Vec::new();
        for l in boot["static_resources"]["listeners"].as_array().unwrap() {
            let sa = &l["address"]["socket_address"];
            if sa.is_object() {
                assert_eq!(sa["address"], "${NODE_IP}", "{n}: listener {} not on the node IP placeholder", l["name"]);
                listener_ports.push(sa["port_value"].as_u64().unwrap());
            }
        }
        listener_ports.sort();
        let mut container_ports: Vec<u64> =
            envoy["ports"].as_array().unwrap().iter().map(|p| p["containerPort"].as_u64().unwrap()).collect();
        container_ports.sort();
        assert_eq!(container_ports, listener_ports, "{n}: containerPorts vs bootstrap listeners");
        let mut service_ports: Vec<u64> = objs
            .iter()
            .filter(|o| o["kind"] == "Service")
            .flat_map(|s| s["spec"]["ports"].as_array().unwrap().iter().map(|p| p["targetPort"].as_u64().unwrap()))
            .collect();
        service_ports.sort();
        assert_eq!(service_ports, listener_ports, "{n}: Service ports vs bootstrap listeners");
        for s in objs.iter().filter(|o| o["kind"] == "Service") {
            assert_eq!(s["spec"]["clusterIP"], "None", "{n}: headless");
            assert_eq!(s["spec"]["selector"], ds["spec"]["selector"]["matchLabels"], "{n}: selects the DaemonSet");
        }
    }
}

#[test]
fn sidecar_runs_the_bootstrap_it_ships() {
    let built = build_all();
    let objs = &built.iter().find(|b| b.name == "examples/sidecar").unwrap().objects;
    let deploy = find(objs, "Deployment", "my-controller");
    let pod = &deploy["spec"]["template"]["spec"];
    let envoy = pod["containers"].as_array().unwrap().iter().find(|c| c["name"] == "metrics-gate").expect("sidecar");
    let boot = bootstrap_named(objs, "metrics-gate-sidecar-bootstrap-");
    // The stand-in manifests_copy() writes when envoy/examples/sidecar.yaml is missing has no listeners.
    assert!(boot["static_resources"]["listeners"].is_array(), "the sidecar bootstrap is not rendered");
    let problems = check_files_provided(objs, pod, envoy, &boot);
    assert!(problems.is_empty(), "examples/sidecar:\n{}", problems.join("\n"));
    let args: Vec<&str> = envoy["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let config = args.iter().skip_while(|a| **a != "--config-path").nth(1).expect("--config-path");
    assert!(matches!(resolve(objs, pod, envoy, config), Ok(Source::InitWritten)), "nothing writes {config}");
    // The listener port is the container port the Service targets.
    let listener = boot["static_resources"]["listeners"].as_array().unwrap().iter().find(|l| l["address"].is_object()).unwrap();
    let port = &listener["address"]["socket_address"]["port_value"];
    let cport = envoy["ports"].as_array().unwrap().iter().find(|p| p["name"] == "https-metrics").expect("https-metrics");
    assert_eq!(&cport["containerPort"], port);
}

#[test]
fn a_missing_volume_item_is_caught() {
    // Proves check_files_provided looks at the items, not only at the mounted directory: without
    // the serving-certificate.yaml item, the credentials directory is still mounted, yet Envoy
    // would find no file there.
    let built = build_all();
    let objs = &built.iter().find(|b| b.name == "overlays/control-plane").unwrap().objects;
    let mut ds = find(objs, "DaemonSet", "metrics-gate").clone();
    let pod = &mut ds["spec"]["template"]["spec"];
    let cred = pod["volumes"].as_array_mut().unwrap().iter_mut().find(|v| v["name"] == "credentials").unwrap();
    let items = cred["projected"]["sources"][0]["configMap"]["items"].as_array_mut().unwrap();
    items.retain(|i| i["key"] != "serving-certificate.yaml");
    let envoy = envoy_container(&ds).clone();
    let problems = check_files_provided(objs, &ds["spec"]["template"]["spec"], &envoy, &bootstrap_of(objs));
    assert!(
        problems.iter().any(|p| p.contains("/etc/metrics-gate/credentials/serving-certificate.yaml")),
        "{problems:?}"
    );
    // And the files the SDS resources name are followed: a Secret item list without tls.key.
    let mut ds = find(objs, "DaemonSet", "metrics-gate").clone();
    let tls = ds["spec"]["template"]["spec"]["volumes"].as_array_mut().unwrap().iter_mut().find(|v| v["name"] == "tls").unwrap();
    tls["secret"]["items"] = json!([{"key": "tls.crt", "path": "tls.crt"}]);
    let problems = check_files_provided(objs, &ds["spec"]["template"]["spec"], &envoy, &bootstrap_of(objs));
    assert!(problems.iter().any(|p| p.contains("/etc/metrics-gate/tls/tls.key")), "{problems:?}");
}

/// kustomize reads only files under its own directory: the manifests carry copies of the rendered
/// SDS resource files, which `just render` refreshes.
#[test]
fn shipped_sds_files_are_the_rendered_ones() {
    for dir in ["manifests/base", "manifests/examples/sidecar"] {
        for file in ["sds.yaml", "serving-certificate.yaml"] {
            let rendered = std::fs::read_to_string(root().join("envoy/examples/sds").join(file)).unwrap();
            let copy = std::fs::read_to_string(root().join(dir).join(file)).unwrap_or_default();
            assert!(copy == rendered, "{dir}/{file} differs from envoy/examples/sds/{file}: run `just render`");
        }
    }
    let sds: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(root().join("manifests/base/sds.yaml")).unwrap()).unwrap();
    let want: Value =
        serde_json::from_str(&metrics_gate_envoy::sds_resource("/etc/metrics-gate/credentials/token")).unwrap();
    assert_eq!(sds, want, "sds.yaml must name the projected token");
}

// ---- Relabeling ---------------------------------------------------------------------------------

/// The subset of RE2 the shipped relabelings use, anchored as Prometheus anchors them: literals,
/// top-level alternation, and `(.*)`/`(.+)` capturing everything. Anything else is refused, so the
/// simulator never silently misreads a rule.
fn regex_match(re: &str, value: &str) -> Option<Vec<String>> {
    match re {
        "(.*)" => return Some(vec![value.to_string(), value.to_string()]),
        "(.+)" => return (!value.is_empty()).then(|| vec![value.to_string(), value.to_string()]),
        _ => {}
    }
    assert!(
        !re.contains(['(', ')', '[', ']', '*', '+', '?', '.', '\\', '^', '$', '{']),
        "relabel simulator: unsupported regex {re:?}"
    );
    re.split('|').any(|alt| alt == value).then(|| vec![value.to_string()])
}

fn expand(replacement: &str, groups: &[String]) -> String {
    let mut out = replacement.to_string();
    for (i, g) in groups.iter().enumerate().rev() {
        out = out.replace(&format!("${{{i}}}"), g).replace(&format!("${i}"), g);
    }
    out
}

/// Applies relabel rules (Operator camelCase or Prometheus snake_case). None = target dropped.
fn relabel(mut labels: BTreeMap<String, String>, rules: &[Value]) -> Option<BTreeMap<String, String>> {
    for r in rules {
        let get = |camel: &str, snake: &str| r.get(camel).or_else(|| r.get(snake)).cloned();
        let action = get("action", "action").and_then(|v| v.as_str().map(str::to_lowercase)).unwrap_or("replace".into());
        let regex = get("regex", "regex").and_then(|v| v.as_str().map(String::from)).unwrap_or("(.*)".into());
        let sep = get("separator", "separator").and_then(|v| v.as_str().map(String::from)).unwrap_or(";".into());
        let sources: Vec<String> = get("sourceLabels", "source_labels")
            .map(|v| v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        let value = sources.iter().map(|s| labels.get(s).cloned().unwrap_or_default()).collect::<Vec<_>>().join(&sep);
        match action.as_str() {
            "replace" => {
                let target = get("targetLabel", "target_label").and_then(|v| v.as_str().map(String::from)).unwrap();
                let replacement =
                    get("replacement", "replacement").and_then(|v| v.as_str().map(String::from)).unwrap_or("$1".into());
                if let Some(groups) = regex_match(&regex, &value) {
                    let v = expand(&replacement, &groups);
                    if v.is_empty() {
                        labels.remove(&target);
                    } else {
                        labels.insert(target, v);
                    }
                }
            }
            "keep" => {
                regex_match(&regex, &value)?;
            }
            "drop" => {
                if regex_match(&regex, &value).is_some() {
                    return None;
                }
            }
            "labeldrop" => labels.retain(|k, _| regex_match(&regex, k).is_none()),
            other => panic!("relabel simulator: action {other} not supported"),
        };
    }
    Some(labels)
}

/// Discovered labels of one endpoint of a metrics-gate Service (role endpoints) on node `cp-1`.
fn discovered(target: &str, port: u16) -> BTreeMap<String, String> {
    [
        ("__address__", format!("10.0.0.7:{port}")),
        ("__scheme__", "https".into()),
        ("__metrics_path__", "/metrics".into()),
        ("__meta_kubernetes_namespace", "metrics-gate".into()),
        ("__meta_kubernetes_service_name", format!("metrics-gate-{target}")),
        ("__meta_kubernetes_service_label_metrics_gate_target", target.into()),
        ("__meta_kubernetes_endpoint_port_name", "https-metrics".into()),
        ("__meta_kubernetes_pod_name", "metrics-gate-x7k2p".into()),
        ("__meta_kubernetes_pod_container_name", "envoy".into()),
        ("__meta_kubernetes_pod_node_name", "cp-1".into()),
        ("__meta_kubernetes_pod_host_ip", "10.0.0.7".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// What the Prometheus Operator's generated relabel_configs add before a ServiceMonitor's own
/// (namespace, service, pod, container, endpoint; job = the Service's name).
fn operator_defaults(mut l: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let set = |l: &mut BTreeMap<String, String>, k: &str, from: &str| {
        let v = l.get(from).cloned().unwrap_or_default();
        l.insert(k.to_string(), v);
    };
    set(&mut l, "namespace", "__meta_kubernetes_namespace");
    set(&mut l, "service", "__meta_kubernetes_service_name");
    set(&mut l, "pod", "__meta_kubernetes_pod_name");
    set(&mut l, "container", "__meta_kubernetes_pod_container_name");
    set(&mut l, "job", "__meta_kubernetes_service_name");
    set(&mut l, "endpoint", "__meta_kubernetes_endpoint_port_name");
    l
}

/// Prometheus's own last steps: instance defaults to __address__, `__`-labels are dropped.
fn finish(mut l: BTreeMap<String, String>) -> BTreeMap<String, String> {
    if !l.contains_key("instance") {
        let a = l["__address__"].clone();
        l.insert("instance".into(), a);
    }
    l.retain(|k, _| !k.starts_with("__"));
    l
}

const COMPONENTS: [(&str, u16, &str); 4] = [
    ("kube-controller-manager", 10257, "kube-controller-manager"),
    ("kube-scheduler", 10259, "kube-scheduler"),
    ("kube-proxy", 10249, "kube-proxy"),
    ("etcd", 2381, "kube-etcd"),
];

fn assert_component_labels(what: &str, l: &BTreeMap<String, String>, job: &str, port: u16) {
    assert_eq!(l.get("job").map(String::as_str), Some(job), "{what}: {l:?}");
    assert_eq!(l.get("instance"), Some(&format!("10.0.0.7:{port}")), "{what}: {l:?}");
    assert_eq!(l.get("node").map(String::as_str), Some("cp-1"), "{what}: {l:?}");
    assert!(!l.contains_key("pod") && !l.contains_key("container"), "{what}: the proxy pod leaks: {l:?}");
}

#[test]
fn service_monitors_give_component_job_and_instance_labels() {
    let built = build_all();
    let mut seen = 0;
    for b in built.iter().filter(|b| b.name.starts_with("overlays/")) {
        for sm in b.objects.iter().filter(|o| o["kind"] == "ServiceMonitor") {
            let target = sm["spec"]["selector"]["matchLabels"]["metrics-gate/target"].as_str().unwrap();
            let (_, port, job) = COMPONENTS.iter().find(|c| c.0 == target).unwrap();
            let service = b
                .objects
                .iter()
                .find(|o| o["kind"] == "Service" && o["metadata"]["labels"]["metrics-gate/target"] == target)
                .unwrap_or_else(|| panic!("{}: no Service for {target}", b.name));
            let ep = &sm["spec"]["endpoints"][0];
            let sport = service["spec"]["ports"].as_array().unwrap().iter().find(|p| p["name"] == ep["port"]);
            assert_eq!(sport.map(|p| p["port"].as_u64().unwrap()), Some(*port as u64), "{}: endpoint port", b.name);
            assert_eq!(ep["scheme"], "https", "{}: callers send bearer tokens: TLS only", b.name);
            assert!(ep["tlsConfig"]["serverName"].is_string(), "{}: serverName", b.name);
            let rules = ep["relabelings"].as_array().unwrap();
            let l = relabel(operator_defaults(discovered(target, *port)), rules).expect("target kept");
            assert_component_labels(&format!("{} {}", b.name, sm["metadata"]["name"]), &finish(l), job, *port);
            seen += 1;
        }
    }
    assert_eq!(seen, 5, "4 ServiceMonitors (control-plane) + 1 (all-nodes)");
}

#[test]
fn plain_prometheus_scrape_configs_select_and_label_each_component() {
    let cfg: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(root().join("manifests/prometheus/scrape-configs.yaml")).unwrap())
            .unwrap();
    let jobs = cfg["scrape_configs"].as_array().unwrap();
    assert_eq!(jobs.len(), 4);
    for (target, port, job) in COMPONENTS {
        let j = jobs.iter().find(|j| j["job_name"] == job).unwrap_or_else(|| panic!("no job {job}"));
        assert_eq!(j["scheme"], "https");
        // Every job keeps exactly its own component's endpoints.
        for (other, oport, _) in COMPONENTS {
            let mut l = discovered(other, oport);
            l.insert("job".into(), job.into());
            let kept = relabel(l, j["relabel_configs"].as_array().unwrap());
            assert_eq!(kept.is_some(), other == target, "job {job} on {other}'s endpoints");
            if let Some(l) = kept {
                assert_component_labels(job, &finish(l), job, port);
            }
        }
    }

    // promtool (Debian's prometheus package) checks the rest; Debian builds Prometheus without the
    // Kubernetes service discovery, so static targets stand in for it, and the credential files
    // are temporary ones.
    let Ok(promtool) = which("promtool") else {
        eprintln!("note: promtool not installed; skipping `promtool check config`");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let ca = dir.path().join("ca.crt");
    std::fs::write(&token, "t").unwrap();
    std::fs::write(&ca, metrics_gate_host_tests::tls::TestCa::new("metrics-gate-ca").cert_pem()).unwrap();
    let mut cfg = cfg;
    for j in cfg["scrape_configs"].as_array_mut().unwrap() {
        j.as_object_mut().unwrap().remove("kubernetes_sd_configs").expect("kubernetes_sd_configs");
        j["static_configs"] = json!([{"targets": ["10.0.0.7:10259"]}]);
        j["authorization"]["credentials_file"] = json!(token.to_string_lossy());
        j["tls_config"]["ca_file"] = json!(ca.to_string_lossy());
    }
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, serde_yaml_ng::to_string(&cfg).unwrap()).unwrap();
    let out = Command::new(promtool).args(["check", "config"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "promtool check config:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
        .ok_or(())
}
