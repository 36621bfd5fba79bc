//! HEAD means the same thing at the gate as at the components: its verb is `head` (kube-apiserver's
//! request info; kube-scheduler and kube-controller-manager check it so themselves). A caller whose
//! role grants `get` and `head` (the shipped metrics-reader) gets 200 without a body from every
//! component in every upstream-credentials mode; a caller with `get` alone gets the gate's 403 for
//! HEAD — never the component's own — and 200 for GET.

use std::path::PathBuf;

use metrics_gate_envoy::{Preset, UpstreamCredentials};
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};

fn get_only_rbac() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/rbac/get-only-scraper.yaml")
}

fn check_every_component(mode: UpstreamCredentials) {
    // With `none`, kube-scheduler and kube-controller-manager see no credential: they must allow
    // /metrics without one (`--authorization-always-allow-paths`), as in docs/deploying.md.
    let always_allow = if mode == UpstreamCredentials::None {
        vec![
            (Preset::KubeControllerManager, vec!["/healthz", "/readyz", "/livez", "/metrics"]),
            (Preset::KubeScheduler, vec!["/healthz", "/readyz", "/livez", "/metrics"]),
        ]
    } else {
        Vec::new()
    };
    let stack = LocalStack::start_with(StackOptions {
        upstream_credentials: Preset::ALL.iter().map(|p| (*p, mode.clone())).collect(),
        component_always_allow_paths: always_allow,
        extra_rbac_files: vec![get_only_rbac()],
        ..StackOptions::default()
    })
    .unwrap();
    let reader = format!("Bearer {}", stack.prometheus_token());
    let get_only_sa = ServiceAccount::new("observability", "get-only-scraper");
    let get_only = format!("Bearer {}", stack.token(&get_only_sa, TokenOptions::default()));
    for preset in Preset::ALL {
        let label = format!("{} ({mode:?})", preset.name());
        let component = stack.component(preset);

        let get = stack.request(preset, "GET", "/metrics", &[("authorization", &reader)]);
        assert_eq!(get.status, 200, "{label}: GET: {}", get.text());
        assert_eq!(get.body, component.payload().as_ref(), "{label}");

        let head = stack.request(preset, "HEAD", "/metrics", &[("authorization", &reader)]);
        assert_eq!(head.status, 200, "{label}: HEAD answered {} {}", head.status, head.text());
        assert!(head.body.is_empty(), "{label}: HEAD with a body");
        let seen = component.requests().pop().unwrap();
        assert_eq!(seen.method, "HEAD", "{label}");
        assert_eq!(seen.status, 200, "{label}: the component refused the HEAD");

        let before = component.count();
        let head = stack.request(preset, "HEAD", "/metrics", &[("authorization", &get_only)]);
        assert_eq!(head.status, 403, "{label}: HEAD with get only");
        assert_eq!(component.count(), before, "{label}: a HEAD the caller may not make went upstream");
        let get = stack.request(preset, "GET", "/metrics", &[("authorization", &get_only)]);
        assert_eq!(get.status, 200, "{label}: GET with get only: {}", get.text());
    }
}

#[test]
fn head_is_the_same_answer_everywhere_with_upstream_credentials_proxy() {
    check_every_component(UpstreamCredentials::Proxy);
}

#[test]
fn head_is_the_same_answer_everywhere_with_upstream_credentials_passthrough() {
    check_every_component(UpstreamCredentials::Passthrough);
}

#[test]
fn head_is_the_same_answer_everywhere_with_upstream_credentials_none() {
    check_every_component(UpstreamCredentials::None);
}
