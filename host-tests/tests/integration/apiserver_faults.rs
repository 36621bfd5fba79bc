//! Every kind of apiserver trouble is 503 + Retry-After, never a pass, counted; the gate recovers as
//! soon as the apiserver does.

use std::time::Duration;

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::Fault;
use metrics_gate_host_tests::stack::{no_cache, LocalStack, StackOptions};
use serde_json::json;


#[test]
fn every_apiserver_fault_is_503_and_the_gate_recovers() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeScheduler],
        // Caching off: every scrape must reach the (broken) apiserver. tests/cache.rs covers what
        // cached answers do during an outage.
        plugin_config: json!({"apiserver": {"timeout_ms": 500}, "retry_after_seconds": 3, "cache": no_cache()}),
        ..StackOptions::default()
    })
    .unwrap();
    let token = stack.prometheus_token();
    let faults = [
        Fault::Down,
        Fault::Slow(Duration::from_secs(2)),
        Fault::ServerError,
        Fault::Malformed,
        Fault::WrongShape,
        Fault::BinaryGarbage,
        Fault::ForbiddenToProxy,
    ];
    for (i, fault) in faults.iter().enumerate() {
        stack.apiserver.set_fault(fault.clone());
        let answer = stack.scrape(Preset::KubeScheduler, "/metrics", &token);
        assert_eq!(answer.status, 503, "{fault:?}: {}", answer.text());
        assert_eq!(answer.header("retry-after"), Some("3"), "{fault:?}");
        assert!(!answer.text().contains(&token));
        assert_eq!(stack.upstream_requests(), 0, "{fault:?} let a request through");
        assert_eq!(stack.counter("wasmcustom.metrics_gate_apiserver_errors"), i as u64 + 1);

        // Back to normal: the very next scrape passes (errors are never remembered).
        stack.apiserver.set_fault(Fault::None);
        let answer = stack.scrape(Preset::KubeScheduler, "/metrics", &token);
        assert_eq!(answer.status, 200, "after {fault:?}: {}", answer.text());
        stack.component(Preset::KubeScheduler).clear();
    }
    let log = stack.envoy.log();
    assert!(log.contains("metrics-gate: answering 503"), "the cause is not logged");
    assert_eq!(stack.counter("wasm.metrics-gate.vm_reload_success"), 0, "a fault crashed the VM");
    assert!(!log.contains(&token), "a token reached Envoy's log");
}

#[test]
fn faults_during_the_access_review_are_503_too() {
    // TokenReview fine, then the apiserver breaks before the SubjectAccessReview: a slow apiserver
    // answers the first review just within the filter's timeout and the second one too late.
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy],
        plugin_config: json!({"apiserver": {"timeout_ms": 700}, "cache": no_cache()}),
        ..StackOptions::default()
    })
    .unwrap();
    stack.apiserver.set_fault(Fault::Slow(Duration::from_millis(400)));
    let answer = stack.scrape(Preset::KubeProxy, "/metrics", &stack.prometheus_token());
    assert_eq!(answer.status, 200, "two reviews of 400 ms each fit their own 700 ms timeouts");
    stack.apiserver.set_fault(Fault::Slow(Duration::from_millis(1500)));
    let answer = stack.scrape(Preset::KubeProxy, "/metrics", &stack.prometheus_token());
    assert_eq!(answer.status, 503);
    assert_eq!(stack.component(Preset::KubeProxy).count(), 1);
}
