//! Concurrent first requests for the same question wait for one review instead of each asking:
//! 1,000 simultaneous scrapes with one new token, on four workers, make one TokenReview.

use std::sync::Barrier;
use std::time::Duration;

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::{CallKind, Fault};
use metrics_gate_host_tests::envoy_process::EnvoyOptions;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use serde_json::json;

#[test]
fn a_thousand_concurrent_first_requests_make_one_token_review() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy, Preset::Etcd],
        envoy: EnvoyOptions { concurrency: 4, ..Default::default() },
        plugin_config: json!({"apiserver": {"timeout_ms": 10000}}),
        ..Default::default()
    })
    .unwrap();
    // A slow apiserver keeps the first review open while all the others arrive.
    stack.apiserver.set_fault(Fault::Slow(Duration::from_millis(1500)));
    let token = stack.prometheus_token();
    let barrier = Barrier::new(1000);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..1000)
            .map(|i| {
                let (stack, token, barrier) = (&stack, &token, &barrier);
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || {
                        barrier.wait();
                        let preset = if i % 2 == 0 { Preset::KubeProxy } else { Preset::Etcd };
                        stack.scrape(preset, "/metrics", token).status
                    })
                    .unwrap()
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{:?}", statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>());
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 1);
    assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 1);
    assert!(stack.counter("wasmcustom.metrics_gate_coalesced_waits") > 0);
}
