//! An attacker plays with the credential: several of them, odd schemes, the token somewhere else
//! than `Authorization`, a valid token plus a claim to be someone else, tokens the apiserver
//! rejects. Every case runs over HTTP/1.1 (raw bytes) and HTTP/2 (h2c with prior knowledge on
//! the plaintext listener) and asserts the status, that a refused request reached no component
//! (and, when it carried no plausible token, not the apiserver either), that an admitted one
//! reached it without the caller's credentials or identity claims, and that the answer never
//! echoes a token.

use std::time::Duration;

use base64::Engine;
use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::adversarial::{
    assert_forwarded_clean, exchange, h2_request, vm_health,
};
use metrics_gate_host_tests::apiserver::CallKind;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenIssuer, TokenOptions};

const PRESETS: [Preset; 2] = [Preset::KubeProxy, Preset::KubeScheduler];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// 200, forwarded once.
    Allowed,
    /// 401 without asking the apiserver: not one plausible bearer token.
    NoToken,
    /// 401 `invalid_token`: the apiserver does not authenticate it.
    InvalidToken,
    /// 403: authenticated, not authorized.
    Forbidden,
}

struct Case {
    what: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    expect: Expect,
    /// Over HTTP/2, when it differs.
    expect_h2: Option<Expect>,
}

impl Case {
    fn over_h2(mut self, expect: Expect) -> Case {
        self.expect_h2 = Some(expect);
        self
    }
}

fn case(what: &str, target: &str, headers: &[(&str, &str)], expect: Expect) -> Case {
    Case {
        what: what.into(),
        target: target.into(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect(),
        expect,
        expect_h2: None,
    }
}

struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    body: String,
}

fn over_http1(stack: &LocalStack, preset: Preset, c: &Case) -> Answer {
    let mut bytes = format!(
        "GET {} HTTP/1.1\r\nHost: metrics-gate\r\nConnection: close\r\n",
        c.target
    )
    .into_bytes();
    for (name, value) in &c.headers {
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"\r\n");
    let answer = exchange(stack.addr(preset), &bytes, 1, Duration::from_secs(15));
    let response = answer
        .responses
        .first()
        .unwrap_or_else(|| panic!("{} over HTTP/1.1: no answer ({})", c.what, answer.summary()));
    Answer {
        status: response.status,
        www_authenticate: response.header("www-authenticate").map(str::to_owned),
        body: response.text(),
    }
}

fn over_http2(stack: &LocalStack, preset: Preset, c: &Case) -> Answer {
    let headers: Vec<(String, &[u8])> = c
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.as_slice()))
        .collect();
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let answer = h2_request(stack.addr(preset), "GET", &c.target, &headers)
        .unwrap_or_else(|e| panic!("{} over HTTP/2: {e:#}", c.what));
    Answer {
        status: answer.status,
        www_authenticate: answer.header("www-authenticate").map(str::to_owned),
        body: answer.text(),
    }
}

/// Runs every case on every preset over both protocols; returns how many requests were sent and
/// how many of them were admitted.
fn run(stack: &LocalStack, cases: &[Case], secrets: &[&str]) -> (usize, usize) {
    let health = vm_health(stack);
    let mut sent = 0;
    let mut admitted = 0;
    for c in cases {
        for preset in PRESETS {
            for (protocol, send) in [
                (
                    "HTTP/1.1",
                    over_http1 as fn(&LocalStack, Preset, &Case) -> Answer,
                ),
                ("HTTP/2", over_http2),
            ] {
                let what = format!("{} over {protocol} on {}", c.what, preset.name());
                let forwarded = stack.component(preset).count();
                let calls = stack.apiserver.calls().len();
                let answer = send(stack, preset, c);
                sent += 1;
                for secret in secrets {
                    assert!(
                        !answer.body.contains(secret),
                        "{what}: the answer echoes a token"
                    );
                }
                let challenge = answer.www_authenticate.clone().unwrap_or_default();
                let expect = if protocol == "HTTP/2" {
                    c.expect_h2.unwrap_or(c.expect)
                } else {
                    c.expect
                };
                match expect {
                    Expect::Allowed => {
                        admitted += 1;
                        assert_eq!(
                            answer.status,
                            200,
                            "{what}: {}",
                            answer.body.chars().take(200).collect::<String>()
                        );
                        let seen = stack.component(preset).requests();
                        assert_eq!(
                            seen.len(),
                            forwarded + 1,
                            "{what}: not forwarded exactly once"
                        );
                        let last = seen.last().unwrap();
                        assert_eq!(last.path_and_query, c.target, "{what}");
                        assert_forwarded_clean(stack, preset, last, secrets, &what);
                    }
                    Expect::NoToken => {
                        assert_eq!(answer.status, 401, "{what}: {}", answer.body);
                        assert!(
                            challenge.starts_with("Bearer"),
                            "{what}: challenge {challenge:?}"
                        );
                        assert!(
                            !challenge.contains("invalid_token"),
                            "{what}: challenge {challenge:?}"
                        );
                        assert_eq!(
                            stack.apiserver.calls().len(),
                            calls,
                            "{what}: the apiserver was asked about no token"
                        );
                    }
                    Expect::InvalidToken => {
                        assert_eq!(answer.status, 401, "{what}: {}", answer.body);
                        assert!(
                            challenge.contains("invalid_token"),
                            "{what}: challenge {challenge:?}"
                        );
                    }
                    Expect::Forbidden => assert_eq!(answer.status, 403, "{what}: {}", answer.body),
                }
                if expect != Expect::Allowed {
                    assert_eq!(
                        stack.component(preset).count(),
                        forwarded,
                        "{what}: a refused request reached the component"
                    );
                }
            }
        }
    }
    assert_eq!(vm_health(stack), health, "the VM crashed or was reloaded");
    (sent, admitted)
}

#[test]
fn several_credentials_or_none_in_authorization_are_401() {
    let stack = LocalStack::start_with(StackOptions {
        presets: PRESETS.to_vec(),
        ..Default::default()
    })
    .unwrap();
    let t = stack.prometheus_token();
    let n = stack.nobody_token();
    let b = format!("Bearer {t}");
    let basic_pair = base64::engine::general_purpose::STANDARD.encode(format!("prometheus:{t}"));
    let basic_token = base64::engine::general_purpose::STANDARD.encode(&t);
    let cases = vec![
        case(
            "the same token twice",
            "/metrics",
            &[("Authorization", &b), ("Authorization", &b)],
            Expect::NoToken,
        ),
        case(
            "valid then nobody",
            "/metrics",
            &[
                ("Authorization", &b),
                ("authorization", &format!("Bearer {n}")),
            ],
            Expect::NoToken,
        ),
        case(
            "nobody then valid",
            "/metrics",
            &[
                ("authorization", &format!("Bearer {n}")),
                ("Authorization", &b),
            ],
            Expect::NoToken,
        ),
        case(
            "garbage then valid",
            "/metrics",
            &[("Authorization", "Bearer garbage"), ("Authorization", &b)],
            Expect::NoToken,
        ),
        case(
            "list of two bearers",
            "/metrics",
            &[("Authorization", &format!("Bearer {t}, Bearer {n}"))],
            Expect::NoToken,
        ),
        case(
            "list without space",
            "/metrics",
            &[("Authorization", &format!("Bearer {n},Bearer {t}"))],
            Expect::NoToken,
        ),
        case(
            "trailing comma",
            "/metrics",
            &[("Authorization", &format!("Bearer {t},"))],
            Expect::NoToken,
        ),
        case(
            "bearer then basic",
            "/metrics",
            &[("Authorization", &format!("Bearer {t}, Basic {basic_pair}"))],
            Expect::NoToken,
        ),
        case(
            "empty",
            "/metrics",
            &[("Authorization", "")],
            Expect::NoToken,
        ),
        case(
            "scheme only",
            "/metrics",
            &[("Authorization", "Bearer")],
            Expect::NoToken,
        ),
        case(
            "basic user:token",
            "/metrics",
            &[("Authorization", &format!("Basic {basic_pair}"))],
            Expect::NoToken,
        ),
        case(
            "basic token",
            "/metrics",
            &[("Authorization", &format!("Basic {basic_token}"))],
            Expect::NoToken,
        ),
        case(
            "token without scheme",
            "/metrics",
            &[("Authorization", &t)],
            Expect::NoToken,
        ),
        case(
            "other scheme",
            "/metrics",
            &[("Authorization", &format!("Token {t}"))],
            Expect::NoToken,
        ),
        case(
            "bearer glued to token",
            "/metrics",
            &[("Authorization", &format!("Bearer{t}"))],
            Expect::NoToken,
        ),
        case(
            "tab after scheme",
            "/metrics",
            &[("Authorization", &format!("Bearer\t{t}"))],
            Expect::NoToken,
        ),
        case(
            "trailing word",
            "/metrics",
            &[("Authorization", &format!("Bearer {t} garbage"))],
            Expect::NoToken,
        ),
        case(
            "trailing bang",
            "/metrics",
            &[("Authorization", &format!("Bearer {t}!"))],
            Expect::NoToken,
        ),
        case(
            "trailing semicolon",
            "/metrics",
            &[("Authorization", &format!("Bearer {t};"))],
            Expect::NoToken,
        ),
        case(
            "quoted token",
            "/metrics",
            &[("Authorization", &format!("Bearer \"{t}\""))],
            Expect::NoToken,
        ),
        case(
            "token68 padding only",
            "/metrics",
            &[("Authorization", "Bearer ===")],
            Expect::NoToken,
        ),
    ];
    let (sent, _) = run(&stack, &cases, &[&t, &n]);
    assert_eq!(
        stack.apiserver.calls().len(),
        0,
        "the apiserver was asked about a request without one plausible token"
    );
    assert_eq!(stack.upstream_requests(), 0);
    assert_eq!(
        stack.counter("wasmcustom.metrics_gate_requests_unauthenticated"),
        sent as u64
    );
}

#[test]
fn a_token_anywhere_but_authorization_is_no_credential() {
    let stack = LocalStack::start_with(StackOptions {
        presets: PRESETS.to_vec(),
        ..Default::default()
    })
    .unwrap();
    let t = stack.prometheus_token();
    let b = format!("Bearer {t}");
    let cases = vec![
        case(
            "query access_token",
            &format!("/metrics?access_token={t}"),
            &[],
            Expect::NoToken,
        ),
        case(
            "query token",
            &format!("/metrics?token={t}"),
            &[],
            Expect::NoToken,
        ),
        case(
            "query authorization",
            &format!("/metrics?authorization=Bearer%20{t}"),
            &[],
            Expect::NoToken,
        ),
        case(
            "cookie token",
            "/metrics",
            &[("Cookie", &format!("token={t}"))],
            Expect::NoToken,
        ),
        case(
            "cookie authorization",
            "/metrics",
            &[("Cookie", &format!("Authorization=Bearer {t}"))],
            Expect::NoToken,
        ),
        case(
            "proxy-authorization",
            "/metrics",
            &[("Proxy-Authorization", &b)],
            Expect::NoToken,
        ),
        case(
            "x-forwarded-access-token",
            "/metrics",
            &[("X-Forwarded-Access-Token", &t)],
            Expect::NoToken,
        ),
        case(
            "x-auth-request-access-token",
            "/metrics",
            &[("X-Auth-Request-Access-Token", &t)],
            Expect::NoToken,
        ),
        case(
            "x-authorization",
            "/metrics",
            &[("X-Authorization", &b)],
            Expect::NoToken,
        ),
        case(
            "authorization with underscore",
            "/metrics",
            &[("x_authorization", &b)],
            Expect::NoToken,
        ),
        case(
            "x-remote-user claims",
            "/metrics",
            &[
                (
                    "X-Remote-User",
                    "system:serviceaccount:observability:prometheus-server",
                ),
                ("X-Remote-Groups", "system:masters"),
            ],
            Expect::NoToken,
        ),
        case(
            "impersonation alone",
            "/metrics",
            &[(
                "Impersonate-User",
                "system:serviceaccount:observability:prometheus-server",
            )],
            Expect::NoToken,
        ),
    ];
    run(&stack, &cases, &[&t]);
    assert_eq!(stack.apiserver.calls().len(), 0);
    assert_eq!(stack.upstream_requests(), 0);
}

#[test]
fn any_case_of_the_scheme_is_accepted_and_nothing_else_of_the_callers_goes_on() {
    let stack = LocalStack::start_with(StackOptions {
        presets: PRESETS.to_vec(),
        ..Default::default()
    })
    .unwrap();
    let t = stack.prometheus_token();
    let b = format!("Bearer {t}");
    let cases = vec![
        case(
            "bearer",
            "/metrics",
            &[("authorization", &format!("bearer {t}"))],
            Expect::Allowed,
        ),
        case(
            "BEARER",
            "/metrics",
            &[("AUTHORIZATION", &format!("BEARER {t}"))],
            Expect::Allowed,
        ),
        case(
            "BeArEr",
            "/metrics",
            &[("AuThOrIzAtIoN", &format!("BeArEr {t}"))],
            Expect::Allowed,
        ),
        case(
            "spaces after the scheme",
            "/metrics",
            &[("Authorization", &format!("Bearer    {t}"))],
            Expect::Allowed,
        ),
        // HTTP/1.1: trailing whitespace is not part of a field value (RFC 9112 §5), Envoy trims it.
        // HTTP/2: a value must not end in whitespace (RFC 9113 §8.2.1); Envoy passes it on as is and
        // the gate, seeing no token68, refuses it — fail closed.
        case(
            "trailing spaces",
            "/metrics",
            &[("Authorization", &format!("Bearer {t}   "))],
            Expect::Allowed,
        )
        .over_h2(Expect::NoToken),
        case(
            "with proxy-authorization and cookie",
            "/metrics",
            &[
                ("Authorization", &b),
                ("Proxy-Authorization", &b),
                ("Cookie", &format!("t={t}")),
            ],
            Expect::Allowed,
        ),
        case(
            "with x-forwarded-access-token",
            "/metrics",
            &[
                ("Authorization", &b),
                ("X-Forwarded-Access-Token", &t),
                ("X-Auth-Request-Access-Token", &t),
            ],
            Expect::Allowed,
        ),
        case(
            "with a query string",
            &format!("/metrics?x={}", "y".repeat(10)),
            &[("Authorization", &b)],
            Expect::Allowed,
        ),
    ];
    let (_, admitted) = run(&stack, &cases, &[&t]);
    assert_eq!(stack.upstream_requests(), admitted);
    // One review for the token, then the cache: the spellings were all the same token.
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 1);
}

#[test]
fn a_valid_token_with_impersonation_headers_is_reviewed_as_itself() {
    let stack = LocalStack::start_with(StackOptions {
        presets: PRESETS.to_vec(),
        ..Default::default()
    })
    .unwrap();
    let t = stack.prometheus_token();
    let n = stack.nobody_token();
    let impersonate: [(&str, &str); 6] = [
        ("Impersonate-User", "system:admin"),
        ("Impersonate-Group", "system:masters"),
        ("Impersonate-Uid", "0"),
        ("Impersonate-Extra-Scopes", "*"),
        ("X-Remote-User", "system:admin"),
        ("X-Remote-Groups", "system:masters"),
    ];
    let with = |token: &str| {
        let mut h = vec![("Authorization", format!("Bearer {token}"))];
        h.extend(impersonate.iter().map(|(n, v)| (*n, v.to_string())));
        h
    };
    let as_case = |what: &str, headers: Vec<(&str, String)>, expect| Case {
        what: what.into(),
        target: "/metrics".into(),
        headers: headers
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.into_bytes()))
            .collect(),
        expect,
        expect_h2: None,
    };
    let cases = vec![
        // The allowed user stays itself: 200, and no Impersonate-* reaches the component.
        as_case(
            "prometheus impersonating system:admin",
            with(&t),
            Expect::Allowed,
        ),
        // A user without a binding does not become system:admin by asking.
        as_case(
            "nobody impersonating system:admin",
            with(&n),
            Expect::Forbidden,
        ),
    ];
    run(&stack, &cases, &[&t, &n]);
    for seen in PRESETS.iter().flat_map(|p| stack.component(*p).requests()) {
        for (name, value) in &seen.headers {
            assert!(
                !value.contains("system:admin") && !value.contains("system:masters"),
                "{name}: {value} reached the component"
            );
        }
    }
    // Every SubjectAccessReview asked about the token's own user, never the claimed one.
    let users: Vec<String> = stack
        .apiserver
        .calls()
        .iter()
        .filter(|c| c.kind == CallKind::SubjectAccessReview)
        .map(|c| c.spec["user"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(!users.is_empty());
    for user in &users {
        assert!(
            *user == ServiceAccount::prometheus_server().username()
                || *user == ServiceAccount::nobody().username(),
            "a SubjectAccessReview for {user}"
        );
    }
}

#[test]
fn tokens_the_apiserver_rejects_are_401_invalid_token() {
    let stack = LocalStack::start_with(StackOptions {
        presets: PRESETS.to_vec(),
        ..Default::default()
    })
    .unwrap();
    let prometheus = ServiceAccount::prometheus_server();
    let expired = stack.token(&prometheus, TokenOptions::expired());
    let other_audience = stack.token(&prometheus, TokenOptions::default().audiences(&["vault"]));
    let foreign = TokenIssuer::with_fresh_key().mint(&prometheus, TokenOptions::default());
    let valid = stack.prometheus_token();
    let unsigned = {
        // The valid token's header and claims with its signature cut off.
        let mut parts = valid.rsplitn(2, '.');
        parts.next();
        format!("{}.", parts.next().unwrap())
    };
    let trailing = format!("{valid}garbage");
    let cases = vec![
        case(
            "expired",
            "/metrics",
            &[("Authorization", &format!("Bearer {expired}"))],
            Expect::InvalidToken,
        ),
        case(
            "another audience",
            "/metrics",
            &[("Authorization", &format!("Bearer {other_audience}"))],
            Expect::InvalidToken,
        ),
        case(
            "signed by another key",
            "/metrics",
            &[("Authorization", &format!("Bearer {foreign}"))],
            Expect::InvalidToken,
        ),
        case(
            "signature cut off",
            "/metrics",
            &[("Authorization", &format!("Bearer {unsigned}"))],
            Expect::InvalidToken,
        ),
        case(
            "valid token with garbage glued on",
            "/metrics",
            &[("Authorization", &format!("Bearer {trailing}"))],
            Expect::InvalidToken,
        ),
        case(
            "garbage",
            "/metrics",
            &[("Authorization", "Bearer garbage-token.abc.def")],
            Expect::InvalidToken,
        ),
    ];
    let (sent, _) = run(
        &stack,
        &cases,
        &[&expired, &other_audience, &foreign, &valid, &unsigned],
    );
    // The apiserver was asked about each once (answers are cached), except the expired token: an
    // answer is never kept past the token's own exp, so it is asked about on every request. Never
    // a SubjectAccessReview.
    let per_token = sent / cases.len();
    assert_eq!(
        stack.apiserver.count(CallKind::TokenReview),
        cases.len() - 1 + per_token
    );
    assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 0);
    assert_eq!(stack.upstream_requests(), 0);
}

/// Envoy drops an `Authorization` header with an empty value when the request has another one
/// (over HTTP/1.1 and HTTP/2, in either order): the gate then sees — and decides on — the one
/// credential, and that one credential is all a component receives, even on a `passthrough`
/// listener that forwards the caller's credential. (README says "several Authorization → 401";
/// an empty duplicate never reaches the filter, so it cannot count it.)
#[test]
fn an_empty_duplicate_authorization_is_dropped_by_envoy_and_the_gate_decides_on_the_one_forwarded()
{
    use metrics_gate_envoy::UpstreamCredentials;
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::Etcd],
        upstream_credentials: vec![(Preset::Etcd, UpstreamCredentials::Passthrough)],
        ..Default::default()
    })
    .unwrap();
    let addr = stack.addr(Preset::Etcd);
    let t = stack.prometheus_token();
    let n = stack.nobody_token();
    for (token, expected) in [
        (t.as_str(), 200),
        (n.as_str(), 403),
        ("garbage-token.abc.def", 401),
    ] {
        let bearer = format!("Bearer {token}");
        let line = format!("Authorization: {bearer}");
        for (order, lines) in [
            ("credential first", [line.as_str(), "Authorization:"]),
            ("empty first", ["Authorization:  ", line.as_str()]),
        ] {
            let what = format!("{order}, expecting {expected}");
            let before = stack.component(Preset::Etcd).count();
            let mut bytes = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
            for l in lines {
                bytes.extend_from_slice(format!("{l}\r\n").as_bytes());
            }
            bytes.extend_from_slice(b"\r\n");
            let answer = exchange(addr, &bytes, 1, Duration::from_secs(15));
            assert_eq!(answer.statuses(), [expected], "HTTP/1.1 {what}");
            let h2_headers: Vec<(&str, &[u8])> = if order == "empty first" {
                vec![("authorization", b""), ("authorization", bearer.as_bytes())]
            } else {
                vec![("authorization", bearer.as_bytes()), ("authorization", b"")]
            };
            let answer = h2_request(addr, "GET", "/metrics", &h2_headers).unwrap();
            assert_eq!(answer.status, expected, "HTTP/2 {what}");
            let seen = stack.component(Preset::Etcd).requests();
            if expected == 200 {
                assert_eq!(seen.len(), before + 2, "{what}");
                for r in &seen[before..] {
                    // Passthrough: exactly the credential the gate authorized, once.
                    assert_eq!(
                        r.header_values("authorization"),
                        [bearer.as_str()],
                        "{what}"
                    );
                }
            } else {
                assert_eq!(
                    seen.len(),
                    before,
                    "{what}: a refused request reached the component"
                );
            }
        }
    }
}
