//! The behaviour contract, row by row, without Envoy.

use super::*;
// Under wasm32-unknown-unknown the same tests run in Node.js through wasm-bindgen-test.
use crate::reply::Outcome;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const PROMETHEUS_TR: &[u8] = br#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"token":"<redacted>"},"status":{"authenticated":true,"user":{"username":"system:serviceaccount:observability:prometheus-server","uid":"e2a1121a","groups":["system:serviceaccounts","system:authenticated"]},"audiences":["https://kubernetes.default.svc.cluster.local"]}}"#;
const GARBAGE_TR: &[u8] = br#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"token":"<redacted>"},"status":{"user":{},"error":"invalid bearer token"}}"#;
const SAR_ALLOWED: &[u8] = br#"{"kind":"SubjectAccessReview","apiVersion":"authorization.k8s.io/v1","spec":{},"status":{"allowed":true,"reason":"RBAC"}}"#;
const SAR_DENIED: &[u8] = br#"{"kind":"SubjectAccessReview","apiVersion":"authorization.k8s.io/v1","spec":{},"status":{"allowed":false}}"#;

fn config(json: &str) -> Config {
    Config::parse(json.as_bytes()).unwrap()
}

fn headers<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a [u8], &'a [u8])> {
    pairs
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect()
}

fn start(config: &Config, method: &str, path: &str, pairs: &[(&str, &str)]) -> (Gate, Step) {
    let headers = headers(pairs);
    let mut gate = Gate::default();
    let step = gate.on_request(
        config,
        &RequestHead {
            method,
            path,
            headers: &headers,
            peer_subject: None,
            verified_subject: None,
        },
    );
    (gate, step)
}

fn reply(step: Step) -> Reply {
    match step {
        Step::Reply(reply) => reply,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn callout(step: Step) -> Callout {
    match step {
        Step::Call(callout) => callout,
        other => panic!("expected a callout, got {other:?}"),
    }
}

const BEARER: (&str, &str) = ("authorization", "Bearer abc.def.ghi");
const NOW_MS: u64 = 1_800_000_000_000;

#[test]
fn paths_outside_the_allow_list_are_404_before_anything_else() {
    let c = config("{}");
    for path in [
        "/",
        "/debug/pprof",
        "//metrics",
        "/%6detrics",
        "/metrics%2f..",
        "/metrics%2F..",
        "/METRICS",
        "/metrics;x",
        "/metrics/",
        "/metrics/../debug",
        "/metricsx",
        "",
        "*",
    ] {
        let r = reply(start(&c, "DELETE", path, &[]).1);
        assert_eq!(
            (r.status, r.outcome),
            (404, Outcome::PathNotAllowed),
            "{path}"
        );
    }
}

#[test]
fn query_strings_do_not_change_the_path() {
    let c = config("{}");
    let call = callout(start(&c, "GET", "/metrics?name[]=up", &[BEARER]).1);
    assert_eq!(call.path, review::TOKEN_REVIEW_PATH);
}

#[test]
fn only_get_and_head_are_allowed() {
    let c = config("{}");
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "get"] {
        let r = reply(start(&c, method, "/metrics", &[BEARER]).1);
        assert_eq!(r.status, 405, "{method}");
        assert!(r.headers.contains(&("allow", "GET, HEAD".to_owned())));
    }
    for method in ["GET", "HEAD"] {
        callout(start(&c, method, "/metrics", &[BEARER]).1);
    }
}

#[test]
fn requests_without_one_plausible_token_get_401_with_a_challenge() {
    let c = config("{}");
    let cases: [&[(&str, &str)]; 4] = [
        &[],
        &[("authorization", "Basic YWJjOmRlZg==")],
        &[BEARER, BEARER],
        &[("authorization", "Bearer has space")],
    ];
    for pairs in cases {
        let r = reply(start(&c, "GET", "/metrics", pairs).1);
        assert_eq!(r.status, 401);
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| *n == "www-authenticate" && v.starts_with("Bearer")));
    }
}

#[test]
fn the_token_review_carries_the_token_and_audiences() {
    let c = config(r#"{"audiences":["metrics-gate"]}"#);
    let call = callout(start(&c, "GET", "/metrics", &[BEARER]).1);
    let body: serde_json::Value = serde_json::from_slice(&call.body(&c)).unwrap();
    assert_eq!(body["spec"]["token"], "abc.def.ghi");
    assert_eq!(body["spec"]["audiences"][0], "metrics-gate");
}

#[test]
fn unauthenticated_callers_get_401_invalid_token() {
    let c = config("{}");
    let (mut gate, _) = start(&c, "GET", "/metrics", &[BEARER]);
    let r = reply(gate.on_review_answer(&c, Some(201), GARBAGE_TR));
    assert_eq!(r.status, 401);
    assert!(r.headers.iter().any(|(_, v)| v.contains("invalid_token")));
    assert!(!r.body.contains("abc.def.ghi"));
}

#[test]
fn wrong_audience_is_401() {
    let c = config(r#"{"audiences":["metrics-gate"]}"#);
    let (mut gate, _) = start(&c, "GET", "/metrics", &[BEARER]);
    assert_eq!(
        reply(gate.on_review_answer(&c, Some(201), PROMETHEUS_TR)).status,
        401
    );
}

#[test]
fn authenticated_user_is_checked_with_a_subject_access_review() {
    let c = config("{}");
    let (mut gate, _) = start(&c, "HEAD", "/metrics?x=1", &[BEARER]);
    let call = callout(gate.on_review_answer(&c, Some(201), PROMETHEUS_TR));
    assert_eq!(call.path, review::SUBJECT_ACCESS_REVIEW_PATH);
    let body: serde_json::Value = serde_json::from_slice(&call.body(&c)).unwrap();
    assert_eq!(
        body["spec"]["user"],
        "system:serviceaccount:observability:prometheus-server"
    );
    assert_eq!(body["spec"]["uid"], "e2a1121a");
    assert_eq!(body["spec"]["groups"][1], "system:authenticated");
    assert_eq!(
        body["spec"]["nonResourceAttributes"],
        serde_json::json!({"path": "/metrics", "verb": "head"}),
        "HEAD is verb head, as the components themselves ask"
    );
    assert!(!String::from_utf8(call.body(&c))
        .unwrap()
        .contains("abc.def.ghi"));
}

#[test]
fn denied_users_get_403_naming_them_and_the_attributes() {
    let c = config("{}");
    let (mut gate, _) = start(&c, "GET", "/metrics", &[BEARER]);
    gate.on_review_answer(&c, Some(201), PROMETHEUS_TR);
    let r = reply(gate.on_review_answer(&c, Some(201), SAR_DENIED));
    assert_eq!((r.status, r.outcome), (403, Outcome::Forbidden));
    assert!(
        r.body
            .contains("system:serviceaccount:observability:prometheus-server"),
        "{}",
        r.body
    );
    assert!(r.body.contains(r#"get path "/metrics""#), "{}", r.body);
}

#[test]
fn allowed_requests_are_forwarded_without_client_credentials() {
    let c = config("{}");
    let (mut gate, _) = start(
        &c,
        "GET",
        "/metrics",
        &[
            BEARER,
            ("x-remote-user", "admin"),
            ("x-remote-groups", "system:masters"),
            ("accept", "*/*"),
        ],
    );
    gate.on_review_answer(&c, Some(201), PROMETHEUS_TR);
    let Step::Forward(forward) = gate.on_review_answer(&c, Some(201), SAR_ALLOWED) else {
        panic!("expected forward")
    };
    assert_eq!(
        forward.remove,
        [&b"authorization"[..], b"x-remote-user", b"x-remote-groups"]
    );
    assert!(forward.set.is_empty());
}

#[test]
fn an_identity_header_whose_name_is_not_utf8_is_removed_too() {
    // Found by fuzzing: `x-remote-user\xbe` asserts an identity like any `x-remote-*` header.
    let c = config("{}");
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b"authorization", BEARER.1.as_bytes()),
        (b"x-remote-user\xbe\xbe", b"system:admin"),
    ];
    let mut gate = Gate::default();
    gate.on_request(
        &c,
        &RequestHead {
            method: "GET",
            path: "/metrics",
            headers: &headers,
            peer_subject: None,
            verified_subject: None,
        },
    );
    gate.on_review_answer(&c, Some(201), PROMETHEUS_TR);
    let Step::Forward(forward) = gate.on_review_answer(&c, Some(201), SAR_ALLOWED) else {
        panic!("expected forward")
    };
    assert!(forward.remove.contains(&b"x-remote-user\xbe\xbe".to_vec()));
}

#[test]
fn identity_headers_are_set_from_the_review_when_enabled() {
    let c = config(r#"{"identity_headers":{"enabled":true}}"#);
    let (mut gate, _) = start(&c, "GET", "/metrics", &[BEARER, ("x-remote-user", "admin")]);
    gate.on_review_answer(&c, Some(201), PROMETHEUS_TR);
    let Step::Forward(forward) = gate.on_review_answer(&c, Some(201), SAR_ALLOWED) else {
        panic!("expected forward")
    };
    assert!(forward.remove.contains(&b"x-remote-user".to_vec()));
    assert_eq!(
        forward.set,
        vec![
            (
                "x-remote-user".to_owned(),
                "system:serviceaccount:observability:prometheus-server".to_owned()
            ),
            (
                "x-remote-groups".to_owned(),
                "system:serviceaccounts|system:authenticated".to_owned()
            ),
        ]
    );
}

#[test]
fn every_kind_of_apiserver_trouble_is_503_with_retry_after() {
    let c = config(r#"{"retry_after_seconds":7}"#);
    let answers: [(Option<u16>, &[u8]); 7] = [
        (None, b""),
        (
            Some(503),
            b"upstream connect error or disconnect/reset before headers",
        ),
        (Some(504), b"upstream request timeout"),
        (Some(500), br#"{"kind":"Status","code":500}"#),
        (
            Some(403),
            br#"{"kind":"Status","reason":"Forbidden","code":403}"#,
        ),
        (Some(201), b"<html>"),
        (Some(201), br#"{"kind":"Status"}"#),
    ];
    for (status, body) in answers {
        // At the TokenReview...
        let (mut gate, _) = start(&c, "GET", "/metrics", &[BEARER]);
        let r = reply(gate.on_review_answer(&c, status, body));
        assert_eq!(
            (r.status, r.outcome),
            (503, Outcome::ApiserverError),
            "{status:?}"
        );
        assert!(r.headers.contains(&("retry-after", "7".to_owned())));
        assert!(r.log_detail.is_some());
        // ...and at the SubjectAccessReview.
        let (mut gate, _) = start(&c, "GET", "/metrics", &[BEARER]);
        gate.on_review_answer(&c, Some(201), PROMETHEUS_TR);
        assert_eq!(
            reply(gate.on_review_answer(&c, status, body)).status,
            503,
            "{status:?}"
        );
    }
    let (mut gate, _) = start(&c, "GET", "/metrics", &[BEARER]);
    assert_eq!(
        reply(gate.trouble(&c, "BadArgument".to_owned())).status,
        503
    );
}

#[test]
fn a_stray_answer_never_opens_the_gate() {
    let c = config("{}");
    let mut gate = Gate::default();
    assert_eq!(
        reply(gate.on_review_answer(&c, Some(201), SAR_ALLOWED)).status,
        503
    );
    let (mut gate, _) = start(&c, "GET", "/metrics", &[BEARER]);
    gate.on_review_answer(&c, Some(201), PROMETHEUS_TR);
    gate.on_review_answer(&c, Some(201), SAR_ALLOWED);
    assert_eq!(
        reply(gate.on_review_answer(&c, Some(201), SAR_ALLOWED)).status,
        503
    );
}

#[test]
fn resource_attributes_replace_the_path_check() {
    let c = config(
        r#"{"authorization":{"resource_attributes":{"namespace":"kube-system","resource":"pods","subresource":"metrics"}}}"#,
    );
    let (mut gate, _) = start(&c, "GET", "/metrics", &[BEARER]);
    let call = callout(gate.on_review_answer(&c, Some(201), PROMETHEUS_TR));
    let body: serde_json::Value = serde_json::from_slice(&call.body(&c)).unwrap();
    assert_eq!(body["spec"]["resourceAttributes"]["resource"], "pods");
    assert_eq!(body["spec"]["resourceAttributes"]["verb"], "get");
    assert!(body["spec"].get("nonResourceAttributes").is_none());
    // A resource request's HEAD is a `get`, as kube-apiserver reads it.
    let (mut head, _) = start(&c, "HEAD", "/metrics", &[BEARER]);
    let call = callout(head.on_review_answer(&c, Some(201), PROMETHEUS_TR));
    let body: serde_json::Value = serde_json::from_slice(&call.body(&c)).unwrap();
    assert_eq!(body["spec"]["resourceAttributes"]["verb"], "get");
    let r = reply(gate.on_review_answer(&c, Some(201), SAR_DENIED));
    assert!(
        r.body.contains(r#"get resource "pods/metrics""#),
        "{}",
        r.body
    );
}

#[test]
fn cache_keys_and_lifetimes_come_with_each_question() {
    let c = config(
        r#"{"cache":{"token_review_ttl_seconds":60,"allow_ttl_seconds":300,"deny_ttl_seconds":30}}"#,
    );
    let (mut gate, step) = start(&c, "GET", "/metrics", &[BEARER]);
    let tr = callout(step);
    assert_eq!(tr.table, Table::TokenReview);
    assert_eq!(tr.key, cache::token_review_key("abc.def.ghi", &[]));
    assert_eq!(
        tr.cache_until(&c, &Answer::Token(Authentication::Rejected), NOW_MS),
        Some(NOW_MS + 60_000)
    );
    let sar = callout(gate.on_review_answer(&c, Some(201), PROMETHEUS_TR));
    assert_eq!(sar.table, Table::AccessReview);
    // The key is the question's fields: the same question, the same key; another path, another.
    let (mut again, _) = start(&c, "GET", "/metrics", &[BEARER]);
    let same = callout(again.on_review_answer(&c, Some(201), PROMETHEUS_TR));
    assert_eq!(sar.key, same.key);
    let other_path = config(r#"{"allowed_paths":["/metrics","/metrics/slis"]}"#);
    let (mut other, _) = start(&other_path, "GET", "/metrics/slis", &[BEARER]);
    let other = callout(other.on_review_answer(&other_path, Some(201), PROMETHEUS_TR));
    assert_ne!(sar.key, other.key);
    assert!(!sar.body(&c).is_empty());
    assert_eq!(
        sar.cache_until(&c, &Answer::Access(true), NOW_MS),
        Some(NOW_MS + 300_000)
    );
    assert_eq!(
        sar.cache_until(&c, &Answer::Access(false), NOW_MS),
        Some(NOW_MS + 30_000)
    );
}

#[test]
fn a_cached_answer_drives_the_gate_like_a_fresh_one() {
    let c = config("{}");
    let (mut gate, _) = start(&c, "GET", "/metrics", &[BEARER]);
    let user = User {
        username: "u".into(),
        ..User::default()
    };
    callout(gate.on_answer(&c, Ok(Answer::Token(Authentication::Authenticated(user)))));
    assert!(matches!(
        gate.on_answer(&c, Ok(Answer::Access(true))),
        Step::Forward(_)
    ));
    // Answers of the wrong kind never open the gate.
    let (mut gate, _) = start(&c, "GET", "/metrics", &[BEARER]);
    assert_eq!(
        reply(gate.on_answer(&c, Ok(Answer::Access(true)))).status,
        503
    );
}

#[test]
fn a_verified_client_certificate_is_the_identity_when_trusted() {
    let c = config(r#"{"client_certificates":true}"#);
    let headers = headers(&[BEARER]);
    let mut gate = Gate::default();
    let head = RequestHead {
        method: "GET",
        path: "/metrics",
        headers: &headers,
        peer_subject: Some("CN=scraper,O=monitoring"),
        verified_subject: None,
    };
    // Straight to the SubjectAccessReview: no TokenReview for a certificate.
    let sar = callout(gate.on_request(&c, &head));
    assert_eq!(sar.table, Table::AccessReview);
    let body: serde_json::Value = serde_json::from_slice(&sar.body(&c)).unwrap();
    assert_eq!(body["spec"]["user"], "scraper");
    assert_eq!(
        body["spec"]["groups"],
        serde_json::json!(["monitoring", "system:authenticated"])
    );
    let Step::Forward(forward) = gate.on_answer(&c, Ok(Answer::Access(true))) else {
        panic!("expected forward")
    };
    assert_eq!(
        forward.remove,
        [b"authorization"],
        "the token is still removed"
    );

    // Without the option the certificate is ignored and the token is reviewed.
    let c = config("{}");
    let tr = callout(Gate::default().on_request(&c, &head));
    assert_eq!(tr.table, Table::TokenReview);
}

#[test]
fn callers_credentials_are_forwarded_only_when_configured() {
    let c = config(r#"{"forward_caller_credentials":true}"#);
    let (mut gate, _) = start(&c, "GET", "/metrics", &[BEARER, ("x-remote-user", "x")]);
    gate.on_review_answer(&c, Some(201), PROMETHEUS_TR);
    let Step::Forward(forward) = gate.on_review_answer(&c, Some(201), SAR_ALLOWED) else {
        panic!("expected forward")
    };
    assert_eq!(forward.remove, [b"x-remote-user"]);
}

#[test]
fn statically_allowed_principals_skip_the_access_review() {
    let c = config(
        r#"{"authorization":{"static_allow":{"users":["system:serviceaccount:monitoring:vm"],"groups":["system:monitoring"]}}}"#,
    );
    let by_group = |groups: &[&str]| {
        let user = User {
            username: "someone".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..User::default()
        };
        let (mut gate, _) = start(&c, "GET", "/metrics", &[BEARER]);
        gate.on_answer(&c, Ok(Answer::Token(Authentication::Authenticated(user))))
    };
    assert!(matches!(
        by_group(&["system:authenticated", "system:monitoring"]),
        Step::Forward(_)
    ));
    // Groups are really checked: anyone else still gets a SubjectAccessReview.
    assert_eq!(
        callout(by_group(&["system:authenticated"])).table,
        Table::AccessReview
    );
    let (mut gate, _) = start(&c, "GET", "/metrics", &[BEARER]);
    let vm = User {
        username: "system:serviceaccount:monitoring:vm".into(),
        ..User::default()
    };
    assert!(matches!(
        gate.on_answer(&c, Ok(Answer::Token(Authentication::Authenticated(vm)))),
        Step::Forward(_)
    ));
}

#[test]
fn the_access_log_entry_names_the_user_and_the_reason_never_the_token() {
    let c = config("{}");
    let (gate, step) = start(&c, "GET", "/nope", &[BEARER]);
    assert_eq!(reply(step).status, 404);
    assert_eq!(
        (gate.entry.user.as_deref(), gate.entry.reason.as_str()),
        (None, "path not in the allow-list")
    );

    let (gate, _) = start(&c, "GET", "/metrics", &[BEARER, BEARER]);
    assert_eq!(gate.entry.reason, "several Authorization headers");

    let (mut gate, step) = start(&c, "GET", "/metrics", &[BEARER]);
    callout(step);
    let step = gate.on_review_answer(&c, Some(201), GARBAGE_TR);
    assert_eq!(reply(step).status, 401);
    assert_eq!(
        (gate.entry.user.as_deref(), gate.entry.reason.as_str()),
        (None, "token not authenticated by TokenReview")
    );

    let (mut gate, step) = start(&c, "GET", "/metrics", &[BEARER]);
    callout(step);
    callout(gate.on_review_answer(&c, Some(201), PROMETHEUS_TR));
    assert_eq!(
        reply(gate.on_review_answer(&c, Some(201), SAR_DENIED)).status,
        403
    );
    let user = "system:serviceaccount:observability:prometheus-server";
    assert_eq!(
        (gate.entry.user.as_deref(), gate.entry.reason.as_str()),
        (Some(user), "denied by SubjectAccessReview")
    );

    let (mut gate, step) = start(&c, "GET", "/metrics", &[BEARER]);
    callout(step);
    callout(gate.on_review_answer(&c, Some(201), PROMETHEUS_TR));
    assert!(matches!(
        gate.on_review_answer(&c, Some(201), SAR_ALLOWED),
        Step::Forward(_)
    ));
    assert_eq!(gate.entry.reason, "allowed by SubjectAccessReview");
    assert!(!format!("{:?}", gate.entry).contains("abc.def.ghi"));

    let (mut gate, step) = start(&c, "GET", "/metrics", &[BEARER]);
    callout(step);
    reply(gate.on_answer(&c, Err(ApiserverTrouble("apiserver timeout".into()))));
    assert_eq!(gate.entry.reason, "apiserver timeout");
}

#[test]
fn a_token_verified_locally_skips_the_token_review_only_when_configured() {
    let sub = "system:serviceaccount:observability:prometheus-server";
    let ask = |c: &Config, pairs: &[(&str, &str)], verified: Option<&str>| {
        let headers = headers(pairs);
        let mut gate = Gate::default();
        let head = RequestHead {
            method: "GET",
            path: "/metrics",
            headers: &headers,
            peer_subject: None,
            verified_subject: verified,
        };
        (gate.on_request(c, &head), gate)
    };
    let local = config(r#"{"local_token_verification":true}"#);
    // Straight to the SubjectAccessReview, with the user the apiserver would make.
    let (step, mut gate) = ask(&local, &[BEARER], Some(sub));
    let sar = callout(step);
    assert_eq!(sar.table, Table::AccessReview);
    let body: serde_json::Value = serde_json::from_slice(&sar.body(&local)).unwrap();
    assert_eq!(body["spec"]["user"], sub);
    assert_eq!(
        body["spec"]["groups"],
        serde_json::json!([
            "system:serviceaccounts",
            "system:serviceaccounts:observability",
            "system:authenticated"
        ])
    );
    let Step::Forward(forward) = gate.on_answer(&local, Ok(Answer::Access(true))) else {
        panic!("expected forward")
    };
    assert_eq!(
        forward.remove,
        [b"authorization"],
        "the token is still removed"
    );
    assert_eq!(gate.entry.user.as_deref(), Some(sub));

    // Not verified, or not a ServiceAccount: the TokenReview, as always.
    for verified in [None, Some("system:admin"), Some("")] {
        assert_eq!(
            callout(ask(&local, &[BEARER], verified).0).table,
            Table::TokenReview,
            "{verified:?}"
        );
    }
    // Without the option the metadata is not trusted.
    assert_eq!(
        callout(ask(&config("{}"), &[BEARER], Some(sub)).0).table,
        Table::TokenReview
    );
    // The request still needs exactly one bearer token.
    assert_eq!(reply(ask(&local, &[], Some(sub)).0).status, 401);
    assert_eq!(
        reply(ask(&local, &[BEARER, BEARER], Some(sub)).0).status,
        401
    );
}
