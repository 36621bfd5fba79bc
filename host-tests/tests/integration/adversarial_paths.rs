//! An attacker with a VALID token tries to reach something other than /metrics by spelling the
//! path oddly, over raw sockets (no client library normalises the request line). Only the path
//! decides here.
//!
//! - Every spelling that is not exactly `/metrics` after Envoy's normalisation is refused — 404 by
//!   the gate, or Envoy's own 400/403/431 for a request line that is not valid HTTP — and the
//!   component receives nothing.
//! - Some spellings ARE `/metrics` after Envoy's RFC 3986 normalisation (dot segments, `%2e`,
//!   percent-encoded unreserved characters, `..;` segments, backslashes read as slashes, the
//!   absolute form): they are admitted, and the component receives exactly `/metrics` — the path
//!   the gate authorized is the path the component sees.

use std::time::Duration;

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::adversarial::{
    assert_forwarded_clean, bearer_line, exchange, get_bytes, h2_request, Exchange,
};
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};

/// kube-proxy (no upstream credentials) and kube-scheduler (the proxy's own token upstream).
const PRESETS: [Preset; 2] = [Preset::KubeProxy, Preset::KubeScheduler];

/// The gate's own 404.
const GATE_404: &str = "404 Not Found: this path is not served here";

fn stack() -> LocalStack {
    LocalStack::start_with(StackOptions {
        presets: PRESETS.to_vec(),
        ..Default::default()
    })
    .unwrap()
}

fn send(stack: &LocalStack, preset: Preset, target: &[u8], token: &str) -> Exchange {
    let request = get_bytes(target, &[&bearer_line(token), b"Connection: close"]);
    exchange(stack.addr(preset), &request, 1, Duration::from_secs(10))
}

fn shown(target: &[u8]) -> String {
    let text = String::from_utf8_lossy(target);
    if text.len() > 80 {
        format!(
            "{:?}… ({} bytes)",
            text.chars().take(60).collect::<String>(),
            target.len()
        )
    } else {
        format!("{text:?}")
    }
}

fn short(text: &str) -> String {
    text.chars().take(120).collect()
}

/// Sends each target with a valid token and asserts one of `statuses` and nothing upstream.
fn assert_refused(stack: &LocalStack, token: &str, targets: &[&[u8]], statuses: &[u16]) -> usize {
    let mut cases = 0;
    for target in targets {
        for preset in PRESETS {
            let answer = send(stack, preset, target, token);
            let what = format!("GET {} on {}", shown(target), preset.name());
            let Some(response) = answer.responses.first() else {
                panic!("{what}: no answer at all ({})", answer.summary());
            };
            assert!(
                statuses.contains(&response.status),
                "{what}: {} {} (expected one of {statuses:?})",
                response.status,
                short(&response.text())
            );
            if response.status == 404 {
                assert!(
                    response.text().starts_with(GATE_404),
                    "{what}: a 404 that is not the gate's: {}",
                    short(&response.text())
                );
            }
            assert_eq!(
                stack.component(preset).count(),
                0,
                "{what}: reached the component: {:?}",
                stack.component(preset).requests()
            );
            cases += 1;
        }
    }
    cases
}

#[test]
fn spellings_that_are_not_metrics_are_404_and_reach_nothing() {
    let stack = stack();
    let token = stack.prometheus_token();
    let long_miss = format!("/{}", "metrics/".repeat(1000));
    let long_traversal = format!(
        "/metrics{}/debug/pprof",
        "/x/..".repeat(1500).replace("/..", "/%2e%2e")
    );
    let targets: Vec<&[u8]> = vec![
        b"//metrics",
        b"///metrics",
        b"/metrics/",
        b"/metrics//",
        b"/METRICS",
        b"/Metrics",
        b"/metrics;x",
        b"/metrics;",
        b"/;/metrics",
        b"/metrics%2f..",
        b"/metrics%2F..%2Fdebug%2Fpprof",
        b"/%2fmetrics",
        b"/metrics%2f",
        b"/metrics/%2e%2e/debug/pprof",
        b"/metrics/../debug/pprof",
        b"/metrics/..;/x",
        b"/metrics/..;/debug/pprof",
        b"/metrics/.",
        b"/metrics/x/..",
        b"/metrics.",
        b"/metrics%20",
        b"/metrics%09",
        b"/metrics%3Fx",
        b"/metrics%23frag",
        b"/%25%36detrics",
        b"/metrics\\",
        b"/%5cmetrics",
        b"/debug/..%5cmetrics",
        b"/metrics%5c..%5cdebug",
        b"/debug/pprof?/metrics",
        b"/debug?x=/metrics",
        b"/debug/pprof/heap",
        b"/",
        b"http://x/debug/pprof",
        b"http://x//metrics",
        b"http://x/metrics/",
        long_miss.as_bytes(),
        long_traversal.as_bytes(),
    ];
    let cases = assert_refused(&stack, &token, &targets, &[404]);
    assert_eq!(
        stack.apiserver.calls().len(),
        0,
        "the apiserver was asked about a path that is never served"
    );
    assert_eq!(stack.upstream_requests(), 0);
    assert_eq!(
        stack.counter("wasmcustom.metrics_gate_requests_denied_path"),
        cases as u64
    );
}

#[test]
fn request_lines_that_are_not_valid_http_are_refused_by_envoy_and_reach_nothing() {
    let stack = stack();
    let token = stack.prometheus_token();
    let too_long = format!("/metrics?{}", "a".repeat(70 * 1024));
    let too_long_path = format!("/{}", "a".repeat(70 * 1024));
    // Envoy's own refusals: 400 for a malformed request line or a fragment, 403 for an https
    // absolute-form URL on a plaintext listener, 431 past its header size limit. The gate's 404
    // would be as good; what matters is that nothing goes upstream.
    let targets: Vec<&[u8]> = vec![
        b"*",
        b"metrics",
        b"\\metrics",
        b"/metrics#frag",
        b"/debug#/metrics",
        b"/metrics%00",
        b"/metrics%00/../debug",
        b"/metrics\x00",
        b"/metrics\x01",
        b"/metrics\x7f",
        b"/metrics\x1b[0m",
        b"/metrics\xff",
        b"/metrics\xc3\xa9",
        b"https://x/metrics",
        too_long.as_bytes(),
        too_long_path.as_bytes(),
    ];
    assert_refused(&stack, &token, &targets, &[400, 403, 404, 431]);
    assert_eq!(stack.upstream_requests(), 0);
}

#[test]
fn spellings_envoy_normalises_into_metrics_are_admitted_as_exactly_metrics() {
    let stack = stack();
    let token = stack.prometheus_token();
    let long_dots = format!("{}/metrics", "/a/..".repeat(1000));
    // Each of these is `/metrics` once Envoy has normalised it (RFC 3986 dot segments, `%2e`,
    // unreserved %XX decoded, `..;` taken as a dot segment, `\` taken as `/`, the absolute form;
    // a tab, CR or second space after the target read as request-line separators). The gate
    // sees `/metrics` and so does the component: exactly what was authorized.
    let targets: Vec<&[u8]> = vec![
        b"/./metrics",
        b"/%2e/metrics",
        b"/%2E/metrics",
        b"/%2e%2e/metrics",
        b"/.%2e/metrics",
        b"/../metrics",
        b"/../../../metrics",
        b"/debug/../metrics",
        b"/debug/pprof/../../metrics",
        b"/debug/pprof/%2e%2e/%2e%2e/metrics",
        b"/%6detrics",
        b"/m%65trics",
        b"/%6D%65%74%72%69%63%73",
        b"/..;/metrics",
        b"/x/..;/metrics",
        b"/debug\\..\\metrics",
        b"http://x/metrics",
        b"http://attacker.example/metrics",
        b"/metrics\t",
        b"/metrics\r",
        b"/metrics ",
        long_dots.as_bytes(),
    ];
    for target in &targets {
        for preset in PRESETS {
            let before = stack.component(preset).count();
            let answer = send(&stack, preset, target, &token);
            let what = format!("GET {} on {}", shown(target), preset.name());
            let status = answer.responses.first().map(|r| r.status);
            assert_eq!(status, Some(200), "{what}: {}", answer.summary());
            let seen = stack.component(preset).requests();
            assert_eq!(
                seen.len(),
                before + 1,
                "{what}: expected exactly one upstream request"
            );
            let last = seen.last().unwrap();
            assert_eq!(last.method, "GET", "{what}");
            assert_eq!(
                last.path_and_query, "/metrics",
                "{what}: the component received another path than the one authorized"
            );
            assert_forwarded_clean(&stack, preset, last, &[&token], &what);
        }
    }
    let total = targets.len() * PRESETS.len();
    assert_eq!(stack.upstream_requests(), total);
    assert_eq!(
        stack.counter("wasmcustom.metrics_gate_requests_allowed"),
        total as u64
    );
    assert_eq!(
        stack.counter("wasmcustom.metrics_gate_requests_denied_path"),
        0
    );
}

#[test]
fn query_strings_are_forwarded_verbatim_but_never_decide_the_path() {
    let stack = stack();
    let token = stack.prometheus_token();
    // Allowed: the path is exactly /metrics; the query goes on as sent, not normalised.
    let allowed: [&[u8]; 6] = [
        b"/metrics?x=../../debug",
        b"/metrics?x=..%2f..%2fdebug%2fpprof",
        b"/metrics?",
        b"/metrics?a=%00&b=%0d%0a",
        b"/metrics?/../../debug/pprof",
        b"/metrics??#",
    ];
    for target in allowed {
        for preset in PRESETS {
            let what = format!("GET {} on {}", shown(target), preset.name());
            let answer = send(&stack, preset, target, &token);
            let response = answer
                .responses
                .first()
                .unwrap_or_else(|| panic!("{what}: {}", answer.summary()));
            if target.contains(&b'#') {
                // A fragment is not part of a request target: Envoy refuses it.
                assert_eq!(response.status, 400, "{what}");
                continue;
            }
            assert_eq!(response.status, 200, "{what}: {}", short(&response.text()));
            let last = stack.component(preset).requests().pop().unwrap();
            assert_eq!(
                last.path_and_query.as_bytes(),
                target,
                "{what}: the query was not forwarded as sent"
            );
            assert_forwarded_clean(&stack, preset, &last, &[&token], &what);
        }
    }
    let forwarded = stack.upstream_requests();
    assert_eq!(forwarded, 5 * PRESETS.len());
    // Refused: the path part is not /metrics, whatever the query says.
    let refused: [&[u8]; 4] = [
        b"/debug/pprof?/metrics",
        b"/?/metrics",
        b"/metrics/?x=1",
        b"/metrics;?x=/metrics",
    ];
    assert_refused_with_forwarded(&stack, &token, &refused, forwarded);
}

fn assert_refused_with_forwarded(
    stack: &LocalStack,
    token: &str,
    targets: &[&[u8]],
    forwarded: usize,
) {
    for target in targets {
        for preset in PRESETS {
            let answer = send(stack, preset, target, token);
            let what = format!("GET {} on {}", shown(target), preset.name());
            assert_eq!(
                answer.responses.first().map(|r| r.status),
                Some(404),
                "{what}: {}",
                answer.summary()
            );
            assert_eq!(
                stack.upstream_requests(),
                forwarded,
                "{what}: reached the component"
            );
        }
    }
}

#[test]
fn odd_paths_over_http2_get_the_same_answers() {
    let stack = stack();
    let token = stack.prometheus_token();
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_bytes())];
    for path in [
        "//metrics",
        "/metrics/",
        "/METRICS",
        "/metrics;x",
        "/metrics%2f..",
        "/metrics/%2e%2e/debug/pprof",
        "/debug/pprof",
    ] {
        for preset in PRESETS {
            let answer = h2_request(stack.addr(preset), "GET", path, &auth)
                .unwrap_or_else(|e| panic!("h2 {path} on {}: {e:#}", preset.name()));
            assert_eq!(
                answer.status,
                404,
                "h2 {path} on {}: {}",
                preset.name(),
                short(&answer.text())
            );
            assert_eq!(
                stack.component(preset).count(),
                0,
                "h2 {path} on {}: reached the component",
                preset.name()
            );
        }
    }
    for path in [
        "/%2e%2e/metrics",
        "/debug/../metrics",
        "/%6detrics",
        "/metrics?x=../../debug",
    ] {
        for preset in PRESETS {
            let before = stack.component(preset).count();
            let answer = h2_request(stack.addr(preset), "GET", path, &auth)
                .unwrap_or_else(|e| panic!("h2 {path} on {}: {e:#}", preset.name()));
            assert_eq!(
                answer.status,
                200,
                "h2 {path} on {}: {}",
                preset.name(),
                short(&answer.text())
            );
            let seen = stack.component(preset).requests();
            assert_eq!(seen.len(), before + 1);
            let expected = if path.contains('?') { path } else { "/metrics" };
            assert_eq!(
                seen.last().unwrap().path_and_query,
                expected,
                "h2 {path} on {}",
                preset.name()
            );
            assert_forwarded_clean(
                &stack,
                preset,
                seen.last().unwrap(),
                &[&token],
                &format!("h2 {path}"),
            );
        }
    }
}
