//! What a client does while its request waits for a slow review (Fault::Slow): send a chunked
//! body and trailers (trailers carrying a valid token and identity claims), close the connection,
//! reset an HTTP/2 stream — and many clients doing that at once. The gate must answer exactly as
//! without any of it, never forward a request it did not authorize, release every callout
//! (`metrics_gate_callouts_in_flight` back to 0), and keep serving without a VM crash.
//!
//! The listeners buffer a request's body (up to 64 KiB) before the gate sees the request, so a
//! body sent in parts now delays the review rather than arriving during it; the parts are still
//! sent apart, and the answers must be the same whichever comes first.

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::adversarial::{
    assert_forwarded_clean, assert_still_serving, connect, read_answers, vm_health, wait_until,
    within,
};
use metrics_gate_host_tests::apiserver::{CallKind, Fault};
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};

const PRESETS: [Preset; 2] = [Preset::KubeProxy, Preset::KubeScheduler];

fn stack() -> LocalStack {
    LocalStack::start_with(StackOptions {
        presets: PRESETS.to_vec(),
        ..Default::default()
    })
    .unwrap()
}

/// A token nobody has asked about yet (distinct `exp`), so its review is really pending.
struct Fresh {
    next: i64,
}

impl Fresh {
    fn new() -> Fresh {
        Fresh { next: 1000 }
    }
    fn token(&mut self, stack: &LocalStack, sa: &ServiceAccount) -> String {
        self.next += 1;
        stack.token(sa, TokenOptions::default().lifetime_secs(self.next))
    }
}

fn in_flight(stack: &LocalStack) -> Option<u64> {
    stack
        .envoy
        .stat("wasmcustom.metrics_gate_callouts_in_flight")
        .unwrap()
}

/// Downstream requests Envoy still holds on the component listeners.
fn active_requests(stack: &LocalStack) -> u64 {
    PRESETS
        .iter()
        .map(|p| {
            let name = format!("http.{}.downstream_rq_active", p.name());
            stack
                .envoy
                .stat(&name)
                .unwrap()
                .unwrap_or_else(|| panic!("Envoy has no {name}"))
        })
        .sum()
}

/// Sends `parts` on one connection with `gap` between them and reads the one answer: its status,
/// or a description of what came instead.
fn send_in_parts(addr: SocketAddr, parts: &[&[u8]], gap: Duration) -> Result<u16, String> {
    let started = std::time::Instant::now();
    let mut stream = connect(addr);
    let mut written = 0;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        if let Err(e) = stream.write_all(part) {
            return Err(format!(
                "writing part {i} after {:?}: {e}",
                started.elapsed()
            ));
        }
        written += 1;
    }
    let answer = read_answers(&mut stream, 1, Duration::from_secs(15));
    match answer.responses.first() {
        Some(r) => Ok(r.status),
        None => Err(format!(
            "no answer after {:?} ({written} parts written): {}",
            started.elapsed(),
            answer.summary()
        )),
    }
}

#[test]
fn a_chunked_body_and_trailers_during_a_pending_review_do_not_open_the_gate() {
    let stack = stack();
    let health = vm_health(&stack);
    let valid = stack.prometheus_token();
    // Each review takes 150 ms; the body and trailers come in three parts 40 ms apart.
    stack
        .apiserver
        .set_fault(Fault::Slow(Duration::from_millis(150)));
    let mut fresh = Fresh::new();
    // Trailers that claim an identity and carry a VALID token: none of it may count.
    let trailers = format!("0\r\nAuthorization: Bearer {valid}\r\nX-Remote-User: system:admin\r\nImpersonate-User: system:admin\r\n\r\n");
    for preset in PRESETS {
        let addr = stack.addr(preset);
        for (who, expected) in [("nobody", 403), ("garbage", 401), ("prometheus", 200)] {
            for split in [true, false] {
                // A new token each time, so that its review is really pending.
                let token = match who {
                    "nobody" => fresh.token(&stack, &ServiceAccount::nobody()),
                    "prometheus" => fresh.token(&stack, &ServiceAccount::prometheus_server()),
                    _ => {
                        fresh.next += 1;
                        format!("garbage-{}.x.y", fresh.next)
                    }
                };
                let (token, expected) = (&token, &expected);
                let what = format!(
                    "GET with a chunked body and trailers as {who} ({}) on {}",
                    if split {
                        "sent during the review"
                    } else {
                        "in one write"
                    },
                    preset.name()
                );
                let head = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\nTrailer: Authorization, X-Remote-User\r\nConnection: close\r\n\r\n");
                let before = stack.component(preset).count();
                let status = within(Duration::from_secs(20), &what, || {
                    if split {
                        send_in_parts(
                            addr,
                            &[
                                head.as_bytes(),
                                b"5\r\nhello\r\n",
                                b"6\r\n world\r\n",
                                trailers.as_bytes(),
                            ],
                            Duration::from_millis(40),
                        )
                    } else {
                        send_in_parts(
                            addr,
                            &[format!("{head}5\r\nhello\r\n{trailers}").as_bytes()],
                            Duration::ZERO,
                        )
                    }
                });
                assert_eq!(status, Ok(*expected), "{what}");
                let seen = stack.component(preset).requests();
                if *expected == 200 {
                    assert_eq!(seen.len(), before + 1, "{what}");
                    let last = seen.last().unwrap();
                    assert_eq!(last.path_and_query, "/metrics", "{what}");
                    assert_forwarded_clean(&stack, preset, last, &[token, &valid], &what);
                    for (name, value) in &last.headers {
                        assert!(!value.contains("system:admin"), "{what}: {name}: {value}");
                    }
                } else {
                    assert_eq!(
                        seen.len(),
                        before,
                        "{what}: a refused request reached the component"
                    );
                }
            }
        }
        // A POST is refused before any review: its body and trailers change nothing.
        let calls = stack.apiserver.calls().len();
        let head = format!("POST /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {valid}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
        let status = send_in_parts(
            addr,
            &[head.as_bytes(), b"5\r\nhello\r\n", trailers.as_bytes()],
            Duration::from_millis(50),
        );
        assert_eq!(
            status,
            Ok(405),
            "POST with a chunked body on {}",
            preset.name()
        );
        assert_eq!(stack.apiserver.calls().len(), calls, "a POST was reviewed");
        // A Content-Length body dribbled in during the review.
        let token = fresh.token(&stack, &ServiceAccount::nobody());
        let head = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 9\r\nConnection: close\r\n\r\n");
        let status = send_in_parts(
            addr,
            &[head.as_bytes(), b"abc", b"def", b"ghi"],
            Duration::from_millis(40),
        );
        assert_eq!(
            status,
            Ok(403),
            "nobody with a dribbled body on {}",
            preset.name()
        );
    }
    assert_eq!(
        stack.upstream_requests(),
        2 * PRESETS.len(),
        "only the authorized requests were forwarded"
    );
    stack.apiserver.set_fault(Fault::None);
    for preset in PRESETS {
        assert_still_serving(
            &stack,
            preset,
            &valid,
            &health,
            "bodies during pending reviews",
        );
    }
}

#[test]
fn a_client_that_leaves_mid_review_leaves_nothing_behind() {
    let stack = stack();
    let health = vm_health(&stack);
    stack
        .apiserver
        .set_fault(Fault::Slow(Duration::from_millis(300)));
    let mut fresh = Fresh::new();
    for preset in PRESETS {
        let addr = stack.addr(preset);
        for how in ["close", "half-close", "reset by closing with unread data"] {
            let token = fresh.token(&stack, &ServiceAccount::prometheus_server());
            let reviews = stack.apiserver.count(CallKind::TokenReview);
            let mut stream = connect(addr);
            let request = format!(
                "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).unwrap();
            // The review is under way.
            wait_until(Duration::from_secs(5), || {
                stack.apiserver.count(CallKind::TokenReview) > reviews
                    || in_flight(&stack).unwrap_or(0) > 0
            })
            .unwrap_or_else(|_| panic!("{how}: the review never started"));
            match how {
                "close" => drop(stream),
                "half-close" => {
                    stream.shutdown(Shutdown::Write).unwrap();
                    // Whatever Envoy makes of a half-close, the request must not go upstream
                    // unauthorized; if it is answered, it is answered as authorized.
                    let answer = read_answers(&mut stream, 1, Duration::from_secs(10));
                    assert!(
                        answer.statuses().iter().all(|s| *s == 200),
                        "{how}: {}",
                        answer.summary()
                    );
                }
                _ => {
                    // A second request on the same connection that we never read the answer of.
                    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
                    std::thread::sleep(Duration::from_millis(20));
                    drop(stream);
                }
            }
            let what = format!("{how} on {}", preset.name());
            wait_until(Duration::from_secs(10), || in_flight(&stack) == Some(0)).unwrap_or_else(
                |_| panic!("{what}: callouts in flight stay at {:?}", in_flight(&stack)),
            );
            wait_until(Duration::from_secs(10), || active_requests(&stack) == 0).unwrap_or_else(
                |_| panic!("{what}: {} requests stay active", active_requests(&stack)),
            );
            // The abandoned request was not forwarded (except a half-closed one that was answered).
            if how != "half-close" {
                assert_eq!(
                    stack.component(preset).count(),
                    0,
                    "{what}: an abandoned request was forwarded"
                );
            }
            // The same token works at once afterwards.
            stack.component(preset).clear();
            let answer = within(Duration::from_secs(10), &what, || {
                stack.scrape(preset, "/metrics", &token)
            });
            assert_eq!(
                answer.status, 200,
                "{what}: the next scrape with the same token"
            );
            stack.component(preset).clear();
        }
    }
    stack.apiserver.set_fault(Fault::None);
    let valid = stack.prometheus_token();
    for preset in PRESETS {
        assert_still_serving(
            &stack,
            preset,
            &valid,
            &health,
            "clients leaving mid-review",
        );
    }
}

/// Two clients ask the same new question; one of them leaves while the review is under way. The
/// other one — whether it owns the callout or waits for it — is still answered.
#[test]
fn the_client_left_behind_on_a_shared_review_is_still_answered() {
    let stack = stack();
    let health = vm_health(&stack);
    stack
        .apiserver
        .set_fault(Fault::Slow(Duration::from_millis(300)));
    let mut fresh = Fresh::new();
    for preset in PRESETS {
        let addr = stack.addr(preset);
        for leaver in ["the owner", "the waiter"] {
            let what = format!("{leaver} leaves on {}", preset.name());
            let token = fresh.token(&stack, &ServiceAccount::prometheus_server());
            let request = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
            let coalesced = stack.counter("wasmcustom.metrics_gate_coalesced_waits");
            let mut first = connect(addr);
            first.write_all(request.as_bytes()).unwrap();
            // The first owns the review once it is under way...
            wait_until(Duration::from_secs(5), || {
                in_flight(&stack).unwrap_or(0) > 0
            })
            .unwrap_or_else(|_| panic!("{what}: the review never started"));
            let mut second = connect(addr);
            second.write_all(request.as_bytes()).unwrap();
            // ...and the second waits on it.
            wait_until(Duration::from_secs(5), || {
                stack.counter("wasmcustom.metrics_gate_coalesced_waits") > coalesced
            })
            .unwrap_or_else(|_| {
                panic!("{what}: the second request did not wait on the first's review")
            });
            let stays = if leaver == "the owner" {
                drop(first);
                &mut second
            } else {
                drop(second);
                &mut first
            };
            let answer = within(Duration::from_secs(15), &what, || {
                read_answers(stays, 1, Duration::from_secs(15))
            });
            assert_eq!(answer.statuses(), [200], "{what}: {}", answer.summary());
            assert_eq!(
                stack.component(preset).count(),
                1,
                "{what}: expected exactly the remaining client's request upstream"
            );
            assert_forwarded_clean(
                &stack,
                preset,
                &stack.component(preset).requests()[0],
                &[&token],
                &what,
            );
            stack.component(preset).clear();
            wait_until(Duration::from_secs(10), || in_flight(&stack) == Some(0))
                .unwrap_or_else(|_| panic!("{what}: callouts stay in flight"));
        }
    }
    stack.apiserver.set_fault(Fault::None);
    let valid = stack.prometheus_token();
    for preset in PRESETS {
        assert_still_serving(&stack, preset, &valid, &health, "shared reviews");
    }
}

#[test]
fn many_clients_disconnecting_mid_review_then_a_normal_scrape_works() {
    let stack = stack();
    let health = vm_health(&stack);
    stack
        .apiserver
        .set_fault(Fault::Slow(Duration::from_millis(600)));
    let mut fresh = Fresh::new();
    let shared = fresh.token(&stack, &ServiceAccount::prometheus_server());
    // 48 clients: distinct new tokens of an allowed user, one shared new token, distinct new
    // tokens without a binding, garbage; on both listeners.
    let tokens: Vec<String> = (0..48)
        .map(|i| match i % 4 {
            0 => fresh.token(&stack, &ServiceAccount::prometheus_server()),
            1 => shared.clone(),
            2 => fresh.token(&stack, &ServiceAccount::nobody()),
            _ => format!("garbage-{i}.x.y"),
        })
        .collect();
    std::thread::scope(|s| {
        for (i, token) in tokens.iter().enumerate() {
            let addr = stack.addr(PRESETS[i % 2]);
            s.spawn(move || {
                let mut stream = connect(addr);
                let request = format!(
                    "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
                );
                let _ = stream.write_all(request.as_bytes());
                // Leave at different moments of the review (it takes at least 600 ms).
                std::thread::sleep(Duration::from_millis(20 + (i as u64 * 37) % 500));
                if i % 3 == 0 {
                    let _ = stream.shutdown(Shutdown::Both);
                }
                drop(stream);
            });
        }
    });
    wait_until(Duration::from_secs(15), || in_flight(&stack) == Some(0))
        .unwrap_or_else(|_| panic!("callouts in flight stay at {:?}", in_flight(&stack)));
    wait_until(Duration::from_secs(15), || active_requests(&stack) == 0)
        .unwrap_or_else(|_| panic!("{} requests stay active", active_requests(&stack)));
    assert_eq!(
        stack.upstream_requests(),
        0,
        "an abandoned request was forwarded"
    );
    assert_eq!(
        stack.counter("wasmcustom.metrics_gate_callouts_rejected_cap"),
        0
    );
    // A normal scrape (a new question, so a review) works, on both listeners, with the apiserver
    // still slow and then back to normal.
    for preset in PRESETS {
        let token = fresh.token(&stack, &ServiceAccount::prometheus_server());
        let answer = within(
            Duration::from_secs(10),
            "a scrape after the stampede",
            || stack.scrape(preset, "/metrics", &token),
        );
        assert_eq!(answer.status, 200, "{}: {}", preset.name(), answer.text());
        let last = stack.component(preset).requests().pop().unwrap();
        assert_forwarded_clean(
            &stack,
            preset,
            &last,
            &[&token],
            "a scrape after the stampede",
        );
    }
    stack.apiserver.set_fault(Fault::None);
    let valid = stack.prometheus_token();
    for preset in PRESETS {
        assert_still_serving(
            &stack,
            preset,
            &valid,
            &health,
            "many clients leaving mid-review",
        );
    }
    assert_eq!(in_flight(&stack), Some(0));
}

/// HTTP/2: a stream reset (the client cancels) mid-review, while another stream of the same
/// connection waits on its own review; the other stream is answered, the cancelled one never
/// forwarded.
#[test]
fn an_http2_stream_reset_mid_review_leaves_the_other_streams_alone() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let stack = stack();
    let health = vm_health(&stack);
    stack
        .apiserver
        .set_fault(Fault::Slow(Duration::from_millis(300)));
    let mut fresh = Fresh::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for preset in PRESETS {
        let addr = stack.addr(preset);
        let cancelled = fresh.token(&stack, &ServiceAccount::prometheus_server());
        let kept = fresh.token(&stack, &ServiceAccount::prometheus_server());
        let nobody = fresh.token(&stack, &ServiceAccount::nobody());
        let statuses = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .unwrap();
            let driver = tokio::spawn(conn);
            let request = |token: &str| {
                hyper::Request::get(format!("http://{addr}/metrics"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap()
            };
            let mut s1 = sender.clone();
            let mut s2 = sender.clone();
            let mut s3 = sender.clone();
            let doomed = tokio::spawn({
                let req = request(&cancelled);
                async move { s1.send_request(req).await.map(|r| r.status().as_u16()) }
            });
            let kept_answer = tokio::spawn({
                let req = request(&kept);
                async move {
                    let resp = s2.send_request(req).await.unwrap();
                    let status = resp.status().as_u16();
                    resp.into_body().collect().await.unwrap();
                    status
                }
            });
            let refused_answer = tokio::spawn({
                let req = request(&nobody);
                async move { s3.send_request(req).await.unwrap().status().as_u16() }
            });
            tokio::time::sleep(Duration::from_millis(150)).await;
            // Dropping the response future resets the stream (RST_STREAM CANCEL).
            doomed.abort();
            let kept_status = tokio::time::timeout(Duration::from_secs(15), kept_answer)
                .await
                .unwrap()
                .unwrap();
            let refused_status = tokio::time::timeout(Duration::from_secs(15), refused_answer)
                .await
                .unwrap()
                .unwrap();
            driver.abort();
            (kept_status, refused_status)
        });
        assert_eq!(statuses, (200, 403), "h2 on {}", preset.name());
        let seen = stack.component(preset).requests();
        assert_eq!(
            seen.len(),
            1,
            "h2 on {}: only the kept stream is forwarded",
            preset.name()
        );
        assert_forwarded_clean(
            &stack,
            preset,
            &seen[0],
            &[&cancelled, &kept, &nobody],
            "h2 stream reset",
        );
        stack.component(preset).clear();
        wait_until(Duration::from_secs(10), || in_flight(&stack) == Some(0))
            .unwrap_or_else(|_| panic!("h2: callouts stay in flight"));
    }
    stack.apiserver.set_fault(Fault::None);
    let valid = stack.prometheus_token();
    for preset in PRESETS {
        assert_still_serving(&stack, preset, &valid, &health, "h2 stream resets");
    }
}
