//! The two Kubernetes API reviews the filter asks for, in their wire format
//! (authentication.k8s.io/v1 TokenReview, authorization.k8s.io/v1 SubjectAccessReview).
//!
//! Hand-written rather than generated from k8s-openapi: the filter needs a handful of fields, and the
//! generated types would triple the size of the .wasm.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cache::Table;
use crate::config::{Config, ResourceAttributes};

pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
pub const SUBJECT_ACCESS_REVIEW_PATH: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// Who the apiserver says the caller is; carried unchanged into the SubjectAccessReview.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct User {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
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

    /// Compact form for the cache (no token is ever part of an answer).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Answer::Token(Authentication::Rejected) => vec![0],
            Answer::Token(Authentication::Authenticated(user)) => {
                let mut out = vec![1];
                if serde_json::to_writer(&mut out, user).is_err() {
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
            (Table::TokenReview, (1, user)) => serde_json::from_slice(user)
                .ok()
                .map(|u| Answer::Token(Authentication::Authenticated(u))),
            (Table::AccessReview, (&allowed @ (0 | 1), [])) => Some(Answer::Access(allowed == 1)),
            _ => None,
        }
    }
}

#[derive(Serialize)]
struct TokenReviewRequest<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    spec: TokenReviewSpec<'a>,
}

#[derive(Serialize)]
struct TokenReviewSpec<'a> {
    token: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    audiences: &'a [String],
}

pub fn token_review_body(token: &str, audiences: &[String]) -> Vec<u8> {
    let review = TokenReviewRequest {
        api_version: "authentication.k8s.io/v1",
        kind: "TokenReview",
        spec: TokenReviewSpec { token, audiences },
    };
    serde_json::to_vec(&review).unwrap_or_default()
}

#[derive(Deserialize)]
struct TokenReviewResponse {
    #[serde(default)]
    kind: String,
    status: Option<TokenReviewStatus>,
}

#[derive(Deserialize)]
struct TokenReviewStatus {
    // Omitted from the JSON when false (see the reference exchanges), hence the default.
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: User,
    #[serde(default)]
    audiences: Vec<String>,
}

/// Reads a TokenReview answer. `wanted_audiences` are the ones the filter asked for: when set, the
/// token must be valid for at least one of them (kube-rbac-proxy's rule).
pub fn read_token_review(
    http_status: u16,
    body: &[u8],
    wanted_audiences: &[String],
) -> Result<Authentication, ApiserverTrouble> {
    check_http_status(http_status, "TokenReview")?;
    let response: TokenReviewResponse = serde_json::from_slice(body)
        .map_err(|e| ApiserverTrouble(format!("TokenReview answer is not valid JSON ({e})")))?;
    if response.kind != "TokenReview" {
        return Err(ApiserverTrouble(format!(
            "expected a TokenReview, got kind {:?}",
            response.kind
        )));
    }
    let status = response
        .status
        .ok_or_else(|| ApiserverTrouble("TokenReview answer has no status".to_owned()))?;
    if !status.authenticated {
        return Ok(Authentication::Rejected);
    }
    if status.user.username.is_empty() {
        return Err(ApiserverTrouble(
            "TokenReview authenticated a user without a name".to_owned(),
        ));
    }
    if !wanted_audiences.is_empty()
        && !status
            .audiences
            .iter()
            .any(|a| wanted_audiences.contains(a))
    {
        return Ok(Authentication::Rejected);
    }
    Ok(Authentication::Authenticated(status.user))
}

/// The attributes a SubjectAccessReview checks, kept for the 403 message.
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
            Attributes::NonResource { path, verb } => format!("{verb} path {path:?}"),
            Attributes::Resource { verb, attrs } => {
                let resource = if attrs.subresource.is_empty() {
                    attrs.resource.clone()
                } else {
                    format!("{}/{}", attrs.resource, attrs.subresource)
                };
                let mut text = format!(
                    "{verb} resource {resource:?} in API group {:?}",
                    attrs.api_group
                );
                if !attrs.name.is_empty() {
                    text.push_str(&format!(" named {:?}", attrs.name));
                }
                if attrs.namespace.is_empty() {
                    text.push_str(" at the cluster scope");
                } else {
                    text.push_str(&format!(" in namespace {:?}", attrs.namespace));
                }
                text
            }
        }
    }
}

#[derive(Serialize)]
struct SarRequest<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    spec: SarSpec<'a>,
}

#[derive(Serialize)]
struct SarSpec<'a> {
    user: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    uid: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    groups: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    extra: &'a BTreeMap<String, Vec<String>>,
    #[serde(
        rename = "nonResourceAttributes",
        skip_serializing_if = "Option::is_none"
    )]
    non_resource_attributes: Option<NonResourceAttributesWire<'a>>,
    #[serde(rename = "resourceAttributes", skip_serializing_if = "Option::is_none")]
    resource_attributes: Option<ResourceAttributesWire<'a>>,
}

#[derive(Serialize)]
struct NonResourceAttributesWire<'a> {
    path: &'a str,
    verb: &'a str,
}

#[derive(Serialize)]
struct ResourceAttributesWire<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    namespace: &'a str,
    verb: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    group: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    version: &'a str,
    resource: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    subresource: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
}

pub fn subject_access_review_body(user: &User, attributes: &Attributes) -> Vec<u8> {
    let (non_resource_attributes, resource_attributes) = match attributes {
        Attributes::NonResource { path, verb } => {
            (Some(NonResourceAttributesWire { path, verb }), None)
        }
        Attributes::Resource { verb, attrs } => (
            None,
            Some(ResourceAttributesWire {
                namespace: &attrs.namespace,
                verb,
                group: &attrs.api_group,
                version: &attrs.api_version,
                resource: &attrs.resource,
                subresource: &attrs.subresource,
                name: &attrs.name,
            }),
        ),
    };
    let review = SarRequest {
        api_version: "authorization.k8s.io/v1",
        kind: "SubjectAccessReview",
        spec: SarSpec {
            user: &user.username,
            uid: &user.uid,
            groups: &user.groups,
            extra: &user.extra,
            non_resource_attributes,
            resource_attributes,
        },
    };
    serde_json::to_vec(&review).unwrap_or_default()
}

#[derive(Deserialize)]
struct SarResponse {
    #[serde(default)]
    kind: String,
    status: Option<SarStatus>,
}

#[derive(Deserialize)]
struct SarStatus {
    // Always present in real answers; a missing `allowed` is a malformed answer, not a denial.
    allowed: Option<bool>,
    #[serde(default)]
    denied: bool,
}

/// Reads a SubjectAccessReview answer: `Ok(true)` only for an explicit allow.
pub fn read_subject_access_review(http_status: u16, body: &[u8]) -> Result<bool, ApiserverTrouble> {
    check_http_status(http_status, "SubjectAccessReview")?;
    let response: SarResponse = serde_json::from_slice(body).map_err(|e| {
        ApiserverTrouble(format!(
            "SubjectAccessReview answer is not valid JSON ({e})"
        ))
    })?;
    if response.kind != "SubjectAccessReview" {
        return Err(ApiserverTrouble(format!(
            "expected a SubjectAccessReview, got kind {:?}",
            response.kind
        )));
    }
    let status = response
        .status
        .ok_or_else(|| ApiserverTrouble("SubjectAccessReview answer has no status".to_owned()))?;
    let allowed = status.allowed.ok_or_else(|| {
        ApiserverTrouble("SubjectAccessReview status has no \"allowed\"".to_owned())
    })?;
    Ok(allowed && !status.denied)
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
