//! A keep-alive HTTP/1.1 connection over TLS to one Envoy listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONNECTION, HOST, RETRY_AFTER, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where to connect and how to verify the server.
pub struct Target {
    pub addr: SocketAddr,
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
    /// `Host` header (the Service name on the certificate).
    pub host: String,
}

impl Target {
    pub fn new(addr: SocketAddr, ca_pem: &str, server_name: &str) -> Result<Arc<Target>> {
        Ok(Arc::new(Target {
            addr,
            connector: metrics_gate_host_tests::tls::tls_connector(ca_pem)?,
            server_name: metrics_gate_host_tests::tls::server_name(server_name)?,
            host: server_name.to_string(),
        }))
    }
}

/// What came back: the status, the body's length and its first bytes (enough to tell the filter's
/// own 503 from Envoy's), whether `Retry-After` was set.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body_len: usize,
    pub body_head: String,
    pub retry_after: bool,
}

pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
    /// DER of the leaf certificate the listener presented in this connection's handshake.
    pub peer_cert: Vec<u8>,
    pub opened: Instant,
    /// Requests answered on this connection so far.
    pub used: u64,
}

impl Conn {
    /// TCP connect, TLS handshake (verified), HTTP/1.1 handshake.
    pub async fn open(t: &Target) -> Result<Conn> {
        let tcp = TcpStream::connect(t.addr)
            .await
            .with_context(|| format!("connecting to {}", t.addr))?;
        tcp.set_nodelay(true)?;
        let tls = t
            .connector
            .connect(t.server_name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        let peer_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            driver,
            peer_cert,
            opened: Instant::now(),
            used: 0,
        })
    }

    /// Whether the server closed the connection (or it broke).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// `GET path` with `Authorization: Bearer <token>`; the whole body is read (its length counted,
    /// its first 200 bytes kept). `close` asks the server to close the connection afterwards.
    pub async fn get(
        &mut self,
        t: &Target,
        path: &str,
        token: &str,
        close: bool,
    ) -> Result<Answer, GetError> {
        let before = |e: anyhow::Error| GetError {
            before_response: true,
            error: e,
        };
        self.sender.ready().await.map_err(|e| before(e.into()))?;
        let mut req = Request::get(path)
            .header(HOST, &t.host)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(USER_AGENT, "metrics-gate-soak");
        if close {
            req = req.header(CONNECTION, "close");
        }
        let req = req.body(Empty::new()).map_err(|e| before(e.into()))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| before(e.into()))?;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().contains_key(RETRY_AFTER);
        let mut body = resp.into_body();
        let mut body_len = 0;
        let mut head = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| GetError {
                before_response: false,
                error: anyhow::Error::from(e).context(format!("status {status}, reading the body after {body_len} bytes")),
            })?;
            if let Ok(data) = frame.into_data() {
                body_len += data.len();
                if head.len() < 200 {
                    let take = (200 - head.len()).min(data.len());
                    head.extend_from_slice(&data[..take]);
                }
            }
        }
        self.used += 1;
        Ok(Answer {
            status,
            body_len,
            body_head: String::from_utf8_lossy(&head).into_owned(),
            retry_after,
        })
    }
}

/// A failed [`Conn::get`]: whether it failed before any answer came (so the request may be retried
/// on a new connection), and why.
#[derive(Debug)]
pub struct GetError {
    pub before_response: bool,
    pub error: anyhow::Error,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Whether `e` says the server closed a reused keep-alive connection before this request was
/// written or answered (the race every HTTP client retries once for an idempotent request).
pub fn stale_connection(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_canceled() || h.is_incomplete_message() || h.is_closed())
    })
}
