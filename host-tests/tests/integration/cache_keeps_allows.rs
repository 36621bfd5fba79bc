//! Distinct bogus tokens never push an authorized scraper's answers out of the cache: a question
//! may use either of two slots and takes the one whose loss costs least, a rejected token before
//! an allow. Here with a tiny table (16 slots per cache) and ten times as many bogus tokens.

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::CallKind;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use serde_json::json;

#[test]
fn a_flood_of_rejected_tokens_leaves_the_scrapers_answers_cached() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy],
        plugin_config: json!({"cache": {"max_entries": 16}, "max_reviews_per_second": 0}),
        ..Default::default()
    })
    .unwrap();
    let scraper = stack.prometheus_token();
    assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &scraper).status, 200);
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 1);
    assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 1);

    for i in 0..160 {
        assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &format!("bogus-{i:04}")).status, 401);
    }
    // The table is full of rejections, which pushed each other out...
    assert!(stack.counter("wasmcustom.metrics_gate_cache_evictions") > 0);
    stack.apiserver.clear_calls();
    // ...and never the scraper's TokenReview answer (its SubjectAccessReview answer sits in the
    // other table, which bogus tokens never reach).
    for _ in 0..3 {
        assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &scraper).status, 200);
    }
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 0, "the scraper's answer was evicted");
    assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 0);
}
