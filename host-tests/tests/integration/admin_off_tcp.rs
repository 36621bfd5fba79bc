//! Envoy's admin interface is never on TCP: nothing the gate listens on answers `/quitquitquit`,
//! `/logging`, `/config_dump` or `/runtime_modify`, so no process or hostNetwork pod on the node can
//! stop the gate, turn on trace logging (callers' tokens in the log) or read its configuration.
//! What the outside needs has its own listener: `/ready` for the kubelet (reveals and changes
//! nothing), and the proxy's own counters on `/metrics`, authorized like every scrape.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use metrics_gate_host_tests::raw_http;
use metrics_gate_host_tests::stack::LocalStack;

/// Every TCP socket Envoy's process listens on, from the kernel's own tables.
fn tcp_listeners(pid: u32) -> Vec<SocketAddr> {
    let process = procfs::process::Process::new(i32::try_from(pid).unwrap()).unwrap();
    let inodes: HashSet<u64> = process
        .fd()
        .unwrap()
        .filter_map(|fd| match fd.ok()?.target {
            procfs::process::FDTarget::Socket(inode) => Some(inode),
            _ => None,
        })
        .collect();
    let mut tables = process.tcp().unwrap();
    tables.extend(process.tcp6().unwrap_or_default());
    tables
        .into_iter()
        .filter(|e| e.state == procfs::net::TcpState::Listen && inodes.contains(&e.inode))
        .map(|e| e.local_address)
        .collect()
}

#[test]
fn no_tcp_socket_of_the_gate_answers_admin_and_the_own_listener_is_gated() {
    let stack = LocalStack::start().unwrap();
    let listening = tcp_listeners(stack.envoy.pid());
    // The four component listeners and the gate's own, all on the node IP; nothing on loopback.
    assert_eq!(listening.len(), 5, "{listening:?}");
    assert!(listening.iter().all(|a| a.ip() == IpAddr::from([127, 0, 0, 2])), "{listening:?}");
    assert!(listening.contains(&stack.own_addr()));

    let bearer = format!("Bearer {}", stack.prometheus_token());
    for addr in &listening {
        for (method, path) in [
            ("POST", "/quitquitquit"),
            ("POST", "/logging?level=trace"),
            ("GET", "/config_dump"),
            ("POST", "/runtime_modify?x=y"),
            ("POST", "/healthcheck/fail"),
            ("GET", "/stats"),
            ("GET", "/stats/prometheus"),
        ] {
            for headers in [vec![], vec![("authorization", bearer.as_str())]] {
                let answer = raw_http::request(*addr, method, path, &headers).unwrap();
                assert!(
                    matches!(answer.status, 401 | 404 | 405),
                    "{method} {path} on {addr} answered {}: {}",
                    answer.status,
                    answer.text()
                );
            }
        }
    }
    // Envoy is still up, and still answers its admin — on the Unix socket only.
    let (status, _) = stack.envoy.admin("GET", "/ready").unwrap();
    assert_eq!(status, 200);
    let mode = std::fs::metadata(stack.envoy.admin_socket()).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600, "admin socket mode");

    // The kubelet's probe: 200 without credentials, and nothing else in it.
    let ready = raw_http::request(stack.own_addr(), "GET", "/ready", &[]).unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert!(ready.body.is_empty(), "/ready reveals nothing: {}", ready.text());

    // The proxy's own counters: gated like a component scrape.
    assert_eq!(raw_http::request(stack.own_addr(), "GET", "/metrics", &[]).unwrap().status, 401);
    assert_eq!(stack.own_metrics(&stack.nobody_token()).0, 403);
    let scrape = stack.scrape(metrics_gate_envoy::Preset::KubeProxy, "/metrics", &stack.prometheus_token());
    assert_eq!(scrape.status, 200);
    let (status, text) = stack.own_metrics(&stack.prometheus_token());
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("metrics_gate_requests_allowed"), "{}", &text[..text.len().min(500)]);
    assert!(!text.contains(stack.prometheus_token().as_str()));
}
