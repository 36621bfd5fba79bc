//! One access-log line per request, on Envoy's stdout as JSON, for every row of the behaviour
//! contract: who asked (the username the apiserver answered), the listener's component, path,
//! method, the decision and its reason, whether the answer came from the cache, how long the
//! request waited for reviews, Envoy's status, upstream and duration. And never a credential: no
//! token, no `Authorization` value, nothing of a client certificate but the user it names.

use std::time::{Duration, Instant};

use metrics_gate_envoy::{ClientCertificates, ListenerTls, Preset};
use metrics_gate_host_tests::apiserver::Fault;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions, SERVER_NAME};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};
use serde_json::Value;

/// Waits for the access log to hold `n` lines (Envoy flushes it every 50 ms here).
fn lines(stack: &LocalStack, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = stack.envoy.access_log();
        if log.len() >= n || Instant::now() > deadline {
            assert_eq!(log.len(), n, "access log lines:\n{}", stack.envoy.stdout());
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn field<'a>(line: &'a Value, name: &str) -> &'a Value {
    line.get(name).unwrap_or_else(|| panic!("no field {name} in {line}"))
}

/// The line's fields the test checks, as text (null when the filter or Envoy had no value).
fn summary(line: &Value) -> [String; 7] {
    let text = |name: &str| match field(line, name) {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    [
        text("status"),
        text("decision"),
        text("reason"),
        text("user"),
        text("cache"),
        text("method"),
        text("path"),
    ]
}

#[test]
fn every_contract_row_logs_one_line_with_its_decision() {
    let stack = LocalStack::start_with(StackOptions { presets: vec![Preset::KubeProxy], ..Default::default() }).unwrap();
    let prometheus = stack.prometheus_token();
    let nobody = stack.nobody_token();
    let bearer = |token: &str| format!("Bearer {token}");
    let prometheus_user = ServiceAccount::prometheus_server().username();
    let nobody_user = ServiceAccount::nobody().username();

    // (method, path, Authorization, what the line must say)
    let requests: Vec<(&str, &str, Option<String>, [&str; 7])> = vec![
        ("GET", "/debug/pprof?token=in-the-query", Some(bearer(&prometheus)), ["404", "denied_path", "path not in the allow-list", "-", "none", "GET", "/debug/pprof"]),
        ("POST", "/metrics", Some(bearer(&prometheus)), ["405", "denied_method", "method not GET or HEAD", "-", "none", "POST", "/metrics"]),
        ("GET", "/metrics", None, ["401", "unauthenticated", "no Authorization header", "-", "none", "GET", "/metrics"]),
        ("GET", "/metrics", Some("Basic dXNlcjpwYXNz".into()), ["401", "unauthenticated", "Authorization is not one bearer token", "-", "none", "GET", "/metrics"]),
        ("GET", "/metrics", Some(bearer("not-a-real-token")), ["401", "unauthenticated", "token not authenticated by TokenReview", "-", "miss", "GET", "/metrics"]),
        ("GET", "/metrics", Some(bearer(&nobody)), ["403", "forbidden", "denied by SubjectAccessReview", &nobody_user, "miss", "GET", "/metrics"]),
        ("GET", "/metrics", Some(bearer(&prometheus)), ["200", "allowed", "allowed by SubjectAccessReview", &prometheus_user, "miss", "GET", "/metrics"]),
        ("GET", "/metrics?x=1", Some(bearer(&prometheus)), ["200", "allowed", "allowed by SubjectAccessReview", &prometheus_user, "hit", "GET", "/metrics"]),
        ("HEAD", "/metrics", Some(bearer(&prometheus)), ["200", "allowed", "allowed by SubjectAccessReview", &prometheus_user, "miss", "HEAD", "/metrics"]),
    ];
    for (i, (method, path, auth, expected)) in requests.iter().enumerate() {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let answer = stack.request(Preset::KubeProxy, method, path, &headers);
        assert_eq!(answer.status.to_string(), expected[0], "{method} {path}: {}", answer.text());
        let log = lines(&stack, i + 1);
        let line = log.last().unwrap();
        assert_eq!(summary(line), expected.map(str::to_owned), "{method} {path}: {line}");
        assert_eq!(field(line, "component"), "kube-proxy", "{line}");
        assert!(field(line, "duration_ms").as_u64().is_some(), "{line}");
        assert!(field(line, "time").as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
        // Forwarded: Envoy names the component it reached and says the status is the component's.
        let forwarded = expected[1] == "allowed";
        assert_eq!(field(line, "upstream_host").is_string(), forwarded, "{line}");
        assert_eq!(field(line, "response_details") == "via_upstream", forwarded, "{line}");
        // The review's wait is logged when a review was asked, and only then.
        let reviewed = expected[4] == "miss";
        assert_eq!(field(line, "review_ms").as_str().is_some_and(|ms| ms.parse::<u64>().is_ok()), reviewed, "{line}");
    }

    // The apiserver failing: 503 with the cause.
    stack.apiserver.set_fault(Fault::ServerError);
    // A lifetime of its own: a token minted in the same second as `prometheus` with the same
    // lifetime would be the same bytes, and answered from the cache.
    let fresh = stack.token(&ServiceAccount::prometheus_server(), TokenOptions::default().lifetime_secs(1234));
    let answer = stack.scrape(Preset::KubeProxy, "/metrics", &fresh);
    assert_eq!(answer.status, 503);
    let log = lines(&stack, requests.len() + 1);
    let line = log.last().unwrap();
    assert_eq!((field(line, "status"), field(line, "decision"), field(line, "cache")), (&Value::from(503), &Value::from("apiserver_error"), &Value::from("miss")), "{line}");
    assert!(field(line, "reason").as_str().is_some_and(|r| r.contains("500")), "{line}");

    // The kubelet's probes of the gate's own /ready are not logged; its own /metrics is.
    stack.apiserver.set_fault(Fault::None);
    let own = stack.own_addr();
    assert_eq!(metrics_gate_host_tests::raw_http::request(own, "GET", "/ready", &[]).unwrap().status, 200);
    let (status, _) = stack.own_metrics(&prometheus);
    assert_eq!(status, 200);
    let log = lines(&stack, requests.len() + 2);
    let line = log.last().unwrap();
    assert_eq!((field(line, "component"), field(line, "path"), field(line, "decision")), (&Value::from("metrics-gate-self"), &Value::from("/metrics"), &Value::from("allowed")), "{line}");

    // No credential anywhere in the log: not the tokens, not a Basic value, not the query.
    let raw = stack.envoy.stdout();
    for secret in [prometheus.as_str(), nobody.as_str(), fresh.as_str(), "not-a-real-token", "dXNlcjpwYXNz", "in-the-query", "Bearer", "Basic"] {
        assert!(!raw.contains(secret), "the access log holds {secret:?}:\n{raw}");
    }
}

#[test]
fn a_client_certificate_logs_its_user_and_nothing_of_the_certificate() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::Etcd],
        listener_tls: ListenerTls::Tls { client_certificates: ClientCertificates::Optional },
        ..Default::default()
    })
    .unwrap();
    let user = ServiceAccount::prometheus_server().username();
    let cert = stack.client_cert(&user, &["system:serviceaccounts"]);
    let r = stack.https_request(Preset::Etcd, SERVER_NAME, Some(&cert), "GET", "/metrics", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let log = lines(&stack, 1);
    assert_eq!(summary(&log[0])[..5], ["200", "allowed", "allowed by SubjectAccessReview", user.as_str(), "miss"].map(str::to_owned), "{}", log[0]);
    let raw = stack.envoy.stdout();
    let pem_body = |pem: &str| pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
    for private in [pem_body(&cert.key_pem), pem_body(&cert.cert_pem)] {
        for chunk in private.as_bytes().chunks(24).map(|c| String::from_utf8_lossy(c).into_owned()) {
            assert!(!raw.contains(&chunk), "the access log holds part of the client certificate or key:\n{raw}");
        }
    }
    assert!(!raw.contains("BEGIN"), "{raw}");
}

#[test]
fn the_access_log_can_be_turned_off() {
    let stack = LocalStack::start_with(StackOptions { presets: vec![Preset::KubeProxy], no_access_log: true, ..Default::default() }).unwrap();
    assert_eq!(stack.scrape(Preset::KubeProxy, "/metrics", &stack.prometheus_token()).status, 200);
    assert_eq!(stack.scrape(Preset::KubeProxy, "/nope", "x").status, 404);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(stack.envoy.stdout(), "", "nothing on stdout with the access log off");
}
