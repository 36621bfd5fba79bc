//! TLS on the component listeners, end to end with the real filter: a scrape verified against the
//! serving CA under the Service's name, a certificate renewed in the mounted-Secret directory
//! (kubelet's `..data` swap) served without restarting Envoy, and client certificates verified
//! against the client CA when the listener asks for them.

use std::time::{Duration, Instant};

use metrics_gate_envoy::{ClientCertificates, ListenerTls, Preset};
use metrics_gate_host_tests::stack::{cert_der, LocalStack, StackOptions, SERVER_NAME};
use metrics_gate_host_tests::tls::TestCa;
use metrics_gate_host_tests::tokens::ServiceAccount;

fn tls_stack(client_certificates: ClientCertificates) -> LocalStack {
    LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeScheduler, Preset::Etcd],
        listener_tls: ListenerTls::Tls {
            client_certificates,
        },
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn scrape_over_tls_and_a_rotated_certificate_is_served_without_restart() {
    let stack = tls_stack(ClientCertificates::Off);
    let token = stack.prometheus_token();
    let auth = format!("Bearer {token}");
    let first =
        cert_der(&String::from_utf8(stack.tls_dir.read("tls.crt").unwrap()).unwrap()).unwrap();

    for preset in [Preset::KubeScheduler, Preset::Etcd] {
        let r = stack
            .https_request(
                preset,
                SERVER_NAME,
                None,
                "GET",
                "/metrics",
                &[("authorization", &auth)],
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}: {}", preset.name(), r.text());
        assert_eq!(r.peer_certificate, first);
        // The filter still gates: no token, 401.
        let r = stack
            .https_request(preset, SERVER_NAME, None, "GET", "/metrics", &[])
            .unwrap();
        assert_eq!(r.status, 401, "{}", r.text());
    }
    // The certificate names the Service and the node IP, nothing else.
    assert!(stack
        .https_request(Preset::Etcd, "other.example", None, "GET", "/metrics", &[])
        .is_err());
    assert!(stack
        .https_request(
            Preset::Etcd,
            "127.0.0.2",
            None,
            "GET",
            "/metrics",
            &[("authorization", &auth)]
        )
        .is_ok());
    // Another CA's client does not trust it.
    let other = TestCa::new("other");
    assert!(metrics_gate_host_tests::stack::https_request(
        stack.addr(Preset::Etcd),
        SERVER_NAME,
        other.cert_pem(),
        None,
        "GET",
        "/metrics",
        &[],
    )
    .is_err());
    // Plain HTTP on a TLS listener gets nowhere.
    let plain = metrics_gate_host_tests::raw_http::request(
        stack.addr(Preset::Etcd),
        "GET",
        "/metrics",
        &[],
    );
    assert!(!matches!(plain, Ok(ref r) if r.status == 200), "{plain:?}");

    let pid = stack.envoy.pid();
    let rotated = stack.rotate_serving_cert().unwrap();
    let second = cert_der(&rotated.cert_pem).unwrap();
    assert_ne!(first, second);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = stack
            .https_request(
                Preset::KubeScheduler,
                SERVER_NAME,
                None,
                "GET",
                "/metrics",
                &[("authorization", &auth)],
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        if r.peer_certificate == second {
            break;
        }
        assert_eq!(
            r.peer_certificate, first,
            "neither the old nor the new certificate"
        );
        assert!(
            Instant::now() < deadline,
            "the rotated certificate is not served after 15 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every listener serves it, and it is the same Envoy.
    let r = stack
        .https_request(
            Preset::Etcd,
            SERVER_NAME,
            None,
            "GET",
            "/metrics",
            &[("authorization", &auth)],
        )
        .unwrap();
    assert_eq!((r.status, r.peer_certificate == second), (200, true));
    assert_eq!(stack.envoy.pid(), pid);
}

#[test]
fn optional_client_certificates_are_an_identity_and_verified_when_presented() {
    let stack = tls_stack(ClientCertificates::Optional);
    let user = ServiceAccount::prometheus_server().username();
    let allowed = stack.client_cert(&user, &["system:serviceaccounts"]);
    // A verified certificate of an authorized user is enough, no token needed.
    let r = stack
        .https_request(
            Preset::Etcd,
            SERVER_NAME,
            Some(&allowed),
            "GET",
            "/metrics",
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // A certificate of a user without a binding: 403.
    let nobody = stack.client_cert(&ServiceAccount::nobody().username(), &[]);
    let r = stack
        .https_request(
            Preset::Etcd,
            SERVER_NAME,
            Some(&nobody),
            "GET",
            "/metrics",
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    // No certificate: a bearer token still works.
    let auth = format!("Bearer {}", stack.prometheus_token());
    let r = stack
        .https_request(
            Preset::Etcd,
            SERVER_NAME,
            None,
            "GET",
            "/metrics",
            &[("authorization", &auth)],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // A certificate from another CA fails the handshake.
    let forged = TestCa::new("forger").issue_client(&user, &[]);
    let r = stack.https_request(
        Preset::Etcd,
        SERVER_NAME,
        Some(&forged),
        "GET",
        "/metrics",
        &[],
    );
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn required_client_certificates_refuse_connections_without_one() {
    let stack = tls_stack(ClientCertificates::Required);
    let auth = format!("Bearer {}", stack.prometheus_token());
    let r = stack.https_request(
        Preset::Etcd,
        SERVER_NAME,
        None,
        "GET",
        "/metrics",
        &[("authorization", &auth)],
    );
    assert!(r.is_err(), "{r:?}");
    let cert = stack.client_cert(&ServiceAccount::prometheus_server().username(), &[]);
    let r = stack
        .https_request(
            Preset::Etcd,
            SERVER_NAME,
            Some(&cert),
            "GET",
            "/metrics",
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn expired_client_certificates_fail_and_a_certificate_outranks_a_token() {
    let stack = tls_stack(ClientCertificates::Optional);
    let user = ServiceAccount::prometheus_server().username();
    let expired = stack.client_ca.issue_expired_client(&user, &[]);
    let r = stack.https_request(Preset::Etcd, SERVER_NAME, Some(&expired), "GET", "/metrics", &[]);
    assert!(r.is_err(), "an expired certificate was accepted: {r:?}");

    // A verified certificate and a token together: the certificate is the identity (kube-apiserver
    // asks x509 first), so nobody's certificate with prometheus-server's token is 403.
    let nobody = stack.client_cert(&ServiceAccount::nobody().username(), &[]);
    let auth = format!("Bearer {}", stack.prometheus_token());
    let r = stack
        .https_request(Preset::Etcd, SERVER_NAME, Some(&nobody), "GET", "/metrics", &[("authorization", &auth)])
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("system:serviceaccount:observability:nobody"), "{}", r.text());
    assert_eq!(stack.component(Preset::Etcd).count(), 0);
}
