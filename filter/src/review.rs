//! The two Kubernetes API reviews the filter asks for, in their wire format
//! (authentication.k8s.io/v1 TokenReview, authorization.k8s.io/v1 SubjectAccessReview).
//!
//! Hand-written on `serde_json::Value` rather than generated (k8s-openapi would triple the .wasm) or
//! derived (each derived type adds its own serde code): the filter needs a handful of fields.

use crate::text::quoted;
use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::cache::{Digest, FieldDigest, Table};
use crate::config::{Config, ResourceAttributes};

pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
pub const SUBJECT_ACCESS_REVIEW_PATH: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// Who the apiserver says the caller is; carried unchanged into the SubjectAccessReview.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// `userInfo` as the Kubernetes API writes it (also the cache's form of a user).
    fn to_json(&self) -> Value {
        let mut user = Map::new();
        user.insert("username".into(), json!(self.username));
        if !self.uid.is_empty() {
            user.insert("uid".into(), json!(self.uid));
        }
        if !self.groups.is_empty() {
            user.insert("groups".into(), json!(self.groups));
        }
        if !self.extra.is_empty() {
            user.insert("extra".into(), json!(self.extra));
        }
        Value::Object(user)
    }

    /// Reads `userInfo`; fields of the wrong type read as absent.
    fn from_json(value: &Value) -> User {
        let text = |key| {
            value
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let extra = value
            .get("extra")
            .and_then(Value::as_object)
            .map(|extra| extra.iter().map(|(k, v)| (k.clone(), strings(v))).collect())
            .unwrap_or_default();
        User {
            username: text("username"),
            uid: text("uid"),
            groups: value.get("groups").map(strings).unwrap_or_default(),
            extra,
        }
    }
}

/// The strings of a JSON list (anything else in it is skipped).
fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// What a TokenReview answer means for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Authenticated(User),
    /// The token is not valid (or not for us). Carries no detail: the apiserver's `error` text is not
    /// something to hand back to an anonymous caller.
    Rejected,
}

/// The apiserver did not give a usable answer; the request must not pass and must not be cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiserverTrouble(pub String);

/// An answer to either review, as the gate takes it and the cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Token(Authentication),
    Access(bool),
}

impl Answer {
    /// Reads the apiserver's answer to a review of kind `table`.
    pub fn read(
        table: Table,
        config: &Config,
        http_status: Option<u16>,
        body: &[u8],
    ) -> Result<Answer, ApiserverTrouble> {
        let status = http_status
            .ok_or_else(|| ApiserverTrouble("the review answer has no :status".to_owned()))?;
        match table {
            Table::TokenReview => {
                read_token_review(status, body, &config.audiences).map(Answer::Token)
            }
            Table::AccessReview => read_subject_access_review(status, body).map(Answer::Access),
        }
    }

    /// A rejected token or a denied access: the cache gives these up first.
    pub fn is_negative(&self) -> bool {
        matches!(
            self,
            Answer::Token(Authentication::Rejected) | Answer::Access(false)
        )
    }

    /// Compact form for the cache (no token is ever part of an answer).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Answer::Token(Authentication::Rejected) => vec![0],
            Answer::Token(Authentication::Authenticated(user)) => {
                let mut out = vec![1];
                if serde_json::to_writer(&mut out, &user.to_json()).is_err() {
                    return Vec::new();
                }
                out
            }
            Answer::Access(allowed) => vec![u8::from(*allowed)],
        }
    }

    /// `None` when the bytes are not an answer of that kind (then the cache is ignored).
    pub fn decode(table: Table, bytes: &[u8]) -> Option<Answer> {
        match (table, bytes.split_first()?) {
            (Table::TokenReview, (0, [])) => Some(Answer::Token(Authentication::Rejected)),
            (Table::TokenReview, (1, user)) => {
                let user = User::from_json(&serde_json::from_slice(user).ok()?);
                (!user.username.is_empty())
                    .then_some(Answer::Token(Authentication::Authenticated(user)))
            }
            (Table::AccessReview, (&allowed @ (0 | 1), [])) => Some(Answer::Access(allowed == 1)),
            _ => None,
        }
    }
}

pub fn token_review_body(token: &str, audiences: &[String]) -> Vec<u8> {
    let mut spec = Map::new();
    spec.insert("token".into(), json!(token));
    if !audiences.is_empty() {
        spec.insert("audiences".into(), json!(audiences));
    }
    let review = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": spec,
    });
    serde_json::to_vec(&review).unwrap_or_default()
}

/// The answer's body as a review of `kind`, and its `status` object.
fn review_status(body: &[u8], kind: &str) -> Result<Value, ApiserverTrouble> {
    let mut answer: Value = serde_json::from_slice(body)
        .map_err(|e| ApiserverTrouble(format!("{kind} answer is not valid JSON ({e})")))?;
    let got = answer
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if got != kind {
        return Err(ApiserverTrouble(format!(
            "expected a {kind}, got kind {}",
            quoted(got)
        )));
    }
    match answer.get_mut("status").map(Value::take) {
        Some(status @ Value::Object(_)) => Ok(status),
        _ => Err(ApiserverTrouble(format!("{kind} answer has no status"))),
    }
}

/// Reads a TokenReview answer. `wanted_audiences` are the ones the filter asked for: when set, the
/// token must be valid for at least one of them (kube-rbac-proxy's rule).
pub fn read_token_review(
    http_status: u16,
    body: &[u8],
    wanted_audiences: &[String],
) -> Result<Authentication, ApiserverTrouble> {
    check_http_status(http_status, "TokenReview")?;
    let status = review_status(body, "TokenReview")?;
    // Omitted from the JSON when false (see the reference exchanges).
    if status.get("authenticated").and_then(Value::as_bool) != Some(true) {
        return Ok(Authentication::Rejected);
    }
    let user = status.get("user").map(User::from_json).unwrap_or_default();
    if user.username.is_empty() {
        return Err(ApiserverTrouble(
            "TokenReview authenticated a user without a name".to_owned(),
        ));
    }
    let audiences = status.get("audiences").map(strings).unwrap_or_default();
    if !wanted_audiences.is_empty() && !audiences.iter().any(|a| wanted_audiences.contains(a)) {
        return Ok(Authentication::Rejected);
    }
    Ok(Authentication::Authenticated(user))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    NonResource {
        path: String,
        verb: &'static str,
    },
    Resource {
        verb: &'static str,
        attrs: ResourceAttributes,
    },
}

impl Attributes {
    /// How Kubernetes itself words a denial, so operators recognise it.
    pub fn describe(&self) -> String {
        match self {
            Attributes::NonResource { path, verb } => format!("{verb} path {}", quoted(path)),
            Attributes::Resource { verb, attrs } => {
                let resource = if attrs.subresource.is_empty() {
                    attrs.resource.clone()
                } else {
                    format!("{}/{}", attrs.resource, attrs.subresource)
                };
                let mut text = format!(
                    "{verb} resource {} in API group {}",
                    quoted(&resource),
                    quoted(&attrs.api_group)
                );
                if !attrs.name.is_empty() {
                    text.push_str(&format!(" named {}", quoted(&attrs.name)));
                }
                if attrs.namespace.is_empty() {
                    text.push_str(" at the cluster scope");
                } else {
                    text.push_str(&format!(" in namespace {}", quoted(&attrs.namespace)));
                }
                text
            }
        }
    }
}

/// The cache key of a SubjectAccessReview: a digest of the whole question (user, uid, groups,
/// extra and attributes), so two questions share an answer only if they are the same question.
/// Built from the fields, not from the JSON body, so that a warm request never serialises one.
pub fn access_review_key(user: &User, attributes: &Attributes) -> Digest {
    let mut d = FieldDigest::new(b"subjectaccessreview");
    d.field(user.username.as_bytes()).field(user.uid.as_bytes());
    d.count(user.groups.len());
    for group in &user.groups {
        d.field(group.as_bytes());
    }
    d.count(user.extra.len());
    for (key, values) in &user.extra {
        d.field(key.as_bytes()).count(values.len());
        for value in values {
            d.field(value.as_bytes());
        }
    }
    match attributes {
        Attributes::NonResource { path, verb } => {
            d.field(b"nonResource")
                .field(path.as_bytes())
                .field(verb.as_bytes());
        }
        Attributes::Resource { verb, attrs } => {
            d.field(b"resource").field(verb.as_bytes());
            for value in [
                &attrs.namespace,
                &attrs.api_group,
                &attrs.api_version,
                &attrs.resource,
                &attrs.subresource,
                &attrs.name,
            ] {
                d.field(value.as_bytes());
            }
        }
    }
    d.finish()
}

pub fn subject_access_review_body(user: &User, attributes: &Attributes) -> Vec<u8> {
    let Value::Object(mut spec) = user.to_json() else {
        return Vec::new();
    };
    // userInfo says `username`; a SubjectAccessReview spec says `user`.
    if let Some(name) = spec.remove("username") {
        spec.insert("user".into(), name);
    }
    match attributes {
        Attributes::NonResource { path, verb } => {
            spec.insert(
                "nonResourceAttributes".into(),
                json!({"path": path, "verb": verb}),
            );
        }
        Attributes::Resource { verb, attrs } => {
            let mut wire = Map::new();
            wire.insert("verb".into(), json!(verb));
            for (key, value) in [
                ("namespace", &attrs.namespace),
                ("group", &attrs.api_group),
                ("version", &attrs.api_version),
                ("resource", &attrs.resource),
                ("subresource", &attrs.subresource),
                ("name", &attrs.name),
            ] {
                if !value.is_empty() {
                    wire.insert(key.into(), json!(value));
                }
            }
            spec.insert("resourceAttributes".into(), Value::Object(wire));
        }
    }
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": spec,
    });
    serde_json::to_vec(&review).unwrap_or_default()
}

/// Reads a SubjectAccessReview answer: `Ok(true)` only for an explicit allow.
pub fn read_subject_access_review(http_status: u16, body: &[u8]) -> Result<bool, ApiserverTrouble> {
    check_http_status(http_status, "SubjectAccessReview")?;
    let status = review_status(body, "SubjectAccessReview")?;
    // Always present in real answers; a missing `allowed` is a malformed answer, not a denial.
    let allowed = status
        .get("allowed")
        .and_then(Value::as_bool)
        .ok_or_else(|| {
            ApiserverTrouble("SubjectAccessReview status has no \"allowed\"".to_owned())
        })?;
    let denied = status
        .get("denied")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(allowed && !denied)
}

fn check_http_status(http_status: u16, what: &str) -> Result<(), ApiserverTrouble> {
    match http_status {
        200 | 201 => Ok(()),
        401 | 403 => Err(ApiserverTrouble(format!(
            "the apiserver refused the proxy's own {what} ({http_status}): check the proxy's ServiceAccount token and its RBAC (create {}s)",
            what.to_ascii_lowercase()
        ))),
        503 | 504 => Err(ApiserverTrouble(format!(
            "{what} failed with {http_status}: apiserver unreachable or too slow"
        ))),
        other => Err(ApiserverTrouble(format!("{what} answered HTTP {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // Under wasm32-unknown-unknown the same tests run in Node.js through wasm-bindgen-test.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    // Real kube-apiserver 1.28 answers (tokens redacted upstream), trimmed of managedFields.
    const PROMETHEUS_TR: &str = r#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"token":"<redacted>"},"status":{"authenticated":true,"user":{"username":"system:serviceaccount:observability:prometheus-server","uid":"e2a1121a-9135-4ae6-a12c-ae79aa2a43a2","groups":["system:serviceaccounts","system:serviceaccounts:observability","system:authenticated"]},"audiences":["https://kubernetes.default.svc.cluster.local"]}}"#;
    const GARBAGE_TR: &str = r#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"token":"<redacted>"},"status":{"user":{},"error":"invalid bearer token"}}"#;
    const CALLER_FORBIDDEN: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"tokenreviews.authentication.k8s.io is forbidden","reason":"Forbidden","code":403}"#;
    const SAR_ALLOWED: &str = r#"{"kind":"SubjectAccessReview","apiVersion":"authorization.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"nonResourceAttributes":{"path":"/metrics","verb":"get"},"user":"u"},"status":{"allowed":true,"reason":"RBAC: allowed by ClusterRoleBinding"}}"#;
    const SAR_DENIED: &str = r#"{"kind":"SubjectAccessReview","apiVersion":"authorization.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"user":"u"},"status":{"allowed":false}}"#;

    #[test]
    fn token_review_request_matches_the_wire_format() {
        let body = token_review_body("abc", &[]);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"abc"}}"#
        );
        let body = token_review_body("abc", &["metrics-gate".to_owned()]);
        assert!(String::from_utf8(body)
            .unwrap()
            .contains(r#""audiences":["metrics-gate"]"#));
    }

    #[test]
    fn authenticated_token_review_yields_the_user() {
        let Authentication::Authenticated(user) =
            read_token_review(201, PROMETHEUS_TR.as_bytes(), &[]).unwrap()
        else {
            panic!("expected authenticated")
        };
        assert_eq!(
            user.username,
            "system:serviceaccount:observability:prometheus-server"
        );
        assert_eq!(user.groups.len(), 3);
    }

    #[test]
    fn garbage_token_without_authenticated_key_is_rejected() {
        assert_eq!(
            read_token_review(201, GARBAGE_TR.as_bytes(), &[]).unwrap(),
            Authentication::Rejected
        );
    }

    #[test]
    fn audiences_must_intersect() {
        let ours = ["metrics-gate".to_owned()];
        assert_eq!(
            read_token_review(201, PROMETHEUS_TR.as_bytes(), &ours).unwrap(),
            Authentication::Rejected
        );
        let theirs = ["https://kubernetes.default.svc.cluster.local".to_owned()];
        assert!(matches!(
            read_token_review(201, PROMETHEUS_TR.as_bytes(), &theirs).unwrap(),
            Authentication::Authenticated(_)
        ));
    }

    #[test]
    fn apiserver_trouble_is_not_a_verdict() {
        assert!(read_token_review(403, CALLER_FORBIDDEN.as_bytes(), &[]).is_err());
        assert!(read_token_review(201, CALLER_FORBIDDEN.as_bytes(), &[]).is_err());
        assert!(read_token_review(503, b"upstream connect error", &[]).is_err());
        assert!(read_token_review(201, b"not json", &[]).is_err());
        assert!(read_token_review(201, br#"{"kind":"TokenReview"}"#, &[]).is_err());
        assert!(read_subject_access_review(500, b"{}").is_err());
        assert!(
            read_subject_access_review(201, br#"{"kind":"SubjectAccessReview","status":{}}"#)
                .is_err()
        );
        assert!(read_subject_access_review(201, b"[").is_err());
    }

    #[test]
    fn answers_round_trip_through_the_cache_encoding() {
        let Authentication::Authenticated(user) =
            read_token_review(201, PROMETHEUS_TR.as_bytes(), &[]).unwrap()
        else {
            panic!("expected authenticated")
        };
        for (table, answer) in [
            (
                Table::TokenReview,
                Answer::Token(Authentication::Authenticated(user)),
            ),
            (Table::TokenReview, Answer::Token(Authentication::Rejected)),
            (Table::AccessReview, Answer::Access(true)),
            (Table::AccessReview, Answer::Access(false)),
        ] {
            assert_eq!(Answer::decode(table, &answer.encode()), Some(answer));
        }
        assert_eq!(Answer::decode(Table::AccessReview, &[2]), None);
        assert_eq!(Answer::decode(Table::TokenReview, &[1, b'{']), None);
        assert_eq!(Answer::decode(Table::AccessReview, &[1, 1]), None);
    }

    #[test]
    fn subject_access_review_verdicts() {
        assert!(read_subject_access_review(201, SAR_ALLOWED.as_bytes()).unwrap());
        assert!(!read_subject_access_review(201, SAR_DENIED.as_bytes()).unwrap());
        let denied = r#"{"kind":"SubjectAccessReview","status":{"allowed":true,"denied":true}}"#;
        assert!(!read_subject_access_review(201, denied.as_bytes()).unwrap());
    }

    #[test]
    fn subject_access_review_request_matches_the_reference() {
        let user = User {
            username: "system:serviceaccount:observability:prometheus-server".into(),
            uid: "e2a1121a-9135-4ae6-a12c-ae79aa2a43a2".into(),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:authenticated".into(),
            ],
            extra: BTreeMap::new(),
        };
        let attrs = Attributes::NonResource {
            path: "/metrics".into(),
            verb: "get",
        };
        let body: serde_json::Value =
            serde_json::from_slice(&subject_access_review_body(&user, &attrs)).unwrap();
        assert_eq!(body["apiVersion"], "authorization.k8s.io/v1");
        assert_eq!(body["spec"]["user"], user.username);
        assert_eq!(body["spec"]["uid"], user.uid);
        assert_eq!(body["spec"]["nonResourceAttributes"]["path"], "/metrics");
        assert_eq!(body["spec"]["nonResourceAttributes"]["verb"], "get");
        assert!(body["spec"].get("extra").is_none());
    }

    #[test]
    fn resource_attributes_use_the_wire_names() {
        let user = User {
            username: "u".into(),
            ..User::default()
        };
        let attrs = Attributes::Resource {
            verb: "get",
            attrs: ResourceAttributes {
                namespace: "kube-system".into(),
                resource: "services".into(),
                subresource: "proxy".into(),
                ..ResourceAttributes::default()
            },
        };
        let body: serde_json::Value =
            serde_json::from_slice(&subject_access_review_body(&user, &attrs)).unwrap();
        let ra = &body["spec"]["resourceAttributes"];
        assert_eq!(ra["namespace"], "kube-system");
        assert_eq!(ra["resource"], "services");
        assert_eq!(ra["subresource"], "proxy");
        assert!(ra.get("group").is_none());
        assert_eq!(
            attrs.describe(),
            r#"get resource "services/proxy" in API group "" in namespace "kube-system""#
        );
    }
}
