//! 401 for every request without one token the Kubernetes API accepts; nothing reaches the upstream.

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::CallKind;
use metrics_gate_host_tests::raw_http::Response;
use metrics_gate_host_tests::stack::{StackOptions, LocalStack};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};
use serde_json::json;

fn assert_401(answer: &Response, what: &str) {
    assert_eq!(answer.status, 401, "{what}: {}", answer.text());
    let challenge = answer.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer"), "{what}: challenge {challenge:?}");
}

#[test]
fn missing_malformed_and_duplicate_credentials_never_reach_the_apiserver() {
    let stack = LocalStack::start().unwrap();
    let token = stack.prometheus_token();
    let bearer = format!("Bearer {token}");
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no header", vec![]),
        ("basic auth", vec![("authorization", "Basic YWRtaW46YWRtaW4=")]),
        ("empty bearer", vec![("authorization", "Bearer ")]),
        ("scheme only", vec![("authorization", "Bearer")]),
        ("token with spaces", vec![("authorization", "Bearer not a token")]),
        ("duplicate headers", vec![("authorization", bearer.as_str()), ("authorization", bearer.as_str())]),
    ];
    for (what, headers) in &cases {
        let answer = stack.request(Preset::KubeScheduler, "GET", "/metrics", headers);
        assert_401(&answer, what);
        assert!(!answer.text().contains(&token), "{what}: the body echoes the token");
    }
    let oversized = format!("Bearer {}", "a".repeat(9000));
    assert_401(&stack.request(Preset::KubeProxy, "GET", "/metrics", &[("authorization", &oversized)]), "oversized");
    assert_eq!(stack.apiserver.calls().len(), 0, "the apiserver was asked");
    assert_eq!(stack.upstream_requests(), 0);
    assert_eq!(stack.counter("wasmcustom.metrics_gate_requests_unauthenticated"), cases.len() as u64 + 1);
}

#[test]
fn tokens_the_apiserver_rejects_are_401() {
    let stack = LocalStack::start().unwrap();
    let expired = stack.token(&ServiceAccount::prometheus_server(), TokenOptions::expired());
    // Change one signature character well before the end: the last base64url character of an
    // RS256 signature also carries padding bits, so changing it may leave the signature intact.
    let token = stack.prometheus_token();
    let at = token.len() - 10;
    let swapped = if token.as_bytes()[at] == b'A' { "B" } else { "A" };
    let forged = format!("{}{swapped}{}", &token[..at], &token[at + 1..]);
    for (what, token) in [("garbage", "garbage-token.abc.def"), ("expired", expired.as_str()), ("bad signature", &forged)] {
        let answer = stack.scrape(Preset::KubeControllerManager, "/metrics", token);
        assert_401(&answer, what);
        assert!(answer.header("www-authenticate").unwrap().contains("invalid_token"), "{what}");
    }
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 3);
    assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 0);
    assert_eq!(stack.upstream_requests(), 0);
}

#[test]
fn audiences_are_asked_for_and_must_match() {
    let stack = LocalStack::start_with(StackOptions {
        plugin_config: json!({"audiences": ["metrics-gate"]}),
        ..StackOptions::default()
    })
    .unwrap();
    // A token for the apiserver's default audience is not for us.
    assert_401(&stack.scrape(Preset::Etcd, "/metrics", &stack.prometheus_token()), "wrong audience");
    let review = &stack.apiserver.calls()[0];
    assert_eq!(review.spec["audiences"], json!(["metrics-gate"]));
    assert_eq!(stack.upstream_requests(), 0);

    let ours = stack.token(&ServiceAccount::prometheus_server(), TokenOptions::default().audiences(&["metrics-gate"]));
    let answer = stack.scrape(Preset::Etcd, "/metrics", &ours);
    assert_eq!(answer.status, 200, "{}", answer.text());
}
