//! TLS towards kube-controller-manager and kube-scheduler can be verified (CA file plus a DNS or IP
//! SAN): the right CA and name pass, a wrong CA or a wrong name never reach the component — the
//! caller gets Envoy's 503, after the gate admitted it.

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions, UpstreamCheck};

fn stack_with(check: UpstreamCheck) -> LocalStack {
    LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeControllerManager],
        upstream_verify: vec![(Preset::KubeControllerManager, check)],
        ..StackOptions::default()
    })
    .unwrap()
}

#[test]
fn the_components_ca_and_an_ip_or_dns_san_pass() {
    for name in ["127.0.0.1", "kube-controller-manager", "localhost"] {
        let stack = stack_with(UpstreamCheck::ComponentCa { server_name: name.into() });
        let answer = stack.scrape(Preset::KubeControllerManager, "/metrics", &stack.prometheus_token());
        assert_eq!(answer.status, 200, "{name}: {}", answer.text());
        assert_eq!(stack.component(Preset::KubeControllerManager).count(), 1);
    }
}

#[test]
fn a_wrong_ca_or_a_wrong_name_is_refused() {
    for check in [
        UpstreamCheck::OtherCa { server_name: "127.0.0.1".into() },
        UpstreamCheck::ComponentCa { server_name: "127.0.0.9".into() },
        UpstreamCheck::ComponentCa { server_name: "kube-scheduler".into() },
    ] {
        let stack = stack_with(check.clone());
        let answer = stack.scrape(Preset::KubeControllerManager, "/metrics", &stack.prometheus_token());
        assert_eq!(answer.status, 503, "{check:?}: {}", answer.text());
        assert_eq!(stack.component(Preset::KubeControllerManager).count(), 0, "{check:?}: the handshake should fail");
        assert!(stack.counter("cluster.kube-controller-manager.ssl.fail_verify_san") + stack.counter("cluster.kube-controller-manager.ssl.fail_verify_error") > 0 || answer.text().contains("TLS"), "{check:?}: {}", answer.text());
    }
}
