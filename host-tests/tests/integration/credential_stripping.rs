//! What reaches the upstream: never the caller's credentials or identity claims; the proxy's own
//! token where the component checks callers; identity headers only when enabled, from the review.

use metrics_gate_envoy::{Preset, UpstreamCredentials};
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

/// Every header that asserts or carries an identity, in several spellings; the values name an
/// identity no caller may claim, so a leak is easy to see.
const IDENTITY_HEADERS: &[(&str, &str)] = &[
    ("impersonate-user", "system:admin"),
    ("impersonate-group", "system:masters"),
    ("impersonate-uid", "system:admin-uid"),
    ("impersonate-extra-scopes", "system:admin-scope"),
    ("x-remote-user", "system:admin"),
    ("x-remote-groups", "system:masters"),
    ("x-remote-extra-scopes", "system:admin-scope"),
    ("x-forwarded-user", "system:admin"),
    ("x-forwarded-email", "system:admin@example.com"),
    ("x-forwarded-access-token", "system:admin-token"),
    ("x-auth-request-user", "system:admin"),
    ("x-auth-request-access-token", "system:admin-token"),
    ("remote-user", "system:admin"),
    ("x-webauth-user", "system:admin"),
    ("x-forwarded-client-cert", "Subject=\"CN=system:admin\""),
    ("cookie", "session=system:admin-session"),
    ("proxy-authorization", "Basic c3lzdGVtOmFkbWlu"),
    ("x_remote_user", "system:admin"),
    ("x_forwarded_user", "system:admin"),
    ("impersonate_user", "system:admin"),
    ("remote_user", "system:admin"),
];

fn assert_nothing_claims_an_identity(stack: &LocalStack, preset: Preset, protocol: &str, token: &str) {
    let seen = stack.component(preset).requests().pop().unwrap_or_else(|| panic!("{} {protocol}: nothing reached the component", preset.name()));
    for (name, value) in &seen.headers {
        assert!(!value.contains("system:admin") && !value.contains("system:masters"), "{} {protocol}: {name}: {value} reached the component", preset.name());
        // `passthrough` (etcd here) forwards the caller's Authorization by choice; nowhere else.
        let passthrough = preset == Preset::Etcd && name == "authorization";
        assert!(passthrough || !value.contains(token), "{} {protocol}: the caller's token reached the component in {name}", preset.name());
        assert!(!name.contains('_'), "{} {protocol}: {name} reached the component", preset.name());
    }
    assert_eq!(seen.header("x-scrape-id"), Some("kept"), "{} {protocol}: ordinary headers must pass", preset.name());
}

#[test]
fn identity_headers_never_reach_the_component_in_any_upstream_credentials_mode_over_http1_and_http2() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::Etcd, Preset::KubeProxy, Preset::KubeControllerManager],
        upstream_credentials: vec![
            (Preset::Etcd, UpstreamCredentials::Passthrough),
            (Preset::KubeProxy, UpstreamCredentials::Proxy),
            (Preset::KubeControllerManager, UpstreamCredentials::None),
        ],
        ..StackOptions::default()
    })
    .unwrap();
    let token = stack.prometheus_token();
    let bearer = format!("Bearer {token}");
    let mut headers = vec![("authorization", bearer.as_str()), ("x-scrape-id", "kept")];
    headers.extend_from_slice(IDENTITY_HEADERS);
    for preset in [Preset::Etcd, Preset::KubeProxy, Preset::KubeControllerManager] {
        // HTTP/1.1, raw: names exactly as written, underscores included.
        let before = stack.component(preset).count();
        let answer = stack.request(preset, "GET", "/metrics", &headers);
        assert_ne!(answer.status, 401, "{}: {}", preset.name(), answer.text());
        assert_eq!(stack.component(preset).count(), before + 1, "{}: the gate did not forward", preset.name());
        assert_nothing_claims_an_identity(&stack, preset, "HTTP/1.1", &token);

        // HTTP/2 (h2c with prior knowledge), through curl.
        let url = format!("http://{}/metrics", stack.addr(preset));
        let mut curl = std::process::Command::new("curl");
        curl.args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--http2-prior-knowledge", &url]);
        for (name, value) in &headers {
            curl.arg("-H").arg(format!("{name}: {value}"));
        }
        let out = curl.output().expect("curl runs");
        let printed = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(printed.ends_with(" 2"), "{}: not HTTP/2: {printed} {}", preset.name(), String::from_utf8_lossy(&out.stderr));
        assert_eq!(stack.component(preset).count(), before + 2, "{}: HTTP/2 request not forwarded ({printed})", preset.name());
        assert_nothing_claims_an_identity(&stack, preset, "HTTP/2", &token);
    }
}
