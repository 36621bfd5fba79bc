//! What an admitted request carries to the component, per `upstream_credentials`: `none` strips the
//! caller's Authorization, `proxy` replaces it with the proxy's own token, `passthrough` forwards the
//! caller's unchanged (the renderer sets the filter's `forward_caller_credentials`). In every mode
//! Proxy-Authorization and client-supplied identity headers stay behind.

use metrics_gate_envoy::{Preset, UpstreamCredentials};
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};

#[test]
fn none_proxy_and_passthrough() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::Etcd, Preset::KubeProxy, Preset::KubeScheduler],
        upstream_credentials: vec![
            (Preset::Etcd, UpstreamCredentials::Passthrough),
            (Preset::KubeProxy, UpstreamCredentials::Proxy),
            // kube-scheduler's fake accepts only the proxy's token: with `none` it sees nothing.
            (Preset::KubeScheduler, UpstreamCredentials::None),
        ],
        ..Default::default()
    })
    .unwrap();
    let token = stack.prometheus_token();
    let auth = format!("Bearer {token}");
    let proxy_token = String::from_utf8(stack.credentials.read("token").unwrap()).unwrap();
    let headers = [
        ("authorization", auth.as_str()),
        ("proxy-authorization", "Basic c2VjcmV0"),
        ("x-remote-user", "system:admin"),
    ];

    let r = stack.request(Preset::Etcd, "GET", "/metrics", &headers);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = stack.component(Preset::Etcd).requests().pop().unwrap();
    assert_eq!(
        seen.header_values("authorization"),
        vec![auth.clone()],
        "passthrough"
    );
    assert!(seen.header("proxy-authorization").is_none());
    assert!(seen.header("x-remote-user").is_none());

    let r = stack.request(Preset::KubeProxy, "GET", "/metrics", &headers);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = stack.component(Preset::KubeProxy).requests().pop().unwrap();
    assert_eq!(
        seen.header_values("authorization"),
        vec![format!("Bearer {proxy_token}")],
        "proxy"
    );
    assert!(seen.headers.iter().all(|(_, v)| !v.contains(&token)));
    assert!(seen.header("proxy-authorization").is_none());

    let before = stack.component(Preset::KubeScheduler).count();
    let _ = stack.request(Preset::KubeScheduler, "GET", "/metrics", &headers);
    assert_eq!(stack.component(Preset::KubeScheduler).count(), before + 1);
    let seen = stack
        .component(Preset::KubeScheduler)
        .requests()
        .pop()
        .unwrap();
    assert!(
        seen.header_values("authorization").is_empty(),
        "none: {:?}",
        seen.headers
    );
    assert!(seen.headers.iter().all(|(_, v)| !v.contains(&token)));
}
