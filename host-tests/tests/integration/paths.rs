//! Only the exact allowed paths pass; every other spelling is 404 before anyone is asked.

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::stack::{StackOptions, LocalStack};
use serde_json::json;

#[test]
fn non_metrics_paths_and_traversal_variants_are_404_without_any_call() {
    let stack = LocalStack::start().unwrap();
    let token = stack.prometheus_token();
    let targets = [
        "/",
        "/debug/pprof",
        "/debug/pprof/heap",
        "/healthz",
        "/configz",
        "/metrics/../debug/pprof",
        "/metrics/%2e%2e/debug/pprof",
        "//metrics",
        "/%6detrics/extra",
        "/metrics%2f..",
        "/metrics%2F..%2Fdebug",
        "/METRICS",
        "/Metrics",
        "/metrics;x",
        "/metrics/",
        "/metrics.",
        "/metricsx",
        "/metrics/cadvisor",
        "/metrics%00",
    ];
    for target in targets {
        for preset in [Preset::KubeScheduler, Preset::KubeProxy] {
            let answer = stack.scrape(preset, target, &token);
            // Envoy itself refuses a few malformed targets (NUL) with 400 before the filter runs.
            let expected = if target.contains("%00") { [400, 404] } else { [404, 404] };
            assert!(expected.contains(&answer.status), "{target} on {}: {} {}", preset.name(), answer.status, answer.text());
        }
    }
    assert_eq!(stack.apiserver.calls().len(), 0, "the apiserver was asked about a path that is never served");
    assert_eq!(stack.upstream_requests(), 0);
}

#[test]
fn dot_segments_resolve_before_matching() {
    // Envoy normalises `/debug/../metrics` and `/%6detrics` to `/metrics` (RFC 3986) before the
    // filter: the path checked is exactly the path forwarded.
    let stack = LocalStack::start().unwrap();
    let token = stack.prometheus_token();
    for target in ["/debug/../metrics", "/./metrics", "/%6detrics"] {
        let answer = stack.scrape(Preset::Etcd, target, &token);
        assert_eq!(answer.status, 200, "{target}");
    }
    let seen: Vec<String> = stack.component(Preset::Etcd).requests().into_iter().map(|r| r.path_and_query).collect();
    assert_eq!(seen, ["/metrics", "/metrics", "/metrics"]);
}

#[test]
fn configured_paths_replace_the_default() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy],
        plugin_config: json!({"allowed_paths": ["/metrics/slis"]}),
        ..StackOptions::default()
    })
    .unwrap();
    let token = stack.prometheus_token();
    assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &token).status, 404);
    // Allowed path, but the example binding grants only /metrics: the SAR decides.
    assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics/slis", &token).status, 403);
}
