//! The mock against the kube-apiserver 1.28 captures, over real TLS.

use std::time::Instant;

use serde_json::{json, Value};

use super::*;
use crate::client::{send, HttpResponse, Tls};
use crate::tokens::{ServiceAccount, TokenOptions};

const UA: &str = "metrics-proxy/v0.1.0 (linux/amd64)";

fn reference(name: &str) -> Value {
    let path = format!(
        "{}/fixtures/kube-apiserver-1.28/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn proxy_token(api: &MockApiserver) -> String {
    api.issuer()
        .mint(&ServiceAccount::metrics_gate(), TokenOptions::default())
}

async fn post(
    api: &MockApiserver,
    path: &str,
    caller: Option<&str>,
    body: &Value,
) -> anyhow::Result<HttpResponse> {
    let auth = caller.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json"), ("user-agent", UA)];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let tls = Tls {
        ca_pem: api.ca_pem(),
        server_name: "kubernetes.default.svc",
    };
    send(
        api.addr(),
        Some(tls),
        "POST",
        path,
        &headers,
        serde_json::to_vec(body).unwrap(),
    )
    .await
}

fn token_review(token: &str, audiences: &[&str]) -> Value {
    let mut spec = json!({ "token": token });
    if !audiences.is_empty() {
        spec["audiences"] = json!(audiences);
    }
    json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec })
}

/// The reference with the redacted token put back and the capture time replaced by ours.
fn expected(mut reference: Value, got: &Value, token: Option<&str>) -> Value {
    if let Some(t) = token {
        reference["spec"]["token"] = t.into();
    }
    reference["metadata"]["managedFields"][0]["time"] =
        got["metadata"]["managedFields"][0]["time"].clone();
    reference
}

#[tokio::test]
async fn token_reviews_match_the_captures() {
    let api = MockApiserver::start().unwrap();
    let issuer = api.issuer();
    let proxy = proxy_token(&api);

    let t = issuer.mint(
        &ServiceAccount::prometheus_server(),
        TokenOptions::default(),
    );
    let r = post(
        &api,
        TOKENREVIEWS_PATH,
        Some(&proxy),
        &token_review(&t, &[]),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let text = r.text();
    assert!(text.starts_with(r#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null,"managedFields":[{"manager":"metrics-proxy","operation":"Update""#), "{text}");
    assert!(text.ends_with("}\n"));
    let got = r.json().unwrap();
    assert_eq!(
        got,
        expected(
            reference("tokenreview-prometheus-server.response.json"),
            &got,
            Some(&t)
        )
    );

    let t = issuer.mint(&ServiceAccount::nobody(), TokenOptions::default());
    let got = post(
        &api,
        TOKENREVIEWS_PATH,
        Some(&proxy),
        &token_review(&t, &[]),
    )
    .await
    .unwrap()
    .json()
    .unwrap();
    assert_eq!(
        got,
        expected(
            reference("tokenreview-nobody.response.json"),
            &got,
            Some(&t)
        )
    );

    let got = post(
        &api,
        TOKENREVIEWS_PATH,
        Some(&proxy),
        &token_review("garbage", &[]),
    )
    .await
    .unwrap()
    .json()
    .unwrap();
    assert_eq!(
        got,
        expected(
            reference("tokenreview-garbage.response.json"),
            &got,
            Some("garbage")
        )
    );
    assert!(got["status"].get("authenticated").is_none());

    // The wrong-audience capture was made with curl: compare all but the managedFields manager.
    let t = issuer.mint(
        &ServiceAccount::prometheus_server(),
        TokenOptions::default(),
    );
    let mut got = post(
        &api,
        TOKENREVIEWS_PATH,
        Some(&proxy),
        &token_review(&t, &["prometheus"]),
    )
    .await
    .unwrap()
    .json()
    .unwrap();
    got["metadata"]["managedFields"][0]["manager"] = "curl".into();
    assert_eq!(
        got,
        expected(
            reference("tokenreview-prometheus-server-wrong-audience.response.json"),
            &got,
            Some(&t)
        )
    );

    // Expired tokens and custom audiences.
    let t = issuer.mint(
        &ServiceAccount::prometheus_server(),
        TokenOptions::expired(),
    );
    let got = post(
        &api,
        TOKENREVIEWS_PATH,
        Some(&proxy),
        &token_review(&t, &[]),
    )
    .await
    .unwrap()
    .json()
    .unwrap();
    assert_eq!(
        got["status"],
        json!({"user": {}, "error": "[invalid bearer token, service account token has expired]"})
    );
    let t = issuer.mint(
        &ServiceAccount::prometheus_server(),
        TokenOptions::default().audiences(&["metrics-gate"]),
    );
    let got = post(
        &api,
        TOKENREVIEWS_PATH,
        Some(&proxy),
        &token_review(&t, &["metrics-gate"]),
    )
    .await
    .unwrap()
    .json()
    .unwrap();
    assert_eq!(got["status"]["authenticated"], true);
    assert_eq!(got["status"]["audiences"], json!(["metrics-gate"]));
    assert_eq!(got["spec"]["audiences"], json!(["metrics-gate"]));

    // Recording: caller by name, tokens only as digests.
    let calls = api.calls();
    assert_eq!(calls.len(), 6);
    assert_eq!(api.count(CallKind::TokenReview), 6);
    assert!(calls
        .iter()
        .all(|c| c.caller.as_deref() == Some("system:serviceaccount:metrics-gate:metrics-gate")));
    assert_eq!(calls[2].spec["token"], token_digest("garbage"));
    assert_eq!(calls[5].spec["audiences"], json!(["metrics-gate"]));
    assert!(calls
        .iter()
        .all(|c| c.status == 201 && !c.spec["token"].as_str().unwrap().contains('.')));
}

#[tokio::test]
async fn subject_access_reviews_match_the_captures() {
    let api = MockApiserver::start().unwrap();
    let proxy = proxy_token(&api);
    let request = reference("sar-prometheus-server.request.json");
    let r = post(&api, SUBJECTACCESSREVIEWS_PATH, Some(&proxy), &request)
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    let got = r.json().unwrap();
    // Exact, managedFields included (same manager, same fieldsV1), only the time differs.
    assert_eq!(
        got,
        expected(reference("sar-prometheus-server.response.json"), &got, None)
    );

    for name in ["sar-nobody.response.json", "sar-anonymous.response.json"] {
        let want = reference(name);
        let req = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": want["spec"]});
        let got = post(&api, SUBJECTACCESSREVIEWS_PATH, Some(&proxy), &req)
            .await
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(got, expected(want, &got, None), "{name}");
        assert_eq!(got["status"], json!({"allowed": false}));
    }
    assert_eq!(api.count(CallKind::SubjectAccessReview), 3);
    assert_eq!(
        api.calls()[0].spec["user"],
        "system:serviceaccount:observability:prometheus-server"
    );

    // Resource attributes are evaluated too (nobody may create tokenreviews but metrics-gate may).
    let req = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
        "user": "system:serviceaccount:metrics-gate:metrics-gate",
        "resourceAttributes": {"verb": "create", "group": "authentication.k8s.io", "resource": "tokenreviews"}}});
    let got = post(&api, SUBJECTACCESSREVIEWS_PATH, Some(&proxy), &req)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(got["status"]["allowed"], true);
    assert_eq!(
        got["status"]["reason"],
        "RBAC: allowed by ClusterRoleBinding \"metrics-gate-auth-delegator\" of ClusterRole \"metrics-gate-auth-delegator\" to ServiceAccount \"metrics-gate/metrics-gate\""
    );
    // Invalid spec: 400 Status, not a review.
    let bad = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {"user": "x"}});
    assert_eq!(
        post(&api, SUBJECTACCESSREVIEWS_PATH, Some(&proxy), &bad)
            .await
            .unwrap()
            .status,
        400
    );
}

#[tokio::test]
async fn callers_must_authenticate_and_be_allowed() {
    let api = MockApiserver::start().unwrap();
    let issuer = api.issuer();
    let body = token_review("whatever", &[]);

    let r = post(&api, TOKENREVIEWS_PATH, None, &body).await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json().unwrap(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401})
    );
    assert_eq!(
        post(&api, TOKENREVIEWS_PATH, Some("garbage"), &body)
            .await
            .unwrap()
            .status,
        401
    );
    let expired = issuer.mint(&ServiceAccount::metrics_gate(), TokenOptions::expired());
    assert_eq!(
        post(&api, TOKENREVIEWS_PATH, Some(&expired), &body)
            .await
            .unwrap()
            .status,
        401
    );

    let nobody = issuer.mint(&ServiceAccount::nobody(), TokenOptions::default());
    let r = post(&api, TOKENREVIEWS_PATH, Some(&nobody), &body)
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json().unwrap(),
        reference("tokenreview-called-by-nobody.response.json")
    );
    let r = post(
        &api,
        SUBJECTACCESSREVIEWS_PATH,
        Some(&nobody),
        &reference("sar-prometheus-server.request.json"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json().unwrap()["details"],
        json!({"group": "authorization.k8s.io", "kind": "subjectaccessreviews"})
    );

    // Other paths, wrong content type.
    let proxy = proxy_token(&api);
    assert_eq!(
        post(&api, "/api/v1/namespaces", Some(&proxy), &body)
            .await
            .unwrap()
            .status,
        404
    );
    let tls = Tls {
        ca_pem: api.ca_pem(),
        server_name: "127.0.0.1",
    };
    let auth = format!("Bearer {proxy}");
    let r = send(
        api.addr(),
        Some(tls),
        "POST",
        TOKENREVIEWS_PATH,
        &[("authorization", &auth)],
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 415);

    let calls = api.calls();
    assert_eq!(calls[0].caller, None);
    assert_eq!(
        calls[3].caller.as_deref(),
        Some("system:serviceaccount:observability:nobody")
    );
    assert_eq!(calls[3].spec["token"], token_digest("whatever"));
    assert_eq!(api.count(CallKind::Other), 1);
}

#[tokio::test]
async fn faults() {
    let api = MockApiserver::start().unwrap();
    let proxy = proxy_token(&api);
    let t = api.issuer().mint(
        &ServiceAccount::prometheus_server(),
        TokenOptions::default(),
    );
    let body = token_review(&t, &[]);

    api.set_fault(Fault::ServerError);
    let r = post(&api, TOKENREVIEWS_PATH, Some(&proxy), &body)
        .await
        .unwrap();
    assert_eq!(r.status, 500);
    let s = r.json().unwrap();
    assert_eq!(
        (s["kind"].as_str(), s["code"].as_u64(), s["reason"].as_str()),
        (Some("Status"), Some(500), Some("InternalError"))
    );

    api.set_fault(Fault::Malformed);
    let r = post(&api, TOKENREVIEWS_PATH, Some(&proxy), &body)
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    assert!(r.json().is_err());

    api.set_fault(Fault::WrongShape);
    let r = post(&api, TOKENREVIEWS_PATH, Some(&proxy), &body)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json().unwrap()),
        (201, json!({"kind": "Status"}))
    );

    api.set_fault(Fault::ForbiddenToProxy);
    let r = post(&api, SUBJECTACCESSREVIEWS_PATH, Some(&proxy), &body)
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json().unwrap()["message"],
        "subjectaccessreviews.authorization.k8s.io is forbidden: User \"system:serviceaccount:metrics-gate:metrics-gate\" cannot create resource \"subjectaccessreviews\" in API group \"authorization.k8s.io\" at the cluster scope"
    );

    // Slow: each request waits, but concurrently (serialised they would take >= 1.2 s).
    api.set_fault(Fault::Slow(Duration::from_millis(600)));
    let start = Instant::now();
    let (a, b) = tokio::join!(
        post(&api, TOKENREVIEWS_PATH, Some(&proxy), &body),
        post(&api, TOKENREVIEWS_PATH, Some(&proxy), &body)
    );
    let elapsed = start.elapsed();
    assert_eq!((a.unwrap().status, b.unwrap().status), (201, 201));
    assert!(
        elapsed >= Duration::from_millis(600) && elapsed < Duration::from_millis(1150),
        "{elapsed:?}"
    );

    // Down: refused, then back on the same port.
    let port = api.port();
    api.set_fault(Fault::Down);
    let err = tokio::net::TcpStream::connect(api.addr())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    api.set_fault(Fault::None);
    assert_eq!(api.port(), port);
    let got = post(&api, TOKENREVIEWS_PATH, Some(&proxy), &body)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(got["status"]["authenticated"], true);

    // Calls under faults are recorded too (refused connections obviously not).
    let statuses: Vec<u16> = api.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![500, 201, 201, 403, 201, 201, 201]);
    assert_eq!(api.calls()[0].spec["token"], token_digest(&t));
}

#[tokio::test]
async fn down_drops_established_connections() {
    let api = MockApiserver::start().unwrap();
    let proxy = proxy_token(&api);
    let tcp = tokio::net::TcpStream::connect(api.addr()).await.unwrap();
    let tls = crate::tls::tls_connector(api.ca_pem()).unwrap();
    let stream = tls
        .connect(crate::tls::server_name("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = || {
        Request::post(TOKENREVIEWS_PATH)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {proxy}"))
            .body(http_body_util::Full::new(Bytes::from(
                serde_json::to_vec(&token_review("x", &[])).unwrap(),
            )))
            .unwrap()
    };
    assert_eq!(sender.send_request(req()).await.unwrap().status(), 201);
    api.set_fault(Fault::Down);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(sender.send_request(req()).await.is_err());
}
