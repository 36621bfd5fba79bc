//! Fake Kubernetes components serving real-sized /metrics: kube-proxy and etcd in plain HTTP,
//! kube-controller-manager and kube-scheduler in HTTPS with their own bearer-token check (as the real
//! ones do with delegated authn/authz), answering 401/403 with the same Status bodies.
//!
//! Every request is recorded with its full header list so tests can prove what reached the
//! upstream (no client `Authorization`, no spoofed `x-remote-user`, the proxy's own token, …).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request};

use crate::http_server::{respond, Handler, HttpServer, Resp};
use crate::k8s_status::{encode, wants_pretty, Status};
use crate::payloads;
use crate::tls::TestCa;
use crate::tokens::TokenIssuer;

pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComponentKind {
    KubeProxy,
    Etcd,
    KubeControllerManager,
    KubeScheduler,
}

impl ComponentKind {
    pub const ALL: [ComponentKind; 4] = [
        ComponentKind::KubeProxy,
        ComponentKind::Etcd,
        ComponentKind::KubeControllerManager,
        ComponentKind::KubeScheduler,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ComponentKind::KubeProxy => "kube-proxy",
            ComponentKind::Etcd => "etcd",
            ComponentKind::KubeControllerManager => "kube-controller-manager",
            ComponentKind::KubeScheduler => "kube-scheduler",
        }
    }

    /// The loopback port the component listens on on a real node.
    pub fn default_port(self) -> u16 {
        match self {
            ComponentKind::KubeProxy => 10249,
            ComponentKind::Etcd => 2381,
            ComponentKind::KubeControllerManager => 10257,
            ComponentKind::KubeScheduler => 10259,
        }
    }

    /// kube-controller-manager and kube-scheduler serve HTTPS and authenticate /metrics callers.
    pub fn is_secure(self) -> bool {
        matches!(
            self,
            ComponentKind::KubeControllerManager | ComponentKind::KubeScheduler
        )
    }

    /// The component's /metrics body (shared, cheap to clone).
    pub fn payload(self) -> Bytes {
        match self {
            ComponentKind::KubeProxy => payloads::kube_proxy(),
            ComponentKind::Etcd => payloads::etcd(),
            ComponentKind::KubeControllerManager => payloads::kube_controller_manager(),
            ComponentKind::KubeScheduler => payloads::kube_scheduler(),
        }
    }
}

/// The outcome of a secure component's own check of a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// 401: the token does not authenticate.
    Unauthenticated,
    /// 403 naming this user.
    Forbidden(String),
    /// 500: an anonymous request while the apiserver cannot be asked.
    InternalError,
}

/// Decides on the bearer token (None = no `Authorization: Bearer`) of a request, given its method
/// and path.
pub type BearerVerifier = Arc<dyn Fn(Option<&str>, &str, &str) -> Verdict + Send + Sync>;

/// The real components' own check: delegated to the (mock) apiserver, see
/// [`crate::apiserver::DelegatedAuth`].
pub fn delegated(auth: crate::apiserver::DelegatedAuth) -> BearerVerifier {
    Arc::new(move |token, method, path| auth.check(token, method, path))
}

/// Verifier accepting valid ServiceAccount tokens of `issuer` whose user is in `allowed_users`; other
/// valid tokens are 403, invalid ones 401, no token 403 as `system:anonymous` (the real answers).
pub fn allow_users(issuer: Arc<TokenIssuer>, allowed_users: &[&str]) -> BearerVerifier {
    let allowed: Vec<String> = allowed_users.iter().map(|s| s.to_string()).collect();
    Arc::new(move |token, _method, _path| match token {
        None => Verdict::Forbidden("system:anonymous".into()),
        Some(t) => match issuer.verify(t, &[]) {
            Ok(u) if allowed.contains(&u.username) => Verdict::Allow,
            Ok(u) => Verdict::Forbidden(u.username),
            Err(_) => Verdict::Unauthenticated,
        },
    })
}

#[derive(Clone, Default)]
pub struct ComponentOptions {
    /// Required for secure kinds: decides on the bearer token. Without one, every /metrics request
    /// of a secure component is 403 anonymous.
    pub verifier: Option<BearerVerifier>,
    /// Replaces the kind's /metrics body.
    pub payload: Option<Bytes>,
    /// CA to sign the serving certificate with (default: a fresh self-signed one per component, as
    /// kube-scheduler and kube-controller-manager do without configured certificates).
    pub ca: Option<Arc<TestCa>>,
    /// Skip recording headers (benchmarks: counting stays on).
    pub no_recording: bool,
}

impl ComponentOptions {
    pub fn with_verifier(verifier: BearerVerifier) -> Self {
        ComponentOptions {
            verifier: Some(verifier),
            ..Default::default()
        }
    }
}

/// One request as the component saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path_and_query: String,
    /// All headers in arrival order, names lower-case.
    pub headers: Vec<(String, String)>,
    pub status: u16,
}

impl RecordedRequest {
    /// All values of header `name` (case-insensitive).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }
}

struct State {
    kind: ComponentKind,
    payload: Bytes,
    verifier: Option<BearerVerifier>,
    record: bool,
    count: AtomicUsize,
    requests: Mutex<Vec<RecordedRequest>>,
}

pub struct FakeComponent {
    state: Arc<State>,
    server: Arc<HttpServer>,
    ca: Option<Arc<TestCa>>,
}

impl FakeComponent {
    /// Starts `kind` on `addr` (port 0 = ephemeral).
    pub fn start(
        kind: ComponentKind,
        addr: SocketAddr,
        opts: ComponentOptions,
    ) -> anyhow::Result<Self> {
        let state = Arc::new(State {
            kind,
            payload: opts.payload.unwrap_or_else(|| kind.payload()),
            verifier: opts.verifier,
            record: !opts.no_recording,
            count: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let (tls, ca) = if kind.is_secure() {
            let ca = opts
                .ca
                .unwrap_or_else(|| Arc::new(TestCa::new(&format!("{}-ca", kind.name()))));
            let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
            if !addr.ip().is_unspecified() && addr.ip() != ips[0] {
                ips.push(addr.ip());
            }
            let cert = ca.issue_server(&["localhost", kind.name()], &ips);
            (Some(cert.tls_acceptor()?), Some(ca))
        } else {
            (None, None)
        };
        let st = state.clone();
        let handler: Handler = Arc::new(move |req| {
            let resp = handle(&st, req);
            Box::pin(async move { resp })
        });
        let server = HttpServer::start(addr, tls, handler)?;
        Ok(FakeComponent { state, server, ca })
    }

    pub fn kind(&self) -> ComponentKind {
        self.state.kind
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub fn port(&self) -> u16 {
        self.server.addr().port()
    }

    /// The CA of the serving certificate (secure kinds only).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_deref().map(|c| c.cert_pem())
    }

    pub fn payload(&self) -> Bytes {
        self.state.payload.clone()
    }

    /// Number of requests received (all paths).
    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::Relaxed)
    }

    /// Requests received, in order (empty with `no_recording`).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.state.requests.lock().unwrap().clear();
        self.state.count.store(0, Ordering::Relaxed);
    }

    /// Closes the port (connections refused) / reopens it on the same port.
    pub fn stop_listening(&self) {
        self.server.stop_listening();
    }

    pub fn resume_listening(&self) -> anyhow::Result<()> {
        self.server.resume_listening()
    }

    pub fn shutdown(&self) {
        self.server.shutdown();
    }
}

impl Drop for FakeComponent {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}

/// Synchronous: nothing here awaits (the body is never read), which keeps the hot path cheap.
fn handle(st: &State, req: Request<Incoming>) -> Resp {
    st.count.fetch_add(1, Ordering::Relaxed);
    let resp = answer(st, &req);
    if st.record {
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        st.requests.lock().unwrap().push(RecordedRequest {
            method: req.method().to_string(),
            path_and_query: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            headers,
            status: resp.status().as_u16(),
        });
    }
    resp
}

fn answer(st: &State, req: &Request<Incoming>) -> Resp {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/livez" | "/readyz") {
        return respond(
            404,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"404 page not found\n"),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(
            405,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"Method Not Allowed\n"),
        );
    }
    // Health endpoints are open (the components' default always-allow paths; plain components
    // check nothing at all).
    let health = path != "/metrics";
    if st.kind.is_secure() {
        let token = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let verdict = match (&st.verifier, health && token.is_none()) {
            (_, true) => Verdict::Allow,
            (Some(v), false) => v(token, req.method().as_str(), path),
            (None, false) => Verdict::Forbidden("system:anonymous".into()),
        };
        let pretty = wants_pretty(
            req.headers()
                .get(hyper::header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
        );
        let verb = req.method().as_str().to_ascii_lowercase();
        let status = match verdict {
            Verdict::Allow => None,
            Verdict::Unauthenticated => Some(Status::unauthorized()),
            Verdict::Forbidden(user) => Some(Status::forbidden_path(&user, &verb, path)),
            Verdict::InternalError => Some(Status::internal_error(
                "Internal Server Error: \"/metrics\": the server cannot review the request",
            )),
        };
        if let Some(s) = status {
            return respond(s.code, "application/json", encode(&s, pretty));
        }
    }
    if health {
        return respond(200, "text/plain; charset=utf-8", Bytes::from_static(b"ok"));
    }
    respond(200, METRICS_CONTENT_TYPE, st.payload.clone())
}

#[cfg(test)]
mod tests;
