//! A mock kube-apiserver: TokenReview and SubjectAccessReview over HTTPS, answering exactly like the
//! 1.28 captures in fixtures/kube-apiserver-1.28/, with switchable faults and a call recorder.
//!
//! The caller must authenticate with its own ServiceAccount token and be allowed by RBAC (the
//! manifests' YAML) to create the review, just as Envoy's credential injector makes the real proxy do.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::clock::rfc3339;
use crate::http_server::{respond, Handler, HttpServer, Resp};
use crate::k8s_status::{encode, wants_pretty, Status};
use crate::rbac::{default_rbac_files, Attributes, Rbac};
use crate::tls::TestCa;
use crate::components::Verdict;
use crate::tokens::{token_digest, TokenError, TokenIssuer, VerifiedUser};

pub const TOKENREVIEWS_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
pub const SUBJECTACCESSREVIEWS_PATH: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// A misbehaviour to inject, switchable at any time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// The listening socket is closed: connections are refused and open ones dropped.
    Down,
    /// Answer normally, but only after this delay (other connections are not held up).
    Slow(Duration),
    /// Like `Slow`, with a delay of its own for each kind of review.
    SlowReviews {
        token_review: Duration,
        access_review: Duration,
    },
    /// 500 with an InternalError Status.
    ServerError,
    /// 201 with a body that is not JSON.
    Malformed,
    /// 201 with JSON that is not a review (`{"kind":"Status"}`).
    WrongShape,
    /// 201 with bytes that are not UTF-8 (NULs, lone continuation bytes, a truncated sequence),
    /// as content type and as a header value too.
    BinaryGarbage,
    /// 403 Status: the proxy's own account may not create reviews (RBAC missing).
    ForbiddenToProxy,
    /// Reviews are answered, issuer discovery (`/openid/v1/jwks`, …) gets 503.
    DiscoveryDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    TokenReview,
    SubjectAccessReview,
    /// `GET /.well-known/openid-configuration` or `/openid/v1/jwks` (see `discovery`).
    Discovery,
    Other,
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct RecordedCall {
    pub kind: CallKind,
    pub method: String,
    pub path: String,
    /// The authenticated caller's username (never the raw token).
    pub caller: Option<String>,
    /// The review's spec as received; `token` replaced by its SHA-256 hex digest
    /// ([`crate::tokens::token_digest`]). `Null` when the body was not a review.
    pub spec: Value,
    /// The HTTP status answered (0 when the connection was cut).
    pub status: u16,
    pub user_agent: Option<String>,
}

/// How to start the mock.
#[derive(Clone)]
pub struct MockApiserverOptions {
    /// 0 = ephemeral.
    pub port: u16,
    /// RBAC YAML files; default: the shipped manifests plus the example Prometheus binding.
    pub rbac_files: Vec<PathBuf>,
    /// Token issuer; default: the process-wide one ([`TokenIssuer::shared`]).
    pub issuer: Option<Arc<TokenIssuer>>,
}

impl Default for MockApiserverOptions {
    fn default() -> Self {
        MockApiserverOptions {
            port: 0,
            rbac_files: default_rbac_files(),
            issuer: None,
        }
    }
}

struct State {
    /// Signs new tokens; with `retired`, the keys tokens verify against (the apiserver's
    /// `--service-account-key-file` keys) and that `/openid/v1/jwks` lists.
    issuer: RwLock<Arc<TokenIssuer>>,
    retired: RwLock<Vec<Arc<TokenIssuer>>>,
    rbac: Rbac,
    fault: Mutex<Fault>,
    calls: Mutex<Vec<RecordedCall>>,
    /// Reviews the fake kube-scheduler / kube-controller-manager asked (see `DelegatedAuth`).
    delegated_calls: Mutex<Vec<RecordedCall>>,
    /// What the discovery document names as the JWKS's host: `https://kubernetes.default.svc`, as
    /// a cluster's apiserver says (its `--service-account-jwks-uri` default is its own address).
    external_url: String,
}

impl State {
    fn current_issuer(&self) -> Arc<TokenIssuer> {
        self.issuer.read().unwrap().clone()
    }

    /// Every verification key, the signing one first.
    fn keys(&self) -> Vec<Arc<TokenIssuer>> {
        let mut keys = vec![self.current_issuer()];
        keys.extend(self.retired.read().unwrap().iter().cloned());
        keys
    }

    /// Verifies against every key, as kube-apiserver does with several
    /// `--service-account-key-file`s; the signing key's verdict when none accepts the token.
    fn verify(&self, token: &str, audiences: &[String]) -> Result<VerifiedUser, TokenError> {
        let keys = self.keys();
        let mut first = None;
        for key in &keys {
            match key.verify(token, audiences) {
                Ok(user) => return Ok(user),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        Err(first.unwrap_or(TokenError::Malformed))
    }
}

pub struct MockApiserver {
    state: Arc<State>,
    server: Arc<HttpServer>,
    ca: TestCa,
}

impl MockApiserver {
    /// Starts on an ephemeral port with the shipped RBAC.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(MockApiserverOptions::default())
    }

    pub fn start_with(opts: MockApiserverOptions) -> anyhow::Result<Self> {
        let rbac = Rbac::load(&opts.rbac_files)?;
        let ca = TestCa::new("kubernetes");
        let cert = ca.issue_server(
            &[
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "kubernetes",
                "localhost",
            ],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        );
        let state = Arc::new(State {
            issuer: RwLock::new(opts.issuer.unwrap_or_else(TokenIssuer::shared)),
            retired: RwLock::new(Vec::new()),
            rbac,
            fault: Mutex::new(Fault::None),
            calls: Mutex::new(Vec::new()),
            delegated_calls: Mutex::new(Vec::new()),
            external_url: "https://kubernetes.default.svc".into(),
        });
        let st = state.clone();
        let handler: Handler = Arc::new(move |req| {
            let st = st.clone();
            Box::pin(async move { handle(st, req).await })
        });
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, opts.port));
        let server = HttpServer::start(addr, Some(cert.tls_acceptor()?), handler)?;
        Ok(MockApiserver { state, server, ca })
    }

    pub fn port(&self) -> u16 {
        self.server.addr().port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port())
    }

    /// The CA that signed the serving certificate (SANs kubernetes.default.svc, 127.0.0.1, …).
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The issuer whose tokens this apiserver accepts: mint client and proxy tokens with it.
    pub fn issuer(&self) -> Arc<TokenIssuer> {
        self.state.current_issuer()
    }

    /// Rotates the signing key as an operator does: new tokens are signed with a fresh key, tokens
    /// of the old one still verify (it stays among the verification keys), and the JWKS lists
    /// both. Returns the new issuer.
    pub fn rotate_signing_key(&self) -> Arc<TokenIssuer> {
        let fresh = Arc::new(TokenIssuer::with_fresh_key());
        let old = std::mem::replace(&mut *self.state.issuer.write().unwrap(), fresh.clone());
        self.state.retired.write().unwrap().push(old);
        fresh
    }

    /// Drops every retired key: their tokens no longer verify, the JWKS lists the current key only.
    pub fn retire_old_keys(&self) {
        self.state.retired.write().unwrap().clear();
    }

    pub fn rbac(&self) -> &Rbac {
        &self.state.rbac
    }

    /// Switches the fault. `Down` returns once the port refuses connections; leaving `Down` rebinds
    /// the same port.
    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = fault.clone();
        if fault == Fault::Down {
            self.server.stop_listening();
        } else if let Err(e) = self.server.resume_listening() {
            panic!("mock apiserver could not rebind port {}: {e}", self.port());
        }
    }

    pub fn fault(&self) -> Fault {
        self.state.fault.lock().unwrap().clone()
    }

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn count(&self, kind: CallKind) -> usize {
        self.state
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.kind == kind)
            .count()
    }

    pub fn clear_calls(&self) {
        self.state.calls.lock().unwrap().clear();
    }

    /// Stops serving (also done on drop).
    pub fn shutdown(&self) {
        self.server.shutdown();
    }
}

impl Drop for MockApiserver {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}

// ---- wire types, in Go field order with Go's omitempty ----

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct TokenReviewSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    token: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    audiences: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
struct UserInfo {
    #[serde(skip_serializing_if = "String::is_empty")]
    username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
struct TokenReviewStatus {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    authenticated: bool,
    user: UserInfo,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    audiences: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct ResourceAttributes {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    verb: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    resource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    subresource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct NonResourceAttributes {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    verb: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SarSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resource_attributes: Option<ResourceAttributes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    non_resource_attributes: Option<NonResourceAttributes>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    user: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    extra: Map<String, Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    uid: String,
}

#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct SarStatus {
    allowed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    denied: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    evaluation_error: String,
}

#[derive(Debug, Deserialize)]
struct ReviewIn<S> {
    #[serde(default)]
    kind: String,
    #[serde(default, rename = "apiVersion")]
    api_version: String,
    #[serde(default)]
    spec: S,
}

#[derive(Serialize)]
struct ReviewOut<S, T> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: ReviewMetadata,
    spec: S,
    status: T,
}

/// One `metadata.managedFields` entry, in Go field order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManagedFieldsEntry {
    #[serde(skip_serializing_if = "String::is_empty")]
    manager: String,
    operation: &'static str,
    api_version: String,
    time: String,
    fields_type: &'static str,
    #[serde(rename = "fieldsV1")]
    fields_v1: Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewMetadata {
    creation_timestamp: Option<String>,
    managed_fields: [ManagedFieldsEntry; 1],
}

/// `metadata` as the apiserver returns it for a review: no name, null timestamp, one managedFields
/// entry owned by the client's user-agent prefix.
fn review_metadata(api_version: &str, user_agent: Option<&str>, spec: &Value) -> ReviewMetadata {
    let manager = user_agent
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .chars()
        .take(128)
        .collect();
    ReviewMetadata {
        creation_timestamp: None,
        managed_fields: [ManagedFieldsEntry {
            manager,
            operation: "Update",
            api_version: api_version.into(),
            time: rfc3339(SystemTime::now()),
            fields_type: "FieldsV1",
            fields_v1: json!({ "f:spec": fields_v1(spec, false) }),
        }],
    }
}

/// The FieldsV1 set of a JSON object: `f:<key>` per field, `.` for nested structs, lists atomic.
fn fields_v1(v: &Value, with_dot: bool) -> Value {
    let mut m = Map::new();
    if let Value::Object(o) = v {
        if with_dot {
            m.insert(".".into(), json!({}));
        }
        for (k, child) in o {
            let f = if child.is_object() {
                fields_v1(child, true)
            } else {
                json!({})
            };
            m.insert(format!("f:{k}"), f);
        }
    }
    Value::Object(m)
}

// ---- request handling ----

struct Ctx {
    kind: CallKind,
    method: String,
    path: String,
    user_agent: Option<String>,
    pretty: bool,
    caller: Option<VerifiedUser>,
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let kind = match path.as_str() {
        TOKENREVIEWS_PATH => CallKind::TokenReview,
        SUBJECTACCESSREVIEWS_PATH => CallKind::SubjectAccessReview,
        discovery::OPENID_CONFIGURATION_PATH | discovery::JWKS_PATH => CallKind::Discovery,
        _ => CallKind::Other,
    };
    let user_agent = req
        .headers()
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let bearer = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let caller = bearer
        .as_deref()
        .and_then(|t| st.verify(t, &[]).ok());
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let ctx = Ctx {
        kind,
        method: req.method().to_string(),
        path,
        pretty: wants_pretty(user_agent.as_deref()),
        user_agent,
        caller,
    };
    let method_ok = req.method() == Method::POST;
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();

    let fault = st.fault.lock().unwrap().clone();
    if let Fault::SlowReviews {
        token_review,
        access_review,
    } = fault
    {
        let delay = match ctx.kind {
            CallKind::TokenReview => token_review,
            CallKind::SubjectAccessReview => access_review,
            CallKind::Discovery | CallKind::Other => Duration::ZERO,
        };
        tokio::time::sleep(delay).await;
    }
    if let Fault::Slow(d) = fault {
        tokio::time::sleep(d).await;
    }
    let discovered = match fault {
        Fault::DiscoveryDown if ctx.kind == CallKind::Discovery => Some(respond(
            503,
            "text/plain",
            "mock apiserver fault: issuer discovery unavailable",
        )),
        Fault::None | Fault::Slow(_) | Fault::SlowReviews { .. } | Fault::DiscoveryDown => {
            discovery::answer(&st, &ctx, &st.external_url)
        }
        _ => None,
    };
    let (resp, spec) = match (discovered, fault) {
        (Some(resp), _) => (resp, Value::Null),
        (None, fault) => match fault {
        Fault::ServerError => (
            status_resp(
                &ctx,
                Status::internal_error("mock apiserver fault: server error"),
            ),
            Value::Null,
        ),
        Fault::Malformed => (
            respond(201, "application/json", "<html>this is not JSON"),
            Value::Null,
        ),
        Fault::WrongShape => (
            respond(201, "application/json", "{\"kind\":\"Status\"}"),
            Value::Null,
        ),
        Fault::ForbiddenToProxy => (forbidden(&ctx), Value::Null),
        Fault::BinaryGarbage => {
            let mut resp = respond(201, "application/json", &b"{\"status\":\xff\x00\xc3\x28{\xf0\x9f\x98"[..]);
            if let Ok(value) = hyper::header::HeaderValue::from_bytes(b"caf\xE9") {
                resp.headers_mut().insert("x-garbage", value);
            }
            (resp, Value::Null)
        }
        _ => review(&st, &ctx, method_ok, content_type.as_deref(), &body),
        },
    };
    let spec = if spec.is_null() {
        recorded_spec(ctx.kind, &body)
    } else {
        spec
    };
    st.calls.lock().unwrap().push(RecordedCall {
        kind: ctx.kind,
        method: ctx.method,
        path: ctx.path,
        caller: ctx.caller.map(|u| u.username),
        spec,
        status: resp.status().as_u16(),
        user_agent: ctx.user_agent,
    });
    resp
}

fn status_resp(ctx: &Ctx, s: Status) -> Resp {
    respond(s.code, "application/json", encode(&s, ctx.pretty))
}

fn forbidden(ctx: &Ctx) -> Resp {
    let user = ctx
        .caller
        .as_ref()
        .map(|u| u.username.as_str())
        .unwrap_or("system:anonymous");
    let (group, resource) = match ctx.kind {
        CallKind::SubjectAccessReview => ("authorization.k8s.io", "subjectaccessreviews"),
        _ => ("authentication.k8s.io", "tokenreviews"),
    };
    status_resp(
        ctx,
        Status::forbidden_resource(user, "create", group, resource),
    )
}

/// The normal path: authn + authz of the caller, then the review. Returns the response and the
/// recorded spec.
fn review(
    st: &State,
    ctx: &Ctx,
    method_ok: bool,
    content_type: Option<&str>,
    body: &Bytes,
) -> (Resp, Value) {
    if ctx.kind == CallKind::Other {
        return (status_resp(ctx, Status::not_found()), Value::Null);
    }
    // Authentication happens before routing details like the method.
    // Missing and invalid tokens both get 401 (a real apiserver with anonymous auth enabled would
    // treat a missing token as system:anonymous and answer 403).
    let Some(caller) = &ctx.caller else {
        return (status_resp(ctx, Status::unauthorized()), Value::Null);
    };
    let (group, resource) = match ctx.kind {
        CallKind::TokenReview => ("authentication.k8s.io", "tokenreviews"),
        _ => ("authorization.k8s.io", "subjectaccessreviews"),
    };
    if !method_ok {
        return (
            status_resp(ctx, Status::method_not_allowed(&ctx.method)),
            Value::Null,
        );
    }
    if !st
        .rbac
        .can(&caller.username, &caller.groups, "create", group, resource)
    {
        return (forbidden(ctx), Value::Null);
    }
    let ct = content_type.unwrap_or_default();
    if !ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case("application/json")
    {
        return (
            status_resp(ctx, Status::unsupported_media_type(ct)),
            Value::Null,
        );
    }
    match ctx.kind {
        CallKind::TokenReview => token_review(st, ctx, body),
        _ => subject_access_review(st, ctx, body),
    }
}

fn check_kind<S>(r: &ReviewIn<S>, kind: &str, api_version: &str) -> Result<(), String> {
    if (!r.kind.is_empty() && r.kind != kind)
        || (!r.api_version.is_empty() && r.api_version != api_version)
    {
        return Err(format!(
            "the API version in the data ({}) does not match the expected API version ({api_version})",
            r.api_version
        ));
    }
    Ok(())
}

fn token_review(st: &State, ctx: &Ctx, body: &Bytes) -> (Resp, Value) {
    const AV: &str = "authentication.k8s.io/v1";
    let r: ReviewIn<TokenReviewSpec> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return (
                status_resp(ctx, Status::bad_request(format!("invalid JSON: {e}"))),
                Value::Null,
            )
        }
    };
    if let Err(m) = check_kind(&r, "TokenReview", AV) {
        return (status_resp(ctx, Status::bad_request(m)), Value::Null);
    }
    let spec = r.spec;
    let mut recorded = serde_json::to_value(&spec).unwrap_or_default();
    if !spec.token.is_empty() {
        recorded["token"] = token_digest(&spec.token).into();
    }
    if spec.token.is_empty() {
        // The apiserver's validation: 422 would be exact; a 400-class Status is what matters.
        let s = Status::bad_request("spec.token: Required value: token must not be empty".into());
        return (status_resp(ctx, s), recorded);
    }
    let status = match st.verify(&spec.token, &spec.audiences) {
        Ok(u) => TokenReviewStatus {
            authenticated: true,
            user: UserInfo {
                username: u.username,
                uid: u.uid,
                groups: u.groups,
            },
            audiences: u.audiences,
            error: String::new(),
        },
        Err(e) => TokenReviewStatus {
            error: e.review_error(),
            ..Default::default()
        },
    };
    let spec_value = serde_json::to_value(&spec).unwrap_or_default();
    let out = ReviewOut {
        kind: "TokenReview",
        api_version: AV,
        metadata: review_metadata(AV, ctx.user_agent.as_deref(), &spec_value),
        spec,
        status,
    };
    (
        respond(201, "application/json", encode(&out, ctx.pretty)),
        recorded,
    )
}

fn subject_access_review(st: &State, ctx: &Ctx, body: &Bytes) -> (Resp, Value) {
    const AV: &str = "authorization.k8s.io/v1";
    let r: ReviewIn<SarSpec> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return (
                status_resp(ctx, Status::bad_request(format!("invalid JSON: {e}"))),
                Value::Null,
            )
        }
    };
    if let Err(m) = check_kind(&r, "SubjectAccessReview", AV) {
        return (status_resp(ctx, Status::bad_request(m)), Value::Null);
    }
    let spec = r.spec;
    let recorded = serde_json::to_value(&spec).unwrap_or_default();
    // Validation as in the apiserver: exactly one of the attribute kinds, and a user or a group.
    let attrs = match (&spec.resource_attributes, &spec.non_resource_attributes) {
        (Some(ra), None) => Attributes::Resource {
            namespace: ra.namespace.clone(),
            verb: ra.verb.clone(),
            group: ra.group.clone(),
            resource: ra.resource.clone(),
            subresource: ra.subresource.clone(),
            name: ra.name.clone(),
        },
        (None, Some(nra)) => Attributes::NonResource {
            path: nra.path.clone(),
            verb: nra.verb.clone(),
        },
        _ => {
            let s = Status::bad_request(
                "spec.resourceAttributes: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
            );
            return (status_resp(ctx, s), recorded);
        }
    };
    if spec.user.is_empty() && spec.groups.is_empty() {
        let s = Status::bad_request(
            "spec.user: Invalid value: \"\": at least one of user or group must be specified"
                .into(),
        );
        return (status_resp(ctx, s), recorded);
    }
    let d = st.rbac.authorize(&spec.user, &spec.groups, &attrs);
    let status = SarStatus {
        allowed: d.allowed,
        reason: d.reason.unwrap_or_default(),
        ..Default::default()
    };
    let spec_value = serde_json::to_value(&spec).unwrap_or_default();
    let out = ReviewOut {
        kind: "SubjectAccessReview",
        api_version: AV,
        metadata: review_metadata(AV, ctx.user_agent.as_deref(), &spec_value),
        spec,
        status,
    };
    (
        respond(201, "application/json", encode(&out, ctx.pretty)),
        recorded,
    )
}

/// Best-effort spec of a body that was not fully processed (faults, auth failures).
fn recorded_spec(kind: CallKind, body: &Bytes) -> Value {
    if kind == CallKind::Other {
        return Value::Null;
    }
    let mut spec = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("spec").cloned())
        .unwrap_or(Value::Null);
    if let Some(t) = spec.get("token").and_then(|t| t.as_str()).map(token_digest) {
        spec["token"] = t.into();
    }
    spec
}

mod discovery;
pub use discovery::{JWKS_PATH, OPENID_CONFIGURATION_PATH};

#[cfg(test)]
mod tests;

/// How long kube-scheduler and kube-controller-manager remember a delegated answer (their flag
/// defaults: `--authentication-token-webhook-cache-ttl` and both `--authorization-webhook-cache-*`
/// are 10 s).
pub const COMPONENT_CACHE_TTL: Duration = Duration::from_secs(10);

/// (token digest, verb, path): what a component's answer is remembered by.
type DelegatedKey = (String, String, String);

/// The apiserver kube-scheduler and kube-controller-manager delegate to: what they do with a request
/// on their secure port, as observed on v1.28 (shared/reference component-behaviour):
/// `--authorization-always-allow-paths` admit a request without credentials even while the
/// apiserver is down; a bearer token is always reviewed (TokenReview, then a SubjectAccessReview
/// with verb = the lower-case method), each answer remembered 10 s; while the apiserver is
/// unreachable any token is 401 and an anonymous request to another path is 500.
#[derive(Clone)]
pub struct DelegatedAuth {
    state: Arc<State>,
    /// Which component asks (recorded as the caller of its reviews).
    component: String,
    always_allow_paths: Vec<String>,
    cache: Arc<Mutex<HashMap<DelegatedKey, (std::time::Instant, Verdict)>>>,
}

impl MockApiserver {
    /// Reviews the components themselves asked (kube-scheduler / kube-controller-manager checking
    /// the credential they were shown); `calls` holds only the gate's.
    pub fn delegated_calls(&self) -> Vec<RecordedCall> {
        self.state.delegated_calls.lock().unwrap().clone()
    }

    pub fn delegated_count(&self, kind: CallKind) -> usize {
        self.delegated_calls().iter().filter(|c| c.kind == kind).count()
    }

    /// The delegated authentication and authorization of `component` (e.g. `system:kube-scheduler`),
    /// with its `--authorization-always-allow-paths` (the real default: `/healthz,/readyz,/livez`).
    pub fn delegated_auth(&self, component: &str, always_allow_paths: &[&str]) -> DelegatedAuth {
        DelegatedAuth {
            state: self.state.clone(),
            component: component.to_owned(),
            always_allow_paths: always_allow_paths.iter().map(|p| p.to_string()).collect(),
            cache: Arc::default(),
        }
    }
}

impl DelegatedAuth {
    fn unreachable(&self) -> bool {
        matches!(
            *self.state.fault.lock().unwrap(),
            Fault::Down | Fault::ServerError | Fault::Malformed | Fault::WrongShape | Fault::BinaryGarbage
        )
    }

    fn record(&self, kind: CallKind, spec: Value, status: u16) {
        let path = match kind {
            CallKind::TokenReview => TOKENREVIEWS_PATH,
            _ => SUBJECTACCESSREVIEWS_PATH,
        };
        self.state.delegated_calls.lock().unwrap().push(RecordedCall {
            kind,
            method: "POST".into(),
            path: path.into(),
            caller: Some(self.component.clone()),
            spec,
            status,
            user_agent: Some(format!("{}/v1.28.7", self.component.trim_start_matches("system:"))),
        });
    }

    /// The component's answer to `method path` with this bearer token (None: no credentials).
    pub fn check(&self, token: Option<&str>, method: &str, path: &str) -> Verdict {
        let verb = method.to_ascii_lowercase();
        let Some(token) = token else {
            if self.always_allow_paths.iter().any(|p| p == path) {
                return Verdict::Allow;
            }
            if self.unreachable() {
                return Verdict::InternalError;
            }
            return self.authorize("system:anonymous", &["system:unauthenticated".into()], &verb, path);
        };
        let key = (token_digest(token), verb.clone(), path.to_owned());
        if let Some((at, verdict)) = self.cache.lock().unwrap().get(&key) {
            if at.elapsed() < COMPONENT_CACHE_TTL {
                return verdict.clone();
            }
        }
        if self.unreachable() {
            // "tokenreviews ... connection refused": the request is Unauthorized.
            return Verdict::Unauthenticated;
        }
        let verdict = match self.state.verify(token, &[]) {
            Err(_) => {
                self.record(CallKind::TokenReview, json!({"token": token_digest(token)}), 201);
                Verdict::Unauthenticated
            }
            Ok(user) => {
                self.record(CallKind::TokenReview, json!({"token": token_digest(token)}), 201);
                // Always-allowed paths skip authorization, not authentication.
                if self.always_allow_paths.iter().any(|p| p == path) {
                    Verdict::Allow
                } else {
                    self.authorize(&user.username, &user.groups, &verb, path)
                }
            }
        };
        self.cache.lock().unwrap().insert(key, (std::time::Instant::now(), verdict.clone()));
        verdict
    }

    fn authorize(&self, user: &str, groups: &[String], verb: &str, path: &str) -> Verdict {
        let attrs = Attributes::NonResource { path: path.into(), verb: verb.into() };
        let decision = self.state.rbac.authorize(user, groups, &attrs);
        self.record(
            CallKind::SubjectAccessReview,
            json!({"user": user, "groups": groups, "nonResourceAttributes": {"path": path, "verb": verb}}),
            201,
        );
        if decision.allowed {
            Verdict::Allow
        } else {
            Verdict::Forbidden(user.to_owned())
        }
    }
}
