//! Control-plane metrics during an apiserver outage — the metrics an operator needs most then.
//!
//! - With `upstream_credentials: proxy` (the default for kube-controller-manager and kube-scheduler)
//!   the components check the proxy's token themselves and, like the real ones, answer 401 while
//!   the apiserver is down: only etcd and kube-proxy keep serving cached callers.
//! - With `upstream_credentials: none` and the components' own `--authorization-always-allow-paths`
//!   including /metrics, they need no apiserver: cached callers keep getting 200 — and the
//!   components cost the apiserver no reviews at all.
//! - `cache.stale_allow_seconds` (opt-in) keeps serving a cached *allow* for a bounded time past its
//!   TTL while the apiserver cannot be asked: counted and logged, never past the token's `exp`,
//!   never for a deny.

use std::time::Duration;

use metrics_gate_envoy::{Preset, UpstreamCredentials};
use metrics_gate_host_tests::apiserver::{CallKind, Fault};
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};
use serde_json::json;

const SECURE: [Preset; 2] = [Preset::KubeControllerManager, Preset::KubeScheduler];

#[test]
fn with_the_proxys_token_the_components_answer_401_during_an_outage() {
    let stack = LocalStack::start().unwrap();
    let token = stack.prometheus_token();
    for preset in Preset::ALL {
        assert_eq!(stack.scrape(preset, "/metrics", &token).status, 200, "{}", preset.name());
    }
    // Each secure component reviewed the proxy's token itself: one TokenReview and one SAR each.
    assert_eq!(stack.apiserver.delegated_count(CallKind::TokenReview), 2);
    assert_eq!(stack.apiserver.delegated_count(CallKind::SubjectAccessReview), 2);

    stack.apiserver.set_fault(Fault::Down);
    std::thread::sleep(Duration::from_secs(11)); // past the components' own 10 s cache
    for preset in [Preset::Etcd, Preset::KubeProxy] {
        assert_eq!(stack.scrape(preset, "/metrics", &token).status, 200, "{}", preset.name());
    }
    for preset in SECURE {
        let answer = stack.scrape(preset, "/metrics", &token);
        assert_eq!(answer.status, 401, "{}: {}", preset.name(), answer.text());
        assert!(answer.text().contains("\"reason\":\"Unauthorized\""), "the component's own Status: {}", answer.text());
    }
}

#[test]
fn with_no_upstream_credential_and_metrics_always_allowed_the_components_survive_an_outage() {
    let always_allow = vec!["/healthz", "/readyz", "/livez", "/metrics"];
    let stack = LocalStack::start_with(StackOptions {
        upstream_credentials: SECURE.iter().map(|p| (*p, UpstreamCredentials::None)).collect(),
        component_always_allow_paths: SECURE.iter().map(|p| (*p, always_allow.clone())).collect(),
        ..StackOptions::default()
    })
    .unwrap();
    let token = stack.prometheus_token();
    for preset in Preset::ALL {
        assert_eq!(stack.scrape(preset, "/metrics", &token).status, 200, "{}", preset.name());
    }
    stack.apiserver.set_fault(Fault::Down);
    std::thread::sleep(Duration::from_secs(11));
    for preset in Preset::ALL {
        let answer = stack.scrape(preset, "/metrics", &token);
        assert_eq!(answer.status, 200, "{} during the outage: {}", preset.name(), answer.text());
    }
    // The gate still decides: an unknown caller gets 503, nothing reaches the component.
    let before = stack.upstream_requests();
    let stranger = stack.token(&ServiceAccount::prometheus_server(), TokenOptions::default().lifetime_secs(1800));
    assert_eq!(stack.scrape(Preset::KubeScheduler, "/metrics", &stranger).status, 503);
    assert_eq!(stack.upstream_requests(), before);
    assert_eq!(stack.apiserver.delegated_calls().len(), 0, "the components asked the apiserver");
    // What the components still protect themselves: /configz is not an always-allowed path.
}

fn short_ttls(stale_allow_seconds: u32) -> serde_json::Value {
    json!({"cache": {
        "token_review_ttl_seconds": 1, "allow_ttl_seconds": 1, "deny_ttl_seconds": 1,
        "stale_allow_seconds": stale_allow_seconds
    }})
}

#[test]
fn stale_allows_serve_through_an_outage_when_enabled_and_only_then() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::Etcd, Preset::KubeProxy],
        listener_plugin_config: vec![(Preset::Etcd, short_ttls(30)), (Preset::KubeProxy, short_ttls(0))],
        ..StackOptions::default()
    })
    .unwrap();
    let allowed = stack.prometheus_token();
    let denied = stack.nobody_token();
    // A token that expires in 3 s: its answer may never stand in past that.
    let short_lived = stack.token(&ServiceAccount::prometheus_server(), TokenOptions::default().lifetime_secs(3));
    for preset in [Preset::Etcd, Preset::KubeProxy] {
        assert_eq!(stack.scrape(preset, "/metrics", &allowed).status, 200);
        assert_eq!(stack.scrape(preset, "/metrics", &denied).status, 403);
    }
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &short_lived).status, 200);

    stack.apiserver.set_fault(Fault::Down);
    std::thread::sleep(Duration::from_millis(1500)); // every TTL (1 s) has run out
    // Opted in: the expired allow stands in, counted and logged.
    let answer = stack.scrape(Preset::Etcd, "/metrics", &allowed);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(stack.counter("wasmcustom.metrics_gate_stale_answers") >= 2, "TokenReview and SAR answers both served stale");
    stack.envoy.wait_for_log("serving a cached allow past its TTL", Duration::from_secs(5)).unwrap();
    // Never a deny: the expired denial is not repeated, the request is 503.
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &denied).status, 503);
    // Not opted in: 503.
    assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &allowed).status, 503);
    // Never past the token's exp.
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &short_lived).status, 503, "a stale answer outlived its token");
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &allowed).status, 200);

    // Back up: fresh answers replace the stale ones at once.
    stack.apiserver.set_fault(Fault::None);
    let reviews = stack.apiserver.count(CallKind::TokenReview);
    assert_eq!(stack.scrape(Preset::Etcd, "/metrics", &allowed).status, 200);
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), reviews + 1);
    assert!(!stack.envoy.log().contains(&allowed), "a token reached the log");
}
