//! An authenticated caller without RBAC permission gets 403 naming it; the upstream is never asked.

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::CallKind;
use metrics_gate_host_tests::stack::{StackOptions, LocalStack};
use serde_json::json;

#[test]
fn authenticated_but_unauthorized_is_403_and_the_upstream_is_never_contacted() {
    let stack = LocalStack::start().unwrap();
    let nobody = stack.nobody_token();
    for preset in Preset::ALL {
        let answer = stack.scrape(preset, "/metrics", &nobody);
        assert_eq!(answer.status, 403, "{}: {}", preset.name(), answer.text());
        let body = answer.text();
        assert!(body.contains("system:serviceaccount:observability:nobody"), "{body}");
        assert!(body.contains(r#"get path "/metrics""#), "{body}");
        assert!(!body.contains(&nobody));
    }
    assert_eq!(stack.upstream_requests(), 0);
    // One question, asked once: the denial is cached (30 s) for every listener of the node.
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 1);
    assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 1);
    let sar = stack.apiserver.calls().into_iter().find(|c| c.kind == CallKind::SubjectAccessReview).unwrap();
    assert_eq!(sar.spec["user"], "system:serviceaccount:observability:nobody");
    assert_eq!(sar.spec["groups"], json!(["system:serviceaccounts", "system:serviceaccounts:observability", "system:authenticated"]));
    assert_eq!(stack.counter("wasmcustom.metrics_gate_requests_forbidden"), 4);
}

#[test]
fn resource_attributes_are_checked_instead_of_the_path_when_configured() {
    // prometheus-server may get /metrics, but nothing grants it services/proxy: 403, naming it.
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy],
        plugin_config: json!({"authorization": {"resource_attributes": {
            "namespace": "kube-system", "resource": "services", "subresource": "proxy", "name": "kube-proxy"}}}),
        ..StackOptions::default()
    })
    .unwrap();
    let answer = stack.scrape(Preset::KubeProxy, "/metrics", &stack.prometheus_token());
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert!(answer.text().contains(r#"get resource "services/proxy""#), "{}", answer.text());
    let sar = stack.apiserver.calls().into_iter().find(|c| c.kind == CallKind::SubjectAccessReview).unwrap();
    assert_eq!(sar.spec["resourceAttributes"]["namespace"], "kube-system");
    assert_eq!(sar.spec["resourceAttributes"]["name"], "kube-proxy");
    assert_eq!(stack.upstream_requests(), 0);
}
