//! An authorized scrape of a component that is down gets Envoy's own 503; the gate still decides
//! first, so unauthorized callers learn nothing about the component's state.

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::stack::{StackOptions, LocalStack};

#[test]
fn a_component_that_is_down_is_envoys_503_after_the_gate() {
    let stack = LocalStack::start_with(StackOptions { presets: vec![Preset::Etcd], ..Default::default() }).unwrap();
    stack.component(Preset::Etcd).stop_listening();
    let answer = stack.scrape(Preset::Etcd, "/metrics", &stack.prometheus_token());
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(answer.text().contains("upstream connect error"), "{}", answer.text());
    assert_eq!(stack.request(Preset::Etcd, "GET", "/metrics", &[]).status, 401);
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &stack.nobody_token()).status, 403);

    stack.component(Preset::Etcd).resume_listening().unwrap();
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &stack.prometheus_token()).status, 200);
}
