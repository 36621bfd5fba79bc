//! A minimal one-shot HTTP/1.1 client (plain or TLS) for talking to the doubles and to Envoy in tests.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::tls::{server_name, tls_connector};

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Headers in arrival order, names lower-case.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// TLS parameters: the CA to trust and the name to verify (SNI).
#[derive(Debug, Clone, Copy)]
pub struct Tls<'a> {
    pub ca_pem: &'a str,
    pub server_name: &'a str,
}

/// Sends one request on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    tls: Option<Tls<'_>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<HttpResponse> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header(hyper::header::HOST, addr.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into()))?;
    match tls {
        Some(t) => {
            let stream = tls_connector(t.ca_pem)?
                .connect(server_name(t.server_name)?, tcp)
                .await?;
            exchange(TokioIo::new(stream), req).await
        }
        None => exchange(TokioIo::new(tcp), req).await,
    }
}

async fn exchange<I>(io: I, req: Request<Full<Bytes>>) -> anyhow::Result<HttpResponse>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(conn);
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
    let body = resp.into_body().collect().await?.to_bytes();
    drop(sender);
    driver.abort();
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}
