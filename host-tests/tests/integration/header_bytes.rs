//! Header values are bytes, not text: a value that is not UTF-8 (HTTP's obs-text, e.g. a scraper's
//! `User-Agent: caf\xE9`) gets the same answer as any other request and never stops the gate.
//! (It used to trap the VM inside the proxy-wasm SDK: every listener of the worker then answered
//! 503 and requests waiting on a review were never answered.)

use std::time::Duration;

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::Fault;
use metrics_gate_host_tests::raw_http;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};

const HOSTILE_VALUES: [&[u8]; 5] = [b"caf\xE9", b"\xff\xfe\xfd", b"\xc3\x28", b"ok \x80 then", b"\xf0\x9f\x98"];

#[test]
fn values_that_are_not_utf8_get_ordinary_answers_and_the_vm_stays_up() {
    let stack = LocalStack::start_with(StackOptions { presets: vec![Preset::KubeProxy], ..Default::default() }).unwrap();
    let addr = stack.addr(Preset::KubeProxy);
    let bearer = format!("Bearer {}", stack.prometheus_token());
    let payload = stack.component(Preset::KubeProxy).payload();

    for value in HOSTILE_VALUES {
        for name in ["user-agent", "x-foo", "accept"] {
            let allowed = raw_http::request_bytes(addr, "GET", "/metrics", &[("authorization", bearer.as_bytes()), (name, value)]).unwrap();
            assert_eq!(allowed.status, 200, "{name}: {value:?}: {}", allowed.text());
            assert_eq!(allowed.body, payload.as_ref(), "{name}: {value:?}");
            let anonymous = raw_http::request_bytes(addr, "GET", "/metrics", &[(name, value)]).unwrap();
            assert_eq!(anonymous.status, 401, "{name}: {value:?}: {}", anonymous.text());
        }
        // Obs-text inside the credential itself is simply not a bearer token.
        let mut garbled = bearer.clone().into_bytes();
        garbled.extend_from_slice(value);
        let answer = raw_http::request_bytes(addr, "GET", "/metrics", &[("authorization", &garbled)]).unwrap();
        assert_eq!(answer.status, 401, "authorization with {value:?}: {}", answer.text());
    }
    let allowed_count = HOSTILE_VALUES.len() * 3;
    assert_eq!(stack.component(Preset::KubeProxy).count(), allowed_count, "only the authorized requests went upstream");
    assert_eq!(stack.counter("wasm.metrics-gate.vm_reload_success"), 0, "the VM was reloaded: it crashed");
    assert!(!stack.envoy.log().contains("panicked"), "{}", stack.envoy.log_tail(20));
}

#[test]
fn a_request_waiting_on_a_review_is_not_disturbed_by_hostile_bytes() {
    let stack = LocalStack::start_with(StackOptions { presets: vec![Preset::Etcd], ..Default::default() }).unwrap();
    let addr = stack.addr(Preset::Etcd);
    stack.apiserver.set_fault(Fault::Slow(Duration::from_millis(1500)));
    let waiting = {
        let bearer = format!("Bearer {}", stack.prometheus_token());
        std::thread::spawn(move || raw_http::request(addr, "GET", "/metrics", &[("authorization", &bearer)]).unwrap())
    };
    std::thread::sleep(Duration::from_millis(300));
    for value in HOSTILE_VALUES {
        let answer = raw_http::request_bytes(addr, "GET", "/metrics", &[("user-agent", value)]).unwrap();
        assert_eq!(answer.status, 401, "{value:?}");
    }
    let answer = waiting.join().unwrap();
    assert_eq!(answer.status, 200, "the waiting request: {}", answer.text());
    assert_eq!(stack.component(Preset::Etcd).count(), 1);
}
