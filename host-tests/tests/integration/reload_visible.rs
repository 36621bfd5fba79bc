//! A reload of the proxy's token or of the serving certificate shows — never the secret itself:
//! as Envoy's SDS counters on the gate's own /metrics (what an alert watches), and, with Envoy's
//! `config` logger at debug (`--component-log-level config:debug`, documented), as a log line
//! naming the file that changed. Envoy 1.40 logs nothing about it at info level.

use std::time::{Duration, Instant};

use metrics_gate_envoy::{ListenerTls, Preset};
use metrics_gate_host_tests::envoy_process::EnvoyOptions;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};

#[test]
fn token_and_certificate_reloads_are_counted_and_logged_without_the_secret() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy],
        listener_tls: ListenerTls::default(),
        envoy: EnvoyOptions {
            extra_args: vec!["--component-log-level".into(), "config:debug".into()],
            ..EnvoyOptions::default()
        },
        ..StackOptions::default()
    })
    .unwrap();
    let token_updates = || stack.counter("sds.serviceaccount-token.update_success");
    // The certificate's files are watched inside the secret: each new pair updates the listeners'
    // TLS contexts.
    let cert_updates = || stack.counter("listener.kube-proxy.server_ssl_socket_factory.ssl_context_update_by_sds");
    let (tokens_before, certs_before) = (token_updates(), cert_updates());

    let new_token = stack.token(&ServiceAccount::metrics_gate(), TokenOptions::default());
    stack.rotate_proxy_token(&new_token).unwrap();
    stack.rotate_serving_cert().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (token_updates() <= tokens_before || cert_updates() <= certs_before) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(token_updates() > tokens_before, "the token reload was not counted");
    assert!(cert_updates() > certs_before, "the certificate reload was not counted");

    stack.envoy.wait_for_log("Filesystem config update accepted for", Duration::from_secs(5)).unwrap();
    let log = stack.envoy.log();
    assert!(log.lines().any(|l| l.contains("Filesystem config update accepted for") && l.contains("sds.yaml")), "no line names the token's SDS file");
    assert!(!log.contains(&new_token), "the token reached the log");
    let key = std::fs::read_to_string(stack.tls_dir.path().join("tls.key")).unwrap();
    let key_body = key.lines().nth(1).unwrap();
    assert!(!log.contains(key_body), "the serving key reached the log");

    // The same counters reach Prometheus through the gate's own listener.
    let (status, metrics) = stack.own_metrics(&stack.prometheus_token());
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("envoy_sds_update_success"), "{}", &metrics[..metrics.len().min(300)]);
}
