//! Static authorization: listed users and groups are let in after authentication without a
//! SubjectAccessReview; everyone else is still reviewed — the groups are really checked.

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::CallKind;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};
use serde_json::json;

#[test]
fn listed_groups_skip_the_review_and_others_do_not() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy],
        // nobody has no RBAC binding, but its namespace's group is listed.
        plugin_config: json!({"authorization": {"static_allow": {"groups": ["system:serviceaccounts:observability"]}}}),
        ..Default::default()
    })
    .unwrap();
    let answer = stack.scrape(Preset::KubeProxy, "/metrics", &stack.nobody_token());
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 1);
    assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 0);

    // An account of another namespace is not in the group: reviewed, and denied.
    let outsider = stack.token(&ServiceAccount::new("default", "scraper"), TokenOptions::default());
    assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &outsider).status, 403);
    assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 1);
    // Static authorization never skips authentication.
    assert_eq!(stack.request(Preset::KubeProxy, "GET", "/metrics", &[]).status, 401);
    assert_eq!(stack.component(Preset::KubeProxy).count(), 1);
}
