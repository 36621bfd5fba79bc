//! The answers the filter gives itself, and what each one counts as.
//!
//! Bodies are short plain text: enough for a person with curl to know what to fix, nothing a caller
//! could learn the proxy's configuration or anyone's token from.

use crate::text::quoted;

/// Why a request ended the way it did; one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    PathNotAllowed,
    MethodNotAllowed,
    Unauthenticated,
    Forbidden,
    ApiserverError,
}

/// A response the filter sends instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub outcome: Outcome,
    /// Why, for the proxy's own log (never sent to the caller).
    pub log_detail: Option<String>,
}

impl Reply {
    fn text(status: u32, outcome: Outcome, body: String) -> Reply {
        Reply {
            status,
            headers: vec![("content-type", "text/plain; charset=utf-8".to_owned())],
            body,
            outcome,
            log_detail: None,
        }
    }

    pub fn not_found() -> Reply {
        Reply::text(
            404,
            Outcome::PathNotAllowed,
            "404 Not Found: this path is not served here\n".to_owned(),
        )
    }

    pub fn method_not_allowed() -> Reply {
        let mut reply = Reply::text(
            405,
            Outcome::MethodNotAllowed,
            "405 Method Not Allowed: use GET or HEAD\n".to_owned(),
        );
        reply.headers.push(("allow", "GET, HEAD".to_owned()));
        reply
    }

    /// `invalid_token` tells a client that its token was looked at and refused (RFC 6750 §3.1), as
    /// opposed to a request that brought none.
    pub fn unauthorized(invalid_token: bool) -> Reply {
        let (challenge, body) = if invalid_token {
            (
                "Bearer realm=\"metrics-gate\", error=\"invalid_token\"",
                "401 Unauthorized: the bearer token was not accepted by the Kubernetes API\n",
            )
        } else {
            (
                "Bearer realm=\"metrics-gate\"",
                "401 Unauthorized: send exactly one \"Authorization: Bearer <token>\" header\n",
            )
        };
        let mut reply = Reply::text(401, Outcome::Unauthenticated, body.to_owned());
        reply
            .headers
            .push(("www-authenticate", challenge.to_owned()));
        reply
    }

    /// Names the user and what was checked, as the Kubernetes components do, so the fix (an RBAC
    /// binding) is obvious.
    pub fn forbidden(username: &str, checked: &str) -> Reply {
        Reply::text(
            403,
            Outcome::Forbidden,
            format!(
                "403 Forbidden: user {} cannot {checked}\n",
                quoted(username)
            ),
        )
    }

    pub fn apiserver_unavailable(retry_after_seconds: u32) -> Reply {
        let mut reply = Reply::text(
            503,
            Outcome::ApiserverError,
            "503 Service Unavailable: the Kubernetes API could not confirm this request; try again later\n"
                .to_owned(),
        );
        reply
            .headers
            .push(("retry-after", retry_after_seconds.to_string()));
        reply
    }
}
