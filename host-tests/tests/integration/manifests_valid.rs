//! manifests/ builds and is valid, offline:
//!
//! - `kubectl kustomize` builds every overlay and example (in a temporary copy with a stand-in .wasm,
//!   the build artifact `just manifests` copies in), and every object of a Kubernetes kind passes
//!   `kubernetes-validate --strict` (PyPI, pinned in scripts/setup.sh) against the 1.32 schemas;
//! - the custom resources (ServiceMonitor, Certificate/Issuer, WasmPlugin, EnvoyFilter) are checked
//!   structurally (apiVersion, kind, required and known fields; ServiceMonitors authenticate with
//!   `authorization.credentials`, never the deprecated `bearerTokenFile`); the EnvoyFilter's cluster
//!   is validated by the real Envoy (`--mode validate`);
//! - the DaemonSets and the sidecar get every file the rendered bootstrap names, and every file the
//!   SDS resources it loads name in turn, from a volume item or key (not merely a mounted
//!   directory); no two mounts of a container are one directory (the image's /var/run is /run); the
//!   DaemonSet probes Envoy's admin, binds the ports the Services and ServiceMonitors use, drains
//!   in a preStop hook that matches Envoy's flags and the admin socket, runs as
//!   system-node-critical with a memory request above the measured peak, in a namespace whose Pod
//!   Security level admits it; the manifests' SDS files are the rendered ones;
//! - placement, on a table of kubeadm, k3s, RKE2, worker and Windows nodes: the control-plane
//!   overlay takes exactly the control-plane nodes, the workers overlay exactly the other Linux
//!   nodes, all-nodes every Linux node; overlays applied together share no object and no two
//!   DaemonSets select each other's pods;
//! - the ServiceMonitors' and the plain scrape config's relabelings, run through a simulator of
//!   Prometheus relabeling (and of the Operator's generated relabelings), give exactly job,
//!   instance (<node IP>:<port>), namespace, service and endpoint: the labels kube-prometheus-stack's
//!   own scrapes give (host-tests/tests/integration/kube_prometheus_rules.rs runs the chart's rules on them).

use crate::support::kustomize;
use crate::support::relabel;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::{json, Value};

use kustomize::{docs, kustomize, manifests_copy, root, tool, which};
use relabel::{scrape_config_labels, service_monitor_labels, Endpoint, Labels};

const K8S_VERSION: &str = "1.32.0";

/// Every overlay, and the sets of them that are applied together (docs/deploying.md). Overlays in
/// different sets are alternatives: control-plane and all-nodes share names and ports on purpose.
const OVERLAYS: [&str; 3] = ["overlays/control-plane", "overlays/all-nodes", "overlays/workers"];
const APPLIED_TOGETHER: &[&[&str]] = &[&["overlays/control-plane", "overlays/workers"], &["overlays/all-nodes"]];

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
    for name in OVERLAYS.into_iter().chain(["examples/sidecar", "examples/istio"]) {
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

fn objects_of<'a>(built: &'a [Built], name: &str) -> &'a [Value] {
    &built.iter().find(|b| b.name == name).unwrap_or_else(|| panic!("{name} not built")).objects
}

fn kind(o: &Value) -> (&str, &str) {
    (o["apiVersion"].as_str().unwrap_or(""), o["kind"].as_str().unwrap_or(""))
}

fn name_of(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("?")
}

fn find<'a>(objs: &'a [Value], k: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == k && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {k} {name}"))
}

/// The one DaemonSet of an overlay.
fn daemonset(objs: &[Value]) -> &Value {
    let all: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "DaemonSet").collect();
    assert_eq!(all.len(), 1, "one DaemonSet per overlay");
    all[0]
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().map(|m| m.keys().map(|k| k.as_str()).collect()).unwrap_or_default()
}

fn only_keys(what: &str, v: &Value, allowed: &[&str]) {
    for k in keys(v) {
        assert!(allowed.contains(&k), "{what}: unknown field {k:?} (known: {allowed:?})");
    }
}

/// Whether a label selector's `matchLabels` select an object with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("matchLabels");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// ---- Custom resources, structurally -------------------------------------------------------------

const RELABEL_FIELDS: &[&str] = &["sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"];
const RELABEL_ACTIONS: &[&str] = &[
    "replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase", "uppercase", "keepequal",
    "dropequal",
];

fn check_service_monitor(o: &Value, objs: &[Value]) {
    let name = name_of(o);
    only_keys(name, &o["spec"], &[
        "selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels", "sampleLimit",
        "attachMetadata", "scrapeClass",
    ]);
    assert!(o["spec"]["selector"].is_object(), "{name}: spec.selector is required");
    let eps = o["spec"]["endpoints"].as_array().expect("spec.endpoints");
    assert!(!eps.is_empty(), "{name}: no endpoints");
    for ep in eps {
        // bearerTokenFile and bearerTokenSecret are deprecated (Operator API: "use `authorization`
        // instead"); a file is refused outright where arbitraryFSAccessThroughSMs.deny is set.
        only_keys(name, ep, &[
            "port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "tlsConfig", "authorization",
            "honorLabels", "honorTimestamps", "relabelings", "metricRelabelings", "params", "followRedirects",
            "enableHttp2", "filterRunning",
        ]);
        assert!(ep["port"].is_string(), "{name}: endpoint.port (a Service port name) is required");
        assert!(matches!(ep["scheme"].as_str(), Some("http" | "https")), "{name}: scheme");
        only_keys(name, &ep["tlsConfig"], &[
            "ca", "caFile", "cert", "certFile", "keyFile", "keySecret", "serverName", "insecureSkipVerify",
        ]);
        if let Some(secret) = ep["tlsConfig"]["ca"].get("secret") {
            assert!(secret["name"].is_string() && secret["key"].is_string(), "{name}: tlsConfig.ca.secret");
        }
        // SafeAuthorization (monitoringv1): `type` (default Bearer, never Basic) and `credentials`, a
        // key of a Secret in the ServiceMonitor's namespace. No `credentialsFile` on a ServiceMonitor.
        let auth = &ep["authorization"];
        only_keys(&format!("{name}.authorization"), auth, &["type", "credentials"]);
        assert!(
            auth["type"].is_null() || auth["type"].as_str().is_some_and(|t| !t.eq_ignore_ascii_case("basic")),
            "{name}: authorization.type"
        );
        let cred = &auth["credentials"];
        only_keys(&format!("{name}.authorization.credentials"), cred, &["name", "key", "optional"]);
        let (secret, key) = (cred["name"].as_str(), cred["key"].as_str());
        assert!(secret.is_some() && key.is_some(), "{name}: authorization.credentials needs name and key");
        // The Secret is built here: a ServiceAccount token Secret of a ServiceAccount that may read
        // /metrics (metrics-reader), in the ServiceMonitor's namespace.
        let s = find(objs, "Secret", secret.unwrap());
        assert_eq!(s["metadata"]["namespace"], o["metadata"]["namespace"], "{name}: the Secret's namespace");
        assert_eq!(s["type"], "kubernetes.io/service-account-token", "{name}: {} is no ServiceAccount token", name_of(s));
        assert_eq!(key, Some("token"), "{name}: the token controller writes the key `token`");
        let sa = s["metadata"]["annotations"]["kubernetes.io/service-account.name"].as_str().expect("service-account.name");
        find(objs, "ServiceAccount", sa);
        assert!(
            objs.iter().any(|b| b["kind"] == "ClusterRoleBinding"
                && b["roleRef"]["name"] == "metrics-reader"
                && b["subjects"].as_array().unwrap().iter().any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa)),
            "{name}: {sa} is not bound to metrics-reader"
        );
        for r in ep["relabelings"].as_array().into_iter().flatten() {
            only_keys(name, r, RELABEL_FIELDS);
            let action = r["action"].as_str().unwrap_or("replace");
            assert!(RELABEL_ACTIONS.contains(&action.to_ascii_lowercase().as_str()), "{name}: action {action}");
        }
    }
}

/// The filter's configuration fields (filter/src/config.rs); the filter refuses others.
const PLUGIN_FIELDS: &[&str] = &[
    "apiserver", "allowed_paths", "audiences", "authorization", "identity_headers", "retry_after_seconds",
    "max_token_bytes", "cache", "max_callouts_in_flight", "max_reviews_per_second", "client_certificates", "forward_caller_credentials",
    "access_log", "local_token_verification",
];

fn check_custom(o: &Value, objs: &[Value], envoy_checked: &mut usize) {
    let name = name_of(o).to_string();
    match kind(o) {
        ("monitoring.coreos.com/v1", "ServiceMonitor") => check_service_monitor(o, objs),
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
            // Pinned: istio-proxy refuses any module whose digest differs (CRD pattern ^[a-f0-9]{64}$).
            let sha = s["sha256"].as_str().unwrap_or_else(|| panic!("{name}: sha256 must pin the module"));
            assert!(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{name}: sha256 {sha}");
            assert_eq!(s["phase"], "AUTHN", "{name}: runs before Istio's authorization");
            // FAIL_OPEN would skip the gate on a fatal error, i.e. serve the metrics to anyone.
            assert!(
                matches!(s["failStrategy"].as_str(), Some("FAIL_RELOAD" | "FAIL_CLOSE")),
                "{name}: failStrategy must fail closed (FAIL_RELOAD or FAIL_CLOSE), not {}",
                s["failStrategy"]
            );
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
                check_custom(o, &b.objects, &mut envoy_checked);
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

#[test]
fn service_monitors_use_authorization_not_bearer_token_file() {
    // Proves the structural check refuses the deprecated field.
    let built = build_all();
    let objs = objects_of(&built, "overlays/control-plane");
    let mut sm = find(objs, "ServiceMonitor", "kube-etcd").clone();
    sm["spec"]["endpoints"][0]["bearerTokenFile"] = json!("/var/run/secrets/kubernetes.io/serviceaccount/token");
    let caught = std::panic::catch_unwind(|| check_service_monitor(&sm, objs));
    assert!(caught.is_err(), "bearerTokenFile was accepted");
    let mut sm = find(objs, "ServiceMonitor", "kube-etcd").clone();
    sm["spec"]["endpoints"][0]["authorization"] = json!({"type": "Bearer", "credentialsFile": "/token"});
    assert!(std::panic::catch_unwind(|| check_service_monitor(&sm, objs)).is_err(), "credentialsFile was accepted");
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
    // The DaemonSet's own bootstrap ConfigMap (overlays/workers suffixes its names).
    let ds = daemonset(objs);
    let vol = ds["spec"]["template"]["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "bootstrap").unwrap();
    let name = vol["configMap"]["name"].as_str().unwrap();
    bootstrap_named(objs, name)
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

/// `v` without the subtrees under `keys`.
fn without_keys(v: &Value, keys: &[&str]) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| !keys.contains(&k.as_str())).map(|(k, x)| (k.clone(), without_keys(x, keys))).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| without_keys(x, keys)).collect()),
        other => other.clone(),
    }
}

/// Absolute file and directory paths `v` names (`filename`, `path`): not route paths, and not Unix
/// sockets (`pipe`: Envoy creates admin's, check_prestop checks where).
fn files_named(v: &Value) -> Vec<String> {
    let mut files = Vec::new();
    let v = without_keys(v, &["route_config", "pipe"]);
    strings_of(&v, "filename", &mut files);
    strings_of(&v, "path", &mut files);
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

fn str_args(c: &Value, field: &str) -> Vec<String> {
    c[field].as_array().map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

/// The value after `flag` in Envoy's arguments.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().skip_while(|a| *a != flag).nth(1).map(String::as_str)
}

#[test]
fn daemonset_runs_the_bootstrap_it_ships() {
    let built = build_all();
    for n in OVERLAYS {
        let objs = objects_of(&built, n);
        let ds = daemonset(objs);
        let pod = &ds["spec"]["template"]["spec"];
        let envoy = envoy_container(ds);
        let boot = bootstrap_of(objs);

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
        let args = str_args(envoy, "args");
        let config = flag(&args, "--config-path").or(flag(&args, "-c")).expect("--config-path");
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

        // Probes: Envoy's /ready. While admin is on loopback TCP, the kubelet probes it there; once
        // the bootstrap serves admin on a Unix socket only, the probes must go to a listener.
        let admin_tcp = &boot["admin"]["address"]["socket_address"];
        for probe in ["readinessProbe", "livenessProbe"] {
            let get = &envoy[probe]["httpGet"];
            assert_eq!(get["path"], "/ready", "{n} {probe}");
            if admin_tcp.is_object() {
                assert_eq!(admin_tcp["address"], "127.0.0.1", "{n}: admin must stay on loopback");
                assert_eq!(get["host"], "127.0.0.1", "{n} {probe}");
                assert_eq!(get["port"], admin_tcp["port_value"], "{n} {probe}: not Envoy's admin port");
            } else {
                check_probe_on_listener(&format!("{n} {probe}"), get, &boot);
            }
        }
        check_admin_socket(n, pod, envoy, &boot);

        // Listeners: ${NODE_IP}, and exactly the ports of the containerPorts; each one served by a
        // Service of the overlays applied with this one (apply_together checks the Services).
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
        for s in objs.iter().filter(|o| o["kind"] == "Service") {
            assert_eq!(s["spec"]["clusterIP"], "None", "{n}: headless");
        }
    }
}

/// Admin is a Unix socket: the probe asks a listener of the bootstrap (the gate's own, whose
/// health_check filter answers /ready) on the pod IP, over HTTPS when that listener serves TLS.
fn check_probe_on_listener(what: &str, get: &Value, boot: &Value) {
    let listener = boot["static_resources"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["address"]["socket_address"]["port_value"] == get["port"])
        .unwrap_or_else(|| panic!("{what}: admin is not on TCP ({}); probe a listener's /ready, not port {}", boot["admin"]["address"], get["port"]));
    assert!(get.get("host").is_none(), "{what}: the listener binds the pod's (node's) IP, the probe's default host");
    let text = listener.to_string();
    assert!(text.contains("envoy.filters.http.health_check") && text.contains(get["path"].as_str().unwrap()), "{what}: {} answers no {}", listener["name"], get["path"]);
    let tls = listener["filter_chains"].as_array().unwrap().iter().any(|c| c["transport_socket"].is_object());
    assert_eq!(get["scheme"].as_str().unwrap_or("HTTP"), if tls { "HTTPS" } else { "HTTP" }, "{what}: scheme");
}

/// When the bootstrap serves admin on a Unix socket, its directory is a writable emptyDir of the
/// pod's own in `container` (Envoy creates the socket; nothing else shares it).
fn check_admin_socket(n: &str, pod: &Value, container: &Value, boot: &Value) {
    let Some(socket) = boot.pointer("/admin/address/pipe/path").and_then(Value::as_str) else { return };
    let dir = socket.rsplit_once('/').unwrap().0;
    let m = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("{n}: nothing is mounted at {dir}, where Envoy creates its admin socket"));
    assert_ne!(m["readOnly"], true, "{n}: Envoy must be able to create {socket}");
    let vol = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == m["name"]).unwrap();
    assert!(vol["emptyDir"].is_object(), "{n}: {dir} must be an emptyDir of the pod's own");
}

/// A Kubernetes memory quantity in MiB (the forms used here: Ki, Mi, Gi).
fn mebibytes(q: &str) -> f64 {
    let (num, unit) = q.split_at(q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len()));
    let n: f64 = num.parse().unwrap_or_else(|_| panic!("quantity {q}"));
    match unit {
        "Ki" => n / 1024.0,
        "Mi" => n,
        "Gi" => n * 1024.0,
        _ => panic!("quantity {q}: unit {unit:?} not understood"),
    }
}

/// The peak RSS BENCHMARKS.md measured (VmHWM, new token per request), MiB.
const MEASURED_PEAK_MIB: f64 = 116.5;

/// Mount paths as the container sees them: /var/run is a symlink to /run in the image.
fn canonical_mount(p: &str) -> String {
    let p = p.trim_end_matches('/');
    match p.strip_prefix("/var/run") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/run{rest}"),
        _ => p.to_string(),
    }
}

/// Pairs of mounts of one container that are the same directory or nested in each other: the later
/// mount hides the earlier one (or part of it).
fn aliased_mounts(container: &Value) -> Vec<String> {
    let mounts: Vec<(String, String)> = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (m["mountPath"].as_str().unwrap().to_string(), canonical_mount(m["mountPath"].as_str().unwrap())))
        .collect();
    let mut out = Vec::new();
    for (i, (a, ca)) in mounts.iter().enumerate() {
        for (b, cb) in &mounts[i + 1..] {
            if ca == cb || cb.starts_with(&format!("{ca}/")) || ca.starts_with(&format!("{cb}/")) {
                out.push(format!("{a} and {b} are one directory tree ({ca} / {cb})"));
            }
        }
    }
    out
}

/// Every pod template of every build.
fn pod_templates(built: &[Built]) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for b in built {
        for o in b.objects.iter().filter(|o| matches!(o["kind"].as_str(), Some("DaemonSet" | "Deployment"))) {
            out.push((format!("{} {}", b.name, name_of(o)), &o["spec"]["template"]["spec"]));
        }
    }
    out
}

#[test]
fn no_two_mounts_are_one_directory() {
    let built = build_all();
    for (what, pod) in pod_templates(&built) {
        for c in pod["containers"].as_array().unwrap().iter().chain(pod["initContainers"].as_array().into_iter().flatten()) {
            let bad = aliased_mounts(c);
            assert!(bad.is_empty(), "{what} container {}: {}", c["name"], bad.join("; "));
        }
    }
    // Proves the check sees through the symlink: /var/run/x over /run/x.
    let c = json!({"volumeMounts": [{"mountPath": "/run/metrics-gate"}, {"mountPath": "/var/run/metrics-gate"}]});
    assert_eq!(aliased_mounts(&c).len(), 1);
}

/// The preStop hook's drain matches Envoy's flags, the admin socket and the grace period.
fn check_prestop(n: &str, pod: &Value, envoy: &Value, boot: &Value) {
    let cmd = str_args(&envoy["lifecycle"]["preStop"]["exec"], "command");
    assert!(cmd.len() == 6 && cmd[0] == "/usr/bin/perl" && cmd[1] == "-e", "{n}: preStop is `perl -e SCRIPT SOCKET DRAIN LIMIT`: {cmd:?}");
    let (socket, drain, limit) = (&cmd[3], cmd[4].parse::<u64>().unwrap(), cmd[5].parse::<u64>().unwrap());
    let args = str_args(envoy, "args");
    assert_eq!(flag(&args, "--drain-time-s"), Some(cmd[4].as_str()), "{n}: the hook waits --drain-time-s");
    assert_eq!(flag(&args, "--drain-strategy"), Some("immediate"), "{n}: close connections from the drain's start");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
    assert!(drain < limit && limit + 5 <= grace, "{n}: drain {drain} s < limit {limit} s <= grace {grace} s - 5 s");
    match boot.pointer("/admin/address/pipe/path").and_then(Value::as_str) {
        Some(path) => assert_eq!(path, socket, "{n}: the preStop hook must drain through the bootstrap's admin socket"),
        None => eprintln!(
            "note: {n}: the bootstrap's admin is still {}; the preStop hook targets {socket}",
            boot["admin"]["address"]
        ),
    }
}

#[test]
fn the_pod_survives_a_real_cluster() {
    let built = build_all();
    for n in OVERLAYS {
        let objs = objects_of(&built, n);
        let ds = daemonset(objs);
        let pod = &ds["spec"]["template"]["spec"];
        let envoy = envoy_container(ds);
        assert_eq!(pod["priorityClassName"], "system-node-critical", "{n}");
        assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux", "{n}");
        let req = mebibytes(envoy["resources"]["requests"]["memory"].as_str().unwrap());
        let lim = mebibytes(envoy["resources"]["limits"]["memory"].as_str().unwrap());
        assert!(req >= MEASURED_PEAK_MIB && lim >= 1.5 * req, "{n}: memory request {req} MiB, limit {lim} MiB");
        check_prestop(n, pod, envoy, &bootstrap_of(objs));
    }
    // The namespace admits hostNetwork and hostPorts (Pod Security `privileged`).
    for n in ["overlays/control-plane", "overlays/all-nodes"] {
        let ns = find(objects_of(&built, n), "Namespace", "metrics-gate");
        assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged", "{n}");
    }
}

// ---- Placement ----------------------------------------------------------------------------------

struct Node {
    name: &'static str,
    labels: &'static [(&'static str, &'static str)],
    /// key, value, effect
    taints: &'static [(&'static str, &'static str, &'static str)],
}

const LINUX: (&str, &str) = ("kubernetes.io/os", "linux");
const NODES: &[Node] = &[
    Node { name: "kubeadm-control-plane", labels: &[LINUX, ("node-role.kubernetes.io/control-plane", "")],
           taints: &[("node-role.kubernetes.io/control-plane", "", "NoSchedule")] },
    Node { name: "k3s-server", labels: &[LINUX, ("node-role.kubernetes.io/control-plane", "true"), ("node-role.kubernetes.io/master", "true")],
           taints: &[] },
    Node { name: "k3s-server-tainted", labels: &[LINUX, ("node-role.kubernetes.io/control-plane", "true"), ("node-role.kubernetes.io/master", "true")],
           taints: &[("node-role.kubernetes.io/control-plane", "true", "NoSchedule")] },
    Node { name: "rke2-server", labels: &[LINUX, ("node-role.kubernetes.io/control-plane", "true"), ("node-role.kubernetes.io/etcd", "true"), ("node-role.kubernetes.io/master", "true")],
           taints: &[("CriticalAddonsOnly", "true", "NoExecute")] },
    Node { name: "rke2-etcd-only", labels: &[LINUX, ("node-role.kubernetes.io/etcd", "true")],
           taints: &[("node-role.kubernetes.io/etcd", "true", "NoExecute")] },
    Node { name: "worker", labels: &[LINUX], taints: &[] },
    Node { name: "gpu-worker", labels: &[LINUX], taints: &[("nvidia.com/gpu", "present", "NoSchedule")] },
    Node { name: "windows-worker", labels: &[("kubernetes.io/os", "windows")], taints: &[("os", "windows", "NoSchedule")] },
];

/// Whether the DaemonSet controller places `pod` on `node` (nodeSelector, required node affinity,
/// NoSchedule/NoExecute taints against tolerations).
fn schedulable(pod: &Value, node: &Node) -> bool {
    let label = |k: &str| node.labels.iter().find(|(lk, _)| *lk == k).map(|(_, v)| *v);
    let selector_ok = pod["nodeSelector"].as_object().into_iter().flatten().all(|(k, v)| label(k) == v.as_str());
    let terms = pod.pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms");
    let affinity_ok = match terms.and_then(Value::as_array) {
        None => true,
        Some(terms) => terms.iter().any(|t| {
            t["matchExpressions"].as_array().unwrap().iter().all(|e| {
                let have = label(e["key"].as_str().unwrap());
                let values: Vec<&str> = e["values"].as_array().into_iter().flatten().map(|v| v.as_str().unwrap()).collect();
                match e["operator"].as_str().unwrap() {
                    "Exists" => have.is_some(),
                    "DoesNotExist" => have.is_none(),
                    "In" => have.is_some_and(|h| values.contains(&h)),
                    "NotIn" => have.is_none_or(|h| !values.contains(&h)),
                    op => panic!("operator {op}"),
                }
            })
        }),
    };
    let tolerations = pod["tolerations"].as_array().cloned().unwrap_or_default();
    let tolerated = |(key, value, effect): &(&str, &str, &str)| {
        tolerations.iter().any(|t| {
            let op = t["operator"].as_str().unwrap_or("Equal");
            let key_ok = match t["key"].as_str() {
                None | Some("") => op == "Exists",
                Some(k) => k == *key && (op == "Exists" || t["value"].as_str().unwrap_or("") == *value),
            };
            key_ok && t["effect"].as_str().is_none_or(|e| e.is_empty() || e == *effect)
        })
    };
    let taints_ok = node.taints.iter().filter(|t| t.2 != "PreferNoSchedule").all(tolerated);
    selector_ok && affinity_ok && taints_ok
}

fn placed(objs: &[Value]) -> BTreeSet<&'static str> {
    let pod = &daemonset(objs)["spec"]["template"]["spec"];
    NODES.iter().filter(|node| schedulable(pod, node)).map(|n| n.name).collect()
}

#[test]
fn placement_matches_kubeadm_k3s_and_rke2_nodes() {
    let built = build_all();
    let control_plane = placed(objects_of(&built, "overlays/control-plane"));
    let workers = placed(objects_of(&built, "overlays/workers"));
    let all_nodes = placed(objects_of(&built, "overlays/all-nodes"));
    let set = |names: &[&'static str]| names.iter().copied().collect::<BTreeSet<_>>();
    assert_eq!(control_plane, set(&["kubeadm-control-plane", "k3s-server", "k3s-server-tainted", "rke2-server"]));
    assert_eq!(workers, set(&["rke2-etcd-only", "worker", "gpu-worker"]));
    assert_eq!(all_nodes, &control_plane | &workers, "all-nodes: every Linux node");
    assert!(control_plane.is_disjoint(&workers), "a node with both DaemonSets would bind 10249 twice");
    // The affinity asks for the label to exist: kubeadm's "" and k3s/RKE2's "true" alike.
    let pod = &daemonset(objects_of(&built, "overlays/control-plane"))["spec"]["template"]["spec"];
    let expr = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"][0];
    assert_eq!((expr["key"].as_str(), expr["operator"].as_str()), (Some("node-role.kubernetes.io/control-plane"), Some("Exists")));
}

// ---- Overlays applied together ------------------------------------------------------------------

/// Problems of a set of overlays applied to one cluster: an object in two of them, DaemonSets that
/// share a name or select each other's pods.
fn conflicts(set: &[(&str, &[Value])]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<(String, String, String), &str> = BTreeMap::new();
    for (overlay, objs) in set {
        for o in objs.iter() {
            let id = (
                o["kind"].as_str().unwrap().to_string(),
                o["metadata"]["namespace"].as_str().unwrap_or("").to_string(),
                name_of(o).to_string(),
            );
            if let Some(other) = seen.insert(id.clone(), overlay) {
                problems.push(format!("{} {}/{} is in {other} and {overlay}", id.0, id.1, id.2));
            }
        }
    }
    let dss: Vec<(&str, &Value)> =
        set.iter().flat_map(|(n, objs)| objs.iter().filter(|o| o["kind"] == "DaemonSet").map(move |o| (*n, o))).collect();
    for (i, (na, a)) in dss.iter().enumerate() {
        for (j, (nb, b)) in dss.iter().enumerate() {
            if i != j && selects(&a["spec"]["selector"]["matchLabels"], &b["spec"]["template"]["metadata"]["labels"]) {
                problems.push(format!(
                    "DaemonSet {} ({na}) selects the pods of DaemonSet {} ({nb}): {}",
                    name_of(a), name_of(b), a["spec"]["selector"]["matchLabels"]
                ));
            }
        }
    }
    problems
}

#[test]
fn overlays_applied_together_share_no_object_and_no_selector() {
    let built = build_all();
    for set in APPLIED_TOGETHER {
        let members: Vec<(&str, &[Value])> = set.iter().map(|n| (*n, objects_of(&built, n))).collect();
        let problems = conflicts(&members);
        assert!(problems.is_empty(), "{set:?}:\n{}", problems.join("\n"));
        let all: Vec<&Value> = members.iter().flat_map(|(_, o)| o.iter()).collect();
        let dss: Vec<&Value> = all.iter().copied().filter(|o| o["kind"] == "DaemonSet").collect();
        let exists = |k: &str, name: &str| all.iter().any(|o| o["kind"] == k && name_of(o) == name);
        for ds in &dss {
            let pod = &ds["spec"]["template"]["spec"];
            let d = name_of(ds);
            // What the pod refers to exists in the set (or is the cluster's / the operator's own).
            assert!(exists("ServiceAccount", pod["serviceAccountName"].as_str().unwrap()), "{set:?}: {d}: ServiceAccount");
            let mut cms = Vec::new();
            collect_key(&pod["volumes"], "configMap", &mut cms);
            for cm in cms {
                let name = cm["name"].as_str().unwrap();
                assert!(name == "kube-root-ca.crt" || exists("ConfigMap", name), "{set:?}: {d}: no ConfigMap {name}");
            }
            // Every component port is scraped through a Service of the set that selects this pod
            // (the probes' port is the gate's own listener: health and the proxy's own counters).
            let probe_port = &envoy_container(ds)["readinessProbe"]["httpGet"]["port"];
            for port in envoy_container(ds)["ports"].as_array().unwrap() {
                let p = &port["containerPort"];
                if p == probe_port {
                    continue;
                }
                assert!(
                    all.iter().any(|s| s["kind"] == "Service"
                        && selects(&s["spec"]["selector"], &ds["spec"]["template"]["metadata"]["labels"])
                        && s["spec"]["ports"].as_array().unwrap().iter().any(|sp| &sp["targetPort"] == p)),
                    "{set:?}: no Service selects {d}'s pods on port {p}"
                );
            }
        }
        // And every Service selects only pods that serve its port (no always-down targets).
        for s in all.iter().filter(|o| o["kind"] == "Service") {
            let port = &s["spec"]["ports"][0]["targetPort"];
            let selected: Vec<&&Value> =
                dss.iter().filter(|ds| selects(&s["spec"]["selector"], &ds["spec"]["template"]["metadata"]["labels"])).collect();
            assert!(!selected.is_empty(), "{set:?}: Service {} selects no DaemonSet", name_of(s));
            for ds in selected {
                let ports = &envoy_container(ds)["ports"];
                assert!(
                    ports.as_array().unwrap().iter().any(|p| &p["containerPort"] == port),
                    "{set:?}: Service {} selects {}, which does not serve port {port}", name_of(s), name_of(ds)
                );
            }
            if s["metadata"]["labels"]["metrics-gate/target"] == "kube-proxy" {
                assert!(
                    dss.iter().all(|ds| selects(&s["spec"]["selector"], &ds["spec"]["template"]["metadata"]["labels"])),
                    "{set:?}: kube-proxy runs on every node: its Service must select every DaemonSet"
                );
            }
        }
    }
    // Overlays that are alternatives really are: they would replace each other's DaemonSet.
    let cp = objects_of(&built, "overlays/control-plane");
    let an = objects_of(&built, "overlays/all-nodes");
    assert_eq!(name_of(daemonset(cp)), name_of(daemonset(an)), "control-plane and all-nodes are alternatives");
}

#[test]
fn a_second_daemonset_with_the_same_selector_is_caught() {
    // The old workers recipe: a copy of all-nodes renamed with `namePrefix: workers-`, selector kept.
    let built = build_all();
    let cp = objects_of(&built, "overlays/control-plane");
    let mut copy: Vec<Value> = objects_of(&built, "overlays/all-nodes").to_vec();
    for o in &mut copy {
        let renamed = format!("workers-{}", name_of(o));
        o["metadata"]["name"] = json!(renamed);
    }
    let problems = conflicts(&[("overlays/control-plane", cp), ("workers-copy", copy.as_slice())]);
    assert!(problems.iter().any(|p| p.contains("selects the pods of")), "{problems:?}");
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
    check_admin_socket("examples/sidecar", pod, envoy, &boot);
    if boot["admin"]["address"]["pipe"].is_object() {
        check_probe_on_listener("examples/sidecar readinessProbe", &envoy["readinessProbe"]["httpGet"], &boot);
    }
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
/// SDS resource files, which `just render` refreshes (examples/istio: copy sds.yaml by hand).
#[test]
fn shipped_sds_files_are_the_rendered_ones() {
    for (dir, files) in [
        ("manifests/base", &["sds.yaml", "serving-certificate.yaml"][..]),
        ("manifests/examples/sidecar", &["sds.yaml", "serving-certificate.yaml"][..]),
        ("manifests/examples/istio", &["sds.yaml"][..]),
    ] {
        for file in files {
            let rendered = std::fs::read_to_string(root().join("envoy/examples/sds").join(file)).unwrap();
            let copy = std::fs::read_to_string(root().join(dir).join(file)).unwrap_or_default();
            assert!(
                copy == rendered,
                "{dir}/{file} differs from envoy/examples/sds/{file}: run `just render` (or cp envoy/examples/sds/{file} {dir}/)"
            );
        }
    }
    let sds: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(root().join("manifests/base/sds.yaml")).unwrap()).unwrap();
    let want: Value =
        serde_json::from_str(&metrics_gate_envoy::sds_resource("/etc/metrics-gate/credentials/token")).unwrap();
    assert_eq!(sds, want, "sds.yaml must name the projected token");
}

/// The Istio example mounts into istio-proxy only what exists, and everything the EnvoyFilter's
/// cluster (and the SDS resource it loads) reads.
#[test]
fn istio_example_mounts_what_its_cluster_reads() {
    let built = build_all();
    let objs = objects_of(&built, "examples/istio");
    let patch: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(root().join("manifests/examples/istio/pod-annotations.yaml")).unwrap())
            .unwrap();
    let ann = &patch["spec"]["template"]["metadata"]["annotations"];
    let volumes: Value = serde_json::from_str(ann["sidecar.istio.io/userVolume"].as_str().unwrap()).unwrap();
    let mounts: Value = serde_json::from_str(ann["sidecar.istio.io/userVolumeMount"].as_str().unwrap()).unwrap();
    let (vol_name, vol) = volumes.as_object().unwrap().iter().next().unwrap();
    let mount_path = mounts[vol_name]["mountPath"].as_str().expect("userVolumeMount for the userVolume");
    // Each file of the volume, with the ConfigMap text where the example builds it.
    let mut provided: BTreeMap<String, Option<String>> = BTreeMap::new();
    for s in vol["projected"]["sources"].as_array().unwrap() {
        if let Some(cm) = s.get("configMap") {
            let name = cm["name"].as_str().unwrap();
            let obj = objs.iter().find(|o| o["kind"] == "ConfigMap" && name_of(o) == name);
            assert!(obj.is_some() || name == "kube-root-ca.crt", "the pod mounts ConfigMap {name}, which nothing creates");
            for item in cm["items"].as_array().unwrap() {
                let text = obj.map(|o| o["data"][item["key"].as_str().unwrap()].as_str().expect("key in the ConfigMap").to_string());
                provided.insert(format!("{mount_path}/{}", item["path"].as_str().unwrap()), text);
            }
        } else if let Some(p) = s["serviceAccountToken"]["path"].as_str() {
            assert!(s["serviceAccountToken"].get("audience").is_none(), "the token must carry the apiserver's audience");
            provided.insert(format!("{mount_path}/{p}"), None);
        } else {
            panic!("projected source {s} not understood");
        }
    }
    let ef = objs.iter().find(|o| o["kind"] == "EnvoyFilter").unwrap();
    let cluster = &ef["spec"]["configPatches"][0]["patch"]["value"];
    let mut todo = files_named(cluster);
    let mut checked = 0;
    while let Some(f) = todo.pop() {
        if f == mount_path {
            continue; // the watched directory itself
        }
        let text = provided.get(&f).unwrap_or_else(|| panic!("the cluster reads {f}, which the pod annotations do not mount"));
        if let Some(t) = text {
            let sds: Value = serde_yaml_ng::from_str(t).unwrap();
            todo.extend(files_named(&sds));
        }
        checked += 1;
    }
    assert!(checked >= 3, "sds.yaml, ca.crt and the token");
}

// ---- Relabeling ---------------------------------------------------------------------------------

/// (target, port, job): the four components, and the gate's own listener (its counters).
const COMPONENTS: [(&str, u16, &str); 5] = [
    ("kube-controller-manager", 10257, "kube-controller-manager"),
    ("kube-scheduler", 10259, "kube-scheduler"),
    ("kube-proxy", 10249, "kube-proxy"),
    ("etcd", 2381, "kube-etcd"),
    ("metrics-gate", 9902, "metrics-gate"),
];

/// Exactly the labels kube-prometheus-stack's own ServiceMonitors give (job via jobLabel, instance,
/// and the Operator's namespace/service/endpoint), less the component pod's pod/container, which a
/// proxy cannot know: kube_prometheus_rules.rs proves the chart's rules treat both alike.
fn expected_labels(service: &str, job: &str, port: u16) -> Labels {
    [
        ("job", job.to_string()),
        ("instance", format!("10.0.0.7:{port}")),
        ("namespace", "metrics-gate".into()),
        ("service", service.to_string()),
        ("endpoint", "https-metrics".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The endpoint of a metrics-gate Service on node cp-1 (10.0.0.7).
fn mg_endpoint<'a>(service: &'a str, labels: &'a [(&'a str, &'a str)], port: u16) -> Endpoint<'a> {
    Endpoint {
        namespace: "metrics-gate",
        service,
        service_labels: labels,
        port_name: "https-metrics",
        address: format!("10.0.0.7:{port}"),
        pod: "metrics-gate-x7k2p",
        container: "envoy",
        node: "cp-1",
    }
}

#[test]
fn service_monitors_give_exactly_the_charts_labels() {
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
            let labels = [("metrics-gate/target", target), ("app.kubernetes.io/name", "metrics-gate")];
            let l = service_monitor_labels(&mg_endpoint(name_of(service), &labels, *port), sm["spec"]["jobLabel"].as_str(), ep)
                .expect("target kept");
            assert_eq!(l, expected_labels(name_of(service), job, *port), "{} {}", b.name, name_of(sm));
            seen += 1;
        }
    }
    assert_eq!(seen, 7, "4 + the gate's own (control-plane), 1 + the gate's own (all-nodes)");
}

#[test]
fn plain_prometheus_scrape_configs_select_and_label_each_component() {
    let cfg: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(root().join("manifests/prometheus/scrape-configs.yaml")).unwrap())
            .unwrap();
    let jobs = cfg["scrape_configs"].as_array().unwrap();
    assert_eq!(jobs.len(), 5);
    for (target, port, job) in COMPONENTS {
        let j = jobs.iter().find(|j| j["job_name"] == job).unwrap_or_else(|| panic!("no job {job}"));
        assert_eq!(j["scheme"], "https");
        assert_eq!(j["authorization"]["type"], "Bearer", "{job}");
        assert!(j["authorization"]["credentials_file"].is_string(), "{job}: authorization.credentials_file");
        assert!(j.get("bearer_token_file").is_none(), "{job}: bearer_token_file is the old spelling");
        // Every job keeps exactly its own component's endpoints.
        for (other, oport, _) in COMPONENTS {
            let service = format!("metrics-gate-{other}");
            let labels = [("metrics-gate/target", other), ("app.kubernetes.io/name", "metrics-gate")];
            let kept = scrape_config_labels(&mg_endpoint(&service, &labels, oport), j);
            assert_eq!(kept.is_some(), other == target, "job {job} on {other}'s endpoints");
            if let Some(l) = kept {
                assert_eq!(l, expected_labels(&service, job, port), "{job}");
            }
        }
    }

    // promtool (Debian's prometheus package) checks the rest; Debian builds Prometheus without the
    // Kubernetes service discovery, so static targets stand in for it, and the credential files
    // are temporary ones.
    let Some(promtool) = which("promtool") else {
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
