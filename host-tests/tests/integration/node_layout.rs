//! On a node, Envoy's listener on NODE_IP:port sits beside the component on 127.0.0.1:port — the
//! same port numbers, as the presets render them. Prometheus scrapes the node IP; the loopback
//! component stays unreachable from outside.

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::stack::{StackOptions, LocalStack, NODE_IP};

#[test]
fn listeners_on_the_node_ip_share_the_components_ports() {
    let _ports = crate::support::fixed_ports::hold();
    let stack = LocalStack::start_with(StackOptions { node_ports: true, ..Default::default() }).unwrap();
    let token = stack.prometheus_token();
    for preset in Preset::ALL {
        let listener = stack.addr(preset);
        assert_eq!(listener.ip(), NODE_IP);
        assert_eq!(listener.port(), preset.port());
        assert_eq!(stack.component(preset).addr().port(), preset.port());
        assert_eq!(stack.scrape(preset, "/metrics", &token).status, 200, "{}", preset.name());
        assert_eq!(stack.request(preset, "GET", "/metrics", &[]).status, 401, "{}", preset.name());
    }
}
