//! An authorized scraper gets every component's exact /metrics body, through the real Envoy and
//! filter, after one TokenReview and one SubjectAccessReview.

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::CallKind;
use metrics_gate_host_tests::stack::LocalStack;

#[test]
fn authorized_scrape_returns_the_exact_upstream_body_of_every_component() {
    let stack = LocalStack::start().unwrap();
    let token = stack.prometheus_token();
    for preset in Preset::ALL {
        let answer = stack.scrape(preset, "/metrics", &token);
        assert_eq!(answer.status, 200, "{}: {}", preset.name(), answer.text());
        assert_eq!(answer.body, stack.component(preset).payload().as_ref(), "{} body", preset.name());
        assert_eq!(
            answer.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8"),
            "{}",
            preset.name()
        );
        assert_eq!(stack.component(preset).count(), 1, "{} upstream requests", preset.name());
    }
    // The four listeners share one answer per question (tests/cache.rs has the details).
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 1);
    assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 1);
    let sar = stack
        .apiserver
        .calls()
        .into_iter()
        .find(|c| c.kind == CallKind::SubjectAccessReview)
        .unwrap();
    assert_eq!(sar.spec["user"], "system:serviceaccount:observability:prometheus-server");
    assert_eq!(sar.spec["nonResourceAttributes"]["path"], "/metrics");
    assert_eq!(sar.spec["nonResourceAttributes"]["verb"], "get");
    // Every review was made with the proxy's own identity, injected by Envoy.
    assert!(stack
        .apiserver
        .calls()
        .iter()
        .all(|c| c.caller.as_deref() == Some("system:serviceaccount:metrics-gate:metrics-gate")));
    assert_eq!(stack.counter("wasmcustom.metrics_gate_requests_allowed"), 4);
}

#[test]
fn query_and_head_are_served_too() {
    let stack = LocalStack::start().unwrap();
    let token = stack.prometheus_token();
    let answer = stack.scrape(Preset::KubeProxy, "/metrics?name[]=up", &token);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let auth = format!("Bearer {token}");
    let head = stack.request(Preset::Etcd, "HEAD", "/metrics", &[("authorization", &auth)]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}
