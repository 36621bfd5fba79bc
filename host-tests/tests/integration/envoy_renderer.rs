//! The renderer's output against the real Envoy, with a do-nothing wasm module standing in for the
//! filter (so these run without a filter build): Envoy accepts every preset, starts, binds where
//! told, injects the proxy's token after the filter, and normalises paths the way the filter's
//! allow-list assumes.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use metrics_gate_envoy::testing::{PASS_THROUGH_WASM, REJECTING_WASM};
use metrics_gate_envoy::{
    render, sds_resource, Apiserver, Component, Preset, Stack, UpstreamCredentials, UpstreamTls,
    SDS_FILE,
};
use metrics_gate_host_tests::envoy_process::{EnvoyOptions, EnvoyProcess};
use serde_json::json;

const NODE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Files a rendered stack points at: the wasm, the SDS resource and token, a CA.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(wasm: &[u8], token: &str) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("filter.wasm"), wasm).unwrap();
        std::fs::create_dir(p.join("credentials")).unwrap();
        std::fs::write(p.join("token"), token).unwrap();
        let sds = sds_resource(p.join("token").to_str().unwrap());
        std::fs::write(p.join("credentials").join(SDS_FILE), sds).unwrap();
        // Envoy reads trusted_ca at load time; any PEM certificate will do for rendering checks.
        let ca = rcgen::generate_simple_self_signed(vec!["kubernetes.default.svc".into()]).unwrap();
        std::fs::write(p.join("ca.crt"), ca.cert.pem()).unwrap();
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn stack(&self, components: Vec<Component>) -> Stack {
        let mut apiserver = Apiserver::in_cluster();
        apiserver.address = "127.0.0.1".into();
        apiserver.port = 1; // never contacted by the stub
        apiserver.ca_file = self.path("ca.crt");
        Stack {
            access_log: true,
            local_token_verification: None,
            node_ip: NODE_IP.into(),
            admin_socket: self.path("admin.sock"),
            own_listener: None,
            wasm: metrics_gate_envoy::WasmCode::File(self.path("filter.wasm")),
            apiserver,
            credentials_dir: self.path("credentials"),
            tls: metrics_gate_envoy::TlsFiles::default(),
            components,
        }
    }
}

fn presets_on_port_zero() -> Vec<Component> {
    Preset::ALL
        .iter()
        .map(|p| {
            let mut c = Component::preset(*p, json!({"component": p.name()})).plaintext();
            c.listen_port = 0;
            c
        })
        .collect()
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
fn every_preset_validates() {
    if !envoy_available() {
        return;
    }
    let files = Files::new(PASS_THROUGH_WASM, "proxy-token");
    let mut stack = files.stack(
        Preset::ALL
            .iter()
            .map(|p| Component::preset(*p, json!({})).plaintext())
            .collect(),
    );
    stack.apiserver = Apiserver {
        ca_file: files.path("ca.crt"),
        ..Apiserver::in_cluster()
    };
    let (ok, out) = EnvoyProcess::validate(&render(&stack)).unwrap();
    assert!(ok, "{out}");
}

#[test]
fn validate_runs_the_plugins_on_configure() {
    if !envoy_available() {
        return;
    }
    let files = Files::new(REJECTING_WASM, "proxy-token");
    let config = render(&files.stack(presets_on_port_zero()));
    let (ok, out) = EnvoyProcess::validate(&config).unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.contains("Unable to create Wasm plugin metrics-gate"),
        "{out}"
    );
    let log = EnvoyProcess::start_expecting_failure(&config).unwrap();
    assert!(
        log.contains("Unable to create Wasm plugin metrics-gate"),
        "{log}"
    );
}

#[test]
fn missing_wasm_file_is_refused() {
    if !envoy_available() {
        return;
    }
    let files = Files::new(PASS_THROUGH_WASM, "proxy-token");
    let mut stack = files.stack(presets_on_port_zero());
    stack.wasm = metrics_gate_envoy::WasmCode::File(files.path("nope.wasm"));
    let (ok, out) = EnvoyProcess::validate(&render(&stack)).unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("nope.wasm"), "{out}");
}

#[test]
fn starts_and_binds_every_listener() {
    if !envoy_available() {
        return;
    }
    let files = Files::new(PASS_THROUGH_WASM, "proxy-token");
    let envoy = EnvoyProcess::start(
        &render(&files.stack(presets_on_port_zero())),
        EnvoyOptions::default(),
    )
    .unwrap();
    for p in Preset::ALL {
        let addr = envoy.listener_addr(p.name()).unwrap();
        assert_eq!(addr.ip(), NODE_IP);
        assert_ne!(addr.port(), 0);
    }
    assert!(envoy
        .stats_prometheus()
        .unwrap()
        .contains("envoy_server_live"));
    assert_eq!(envoy.stat("server.live").unwrap(), Some(1));
    assert_eq!(envoy.stat("no.such.stat").unwrap(), None);
}

/// A one-shot-per-connection upstream that answers with the request line and headers it received.
fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf)
                    .split("\r\n\r\n")
                    .next()
                    .unwrap_or("")
                    .to_string();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{head}",
                    head.len()
                );
            });
        }
    });
    addr
}

/// Sends `GET <target>` as is (no client-side normalisation) and returns (status, body).
fn raw_get(addr: SocketAddr, target: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: node\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.to_string(),
    )
}

fn echoing_component(name: &str, credentials: UpstreamCredentials) -> Component {
    Component {
        name: name.into(),
        listen_port: 0,
        upstream: echo_upstream(),
        upstream_tls: UpstreamTls::Plain,
        upstream_credentials: credentials,
        plugin_config: json!({}),
        listener_tls: metrics_gate_envoy::ListenerTls::Plaintext,
    }
}

#[test]
fn proxy_token_replaces_the_callers_and_none_strips_it() {
    if !envoy_available() {
        return;
    }
    let files = Files::new(PASS_THROUGH_WASM, "the-proxys-own-token");
    let stack = files.stack(vec![
        echoing_component("with-proxy", UpstreamCredentials::Proxy),
        echoing_component("without", UpstreamCredentials::None),
    ]);
    let envoy = EnvoyProcess::start(&render(&stack), EnvoyOptions::default()).unwrap();
    let caller = "Authorization: Bearer the-callers-token\r\n";

    let (status, echoed) = raw_get(
        envoy.listener_addr("with-proxy").unwrap(),
        "/metrics",
        caller,
    );
    assert_eq!(status, 200, "{echoed}");
    let lower = echoed.to_ascii_lowercase();
    assert!(
        lower.contains("authorization: bearer the-proxys-own-token"),
        "{echoed}"
    );
    assert!(!echoed.contains("the-callers-token"), "{echoed}");

    let (status, echoed) = raw_get(envoy.listener_addr("without").unwrap(), "/metrics", caller);
    assert_eq!(status, 200, "{echoed}");
    assert!(
        !echoed.to_ascii_lowercase().contains("authorization"),
        "{echoed}"
    );
}

#[test]
fn path_normalisation_is_what_the_filter_assumes() {
    if !envoy_available() {
        return;
    }
    let files = Files::new(PASS_THROUGH_WASM, "t");
    let stack = files.stack(vec![echoing_component("echo", UpstreamCredentials::None)]);
    let envoy = EnvoyProcess::start(&render(&stack), EnvoyOptions::default()).unwrap();
    let addr = envoy.listener_addr("echo").unwrap();
    // (sent, path the filter and the upstream see). Dot segments and %-encoded unreserved
    // characters are resolved; `//`, `%2F`, case, `;` and the query are kept as sent.
    let cases = [
        ("/metrics/../debug/pprof", "/debug/pprof"),
        ("//metrics", "//metrics"),
        ("/%6detrics", "/metrics"),
        ("/metrics%2f..", "/metrics%2f.."),
        ("/metrics%2F..", "/metrics%2F.."),
        ("/metrics%2f%2e%2e", "/metrics%2f.."),
        ("/METRICS", "/METRICS"),
        ("/metrics;x", "/metrics;x"),
        ("/metrics/", "/metrics/"),
        ("/metrics?x=1", "/metrics?x=1"),
        ("/metrics?a=/../x", "/metrics?a=/../x"),
        ("/%2e%2e/metrics", "/metrics"),
        ("/metrics/%2e%2e/debug", "/debug"),
        ("/./metrics", "/metrics"),
        ("/../metrics", "/metrics"),
        ("/metrics/..", "/"),
        ("/metrics%2e", "/metrics."),
        ("/metrics\\..\\x", "/x"),
        ("/metrics%5c..%5cx", "/metrics%5c..%5cx"),
        ("http://node/a/../metrics", "/metrics"),
    ];
    for (sent, seen) in cases {
        let (status, echoed) = raw_get(addr, sent, "");
        assert_eq!(status, 200, "{sent}: {echoed}");
        let request_line = echoed.lines().next().unwrap();
        assert_eq!(request_line, format!("GET {seen} HTTP/1.1"), "sent {sent}");
    }
    // Refused by Envoy's codec before any filter runs.
    for sent in ["/metrics#x", "metrics", "*", "/metrics%00"] {
        let (status, _) = raw_get(addr, sent, "");
        assert_eq!(status, 400, "{sent}");
    }
}
