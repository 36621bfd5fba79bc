//! A request body must not carry a request past the gate: while the filter waits for the
//! apiserver, body data arriving must not let Envoy resume the request (a filter that answers
//! "continue" to body data releases the paused headers).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::Fault;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};

fn get_with_body(stack: &LocalStack, token: &str) -> String {
    let addr = stack.addr(Preset::KubeProxy);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "GET /metrics HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-length: 4\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    // The body comes after the headers, while the TokenReview is under way.
    std::thread::sleep(Duration::from_millis(100));
    stream.write_all(b"abcd").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn body_data_during_the_review_does_not_open_the_gate() {
    let stack = LocalStack::start_with(StackOptions { presets: vec![Preset::KubeProxy], ..Default::default() }).unwrap();
    stack.apiserver.set_fault(Fault::Slow(Duration::from_millis(600)));
    let answer = get_with_body(&stack, &stack.nobody_token());
    assert!(answer.starts_with("HTTP/1.1 403"), "{}", answer.lines().next().unwrap_or_default());
    let answer = get_with_body(&stack, "garbage-token");
    assert!(answer.starts_with("HTTP/1.1 401"), "{}", answer.lines().next().unwrap_or_default());
    assert_eq!(stack.component(Preset::KubeProxy).count(), 0, "a request reached the upstream before it was authorized");
    // And an authorized one with a body still goes through, body included.
    let answer = get_with_body(&stack, &stack.prometheus_token());
    assert!(answer.starts_with("HTTP/1.1 200"), "{}", answer.lines().next().unwrap_or_default());
}
