//! The gate's Grafana dashboard (manifests/monitoring/dashboard.json) shows real data: a live gate
//! (the whole stack, TLS listeners, the real Envoy and filter) takes traffic of every decision —
//! allowed, 404, 405, 401, 403, and 503 from a failing apiserver, the callout cap and the review
//! budget — while a real Prometheus (Debian's `prometheus`) scrapes the gate's own /metrics with
//! the shipped `metrics-gate` scrape job and evaluates the shipped alert rules. Then every query of
//! every panel, with its template variables substituted as Grafana does, runs against that
//! Prometheus's HTTP API and must return data; the panels that show a behaviour must show it (a
//! 1.5 s apiserver in the review latency, refusals in the apiserver calls, reloads of the token and
//! the certificate). The variables' own queries must list the job and the node.
//!
//! Against the same Prometheus, the alert rules (manifests/prometheus/metrics-gate-rules.yaml)
//! evaluate without error, every series they select exists with those names and labels, the
//! alerts for what the run provoked are pending and the others are not.
//!
//! With `METRICS_GATE_DASHBOARD_DATA=<file>` the test also writes the panels' data there, which
//! scripts/plot_dashboard.py draws into docs/dashboard.png (`just dashboard-png`);
//! `METRICS_GATE_DASHBOARD_SECONDS` lengthens the traffic (24 s by default).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_gate_envoy::{ListenerTls, Preset};
use metrics_gate_host_tests::apiserver::Fault;
use metrics_gate_host_tests::raw_http;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions, SERVER_NAME};
use metrics_gate_host_tests::tls::write_pem;
use serde_json::{json, Value};

use crate::support::kustomize::{docs, kustomize, root};

/// The test Prometheus's scrape and rule evaluation interval. Envoy refreshes its histograms every
/// 5 s (stats flush), so a shorter one only repeats them.
const SCRAPE_SECONDS: u64 = 2;

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("manifests/monitoring/dashboard.json")).unwrap()).unwrap()
}

/// A child process killed when the test ends, however it ends.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Percent-encodes a query parameter's value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The HTTP API of the test's Prometheus.
struct Prometheus {
    web: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    /// `GET path` and its `data`; fails on an error answer, naming the query.
    fn get(&self, path: &str) -> Value {
        let answer = raw_http::request(self.web, "GET", path, &[]).unwrap_or_else(|e| panic!("{path}: {e:#}"));
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or_else(|_| panic!("{path}: {}", answer.text()));
        assert!(answer.status == 200 && body["status"] == "success", "{path}: {}", answer.text());
        body["data"].clone()
    }

    fn range(&self, query: &str, start: f64, end: f64) -> Vec<Value> {
        let path = format!("/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={SCRAPE_SECONDS}", encode(query));
        self.get(&path)["result"].as_array().cloned().unwrap_or_default()
    }

    fn wait_until(&self, what: &str, timeout: Duration, mut ready: impl FnMut(&Prometheus) -> bool) {
        let deadline = Instant::now() + timeout;
        while !ready(self) {
            if Instant::now() > deadline {
                let text = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                panic!("timed out waiting for {what}; prometheus log:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// `$__rate_interval` in seconds: max($__interval + scrape interval, 4 × scrape interval), with the
/// data source's scrape interval set to Prometheus's and `$__interval` the step, the scrape interval.
fn rate_interval() -> u64 {
    (SCRAPE_SECONDS + SCRAPE_SECONDS).max(4 * SCRAPE_SECONDS)
}

/// What Grafana puts in place of the dashboard's variables.
struct Variables {
    job: String,
    /// `$node`: "All" (the variable's allValue) or one instance.
    node: Option<String>,
    /// The queried range, for `$__range`.
    range_seconds: u64,
}

/// Grafana's Prometheus data source, for a multi-value or include-all variable, escapes regex
/// metacharacters of each value (twice backslashed: they sit in a PromQL string); an "All" is the
/// variable's allValue as it stands.
fn interpolate(expr: &str, vars: &Variables, node_variable: &Value) -> String {
    let rate_interval = rate_interval();
    let node = match &vars.node {
        None => node_variable["allValue"].as_str().expect("$node has an allValue").to_owned(),
        Some(instance) => instance.chars().fold(String::new(), |mut s, c| {
            if "$^*{}[]'+?.()|\\".contains(c) {
                s.push_str("\\\\");
            }
            s.push(c);
            s
        }),
    };
    let out = expr
        .replace("$__rate_interval", &format!("{rate_interval}s"))
        .replace("$__range", &format!("{}s", vars.range_seconds))
        .replace("$job", &vars.job)
        .replace("$node", &node);
    assert!(!out.contains('$'), "a variable this test does not know is left in {out}");
    out
}

/// Grafana's legend: `{{label}}` replaced by the series' label.
fn legend(format: &str, metric: &Value) -> String {
    let mut out = format.to_owned();
    if let Some(labels) = metric.as_object() {
        for (k, v) in labels {
            out = out.replace(&format!("{{{{{k}}}}}"), v.as_str().unwrap_or_default());
        }
    }
    out
}

/// The finite samples of a query_range series: (time, value).
fn points(series: &Value) -> Vec<(f64, f64)> {
    series["values"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()?.parse::<f64>().ok()?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// Metric names an expression selects with `name{...}`.
fn selected_metrics(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut names = Vec::new();
    for (i, _) in expr.match_indices('{') {
        let start = (0..i).rev().take_while(|&j| bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b':').last();
        if let Some(start) = start {
            names.push(expr[start..i].to_owned());
        }
    }
    names.sort();
    names.dedup();
    names
}

/// A new token for the proxy, written the way kubelet refreshes the projected volume (the whole
/// volume again, in one `..data` swap).
fn rotate_proxy_token(stack: &LocalStack) {
    let token = stack.token(&metrics_gate_host_tests::tokens::ServiceAccount::metrics_gate(), Default::default());
    stack.rotate_proxy_token(&token).unwrap();
}

/// Traffic of every decision against the stack for `total`, with the apiserver slow and then
/// failing in the middle (at fixed fractions of `total`), and the proxy's token and the serving certificate
/// swapped once, as kubelet does. Returns the apiserver's episodes: (what, from, to), Unix seconds.
fn traffic(stack: &LocalStack, total: Duration) -> Vec<(&'static str, f64, f64)> {
    let stop = AtomicBool::new(false);
    let scraper = format!("Bearer {}", stack.prometheus_token());
    let nobody = format!("Bearer {}", stack.nobody_token());
    let send = |preset: Preset, method: &str, target: &str, auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| vec![("authorization", a)]).unwrap_or_default();
        stack.https_request(preset, SERVER_NAME, None, method, target, &headers).map(|r| r.status).ok()
    };
    // The scraper and the unauthorized caller are known before the flood (their answers cached),
    // as a scraper that has been running is; the flood's budget would otherwise refuse them too.
    for preset in [Preset::KubeProxy, Preset::Etcd, Preset::KubeControllerManager, Preset::KubeScheduler] {
        assert_eq!(send(preset, "GET", "/metrics", Some(&scraper)), Some(200), "{}", preset.name());
        assert_eq!(send(preset, "GET", "/metrics", Some(&nobody)), Some(403), "{}", preset.name());
    }
    std::thread::scope(|s| {
        // A scraper on every component, and one request of each refusal, up to ten times a second.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                for preset in [Preset::KubeProxy, Preset::Etcd, Preset::KubeControllerManager, Preset::KubeScheduler] {
                    send(preset, "GET", "/metrics", Some(&scraper));
                }
                send(Preset::KubeProxy, "GET", "/metrics", None); // 401
                send(Preset::Etcd, "GET", "/metrics", Some(&nobody)); // 403
                send(Preset::KubeProxy, "GET", "/debug/pprof/", Some(&scraper)); // 404
                send(Preset::Etcd, "POST", "/metrics", Some(&scraper)); // 405
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        // Distinct bogus tokens: each needs a review, so they spend the review budget, fill the
        // small cache (evictions) and, with the apiserver slow, reach the callout cap.
        for t in 0..6 {
            let (stop, send) = (&stop, &send);
            s.spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    send(Preset::KubeProxy, "GET", "/metrics", Some(&format!("Bearer bogus-{t}-{n}")));
                    std::thread::sleep(Duration::from_millis(150));
                }
            });
        }
        let begin = Instant::now();
        let at = |fraction: f64| begin + total.mul_f64(fraction);
        let sleep_until = |when: Instant| std::thread::sleep(when.saturating_duration_since(Instant::now()));
        sleep_until(at(0.12));
        rotate_proxy_token(stack);
        sleep_until(at(0.16));
        stack.rotate_serving_cert().unwrap();
        sleep_until(at(0.25));
        stack.apiserver.set_fault(Fault::Slow(Duration::from_millis(1500)));
        let slow = now();
        sleep_until(at(0.55));
        stack.apiserver.set_fault(Fault::ServerError);
        let failing = now();
        sleep_until(at(0.75));
        stack.apiserver.set_fault(Fault::None);
        let recovered = now();
        sleep_until(at(1.0));
        stop.store(true, Ordering::Relaxed);
        vec![("apiserver slow (1.5 s)", slow, failing), ("apiserver failing (500)", failing, recovered)]
    })
}

#[test]
fn every_dashboard_query_shows_a_live_gate_and_the_alert_rules_evaluate_on_it() {
    let seconds: u64 = std::env::var("METRICS_GATE_DASHBOARD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    let stack = LocalStack::start_with(StackOptions {
        listener_tls: ListenerTls::default(),
        // Small enough for the bogus tokens to reach: a 3 reviews/s budget, 3 reviews in flight,
        // 16 cache slots (the least allowed).
        plugin_config: json!({"max_reviews_per_second": 3, "max_callouts_in_flight": 3, "cache": {"max_entries": 16}}),
        ..StackOptions::default()
    })
    .unwrap();
    let files = tempfile::tempdir().unwrap();
    let dir = files.path();

    // The shipped `metrics-gate` job, pointed at this gate's own listener; the labels the
    // Kubernetes discovery and relabeling would add come as static labels.
    let shipped: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(root().join("manifests/prometheus/scrape-configs.yaml")).unwrap()).unwrap();
    let mut job = shipped["scrape_configs"].as_array().unwrap().iter().find(|j| j["job_name"] == "metrics-gate").expect("the shipped metrics-gate job").clone();
    let object = job.as_object_mut().unwrap();
    object.remove("kubernetes_sd_configs");
    object.remove("relabel_configs");
    let instance = stack.own_addr().to_string();
    object.insert(
        "static_configs".into(),
        json!([{"targets": [instance], "labels": {"namespace": "metrics-gate", "service": "metrics-gate", "endpoint": "https-metrics"}}]),
    );
    job["authorization"]["credentials_file"] = json!(write_pem(dir, "prometheus.token", &stack.prometheus_token()).unwrap());
    job["tls_config"]["ca_file"] = json!(write_pem(dir, "serving-ca.crt", stack.serving_ca.cert_pem()).unwrap());
    let rules_file = root().join("manifests/prometheus/metrics-gate-rules.yaml");
    let config = json!({
        "global": {"scrape_interval": format!("{SCRAPE_SECONDS}s"), "scrape_timeout": format!("{SCRAPE_SECONDS}s"), "evaluation_interval": format!("{SCRAPE_SECONDS}s")},
        "rule_files": [rules_file],
        "scrape_configs": [job],
    });
    let prometheus_yml = dir.join("prometheus.yml");
    std::fs::write(&prometheus_yml, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let prometheus_bin = Path::new("/usr/bin/prometheus");
    assert!(prometheus_bin.exists(), "prometheus is missing: run `just setup` (Debian: apt-get install prometheus)");
    let prometheus = Prometheus { web: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())), log: dir.join("prometheus.log") };
    let _child = Peer(
        Command::new(prometheus_bin)
            .arg(format!("--config.file={}", prometheus_yml.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={}", prometheus.web))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&prometheus.log).unwrap())
            .spawn()
            .expect("starting prometheus"),
    );
    prometheus.wait_until("the gate's own /metrics scraped", Duration::from_secs(30), |p| {
        raw_http::request(p.web, "GET", "/api/v1/query?query=up", &[])
            .ok()
            .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .is_some_and(|b| b["data"]["result"].as_array().is_some_and(|r| r.iter().any(|s| s["value"][1] == "1")))
    });

    let start = now();
    let episodes = traffic(&stack, Duration::from_secs(seconds));
    // Envoy's histograms of the last seconds reach /metrics at the next stats flush (5 s), then a scrape.
    std::thread::sleep(Duration::from_secs(5 + 2 * SCRAPE_SECONDS));
    let end = now();

    // The template variables' own queries (`label_values(metric, label)`, Grafana's call of the
    // label values API) list the job and this gate.
    let dash = dashboard();
    let variables = dash["templating"]["list"].as_array().unwrap();
    let node_variable = variables.iter().find(|v| v["name"] == "node").expect("a $node variable");
    for (name, want) in [("job", "metrics-gate"), ("node", instance.as_str())] {
        let v = variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no ${name} variable"));
        let query = v["query"]["query"].as_str().unwrap();
        let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).unwrap();
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let selector = selector.replace("$job", "metrics-gate");
        let values = prometheus.get(&format!("/api/v1/label/{}/values?match[]={}", label.trim(), encode(&selector)));
        assert!(values.as_array().unwrap().iter().any(|x| x == want), "${name} ({query}) lists {values}, not {want}");
    }

    // Every query of every panel, with $node on All and on this gate.
    let range_seconds = (end - start).ceil() as u64;
    let mut panels_out = Vec::new();
    let mut shown: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for panel in panels {
        let title = panel["title"].as_str().unwrap().to_owned();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut series_out = Vec::new();
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            for node in [None, Some(instance.clone())] {
                let vars = Variables { job: "metrics-gate".into(), node: node.clone(), range_seconds };
                let query = interpolate(expr, &vars, node_variable);
                let result = prometheus.range(&query, start, end);
                let finite: usize = result.iter().map(|s| points(s).len()).sum();
                assert!(finite > 0, "{title}: {query} (node {node:?}) returned no data: {result:?}");
                if node.is_some() {
                    continue;
                }
                for series in &result {
                    let name = legend(target["legendFormat"].as_str().unwrap_or_default(), &series["metric"]);
                    shown.insert((title.clone(), name.clone()), points(series));
                    series_out.push(json!({"legend": name, "points": points(series)}));
                }
            }
        }
        let unit = panel["fieldConfig"]["defaults"]["unit"].clone();
        panels_out.push(json!({"title": title, "unit": unit, "series": series_out}));
    }
    let max = |panel: &str, series: &str| -> f64 {
        shown
            .get(&(panel.to_owned(), series.to_owned()))
            .unwrap_or_else(|| panic!("{panel} has no series {series}; it has {:?}", shown.keys().filter(|k| k.0 == panel).map(|k| &k.1).collect::<Vec<_>>()))
            .iter()
            .map(|p| p.1)
            .fold(f64::NEG_INFINITY, f64::max)
    };
    // What the run did shows where it should.
    for decision in ["allowed (proxied)", "404 path not allowed", "405 method", "401 unauthenticated", "403 forbidden", "503 apiserver / cap / budget"] {
        assert!(max("Requests by decision", decision) > 0.0, "Requests by decision: {decision} never above 0");
    }
    for component in ["kube-proxy", "etcd", "kube-controller-manager", "kube-scheduler", "metrics-gate-self"] {
        assert!(max("Responses by component", &format!("{component} 2xx")) > 0.0, "{component}: no 2xx");
    }
    assert!(max("Responses by component", "kube-proxy 4xx") > 0.0 && max("Responses by component", "kube-proxy 5xx") > 0.0);
    assert!(max("Review latency", "p99") >= 1000.0, "the 1.5 s apiserver does not show in the review latency");
    let hit_ratio = max("Decision cache hit ratio", "hit ratio");
    assert!(hit_ratio > 0.0 && hit_ratio <= 1.0, "hit ratio {hit_ratio}");
    assert!(max("Cache evictions and coalesced waits", "evictions") > 0.0);
    for series in ["apiserver 2xx", "apiserver 5xx", "refused: callout cap", "refused: review budget"] {
        assert!(max("Apiserver calls", series) > 0.0, "Apiserver calls: {series} never above 0");
    }
    assert!(max("Reviews in flight", &instance) > 0.0, "no review was ever seen in flight");
    for reloads in ["token reloads", "certificate reloads"] {
        assert!(max("Secret reloads (range)", reloads) >= 1.0, "{reloads}: the swap during the run is not shown");
    }
    for secret in ["serviceaccount-token", "serving-certificate"] {
        assert_eq!(max("Secret reloads (range)", &format!("{secret} failed")), 0.0, "{secret}: a reload failed");
    }
    // Loaded before the run began, the token would be older than the run at its end: the reload
    // moved envoy_sds_update_time.
    let token_age = shown[&("Age of the proxy's token".to_owned(), "serviceaccount-token".to_owned())].last().unwrap().1;
    assert!(token_age < end - start, "the token's age {token_age} s: its reload did not move envoy_sds_update_time");
    assert_eq!(max("Gates up", "up"), 1.0);
    assert_eq!(max("Filter VM reloads", "VM reloads (total)"), 0.0);

    // The filter counts its refusals by the cap and the budget among its 503s (the apiserver
    // alert takes them out), and the failing apiserver added 503s of its own.
    let errors = stack.counter("wasmcustom.metrics_gate_apiserver_errors");
    let refused = stack.counter("wasmcustom.metrics_gate_callouts_rejected_cap") + stack.counter("wasmcustom.metrics_gate_callouts_rejected_rate");
    assert!(errors > refused && refused > 0, "apiserver_errors {errors}, refusals {refused}");

    // The alert rules: evaluated without error, on series that exist.
    let groups = prometheus.get("/api/v1/rules");
    let rules: Vec<&Value> = groups["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    assert!(rules.len() >= 9, "{} rules loaded from {}", rules.len(), rules_file.display());
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{}: {}", rule["name"], rule["lastError"]);
        for metric in selected_metrics(rule["query"].as_str().unwrap()) {
            let series = prometheus.get(&format!("/api/v1/series?match[]={}", encode(&format!("{metric}{{job=\"metrics-gate\"}}"))));
            assert!(!series.as_array().unwrap().is_empty(), "{}: the gate exports no {metric}", rule["name"]);
        }
    }
    // Their `for` is minutes, so what the run provoked is pending; nothing else is.
    let alerts = prometheus.get("/api/v1/alerts");
    let active: Vec<&str> = alerts["alerts"].as_array().unwrap().iter().filter_map(|a| a["labels"]["alertname"].as_str()).collect();
    for name in ["MetricsGateApiserverErrors", "MetricsGateCalloutCapReached", "MetricsGateReviewBudgetSpent"] {
        assert!(active.contains(&name), "{name} is not pending after the run; active: {active:?}");
    }
    for name in ["MetricsGateDown", "MetricsGateAbsent", "MetricsGateSecretReloadFailing", "MetricsGateTokenStale"] {
        assert!(!active.contains(&name), "{name} is active on a healthy gate: {alerts}");
    }

    if let Some(out) = std::env::var_os("METRICS_GATE_DASHBOARD_DATA") {
        let data = json!({"start": start, "end": end, "step": SCRAPE_SECONDS, "seconds": seconds, "rate_interval": rate_interval(), "episodes": episodes, "panels": panels_out, "alerts": active});
        std::fs::write(&out, serde_json::to_string_pretty(&data).unwrap()).unwrap();
    }
}

#[test]
fn the_dashboard_ships_as_a_grafana_sidecar_configmap_beside_the_rules() {
    let built = docs(&kustomize(&root().join("manifests/monitoring")));
    let configmap = built.iter().find(|o| o["kind"] == "ConfigMap").expect("a ConfigMap");
    assert_eq!(configmap["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(configmap["data"]["metrics-gate.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, dashboard());
    let rule = built.iter().find(|o| o["kind"] == "PrometheusRule").expect("the PrometheusRule");
    assert_eq!(rule["metadata"]["namespace"], "metrics-gate");
    // Every panel's query names its data source through the variable, so the dashboard works with
    // whatever Prometheus data source Grafana has.
    for panel in dashboard()["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
            let expr = target["expr"].as_str().unwrap();
            assert!(expr.contains("job=\"$job\"") && expr.contains("instance=~\"$node\""), "{}: {expr} ignores $job or $node", panel["title"]);
        }
    }
}

