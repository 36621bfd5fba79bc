//! envoy/compose/docker-compose.yaml, checked statically (no Docker engine runs in CI): it parses,
//! every file it mounts exists (the .wasm excepted, a build artifact at the path `just build`
//! writes), the testbed image builds a binary that exists, and the rendered config it runs
//! (envoy/examples/compose.yaml) agrees with it: listener ports published, upstream clusters at the
//! testbed's components and apiserver, every file Envoy reads mounted and written by the testbed.

use std::path::{Path, PathBuf};

use metrics_gate_host_tests::components::ComponentKind;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn compose_dir() -> PathBuf {
    root().join("envoy/compose")
}

fn compose() -> Value {
    let text = std::fs::read_to_string(compose_dir().join("docker-compose.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("docker-compose.yaml parses")
}

const WASM: &str = "target/wasm32-wasip1/release/metrics_gate.wasm";
/// What metrics-gate-testbed writes into its --dir (see its module docs).
const TESTBED_FILES: &[&str] = &[
    "apiserver-ca.crt",
    "credentials",
    "credentials/token",
    "credentials/sds.yaml",
    "credentials/serving-certificate.yaml",
    "tokens/prometheus-server",
    "tokens/nobody",
    "tls",
    "tls/tls.crt",
    "tls/tls.key",
    "tls/ca.crt",
];
const TESTBED_DIR: &str = "/testbed";
const APISERVER_PORT: u64 = 6443;

/// (source, target) of every volume of `service` (short syntax).
fn volumes(c: &Value, service: &str) -> Vec<(String, String)> {
    c["services"][service]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let parts: Vec<&str> = v.as_str().expect("short volume syntax").split(':').collect();
            (parts[0].to_string(), parts[1].to_string())
        })
        .collect()
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

#[test]
fn compose_file_parses_and_its_files_exist() {
    let c = compose();
    let services = c["services"].as_object().unwrap();
    assert!(services.contains_key("testbed") && services.contains_key("envoy"));
    let named: Vec<&String> = c["volumes"].as_object().map(|m| m.keys().collect()).unwrap_or_default();

    for (name, _) in services {
        for (src, _) in volumes(&c, name) {
            if !(src.starts_with("./") || src.starts_with("../") || src.starts_with('/')) {
                assert!(named.iter().any(|n| **n == src), "{name}: volume {src} is not declared");
                continue;
            }
            let path = normalize(&compose_dir().join(&src));
            let rel = path.strip_prefix(normalize(&root())).expect("mounts stay inside the repository");
            if rel == Path::new(WASM) {
                continue; // built by `just build`
            }
            assert!(path.exists(), "{name} mounts {src}, which does not exist ({})", rel.display());
        }
    }

    // The same stock Envoy as the DaemonSet.
    let ds = std::fs::read_to_string(root().join("manifests/base/daemonset.yaml")).unwrap();
    let image = c["services"]["envoy"]["image"].as_str().unwrap();
    assert!(ds.contains(&format!("image: {image}")), "compose runs {image}, the DaemonSet another Envoy");

    // Envoy shares the testbed's network namespace: the components are on its loopback.
    assert_eq!(c["services"]["envoy"]["network_mode"], "service:testbed");

    // The testbed image: its Dockerfile exists and builds a binary the workspace has.
    let build = &c["services"]["testbed"]["build"];
    let context = normalize(&compose_dir().join(build["context"].as_str().unwrap()));
    assert_eq!(context, normalize(&root()), "build context: the repository root");
    let dockerfile = std::fs::read_to_string(context.join(build["dockerfile"].as_str().unwrap())).unwrap();
    assert!(dockerfile.contains("--bin metrics-gate-testbed"));
    assert!(root().join("host-tests/src/bin/metrics-gate-testbed.rs").is_file());
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        for src in line.split_whitespace().skip(1).collect::<Vec<_>>().split_last().unwrap().1 {
            assert!(root().join(src).exists(), "Dockerfile copies {src}, which does not exist");
        }
    }
    assert!(dockerfile.contains(&format!("\"--apiserver-port\", \"{APISERVER_PORT}\"")));
}

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

fn socket(v: &Value) -> Option<(String, u64)> {
    let sa = &v["socket_address"];
    Some((sa["address"].as_str()?.to_string(), sa["port_value"].as_u64()?))
}

#[test]
fn rendered_compose_config_agrees_with_the_compose_file() {
    let c = compose();
    let config_path = root().join("envoy/examples/compose.yaml");
    let text = std::fs::read_to_string(&config_path).unwrap_or_else(|_| {
        panic!("{} is missing: the Envoy renderer writes it (envoy/)", config_path.display())
    });
    let boot: Value = serde_yaml_ng::from_str(&text).expect("compose.yaml parses");
    let envoy_mounts = volumes(&c, "envoy");

    // The config is the file compose mounts as Envoy's bootstrap.
    let (_, boot_target) = envoy_mounts
        .iter()
        .find(|(src, _)| src.ends_with("examples/compose.yaml"))
        .expect("compose mounts envoy/examples/compose.yaml");
    let command = c["services"]["envoy"]["command"][0].as_str().unwrap();
    assert!(command.contains(boot_target.as_str()), "the entrypoint does not read {boot_target}");

    // Every file Envoy reads is mounted; those under the testbed dir are written by the testbed.
    let mut files = Vec::new();
    strings_of(&boot, "filename", &mut files);
    strings_of(&boot, "path", &mut files);
    // Admin's Unix socket is created by Envoy, not read from a mount.
    let admin_socket = boot["admin"]["address"]["pipe"]["path"].as_str().expect("admin on a Unix socket").to_owned();
    // Route paths (the callout route's review paths, the own listener's /metrics) are not files.
    files.retain(|f| f.starts_with('/') && !f.starts_with("/apis/") && f != "/metrics" && *f != admin_socket);
    assert!(files.iter().any(|f| f.ends_with(".wasm")), "no .wasm in the config");
    for f in &files {
        let mount = envoy_mounts
            .iter()
            .find(|(_, t)| f == t || f.starts_with(&format!("{}/", t.trim_end_matches('/'))))
            .unwrap_or_else(|| panic!("Envoy reads {f}, which compose does not mount"));
        if mount.1 == TESTBED_DIR {
            let rel = f.strip_prefix(&format!("{TESTBED_DIR}/")).unwrap();
            assert!(TESTBED_FILES.contains(&rel), "Envoy reads {f}, which the testbed does not write");
        }
        if f.ends_with(".wasm") {
            assert!(mount.0.ends_with(WASM), "the .wasm mount is not the build's {WASM}");
        }
    }

    // The SDS resources the testbed writes (with the renderer's functions, for `--dir /testbed`) are
    // the rendered ones, and every file they name is written by the testbed too.
    let sds_dir = root().join("envoy/examples/sds");
    let written = [
        (
            metrics_gate_envoy::SDS_FILE,
            metrics_gate_envoy::sds_resource(&format!("{TESTBED_DIR}/credentials/token")),
            None,
        ),
        (
            metrics_gate_envoy::SERVING_CERT_FILE,
            metrics_gate_envoy::sds_serving_certificate(&format!("{TESTBED_DIR}/tls")),
            Some("compose-serving-certificate.yaml"),
        ),
    ];
    for (file, text, rendered) in written {
        let path = format!("{TESTBED_DIR}/credentials/{file}");
        assert!(files.contains(&path), "the config does not load {path}");
        let sds: Value = serde_yaml_ng::from_str(&text).unwrap();
        if let Some(rendered) = rendered {
            let want: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(sds_dir.join(rendered)).unwrap()).unwrap();
            assert_eq!(sds, want, "{path} differs from envoy/examples/sds/{rendered}");
        }
        let mut named = Vec::new();
        strings_of(&sds, "filename", &mut named);
        strings_of(&sds, "path", &mut named);
        assert!(!named.is_empty(), "{path} names no file");
        for f in named {
            let rel = f.strip_prefix(&format!("{TESTBED_DIR}/")).unwrap_or_else(|| panic!("{path} names {f}, outside {TESTBED_DIR}"));
            assert!(TESTBED_FILES.contains(&rel), "{path} names {f}, which the testbed does not write");
        }
    }
    let testbed = std::fs::read_to_string(root().join("host-tests/src/bin/metrics-gate-testbed.rs")).unwrap();
    for f in ["sds_resource(", "sds_serving_certificate(", "SDS_FILE", "SERVING_CERT_FILE"] {
        assert!(testbed.contains(f), "metrics-gate-testbed no longer writes its SDS files with {f}");
    }

    // Listeners: on the ${NODE_IP} placeholder the entrypoint fills in, each port published.
    let published: Vec<u64> = c["services"]["testbed"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    assert!(command.contains("${NODE_IP}") || command.contains("$${NODE_IP}"));
    let mut listener_ports = Vec::new();
    for l in boot["static_resources"]["listeners"].as_array().unwrap() {
        if let Some((addr, port)) = socket(&l["address"]) {
            assert_eq!(addr, "${NODE_IP}", "listener {} must bind the node IP placeholder", l["name"]);
            assert!(published.contains(&port), "listener {} on {port} is not published", l["name"]);
            listener_ports.push(port);
        }
    }
    listener_ports.sort();
    let mut published_sorted = published.clone();
    published_sorted.sort();
    assert_eq!(listener_ports, published_sorted, "published ports without a listener");
    assert!(socket(&boot["admin"]["address"]).is_none(), "admin must not be on TCP");
    assert!(boot["admin"]["address"]["pipe"]["path"].as_str().is_some_and(|p| p.starts_with("/tmp/")), "admin's socket in a directory Envoy's user can write");

    // Clusters: each component at the testbed's loopback port; the apiserver at the testbed's; the
    // callout cluster the filter names exists.
    let clusters = boot["static_resources"]["clusters"].as_array().unwrap();
    let endpoint = |name: &str| {
        let cl = clusters.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no cluster {name}"));
        socket(&cl["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"])
    };
    for kind in ComponentKind::ALL {
        if let Some(cl) = clusters.iter().find(|c| c["name"] == kind.name()) {
            let _ = cl;
            assert_eq!(
                endpoint(kind.name()),
                Some(("127.0.0.1".to_string(), kind.default_port() as u64)),
                "cluster {} must point at the testbed's component",
                kind.name()
            );
        }
    }
    assert_eq!(
        endpoint(metrics_gate_envoy::APISERVER_CLUSTER),
        Some(("127.0.0.1".to_string(), APISERVER_PORT)),
        "the apiserver cluster must point at the testbed's mock apiserver"
    );
    assert!(
        clusters.iter().any(|c| c["name"] == metrics_gate_envoy::CALLOUT_CLUSTER),
        "no {} cluster for the filter's callouts",
        metrics_gate_envoy::CALLOUT_CLUSTER
    );
}
