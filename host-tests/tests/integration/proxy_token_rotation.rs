//! The proxy's own ServiceAccount token reaches the apiserver through Envoy (the filter never sees
//! it), and kubelet's rotation of the token file is picked up without a restart.

use std::time::{Duration, Instant};

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::stack::{no_cache, LocalStack, StackOptions};
use serde_json::json;
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};

/// Scrapes until `want` or a deadline: Envoy reloads the SDS file asynchronously after the swap.
fn eventually(stack: &LocalStack, token: &str, want: u16) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = stack.scrape(Preset::KubeProxy, "/metrics", token).status;
        if status == want || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_rotated_proxy_token_is_used_without_restarting_envoy() {
    // Caching off, so that every scrape makes the proxy show its current token to the apiserver.
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy],
        plugin_config: json!({"cache": no_cache()}),
        ..Default::default()
    })
    .unwrap();
    let scraper = stack.prometheus_token();
    let pid = stack.envoy.pid();
    assert_eq!(eventually(&stack, &scraper, 200), 200);

    // Rotate to a token of an account that may not create reviews: the apiserver now refuses the
    // proxy, which proves the new file is what Envoy sends.
    let unbound = stack.token(&ServiceAccount::new("metrics-gate", "not-bound"), TokenOptions::default());
    stack.rotate_proxy_token(&unbound).unwrap();
    assert_eq!(eventually(&stack, &scraper, 503), 503, "the rotated token was not picked up");
    let last = stack.apiserver.calls().pop().unwrap();
    assert_eq!(last.caller.as_deref(), Some("system:serviceaccount:metrics-gate:not-bound"));

    // And a fresh valid token of the proxy's account brings it back.
    let fresh = stack.token(&ServiceAccount::metrics_gate(), TokenOptions::default().lifetime_secs(7200));
    stack.rotate_proxy_token(&fresh).unwrap();
    assert_eq!(eventually(&stack, &scraper, 200), 200);
    assert_eq!(stack.envoy.pid(), pid);
    assert!(!stack.envoy.log().contains(&fresh), "the proxy's token reached Envoy's log");
}
