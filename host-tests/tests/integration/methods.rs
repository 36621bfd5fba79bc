//! Only GET and HEAD: anything else is 405 before the apiserver or the upstream hear of it.

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::stack::LocalStack;

#[test]
fn methods_other_than_get_and_head_are_405() {
    let stack = LocalStack::start().unwrap();
    let bearer = format!("Bearer {}", stack.prometheus_token());
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
        let answer = stack.request(
            Preset::KubeControllerManager,
            method,
            "/metrics",
            &[("authorization", &bearer), ("content-length", "0")],
        );
        assert_eq!(answer.status, 405, "{method}: {}", answer.text());
        assert_eq!(answer.header("allow"), Some("GET, HEAD"), "{method}");
    }
    assert_eq!(stack.apiserver.calls().len(), 0);
    assert_eq!(stack.upstream_requests(), 0);
    assert_eq!(stack.counter("wasmcustom.metrics_gate_requests_denied_method"), 6);
}
