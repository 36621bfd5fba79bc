//! A tiny HTTP/1.1 client that sends the request line byte for byte.
//!
//! hyper and curl both normalise request targets (`//metrics`, `/%6detrics`...), which is exactly
//! what the path tests must not do: they probe what Envoy and the filter make of odd spellings.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
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

/// Sends `method target` with `headers` (and `Host`, `Connection: close`) and reads the answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Response> {
    let byte_headers: Vec<(&str, &[u8])> =
        headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    request_bytes(addr, method, target, &byte_headers)
}

/// Like [`request`], with header values as raw bytes (not necessarily UTF-8: HTTP allows obs-text).
pub fn request_bytes(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &[u8])],
) -> anyhow::Result<Response> {
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n").into_bytes();
    for (name, value) in headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    exchange(addr, &head, method == "HEAD")
        .with_context(|| format!("{method} {target}"))
}

/// Writes `raw` on a new connection and reads one answer (`head_only`: the answer to a HEAD).
pub fn exchange(addr: SocketAddr, raw_request: &[u8], head_only: bool) -> anyhow::Result<Response> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(raw_request)?;
    // Read only as far as the answer goes: waiting for EOF would add Envoy's delayed-close
    // timeout (1 s) to every locally answered request.
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        if let Some(response) = complete(&raw, head_only)? {
            return Ok(response);
        }
        let n = stream.read(&mut buf).context("reading the answer")?;
        if n == 0 {
            return parse(&raw, head_only);
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// The response, once `raw` holds all of it (by content-length or the last chunk).
fn complete(raw: &[u8], head_only: bool) -> anyhow::Result<Option<Response>> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    let length = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let done = if head_only {
        true
    } else if let Some(length) = length {
        body.len() >= length
    } else if head.contains("transfer-encoding: chunked") {
        body.ends_with(b"0\r\n\r\n")
    } else {
        false
    };
    if done { parse(raw, head_only).map(Some) } else { Ok(None) }
}

fn parse(raw: &[u8], head_only: bool) -> anyhow::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the answer")?;
    let head = std::str::from_utf8(&raw[..end]).context("answer head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if head_only {
        Vec::new()
    } else if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size")?;
        let size_text = std::str::from_utf8(&rest[..eol])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            bail!("truncated chunk");
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}
