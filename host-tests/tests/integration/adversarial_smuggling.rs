//! Request smuggling over raw sockets: conflicting or obfuscated framing (Content-Length with
//! Transfer-Encoding, odd Transfer-Encoding spellings, two Content-Lengths), pipelined requests
//! that try to ride on another request's decision, and request bytes hidden in a body.
//!
//! The listeners run with `identity_headers` on, so every request the gate admits carries the
//! reviewed identity in `x-remote-user`: a request that reached a component without going through
//! the gate's decision would lack it (or carry the attacker's `system:admin`). After each case:
//! every request a component received is `GET /metrics` carrying exactly the gate's identity, the
//! number of them is exactly the number of 200s the client got, and it equals the gate's own
//! `requests_allowed` counter.

use std::io::Write;
use std::time::Duration;

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::adversarial::{
    assert_forwarded_with_identity, connect, exchange, exchange_expecting, read_answers, vm_health,
};
use metrics_gate_host_tests::apiserver::Fault;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};
use serde_json::json;

const PRESETS: [Preset; 2] = [Preset::KubeProxy, Preset::KubeScheduler];

/// What an attacker wants to reach, and claims to be.
const SMUGGLED: &str = "GET /debug/pprof HTTP/1.1\r\nHost: x\r\nX-Remote-User: system:admin\r\nImpersonate-User: system:admin\r\n\r\n";

fn stack() -> LocalStack {
    LocalStack::start_with(StackOptions {
        presets: PRESETS.to_vec(),
        plugin_config: json!({"identity_headers": {"enabled": true}}),
        ..Default::default()
    })
    .unwrap()
}

struct Checker<'a> {
    stack: &'a LocalStack,
    token: String,
    /// Every caller token used so far: none may reach a component.
    secrets: Vec<String>,
    /// 200s the clients got so far.
    admitted: usize,
    /// Requests the gate allowed that never reached a component (Envoy refused their malformed
    /// body after the gate's decision, before forwarding).
    allowed_not_forwarded: u64,
}

impl<'a> Checker<'a> {
    fn new(stack: &'a LocalStack) -> Checker<'a> {
        let token = stack.prometheus_token();
        Checker {
            stack,
            secrets: vec![token.clone()],
            token,
            admitted: 0,
            allowed_not_forwarded: 0,
        }
    }

    fn auth(&self) -> String {
        format!("Authorization: Bearer {}\r\n", self.token)
    }

    /// Sends `bytes` on one connection to every preset, expects the answers to be one of
    /// `accepted` status sequences, then checks everything the components ever received.
    ///
    /// A longer pipeline may be cut short: Envoy's HTTP/1 codec closes a connection on which more
    /// than two answers wait to be written ("Too many responses queued", its response-flood guard),
    /// which local answers (401, 404) reach at once. So a sequence of at least two answers that
    /// is the start of an accepted one is fine when Envoy closed the connection after it; the
    /// requests it never answered must not have reached a component either (checked below).
    fn case(&mut self, what: &str, bytes: &[u8], accepted: &[&[u16]]) {
        self.case_with(what, bytes, accepted, false);
    }

    /// `body_error_after_forwarding`: the request's headers are authorized and forwarded before
    /// its body turns out malformed, so the component may have received that one authorized
    /// request although the client got Envoy's 400 for it.
    fn case_with(
        &mut self,
        what: &str,
        bytes: &[u8],
        accepted: &[&[u16]],
        body_error_after_forwarding: bool,
    ) {
        for preset in PRESETS {
            let what = format!("{what} on {}", preset.name());
            let answer = exchange_expecting(
                self.stack.addr(preset),
                bytes,
                accepted,
                Duration::from_secs(8),
            );
            let statuses = answer.statuses();
            let cut_short = |a: &&[u16]| {
                answer.closed
                    && statuses.len() >= 2
                    && statuses.len() < a.len()
                    && a.starts_with(&statuses)
            };
            assert!(
                accepted
                    .iter()
                    .any(|a| *a == statuses.as_slice() || cut_short(a)),
                "{what}: got {statuses:?}, expected one of {accepted:?}; {}",
                answer.summary()
            );
            self.admitted += statuses.iter().filter(|s| **s == 200).count();
            if body_error_after_forwarding && statuses.first() == Some(&400) {
                // The forwarded request may land a moment after the client's 400: let it settle.
                let snapshot = || {
                    let forwarded: usize = PRESETS
                        .iter()
                        .map(|p| self.stack.component(*p).count())
                        .sum();
                    (
                        forwarded,
                        self.stack
                            .counter("wasmcustom.metrics_gate_requests_allowed"),
                    )
                };
                let mut last = snapshot();
                loop {
                    std::thread::sleep(Duration::from_millis(100));
                    let now = snapshot();
                    if now == last {
                        break;
                    }
                    last = now;
                }
                let forwarded = last.0;
                assert!(
                    forwarded <= self.admitted + 1,
                    "{what}: {forwarded} forwarded for {} 200s",
                    self.admitted
                );
                self.admitted = forwarded;
                let allowed = self
                    .stack
                    .counter("wasmcustom.metrics_gate_requests_allowed");
                assert!(
                    allowed >= forwarded as u64,
                    "{what}: {forwarded} forwarded, {allowed} allowed"
                );
                self.allowed_not_forwarded = allowed - forwarded as u64;
            }
            self.check(&what);
        }
    }

    /// Every request any component received went through the gate's decision, and only those.
    fn check(&self, what: &str) {
        let sa = ServiceAccount::prometheus_server();
        let mut forwarded = 0;
        for preset in PRESETS {
            for seen in self.stack.component(preset).requests() {
                assert_eq!(
                    seen.method,
                    "GET",
                    "{what}: {} received {} {}",
                    preset.name(),
                    seen.method,
                    seen.path_and_query
                );
                assert_eq!(
                    seen.path_and_query,
                    "/metrics",
                    "{what}: {} received {}",
                    preset.name(),
                    seen.path_and_query
                );
                let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
                assert_forwarded_with_identity(self.stack, preset, &seen, &secrets, &sa, what);
                for (name, value) in &seen.headers {
                    assert!(
                        !value.contains("system:admin"),
                        "{what}: {name}: {value} reached {}",
                        preset.name()
                    );
                }
                forwarded += 1;
            }
        }
        assert_eq!(
            forwarded, self.admitted,
            "{what}: the components received {forwarded} requests for {} 200s",
            self.admitted
        );
        assert_eq!(
            self.stack
                .counter("wasmcustom.metrics_gate_requests_allowed"),
            forwarded as u64 + self.allowed_not_forwarded,
            "{what}: a component received a request the gate did not allow"
        );
    }
}

#[test]
fn conflicting_or_obfuscated_framing_never_smuggles_a_request() {
    let stack = stack();
    let health = vm_health(&stack);
    let mut c = Checker::new(&stack);
    let auth = c.auth();
    let chunked_then = |te: &str| {
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}{te}\r\n\r\n0\r\n\r\n{SMUGGLED}")
    };

    // Content-Length and Transfer-Encoding together: refused, connection closed.
    for (what, request) in [
        ("CL then TE", format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}")),
        ("TE then CL", format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}")),
        ("CL then TE on POST", format!("POST /metrics HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}")),
        ("CL 0 then TE, anonymous", format!("GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len())),
    ] {
        c.case(what, request.as_bytes(), &[&[400]]);
    }

    // Transfer-Encoding that is not exactly `chunked`: refused (501/400). Whitespace around
    // `chunked` is optional whitespace, so those are chunked — the body ends at the last chunk and
    // the bytes after it are a second request, which the gate answers on its own (404).
    for te in [
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding: identity, chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked;q=1",
        "Transfer-Encoding : chunked",
        "Transfer-Encoding: \"chunked\"",
        "Transfer-Encoding: chunked\x0b",
        "Transfer_Encoding: chunked",
    ] {
        // (An underscore name is dropped by Envoy: no framing, and the chunk bytes become a
        // malformed next request, 400.)
        c.case(
            &format!("{te:?}"),
            chunked_then(te).as_bytes(),
            &[&[501], &[400], &[200, 404], &[200, 400]],
        );
    }
    for te in [
        "Transfer-Encoding:  chunked",
        "Transfer-Encoding:\tchunked",
        "Transfer-Encoding: chunked ",
        "Transfer-Encoding: CHUNKED",
        "Transfer-Encoding: Chunked",
    ] {
        c.case(
            &format!("{te:?}"),
            chunked_then(te).as_bytes(),
            &[&[200, 404], &[501], &[400]],
        );
    }

    // Two Content-Length values, equal or not, or a list: refused whole.
    for cl in [
        "Content-Length: 0\r\nContent-Length: 87",
        "Content-Length: 87\r\nContent-Length: 0",
        "Content-Length: 5\r\nContent-Length: 5",
        "Content-Length: 0, 87",
        "Content-Length: +0",
        "Content-Length: 0x0",
        "Content-Length: -1",
        "Content-Length: 00000000000000000000000000000000000000005",
    ] {
        let request = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}{cl}\r\n\r\n{SMUGGLED}");
        // (A leading-zero length that Envoy reads as 5 takes "GET /" as the body; the rest is a
        // malformed next request, 400.)
        c.case(
            &format!("{cl:?}"),
            request.as_bytes(),
            &[&[400], &[200, 404], &[200, 400]],
        );
    }
    // Chunk sizes that overflow or are not hex: at most the authorized request goes on.
    for chunk in [
        "ffffffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
        "-1\r\n\r\n0\r\n\r\n",
        "3 ;x\r\nabc\r\n0\r\n\r\n",
        "0x3\r\nabc\r\n0\r\n\r\n",
    ] {
        let request = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n{chunk}{SMUGGLED}");
        c.case_with(
            &format!("chunk {chunk:?}"),
            request.as_bytes(),
            &[&[400], &[200, 404], &[200, 400]],
            true,
        );
    }
    // Anything Envoy might still forward late shows up here.
    std::thread::sleep(Duration::from_millis(300));
    c.check("after every framing case");
    assert_eq!(vm_health(&stack), health, "the VM crashed");
}

#[test]
fn pipelined_requests_are_each_decided_on_their_own() {
    let stack = stack();
    let mut c = Checker::new(&stack);
    let auth = c.auth();
    let nobody = format!("Authorization: Bearer {}\r\n", stack.nobody_token());
    let allowed = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    let anonymous = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Remote-User: system:serviceaccount:observability:prometheus-server\r\n\r\n".to_string();
    let forbidden = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{nobody}\r\n");
    let garbage =
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer garbage.token.x\r\n\r\n"
            .to_string();

    c.case(
        "authorized then anonymous",
        format!("{allowed}{anonymous}").as_bytes(),
        &[&[200, 401]],
    );
    c.case(
        "anonymous then authorized",
        format!("{anonymous}{allowed}").as_bytes(),
        &[&[401, 200]],
    );
    c.case(
        "authorized then nobody",
        format!("{allowed}{forbidden}").as_bytes(),
        &[&[200, 403]],
    );
    c.case(
        "authorized then garbage",
        format!("{allowed}{garbage}").as_bytes(),
        &[&[200, 401]],
    );
    c.case(
        "authorized then a smuggled path",
        format!("{allowed}{SMUGGLED}").as_bytes(),
        &[&[200, 404]],
    );
    c.case(
        "anonymous, authorized, anonymous, nobody, authorized",
        format!("{anonymous}{allowed}{anonymous}{forbidden}{allowed}").as_bytes(),
        &[&[401, 200, 401, 403, 200]],
    );
    // The first closes the connection: nothing after it is read as a request.
    let closing = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    c.case(
        "authorized with Connection: close, then a smuggled path",
        format!("{closing}{SMUGGLED}").as_bytes(),
        &[&[200]],
    );
    // Bare LF line ends (which Envoy accepts): the same answers.
    let lf = |s: &str| s.replace("\r\n", "\n");
    c.case(
        "bare LF: authorized then anonymous",
        format!("{}{}", lf(&allowed), lf(&anonymous)).as_bytes(),
        &[&[200, 401]],
    );
    c.case(
        "bare LF: anonymous then authorized",
        format!("{}{}", lf(&anonymous), lf(&allowed)).as_bytes(),
        &[&[401, 200]],
    );
    // An HTTP/1.0 request in the pipeline is refused by Envoy (426), which closes the connection.
    c.case(
        "HTTP/1.0 then authorized",
        format!("GET /metrics HTTP/1.0\r\n{auth}\r\n{allowed}").as_bytes(),
        &[&[426]],
    );
}

/// The first request waits for a slow review while the next one is already on the connection:
/// the second must be decided on its own, not ride on the first's answer — in either order.
#[test]
fn a_pipelined_request_behind_a_pending_review_is_decided_on_its_own() {
    let stack = stack();
    let mut c = Checker::new(&stack);
    stack
        .apiserver
        .set_fault(Fault::Slow(Duration::from_millis(150)));
    let mut lifetime = 2000;
    for preset in PRESETS {
        for order in [
            "fresh token, anonymous",
            "fresh token, smuggled path",
            "fresh token, nobody",
            "anonymous, fresh token",
            "nobody, fresh token",
            "garbage, fresh token",
        ] {
            // Tokens no one has asked about yet, so each review is really pending.
            lifetime += 1;
            let fresh = stack.token(
                &ServiceAccount::prometheus_server(),
                TokenOptions::default().lifetime_secs(lifetime),
            );
            let nobody = stack.token(
                &ServiceAccount::nobody(),
                TokenOptions::default().lifetime_secs(lifetime),
            );
            let allowed = format!(
                "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {fresh}\r\n\r\n"
            );
            let anonymous = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_string();
            let forbidden = format!(
                "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {nobody}\r\n\r\n"
            );
            let garbage = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer garbage-{lifetime}.x.y\r\n\r\n");
            let (bytes, expected): (String, [u16; 2]) = match order {
                "fresh token, anonymous" => (format!("{allowed}{anonymous}"), [200, 401]),
                "fresh token, smuggled path" => (format!("{allowed}{SMUGGLED}"), [200, 404]),
                "fresh token, nobody" => (format!("{allowed}{forbidden}"), [200, 403]),
                "anonymous, fresh token" => (format!("{anonymous}{allowed}"), [401, 200]),
                "nobody, fresh token" => (format!("{forbidden}{allowed}"), [403, 200]),
                _ => (format!("{garbage}{allowed}"), [401, 200]),
            };
            let what = format!("{order} on {}", preset.name());
            let answer = exchange(
                stack.addr(preset),
                bytes.as_bytes(),
                2,
                Duration::from_secs(15),
            );
            assert_eq!(answer.statuses(), expected, "{what}: {}", answer.summary());
            c.admitted += 1;
            c.secrets.extend([fresh, nobody]);
            c.check(&what);
        }
    }
}

#[test]
fn a_second_request_hidden_in_a_body_is_only_a_body() {
    let stack = stack();
    let mut c = Checker::new(&stack);
    let auth = c.auth();
    let hidden = |framing: &str, body: &str| {
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}{framing}\r\n\r\n{body}")
    };
    c.case(
        "Content-Length body",
        hidden(&format!("Content-Length: {}", SMUGGLED.len()), SMUGGLED).as_bytes(),
        &[&[200]],
    );
    let chunked = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    c.case(
        "chunked body",
        hidden("Transfer-Encoding: chunked", &chunked).as_bytes(),
        &[&[200]],
    );
    let with_trailer = format!(
        "{:x}\r\n{SMUGGLED}\r\n0\r\nX-Remote-User: system:admin\r\nAuthorization: Bearer x\r\n\r\n",
        SMUGGLED.len()
    );
    c.case(
        "chunked body with trailers",
        hidden("Transfer-Encoding: chunked", &with_trailer).as_bytes(),
        &[&[200]],
    );
    // Expect: 100-continue: Envoy may say 100 before the gate decides; the body still is a body.
    c.case(
        "Expect: 100-continue with a body",
        hidden(
            &format!("Expect: 100-continue\r\nContent-Length: {}", SMUGGLED.len()),
            SMUGGLED,
        )
        .as_bytes(),
        &[&[100, 200], &[200]],
    );
    let anonymous = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n{SMUGGLED}", SMUGGLED.len());
    c.case(
        "anonymous Expect: 100-continue with a body",
        anonymous.as_bytes(),
        &[&[100, 401], &[401]],
    );
    // Upgrades: no tunnel opens to a component (Envoy refuses websocket, ignores h2c).
    c.case("websocket upgrade", hidden("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13", "").as_bytes(), &[&[403], &[404], &[400]]);
    c.case("h2c upgrade", hidden("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA", "").as_bytes(), &[&[200], &[400]]);
}

/// The body of a request the gate refuses — whether the gate answers before the body arrives or
/// (with the listener's buffer filter) after it — is never read as a request of its own, even
/// when it arrives in a separate write and spells a complete authorized request.
#[test]
fn the_body_of_a_refused_request_is_not_a_request() {
    let stack = stack();
    let mut c = Checker::new(&stack);
    // The "body": an authorized request.
    let body = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{}\r\n", c.auth());
    for preset in PRESETS {
        for (who, auth, expected) in [
            ("anonymous", String::new(), 401),
            (
                "garbage",
                "Authorization: Bearer garbage.x.y\r\n".to_string(),
                401,
            ),
        ] {
            let what = format!("{who} with a request as its body on {}", preset.name());
            let mut stream = connect(stack.addr(preset));
            let head = format!(
                "GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            // Envoy may already have answered and closed: then the write fails, which is fine.
            let _ = stream.write_all(body.as_bytes());
            let answer = read_answers(&mut stream, 1, Duration::from_secs(15));
            assert_eq!(
                answer.statuses(),
                [expected],
                "{what}: {}",
                answer.summary()
            );
            // An answer to the body as a request would follow at once.
            let rest = read_answers(&mut stream, 1, Duration::from_millis(300));
            assert!(
                rest.responses.is_empty(),
                "{what}: the body was answered as a request: {}",
                rest.summary()
            );
        }
    }
    c.check("bodies of refused requests");
    // A body past the listener's buffer (64 KiB) that spells requests: refused whole.
    let filler = body.repeat(100_000 / body.len() + 1);
    for (who, auth) in [("authorized", c.auth()), ("anonymous", String::new())] {
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{filler}",
            filler.len()
        );
        let refused: &[u16] = if who == "anonymous" { &[401] } else { &[200] };
        c.case(
            &format!("{who} with a 100 KB body of requests"),
            request.as_bytes(),
            &[&[413], refused],
        );
    }
}

/// The listeners take the whole request (up to 64 KiB) before the gate decides, so that its early
/// answers end complete HTTP/2 exchanges (http2_early_replies.rs). A request whose declared body
/// never comes — and a CONNECT, whose request never ends — is therefore answered by Envoy's
/// `request_timeout` (408, 14 s by default, as the README says), like any server that reads the
/// body; never forwarded. All cases run at once, so the test waits the timeout only once.
#[test]
fn connect_and_requests_whose_body_never_comes_end_with_the_request_timeout() {
    let stack = stack();
    let c = Checker::new(&stack);
    let auth = c.auth();
    let cases = [
        ("CONNECT", format!("CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n{auth}\r\n")),
        ("anonymous CONNECT", "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n".to_string()),
        ("POST with a body that never comes", format!("POST /metrics HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5\r\n\r\n")),
        ("wrong path with a body that never comes", format!("GET /debug/pprof HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5\r\n\r\n")),
        ("anonymous with a body that never comes", "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n".to_string()),
    ];
    let bound = Duration::from_millis(u64::from(metrics_gate_envoy::paused_request_bound_ms(5_000))) + Duration::from_secs(6);
    let started = std::time::Instant::now();
    let answers: Vec<_> = cases
        .iter()
        .flat_map(|(what, request)| PRESETS.iter().map(move |preset| (what, request, *preset)))
        .map(|(what, request, preset)| {
            let (what, request, addr) = (what.to_string(), request.clone(), stack.addr(preset));
            std::thread::spawn(move || (what, preset, exchange(addr, request.as_bytes(), 1, bound)))
        })
        .collect();
    for answer in answers {
        let (what, preset, answer) = answer.join().unwrap();
        let statuses = answer.statuses();
        assert!(
            statuses.is_empty() || statuses == [408],
            "{what} on {}: expected Envoy's 408 (or a closed connection), got {}",
            preset.name(),
            answer.summary()
        );
    }
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
    c.check("CONNECT and bodies that never come");
}
