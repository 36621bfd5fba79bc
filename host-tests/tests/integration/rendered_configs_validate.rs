//! Every configuration the renderer ships (envoy/examples/, the DaemonSet's bootstrap) and every
//! variant it can produce (all eight presets, TLS and plaintext listeners, optional and required
//! client certificates, passthrough credentials, the sidecar) through the real `envoy --mode
//! validate`. The files they name are replaced by temporary ones (a do-nothing .wasm, a real
//! certificate, CA and token), and `${NODE_IP}` by an address, as the init step does.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use metrics_gate_envoy::testing::PASS_THROUGH_WASM;
use metrics_gate_envoy::{
    examples, render, sds_client_ca, sds_resource, sds_serving_certificate, ClientCertificates,
    Component, ListenerTls, NodeAddress, Preset, Stack, UpstreamCredentials, UpstreamTls,
    WasmCode, CLIENT_CA_FILE, SDS_FILE, SERVING_CERT_FILE,
};
use metrics_gate_host_tests::envoy_process::EnvoyProcess;
use metrics_gate_host_tests::tls::TestCa;
use serde_json::json;

/// The files a rendered stack reads, in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("filter.wasm"), PASS_THROUGH_WASM).unwrap();
        let ca = TestCa::new("validate-ca");
        ca.write_cert(p, "ca.crt").unwrap();
        let leaf = ca.issue_server(&["metrics-gate.metrics-gate.svc"], &[]);
        std::fs::create_dir(p.join("tls")).unwrap();
        leaf.write_to(&p.join("tls"), "tls").unwrap();
        std::fs::create_dir(p.join("credentials")).unwrap();
        std::fs::write(p.join("credentials/token"), "proxy-token").unwrap();
        let c = p.join("credentials");
        std::fs::write(c.join(SDS_FILE), sds_resource(&s(&c.join("token")))).unwrap();
        std::fs::write(
            c.join(SERVING_CERT_FILE),
            sds_serving_certificate(&s(&p.join("tls"))),
        )
        .unwrap();
        std::fs::write(c.join(CLIENT_CA_FILE), sds_client_ca(&s(&p.join("ca.crt")))).unwrap();
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        s(&self.dir.path().join(name))
    }

    /// `stack` with every file it names replaced by ours, and the node IP filled in.
    fn localize(&self, mut stack: Stack) -> Stack {
        if let NodeAddress::Placeholder(_) = stack.node_ip {
            stack.node_ip = NodeAddress::Ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        }
        match &mut stack.wasm {
            WasmCode::File(path) => *path = self.path("filter.wasm"),
            // Validation fetches nothing; the CA of an https URL is read.
            WasmCode::Remote(remote) => remote.ca_file = self.path("ca.crt"),
        }
        stack.credentials_dir = self.path("credentials");
        stack.apiserver.ca_file = self.path("ca.crt");
        stack.tls.cert_dir = self.path("tls");
        if stack.tls.client_ca_file.is_some() {
            stack.tls.client_ca_file = Some(self.path("ca.crt"));
        }
        for c in &mut stack.components {
            if let UpstreamTls::TlsVerify { ca_file, .. } = &mut c.upstream_tls {
                *ca_file = self.path("ca.crt");
            }
        }
        stack
    }
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn validate(name: &str, stack: &Stack) {
    assert_eq!(stack.check(), Ok(()), "{name}");
    let (ok, out) = EnvoyProcess::validate(&render(stack)).unwrap();
    assert!(ok, "{name}: envoy --mode validate refused it:\n{out}");
}

fn envoy_available() -> bool {
    match EnvoyProcess::binary() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping: {e}");
            false
        }
    }
}

#[test]
fn every_shipped_example_validates() {
    if !envoy_available() {
        return;
    }
    let files = Files::new();
    let mut n = 0;
    for ex in examples::all() {
        if let Some(stack) = ex.stack() {
            validate(ex.path, &files.localize(stack.clone()));
            n += 1;
        }
    }
    assert!(n >= 5);
}

#[test]
fn every_variant_validates() {
    if !envoy_available() {
        return;
    }
    let files = Files::new();
    let base = files.localize(examples::node());
    let with = |f: &dyn Fn(&mut Component)| {
        let mut stack = base.clone();
        stack.tls.client_ca_file = Some(files.path("ca.crt"));
        stack.components = Preset::every()
            .map(|p| {
                let mut c = Component::preset(p, json!({"allowed_paths": ["/metrics"]}));
                f(&mut c);
                c
            })
            .collect();
        stack
    };
    let variants: Vec<(&str, Stack)> = vec![
        ("all presets, TLS", with(&|_| {})),
        (
            "all presets, plaintext",
            with(&|c| c.listener_tls = ListenerTls::Plaintext),
        ),
        (
            "client certificates optional",
            with(&|c| {
                c.listener_tls = ListenerTls::Tls {
                    client_certificates: ClientCertificates::Optional,
                }
            }),
        ),
        (
            "client certificates required",
            with(&|c| {
                c.listener_tls = ListenerTls::Tls {
                    client_certificates: ClientCertificates::Required,
                }
            }),
        ),
        (
            "passthrough",
            with(&|c| c.upstream_credentials = UpstreamCredentials::Passthrough),
        ),
        (
            "proxy credentials everywhere",
            with(&|c| c.upstream_credentials = UpstreamCredentials::Proxy),
        ),
        (
            "verified upstream TLS",
            with(&|c| {
                c.upstream_tls = UpstreamTls::TlsVerify {
                    ca_file: files.path("ca.crt"),
                    sni: "component.local".into(),
                }
            }),
        ),
        ("sidecar", files.localize(examples::sidecar())),
    ];
    for (name, stack) in variants {
        validate(name, &stack);
    }
}

#[test]
fn a_left_over_placeholder_is_refused() {
    if !envoy_available() {
        return;
    }
    let files = Files::new();
    let mut stack = files.localize(examples::node());
    stack.node_ip = NodeAddress::node_ip_placeholder();
    let (ok, out) = EnvoyProcess::validate(&render(&stack)).unwrap();
    assert!(!ok, "Envoy accepted a listener on ${{NODE_IP}}:\n{out}");
}

#[test]
fn a_missing_serving_certificate_is_refused() {
    if !envoy_available() {
        return;
    }
    let files = Files::new();
    let mut stack = files.localize(examples::node());
    stack.credentials_dir = files.path("nowhere");
    let (ok, out) = EnvoyProcess::validate(&render(&stack)).unwrap();
    assert!(!ok, "{out}");
}
