//! The .wasm delivered by URL and digest (Envoy's remote code source, `--wasm-url` /
//! `--wasm-sha256`): the real Envoy fetches the built module from an HTTP server on loopback, loads
//! it only when its sha256 is the pinned one and then gates as with a local file; a server that
//! hands out another module (a tampered or stale one) is refused, and the gate stays shut: every
//! request is answered 503 and none reaches a component or the apiserver. Over https the server's
//! certificate must chain to the configured CA, or nothing is loaded either.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metrics_gate_envoy::{Preset, RemoteWasm, WasmCode};
use metrics_gate_host_tests::envoy_process::EnvoyOptions;
use metrics_gate_host_tests::http_server::{respond, Handler, HttpServer};
use metrics_gate_host_tests::stack::{LocalStack, StackOptions, WasmBuild};
use metrics_gate_host_tests::tls::TestCa;
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

const MODULE_PATH: &str = "/metrics-gate/metrics_gate.wasm";

/// An HTTP(S) server on loopback serving one module, counting how often Envoy fetched it.
struct ModuleServer {
    server: Arc<HttpServer>,
    fetches: Arc<AtomicUsize>,
    https: bool,
}

impl ModuleServer {
    fn serving(module: Vec<u8>) -> ModuleServer {
        ModuleServer::start(module, None)
    }

    fn serving_tls(module: Vec<u8>, tls: TlsAcceptor) -> ModuleServer {
        ModuleServer::start(module, Some(tls))
    }

    fn start(module: Vec<u8>, tls: Option<TlsAcceptor>) -> ModuleServer {
        let https = tls.is_some();
        let module = Bytes::from(module);
        let fetches = Arc::new(AtomicUsize::new(0));
        let counted = fetches.clone();
        let handler: Handler = Arc::new(move |req| {
            let module = module.clone();
            let counted = counted.clone();
            Box::pin(async move {
                if req.uri().path() != MODULE_PATH {
                    return respond(404, "text/plain", "not found\n");
                }
                counted.fetch_add(1, Ordering::SeqCst);
                respond(200, "application/wasm", module)
            })
        });
        let server =
            HttpServer::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), tls, handler).unwrap();
        ModuleServer {
            server,
            fetches,
            https,
        }
    }

    fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{MODULE_PATH}", self.server.addr())
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read(build: WasmBuild) -> Vec<u8> {
    std::fs::read(build.path().unwrap()).unwrap()
}

/// A stack whose Envoy fetches the filter from `server`, pinned to `sha256`. The config
/// component's debug lines say why a fetch was refused ("data is invalid").
fn stack_fetching(server: &ModuleServer, sha256: String) -> LocalStack {
    stack_fetching_verified(server, sha256, String::new())
}

/// The same, verifying an https server against `ca_file`.
fn stack_fetching_verified(server: &ModuleServer, sha256: String, ca_file: String) -> LocalStack {
    LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy, Preset::KubeScheduler],
        wasm_code: Some(WasmCode::Remote(RemoteWasm {
            url: server.url(),
            sha256,
            ca_file,
        })),
        envoy: EnvoyOptions {
            extra_args: vec!["--component-log-level".into(), "config:debug".into()],
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn envoy_loads_the_module_with_the_pinned_sha256_and_gates_with_it() {
    let module = read(WasmBuild::Release);
    let server = ModuleServer::serving(module.clone());
    let stack = stack_fetching(&server, sha256_hex(&module));
    assert!(server.fetches() >= 1, "Envoy never fetched the module");
    // Envoy 1.40 logs "createWasm: failed to load (in progress)" and "Plugin metrics-gate failed to
    // load" for every listener after the first even when all goes well (they share one code cache
    // entry still being fetched; each listener's own fetch then completes and loads the plugin), so
    // those lines do not tell a refusal apart: the digest check and the retries do.
    let log = stack.envoy.log();
    assert!(
        !log.contains("data is invalid"),
        "{}",
        stack.envoy.log_tail(30)
    );
    assert!(
        !log.contains("Retry limit exceeded"),
        "{}",
        stack.envoy.log_tail(30)
    );

    // Every gated listener runs the filter, not only the first one created.
    for preset in [Preset::KubeProxy, Preset::KubeScheduler] {
        let r = stack.request(preset, "GET", "/metrics", &[]);
        assert_eq!(r.status, 401, "{}: {}", preset.name(), r.text());
        let r = stack.scrape(preset, "/metrics", &stack.nobody_token());
        assert_eq!(r.status, 403, "{}: {}", preset.name(), r.text());
        let r = stack.scrape(preset, "/metrics", &stack.prometheus_token());
        assert_eq!(r.status, 200, "{}: {}", preset.name(), r.text());
        assert_eq!(
            stack.component(preset).count(),
            1,
            "{}: only the authorized scrape goes upstream",
            preset.name()
        );
    }
    let (status, body) = stack.own_metrics(&stack.prometheus_token());
    assert_eq!(status, 200, "the gate's own /metrics: {body}");
    let (status, _) = stack.own_metrics(&stack.nobody_token());
    assert_eq!(status, 403, "the gate's own /metrics");
}

#[test]
fn a_module_that_is_not_the_pinned_one_is_refused_and_the_gate_stays_shut() {
    // The server hands out a valid proxy-wasm module, just not the pinned one: the fault-injection
    // build of the same filter stands in for a tampered or stale .wasm.
    let pinned = sha256_hex(&read(WasmBuild::Release));
    let other = read(WasmBuild::FaultInjection);
    assert_ne!(sha256_hex(&other), pinned);
    let server = ModuleServer::serving(other);
    let stack = stack_fetching(&server, pinned);

    // Envoy fetched it, found the digest wrong (debug), retried, gave up and said so.
    stack
        .envoy
        .wait_for_log("Plugin metrics-gate failed to load", Duration::from_secs(5))
        .unwrap();
    let log = stack.envoy.log();
    assert!(
        server.fetches() >= 2,
        "fetched {} times:\n{log}",
        server.fetches()
    );
    assert!(
        log.contains(&format!(
            "fetch remote data [uri = {}]: data is invalid",
            server.url()
        )),
        "{log}"
    );
    assert!(
        log.contains("Retry limit exceeded for fetching data from remote data source."),
        "{log}"
    );
    assert!(
        log.contains("Plugin configured to fail closed failed to load"),
        "{log}"
    );

    // The listeners are up, and every request on them, authorized or not, is refused.
    let prometheus = stack.prometheus_token();
    for preset in [Preset::KubeProxy, Preset::KubeScheduler] {
        for token in [None, Some(prometheus.as_str())] {
            let r = match token {
                Some(t) => stack.scrape(preset, "/metrics", t),
                None => stack.request(preset, "GET", "/metrics", &[]),
            };
            assert_eq!(
                r.status,
                503,
                "{} with token {}: {}",
                preset.name(),
                token.is_some(),
                r.text()
            );
        }
    }
    let (status, _) = stack.own_metrics(&prometheus);
    assert_eq!(status, 503, "the gate's own /metrics");
    // Envoy's health check filter answers /ready before the plugin would, so the pod still reports
    // ready (docs/deploying.md says so: watch the 503s, not readiness).
    let ready =
        metrics_gate_host_tests::raw_http::request(stack.own_addr(), "GET", "/ready", &[]).unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(
        stack.upstream_requests(),
        0,
        "a request reached a component without the filter"
    );
    assert_eq!(
        stack.apiserver.calls().len(),
        0,
        "no filter ran, so no review was made"
    );
}

#[test]
fn over_https_the_server_must_chain_to_the_configured_ca() {
    let module = read(WasmBuild::Release);
    let sha256 = sha256_hex(&module);
    let ca = TestCa::new("wasm-server-ca");
    let cert = ca.issue_server(&[], &[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    let server = ModuleServer::serving_tls(module, cert.tls_acceptor().unwrap());
    let files = tempfile::tempdir().unwrap();
    let the_ca = ca.write_cert(files.path(), "ca.crt").unwrap();
    let another_ca = TestCa::new("not-the-wasm-server-ca")
        .write_cert(files.path(), "other.crt")
        .unwrap();
    let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();

    // Verified against the CA that signed the server's certificate (an IP SAN of 127.0.0.1): the
    // module is loaded and gates.
    let stack = stack_fetching_verified(&server, sha256.clone(), path(the_ca));
    assert!(server.fetches() >= 1);
    let r = stack.request(Preset::KubeProxy, "GET", "/metrics", &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    let r = stack.scrape(Preset::KubeProxy, "/metrics", &stack.prometheus_token());
    assert_eq!(r.status, 200, "{}", r.text());
    drop(stack);

    // Against another CA the handshake fails before any module is read: refused like a wrong digest.
    let fetched = server.fetches();
    let stack = stack_fetching_verified(&server, sha256, path(another_ca));
    stack
        .envoy
        .wait_for_log(
            "Retry limit exceeded for fetching data from remote data source.",
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(
        server.fetches(),
        fetched,
        "a module was served over an unverified connection"
    );
    let r = stack.scrape(Preset::KubeProxy, "/metrics", &stack.prometheus_token());
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(stack.upstream_requests(), 0);
}
