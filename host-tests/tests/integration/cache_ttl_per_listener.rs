//! Cache settings are per listener, on read as well as on write: the answers live in one node-wide
//! table, but a listener whose TTLs are 0 never takes an answer another listener cached, and one
//! with a shorter TTL never takes an answer older than its own TTL.

use std::time::Duration;

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::CallKind;
use metrics_gate_host_tests::stack::{no_cache, LocalStack, StackOptions};
use serde_json::json;

#[test]
fn a_listener_with_caching_off_asks_every_time_even_when_another_listener_cached() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::Etcd, Preset::KubeProxy],
        listener_plugin_config: vec![(Preset::KubeProxy, json!({"cache": no_cache()}))],
        ..Default::default()
    })
    .unwrap();
    let token = stack.prometheus_token();
    // etcd keeps the defaults and caches both answers.
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &token).status, 200);
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &token).status, 200);
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 1);
    assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 1);
    // kube-proxy's listener has TTLs of 0: every scrape is reviewed afresh.
    for n in 1..=3 {
        assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &token).status, 200);
        assert_eq!(stack.apiserver.count(CallKind::TokenReview), 1 + n, "scrape {n}");
        assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 1 + n, "scrape {n}");
    }
    // ...and etcd still serves its cached answers.
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &token).status, 200);
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 4);
    // A revoked binding shows at once on the uncached listener: a denial is not taken from cache.
    let nobody = stack.nobody_token();
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &nobody).status, 403);
    assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &nobody).status, 403);
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 6);
}

#[test]
fn a_shorter_ttl_on_one_listener_is_honoured_against_a_longer_one_elsewhere() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::Etcd, Preset::KubeProxy],
        listener_plugin_config: vec![(
            Preset::KubeProxy,
            json!({"cache": {"token_review_ttl_seconds": 1, "allow_ttl_seconds": 1}}),
        )],
        ..Default::default()
    })
    .unwrap();
    let token = stack.prometheus_token();
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &token).status, 200);
    // Within a second kube-proxy may use etcd's answers...
    assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &token).status, 200);
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 1);
    std::thread::sleep(Duration::from_millis(1500));
    // ...after it, etcd still may (2 min / 5 min), kube-proxy may not.
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &token).status, 200);
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 1);
    assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &token).status, 200);
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 2);
    assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 2);
}
