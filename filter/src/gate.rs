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

use crate::access_log::Entry;
use crate::cache::{self, Digest, Table};
use crate::config::Config;
use crate::credentials::{self, bearer_token, CredentialProblem};
use crate::identity_headers;
use crate::jwt;
use crate::reply::Reply;
use crate::review::{self, Answer, ApiserverTrouble, Attributes, Authentication, User};

/// What the filter sees of a request before deciding.
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Every request header as Envoy has it (names lowercase; values are bytes, not text).
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// Subject of the client certificate the listener verified, if any.
    pub peer_subject: Option<&'a str>,
    /// The `sub` of the bearer token as Envoy's `jwt_authn` verified it (signature against the
    /// issuer's published keys, issuer, audience, expiry), if it did; see
    /// `Config::local_token_verification`.
    pub verified_subject: Option<&'a str>,
}

/// What the host must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Answer locally; the upstream is never contacted.
    Reply(Reply),
    /// Get this review's answer (from the cache, or by POSTing it to the apiserver cluster) and
    /// feed it to `on_answer`.
    Call(Callout),
    /// Let the request through after editing its headers.
    Forward(Forward),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Callout {
    pub table: Table,
    /// The cache key: a digest of the whole question, never the token itself.
    pub key: Digest,
    pub path: &'static str,
    question: Question,
}

/// What is asked. The TokenReview's body (and the token's expiry) are only worked out when the
/// cache has no answer: a warm request pays for the digest alone.
#[derive(PartialEq, Eq)]
enum Question {
    /// The caller's token: it goes to the apiserver and nowhere else.
    Token(String),
    /// Who asks for what. The JSON body is built only to send it: the key is a digest of these
    /// fields themselves (`review::access_review_key`).
    Access(Box<(User, Attributes)>),
}

impl std::fmt::Debug for Question {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Question::Token(_) => f.write_str("Token(<redacted>)"),
            Question::Access(question) => write!(f, "Access({:?})", question.1),
        }
    }
}

impl Callout {
    /// The JSON review to POST.
    pub fn body(&self, config: &Config) -> Vec<u8> {
        match &self.question {
            Question::Token(token) => review::token_review_body(token, &config.audiences),
            Question::Access(question) => {
                review::subject_access_review_body(&question.0, &question.1)
            }
        }
    }

    /// This listener's TTL, in seconds, for `answer` to this callout.
    pub fn ttl_seconds(&self, config: &Config, answer: &Answer) -> u32 {
        match answer {
            Answer::Token(_) => config.cache.token_review_ttl_seconds,
            Answer::Access(true) => config.cache.allow_ttl_seconds,
            Answer::Access(false) => config.cache.deny_ttl_seconds,
        }
    }

    /// Until when an allow that expired, and is kept until `until_ms`, may stand in for this
    /// question while the apiserver cannot be asked: allows only, never past the token's `exp`
    /// (a token without one is never served stale).
    pub fn stale_until(&self, answer: &Answer, until_ms: u64) -> Option<u64> {
        match (answer, &self.question) {
            (Answer::Token(Authentication::Authenticated(_)), Question::Token(token)) => {
                let exp_ms = jwt::expiry(token)?.saturating_mul(1000);
                Some(until_ms.min(exp_ms))
            }
            (Answer::Access(true), Question::Access(_)) => Some(until_ms),
            _ => None,
        }
    }

    /// Until when `answer` to this callout may be cached (ms since the epoch), asked at `now_ms`;
    /// `None`: not at all. A TokenReview answer never outlives the token's own `exp`.
    pub fn cache_until(&self, config: &Config, answer: &Answer, now_ms: u64) -> Option<u64> {
        let (ttl, token_exp) = match (answer, &self.question) {
            (Answer::Token(_), Question::Token(token)) => {
                (config.cache.token_review_ttl_seconds, jwt::expiry(token))
            }
            (Answer::Access(true), _) => (config.cache.allow_ttl_seconds, None),
            (Answer::Access(false), _) => (config.cache.deny_ttl_seconds, None),
            (Answer::Token(_), Question::Access(_)) => return None,
        };
        cache::token_review_expiry_ms(now_ms, ttl, token_exp)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Forward {
    /// Credentials and identity claims the caller sent (the upstream must not trust them), named
    /// as Envoy has them: bytes, since a name need not be UTF-8 to start with `x-remote-`.
    pub remove: Vec<Vec<u8>>,
    /// Identity headers set from the apiserver's answer, when enabled.
    pub set: Vec<(String, String)>,
}

#[derive(Debug, Default)]
enum Phase {
    #[default]
    New,
    AwaitingTokenReview {
        attributes: Attributes,
        strip: Vec<Vec<u8>>,
    },
    AwaitingAccessReview {
        user: User,
        attributes: Attributes,
        strip: Vec<Vec<u8>>,
    },
    Finished,
}

/// One request's way through the gate.
#[derive(Debug, Default)]
pub struct Gate {
    phase: Phase,
    /// Who asked and why the gate decided as it did, for the access log.
    pub entry: Entry,
}

impl Gate {
    pub fn on_request(&mut self, config: &Config, head: &RequestHead<'_>) -> Step {
        let path = head
            .path
            .split_once('?')
            .map_or(head.path, |(path, _query)| path);
        // Exact, byte-for-byte: Envoy has already resolved dot segments, and every other unusual
        // spelling (`//metrics`, `%6d`, `;x`, a trailing `/`) simply is not in the list.
        if !config.allowed_paths.iter().any(|allowed| allowed == path) {
            return self.finish_because(Reply::not_found(), "path not in the allow-list");
        }
        let head_request = match head.method {
            "GET" => false,
            "HEAD" => true,
            _ => return self.finish_because(Reply::method_not_allowed(), "method not GET or HEAD"),
        };
        // The verbs kube-apiserver's own request info gives, and so what kube-scheduler and
        // kube-controller-manager ask for their callers: a non-resource request's verb is its
        // method in lower case (HEAD is `head`), a resource request's HEAD is `get`.
        let attributes = match &config.resource_attributes {
            None => Attributes::NonResource {
                path: path.to_owned(),
                verb: if head_request { "head" } else { "get" },
            },
            Some(attrs) => Attributes::Resource {
                verb: "get",
                attrs: attrs.clone(),
            },
        };
        let strip = headers_to_strip(config, head.headers);
        // A verified client certificate wins over a token, as in kube-apiserver (x509 is asked
        // first); the token is still removed before forwarding.
        let certificate = head.peer_subject.filter(|_| config.client_certificates);
        if let Some((username, groups)) = certificate.and_then(credentials::certificate_identity) {
            let user = User {
                username,
                groups,
                ..User::default()
            };
            self.phase = Phase::AwaitingTokenReview { attributes, strip };
            return self.on_answer(
                config,
                Ok(Answer::Token(Authentication::Authenticated(user))),
            );
        }
        let token = match bearer_token(head.headers.iter().copied(), config.max_token_bytes) {
            Ok(token) => token,
            // Missing, duplicate and malformed all get the same challenge: send one bearer token.
            Err(problem) => {
                let why = match problem {
                    CredentialProblem::Missing => "no Authorization header",
                    CredentialProblem::Duplicate => "several Authorization headers",
                    CredentialProblem::Malformed => "Authorization is not one bearer token",
                };
                return self.finish_because(Reply::unauthorized(false), why);
            }
        };
        self.phase = Phase::AwaitingTokenReview { attributes, strip };
        // Verified locally: the user exactly as the apiserver's ServiceAccount authenticator would
        // make it, without a TokenReview. Any other token (not verified, not a ServiceAccount's)
        // goes to the TokenReview as usual.
        let verified = head
            .verified_subject
            .filter(|_| config.local_token_verification)
            .and_then(credentials::service_account_identity);
        if let Some((username, groups)) = verified {
            let user = User {
                username,
                groups,
                ..User::default()
            };
            return self.on_answer(
                config,
                Ok(Answer::Token(Authentication::Authenticated(user))),
            );
        }
        Step::Call(Callout {
            table: Table::TokenReview,
            key: cache::token_review_key(token, &config.audiences),
            path: review::TOKEN_REVIEW_PATH,
            question: Question::Token(token.to_owned()),
        })
    }

    /// Which table the pending question belongs to (to parse an apiserver answer for it).
    pub fn awaiting(&self) -> Option<Table> {
        match self.phase {
            Phase::AwaitingTokenReview { .. } => Some(Table::TokenReview),
            Phase::AwaitingAccessReview { .. } => Some(Table::AccessReview),
            Phase::New | Phase::Finished => None,
        }
    }

    /// Parses an apiserver answer to the pending question and goes on with it.
    pub fn on_review_answer(
        &mut self,
        config: &Config,
        http_status: Option<u16>,
        body: &[u8],
    ) -> Step {
        let answer = match self.awaiting() {
            Some(table) => Answer::read(table, config, http_status, body),
            None => Err(ApiserverTrouble("unexpected apiserver answer".to_owned())),
        };
        self.on_answer(config, answer)
    }

    /// Goes on with the answer to the pending question, from the apiserver or the cache.
    pub fn on_answer(&mut self, config: &Config, answer: Result<Answer, ApiserverTrouble>) -> Step {
        match (std::mem::take(&mut self.phase), answer) {
            (_, Err(trouble)) => self.trouble(config, trouble.0),
            (
                Phase::AwaitingTokenReview { attributes, strip },
                Ok(Answer::Token(authentication)),
            ) => match authentication {
                Authentication::Authenticated(user)
                    if config.static_allow.admits(&user.username, &user.groups) =>
                {
                    self.entry.user = Some(user.username.clone());
                    self.entry.reason = "static allow".into();
                    self.phase = Phase::Finished;
                    Step::Forward(Forward {
                        remove: strip,
                        set: identity_headers(config, &user),
                    })
                }
                Authentication::Authenticated(user) => {
                    self.entry.user = Some(user.username.clone());
                    let key = review::access_review_key(&user, &attributes);
                    let question = Question::Access(Box::new((user.clone(), attributes.clone())));
                    self.phase = Phase::AwaitingAccessReview {
                        user,
                        attributes,
                        strip,
                    };
                    Step::Call(Callout {
                        table: Table::AccessReview,
                        key,
                        path: review::SUBJECT_ACCESS_REVIEW_PATH,
                        question,
                    })
                }
                Authentication::Rejected => self.finish_because(
                    Reply::unauthorized(true),
                    "token not authenticated by TokenReview",
                ),
            },
            (
                Phase::AwaitingAccessReview {
                    user,
                    attributes,
                    strip,
                },
                Ok(Answer::Access(allowed)),
            ) => {
                if allowed {
                    self.entry.reason = "allowed by SubjectAccessReview".into();
                    self.phase = Phase::Finished;
                    Step::Forward(Forward {
                        remove: strip,
                        set: identity_headers(config, &user),
                    })
                } else {
                    self.finish_because(
                        Reply::forbidden(&user.username, &attributes.describe()),
                        "denied by SubjectAccessReview",
                    )
                }
            }
            // An answer nobody waits for, or to another question: fail closed.
            _ => self.trouble(config, "unexpected apiserver answer".to_owned()),
        }
    }

    /// The review could not be asked at all (Envoy refused the callout, too many in flight, the
    /// request it was waiting for failed...).
    pub fn trouble(&mut self, config: &Config, detail: String) -> Step {
        let mut reply = Reply::apiserver_unavailable(config.retry_after_seconds);
        self.entry.reason.clone_from(&detail);
        reply.log_detail = Some(detail);
        self.phase = Phase::Finished;
        Step::Reply(reply)
    }

    fn finish_because(&mut self, reply: Reply, reason: &str) -> Step {
        self.entry.reason = reason.into();
        self.phase = Phase::Finished;
        Step::Reply(reply)
    }
}

/// The caller's credentials and every header that asserts or carries an identity (see
/// `identity_headers`), plus the names this listener sets itself from the review.
fn headers_to_strip(config: &Config, headers: &[(&[u8], &[u8])]) -> Vec<Vec<u8>> {
    let mut strip: Vec<Vec<u8>> = Vec::new();
    for (name, _) in headers {
        let remove = (!config.forward_caller_credentials
            && identity_headers::same_header(name, "authorization"))
            || identity_headers::asserts_identity(name)
            || config.identity_headers.as_ref().is_some_and(|h| {
                identity_headers::same_header(name, &h.user)
                    || identity_headers::same_header(name, &h.groups)
            });
        if remove && !strip.iter().any(|known| known.as_slice() == *name) {
            strip.push(name.to_vec());
        }
    }
    strip
}

fn identity_headers(config: &Config, user: &User) -> Vec<(String, String)> {
    let Some(names) = &config.identity_headers else {
        return Vec::new();
    };
    let mut set = vec![(names.user.clone(), user.username.clone())];
    if !user.groups.is_empty() {
        // By hand: `join` on `String`s is a second copy of std's join in the .wasm (1 KB).
        let mut groups = String::new();
        for (i, group) in user.groups.iter().enumerate() {
            if i > 0 {
                groups.push_str(&names.groups_separator);
            }
            groups.push_str(group);
        }
        set.push((names.groups.clone(), groups));
    }
    set
}

#[cfg(test)]
mod tests;
