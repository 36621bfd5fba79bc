//! A flood of bogus tokens cannot turn the proxy into an amplifier against the apiserver: at most
//! `max_callouts_in_flight` reviews are under way per node, the rest get 503 at once, and a
//! scraper whose answer is cached is not disturbed.

use std::sync::Barrier;
use std::time::Duration;

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::{CallKind, Fault};
use metrics_gate_host_tests::envoy_process::EnvoyOptions;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use serde_json::json;

#[test]
fn reviews_in_flight_are_capped_per_node() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy, Preset::Etcd],
        envoy: EnvoyOptions { concurrency: 2, ..Default::default() },
        // No rate limit: this test is about the cap (review_rate_limit.rs is about the rate).
        plugin_config: json!({
            "max_callouts_in_flight": 4,
            "max_reviews_per_second": 0,
            "apiserver": {"timeout_ms": 5000},
        }),
        ..Default::default()
    })
    .unwrap();
    let scraper = stack.prometheus_token();
    assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &scraper).status, 200);
    stack.apiserver.clear_calls();

    stack.apiserver.set_fault(Fault::Slow(Duration::from_millis(1500)));
    let barrier = Barrier::new(41);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let flood: Vec<_> = (0..40)
            .map(|i| {
                let (stack, barrier) = (&stack, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let preset = if i % 2 == 0 { Preset::KubeProxy } else { Preset::Etcd };
                    stack.scrape(preset, "/metrics", &format!("bogus-token-{i:04}")).status
                })
            })
            .collect();
        barrier.wait();
        // Meanwhile the real scraper is served from the cache.
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..10 {
            let answer = stack.scrape(Preset::Etcd, "/metrics", &scraper);
            assert_eq!(answer.status, 200, "the cached scraper was refused: {}", answer.text());
        }
        flood.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let rejected = statuses.iter().filter(|s| **s == 503).count();
    let reviewed = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(rejected + reviewed, 40, "{statuses:?}");
    assert!(reviewed <= 4, "{reviewed} reviews passed a cap of 4");
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), reviewed);
    assert_eq!(stack.counter("wasmcustom.metrics_gate_callouts_rejected_cap"), rejected as u64);
    assert_eq!(stack.envoy.stat("wasmcustom.metrics_gate_callouts_in_flight").unwrap(), Some(0));
}
