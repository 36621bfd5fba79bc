//! Helpers for the adversarial suites (`tests/adversarial_*.rs`): requests as an attacker writes
//! them (raw bytes, pipelines, split writes, HTTP/2 prior knowledge), and the checks that follow
//! every one of them — what the client got, and what reached the component.
//!
//! [`raw_http`](crate::raw_http) sends one well-formed request per connection; these send whatever
//! bytes they are given and read every answer on the connection, so a test can see a smuggled
//! second answer (or its absence).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use metrics_gate_envoy::Preset;

use crate::components::RecordedRequest;
use crate::raw_http::Response;
use crate::stack::LocalStack;
use crate::tokens::ServiceAccount;

/// What one connection carried back: the answers parsed from it, in order, and whether the peer
/// closed the connection (as opposed to the reader giving up at its deadline).
#[derive(Debug, Clone)]
pub struct Exchange {
    pub responses: Vec<Response>,
    pub closed: bool,
    /// Everything read, for failure messages.
    pub raw: Vec<u8>,
}

impl Exchange {
    pub fn statuses(&self) -> Vec<u16> {
        self.responses.iter().map(|r| r.status).collect()
    }

    /// The first status line and a little of the rest, for assertion messages.
    pub fn summary(&self) -> String {
        let text = String::from_utf8_lossy(&self.raw);
        let short: String = text.chars().take(300).collect();
        format!(
            "statuses {:?}, closed {}, raw {short:?}",
            self.statuses(),
            self.closed
        )
    }
}

/// Connects to `addr` with generous timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_nodelay(true).ok();
    stream
}

/// Writes `bytes` on a fresh connection and reads until `want` answers are complete, the peer
/// closes, or `within` passes (then whatever was complete is returned: an answer that never comes
/// shows up as a missing response, not as a hang).
pub fn exchange(addr: SocketAddr, bytes: &[u8], want: usize, within: Duration) -> Exchange {
    let mut stream = connect(addr);
    // A peer that has already answered and closed may reset the rest of the write: that is an
    // answer too, read what came.
    let _ = stream.write_all(bytes);
    read_answers(&mut stream, want, within)
}

/// Writes `bytes` on a fresh connection and reads until the answers' statuses are one of
/// `accepted` that no longer accepted sequence starts with, the peer closes, or `within` passes.
/// For cases where Envoy may answer fewer requests than were sent (and keep the connection open).
pub fn exchange_expecting(
    addr: SocketAddr,
    bytes: &[u8],
    accepted: &[&[u16]],
    within: Duration,
) -> Exchange {
    let mut stream = connect(addr);
    let _ = stream.write_all(bytes);
    read_until(&mut stream, within, |statuses| {
        accepted.contains(&statuses)
            && !accepted
                .iter()
                .any(|a| a.len() > statuses.len() && a.starts_with(statuses))
    })
}

/// Reads answers from `stream` until `want` are complete, the peer closes, or `within` passes.
pub fn read_answers(stream: &mut TcpStream, want: usize, within: Duration) -> Exchange {
    read_until(stream, within, |statuses| statuses.len() >= want)
}

fn read_until(stream: &mut TcpStream, within: Duration, done: impl Fn(&[u16]) -> bool) -> Exchange {
    let deadline = Instant::now() + within;
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut closed = false;
    loop {
        let statuses: Vec<u16> = parse_stream(&raw).0.iter().map(|r| r.status).collect();
        if done(&statuses) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream
            .set_read_timeout(Some(
                left.min(Duration::from_millis(500))
                    .max(Duration::from_millis(1)),
            ))
            .ok();
        match stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            // A reset after the answers is a close, as far as the client can tell.
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let (responses, _) = parse_stream(&raw);
    Exchange {
        responses,
        closed,
        raw,
    }
}

/// Every complete HTTP/1.x answer at the start of `raw`, and how many bytes they took. An answer
/// without a length is taken to run to the end of what was read.
pub fn parse_stream(raw: &[u8]) -> (Vec<Response>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        match parse_one(&raw[at..]) {
            Some((response, used)) => {
                out.push(response);
                at += used;
            }
            None => break,
        }
    }
    (out, at)
}

fn parse_one(raw: &[u8]) -> Option<(Response, usize)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let no_body = (100..200).contains(&status) || status == 204 || status == 304;
    let (body, used) = if no_body {
        (Vec::new(), 0)
    } else if header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        dechunk(rest)?
    } else if let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if rest.len() < length {
            return None;
        }
        (rest[..length].to_vec(), length)
    } else {
        (rest.to_vec(), rest.len())
    };
    Some((
        Response {
            status,
            headers,
            body,
        },
        end + 4 + used,
    ))
}

fn dechunk(raw: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let eol = raw[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[at..at + eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at += eol + 2;
        if size == 0 {
            // Trailers, then the empty line.
            let end = raw[at..].windows(2).position(|w| w == b"\r\n")?;
            if end == 0 {
                return Some((body, at + 2));
            }
            let end = raw[at..].windows(4).position(|w| w == b"\r\n\r\n")?;
            return Some((body, at + end + 4));
        }
        if raw.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
    }
}

/// `GET target HTTP/1.1` with a Host header and `extra` header lines (each without CRLF), as bytes.
pub fn get_bytes(target: &[u8], extra: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: metrics-gate\r\n");
    for line in extra {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `Authorization: Bearer <token>` as a header line.
pub fn bearer_line(token: &str) -> Vec<u8> {
    format!("Authorization: Bearer {token}").into_bytes()
}

/// Whether a header name asserts or carries an identity a component may trust (DESIGN.md:
/// `x-remote-*`, `Impersonate-*`, `X-Forwarded-User`, `X-Auth-Request-*`, `Remote-User`, their
/// underscore spellings, `Cookie`), or is a credential (`Proxy-Authorization`).
pub fn is_identity_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    const EXACT: &[&str] = &[
        "cookie",
        "proxy-authorization",
        "remote-user",
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-groups",
        "x-forwarded-preferred-username",
        "x-forwarded-access-token",
        "x-webauth-user",
    ];
    EXACT.contains(&n.as_str())
        || ["x-remote-", "impersonate-", "x-auth-request-"]
            .iter()
            .any(|p| n.starts_with(p))
}

/// The proxy's own token (what Envoy presents to kube-controller-manager and kube-scheduler).
pub fn proxy_token(stack: &LocalStack) -> String {
    String::from_utf8(
        stack
            .credentials
            .read("token")
            .expect("reading the proxy's token"),
    )
    .expect("the proxy's token is text")
}

/// Checks one request a component received after the gate admitted it: no header of the
/// caller's that asserts an identity, no underscore header name, none of `secrets` (the caller's
/// tokens) in any header, and exactly the upstream credential the listener presents (the proxy's
/// own token for kube-controller-manager and kube-scheduler, none for the others).
pub fn assert_forwarded_clean(
    stack: &LocalStack,
    preset: Preset,
    seen: &RecordedRequest,
    secrets: &[&str],
    what: &str,
) {
    check_forwarded(stack, preset, seen, secrets, None, what);
}

/// Like [`assert_forwarded_clean`] on a listener with `identity_headers` on: the only identity
/// headers are the gate's own `x-remote-user` / `x-remote-groups`, naming `reviewed`.
pub fn assert_forwarded_with_identity(
    stack: &LocalStack,
    preset: Preset,
    seen: &RecordedRequest,
    secrets: &[&str],
    reviewed: &ServiceAccount,
    what: &str,
) {
    check_forwarded(stack, preset, seen, secrets, Some(reviewed), what);
}

fn check_forwarded(
    stack: &LocalStack,
    preset: Preset,
    seen: &RecordedRequest,
    secrets: &[&str],
    reviewed: Option<&ServiceAccount>,
    what: &str,
) {
    let gate_added =
        |name: &str| reviewed.is_some() && (name == "x-remote-user" || name == "x-remote-groups");
    for (name, value) in &seen.headers {
        assert!(
            !is_identity_header(name) || gate_added(name),
            "{what}: identity header {name}: {value:?} reached {}",
            preset.name()
        );
        assert!(
            !name.contains('_'),
            "{what}: underscore header {name} reached {}",
            preset.name()
        );
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            assert!(
                !value.contains(secret),
                "{what}: a caller's token reached {} in {name}",
                preset.name()
            );
        }
    }
    if let Some(sa) = reviewed {
        assert_eq!(
            seen.header_values("x-remote-user"),
            [sa.username()],
            "{what}: x-remote-user on {}",
            preset.name()
        );
        assert_eq!(
            seen.header_values("x-remote-groups"),
            [sa.groups().join("|")],
            "{what}: x-remote-groups on {}",
            preset.name()
        );
    }
    let auth = seen.header_values("authorization");
    match preset {
        Preset::KubeControllerManager | Preset::KubeScheduler => {
            assert_eq!(
                auth,
                [format!("Bearer {}", proxy_token(stack))],
                "{what}: {} got another Authorization",
                preset.name()
            );
        }
        _ => assert!(
            auth.is_empty(),
            "{what}: {} got an Authorization header",
            preset.name()
        ),
    }
}

/// The VM's life counters: a crash of the filter (a trap, a panic) makes Envoy reload the VM, which
/// shows in every one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmHealth {
    pub reload: u64,
    pub reload_success: u64,
    pub reload_failure: u64,
    pub reload_backoff: u64,
    pub runtimes_created: u64,
}

pub fn vm_health(stack: &LocalStack) -> VmHealth {
    // One admin call for all five (each `stack.counter` fetches every stat).
    let (status, body) = stack
        .envoy
        .admin("GET", "/stats?filter=%5Ewasm%5C.")
        .expect("reading Envoy's wasm stats");
    assert_eq!(status, 200, "/stats answered {status}: {body}");
    let stat = |name: &str| {
        body.lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let health = VmHealth {
        reload: stat("wasm.metrics-gate.vm_reload"),
        reload_success: stat("wasm.metrics-gate.vm_reload_success"),
        reload_failure: stat("wasm.metrics-gate.vm_reload_failure"),
        reload_backoff: stat("wasm.metrics-gate.vm_reload_backoff"),
        runtimes_created: stat("wasm.envoy.wasm.runtime.v8.created"),
    };
    // Guards against renamed stats turning every check into 0 == 0.
    assert!(
        health.runtimes_created > 0,
        "no wasm runtime stats in:\n{body}"
    );
    health
}

/// Lines of Envoy's log that tell of a crashed filter (a trap or a Rust panic in the VM).
pub fn crash_lines(stack: &LocalStack) -> Vec<String> {
    stack
        .envoy
        .log()
        .lines()
        .filter(|l| {
            l.contains("panicked")
                || l.contains("Uncaught")
                || l.contains("RuntimeError")
                || (l.contains("wasm") && l.contains("failed") && l.contains("Function:"))
        })
        .map(str::to_owned)
        .collect()
}

/// After an odd request: the gate still answers an ordinary authorized scrape with 200 at once
/// (not after a VM reload), the VM was not reloaded since `before`, and the log tells of no crash.
pub fn assert_still_serving(
    stack: &LocalStack,
    preset: Preset,
    token: &str,
    before: &VmHealth,
    what: &str,
) {
    let started = Instant::now();
    let answer = raw_request(
        stack.addr(preset),
        "GET",
        "/metrics",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .unwrap_or_else(|e| panic!("after {what}: the next ordinary scrape failed: {e:#}"));
    assert_eq!(
        answer.status,
        200,
        "after {what}: the next ordinary scrape got {} {}",
        answer.status,
        answer.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "after {what}: the next ordinary scrape took {:?}",
        started.elapsed()
    );
    let now = vm_health(stack);
    assert_eq!(&now, before, "after {what}: the VM crashed or was reloaded");
    let crashes = crash_lines(stack);
    assert!(
        crashes.is_empty(),
        "after {what}: Envoy logged a crash of the filter:\n{}",
        crashes.join("\n")
    );
}

fn raw_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Response> {
    crate::raw_http::request(addr, method, target, headers)
}

/// An answer over HTTP/2.
#[derive(Debug, Clone)]
pub struct H2Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl H2Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request over cleartext HTTP/2 with prior knowledge (h2c, no upgrade), headers appended as
/// given (a name may repeat), on a fresh connection. Errors carry hyper's/h2's reason, e.g. a
/// stream reset by Envoy.
pub fn h2_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> anyhow::Result<H2Response> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        let driver = tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (name, value) in headers {
            req = req.header(*name, hyper::header::HeaderValue::from_bytes(value)?);
        }
        let req = req.body(Empty::<bytes::Bytes>::new())?;
        let answer = tokio::time::timeout(Duration::from_secs(20), async {
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = resp.into_body().collect().await?.to_bytes().to_vec();
            anyhow::Ok(H2Response {
                status,
                headers,
                body,
            })
        })
        .await
        .context("no HTTP/2 answer within 20 s")?;
        driver.abort();
        answer
    })
}

/// Runs `f` and fails if it takes longer than `bound` (only as a "did it answer at all" check).
pub fn within<T>(bound: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    if started.elapsed() > bound {
        panic!("{what}: took {:?}, more than {bound:?}", started.elapsed());
    }
    out
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            bail!("not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
