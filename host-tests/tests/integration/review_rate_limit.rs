//! A flood of distinct bogus tokens reaches the apiserver at no more than `max_reviews_per_second`
//! from the whole node (all workers, all listeners share one budget); the rest are held for a
//! second and then get 503, counted; a scraper whose answers are cached goes on undisturbed; and
//! once the flood is over the budget refills, so a new token is reviewed again.

use std::time::{Duration, Instant};

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::CallKind;
use metrics_gate_host_tests::envoy_process::EnvoyOptions;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};
use serde_json::json;

const RATE: u64 = 5;

#[test]
fn reviews_per_second_are_bounded_per_node() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy, Preset::Etcd],
        envoy: EnvoyOptions { concurrency: 2, ..Default::default() },
        plugin_config: json!({"max_reviews_per_second": RATE}),
        ..Default::default()
    })
    .unwrap();
    // The scraper's answers: one TokenReview and a SubjectAccessReview per listener, within the
    // burst of one second's worth.
    let scraper = stack.prometheus_token();
    for preset in [Preset::KubeProxy, Preset::Etcd] {
        assert_eq!(stack.scrape(preset, "/metrics", &scraper).status, 200);
    }
    std::thread::sleep(Duration::from_millis(1200));
    stack.apiserver.clear_calls();

    let started = Instant::now();
    let (statuses, answers): (Vec<u16>, Vec<(Option<String>, Duration)>) = std::thread::scope(|s| {
        let flood: Vec<_> = (0..24)
            .map(|worker| {
                let stack = &stack;
                s.spawn(move || {
                    (0..5)
                        .map(|i| {
                            let preset = if i % 2 == 0 { Preset::KubeProxy } else { Preset::Etcd };
                            let asked = Instant::now();
                            let answer = stack.scrape(preset, "/metrics", &format!("bogus-{worker}-{i:03}"));
                            (answer.status, (answer.header("retry-after").map(str::to_owned), asked.elapsed()))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // Meanwhile the scraper is served from the cache, whatever the budget.
        for i in 0..20 {
            let preset = if i % 2 == 0 { Preset::KubeProxy } else { Preset::Etcd };
            let answer = stack.scrape(preset, "/metrics", &scraper);
            assert_eq!(answer.status, 200, "the cached scraper was refused during the flood: {}", answer.text());
        }
        flood.into_iter().flat_map(|h| h.join().unwrap()).unzip()
    });
    let elapsed = started.elapsed();

    let reviewed = statuses.iter().filter(|s| **s == 401).count() as u64;
    let rejected = statuses.iter().filter(|s| **s == 503).count() as u64;
    assert_eq!(reviewed + rejected, 120, "{statuses:?}");
    // The burst, plus the refill over the flood's duration (and one for rounding).
    let budget = RATE + (elapsed.as_millis() as u64 * RATE).div_ceil(1000) + 1;
    assert!(reviewed >= RATE, "the burst of {RATE} was not granted: {reviewed} reviews");
    assert!(reviewed <= budget, "{reviewed} reviews in {elapsed:?} at {RATE}/s (at most {budget})");
    assert!(rejected > 0, "the flood was never limited: {statuses:?}");
    assert_eq!(stack.apiserver.count(CallKind::TokenReview) as u64, reviewed);
    assert_eq!(stack.counter("wasmcustom.metrics_gate_callouts_rejected_rate"), rejected);
    for (status, (retry, took)) in statuses.iter().zip(&answers) {
        if *status == 503 {
            assert_eq!(retry.as_deref(), Some("5"), "a refused review says when to come back");
            // Held before the answer, so that a caller flooding the gate is slowed down.
            assert!(*took >= Duration::from_millis(950), "a refused request was answered after {took:?}");
        }
    }

    // The flood is over: within a second the budget is back, and a new token gets its reviews.
    std::thread::sleep(Duration::from_millis(1200));
    let fresh = stack.token(&ServiceAccount::prometheus_server(), TokenOptions::default().lifetime_secs(1800));
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &fresh).status, 200);
}

#[test]
fn zero_turns_the_limit_off() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy],
        plugin_config: json!({"max_reviews_per_second": 0}),
        ..Default::default()
    })
    .unwrap();
    let statuses: Vec<u16> =
        (0..60).map(|i| stack.scrape(Preset::KubeProxy, "/metrics", &format!("bogus-{i:03}")).status).collect();
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 60);
    assert_eq!(stack.counter("wasmcustom.metrics_gate_callouts_rejected_rate"), 0);
}
