//! `metav1.Status` bodies and Kubernetes' JSON encoding rules, shared by the apiserver double and the
//! components' own secure ports, so error bodies match the captures byte for byte.
//!
//! Kubernetes pretty-prints (two-space indent, no trailing newline) for curl/Wget/browser user
//! agents, and otherwise writes compact JSON followed by a newline (Go's `json.Encoder`). The
//! reference sizes in metrics-probes.txt (157/224/250 bytes) are the pretty form.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, Default)]
pub struct StatusDetails {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusCause {
    pub message: String,
}

/// Field order is Go's `metav1.Status` order.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub kind: &'static str,
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub status: &'static str,
    pub message: String,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    pub code: u16,
}

impl Status {
    fn failure(
        code: u16,
        reason: &'static str,
        message: String,
        details: Option<StatusDetails>,
    ) -> Self {
        Status {
            kind: "Status",
            api_version: "v1",
            metadata: serde_json::Map::new(),
            status: "Failure",
            message,
            reason,
            details,
            code,
        }
    }

    /// 401 as the apiserver and the components answer an unauthenticated request.
    pub fn unauthorized() -> Self {
        Self::failure(401, "Unauthorized", "Unauthorized".into(), None)
    }

    /// 403 for a cluster-scoped resource request, e.g. `create tokenreviews` (reference:
    /// tokenreview-called-by-nobody.response.json).
    pub fn forbidden_resource(user: &str, verb: &str, group: &str, resource: &str) -> Self {
        let gr = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        Self::failure(
            403,
            "Forbidden",
            format!(
                "{gr} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" at the cluster scope"
            ),
            Some(StatusDetails { group: group.into(), kind: resource.into(), ..Default::default() }),
        )
    }

    /// 403 for a non-resource path, as kube-scheduler/kube-controller-manager answer on /metrics.
    pub fn forbidden_path(user: &str, verb: &str, path: &str) -> Self {
        Self::failure(
            403,
            "Forbidden",
            format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\""),
            Some(StatusDetails::default()),
        )
    }

    pub fn not_found() -> Self {
        Self::failure(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            Some(StatusDetails::default()),
        )
    }

    pub fn method_not_allowed(method: &str) -> Self {
        Self::failure(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
            Some(StatusDetails::default()),
        )
    }

    pub fn bad_request(message: String) -> Self {
        Self::failure(400, "BadRequest", message, None)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::failure(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"
            ),
            None,
        )
    }

    pub fn internal_error(message: &str) -> Self {
        Self::failure(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
            Some(StatusDetails {
                causes: vec![StatusCause {
                    message: message.into(),
                }],
                ..Default::default()
            }),
        )
    }
}

/// Whether Kubernetes would pretty-print for this User-Agent (apimachinery `isPrettyPrint`).
pub fn wants_pretty(user_agent: Option<&str>) -> bool {
    user_agent.is_some_and(|ua| {
        ua.starts_with("curl") || ua.starts_with("Wget") || ua.starts_with("Mozilla/5.0")
    })
}

/// Encodes like apimachinery's JSON serializer.
pub fn encode<T: Serialize>(value: &T, pretty: bool) -> Vec<u8> {
    if pretty {
        serde_json::to_vec_pretty(value).expect("serialising a plain struct")
    } else {
        let mut v = serde_json::to_vec(value).expect("serialising a plain struct");
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_component_probes() {
        // metrics-probes.txt: garbage -> 401 157 bytes, nobody -> 403 250, no token -> 403 224 (curl).
        assert_eq!(encode(&Status::unauthorized(), true).len(), 157);
        let nobody = Status::forbidden_path(
            "system:serviceaccount:observability:nobody",
            "get",
            "/metrics",
        );
        assert_eq!(encode(&nobody, true).len(), 250);
        let anon = Status::forbidden_path("system:anonymous", "get", "/metrics");
        assert_eq!(encode(&anon, true).len(), 224);
    }

    #[test]
    fn forbidden_resource_matches_reference() {
        let s = Status::forbidden_resource(
            "system:serviceaccount:observability:nobody",
            "create",
            "authentication.k8s.io",
            "tokenreviews",
        );
        let got: serde_json::Value = serde_json::from_slice(&encode(&s, false)).unwrap();
        let want: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/kube-apiserver-1.28/tokenreview-called-by-nobody.response.json"
        )))
        .unwrap();
        assert_eq!(got, want);
    }
}
