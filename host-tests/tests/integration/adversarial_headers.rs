//! An attacker sends header bytes the filter may choke on or that may carry an identity past it:
//! values that are not UTF-8 (HTTP's obs-text), obs-fold continuation lines, very many headers,
//! huge values, names with underscores, control bytes. For every one:
//!
//! - the client gets the ordinary answer (200 for a valid token, 401 without one or with garbage,
//!   403 for a valid token without a binding) or Envoy's own 400/431 for a request that is not
//!   valid HTTP;
//! - refused requests reach no component; admitted ones reach it without any credential or
//!   identity header of the caller's;
//! - the gate keeps answering: right after each odd request an ordinary authorized scrape gets
//!   200 at once, and Envoy's VM counters show no crash or reload (a trap in the VM would fail
//!   every request of the worker until Envoy reloads it).

use std::time::Duration;

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::adversarial::{
    assert_forwarded_clean, assert_forwarded_with_identity, assert_still_serving, bearer_line,
    exchange, get_bytes, h2_request, vm_health, wait_until, Exchange,
};
use metrics_gate_host_tests::apiserver::{CallKind, Fault};
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};
use serde_json::json;

const PRESETS: [Preset; 2] = [Preset::KubeProxy, Preset::KubeScheduler];

/// Header values that are not UTF-8.
const OBS_TEXT: [&[u8]; 5] = [
    b"caf\xE9",
    b"\xff\xfe",
    b"\xc3\x28",
    b"ok \x80 then",
    b"\xf0\x9f\x98",
];

fn stack() -> LocalStack {
    LocalStack::start_with(StackOptions {
        presets: PRESETS.to_vec(),
        ..Default::default()
    })
    .unwrap()
}

fn short(text: &str) -> String {
    text.chars().take(120).collect()
}

/// One request with `lines` as header lines (and `Connection: close`), waiting for its answer.
fn send(stack: &LocalStack, preset: Preset, lines: &[&[u8]]) -> Exchange {
    let mut all = lines.to_vec();
    all.push(b"Connection: close");
    exchange(
        stack.addr(preset),
        &get_bytes(b"/metrics", &all),
        1,
        Duration::from_secs(15),
    )
}

fn status_of(answer: &Exchange, what: &str) -> u16 {
    answer
        .responses
        .first()
        .unwrap_or_else(|| panic!("{what}: no answer ({})", answer.summary()))
        .status
}

/// Who the request claims to be, and what the gate must answer.
#[derive(Clone, Copy, Debug)]
enum Caller {
    Prometheus,
    Nobody,
    Garbage,
    Anonymous,
}

impl Caller {
    const ALL: [Caller; 4] = [
        Caller::Prometheus,
        Caller::Nobody,
        Caller::Garbage,
        Caller::Anonymous,
    ];

    fn expected(self) -> u16 {
        match self {
            Caller::Prometheus => 200,
            Caller::Nobody => 403,
            Caller::Garbage | Caller::Anonymous => 401,
        }
    }
}

struct Tokens {
    prometheus: String,
    nobody: String,
}

impl Tokens {
    fn new(stack: &LocalStack) -> Tokens {
        Tokens {
            prometheus: stack.prometheus_token(),
            nobody: stack.nobody_token(),
        }
    }

    fn line(&self, caller: Caller) -> Option<Vec<u8>> {
        match caller {
            Caller::Prometheus => Some(bearer_line(&self.prometheus)),
            Caller::Nobody => Some(bearer_line(&self.nobody)),
            Caller::Garbage => Some(bearer_line("garbage-token.abc.def")),
            Caller::Anonymous => None,
        }
    }
}

/// Sends `extra` header lines as `caller` to every preset, asserts the answer and what reached
/// the component, and that the gate still serves at once. Returns the number of requests sent.
fn probe(
    stack: &LocalStack,
    tokens: &Tokens,
    caller: Caller,
    extra: &[&[u8]],
    what: &str,
) -> usize {
    let health = vm_health(stack);
    for preset in PRESETS {
        let what = format!("{what} as {caller:?} on {}", preset.name());
        let auth = tokens.line(caller);
        let mut lines: Vec<&[u8]> = auth.iter().map(Vec::as_slice).collect();
        lines.extend_from_slice(extra);
        let before = stack.component(preset).count();
        let answer = send(stack, preset, &lines);
        let status = status_of(&answer, &what);
        assert_eq!(
            status,
            caller.expected(),
            "{what}: {}",
            short(&answer.responses[0].text())
        );
        if status == 200 {
            let seen = stack.component(preset).requests();
            assert_eq!(seen.len(), before + 1, "{what}: not forwarded exactly once");
            assert_eq!(seen.last().unwrap().path_and_query, "/metrics");
            assert_forwarded_clean(
                stack,
                preset,
                seen.last().unwrap(),
                &[&tokens.prometheus, &tokens.nobody],
                &what,
            );
        } else {
            assert_eq!(
                stack.component(preset).count(),
                before,
                "{what}: a refused request reached the component"
            );
        }
        assert_still_serving(stack, preset, &tokens.prometheus, &health, &what);
    }
    PRESETS.len()
}

#[test]
fn values_that_are_not_utf8_get_ordinary_answers_and_the_gate_keeps_answering() {
    let stack = stack();
    let tokens = Tokens::new(&stack);
    let mut sent = 0;
    for value in OBS_TEXT {
        for name in ["User-Agent", "X-Foo", "X-Remote-User", "Cookie"] {
            let mut line = format!("{name}: ").into_bytes();
            line.extend_from_slice(value);
            for caller in Caller::ALL {
                sent += probe(
                    &stack,
                    &tokens,
                    caller,
                    &[&line],
                    &format!("{name}: {value:?}"),
                );
            }
        }
        // Several at once, identity headers among them.
        let lines: Vec<Vec<u8>> = ["X-A", "User-Agent", "Impersonate-User", "X-Forwarded-User"]
            .iter()
            .map(|n| [format!("{n}: ").as_bytes(), value].concat())
            .collect();
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        sent += probe(
            &stack,
            &tokens,
            Caller::Prometheus,
            &refs,
            &format!("four headers of {value:?}"),
        );
    }
    assert!(sent > 150);
    // The value is carried to the component as sent (the recorder shows it lossily decoded).
    let seen = stack.component(Preset::KubeProxy).requests();
    assert!(
        seen.iter()
            .any(|r| r.header("x-foo") == Some("caf\u{FFFD}")),
        "an obs-text value was not forwarded"
    );
}

#[test]
fn obs_text_inside_the_credential_is_no_token_and_never_asks_the_apiserver() {
    let stack = stack();
    let tokens = Tokens::new(&stack);
    let t = tokens.prometheus.as_bytes();
    let values: Vec<Vec<u8>> = vec![
        [b"Bearer ", t, b"\xe9"].concat(),
        [b"Bearer \xe9", t].concat(),
        [b"Bearer ", &t[..20], b"\xff\xfe", &t[20..]].concat(),
        [b"B\xe9arer ", t].concat(),
        [b"\xff\xfe ", t].concat(),
        b"Bearer \xff\xfe\xfd".to_vec(),
        b"Bearer caf\xe9".to_vec(),
    ];
    for value in &values {
        let line = [b"Authorization: ".as_slice(), value].concat();
        probe(
            &stack,
            &tokens,
            Caller::Anonymous,
            &[&line],
            &format!(
                "Authorization: {:?}",
                String::from_utf8_lossy(&value[..value.len().min(24)])
            ),
        );
    }
    // Only the ordinary scrapes between them were reviewed (once, then cached).
    assert_eq!(stack.apiserver.count(CallKind::TokenReview), 1);
    assert_eq!(
        stack.counter("wasmcustom.metrics_gate_requests_unauthenticated"),
        (values.len() * PRESETS.len()) as u64
    );
}

#[test]
fn obs_text_over_http2_gets_the_same_answers() {
    let stack = stack();
    let tokens = Tokens::new(&stack);
    let bearer = format!("Bearer {}", tokens.prometheus);
    let nobody = format!("Bearer {}", tokens.nobody);
    let health = vm_health(&stack);
    for value in OBS_TEXT {
        for preset in PRESETS {
            let addr = stack.addr(preset);
            let hostile = [
                ("user-agent", value),
                ("x-foo", value),
                ("x-remote-user", value),
                ("cookie", value),
            ];
            let cases: [(&str, Option<&[u8]>, u16); 4] = [
                ("prometheus", Some(bearer.as_bytes()), 200),
                ("nobody", Some(nobody.as_bytes()), 403),
                ("anonymous", None, 401),
                (
                    "obs-text credential",
                    Some(&[b"Bearer ".as_slice(), value].concat()),
                    401,
                ),
            ];
            for (who, auth, expected) in cases {
                let what = format!("h2 {value:?} as {who} on {}", preset.name());
                let mut headers: Vec<(&str, &[u8])> = hostile.to_vec();
                if let Some(auth) = auth {
                    headers.push(("authorization", auth));
                }
                let before = stack.component(preset).count();
                let answer = h2_request(addr, "GET", "/metrics", &headers)
                    .unwrap_or_else(|e| panic!("{what}: {e:#}"));
                assert_eq!(answer.status, expected, "{what}: {}", short(&answer.text()));
                if expected == 200 {
                    let seen = stack.component(preset).requests();
                    assert_eq!(seen.len(), before + 1, "{what}");
                    assert_forwarded_clean(
                        &stack,
                        preset,
                        seen.last().unwrap(),
                        &[&tokens.prometheus, &tokens.nobody],
                        &what,
                    );
                } else {
                    assert_eq!(
                        stack.component(preset).count(),
                        before,
                        "{what}: reached the component"
                    );
                }
                assert_still_serving(&stack, preset, &tokens.prometheus, &health, &what);
            }
        }
    }
}

#[test]
fn obs_text_on_a_request_waiting_for_its_review_is_carried_through() {
    let stack = stack();
    stack
        .apiserver
        .set_fault(Fault::Slow(Duration::from_millis(300)));
    let health = vm_health(&stack);
    let tokens = Tokens::new(&stack);
    for (i, preset) in PRESETS.into_iter().enumerate() {
        // Fresh tokens: each request waits for its own review with the hostile bytes in its headers.
        let fresh = stack.token(
            &ServiceAccount::prometheus_server(),
            TokenOptions::default().lifetime_secs(3000 + i as i64),
        );
        let nobody = stack.token(
            &ServiceAccount::nobody(),
            TokenOptions::default().lifetime_secs(3000 + i as i64),
        );
        for (token, expected) in [(&fresh, 200), (&nobody, 403)] {
            let what = format!("paused request expecting {expected} on {}", preset.name());
            let before = stack.component(preset).count();
            let auth = bearer_line(token);
            let answer = send(
                &stack,
                preset,
                &[
                    b"User-Agent: caf\xe9",
                    &auth,
                    b"X-Foo: \xff\xfe",
                    b"Impersonate-User: \xe9system:admin",
                ],
            );
            assert_eq!(
                status_of(&answer, &what),
                expected,
                "{what}: {}",
                short(&answer.responses[0].text())
            );
            if expected == 200 {
                let seen = stack.component(preset).requests();
                assert_eq!(seen.len(), before + 1, "{what}");
                assert_eq!(
                    seen.last().unwrap().header("x-foo"),
                    Some("\u{FFFD}\u{FFFD}"),
                    "{what}"
                );
                assert_forwarded_clean(&stack, preset, seen.last().unwrap(), &[token], &what);
            } else {
                assert_eq!(
                    stack.component(preset).count(),
                    before,
                    "{what}: reached the component"
                );
            }
        }
        stack.apiserver.set_fault(Fault::None);
        assert_still_serving(
            &stack,
            preset,
            &tokens.prometheus,
            &health,
            "paused requests with obs-text",
        );
        stack
            .apiserver
            .set_fault(Fault::Slow(Duration::from_millis(300)));
    }
}

/// An obs-fold (a header line continued on the next line, which starts with a space or tab): RFC
/// 9112 §5.2 lets a server either refuse the request with 400 or replace the fold with spaces
/// before interpreting it. Envoy 1.40 unfolds. Either way, the gate must decide on the same value
/// the component receives: an identity header folded into another stays inside that value, one
/// folded across lines is still removed, and a credential folded over two lines is one value.
#[test]
fn obs_folded_lines_are_refused_or_unfolded_into_one_value_the_gate_decides_on() {
    let stack = LocalStack::start_with(StackOptions {
        presets: PRESETS.to_vec(),
        plugin_config: json!({"identity_headers": {"enabled": true}}),
        ..Default::default()
    })
    .unwrap();
    let tokens = Tokens::new(&stack);
    let health = vm_health(&stack);
    let t = &tokens.prometheus;
    let n = &tokens.nobody;
    let sa = ServiceAccount::prometheus_server();
    let auth = format!("Authorization: Bearer {t}");
    // (what, header lines, the status if Envoy unfolds, what the component must show if admitted)
    let cases: Vec<(&str, Vec<String>, u16)> = vec![
        (
            "folded value",
            vec![auth.clone(), "X-Foo: a".into(), " b".into()],
            200,
        ),
        (
            "tab fold",
            vec![auth.clone(), "X-Foo: a".into(), "\tb".into()],
            200,
        ),
        (
            "identity header folded across lines",
            vec![
                auth.clone(),
                "X-Remote-User:".into(),
                " system:admin".into(),
            ],
            200,
        ),
        (
            "identity header inside a fold",
            vec![
                auth.clone(),
                "X-Foo: a".into(),
                " X-Remote-User: system:admin".into(),
            ],
            200,
        ),
        (
            "credential folded over two lines",
            vec!["Authorization: Bearer".into(), format!(" {t}")],
            200,
        ),
        (
            "second credential folded onto the first",
            vec![auth.clone(), format!(" Bearer {n}")],
            401,
        ),
        (
            "credential only inside another header's fold",
            vec!["X-Foo: a".into(), format!(" Authorization: Bearer {t}")],
            401,
        ),
        (
            "credential folded into Host",
            vec![format!(" Authorization: Bearer {t}"), "X-Foo: a".into()],
            401,
        ),
        (
            "impersonation folded after the credential",
            vec![auth.clone(), " Impersonate-User: system:admin".into()],
            401,
        ),
    ];
    for (what, lines, unfolded_status) in &cases {
        for preset in PRESETS {
            let what = format!("{what} on {}", preset.name());
            let bytes: Vec<Vec<u8>> = lines.iter().map(|l| l.clone().into_bytes()).collect();
            let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
            let before = stack.component(preset).count();
            let answer = send(&stack, preset, &refs);
            let status = status_of(&answer, &what);
            assert!(
                status == 400 || status == *unfolded_status,
                "{what}: {status} {}",
                short(&answer.responses[0].text())
            );
            if status == 200 {
                let seen = stack.component(preset).requests();
                assert_eq!(seen.len(), before + 1, "{what}");
                let last = seen.last().unwrap();
                // The only x-remote-user is the reviewed identity the gate added.
                assert_forwarded_with_identity(&stack, preset, last, &[t, n], &sa, &what);
                for (name, value) in &last.headers {
                    assert!(
                        !value.contains('\r') && !value.contains('\n'),
                        "{what}: a line break reached the component in {name}"
                    );
                    if name != "x-foo" {
                        assert!(!value.contains("system:admin"), "{what}: {name}: {value}");
                    }
                }
                if lines.iter().any(|l| l == " b" || l == "\tb") {
                    // The fold became whitespace inside the one value.
                    let value = last.header("x-foo").unwrap_or_default();
                    assert_eq!(
                        value.split_ascii_whitespace().collect::<Vec<_>>(),
                        ["a", "b"],
                        "{what}: unfolded into {value:?}"
                    );
                }
            } else {
                assert_eq!(
                    stack.component(preset).count(),
                    before,
                    "{what}: a refused request reached the component"
                );
            }
            assert_still_serving(&stack, preset, t, &health, &what);
        }
    }
}

#[test]
fn very_many_headers_are_served_or_refused_whole_and_identity_headers_never_pass() {
    let stack = stack();
    let tokens = Tokens::new(&stack);
    let health = vm_health(&stack);
    let auth = bearer_line(&tokens.prometheus);
    // 90 ordinary headers, the credential last.
    let junk: Vec<Vec<u8>> = (0..90)
        .map(|i| format!("X-Junk-{i}: {i}").into_bytes())
        .collect();
    // 90 identity headers in every spelling the filter must remove.
    let names = [
        "X-Remote-User",
        "x-remote-groups",
        "X-REMOTE-EXTRA-SCOPES",
        "Impersonate-User",
        "impersonate-group",
        "Impersonate-Uid",
        "X-Forwarded-User",
        "X-Forwarded-Groups",
        "X-Auth-Request-User",
        "Remote-User",
        "Cookie",
        "Proxy-Authorization",
        "X-WebAuth-User",
        "X-Forwarded-Email",
        "X-Forwarded-Access-Token",
    ];
    let identities: Vec<Vec<u8>> = (0..90)
        .map(|i| format!("{}: system:admin-{i}", names[i % names.len()]).into_bytes())
        .collect();
    let too_many: Vec<Vec<u8>> = (0..150)
        .map(|i| format!("X-Junk-{i}: {i}").into_bytes())
        .collect();
    let far_too_many: Vec<Vec<u8>> = (0..5000)
        .map(|i| format!("X-Remote-User: system:admin-{i}").into_bytes())
        .collect();
    for preset in PRESETS {
        let mut lines = refs(&junk);
        lines.push(&auth);
        let answer = send(&stack, preset, &lines);
        assert_eq!(status_of(&answer, "90 headers"), 200);
        let last = stack.component(preset).requests().pop().unwrap();
        assert_eq!(last.header("x-junk-89"), Some("89"));
        assert_forwarded_clean(&stack, preset, &last, &[&tokens.prometheus], "90 headers");

        let mut lines = vec![auth.as_slice()];
        lines.extend(refs(&identities));
        let answer = send(&stack, preset, &lines);
        assert_eq!(status_of(&answer, "90 identity headers"), 200);
        let last = stack.component(preset).requests().pop().unwrap();
        assert_forwarded_clean(
            &stack,
            preset,
            &last,
            &[&tokens.prometheus],
            "90 identity headers",
        );
        assert!(
            last.headers
                .iter()
                .all(|(_, v)| !v.contains("system:admin")),
            "90 identity headers: {:?}",
            last.headers
        );

        // Past Envoy's limit (100 headers): refused whole, before the gate or the component.
        let forwarded = stack.component(preset).count();
        for (what, many) in [
            ("150 headers", &too_many),
            ("5000 identity headers", &far_too_many),
        ] {
            let mut lines = vec![auth.as_slice()];
            lines.extend(refs(many));
            let answer = send(&stack, preset, &lines);
            let status = status_of(&answer, what);
            assert!(status == 431 || status == 400, "{what}: {status}");
            assert_eq!(
                stack.component(preset).count(),
                forwarded,
                "{what}: reached the component"
            );
        }
        assert_still_serving(
            &stack,
            preset,
            &tokens.prometheus,
            &health,
            "very many headers",
        );

        // The same over HTTP/2.
        let bearer = format!("Bearer {}", tokens.prometheus);
        let mut headers: Vec<(&str, &[u8])> = vec![("authorization", bearer.as_bytes())];
        let values: Vec<String> = (0..90).map(|i| format!("system:admin-{i}")).collect();
        let lower: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        for (i, v) in values.iter().enumerate() {
            headers.push((lower[i % lower.len()].as_str(), v.as_bytes()));
        }
        let answer = h2_request(stack.addr(preset), "GET", "/metrics", &headers).unwrap();
        assert_eq!(
            answer.status,
            200,
            "h2 90 identity headers: {}",
            short(&answer.text())
        );
        let last = stack.component(preset).requests().pop().unwrap();
        assert_forwarded_clean(
            &stack,
            preset,
            &last,
            &[&tokens.prometheus],
            "h2 90 identity headers",
        );
        assert!(
            last.headers
                .iter()
                .all(|(_, v)| !v.contains("system:admin")),
            "h2 90 identity headers: {:?}",
            last.headers
        );
        assert_still_serving(
            &stack,
            preset,
            &tokens.prometheus,
            &health,
            "h2 very many headers",
        );
    }
}

#[test]
fn huge_header_values_are_served_or_refused_whole() {
    let stack = stack();
    let tokens = Tokens::new(&stack);
    let health = vm_health(&stack);
    let auth = bearer_line(&tokens.prometheus);
    let big = "A".repeat(40_000);
    let huge = "A".repeat(100_000);
    for preset in PRESETS {
        // A 40 KB ordinary value goes through as sent.
        let line = format!("User-Agent: {big}").into_bytes();
        assert_eq!(
            status_of(&send(&stack, preset, &[&auth, &line]), "40 KB User-Agent"),
            200
        );
        let last = stack.component(preset).requests().pop().unwrap();
        assert_eq!(last.header("user-agent").map(str::len), Some(40_000));
        assert_forwarded_clean(
            &stack,
            preset,
            &last,
            &[&tokens.prometheus],
            "40 KB User-Agent",
        );
        assert_still_serving(
            &stack,
            preset,
            &tokens.prometheus,
            &health,
            "40 KB User-Agent",
        );

        // 40 KB identity headers are still removed.
        for name in [
            "X-Remote-User",
            "Impersonate-User",
            "Cookie",
            "X-Remote-User-Extra-Padding",
        ] {
            let line = format!("{name}: system:admin{big}").into_bytes();
            assert_eq!(
                status_of(&send(&stack, preset, &[&auth, &line]), name),
                200,
                "40 KB {name}"
            );
            let last = stack.component(preset).requests().pop().unwrap();
            assert_forwarded_clean(
                &stack,
                preset,
                &last,
                &[&tokens.prometheus],
                &format!("40 KB {name}"),
            );
            assert_still_serving(
                &stack,
                preset,
                &tokens.prometheus,
                &health,
                &format!("40 KB {name}"),
            );
        }

        // A 40 KB bearer token is refused without asking the apiserver (max_token_bytes).
        let reviews = stack.apiserver.count(CallKind::TokenReview);
        let forwarded = stack.component(preset).count();
        let line = format!("Authorization: Bearer {big}").into_bytes();
        assert_eq!(
            status_of(&send(&stack, preset, &[&line]), "40 KB token"),
            401
        );
        assert_eq!(
            stack.apiserver.count(CallKind::TokenReview),
            reviews,
            "a 40 KB token was sent to the apiserver"
        );

        // Past Envoy's 60 KiB header limit: refused whole.
        for (name, with_auth) in [
            ("User-Agent", true),
            ("Authorization", false),
            ("X-Remote-User", true),
        ] {
            let line = if name == "Authorization" {
                format!("Authorization: Bearer {huge}")
            } else {
                format!("{name}: {huge}")
            }
            .into_bytes();
            let mut lines: Vec<&[u8]> = vec![&line];
            if with_auth {
                lines.push(&auth);
            }
            let status = status_of(&send(&stack, preset, &lines), name);
            assert!(status == 431 || status == 400, "100 KB {name}: {status}");
        }
        assert_eq!(
            stack.component(preset).count(),
            forwarded,
            "a refused request reached the component"
        );
        assert_still_serving(&stack, preset, &tokens.prometheus, &health, "100 KB values");

        // Over HTTP/2: 2 x 25 KB goes through with the identity header removed; 2 x 40 KB is past
        // the limit and refused whole (a 431 or a reset stream), before anything is forwarded.
        let bearer = format!("Bearer {}", tokens.prometheus);
        let half = "A".repeat(25_000);
        let answer = h2_request(
            stack.addr(preset),
            "GET",
            "/metrics",
            &[
                ("authorization", bearer.as_bytes()),
                ("x-remote-user", half.as_bytes()),
                ("user-agent", half.as_bytes()),
            ],
        )
        .unwrap_or_else(|e| panic!("h2 2 x 25 KB values: {e:?}"));
        assert_eq!(answer.status, 200, "h2 2 x 25 KB values");
        let last = stack.component(preset).requests().pop().unwrap();
        assert_eq!(last.header("user-agent").map(str::len), Some(25_000));
        assert_forwarded_clean(
            &stack,
            preset,
            &last,
            &[&tokens.prometheus],
            "h2 2 x 25 KB values",
        );
        let forwarded = stack.component(preset).count();
        match h2_request(
            stack.addr(preset),
            "GET",
            "/metrics",
            &[
                ("authorization", bearer.as_bytes()),
                ("x-remote-user", big.as_bytes()),
                ("user-agent", big.as_bytes()),
            ],
        ) {
            Ok(answer) => assert!(
                answer.status == 431 || answer.status == 400,
                "h2 2 x 40 KB values: {}",
                answer.status
            ),
            Err(_reset) => {}
        }
        assert_eq!(
            stack.component(preset).count(),
            forwarded,
            "h2 2 x 40 KB values reached the component"
        );
        assert_still_serving(
            &stack,
            preset,
            &tokens.prometheus,
            &health,
            "h2 large values",
        );
    }
}

/// `x_remote_user` is `x-remote-user` to many servers (CGI, WSGI, some Go and Node frameworks):
/// such names never reach a component, on either protocol, whoever asks — and with identity
/// headers on, the component sees exactly the reviewed identity and nothing the caller claimed.
#[test]
fn underscore_names_never_reach_the_component() {
    let stack = LocalStack::start_with(StackOptions {
        presets: PRESETS.to_vec(),
        plugin_config: json!({"identity_headers": {"enabled": true}}),
        ..Default::default()
    })
    .unwrap();
    let tokens = Tokens::new(&stack);
    let health = vm_health(&stack);
    let sa = ServiceAccount::prometheus_server();
    let underscored: [(&str, &str); 10] = [
        ("x_remote_user", "system:admin"),
        ("X_Remote_Groups", "system:masters"),
        ("x_remote_extra_scopes", "system:admin"),
        ("x-remote_user", "system:admin"),
        ("impersonate_user", "system:admin"),
        ("Impersonate_Group", "system:masters"),
        ("x_forwarded_user", "system:admin"),
        ("remote_user", "system:admin"),
        ("x_auth_request_user", "system:admin"),
        ("x_scrape_id", "system:admin-harmless"),
    ];
    let lines: Vec<Vec<u8>> = underscored
        .iter()
        .map(|(n, v)| format!("{n}: {v}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let check = |preset: Preset, what: &str| {
        let last = stack
            .component(preset)
            .requests()
            .pop()
            .unwrap_or_else(|| panic!("{what}: nothing forwarded"));
        assert_forwarded_with_identity(&stack, preset, &last, &[&tokens.prometheus], &sa, what);
        for (name, value) in &last.headers {
            assert!(
                !value.contains("system:admin") && !value.contains("system:masters"),
                "{what}: {name}: {value}"
            );
        }
    };
    for preset in PRESETS {
        for caller in Caller::ALL {
            let what = format!("underscore headers as {caller:?} on {}", preset.name());
            let auth = tokens.line(caller);
            let mut all: Vec<&[u8]> = auth.iter().map(Vec::as_slice).collect();
            all.extend_from_slice(&refs);
            let before = stack.component(preset).count();
            let answer = send(&stack, preset, &all);
            assert_eq!(status_of(&answer, &what), caller.expected(), "{what}");
            if caller.expected() == 200 {
                assert_eq!(stack.component(preset).count(), before + 1);
                check(preset, &what);
            } else {
                assert_eq!(
                    stack.component(preset).count(),
                    before,
                    "{what}: reached the component"
                );
            }
            assert_still_serving(&stack, preset, &tokens.prometheus, &health, &what);
        }
        // HTTP/2 lower-cases names but keeps underscores.
        let bearer = format!("Bearer {}", tokens.prometheus);
        let lower: Vec<String> = underscored
            .iter()
            .map(|(n, _)| n.to_ascii_lowercase())
            .collect();
        let mut headers: Vec<(&str, &[u8])> = vec![("authorization", bearer.as_bytes())];
        headers.extend(
            lower
                .iter()
                .zip(underscored.iter())
                .map(|(n, (_, v))| (n.as_str(), v.as_bytes())),
        );
        let answer = h2_request(stack.addr(preset), "GET", "/metrics", &headers).unwrap();
        assert_eq!(
            answer.status,
            200,
            "h2 underscore headers on {}",
            preset.name()
        );
        check(
            preset,
            &format!("h2 underscore headers on {}", preset.name()),
        );
        // Anonymous over HTTP/2: refused, nothing forwarded.
        let before = stack.component(preset).count();
        let answer = h2_request(stack.addr(preset), "GET", "/metrics", &headers[1..]).unwrap();
        assert_eq!(
            answer.status,
            401,
            "h2 anonymous underscore headers on {}",
            preset.name()
        );
        assert_eq!(stack.component(preset).count(), before);
    }
}

fn refs(lines: &[Vec<u8>]) -> Vec<&[u8]> {
    lines.iter().map(Vec::as_slice).collect()
}

/// Bytes HTTP forbids in a header (NUL, other controls, DEL, bytes outside tchar in a name, a
/// line without a colon) make Envoy refuse the request with 400; a bare CR or LF inside a value is
/// normalised by Envoy (CR dropped, LF ends the line) — then the gate decides on the same header
/// list the component receives, so no identity header slips past it.
#[test]
fn control_bytes_in_headers_are_refused_or_normalised_before_the_gate() {
    let stack = stack();
    let tokens = Tokens::new(&stack);
    let health = vm_health(&stack);
    let auth = bearer_line(&tokens.prometheus);
    let refused: [&[u8]; 9] = [
        b"X-Foo: a\x00b",
        b"X-Foo: a\x01b",
        b"X-Foo: a\x7fb",
        b"X-Foo: a\x1bb",
        b"X-Foo\xff: bar",
        b"X Foo: bar",
        b": bar",
        b"X-Foo bar",
        b"X-Foo\r: bar",
    ];
    for line in refused {
        for preset in PRESETS {
            let what = format!("{:?} on {}", String::from_utf8_lossy(line), preset.name());
            let before = stack.component(preset).count();
            let status = status_of(&send(&stack, preset, &[&auth, line]), &what);
            assert_eq!(status, 400, "{what}");
            assert_eq!(
                stack.component(preset).count(),
                before,
                "{what}: reached the component"
            );
            assert_still_serving(&stack, preset, &tokens.prometheus, &health, &what);
        }
    }
    let normalised: [&[u8]; 4] = [
        b"X-Foo: a\rX-Remote-User: system:admin",
        b"X-Foo: a\nX-Remote-User: system:admin",
        b"X-Remote-User: system:admin\r",
        b"X-Foo: a\nImpersonate-User: system:admin\nCookie: s=system:admin",
    ];
    for line in normalised {
        for preset in PRESETS {
            let what = format!("{:?} on {}", String::from_utf8_lossy(line), preset.name());
            let before = stack.component(preset).count();
            let status = status_of(&send(&stack, preset, &[&auth, line]), &what);
            assert!(status == 200 || status == 400, "{what}: {status}");
            if status == 200 {
                let seen = stack.component(preset).requests();
                assert_eq!(seen.len(), before + 1, "{what}");
                let last = seen.last().unwrap();
                assert_forwarded_clean(&stack, preset, last, &[&tokens.prometheus], &what);
                for (name, value) in &last.headers {
                    assert!(
                        !value.contains('\r') && !value.contains('\n'),
                        "{what}: a line break reached the component in {name}"
                    );
                }
            } else {
                assert_eq!(
                    stack.component(preset).count(),
                    before,
                    "{what}: reached the component"
                );
            }
            assert_still_serving(&stack, preset, &tokens.prometheus, &health, &what);
        }
        // Without a token the same bytes are 401 (or 400), never forwarded.
        let status = status_of(&send(&stack, Preset::KubeProxy, &[line]), "anonymous");
        assert!(
            status == 401 || status == 400,
            "{:?} anonymous: {status}",
            String::from_utf8_lossy(line)
        );
    }
}

/// The "no crash" checks above mean something: a trap in the VM (the fault-injection build's
/// test-only header) shows in the same counters and log lines they look at.
#[test]
fn the_crash_detector_sees_a_crash() {
    use metrics_gate_host_tests::adversarial::crash_lines;
    use metrics_gate_host_tests::stack::WasmBuild;
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy],
        wasm: WasmBuild::FaultInjection,
        ..Default::default()
    })
    .unwrap();
    let before = vm_health(&stack);
    assert!(crash_lines(&stack).is_empty());
    let bearer = format!("Bearer {}", stack.prometheus_token());
    let answer = stack.request(
        Preset::KubeProxy,
        "GET",
        "/metrics",
        &[("authorization", &bearer), ("x-metrics-gate-fault", "trap")],
    );
    assert!(
        answer.status >= 500,
        "the trap was answered {}",
        answer.status
    );
    // Envoy reloads the VM on the next request (after its backoff).
    let _ = wait_until(Duration::from_secs(10), || {
        stack
            .request(
                Preset::KubeProxy,
                "GET",
                "/metrics",
                &[("authorization", &bearer)],
            )
            .status
            == 200
    });
    assert_ne!(
        vm_health(&stack),
        before,
        "a crash left the VM counters unchanged"
    );
    assert!(
        !crash_lines(&stack).is_empty(),
        "a crash left no line in the log:\n{}",
        stack.envoy.log_tail(30)
    );
    assert_eq!(stack.component(Preset::KubeProxy).count(), 1);
}
