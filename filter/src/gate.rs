//! The decision every request goes through, as a pure state machine.
//!
//! The host module feeds it the request head and the apiserver's answers and carries out the
//! `Step`s it returns; nothing here touches Envoy, so the whole behaviour contract is unit-tested
//! natively (see the tests below and the integration tests in host-tests/).
//!
//! ```text
//! request ──▶ path? method? one bearer token? ──no──▶ 404 / 405 / 401
//!                 │ yes
//!                 ▼
//!            TokenReview ──not authenticated──▶ 401     (trouble ──▶ 503 at any stage)
//!                 │ user
//!                 ▼
//!        SubjectAccessReview ──denied / no opinion──▶ 403
//!                 │ allowed
//!                 ▼
//!     forward without the caller's credentials and identity headers
//! ```

use crate::config::Config;
use crate::credentials::bearer_token;
use crate::reply::Reply;
use crate::review::{self, Attributes, Authentication, User};

/// What the filter sees of a request before deciding.
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Every request header as Envoy has it (names lowercase).
    pub headers: &'a [(String, String)],
}

/// What the host must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Answer locally; the upstream is never contacted.
    Reply(Reply),
    /// POST this review to the apiserver cluster and feed the answer to `on_review_answer`.
    Call(Callout),
    /// Let the request through after editing its headers.
    Forward(Forward),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Callout {
    pub path: &'static str,
    /// JSON review. For a TokenReview it holds the caller's token: it goes to the apiserver and
    /// nowhere else.
    pub body: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Forward {
    /// Credentials and identity claims the caller sent (the upstream must not trust them).
    pub remove: Vec<String>,
    /// Identity headers set from the apiserver's answer, when enabled.
    pub set: Vec<(String, String)>,
}

#[derive(Debug, Default)]
enum Phase {
    #[default]
    New,
    AwaitingTokenReview {
        attributes: Attributes,
        strip: Vec<String>,
    },
    AwaitingAccessReview {
        user: User,
        attributes: Attributes,
        strip: Vec<String>,
    },
    Finished,
}

/// One request's way through the gate.
#[derive(Debug, Default)]
pub struct Gate {
    phase: Phase,
}

impl Gate {
    pub fn on_request(&mut self, config: &Config, head: &RequestHead<'_>) -> Step {
        let path = head.path.split_once('?').map_or(head.path, |(path, _query)| path);
        // Exact, byte-for-byte: Envoy has already resolved dot segments, and every other unusual
        // spelling (`//metrics`, `%6d`, `;x`, a trailing `/`) simply is not in the list.
        if !config.allowed_paths.iter().any(|allowed| allowed == path) {
            return self.finish(Reply::not_found());
        }
        let verb = match head.method {
            "GET" | "HEAD" => "get",
            _ => return self.finish(Reply::method_not_allowed()),
        };
        let headers = head.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let token = match bearer_token(headers, config.max_token_bytes) {
            Ok(token) => token,
            // Missing, duplicate and malformed all get the same challenge: send one bearer token.
            Err(_problem) => return self.finish(Reply::unauthorized(false)),
        };
        let attributes = match &config.resource_attributes {
            None => Attributes::NonResource { path: path.to_owned(), verb },
            Some(attrs) => Attributes::Resource { verb, attrs: attrs.clone() },
        };
        let body = review::token_review_body(token, &config.audiences);
        self.phase = Phase::AwaitingTokenReview { attributes, strip: headers_to_strip(config, head.headers) };
        Step::Call(Callout { path: review::TOKEN_REVIEW_PATH, body })
    }

    /// Feeds the apiserver's answer to the pending review: `http_status` is `None` when Envoy gave
    /// no status at all.
    pub fn on_review_answer(&mut self, config: &Config, http_status: Option<u16>, body: &[u8]) -> Step {
        match std::mem::take(&mut self.phase) {
            Phase::AwaitingTokenReview { attributes, strip } => {
                let answer = match http_status {
                    Some(status) => review::read_token_review(status, body, &config.audiences),
                    None => Err(review::ApiserverTrouble("TokenReview answer has no :status".to_owned())),
                };
                match answer {
                    Ok(Authentication::Authenticated(user)) => {
                        let body = review::subject_access_review_body(&user, &attributes);
                        self.phase = Phase::AwaitingAccessReview { user, attributes, strip };
                        Step::Call(Callout { path: review::SUBJECT_ACCESS_REVIEW_PATH, body })
                    }
                    Ok(Authentication::Rejected) => self.finish(Reply::unauthorized(true)),
                    Err(trouble) => self.trouble(config, trouble.0),
                }
            }
            Phase::AwaitingAccessReview { user, attributes, strip } => {
                let answer = match http_status {
                    Some(status) => review::read_subject_access_review(status, body),
                    None => Err(review::ApiserverTrouble(
                        "SubjectAccessReview answer has no :status".to_owned(),
                    )),
                };
                match answer {
                    Ok(true) => {
                        self.phase = Phase::Finished;
                        Step::Forward(Forward { remove: strip, set: identity_headers(config, &user) })
                    }
                    Ok(false) => self.finish(Reply::forbidden(&user.username, &attributes.describe())),
                    Err(trouble) => self.trouble(config, trouble.0),
                }
            }
            // An answer nobody waits for (cannot happen with one callout at a time): fail closed.
            Phase::New | Phase::Finished => self.trouble(config, "unexpected apiserver answer".to_owned()),
        }
    }

    /// Envoy refused to even send the callout (unknown cluster, no memory...).
    pub fn on_dispatch_failed(&mut self, config: &Config, why: &str) -> Step {
        self.trouble(config, format!("could not send the review to cluster {:?}: {why}", config.apiserver_cluster))
    }

    fn trouble(&mut self, config: &Config, detail: String) -> Step {
        let mut reply = Reply::apiserver_unavailable(config.retry_after_seconds);
        reply.log_detail = Some(detail);
        self.finish(reply)
    }

    fn finish(&mut self, reply: Reply) -> Step {
        self.phase = Phase::Finished;
        Step::Reply(reply)
    }
}

/// The caller's credentials and anything that looks like an identity claim. `x-remote-*` is the
/// family kube-rbac-proxy and aggregated apiservers trust, so none of it may come from the client.
fn headers_to_strip(config: &Config, headers: &[(String, String)]) -> Vec<String> {
    headers
        .iter()
        .map(|(name, _)| name)
        .filter(|name| {
            let name = name.to_ascii_lowercase();
            name == "authorization"
                || name.starts_with("x-remote-")
                || config.identity_headers.as_ref().is_some_and(|h| name == h.user || name == h.groups)
        })
        .cloned()
        .collect()
}

fn identity_headers(config: &Config, user: &User) -> Vec<(String, String)> {
    let Some(names) = &config.identity_headers else {
        return Vec::new();
    };
    let mut set = vec![(names.user.clone(), user.username.clone())];
    if !user.groups.is_empty() {
        set.push((names.groups.clone(), user.groups.join(&names.groups_separator)));
    }
    set
}

#[cfg(test)]
mod tests;
