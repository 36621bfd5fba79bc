//! The fake components against metrics-probes.txt.

use super::*;
use crate::client::{send, Tls};
use crate::tokens::{ServiceAccount, TokenOptions};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn plain_components_serve_metrics_and_record_headers() {
    for kind in [ComponentKind::KubeProxy, ComponentKind::Etcd] {
        let c = FakeComponent::start(kind, loopback(), ComponentOptions::default()).unwrap();
        let r = send(
            c.addr(),
            None,
            "GET",
            "/metrics",
            &[("x-remote-user", "mallory")],
            "",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some(METRICS_CONTENT_TYPE));
        assert_eq!(r.body, kind.payload());
        let h = send(c.addr(), None, "GET", "/healthz", &[], "")
            .await
            .unwrap();
        assert_eq!((h.status, h.text().as_str()), (200, "ok"));
        assert_eq!(
            send(c.addr(), None, "GET", "/debug/pprof", &[], "")
                .await
                .unwrap()
                .status,
            404
        );
        let head = send(c.addr(), None, "HEAD", "/metrics", &[], "")
            .await
            .unwrap();
        assert_eq!((head.status, head.body.len()), (200, 0));
        assert_eq!(c.count(), 4);
        let reqs = c.requests();
        assert_eq!(reqs[0].header("x-remote-user"), Some("mallory"));
        assert_eq!(reqs[0].path_and_query, "/metrics");
        assert!(reqs[1].header("x-remote-user").is_none());
    }
    assert_eq!(ComponentKind::Etcd.payload().len(), 146_757);
}

#[tokio::test]
async fn secure_components_check_the_token_like_the_probes() {
    let issuer = TokenIssuer::shared();
    let proxy = ServiceAccount::metrics_gate();
    let verifier = allow_users(issuer.clone(), &[&proxy.username()]);
    let c = FakeComponent::start(
        ComponentKind::KubeScheduler,
        loopback(),
        ComponentOptions::with_verifier(verifier),
    )
    .unwrap();
    let ca = c.ca_pem().unwrap().to_string();
    let tls = Some(Tls {
        ca_pem: &ca,
        server_name: "127.0.0.1",
    });
    let addr = c.addr();
    let get = |auth: Option<String>| async move {
        let mut headers = vec![("user-agent", "curl/8.5.0".to_string())];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        send(addr, tls, "GET", "/metrics", &h, "").await.unwrap()
    };

    let ok = issuer.mint(&proxy, TokenOptions::default());
    let r = get(Some(format!("Bearer {ok}"))).await;
    assert_eq!((r.status, r.body.len()), (200, 108_658));
    assert_eq!(r.header("content-type"), Some(METRICS_CONTENT_TYPE));

    let nobody = issuer.mint(&ServiceAccount::nobody(), TokenOptions::default());
    let r = get(Some(format!("Bearer {nobody}"))).await;
    assert_eq!((r.status, r.body.len()), (403, 250));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = get(Some("Bearer garbage".into())).await;
    assert_eq!((r.status, r.body.len()), (401, 157));
    let r = get(None).await;
    assert_eq!((r.status, r.body.len()), (403, 224));
    // /healthz is always allowed.
    let r = send(addr, tls, "GET", "/healthz", &[], "").await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));

    assert_eq!(c.count(), 5);
    assert_eq!(
        c.requests()[0].header("authorization"),
        Some(format!("Bearer {ok}").as_str())
    );
    assert_eq!(
        c.requests().iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![200, 403, 401, 403, 200]
    );
}

#[tokio::test]
async fn secure_component_without_verifier_and_compact_errors() {
    let c = FakeComponent::start(
        ComponentKind::KubeControllerManager,
        loopback(),
        ComponentOptions::default(),
    )
    .unwrap();
    let ca = c.ca_pem().unwrap().to_string();
    let r = send(
        c.addr(),
        Some(Tls {
            ca_pem: &ca,
            server_name: "localhost",
        }),
        "GET",
        "/metrics",
        &[("user-agent", "Prometheus/2.45")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    assert!(r.text().starts_with("{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"forbidden: User \\\"system:anonymous\\\" cannot get path \\\"/metrics\\\"\""));
    assert!(r.text().ends_with("}\n"));
}
