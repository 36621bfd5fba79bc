//! What reaches the upstream: never the caller's credentials or identity claims; the proxy's own
//! token where the component checks callers; identity headers only when enabled, from the review.

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::stack::{StackOptions, LocalStack};
use metrics_gate_host_tests::tokens::ServiceAccount;
use serde_json::json;

#[test]
fn the_callers_authorization_and_identity_headers_never_reach_the_upstream() {
    let stack = LocalStack::start().unwrap();
    let token = stack.prometheus_token();
    let bearer = format!("Bearer {token}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("x-remote-user", "system:admin"),
        ("x-remote-groups", "system:masters"),
        ("x-remote-extra-scopes", "all"),
        ("accept", "text/plain"),
    ];
    for preset in Preset::ALL {
        let answer = stack.request(preset, "GET", "/metrics", &headers);
        assert_eq!(answer.status, 200, "{}: {}", preset.name(), answer.text());
        let seen = stack.component(preset).requests().pop().unwrap();
        let names: Vec<&str> = seen.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.iter().any(|n| n.starts_with("x-remote-")), "{}: {names:?}", preset.name());
        assert!(seen.headers.iter().all(|(_, v)| !v.contains(&token)), "{}: the caller's token went upstream", preset.name());
        assert_eq!(seen.header("accept"), Some("text/plain"));
        let upstream_auth = seen.header_values("authorization");
        match preset {
            // They check their callers themselves: Envoy presents the proxy's own token.
            Preset::KubeControllerManager | Preset::KubeScheduler => {
                assert_eq!(upstream_auth.len(), 1, "{}", preset.name());
                let proxy_token = String::from_utf8(stack.credentials.read("token").unwrap()).unwrap();
                assert_eq!(upstream_auth[0], format!("Bearer {proxy_token}"));
            }
            _ => assert!(upstream_auth.is_empty(), "{}", preset.name()),
        }
    }
}

#[test]
fn identity_headers_carry_the_reviewed_identity_when_enabled() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::Etcd],
        plugin_config: json!({"identity_headers": {"enabled": true}}),
        ..StackOptions::default()
    })
    .unwrap();
    let bearer = format!("Bearer {}", stack.prometheus_token());
    let answer = stack.request(
        Preset::Etcd,
        "GET",
        "/metrics",
        &[("authorization", &bearer), ("x-remote-user", "system:admin"), ("x-remote-groups", "system:masters")],
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = stack.component(Preset::Etcd).requests().pop().unwrap();
    let sa = ServiceAccount::prometheus_server();
    assert_eq!(seen.header_values("x-remote-user"), [sa.username()]);
    assert_eq!(seen.header_values("x-remote-groups"), [sa.groups().join("|")]);
    assert!(seen.header_values("authorization").is_empty());
}
