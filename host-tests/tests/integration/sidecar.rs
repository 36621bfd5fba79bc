//! The sidecar use case (manifests/examples/sidecar/): a controller whose metrics listen on
//! 127.0.0.1 inside its pod, and the real Envoy with the same .wasm in front of it, configured by
//! the builder that renders envoy/examples/sidecar.yaml (`metrics_gate_envoy::examples::sidecar`)
//! with only this test's addresses and files put in. The proxy reviews callers with the pod's own
//! ServiceAccount, authorized by the example's RBAC (system:auth-delegator).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use metrics_gate_envoy::{
    examples, render, sds_resource, sds_serving_certificate, Apiserver, ListenerTls, TlsFiles,
    UpstreamCredentials, UpstreamTls, SDS_FILE, SERVING_CERT_FILE,
};
use metrics_gate_host_tests::apiserver::{CallKind, MockApiserver, MockApiserverOptions};
use metrics_gate_host_tests::components::{ComponentKind, ComponentOptions, FakeComponent};
use metrics_gate_host_tests::envoy_process::{EnvoyOptions, EnvoyProcess};
use metrics_gate_host_tests::rbac::{default_rbac_files, manifests_dir};
use metrics_gate_host_tests::stack::{https_request, TlsResponse, WasmBuild};
use metrics_gate_host_tests::tls::{write_pem, TestCa};
use metrics_gate_host_tests::token_dir::TokenDir;
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};

/// The Service name the example's certificate is for (manifests/examples/sidecar/deployment.yaml).
const SERVER_NAME: &str = "my-controller-metrics.my-controller.svc";
/// The pod's IP, as the listener would see it (loopback here, beside the controller's 127.0.0.1).
const POD_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const BODY: &str = "# HELP my_controller_reconcile_total Reconciliations.\n\
                    # TYPE my_controller_reconcile_total counter\n\
                    my_controller_reconcile_total{result=\"success\"} 42\n";

/// Kubernetes's built-in `system:auth-delegator` ClusterRole, which the example binds the pod's
/// ServiceAccount to; the mock apiserver knows only the RBAC it is given.
const AUTH_DELEGATOR: &str = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:auth-delegator
rules:
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
- apiGroups: [authorization.k8s.io]
  resources: [subjectaccessreviews]
  verbs: [create]
";

struct Sidecar {
    apiserver: MockApiserver,
    controller: FakeComponent,
    envoy: EnvoyProcess,
    serving_ca: TestCa,
    listener: SocketAddr,
    _credentials: TokenDir,
    _tls: TokenDir,
    _files: tempfile::TempDir,
}

impl Sidecar {
    fn start() -> Sidecar {
        let files = tempfile::tempdir().unwrap();
        let builtin = files.path().join("auth-delegator.yaml");
        std::fs::write(&builtin, AUTH_DELEGATOR).unwrap();
        let mut rbac_files = default_rbac_files();
        rbac_files.push(manifests_dir().join("examples/sidecar/rbac.yaml"));
        rbac_files.push(builtin);
        let apiserver = MockApiserver::start_with(MockApiserverOptions {
            rbac_files,
            ..Default::default()
        })
        .unwrap();
        let apiserver_ca = write_pem(files.path(), "ca.crt", apiserver.ca_pem()).unwrap();

        // The controller: plain HTTP metrics on the pod's loopback.
        let controller = FakeComponent::start(
            ComponentKind::KubeProxy,
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            ComponentOptions {
                payload: Some(BODY.into()),
                ..Default::default()
            },
        )
        .unwrap();

        // The Secret my-controller-metrics-tls, and the projected credentials volume: the pod's
        // token and the two SDS files, kubelet-style.
        let serving_ca = TestCa::new("my-controller-metrics-ca");
        let serving = serving_ca.issue_server(&[SERVER_NAME], &[POD_IP]);
        let tls = TokenDir::temp().unwrap();
        tls.write(&[
            ("tls.crt", serving.cert_pem.as_bytes()),
            ("tls.key", serving.key_pem.as_bytes()),
        ])
        .unwrap();
        let credentials = TokenDir::temp().unwrap();
        let token = apiserver
            .issuer()
            .mint(&pod_account(), TokenOptions::default());
        let token_file = credentials.file("token");
        credentials
            .write(&[
                ("token", token.as_bytes()),
                (
                    SDS_FILE,
                    sds_resource(&token_file.to_string_lossy()).as_bytes(),
                ),
                (
                    SERVING_CERT_FILE,
                    sds_serving_certificate(&tls.path().to_string_lossy()).as_bytes(),
                ),
            ])
            .unwrap();

        // The shipped sidecar configuration, with this test's addresses and files.
        let mut stack = examples::sidecar();
        assert_eq!(stack.components.len(), 1, "the sidecar fronts one controller");
        let c = &mut stack.components[0];
        assert_eq!(c.upstream, SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)));
        assert!(matches!(c.listener_tls, ListenerTls::Tls { .. }), "the example serves TLS");
        assert!(matches!(c.upstream_tls, UpstreamTls::Plain));
        assert!(matches!(c.upstream_credentials, UpstreamCredentials::None));
        c.upstream = controller.addr();
        c.listen_port = 0;
        stack.node_ip = POD_IP.into();
        stack.admin_socket = files.path().join("admin.sock").to_string_lossy().into_owned();
        if let Some(own) = &mut stack.own_listener {
            own.port = 0;
        }
        stack.wasm = metrics_gate_envoy::WasmCode::File(WasmBuild::Release.path().unwrap().to_string_lossy().into_owned());
        stack.apiserver = Apiserver {
            address: "127.0.0.1".into(),
            port: apiserver.port(),
            ca_file: apiserver_ca.to_string_lossy().into_owned(),
            ..stack.apiserver
        };
        stack.credentials_dir = credentials.path().to_string_lossy().into_owned();
        stack.tls = TlsFiles {
            cert_dir: tls.path().to_string_lossy().into_owned(),
            client_ca_file: None,
        };
        let name = c.name.clone();
        let envoy = EnvoyProcess::start(&render(&stack), EnvoyOptions::default()).unwrap();
        let listener = envoy.listener_addr(&name).unwrap();
        Sidecar {
            apiserver,
            controller,
            envoy,
            serving_ca,
            listener,
            _credentials: credentials,
            _tls: tls,
            _files: files,
        }
    }

    fn get(&self, path: &str, token: Option<&str>) -> TlsResponse {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        https_request(
            self.listener,
            SERVER_NAME,
            self.serving_ca.cert_pem(),
            None,
            "GET",
            path,
            &headers,
        )
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}\n{}", self.envoy.log_tail(30)))
    }
}

/// The example Deployment's ServiceAccount (manifests/examples/sidecar/rbac.yaml).
fn pod_account() -> ServiceAccount {
    ServiceAccount::new("my-controller", "my-controller")
}

#[test]
fn the_sidecar_admits_only_authorized_metrics_scrapes() {
    let s = Sidecar::start();
    let issuer = s.apiserver.issuer();
    let prometheus = issuer.mint(&ServiceAccount::prometheus_server(), TokenOptions::default());
    let nobody = issuer.mint(&ServiceAccount::nobody(), TokenOptions::default());

    let r = s.get("/metrics", Some(&prometheus));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), BODY);

    let r = s.get("/metrics", None);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")));

    let r = s.get("/metrics", Some(&nobody));
    assert_eq!(r.status, 403, "{}", r.text());

    let r = s.get("/debug/pprof/", Some(&prometheus));
    assert_eq!(r.status, 404, "{}", r.text());
    let r = s.get("/debug", Some(&prometheus));
    assert_eq!(r.status, 404, "{}", r.text());

    // Only the authorized scrape reached the controller, and without the caller's credentials.
    let seen = s.controller.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path_and_query, "/metrics");
    assert!(seen[0].header_values("authorization").is_empty(), "{:?}", seen[0].headers);
    assert!(seen[0].headers.iter().all(|(_, v)| !v.contains(&prometheus)));

    // The reviews were made with the pod's own ServiceAccount, which the example's RBAC allows.
    let calls = s.apiserver.calls();
    assert!(s.apiserver.count(CallKind::TokenReview) >= 1);
    assert!(s.apiserver.count(CallKind::SubjectAccessReview) >= 1);
    for c in &calls {
        assert_eq!(c.caller.as_deref(), Some(pod_account().username().as_str()), "{c:?}");
        assert_eq!(c.status, 201, "{c:?}");
    }
}
