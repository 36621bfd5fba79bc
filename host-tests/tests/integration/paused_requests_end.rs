//! Every request the filter holds while a review is under way ends within a bound — the apiserver
//! timeout plus a margin per review — whatever happens: waiters that later ask their own question,
//! an apiserver that answers late, and a VM that crashes under them (then Envoy's
//! `request_timeout`, rendered from the same bound, ends them).

use std::time::{Duration, Instant};

use metrics_gate_envoy::{paused_request_bound_ms, Preset};
use metrics_gate_host_tests::apiserver::{CallKind, Fault};
use metrics_gate_host_tests::raw_http;
use metrics_gate_host_tests::stack::{no_cache, LocalStack, StackOptions, WasmBuild};
use serde_json::json;

/// Two identical requests 50 ms apart with caches off: the second waits on the first's
/// TokenReview, then (the answer not being cacheable) asks its own, then waits again on a slow
/// SubjectAccessReview. It used to be parked without a timer and answered only by Envoy's 300 s
/// stream idle timeout.
#[test]
fn a_waiter_that_asks_again_and_waits_again_is_answered() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::Etcd],
        plugin_config: json!({"cache": no_cache()}),
        ..Default::default()
    })
    .unwrap();
    let addr = stack.addr(Preset::Etcd);
    stack.apiserver.set_fault(Fault::SlowReviews {
        token_review: Duration::from_millis(300),
        access_review: Duration::from_millis(900),
    });
    for round in 0..3 {
        let bearer = format!("Bearer {}", stack.prometheus_token());
        let started = Instant::now();
        let requests: Vec<_> = (0..2)
            .map(|i| {
                let bearer = bearer.clone();
                std::thread::sleep(Duration::from_millis(50 * i));
                std::thread::spawn(move || raw_http::request(addr, "GET", "/metrics", &[("authorization", &bearer)]).unwrap())
            })
            .collect();
        for request in requests {
            let answer = request.join().unwrap();
            assert_eq!(answer.status, 200, "round {round}: {}", answer.text());
        }
        // Each review is at most 0.9 s here: 10 s is far from the old 300 s and from noise.
        assert!(started.elapsed() < Duration::from_secs(10), "round {round}: took {:?}", started.elapsed());
    }
    assert!(stack.apiserver.count(CallKind::SubjectAccessReview) >= 3);
}

/// The VM traps while another request waits on a review: nothing is left to answer that request,
/// so Envoy's own request timeout must end it — refused, never forwarded.
#[test]
fn a_request_paused_in_a_crashed_vm_ends_within_the_bound() {
    let timeout_ms: u32 = 1_000;
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy],
        wasm: WasmBuild::FaultInjection,
        plugin_config: json!({"apiserver": {"timeout_ms": timeout_ms}}),
        ..Default::default()
    })
    .unwrap();
    let addr = stack.addr(Preset::KubeProxy);
    // The apiserver takes longer than any bound: only a deadline can end the paused request.
    stack.apiserver.set_fault(Fault::Slow(Duration::from_secs(60)));
    let bearer = format!("Bearer {}", stack.prometheus_token());
    let started = Instant::now();
    let paused = {
        let bearer = bearer.clone();
        std::thread::spawn(move || raw_http::request(addr, "GET", "/metrics", &[("authorization", &bearer)]).unwrap())
    };
    std::thread::sleep(Duration::from_millis(200));
    let crash = raw_http::request(addr, "GET", "/metrics", &[("authorization", &bearer), ("x-metrics-gate-fault", "trap")]).unwrap();
    assert!(crash.status >= 500, "the crashing request: {}", crash.status);
    let answer = paused.join().unwrap();
    let elapsed = started.elapsed();
    assert!(answer.status >= 400, "the paused request was answered {}", answer.status);
    let bound = Duration::from_millis(u64::from(paused_request_bound_ms(timeout_ms)));
    assert!(elapsed < bound + Duration::from_secs(3), "the paused request took {elapsed:?} (bound {bound:?})");
    assert_eq!(stack.component(Preset::KubeProxy).count(), 0, "a request went upstream");
}

/// Without a crash the filter itself answers a request whose review never comes back: Envoy's
/// callout timeout (the apiserver timeout) first, the filter's deadline as the second lock.
#[test]
fn a_review_that_never_returns_is_a_503_within_the_apiserver_timeout() {
    let timeout_ms: u32 = 800;
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy],
        plugin_config: json!({"apiserver": {"timeout_ms": timeout_ms}}),
        ..Default::default()
    })
    .unwrap();
    stack.apiserver.set_fault(Fault::Slow(Duration::from_secs(60)));
    let started = Instant::now();
    let answers: Vec<_> = (0..4)
        .map(|_| {
            let addr = stack.addr(Preset::KubeProxy);
            let bearer = format!("Bearer {}", stack.prometheus_token());
            std::thread::spawn(move || raw_http::request(addr, "GET", "/metrics", &[("authorization", &bearer)]).unwrap())
        })
        .collect();
    for answer in answers {
        let answer = answer.join().unwrap();
        assert_eq!(answer.status, 503, "{}", answer.text());
        assert!(answer.header("retry-after").is_some());
    }
    assert!(started.elapsed() < Duration::from_millis(u64::from(timeout_ms) + 1_000 + 3_000), "took {:?}", started.elapsed());
    assert_eq!(stack.component(Preset::KubeProxy).count(), 0);
    assert_eq!(stack.counter("wasmcustom.metrics_gate_callouts_in_flight"), 0);
}
