//! The runs beyond throughput: a flood of bogus tokens beside an authorized scraper, memory over a
//! million distinct tokens, and the memory of the shipped DaemonSet configuration.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use metrics_gate_envoy::ListenerTls;
use metrics_gate_host_tests::apiserver::{CallKind, Fault};
use metrics_gate_host_tests::components::FakeComponent;
use metrics_gate_host_tests::envoy_process::EnvoyOptions;
use metrics_gate_host_tests::raw_http;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions, SERVER_NAME};
use metrics_gate_host_tests::tokens::{self, ServiceAccount};
use serde::Serialize;
use serde_json::{json, Value};

use super::cli::Args;
use super::configs::with_plugin_config;
use super::procfs;
use super::proxies::{envoy_stats, start_envoy, stat, Cores};
use super::setups::PAYLOADS;
use super::wrk::{self, Wrk, WrkResult};

#[derive(Serialize, Default)]
pub struct Flood {
    pub plugin_config: String,
    pub cap_field_present: bool,
    pub bogus_tokens: u64,
    pub flood_connections: u32,
    pub flood_seconds: f64,
    pub flood_rps: f64,
    pub flood_token_reviews: u64,
    pub flood_subject_access_reviews: u64,
    pub max_callouts_in_flight_seen: u64,
    pub max_apiserver_requests_active_seen: u64,
    pub rejected_by_cap: u64,
    pub rejected_by_rate: u64,
    /// TokenReviews and SubjectAccessReviews the flood caused, per second of flood.
    pub reviews_per_second: f64,
    pub unauthenticated: u64,
    pub apiserver_errors: u64,
    pub scraper_connections: u32,
    pub scraper_baseline: WrkResult,
    pub scraper_baseline_rps: f64,
    pub scraper_under_flood: WrkResult,
    pub scraper_success_rate: f64,
    pub scraper_rps_during_flood: f64,
}

#[derive(Serialize, Default)]
pub struct Memory {
    pub connections: u32,
    pub rss_start_kib: u64,
    pub requests_first: u64,
    pub rss_after_first_kib: u64,
    pub requests_total: u64,
    pub rss_after_total_kib: u64,
    pub hwm_kib: u64,
    pub token_reviews: u64,
    pub seconds: f64,
    pub cache_evictions: u64,
    /// (apiserver calls so far, VmRSS KiB) every few seconds.
    pub rss_samples: Vec<(u64, u64)>,
    /// Reviews an authorized scraper, whose answers were cached before the run, needed after it
    /// (0: none of its answers was evicted).
    pub scraper_reviews_after: u64,
}

/// The shipped DaemonSet's configuration: every listener, TLS, its `--concurrency`.
#[derive(Serialize, Default)]
pub struct DaemonsetMemory {
    pub listeners: usize,
    pub concurrency: u32,
    pub idle_rss_kib: u64,
    pub idle_anon_kib: u64,
    pub connections_per_listener: u32,
    pub load_seconds: u64,
    pub requests: u64,
    pub ok: u64,
    pub loaded_rss_kib: u64,
    pub loaded_anon_kib: u64,
    pub hwm_kib: u64,
}

#[allow(clippy::too_many_arguments)]
pub fn flood_run(
    args: &Args,
    stack: &LocalStack,
    gated: &Value,
    warm_token: &str,
    fake: &FakeComponent,
    cores: &Cores,
    script: &Path,
    notes: &mut Vec<String>,
) -> Result<Flood> {
    eprintln!("==> flood run");
    let api = &stack.apiserver;
    let mut flood = Flood {
        bogus_tokens: 0,
        flood_connections: 128,
        scraper_connections: 8,
        ..Default::default()
    };
    let plugin = json!({
        "max_callouts_in_flight": 64,
        "max_reviews_per_second": metrics_gate::config::DEFAULT_MAX_REVIEWS_PER_SECOND,
    });
    let envoy = match start_envoy(&with_plugin_config(gated, &plugin), cores) {
        Ok(e) => {
            flood.cap_field_present = true;
            flood.plugin_config = plugin.to_string();
            e
        }
        Err(e) => {
            notes.push(format!(
                "the filter refused `max_callouts_in_flight` ({e:#}): flood run with its defaults"
            ));
            flood.plugin_config = "{}".into();
            start_envoy(gated, cores)?
        }
    };
    let preset = PAYLOADS[0].1;
    let url = format!("http://{}/metrics", envoy.listener_addr(preset.name())?);
    // The scraper starts a second before the flood and ends after it.
    let scraper_secs = args.flood_seconds + 3;
    let scraper = |secs: u64| Wrk {
        url: url.clone(),
        connections: flood.scraper_connections,
        duration: Duration::from_secs(secs),
        token: Some(warm_token),
        env: vec![("MG_MODE", "static".into())],
        cpu: cores.load,
        script,
    };
    // Warm (cache entry of the scraper's token, V8 tier-up), then the baseline without flood.
    scraper(1).run()?;
    flood.scraper_baseline = scraper(scraper_secs).run()?;
    flood.scraper_baseline_rps = flood.scraper_baseline.rps();

    let before = envoy_stats(&envoy, "wasmcustom");
    let tr0 = api.count(CallKind::TokenReview) as u64;
    let sar0 = api.count(CallKind::SubjectAccessReview) as u64;
    let scraping = scraper(scraper_secs).spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    // Never created: the flood ends with its duration (finish_limited samples the stats meanwhile).
    let done_file = std::env::temp_dir().join(format!("mg-bench-flood-{}", std::process::id()));
    let _ = std::fs::remove_file(&done_file);
    let flooding = Wrk {
        url: url.clone(),
        connections: flood.flood_connections,
        duration: Duration::from_secs(args.flood_seconds),
        token: None,
        env: vec![("MG_MODE", "bogus".into()), ("MG_PREFIX", "flood".into())],
        cpu: cores.load,
        script,
    }
    .spawn()?;
    let upstream0 = fake.count();
    let (mut max_in_flight, mut max_active) = (0, 0);
    let (flood_result, secs) = wrk::finish_limited(flooding, &done_file, || {
        let s = envoy_stats(&envoy, "in_flight|upstream_rq_active");
        max_in_flight = max_in_flight.max(stat(&s, "metrics_gate_callouts_in_flight"));
        max_active = max_active.max(stat(
            &s,
            &format!(
                "{}.upstream_rq_active",
                metrics_gate_envoy::APISERVER_CLUSTER
            ),
        ));
    })?;
    let upstream1 = fake.count();
    flood.max_callouts_in_flight_seen = max_in_flight;
    flood.max_apiserver_requests_active_seen = max_active;
    flood.flood_seconds = secs;
    flood.bogus_tokens = flood_result.requests;
    flood.flood_rps = flood_result.requests as f64 / secs.max(1e-9);
    flood.scraper_rps_during_flood = (upstream1 - upstream0) as f64 / secs.max(1e-9);
    flood.scraper_under_flood = wrk::finish(scraping)?;
    let u = &flood.scraper_under_flood;
    flood.scraper_success_rate = if u.requests == 0 {
        0.0
    } else {
        (u.ok().saturating_sub(u.socket_errors())) as f64 / u.requests as f64
    };
    let after = envoy_stats(&envoy, "wasmcustom");
    let delta = |name: &str| stat(&after, name).saturating_sub(stat(&before, name));
    flood.rejected_by_cap = delta("metrics_gate_callouts_rejected_cap");
    flood.rejected_by_rate = delta("metrics_gate_callouts_rejected_rate");
    flood.unauthenticated = delta("metrics_gate_requests_unauthenticated");
    flood.apiserver_errors = delta("metrics_gate_apiserver_errors");
    flood.flood_token_reviews = api.count(CallKind::TokenReview) as u64 - tr0;
    flood.flood_subject_access_reviews = api.count(CallKind::SubjectAccessReview) as u64 - sar0;
    flood.reviews_per_second = (flood.flood_token_reviews + flood.flood_subject_access_reviews)
        as f64
        / flood.flood_seconds.max(1e-9);
    eprintln!(
        "    {} bogus tokens in {:.2} s: {} TokenReviews, max {} callouts in flight, {} refused by the cap; scraper {:.0} req/s during the flood vs {:.0} alone, success {:.4}",
        flood_result.requests,
        flood.flood_seconds,
        flood.flood_token_reviews,
        flood.max_callouts_in_flight_seen,
        flood.rejected_by_cap,
        flood.scraper_rps_during_flood,
        flood.scraper_baseline_rps,
        flood.scraper_success_rate
    );
    Ok(flood)
}

pub fn memory_run(
    args: &Args,
    stack: &LocalStack,
    gated: &Value,
    scraper: &str,
    cores: &Cores,
    script: &Path,
) -> Result<Memory> {
    eprintln!(
        "==> memory run ({} requests, distinct bogus tokens)",
        args.memory_requests
    );
    let api = &stack.apiserver;
    // Full speed: the run is about what the proxy keeps, not about callout latency.
    api.set_fault(Fault::None);
    api.clear_calls();
    // Answers that outlive the run (the token's own `exp`, an hour, still bounds the TokenReview):
    // the scraper's answers can then only leave the cache by eviction, which is what is checked.
    let long_ttls = json!({"cache": {"token_review_ttl_seconds": 3600, "allow_ttl_seconds": 3600}});
    let envoy = start_envoy(&with_plugin_config(gated, &long_ttls), cores)?;
    let pid = envoy.pid();
    let url = format!(
        "http://{}/metrics",
        envoy.listener_addr(PAYLOADS[0].1.name())?
    );
    // The scraper's answers first: the run then shows whether a million bogus tokens push them out.
    let listener = envoy.listener_addr(PAYLOADS[0].1.name())?;
    let auth = format!("Bearer {scraper}");
    let scrape = || raw_http::request(listener, "GET", "/metrics", &[("authorization", &auth)]);
    anyhow::ensure!(
        scrape()?.status == 200,
        "the scraper was not admitted before the memory run"
    );
    api.clear_calls();
    let first = 10_000u64.min(args.memory_requests / 2).max(1);
    let mut m = Memory {
        connections: 64,
        rss_start_kib: procfs::status_kib(pid, "VmRSS")?,
        ..Default::default()
    };
    let started = Instant::now();
    let mut token_reviews = 0u64;
    let mut samples = Vec::new();
    let done_file = std::env::temp_dir().join(format!("mg-bench-memory-{}", std::process::id()));
    let _ = std::fs::remove_file(&done_file);
    let mut phase = |prefix: &str, limit: u64| -> Result<WrkResult> {
        let child = Wrk {
            url: url.clone(),
            connections: m.connections,
            duration: Duration::from_secs(3_600),
            token: None,
            env: vec![
                ("MG_MODE", "bogus".into()),
                ("MG_PREFIX", prefix.into()),
                ("MG_LIMIT", limit.to_string()),
                ("MG_DONE_FILE", done_file.to_string_lossy().into_owned()),
            ],
            cpu: cores.load,
            script,
        }
        .spawn()?;
        // The double records every call: drain it as we go so that this process stays small.
        let mut ticks = 0u64;
        let (r, _) = wrk::finish_limited(child, &done_file, || {
            ticks += 1;
            if ticks.is_multiple_of(25) {
                let n = api.calls().len();
                api.clear_calls();
                token_reviews += n as u64;
            }
            if ticks.is_multiple_of(250) {
                if let Ok(rss) = procfs::status_kib(pid, "VmRSS") {
                    samples.push((token_reviews, rss));
                }
            }
        })?;
        Ok(r)
    };
    let r1 = phase("m1", first)?;
    m.requests_first = r1.requests;
    m.rss_after_first_kib = procfs::status_kib(pid, "VmRSS")?;
    eprintln!(
        "    after {}: VmRSS {} KiB",
        r1.requests, m.rss_after_first_kib
    );
    let r2 = phase("m2", args.memory_requests - first)?;
    m.requests_total = r1.requests + r2.requests;
    m.rss_after_total_kib = procfs::status_kib(pid, "VmRSS")?;
    m.hwm_kib = procfs::status_kib(pid, "VmHWM")?;
    m.seconds = started.elapsed().as_secs_f64();
    token_reviews += api.calls().len() as u64;
    m.token_reviews = token_reviews;
    api.clear_calls();
    anyhow::ensure!(
        scrape()?.status == 200,
        "the scraper was not admitted after the memory run"
    );
    // The last bogus requests' reviews may still be under way: count only the scraper's own.
    let token = tokens::token_digest(scraper);
    let user = ServiceAccount::prometheus_server().username();
    m.scraper_reviews_after = api
        .calls()
        .iter()
        .filter(|c| c.spec["token"] == token.as_str() || c.spec["user"] == user.as_str())
        .count() as u64;
    m.rss_samples = samples;
    m.cache_evictions = stat(
        &envoy_stats(&envoy, "cache_evictions"),
        "metrics_gate_cache_evictions",
    );
    eprintln!(
        "    after {}: VmRSS {} KiB, VmHWM {} KiB ({:.0} s)",
        m.requests_total, m.rss_after_total_kib, m.hwm_kib, m.seconds
    );
    api.set_fault(Fault::Slow(Duration::from_millis(2)));
    Ok(m)
}

/// Memory of the shipped DaemonSet's configuration: the test host's stack (the renderer's output
/// for every component, TLS listeners, the components behind them as on a node) at the
/// DaemonSet's `--concurrency`, idle and then under a scrape load on every listener at once.
pub fn daemonset_run(
    args: &Args,
    root: &Path,
    cores: &Cores,
    script: &Path,
) -> Result<DaemonsetMemory> {
    let concurrency = daemonset_concurrency(root)?;
    eprintln!(
        "==> the shipped DaemonSet configuration (all listeners, TLS, --concurrency {concurrency})"
    );
    let stack = LocalStack::start_with(StackOptions {
        envoy: EnvoyOptions {
            concurrency,
            log_level: "warning".into(),
            ..Default::default()
        },
        listener_tls: ListenerTls::default(),
        ..Default::default()
    })?;
    let pid = stack.envoy.pid();
    if let Some(cpu) = cores.proxy {
        procfs::pin(pid, cpu)?;
    }
    let token = stack.prometheus_token();
    // One scrape per listener: the VMs, the cache entries and the connections a node has once
    // Prometheus has found it.
    let auth = format!("Bearer {token}");
    for (preset, _) in &stack.components {
        let answer = stack.https_request(
            *preset,
            SERVER_NAME,
            None,
            "GET",
            "/metrics",
            &[("authorization", &auth)],
        )?;
        anyhow::ensure!(
            answer.status == 200,
            "{} answered {}",
            preset.name(),
            answer.status
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut d = DaemonsetMemory {
        listeners: stack.components.len(),
        concurrency,
        idle_rss_kib: procfs::status_kib(pid, "VmRSS")?,
        idle_anon_kib: procfs::status_kib(pid, "RssAnon")?,
        connections_per_listener: 8,
        load_seconds: if args.quick {
            2
        } else {
            args.duration.as_secs().max(5)
        },
        ..Default::default()
    };
    let loads = stack
        .components
        .iter()
        .map(|(preset, _)| {
            Wrk {
                url: format!("https://{}/metrics", stack.addr(*preset)),
                connections: d.connections_per_listener,
                duration: Duration::from_secs(d.load_seconds),
                token: Some(&token),
                env: vec![("MG_MODE", "static".into())],
                cpu: cores.load,
                script,
            }
            .spawn()
        })
        .collect::<Result<Vec<_>>>()?;
    for load in loads {
        let r = wrk::finish(load)?;
        d.requests += r.requests;
        d.ok += r.ok().saturating_sub(r.socket_errors());
    }
    d.loaded_rss_kib = procfs::status_kib(pid, "VmRSS")?;
    d.loaded_anon_kib = procfs::status_kib(pid, "RssAnon")?;
    d.hwm_kib = procfs::status_kib(pid, "VmHWM")?;
    eprintln!(
        "    idle VmRSS {} KiB; after {} scrapes ({} ok) VmRSS {} KiB, VmHWM {} KiB",
        d.idle_rss_kib, d.requests, d.ok, d.loaded_rss_kib, d.hwm_kib
    );
    Ok(d)
}

/// The `--concurrency` argument of the Envoy container in manifests/base/daemonset.yaml.
fn daemonset_concurrency(root: &Path) -> Result<u32> {
    let path = root.join("manifests/base/daemonset.yaml");
    let text = std::fs::read_to_string(&path)?;
    let ds: Value = serde_yaml_ng::from_str(&text)?;
    let containers = ds["spec"]["template"]["spec"]["containers"].as_array();
    let args: Vec<&str> = containers
        .into_iter()
        .flatten()
        .filter_map(|c| c["args"].as_array())
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let value = args
        .iter()
        .position(|a| *a == "--concurrency")
        .and_then(|i| args.get(i + 1))
        .ok_or_else(|| anyhow::anyhow!("no --concurrency in {}", path.display()))?;
    Ok(value.parse()?)
}
