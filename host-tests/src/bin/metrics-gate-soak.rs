//! metrics-gate-soak: the whole product under steady load for a long time (`just soak`, default one
//! hour), with everything a node lives through happening underneath: the scraper's token rotated every
//! minute (and once a short-lived token used up to its expiry), the apiserver going down, slow and
//! failing in episodes, the proxy's own token and the serving certificate swapped kubelet-style.
//!
//! One [`LocalStack`] with all four component listeners over TLS; keep-alive connections spread over
//! the listeners scrape at a fixed total rate, every answer checked (status; for 200 the component's
//! whole body) and classified (see `soak/ledger.rs`); every 5 s a sample of Envoy's RSS and CPU, the
//! answers so far, the apiserver's callouts and the filter's counters, printed as one line. At the
//! end: `results.json` and `results.md` in the output directory (default `target/soak/`), and
//! `bench/plot_soak.py` draws them. Exits non-zero when the soak found a problem.

#[path = "../soak/mod.rs"]
mod soak;

#[allow(dead_code)] // the soak reads RSS and CPU; pinning and the CPU model are the bench's
#[path = "../bench/procfs.rs"]
mod procfs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Parser;
use metrics_gate_envoy::{
    ClientCertificates, ListenerTls, Preset, CLIENT_CA_FILE, SDS_FILE, SERVING_CERT_FILE,
};
use metrics_gate_host_tests::apiserver::{CallKind, Fault};
use metrics_gate_host_tests::clock::{rfc3339, unix_now};
use metrics_gate_host_tests::envoy_process::{EnvoyOptions, EnvoyProcess};
use metrics_gate_host_tests::stack::{https_request, LocalStack, StackOptions, SERVER_NAME};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};
use serde_json::json;

use soak::client::{stale_connection, Conn, Target};
use soak::ledger::{self, fingerprint, Kind, Ledger, Outcome};
use soak::report::{self, Event, Listener, Report, Sample};

/// Every request's client-side deadline: not answered by then, it is hung.
const DEADLINE: Duration = Duration::from_secs(30);
/// The filter's default `apiserver.timeout_ms` (the soak runs the default plugin configuration).
const APISERVER_TIMEOUT: Duration = Duration::from_millis(5_000);
/// Anonymous-RSS slopes within this are flat.
const FLAT_MIB_PER_HOUR: f64 = 5.0;
/// The RSS slope is judged only over at least this much time (after the first minute).
const MIN_RSS_FIT: Duration = Duration::from_secs(600);

#[derive(Parser, Debug)]
#[command(
    name = "metrics-gate-soak",
    about = "Long steady load on the whole stack with token rotation, apiserver faults and credential swaps"
)]
struct Cli {
    /// How long to run: 1h, 15m, 90s, 1h30m (a bare number is seconds).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    duration: Duration,
    /// Scrapes per second, all listeners together.
    #[arg(long, default_value_t = 300.0)]
    rate: f64,
    /// Where results.json and results.md go [default: target/soak].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep-alive client connections, spread evenly over the four listeners.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Envoy worker threads (`--concurrency`).
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// Time between samples.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    sample_every: Duration,
    /// How often the scraper's token is replaced by a fresh one.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    token_every: Duration,
    /// Listen on the components' own ports (10249, 10257, 10259, 2381) as on a node, instead of free
    /// ones (which lets the soak run beside the integration tests).
    #[arg(long)]
    node_ports: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Ok(Duration::from_secs_f64(secs));
    }
    let mut total = 0.0;
    let mut num = String::new();
    for ch in s.chars() {
        if ch.is_ascii_digit() || ch == '.' {
            num.push(ch);
            continue;
        }
        let unit = match ch {
            'h' => 3600.0,
            'm' => 60.0,
            's' => 1.0,
            _ => return Err(format!("{s:?}: units are h, m, s (e.g. 1h, 15m, 90s)")),
        };
        let n: f64 = num.parse().map_err(|_| format!("{s:?}: a number before each unit"))?;
        total += n * unit;
        num.clear();
    }
    if !num.is_empty() || total <= 0.0 {
        return Err(format!("{s:?}: e.g. 1h, 15m, 90s, 1h30m"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// What the scraper tasks and the conductor share.
struct Shared {
    start: Instant,
    token: RwLock<Arc<str>>,
    ledger: Mutex<Ledger>,
    stop: AtomicBool,
    in_flight: AtomicI64,
}

impl Shared {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One request on a keep-alive connection, opened if needed; retried once on a new connection when
/// the server had just closed the reused one (what every HTTP client does for a GET).
async fn exchange(
    sh: &Shared,
    target: &Target,
    conn: &mut Option<Conn>,
    token: &str,
) -> Result<soak::client::Answer> {
    let mut attempt = 0;
    loop {
        if conn.is_none() {
            let c = Conn::open(target).await?;
            sh.ledger().handshake(&c.peer_cert);
            *conn = Some(c);
        }
        let c = conn.as_mut().expect("opened above");
        let reused = c.used > 0;
        match c.get(target, "/metrics", token, false).await {
            Ok(a) => return Ok(a),
            Err(e) if attempt == 0 && reused && e.before_response && stale_connection(&e.error) => {
                sh.ledger().stale_retries += 1;
                *conn = None;
                attempt += 1;
            }
            Err(e) => return Err(e.error),
        }
    }
}

/// One keep-alive connection to one listener, sending at `period` with the current token.
async fn scraper(
    sh: Arc<Shared>,
    target: Arc<Target>,
    listener: &'static str,
    expected_len: usize,
    period: Duration,
    offset: Duration,
    reconnect_after: Duration,
) {
    let mut next = tokio::time::Instant::now() + offset;
    let mut conn: Option<Conn> = None;
    while !sh.stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next).await;
        if sh.stop.load(Ordering::Relaxed) {
            break;
        }
        // Renew the connection now and then, so TLS handshakes (and a swapped certificate) happen
        // throughout the run.
        if conn
            .as_ref()
            .is_some_and(|c| c.is_closed() || c.opened.elapsed() >= reconnect_after)
        {
            conn = None;
        }
        let token = sh.token.read().unwrap_or_else(|p| p.into_inner()).clone();
        let sent = sh.now();
        sh.in_flight.fetch_add(1, Ordering::Relaxed);
        let answer = tokio::time::timeout(DEADLINE, exchange(&sh, &target, &mut conn, &token)).await;
        sh.in_flight.fetch_sub(1, Ordering::Relaxed);
        let result = match answer {
            Err(_) => {
                conn = None;
                ledger::Result::Hung
            }
            Ok(Err(e)) => {
                conn = None;
                ledger::Result::Transport(format!("{e:#}"))
            }
            Ok(Ok(a)) => ledger::Result::Answer(a),
        };
        let done = sh.now();
        let mut l = sh.ledger();
        l.record(Outcome {
            kind: Kind::Scrape,
            listener,
            sent,
            done,
            expected_len,
            result,
        });
        next += period;
        let now = tokio::time::Instant::now();
        if next < now {
            l.missed_slots += ((now - next).as_secs_f64() / period.as_secs_f64()) as u64;
            next = now;
        }
    }
}

/// One request on a new connection (closed after it), recorded as `kind`.
async fn probe(
    sh: Arc<Shared>,
    target: Arc<Target>,
    listener: &'static str,
    expected_len: usize,
    kind: Kind,
    token: String,
) {
    let sent = sh.now();
    sh.in_flight.fetch_add(1, Ordering::Relaxed);
    let answer = tokio::time::timeout(DEADLINE, async {
        let mut c = Conn::open(&target).await?;
        sh.ledger().handshake(&c.peer_cert);
        c.get(&target, "/metrics", &token, true).await.map_err(|e| e.error)
    })
    .await;
    sh.in_flight.fetch_sub(1, Ordering::Relaxed);
    let result = match answer {
        Err(_) => ledger::Result::Hung,
        Ok(Err(e)) => ledger::Result::Transport(format!("{e:#}")),
        Ok(Ok(a)) => ledger::Result::Answer(a),
    };
    let done = sh.now();
    sh.ledger().record(Outcome {
        kind,
        listener,
        sent,
        done,
        expected_len,
        result,
    });
}

/// Things the conductor does at a given time.
#[derive(Debug, Clone)]
enum Action {
    RotateToken,
    FaultStart { kind: &'static str, secs: f64 },
    FaultEnd,
    ShortLivedToken { lifetime: i64 },
    ShortLivedOver,
    ExpiredProbe,
    ProxyTokenSwap { next_swap: Option<f64> },
    ServingCertSwap,
}

const FAULTS: [&str; 3] = ["down", "slow", "server-error"];
const EPISODE_SECS: [f64; 5] = [20.0, 30.0, 15.0, 25.0, 10.0];

/// The run's schedule, in seconds from the start.
fn plan(d: f64, token_every: f64) -> Vec<(f64, Action)> {
    let mut plan = Vec::new();
    // Fault episodes: one every ~3 min (at least 3), evenly spaced, none in the last stretch.
    let n = ((d / 180.0).round() as usize).max(3);
    let spacing = d / (n as f64 + 1.0);
    let mut episodes = Vec::new();
    for i in 0..n {
        // A little before the even spot, so that some minute rotations fall inside episodes and some
        // do not: both what cached answers do and what a new token gets are seen.
        let start = spacing * (i as f64 + 1.0) - (spacing / 4.0).min(20.0);
        let secs = EPISODE_SECS[i % EPISODE_SECS.len()].min(spacing / 2.0);
        episodes.push((start, secs));
        plan.push((start, Action::FaultStart { kind: FAULTS[i % FAULTS.len()], secs }));
        plan.push((start + secs, Action::FaultEnd));
    }
    // The scraper's token: a fresh one every `token_every`.
    let mut t = token_every;
    while t < d {
        plan.push((t, Action::RotateToken));
        t += token_every;
    }
    // Once, in the gap after the episode nearest 40 % of the run: a short-lived token used up to its
    // expiry, then an expired-token probe. Regular rotations are held off meanwhile.
    let k = (0..n)
        .min_by(|a, b| {
            let da = (episodes[*a].0 - 0.4 * d).abs();
            let db = (episodes[*b].0 - 0.4 * d).abs();
            da.total_cmp(&db)
        })
        .unwrap_or(0);
    let (start, secs) = episodes[k];
    let begin = start + secs + APISERVER_TIMEOUT.as_secs_f64() + 5.0;
    let next = episodes.get(k + 1).map_or(d, |e| e.0);
    let lifetime = (next - begin - 20.0).min(60.0).floor() as i64;
    if lifetime >= 15 {
        plan.push((begin, Action::ShortLivedToken { lifetime }));
    }
    // The proxy's own token: swapped at 35 % of the run, then every 20 min (each token lives until a
    // little after the next swap, so a swap Envoy missed would show as refused reviews).
    let mut swaps = vec![0.35 * d];
    while let Some(last) = swaps.last().copied().filter(|t| t + 1200.0 < d) {
        swaps.push(last + 1200.0);
    }
    for (i, t) in swaps.iter().enumerate() {
        plan.push((*t, Action::ProxyTokenSwap { next_swap: swaps.get(i + 1).copied() }));
    }
    // The serving certificate: at 60 % of the run, then every 30 min.
    let mut t = 0.6 * d;
    while t < d {
        plan.push((t, Action::ServingCertSwap));
        t += 1800.0;
    }
    plan.sort_by(|a, b| a.0.total_cmp(&b.0));
    plan
}

/// Like kubelet, rewrites the proxy's whole projected volume with a new token: every file it holds
/// (the SDS resources beside the token) is written again, so nothing disappears from it.
fn swap_proxy_token(stack: &LocalStack, token: &str) -> Result<()> {
    let mut files: Vec<(&str, Vec<u8>)> = vec![("token", token.as_bytes().to_vec())];
    for name in [SDS_FILE, SERVING_CERT_FILE, CLIENT_CA_FILE] {
        if let Ok(bytes) = stack.credentials.read(name) {
            files.push((name, bytes));
        }
    }
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    stack
        .credentials
        .write(&refs)
        .context("rewriting the proxy's credentials volume")
}

/// Envoy's `wasm*` stats by full name (one admin call).
fn wasm_stats(envoy: &EnvoyProcess) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Ok((200, body)) = envoy.admin("GET", "/stats?filter=^wasm") {
        for line in body.lines() {
            if let Some((n, v)) = line.split_once(": ") {
                if let Ok(v) = v.trim().parse() {
                    out.insert(n.to_string(), v);
                }
            }
        }
    }
    out
}

/// Envoy's allocator gauges: (`server.memory_allocated`, `server.memory_heap_size`) in MiB.
fn heap_mib(envoy: &EnvoyProcess) -> (f64, f64) {
    let mut out = (0.0, 0.0);
    if let Ok((200, body)) = envoy.admin("GET", "/stats?filter=^server.memory_") {
        for line in body.lines() {
            let Some((n, v)) = line.split_once(": ") else { continue };
            let Ok(v) = v.trim().parse::<f64>() else { continue };
            match n {
                "server.memory_allocated" => out.0 = v / 1_048_576.0,
                "server.memory_heap_size" => out.1 = v / 1_048_576.0,
                _ => {}
            }
        }
    }
    out
}

fn filter_counters(stats: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    stats
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("wasmcustom.").map(|s| (s.to_string(), *v)))
        .filter(|(k, _)| k.starts_with("metrics_gate_"))
        .collect()
}

fn vm_counters(stats: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    stats
        .iter()
        .filter(|(k, _)| k.starts_with("wasm.metrics-gate.vm_reload") || k.ends_with(".created"))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn first_line(cmd: &Path, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak failed: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Ok(passed).
fn run(cli: Cli) -> Result<bool> {
    if cli.rate.is_nan() || cli.rate <= 0.0 || cli.connections == 0 {
        bail!("--rate and --connections must be positive");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = cli.out.clone().unwrap_or_else(|| root.join("target/soak"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let d = cli.duration.as_secs_f64();
    let sample_every = cli.sample_every.as_secs_f64().max(1.0);

    eprintln!("==> starting the stack: mock apiserver (TLS), four fake components, Envoy with the filter, listeners over TLS");
    let mut stack = LocalStack::start_with(StackOptions {
        listener_tls: ListenerTls::Tls {
            client_certificates: ClientCertificates::Off,
        },
        envoy: EnvoyOptions {
            concurrency: cli.concurrency,
            ..Default::default()
        },
        plugin_config: json!({}),
        node_ports: cli.node_ports,
        ..Default::default()
    })?;
    let pid = stack.envoy.pid();
    let envoy_version = first_line(&EnvoyProcess::binary()?, "--version");
    let envoy_version = envoy_version
        .split_once("version: ")
        .map_or(envoy_version.as_str(), |(_, v)| v)
        .to_string();
    let serving_ca = stack.serving_ca.cert_pem().to_string();

    let presets = Preset::ALL;
    let mut targets = Vec::new();
    let mut listeners = Vec::new();
    for p in presets {
        let len = stack.component(p).payload().len();
        targets.push((p, Target::new(stack.addr(p), &serving_ca, SERVER_NAME)?, len));
        listeners.push(Listener {
            component: p.name().to_string(),
            payload_bytes: len,
        });
        eprintln!("    {:<24} {}  /metrics body {} bytes", p.name(), stack.addr(p), len);
    }

    let sa = ServiceAccount::prometheus_server();
    let shared = Arc::new(Shared {
        start: Instant::now(),
        token: RwLock::new(Arc::from(stack.token(&sa, TokenOptions::default()))),
        ledger: Mutex::new(Ledger::new(APISERVER_TIMEOUT.as_secs_f64() + 2.0)),
        stop: AtomicBool::new(false),
        in_flight: AtomicI64::new(0),
    });
    let mut events: Vec<Event> = Vec::new();
    let event = |events: &mut Vec<Event>, t: f64, what: String| {
        eprintln!("    {:>7.1} s  {what}", t);
        events.push(Event { t, what });
    };

    let mut schedule = plan(d, cli.token_every.as_secs_f64());
    // The proxy starts with a token that lives only until a little after the first swap.
    let first_swap = schedule
        .iter()
        .find(|(_, a)| matches!(a, Action::ProxyTokenSwap { .. }))
        .map_or(d, |(t, _)| *t);
    let proxy = ServiceAccount::metrics_gate();
    swap_proxy_token(
        &stack,
        &stack.token(&proxy, TokenOptions::default().lifetime_secs(first_swap as i64 + 120)),
    )?;
    event(
        &mut events,
        shared.now(),
        format!("proxy token: one valid for {} s (until shortly after the first swap)", first_swap as i64 + 120),
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("soak-client")
        .enable_all()
        .build()?;
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        runtime.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted.store(true, Ordering::Relaxed);
            }
        });
    }
    let period = Duration::from_secs_f64(cli.connections as f64 / cli.rate);
    let mut tasks = Vec::new();
    for i in 0..cli.connections {
        let (p, target, len) = &targets[i % targets.len()];
        let offset = period.mul_f64(i as f64 / cli.connections as f64);
        // 45–75 s, different per connection.
        let reconnect = Duration::from_secs(45 + (i as u64 * 7919) % 31);
        tasks.push(runtime.spawn(scraper(
            shared.clone(),
            target.clone(),
            p.name(),
            *len,
            period,
            offset,
            reconnect,
        )));
    }
    eprintln!(
        "==> soak for {} at {} req/s over {} connections; a sample every {:.0} s (Ctrl-C ends it early, with the report)",
        report::hms(d),
        cli.rate,
        cli.connections,
        sample_every
    );

    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = sample_every;
    let mut last_cpu = (
        procfs::cpu_seconds(pid).unwrap_or(0.0),
        procfs::cpu_seconds(std::process::id()).unwrap_or(0.0),
    );
    let mut last_sample_t = 0.0;
    let mut fault: Option<&'static str> = None;
    let mut fault_ends = 0.0;
    let mut next_probe = 0.0;
    let mut probe_n = 0usize;
    let mut short_lived: Option<(String, i64)> = None;
    let mut cert_checks: Vec<std::thread::JoinHandle<Option<f64>>> = Vec::new();
    let mut proxy_swap_calls_from = Vec::new();
    let mut current_cert = fingerprint(&metrics_gate_host_tests::stack::cert_der(
        &String::from_utf8(stack.tls_dir.read("tls.crt")?)?,
    )?);
    event(&mut events, shared.now(), format!("serving certificate {current_cert}"));

    let me = std::process::id();
    let take_sample = |shared: &Shared,
                       samples: &mut Vec<Sample>,
                       last_cpu: &mut (f64, f64),
                       last_t: &mut f64,
                       fault: Option<&'static str>| {
        let t = shared.now();
        let cpu = (
            procfs::cpu_seconds(pid).unwrap_or(last_cpu.0),
            procfs::cpu_seconds(me).unwrap_or(last_cpu.1),
        );
        let dt = (t - *last_t).max(1e-3);
        let cpu_pct = (cpu.0 - last_cpu.0) / dt * 100.0;
        let harness_cpu_pct = (cpu.1 - last_cpu.1) / dt * 100.0;
        *last_cpu = cpu;
        *last_t = t;
        let rss_mib = procfs::status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
        let harness_rss_mib =
            procfs::status_kib(std::process::id(), "VmRSS").unwrap_or(0) as f64 / 1024.0;
        let (interval, latency, totals) = {
            let mut l = shared.ledger();
            let (i, lat) = l.take_interval();
            (i, lat, l.total.clone())
        };
        let stats = wasm_stats(&stack.envoy);
        let counters = filter_counters(&stats);
        // The fakes record every request's headers: forget them, so the harness stays flat too.
        for (_, c) in &stack.components {
            c.clear();
        }
        let (heap_allocated_mib, heap_size_mib) = heap_mib(&stack.envoy);
        let s = Sample {
            t,
            heap_allocated_mib,
            heap_size_mib,
            rss_anon_mib: procfs::status_kib(pid, "RssAnon").unwrap_or(0) as f64 / 1024.0,
            rss_file_mib: procfs::status_kib(pid, "RssFile").unwrap_or(0) as f64 / 1024.0,
            requests_total: totals.requests,
            rps: interval.requests as f64 / dt,
            rss_mib,
            cpu_pct,
            harness_rss_mib,
            harness_cpu_pct,
            latency,
            unexpected_total: totals.unexpected_total(),
            hung_total: totals.hung,
            token_reviews: stack.apiserver.count(CallKind::TokenReview) as u64,
            subject_access_reviews: stack.apiserver.count(CallKind::SubjectAccessReview) as u64,
            callouts_in_flight: counters.get("metrics_gate_callouts_in_flight").copied().unwrap_or(0),
            counters,
            fault,
            interval,
        };
        println!(
            "[{:>8}] {:>6.1} req/s  RSS {:>6.1} MiB (heap {:.1})  CPU {:>5.1}%  non-200: {:>3} expected, {} unexpected, {} hung (total {} / {})  TR {} SAR {}  in flight {}  p99 {:.1} ms{}",
            report::hms(s.t),
            s.rps,
            s.rss_mib,
            s.heap_allocated_mib,
            s.cpu_pct,
            s.interval.expected_total(),
            s.interval.unexpected_total(),
            s.interval.hung,
            totals.expected_total(),
            s.unexpected_total,
            s.token_reviews,
            s.subject_access_reviews,
            s.callouts_in_flight,
            s.latency.p99_ms,
            fault.map(|f| format!("  [apiserver {f}]")).unwrap_or_default(),
        );
        samples.push(s);
    };

    // ---- the run ----
    while shared.now() < d && !interrupted.load(Ordering::Relaxed) {
        let now = shared.now();
        while schedule.first().is_some_and(|(t, _)| *t <= now) {
            let (_, action) = schedule.remove(0);
            match action {
                Action::RotateToken => {
                    if short_lived.is_none() {
                        let token = stack.token(&sa, TokenOptions::default());
                        *shared.token.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(token);
                        events.push(Event { t: now, what: "scraper token rotated".into() });
                    }
                }
                Action::FaultStart { kind, secs } => {
                    shared.ledger().episode_starts(kind, shared.now());
                    stack.apiserver.set_fault(match kind {
                        "down" => Fault::Down,
                        "slow" => Fault::Slow(APISERVER_TIMEOUT + Duration::from_secs(3)),
                        _ => Fault::ServerError,
                    });
                    fault = Some(kind);
                    fault_ends = now + secs;
                    next_probe = now + 1.0;
                    event(&mut events, now, format!("apiserver fault: {kind} for {secs:.0} s"));
                }
                Action::FaultEnd => {
                    stack.apiserver.set_fault(Fault::None);
                    shared.ledger().episode_ends(shared.now());
                    fault = None;
                    event(&mut events, now, "apiserver back to normal".into());
                }
                Action::ShortLivedToken { lifetime } => {
                    let token = stack.token(&sa, TokenOptions::default().lifetime_secs(lifetime));
                    // `exp` as minted (whole seconds).
                    let exp = unix_now() + lifetime;
                    *shared.token.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(token.as_str());
                    short_lived = Some((token, exp));
                    // Used until 2 s before `exp`, then replaced; probed 3 s after `exp`.
                    let until = now + (exp as f64 - unix_now_f64()) - 2.0;
                    schedule.push((until, Action::ShortLivedOver));
                    schedule.push((until + 5.0, Action::ExpiredProbe));
                    schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
                    event(&mut events, now, format!("scraper token: a short-lived one ({lifetime} s), used up to 2 s before it expires"));
                }
                Action::ShortLivedOver => {
                    let token = stack.token(&sa, TokenOptions::default());
                    *shared.token.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(token);
                    event(&mut events, now, "scraper token: the short-lived one replaced by a fresh one".into());
                }
                Action::ExpiredProbe => {
                    if let Some((token, exp)) = short_lived.take() {
                        for (p, target, len) in &targets {
                            runtime.spawn(probe(
                                shared.clone(),
                                target.clone(),
                                p.name(),
                                *len,
                                Kind::ProbeExpiredToken,
                                token.clone(),
                            ));
                        }
                        event(&mut events, now, format!("expired-token probe on every listener ({} s past exp)", unix_now() - exp));
                    }
                }
                Action::ProxyTokenSwap { next_swap } => {
                    let lifetime = next_swap.map_or(d - now + 600.0, |n| n - now + 120.0) as i64;
                    let token = stack.token(&proxy, TokenOptions::default().lifetime_secs(lifetime));
                    proxy_swap_calls_from.push(stack.apiserver.calls().len());
                    swap_proxy_token(&stack, &token)?;
                    event(&mut events, now, format!("proxy token swapped (kubelet-style ..data swap), the new one valid {lifetime} s; the old one expires in 120 s"));
                }
                Action::ServingCertSwap => {
                    let cert = stack.rotate_serving_cert()?;
                    let der = metrics_gate_host_tests::stack::cert_der(&cert.cert_pem)?;
                    current_cert = fingerprint(&der);
                    event(&mut events, now, format!("serving certificate swapped (..data swap) to {current_cert}"));
                    // Watch for it on new connections, away from the conductor.
                    let addr = stack.addr(Preset::Etcd);
                    let ca = serving_ca.clone();
                    let token = shared.token.read().unwrap_or_else(|p| p.into_inner()).to_string();
                    cert_checks.push(std::thread::spawn(move || {
                        let started = Instant::now();
                        let auth = format!("Bearer {token}");
                        while started.elapsed() < Duration::from_secs(30) {
                            if let Ok(r) = https_request(addr, SERVER_NAME, &ca, None, "GET", "/metrics", &[("authorization", &auth)]) {
                                if r.peer_certificate == der {
                                    return Some(started.elapsed().as_secs_f64());
                                }
                            }
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        None
                    }));
                }
            }
        }
        // During an episode, a brand-new token every 2 s: nothing cached for it, so 503.
        if fault.is_some() && now >= next_probe && now < fault_ends - 2.0 {
            let (p, target, len) = &targets[probe_n % targets.len()];
            probe_n += 1;
            runtime.spawn(probe(
                shared.clone(),
                target.clone(),
                p.name(),
                *len,
                Kind::ProbeNewToken,
                stack.token(&sa, TokenOptions::default()),
            ));
            next_probe = now + 2.0;
        }
        if now >= next_sample {
            take_sample(&shared, &mut samples, &mut last_cpu, &mut last_sample_t, fault);
            next_sample += sample_every;
            if procfs::status_kib(pid, "VmRSS").is_err() {
                event(&mut events, now, format!("Envoy (pid {pid}) is gone: the run ends"));
                break;
            }
        }
        let wake = schedule
            .first()
            .map_or(next_sample, |(t, _)| t.min(next_sample))
            .min(if fault.is_some() { next_probe } else { f64::INFINITY });
        let sleep = (wake - shared.now()).clamp(0.0, 0.25);
        std::thread::sleep(Duration::from_secs_f64(sleep));
    }
    let interrupted = interrupted.load(Ordering::Relaxed);
    if fault.is_some() {
        stack.apiserver.set_fault(Fault::None);
        shared.ledger().episode_ends(shared.now());
    }

    // ---- the end: every request answered, callouts back to 0 ----
    eprintln!("==> stopping the scrapers and waiting for the requests in flight");
    shared.stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(DEADLINE + Duration::from_secs(5), t).await;
        }
        let deadline = Instant::now() + DEADLINE + Duration::from_secs(5);
        while shared.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let elapsed = shared.now();
    let mut callouts_in_flight_end = u64::MAX;
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(30) {
        callouts_in_flight_end = filter_counters(&wasm_stats(&stack.envoy))
            .get("metrics_gate_callouts_in_flight")
            .copied()
            .unwrap_or(0);
        if callouts_in_flight_end == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    take_sample(&shared, &mut samples, &mut last_cpu, &mut last_sample_t, None);
    let stats = wasm_stats(&stack.envoy);
    let envoy_running = stack.envoy.is_running();

    // ---- report ----
    let ledger = shared.ledger();
    let totals = ledger.total.clone();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    if totals.hung > 0 {
        problems.push(format!("{} hung requests (no answer within {} s)", totals.hung, DEADLINE.as_secs()));
    }
    if totals.unexpected_total() > 0 {
        problems.push(format!(
            "{} unexpected answers: {}",
            totals.unexpected_total(),
            totals.unexpected.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        ));
    }
    let vm = vm_counters(&stats);
    let reloads: u64 = vm.iter().filter(|(k, _)| k.contains("vm_reload")).map(|(_, v)| *v).sum();
    if reloads > 0 {
        problems.push(format!("the VM was reloaded: {vm:?}"));
    }
    if callouts_in_flight_end != 0 {
        problems.push(format!("metrics_gate_callouts_in_flight is {callouts_in_flight_end} 30 s after the last request"));
    }
    let mut rss = report::rss_summary(&samples, 60.0_f64.min(elapsed / 4.0));
    // Over a few minutes a slope says little (one allocator step is enough to make it steep).
    rss.judged = elapsed - rss.fit_from_s >= MIN_RSS_FIT.as_secs_f64();
    if !rss.judged {
        notes.push(format!(
            "the RSS slope (anonymous {:+.2} MiB/h) is not judged: the run is shorter than {} min after the first minute",
            rss.anon_slope_mib_per_hour,
            MIN_RSS_FIT.as_secs() / 60
        ));
    } else if rss.anon_slope_mib_per_hour.abs() > FLAT_MIB_PER_HOUR {
        problems.push(format!(
            "Envoy's anonymous RSS is not flat: {:+.2} MiB/h after the first minute ({:.1} -> {:.1} MiB, max {:.1}; total RSS {:.1} -> {:.1})",
            rss.anon_slope_mib_per_hour,
            rss.anon_first_mib,
            rss.anon_last_mib,
            rss.anon_max_mib,
            rss.first_mib,
            rss.last_mib
        ));
    }
    let crash = metrics_gate_host_tests::adversarial::crash_lines(&stack);
    if !crash.is_empty() {
        problems.push(format!("Envoy logged {} lines telling of a crashed filter", crash.len()));
    }
    if !envoy_running {
        problems.push(format!("Envoy (pid {pid}) is no longer running"));
    }
    // The proxy's own token: after each swap, no review may be refused for the proxy's credential.
    let calls = stack.apiserver.calls();
    for (i, from) in proxy_swap_calls_from.iter().enumerate() {
        let refused = calls[*from..].iter().filter(|c| c.status == 401 || c.status == 403).count();
        let answered = calls[*from..].iter().filter(|c| c.status == 201).count();
        let what = format!("proxy token swap {}: {answered} reviews answered afterwards, {refused} refused for the proxy's credential", i + 1);
        if refused > 0 {
            problems.push(what.clone());
        }
        events.push(Event { t: elapsed, what });
    }
    for (i, h) in cert_checks.into_iter().enumerate() {
        match h.join().ok().flatten() {
            Some(secs) => events.push(Event {
                t: elapsed,
                what: format!("serving certificate swap {}: served to new connections {secs:.1} s after the swap", i + 1),
            }),
            None => problems.push(format!("serving certificate swap {}: not served within 30 s", i + 1)),
        }
    }
    let achieved_rps = totals.requests as f64 / elapsed.max(1e-3);
    if achieved_rps < 0.9 * cli.rate {
        notes.push(format!(
            "achieved {achieved_rps:.1} req/s of {} (the machine was busy, or answers were held during faults)",
            cli.rate
        ));
    }
    events.sort_by(|a, b| a.t.total_cmp(&b.t));
    let cpu: Vec<f64> = samples.iter().map(|s| s.cpu_pct).collect();
    let last = samples.last();
    let report = Report {
        date: rfc3339(SystemTime::now()),
        command: std::env::var("MG_SOAK_COMMAND")
            .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" ")),
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: procfs::cpu_model(),
        envoy_version,
        planned_duration_s: d,
        elapsed_s: elapsed,
        interrupted,
        rate_target: cli.rate,
        connections: cli.connections,
        envoy_concurrency: cli.concurrency,
        apiserver_timeout_ms: APISERVER_TIMEOUT.as_millis() as u64,
        slow_fault_delay_ms: (APISERVER_TIMEOUT + Duration::from_secs(3)).as_millis() as u64,
        sample_interval_s: sample_every,
        listeners,
        achieved_rps,
        rss,
        cpu_mean_pct: cpu.iter().sum::<f64>() / cpu.len().max(1) as f64,
        cpu_max_pct: cpu.iter().copied().fold(0.0, f64::max),
        token_reviews: last.map_or(0, |s| s.token_reviews),
        subject_access_reviews: last.map_or(0, |s| s.subject_access_reviews),
        filter_counters: filter_counters(&stats),
        vm,
        callouts_in_flight_end,
        episodes: ledger.episodes.clone(),
        events,
        handshakes_by_certificate: ledger.handshakes.clone(),
        stale_connection_retries: ledger.stale_retries,
        missed_slots: ledger.missed_slots,
        envoy_crash_log_lines: crash,
        unexpected_examples: ledger.examples.clone(),
        problems,
        notes,
        samples,
        totals,
    };
    drop(ledger);
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(&report)?)?;
    let md = report::markdown(&report);
    std::fs::write(out.join("results.md"), &md)?;
    println!("\n{md}");
    println!("==> {}", out.join("results.json").display());
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(report.problems.is_empty())
}
