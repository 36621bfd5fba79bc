//! One answer serves the whole node: 10,000 scrapes over four listeners and four Envoy workers
//! with one token cost exactly one TokenReview and one SubjectAccessReview.

use std::sync::atomic::{AtomicUsize, Ordering};

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::CallKind;
use metrics_gate_host_tests::envoy_process::EnvoyOptions;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};

#[test]
fn ten_thousand_scrapes_on_four_workers_cost_one_review_each() {
    let stack = LocalStack::start_with(StackOptions {
        envoy: EnvoyOptions { concurrency: 4, ..Default::default() },
        ..Default::default()
    })
    .unwrap();
    let token = stack.prometheus_token();
    let ok = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (stack, token, ok) = (&stack, &token, &ok);
            s.spawn(move || {
                for i in 0..1250 {
                    // A new connection each time, so the kernel spreads them over every worker.
                    let preset = Preset::ALL[(t + i) % 4];
                    if stack.scrape(preset, "/metrics", token).status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(ok.load(Ordering::Relaxed), 10_000);
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 1);
    assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 1);
    assert_eq!(stack.upstream_requests(), 10_000);

    // The load really was spread: every worker of every listener took connections.
    let stats = stack.envoy.admin("GET", "/stats?filter=worker_.*downstream_cx_total").unwrap().1;
    let busy_workers: Vec<&str> = stats
        .lines()
        .filter(|l| l.split(": ").nth(1).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0) > 0)
        .collect();
    assert!(busy_workers.len() >= 4 * 3, "connections did not spread over the workers:\n{stats}");
    assert_eq!(stack.counter("wasmcustom.metrics_gate_requests_allowed"), 10_000);
    assert!(stack.counter("wasmcustom.metrics_gate_cache_hits") >= 2 * 10_000 - 2 - 100);
}
