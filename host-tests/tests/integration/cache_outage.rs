//! Cached answers keep serving while the apiserver is down, until they expire; everything else is
//! 503. And a cached answer never outlives the token it was given for.

use std::time::Duration;

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::{CallKind, Fault};
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};
use serde_json::json;

#[test]
fn cached_answers_keep_serving_through_an_apiserver_outage() {
    let stack = LocalStack::start_with(StackOptions { presets: vec![Preset::KubeProxy], ..Default::default() }).unwrap();
    let allowed = stack.prometheus_token();
    let denied = stack.nobody_token();
    assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &allowed).status, 200);
    assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &denied).status, 403);

    stack.apiserver.set_fault(Fault::Down);
    for _ in 0..5 {
        assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &allowed).status, 200);
        assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &denied).status, 403);
    }
    let stranger = stack.token(&ServiceAccount::prometheus_server(), TokenOptions::default().lifetime_secs(1800));
    let answer = stack.scrape(Preset::KubeProxy, "/metrics", &stranger);
    assert_eq!(answer.status, 503, "an unknown token during the outage: {}", answer.text());
    assert!(stack.counter("wasmcustom.metrics_gate_cache_hits") >= 20);
}

#[test]
fn answers_expire_with_their_ttl_and_never_outlive_the_token() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::Etcd],
        plugin_config: json!({"cache": {"token_review_ttl_seconds": 120, "allow_ttl_seconds": 1}}),
        ..Default::default()
    })
    .unwrap();
    // A token that expires in 2 s: its TokenReview must not be remembered longer.
    let short = stack.token(&ServiceAccount::prometheus_server(), TokenOptions::default().lifetime_secs(2));
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &short).status, 200);
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &short).status, 200);
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 1);
    assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 1);

    std::thread::sleep(Duration::from_millis(2600));
    let answer = stack.scrape(Preset::Etcd, "/metrics", &short);
    assert_eq!(answer.status, 401, "an expired token was still admitted from the cache");
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 2);

    // The allow TTL (1 s) ran out too: a fresh token re-asks the SubjectAccessReview.
    let fresh = stack.prometheus_token();
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &fresh).status, 200);
    assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 2);
}
