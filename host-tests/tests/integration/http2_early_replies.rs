//! HTTP/2: a request with a body that the gate answers early (405, 404, 401, 403) gets its status,
//! not a stream reset (curl 7.x reported resets for most such POSTs). The listeners take the whole
//! request (up to 64 KiB) before the gate decides, so its answer ends a complete exchange; a
//! larger body gets Envoy's own 413.

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::stack::LocalStack;

fn curl_h2(url: &str, method: &str, body_bytes: usize, headers: &[String]) -> (String, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "x".repeat(body_bytes)).unwrap();
    let body = format!("@{}", file.path().display());
    let mut curl = std::process::Command::new("curl");
    curl.args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--http2-prior-knowledge", "-X", method, "--data-binary", &body, url]);
    for h in headers {
        curl.arg("-H").arg(h);
    }
    let out = curl.output().expect("curl runs");
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn early_replies_to_requests_with_bodies_are_answered_not_reset() {
    let stack = LocalStack::start().unwrap();
    let base = format!("http://{}", stack.addr(Preset::KubeProxy));
    let allowed = format!("authorization: Bearer {}", stack.prometheus_token());
    let nobody = format!("authorization: Bearer {}", stack.nobody_token());
    let cases = [
        ("POST", "/metrics", vec![allowed.clone()], "405"),
        ("PUT", "/metrics", vec![], "405"),
        ("POST", "/debug/pprof", vec![allowed.clone()], "404"),
        ("GET", "/metrics", vec![], "401"),
        ("GET", "/metrics", vec![nobody.clone()], "403"),
    ];
    for (method, path, headers, want) in &cases {
        for size in [10usize, 4_000, 60_000] {
            for round in 0..4 {
                let (printed, err) = curl_h2(&format!("{base}{path}"), method, size, headers);
                assert_eq!(printed, format!("{want} 2"), "{method} {path} with {size} bytes, round {round}: {err}");
            }
        }
        // Beyond the 64 KiB the gate waits for, Envoy answers 413 itself — while the client may
        // still be sending, so this one can end in a reset (documented); never upstream.
        for size in [100_000usize, 1_000_000] {
            let (printed, err) = curl_h2(&format!("{base}{path}"), method, size, headers);
            assert!(printed == "413 2" || err.contains("(92)"), "{method} {path} with {size} bytes: {printed} {err}");
        }
    }
    assert_eq!(stack.component(Preset::KubeProxy).count(), 0);
}
