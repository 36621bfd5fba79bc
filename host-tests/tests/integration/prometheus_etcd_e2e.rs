//! The shipped configuration, end to end with real peers: the DaemonSet's rendered bootstrap
//! (manifests/base/envoy-bootstrap.yaml, node IP 127.0.0.2, in-pod paths pointed at local files) in
//! the real Envoy, in front of a real etcd (metrics on 127.0.0.1:2381) and the fake kube-proxy,
//! kube-controller-manager and kube-scheduler, scraped by a real Prometheus with the scrape settings
//! of manifests/prometheus/scrape-configs.yaml (TLS verified against the serving CA with
//! `server_name`, the bearer token from a file). All four targets must be up with the job and
//! instance labels dashboards expect; a job with an unauthorized token must see them down with 403.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metrics_gate_envoy::{
    sds_resource, sds_serving_certificate, SDS_FILE, SERVING_CERT_FILE,
};
use metrics_gate_host_tests::apiserver::MockApiserver;
use metrics_gate_host_tests::components::{delegated, ComponentKind, ComponentOptions, FakeComponent};
use metrics_gate_host_tests::stack::DEFAULT_ALWAYS_ALLOW_PATHS;
use metrics_gate_host_tests::envoy_process::{EnvoyOptions, EnvoyProcess};
use metrics_gate_host_tests::raw_http;
use metrics_gate_host_tests::stack::{WasmBuild, NODE_IP, SERVER_NAME};
use metrics_gate_host_tests::tls::{write_pem, TestCa};
use metrics_gate_host_tests::token_dir::TokenDir;
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};
use serde_json::{json, Value};

const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests");

/// A child process killed when the test ends, however it ends.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn need(binary: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(binary);
    assert!(path.exists(), "{binary} is missing: run `just setup` (Debian: apt-get install etcd-server prometheus)");
    path
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// Waits for `ready`; on timeout, fails with the tail of `log`.
fn wait_until(what: &str, log: &Path, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            panic!("timed out waiting for {what}; {}:\n{}", log.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts etcd with its metrics on 127.0.0.1:2381, where the shipped bootstrap expects them.
fn start_etcd(dir: &Path) -> Peer {
    let (client, peer) = (free_port(), free_port());
    let child = Command::new(need("etcd"))
        .args(["--name", "e2e", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
        .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-cluster", &format!("e2e=http://127.0.0.1:{peer}")])
        .args(["--listen-metrics-urls", "http://127.0.0.1:2381"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
        .spawn()
        .expect("starting etcd");
    let etcd = Peer(child);
    wait_until("etcd's metrics on 127.0.0.1:2381", &dir.join("etcd.log"), Duration::from_secs(30), || {
        raw_http::request(SocketAddr::from((Ipv4Addr::LOCALHOST, 2381)), "GET", "/metrics", &[])
            .is_ok_and(|r| r.status == 200 && r.text().contains("etcd_server_has_leader 1"))
    });
    etcd
}

/// Points every in-pod path of the shipped bootstrap at this test's files.
fn localise(bootstrap: &str, files: &[(&str, &Path)], apiserver_port: u16) -> Value {
    let mut text = bootstrap.replace("${NODE_IP}", &NODE_IP.to_string());
    for (in_pod, local) in files {
        text = text.replace(in_pod, &local.to_string_lossy());
    }
    let mut config: Value = serde_yaml_ng::from_str(&text).unwrap();
    // The in-cluster apiserver name does not resolve here: aim the cluster at the mock (the TLS
    // name it checks stays kubernetes.default.svc).
    let clusters = config["static_resources"]["clusters"].as_array_mut().unwrap();
    let apiserver = clusters.iter_mut().find(|c| c["name"] == "kube-apiserver").unwrap();
    apiserver["type"] = json!("STATIC");
    apiserver["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] =
        json!({"socket_address": {"address": "127.0.0.1", "port_value": apiserver_port}});
    config
}

/// The shipped scrape jobs with local files and static targets in place of Kubernetes discovery,
/// plus a job with an unauthorized token.
fn prometheus_config(ca_file: &Path, token_file: &Path, nobody_token_file: &Path) -> Value {
    let shipped: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(format!("{MANIFESTS}/prometheus/scrape-configs.yaml")).unwrap())
            .unwrap();
    let mut jobs = Vec::new();
    for job in shipped["scrape_configs"].as_array().unwrap() {
        let name = job["job_name"].as_str().unwrap().to_owned();
        let port = match name.as_str() {
            "kube-controller-manager" => 10257,
            "kube-scheduler" => 10259,
            "kube-proxy" => 10249,
            "kube-etcd" => 2381,
            "metrics-gate" => 9902,
            other => panic!("unexpected job {other} in the shipped scrape configs"),
        };
        let mut job = job.clone();
        let object = job.as_object_mut().unwrap();
        object.remove("kubernetes_sd_configs");
        object.remove("relabel_configs");
        object.insert("static_configs".into(), json!([{"targets": [format!("{NODE_IP}:{port}")]}]));
        job["authorization"]["credentials_file"] = json!(token_file);
        job["tls_config"]["ca_file"] = json!(ca_file);
        let mut denied = job.clone();
        denied["job_name"] = json!(format!("unauthorized-{name}"));
        denied["authorization"]["credentials_file"] = json!(nobody_token_file);
        jobs.push(job);
        jobs.push(denied);
    }
    json!({"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": jobs})
}

#[test]
fn prometheus_scrapes_every_component_through_the_shipped_configuration() {
    let _ports = crate::support::fixed_ports::hold();
    let files = tempfile::tempdir().unwrap();
    let dir = files.path();
    let _etcd = start_etcd(dir);

    let apiserver = MockApiserver::start().unwrap();
    let proxy = ServiceAccount::metrics_gate();
    let fakes: Vec<FakeComponent> = [ComponentKind::KubeControllerManager, ComponentKind::KubeScheduler, ComponentKind::KubeProxy]
        .into_iter()
        .map(|kind| {
            let options = if kind.is_secure() {
                // Their own delegated check of the proxy's token, as the real ones do.
                let identity = format!("system:{}", kind.name());
                ComponentOptions::with_verifier(delegated(apiserver.delegated_auth(&identity, &DEFAULT_ALWAYS_ALLOW_PATHS)))
            } else {
                ComponentOptions::default()
            };
            FakeComponent::start(kind, SocketAddr::from((Ipv4Addr::LOCALHOST, kind.default_port())), options)
                .unwrap_or_else(|e| panic!("{} port {} is taken? {e:#}", kind.name(), kind.default_port()))
        })
        .collect();

    // What the DaemonSet mounts: the proxy's token and SDS files, the serving certificate, the CA.
    let credentials = TokenDir::temp().unwrap();
    let tls = TokenDir::temp().unwrap();
    let serving_ca = TestCa::new("e2e-serving-ca");
    let serving = serving_ca.issue_server(&[SERVER_NAME], &[NODE_IP]);
    tls.write(&[("tls.crt", serving.cert_pem.as_bytes()), ("tls.key", serving.key_pem.as_bytes())]).unwrap();
    let proxy_token = apiserver.issuer().mint(&proxy, TokenOptions::default());
    credentials
        .write(&[
            ("token", proxy_token.as_bytes()),
            (SDS_FILE, sds_resource(&credentials.file("token").to_string_lossy()).as_bytes()),
            (SERVING_CERT_FILE, sds_serving_certificate(&tls.path().to_string_lossy()).as_bytes()),
        ])
        .unwrap();
    let cluster_ca = write_pem(dir, "cluster-ca.crt", apiserver.ca_pem()).unwrap();
    let wasm = WasmBuild::Release.path().unwrap();

    let bootstrap = std::fs::read_to_string(format!("{MANIFESTS}/base/envoy-bootstrap.yaml")).unwrap();
    let config = localise(
        &bootstrap,
        &[
            ("/etc/metrics-gate/metrics_gate.wasm", &wasm),
            ("/etc/metrics-gate/credentials", credentials.path()),
            ("/etc/metrics-gate/tls", tls.path()),
            ("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", &cluster_ca),
            // Admin's Unix socket (the pod's emptyDir), here in the test's directory.
            ("/var/run/metrics-gate/admin.sock", &dir.join("admin.sock")),
        ],
        apiserver.port(),
    );
    let leftover = config.to_string();
    assert!(!leftover.contains("/etc/metrics-gate") && !leftover.contains("/var/run/"), "an in-pod path is left");
    let envoy = EnvoyProcess::start(&config, EnvoyOptions::default()).unwrap();

    // Prometheus, as a scraper in the cluster would be set up.
    let issuer = apiserver.issuer();
    let allowed = issuer.mint(&ServiceAccount::prometheus_server(), TokenOptions::default());
    let nobody = issuer.mint(&ServiceAccount::nobody(), TokenOptions::default());
    let token_file = write_pem(dir, "prometheus.token", &allowed).unwrap();
    let nobody_file = write_pem(dir, "nobody.token", &nobody).unwrap();
    let ca_file = write_pem(dir, "serving-ca.crt", serving_ca.cert_pem()).unwrap();
    let prometheus_yml = dir.join("prometheus.yml");
    std::fs::write(&prometheus_yml, serde_yaml_ng::to_string(&prometheus_config(&ca_file, &token_file, &nobody_file)).unwrap())
        .unwrap();
    let web = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let _prometheus = Peer(
        Command::new(need("prometheus"))
            .arg(format!("--config.file={}", prometheus_yml.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("starting prometheus"),
    );

    // Every target scraped at least once, as Prometheus reports it.
    let mut targets = Vec::new();
    wait_until("Prometheus to scrape all ten targets", &dir.join("prometheus.log"), Duration::from_secs(60), || {
        let Ok(answer) = raw_http::request(web, "GET", "/api/v1/targets?state=active", &[]) else { return false };
        let Ok(body) = serde_json::from_slice::<Value>(&answer.body) else { return false };
        targets = body["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
        targets.len() == 10 && targets.iter().all(|t| t["health"] != "unknown")
    });
    for target in &targets {
        let job = target["labels"]["job"].as_str().unwrap();
        let instance = target["labels"]["instance"].as_str().unwrap();
        let error = target["lastError"].as_str().unwrap_or_default();
        let port = target["scrapeUrl"].as_str().unwrap().rsplit(':').next().unwrap().trim_end_matches("/metrics").to_owned();
        assert_eq!(instance, format!("{NODE_IP}:{port}"), "{job}");
        assert!(target["labels"].get("pod").is_none(), "{job} carries a pod label");
        if job.starts_with("unauthorized-") {
            assert_eq!(target["health"], "down", "{job}");
            assert!(error.contains("403"), "{job}: {error}");
        } else {
            assert_eq!(target["health"], "up", "{job}: {error}");
        }
    }
    let mut jobs: Vec<&str> = targets.iter().filter_map(|t| t["labels"]["job"].as_str()).filter(|j| !j.starts_with("unauthorized-")).collect();
    jobs.sort_unstable();
    assert_eq!(jobs, ["kube-controller-manager", "kube-etcd", "kube-proxy", "kube-scheduler", "metrics-gate"]);

    // And the series are there, with the labels alerts select on.
    wait_until("up == 1 for the five jobs", &dir.join("prometheus.log"), Duration::from_secs(30), || {
        let query = "/api/v1/query?query=sum%20by%20(job)%20(up%7Bjob%21~%22unauthorized.*%22%7D)";
        raw_http::request(web, "GET", query, &[])
            .ok()
            .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .and_then(|b| b["data"]["result"].as_array().cloned())
            .is_some_and(|r| r.len() == 5 && r.iter().all(|s| s["value"][1] == "1"))
    });
    let etcd_series = raw_http::request(web, "GET", "/api/v1/query?query=etcd_server_has_leader%7Bjob%3D%22kube-etcd%22%7D", &[]).unwrap();
    assert!(etcd_series.text().contains(&format!("\"instance\":\"{NODE_IP}:2381\"")), "{}", etcd_series.text());
    // The gate's own counters, scraped through the gate like the components.
    let own = raw_http::request(web, "GET", "/api/v1/query?query=metrics_gate_requests_allowed%7Bjob%3D%22metrics-gate%22%7D", &[]).unwrap();
    assert!(own.text().contains(&format!("\"instance\":\"{NODE_IP}:9902\"")), "{}", own.text());
    drop(fakes);
    drop(envoy);
}
