//! A component bound to 0.0.0.0:<port> holds that port on every address of the node, so Envoy
//! cannot bind <node IP>:<port>: it refuses to start and its log names the address it could not
//! bind (the line docs/troubleshooting.md quotes). Bound to 127.0.0.1:<port> instead (the
//! migration), the component and Envoy share the port number and the scrape goes through.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::envoy_process::EnvoyProcess;
use metrics_gate_host_tests::raw_http;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions, NODE_IP};
use serde_json::{json, Value};

/// The stack's bootstrap with the kube-proxy listener on `NODE_IP:port`, and (when `upstream` is
/// given) the kube-proxy cluster pointed at it. An admin socket gets a fresh path in `dir`.
fn config_with_listener_port(stack: &LocalStack, port: u16, upstream: Option<u16>, dir: &std::path::Path) -> Value {
    let mut config = stack.config.clone();
    if let Some(path) = config.pointer_mut("/admin/address/pipe/path") {
        *path = json!(dir.join(format!("admin-{port}.sock")).to_string_lossy());
    }
    let listener = config["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|l| l["name"] == "kube-proxy")
        .expect("the kube-proxy listener");
    assert_eq!(listener["address"]["socket_address"]["address"], json!(NODE_IP.to_string()));
    listener["address"]["socket_address"]["port_value"] = json!(port);
    if let Some(up) = upstream {
        let cluster = config["static_resources"]["clusters"].as_array_mut().unwrap().iter_mut().find(|c| c["name"] == "kube-proxy").unwrap();
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = json!(up);
    }
    config
}

#[test]
fn a_component_on_the_wildcard_address_keeps_envoy_from_binding_the_node_ip() {
    let mut stack = LocalStack::start_with(StackOptions { presets: vec![Preset::KubeProxy], ..Default::default() }).unwrap();
    stack.envoy.stop().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // The component as many clusters configure it for Prometheus: --metrics-bind-address=0.0.0.0:<port>.
    let wildcard = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = wildcard.local_addr().unwrap().port();
    let log = EnvoyProcess::start_expecting_failure(&config_with_listener_port(&stack, port, None, dir.path())).unwrap();
    let line = format!("cannot bind '{NODE_IP}:{port}': Address already in use");
    assert!(log.contains(&line), "Envoy's log does not say which address is taken ({line:?}):\n{log}");
    assert!(
        log.lines().any(|l| l.contains("[error]") && l.contains("listener 'kube-proxy' failed to bind or apply socket options") && l.contains(&line)),
        "the listener's error line:\n{log}"
    );
    drop(wildcard);

    // The migration: the component on 127.0.0.1:<port>. Envoy binds <node IP>:<port> beside it and
    // proxies to it; the stack's fake kube-proxy listens on 127.0.0.1, so its port is the one.
    let component = stack.component(Preset::KubeProxy).addr();
    assert_eq!(component.ip(), Ipv4Addr::LOCALHOST);
    let envoy = EnvoyProcess::start(&config_with_listener_port(&stack, component.port(), Some(component.port()), dir.path()), Default::default())
        .expect("Envoy beside a component on 127.0.0.1 with the same port");
    let addr = SocketAddr::new(NODE_IP, component.port());
    let auth = format!("Bearer {}", stack.prometheus_token());
    let answer = raw_http::request(addr, "GET", "/metrics", &[("authorization", &auth)]).unwrap();
    assert_eq!(answer.status, 200, "{}\n{}", answer.text(), envoy.log_tail(20));
}
