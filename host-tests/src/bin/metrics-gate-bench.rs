//! metrics-gate-bench: throughput, latency, CPU and memory of metrics-gate against bare Envoy and the
//! seed's HAProxy, in one interleaved run on loopback (`just bench`; BENCHMARKS.md has the results
//! and how to read them).
//!
//! Setups, all serving the same plain-HTTP fake component (225 KB kube-controller-manager body and
//! 27 KB kube-proxy body):
//!   a  the fake directly
//!   b  bare Envoy: the rendered bootstrap with the wasm filter taken out
//!   c  Envoy + metrics-gate, warm cache (one authorized token)
//!   d  Envoy + metrics-gate, a new valid token on every request (apiserver double answers in ~2 ms)
//!   e  HAProxy 2.6 with the seed's configuration (bench/haproxy.cfg)
//! Proxies run on one core with one worker; wrk and this process (fake, apiserver double) on the other.
//! Then a flood run (bogus tokens while an authorized scraper runs) and a memory run (RSS after
//! 10k and 1M requests with distinct bogus tokens).

#[path = "../bench/mod.rs"]
mod bench;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::{CallKind, Fault};
use metrics_gate_host_tests::components::{ComponentKind, ComponentOptions, FakeComponent};
use metrics_gate_host_tests::envoy_process::{EnvoyOptions, EnvoyProcess};
use metrics_gate_host_tests::stack::{LocalStack, StackOptions, WasmBuild, NODE_IP};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};
use serde::Serialize;
use serde_json::{json, Value};

use bench::procfs;
use bench::wrk::{self, Wrk, WrkResult};

const USAGE: &str = "\
metrics-gate-bench [options]
  --quick               smoke run of about a minute: 1 s runs, concurrency 8 only, small flood and memory runs
  --duration SECS       length of every measured run (default 10)
  --concurrency LIST    comma-separated wrk connection counts (default 1,8,64)
  --tokens N            valid tokens minted for setup d (default 24000)
  --flood-tokens N      distinct bogus tokens of the flood run (default 10000)
  --memory-requests N   requests of the memory run's second reading (default 1000000)
  --skip-flood, --skip-memory
  --hold                start and warm every setup, print their URLs and PIDs, wait (for profiling)
  --out DIR             where results.json and results.md go (default bench/results)
  --doc FILE            replace the results block of FILE (BENCHMARKS.md) with results.md
";

/// The listeners of the rendered stack that the bench uses, and what they serve. Both presets
/// proxy plain HTTP to their upstream without credentials; their clusters are pointed at the
/// bench's fakes.
const PAYLOADS: [(&str, Preset, ComponentKind); 2] = [
    ("225k", Preset::Etcd, ComponentKind::KubeControllerManager),
    ("27k", Preset::KubeProxy, ComponentKind::KubeProxy),
];

const SETUPS: [Setup; 5] = [
    Setup::Direct,
    Setup::Bare,
    Setup::Warm,
    Setup::Fresh,
    Setup::Haproxy,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Setup {
    Direct,
    Bare,
    Warm,
    Fresh,
    Haproxy,
}

impl Setup {
    fn id(self) -> &'static str {
        match self {
            Setup::Direct => "a",
            Setup::Bare => "b",
            Setup::Warm => "c",
            Setup::Fresh => "d",
            Setup::Haproxy => "e",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Setup::Direct => "a: fake upstream directly",
            Setup::Bare => "b: bare Envoy (no filter)",
            Setup::Warm => "c: Envoy + metrics-gate, warm cache",
            Setup::Fresh => "d: Envoy + metrics-gate, new token per request",
            Setup::Haproxy => "e: HAProxy 2.6, seed config",
        }
    }
}

struct Args {
    quick: bool,
    duration: Duration,
    concurrency: Vec<u32>,
    tokens: usize,
    flood_tokens: u64,
    memory_requests: u64,
    skip_flood: bool,
    skip_memory: bool,
    hold: bool,
    out: PathBuf,
    doc: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut a = Args {
        quick: false,
        duration: Duration::from_secs(10),
        concurrency: vec![1, 8, 64],
        tokens: 24_000,
        flood_tokens: 10_000,
        memory_requests: 1_000_000,
        skip_flood: false,
        skip_memory: false,
        hold: false,
        out: root.join("bench/results"),
        doc: None,
    };
    let mut explicit_duration = false;
    let mut explicit_concurrency = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| anyhow!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--duration" => {
                a.duration = Duration::from_secs(value("--duration")?.parse()?);
                explicit_duration = true;
            }
            "--concurrency" => {
                a.concurrency = value("--concurrency")?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?;
                explicit_concurrency = true;
            }
            "--tokens" => a.tokens = value("--tokens")?.parse()?,
            "--flood-tokens" => a.flood_tokens = value("--flood-tokens")?.parse()?,
            "--memory-requests" => a.memory_requests = value("--memory-requests")?.parse()?,
            "--skip-flood" => a.skip_flood = true,
            "--skip-memory" => a.skip_memory = true,
            "--hold" => a.hold = true,
            "--out" => a.out = PathBuf::from(value("--out")?),
            "--doc" => a.doc = Some(PathBuf::from(value("--doc")?)),
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if a.quick {
        if !explicit_duration {
            a.duration = Duration::from_secs(1);
        }
        if !explicit_concurrency {
            a.concurrency = vec![8];
        }
        a.tokens = a.tokens.min(1_500);
        a.flood_tokens = a.flood_tokens.min(1_000);
        a.memory_requests = a.memory_requests.min(4_000);
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// Bootstrap surgery: the rendered stack, pointed at the bench's fakes, with or without the filter.

fn listeners_mut<'a>(config: &'a mut Value, name: &str) -> Vec<&'a mut Value> {
    config["static_resources"]["listeners"]
        .as_array_mut()
        .map(|ls| ls.iter_mut().filter(|l| l["name"] == name).collect())
        .unwrap_or_default()
}

fn http_filter_lists(listener: &mut Value) -> Vec<&mut Vec<Value>> {
    let mut lists = Vec::new();
    if let Some(chains) = listener["filter_chains"].as_array_mut() {
        for chain in chains {
            if let Some(filters) = chain["filters"].as_array_mut() {
                for f in filters {
                    if let Some(hf) = f["typed_config"]["http_filters"].as_array_mut() {
                        lists.push(hf);
                    }
                }
            }
        }
    }
    lists
}

fn set_socket_addresses(v: &mut Value, addr: SocketAddr) {
    match v {
        Value::Object(map) => {
            if let Some(sa) = map.get_mut("socket_address") {
                sa["address"] = json!(addr.ip().to_string());
                sa["port_value"] = json!(addr.port());
            }
            for (_, child) in map.iter_mut() {
                set_socket_addresses(child, addr);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| set_socket_addresses(i, addr)),
        _ => {}
    }
}

/// The stack's bootstrap serving plain HTTP on the bench's listeners, their clusters pointed at
/// the fakes.
fn bench_bootstrap(stack: &LocalStack, upstreams: &[(Preset, SocketAddr)]) -> Value {
    let mut config = stack.config.clone();
    for (preset, addr) in upstreams {
        if let Some(clusters) = config["static_resources"]["clusters"].as_array_mut() {
            for c in clusters.iter_mut().filter(|c| c["name"] == preset.name()) {
                set_socket_addresses(&mut c["load_assignment"], *addr);
                if let Some(obj) = c.as_object_mut() {
                    obj.remove("transport_socket");
                }
            }
        }
        for l in listeners_mut(&mut config, preset.name()) {
            if let Some(chains) = l["filter_chains"].as_array_mut() {
                for chain in chains.iter_mut().filter_map(Value::as_object_mut) {
                    chain.remove("transport_socket");
                }
            }
        }
    }
    config
}

fn without_filter(config: &Value) -> Value {
    let mut config = config.clone();
    for (_, preset, _) in PAYLOADS {
        for l in listeners_mut(&mut config, preset.name()) {
            for list in http_filter_lists(l) {
                list.retain(|f| f["name"] != "envoy.filters.http.wasm");
            }
        }
    }
    config
}

fn with_plugin_config(config: &Value, plugin: &Value) -> Value {
    let mut config = config.clone();
    for (_, preset, _) in PAYLOADS {
        for l in listeners_mut(&mut config, preset.name()) {
            for list in http_filter_lists(l) {
                for f in list
                    .iter_mut()
                    .filter(|f| f["name"] == "envoy.filters.http.wasm")
                {
                    f["typed_config"]["config"]["configuration"]["value"] =
                        json!(plugin.to_string());
                }
            }
        }
    }
    config
}

/// Experiment only (`MG_BENCH_TUNE=1`, not part of `just bench`): the Envoy settings BENCHMARKS.md
/// suggests, applied to the bench's listeners, to measure them before the renderer adopts them.
fn tuned(config: &Value) -> Value {
    let mut config = config.clone();
    for (_, preset, _) in PAYLOADS {
        for l in listeners_mut(&mut config, preset.name()) {
            if let Some(chains) = l["filter_chains"].as_array_mut() {
                for chain in chains {
                    if let Some(filters) = chain["filters"].as_array_mut() {
                        for f in filters {
                            let hcm = &mut f["typed_config"];
                            hcm["codec_type"] = json!("HTTP1");
                            hcm["generate_request_id"] = json!(false);
                            if let Some(hf) = hcm["http_filters"].as_array_mut() {
                                for r in hf
                                    .iter_mut()
                                    .filter(|f| f["name"] == "envoy.filters.http.router")
                                {
                                    r["typed_config"]["dynamic_stats"] = json!(false);
                                    r["typed_config"]["suppress_envoy_headers"] = json!(true);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    config["stats_config"] = json!({"stats_matcher": {"inclusion_list": {"patterns": [
        {"prefix": "wasmcustom."},
        {"prefix": "cluster.kube-apiserver."},
        {"prefix": "server."}
    ]}}});
    config
}

// ---------------------------------------------------------------------------------------------
// The proxies.

struct Cores {
    load: Option<usize>,
    proxy: Option<usize>,
}

enum Proxy {
    None,
    Envoy(EnvoyProcess),
    Haproxy(Child),
}

impl Proxy {
    fn pid(&self) -> Option<u32> {
        match self {
            Proxy::None => None,
            Proxy::Envoy(e) => Some(e.pid()),
            Proxy::Haproxy(c) => Some(c.id()),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Proxy::Haproxy(child) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_envoy(config: &Value, cores: &Cores) -> Result<EnvoyProcess> {
    let envoy = EnvoyProcess::start(
        config,
        EnvoyOptions {
            concurrency: 1,
            log_level: "warning".into(),
            ..Default::default()
        },
    )?;
    if let Some(cpu) = cores.proxy {
        procfs::pin(envoy.pid(), cpu)?;
    }
    Ok(envoy)
}

fn free_port(ip: Ipv4Addr) -> Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn start_haproxy(
    cfg: &Path,
    upstreams: &BTreeMap<&'static str, SocketAddr>,
    cores: &Cores,
) -> Result<(Child, BTreeMap<&'static str, SocketAddr>)> {
    let node_ip = match NODE_IP {
        std::net::IpAddr::V4(ip) => ip,
        std::net::IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
    };
    let mut binds = BTreeMap::new();
    let mut cmd = match cores.proxy {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "haproxy"]);
            c
        }
        None => Command::new("haproxy"),
    };
    cmd.arg("-db").arg("-f").arg(cfg);
    for (payload, upstream) in upstreams {
        let bind = SocketAddr::from((node_ip, free_port(node_ip)?));
        let suffix = payload.to_uppercase();
        cmd.env(format!("MG_BIND_{suffix}"), bind.to_string());
        cmd.env(format!("MG_UPSTREAM_{suffix}"), upstream.to_string());
        binds.insert(*payload, bind);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let child = cmd
        .spawn()
        .context("starting haproxy (Debian: apt-get install haproxy)")?;
    for addr in binds.values() {
        wait_for_port(*addr, Duration::from_secs(10))?;
    }
    Ok((child, binds))
}

// ---------------------------------------------------------------------------------------------
// Results.

#[derive(Serialize, Clone)]
struct Run {
    setup: &'static str,
    payload: &'static str,
    connections: u32,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    /// Proxy CPU (user + system) per 10,000 requests; none for the direct setup.
    cpu_s_per_10k: Option<f64>,
    token_reviews: u64,
    subject_access_reviews: u64,
    apiserver_calls_per_10k: f64,
    wrk: WrkResult,
}

#[derive(Serialize)]
struct SetupMemory {
    setup: &'static str,
    vm_hwm_kib: u64,
    vm_rss_kib: u64,
}

#[derive(Serialize, Default)]
struct Flood {
    plugin_config: String,
    cap_field_present: bool,
    bogus_tokens: u64,
    flood_connections: u32,
    flood_seconds: f64,
    flood_rps: f64,
    flood_token_reviews: u64,
    flood_subject_access_reviews: u64,
    max_callouts_in_flight_seen: u64,
    max_apiserver_requests_active_seen: u64,
    rejected_by_cap: u64,
    unauthenticated: u64,
    apiserver_errors: u64,
    scraper_connections: u32,
    scraper_baseline: WrkResult,
    scraper_baseline_rps: f64,
    scraper_under_flood: WrkResult,
    scraper_success_rate: f64,
    scraper_rps_during_flood: f64,
}

#[derive(Serialize, Default)]
struct Memory {
    connections: u32,
    rss_start_kib: u64,
    requests_first: u64,
    rss_after_first_kib: u64,
    requests_total: u64,
    rss_after_total_kib: u64,
    hwm_kib: u64,
    token_reviews: u64,
    seconds: f64,
    cache_evictions: u64,
    /// (apiserver calls so far, VmRSS KiB) every few seconds.
    rss_samples: Vec<(u64, u64)>,
}

#[derive(Serialize)]
struct Report {
    date: String,
    nproc: usize,
    cpu_model: String,
    kernel: String,
    envoy_version: String,
    haproxy_version: String,
    wrk_version: String,
    command: String,
    quick: bool,
    duration_s: u64,
    wasm_bytes: u64,
    payload_bytes: BTreeMap<&'static str, usize>,
    apiserver_delay_ms: u64,
    fresh_tokens_minted: usize,
    runs: Vec<Run>,
    memory_per_setup: Vec<SetupMemory>,
    flood: Option<Flood>,
    memory: Option<Memory>,
    notes: Vec<String>,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Envoy stats whose names contain `filter`, as numbers.
fn envoy_stats(envoy: &EnvoyProcess, filter: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Ok((200, body)) = envoy.admin("GET", &format!("/stats?filter={filter}")) {
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

fn stat(stats: &BTreeMap<String, u64>, suffix: &str) -> u64 {
    stats
        .iter()
        .filter(|(k, _)| k.ends_with(suffix))
        .map(|(_, v)| *v)
        .sum()
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("bench/wrk/bench.lua");
    let haproxy_cfg = root.join("bench/haproxy.cfg");
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = if nproc >= 2 {
        Cores {
            load: Some(0),
            proxy: Some(1),
        }
    } else {
        Cores {
            load: None,
            proxy: None,
        }
    };
    let mut notes = Vec::new();
    // This process serves the fakes and the apiserver double: it shares the load core with wrk.
    // Pinned before the io runtime starts its threads, which inherit it.
    if let Some(cpu) = cores.load {
        procfs::pin(std::process::id(), cpu)?;
    } else {
        notes.push("one CPU only: nothing pinned, proxies and load share it".into());
    }

    let wasm = WasmBuild::Release.path()?;
    let wasm_bytes = std::fs::metadata(&wasm)?.len();
    eprintln!("==> .wasm: {wasm_bytes} bytes");

    // The fakes: plain HTTP, nothing recorded.
    let mut fakes = Vec::new();
    let mut payload_bytes = BTreeMap::new();
    for (payload, _, kind) in PAYLOADS {
        let body = kind.payload();
        payload_bytes.insert(payload, body.len());
        let fake = FakeComponent::start(
            ComponentKind::KubeProxy,
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            ComponentOptions {
                payload: Some(body),
                no_recording: true,
                ..Default::default()
            },
        )?;
        fakes.push((payload, fake));
    }
    let fake_addr = |p: &str| {
        fakes
            .iter()
            .find(|(n, _)| *n == p)
            .map(|(_, f)| f.addr())
            .unwrap()
    };

    // The rendered stack (mock apiserver, credentials, bootstrap); its own Envoy is not needed.
    eprintln!("==> starting the stack (mock apiserver, renderer)");
    let mut stack = LocalStack::start_with(StackOptions {
        presets: PAYLOADS.iter().map(|(_, p, _)| *p).collect(),
        ..Default::default()
    })?;
    stack.envoy.stop()?;
    let upstreams: Vec<(Preset, SocketAddr)> = PAYLOADS
        .iter()
        .map(|(payload, preset, _)| (*preset, fake_addr(payload)))
        .collect();
    let mut gated = bench_bootstrap(&stack, &upstreams);
    if std::env::var("MG_BENCH_TUNE").is_ok_and(|v| v == "1") {
        gated = tuned(&gated);
        notes.push("MG_BENCH_TUNE=1: Envoy settings of the tuning experiment applied".into());
    }
    let bare = without_filter(&gated);
    let api = &stack.apiserver;
    let issuer = api.issuer();
    let warm_token = stack.prometheus_token();

    // New valid tokens for setup d, all of the authorized account, each distinct (its own `exp`).
    eprintln!("==> minting {} RS256 tokens for setup d", args.tokens);
    let t0 = Instant::now();
    let fresh_tokens: Vec<String> = {
        let workers = nproc.clamp(1, 2);
        let sa = ServiceAccount::prometheus_server();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let issuer = issuer.clone();
                    let sa = sa.clone();
                    let n = args.tokens;
                    s.spawn(move || {
                        (w..n)
                            .step_by(workers)
                            .map(|i| {
                                issuer.mint(
                                    &sa,
                                    TokenOptions::default().lifetime_secs(7200 + i as i64),
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("minting thread"))
                .collect()
        })
    };
    eprintln!("    {:.1} s", t0.elapsed().as_secs_f64());
    let tokens_dir = tempfile::tempdir()?;
    let tokens_file = tokens_dir.path().join("tokens.txt");
    std::fs::write(&tokens_file, fresh_tokens.join("\n"))?;
    let mut token_cursor: u64 = 0;

    // The proxies.
    eprintln!("==> starting bare Envoy, two Envoys with metrics-gate, HAProxy");
    let mut proxies: BTreeMap<Setup, Proxy> = BTreeMap::new();
    let mut addrs: BTreeMap<(Setup, &'static str), SocketAddr> = BTreeMap::new();
    for (payload, _, _) in PAYLOADS {
        addrs.insert((Setup::Direct, payload), fake_addr(payload));
    }
    proxies.insert(Setup::Direct, Proxy::None);
    for (setup, config) in [
        (Setup::Bare, &bare),
        (Setup::Warm, &gated),
        (Setup::Fresh, &gated),
    ] {
        let envoy = start_envoy(config, &cores)?;
        for (payload, preset, _) in PAYLOADS {
            addrs.insert((setup, payload), envoy.listener_addr(preset.name())?);
        }
        proxies.insert(setup, Proxy::Envoy(envoy));
    }
    let haproxy_upstreams: BTreeMap<&'static str, SocketAddr> = PAYLOADS
        .iter()
        .map(|(p, _, _)| (*p, fake_addr(p)))
        .collect();
    let (haproxy, binds) = start_haproxy(&haproxy_cfg, &haproxy_upstreams, &cores)?;
    for (payload, bind) in binds {
        addrs.insert((Setup::Haproxy, payload), bind);
    }
    proxies.insert(Setup::Haproxy, Proxy::Haproxy(haproxy));

    let url = |setup: Setup, payload: &str| {
        let addr = addrs
            .iter()
            .find(|((s, p), _)| *s == setup && *p == payload)
            .map(|(_, a)| *a)
            .unwrap();
        format!("http://{addr}/metrics")
    };

    // Warm-up: connections, V8's optimising tier, the warm token's cache entries.
    eprintln!("==> warm-up");
    for setup in SETUPS {
        for (payload, _, _) in PAYLOADS {
            let r = Wrk {
                url: url(setup, payload),
                connections: 8,
                duration: Duration::from_secs(if args.quick { 1 } else { 2 }),
                token: Some(&warm_token),
                env: vec![("MG_MODE", "static".into())],
                cpu: cores.load,
                script: &script,
            }
            .run()?;
            if r.ok() == 0 || r.status_errors > 0 {
                bail!(
                    "warm-up of {} ({payload}) failed: {} requests, {} not 2xx",
                    setup.label(),
                    r.requests,
                    r.status_errors
                );
            }
        }
    }
    let delay = Duration::from_millis(2);
    api.set_fault(Fault::Slow(delay));
    if args.hold {
        for setup in SETUPS {
            for (payload, _, _) in PAYLOADS {
                println!(
                    "{} {payload} {} pid {:?}",
                    setup.id(),
                    url(setup, payload),
                    proxies[&setup].pid()
                );
            }
        }
        println!("warm token: {warm_token}");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    // Measured runs, interleaved: per scenario every setup once, the order rotated per scenario.
    let mut runs = Vec::new();
    let mut scenario = 0usize;
    for (payload, _, _) in PAYLOADS {
        for &c in &args.concurrency {
            for i in 0..SETUPS.len() {
                let setup = SETUPS[(scenario + i) % SETUPS.len()];
                let pid = proxies[&setup].pid();
                let mut env = vec![("MG_MODE", "static".to_string())];
                if setup == Setup::Fresh {
                    env = vec![
                        ("MG_MODE", "tokens".into()),
                        ("MG_TOKENS", tokens_file.to_string_lossy().into_owned()),
                        ("MG_TOKENS_START", token_cursor.to_string()),
                    ];
                }
                // The double records every call; cleared per run so that it stays small.
                api.clear_calls();
                let cpu0 = pid.map(procfs::cpu_seconds).transpose()?;
                let r = Wrk {
                    url: url(setup, payload),
                    connections: c,
                    duration: args.duration,
                    token: Some(&warm_token),
                    env,
                    cpu: cores.load,
                    script: &script,
                }
                .run()?;
                let cpu1 = pid.map(procfs::cpu_seconds).transpose()?;
                let tr = api.count(CallKind::TokenReview) as u64;
                let sar = api.count(CallKind::SubjectAccessReview) as u64;
                if setup == Setup::Fresh {
                    token_cursor += r.sent;
                }
                let per10k = |x: f64| {
                    if r.requests == 0 {
                        0.0
                    } else {
                        x * 10_000.0 / r.requests as f64
                    }
                };
                let run = Run {
                    setup: setup.id(),
                    payload,
                    connections: c,
                    rps: r.rps(),
                    p50_us: r.p50_us,
                    p99_us: r.p99_us,
                    cpu_s_per_10k: cpu0.zip(cpu1).map(|(a, b)| per10k(b - a)),
                    token_reviews: tr,
                    subject_access_reviews: sar,
                    apiserver_calls_per_10k: per10k((tr + sar) as f64),
                    wrk: r.clone(),
                };
                eprintln!(
                    "    {payload:>4} c={c:<3} {:<48} {:>8.0} req/s  p50 {:>6} µs  p99 {:>7} µs  cpu/10k {}  apiserver/10k {:.0}{}",
                    setup.label(),
                    run.rps,
                    run.p50_us,
                    run.p99_us,
                    run.cpu_s_per_10k.map_or("-".into(), |v| format!("{v:.2} s")),
                    run.apiserver_calls_per_10k,
                    if r.status_errors + r.socket_errors() > 0 {
                        format!("  ({} not 2xx, {} socket errors)", r.status_errors, r.socket_errors())
                    } else {
                        String::new()
                    }
                );
                runs.push(run);
            }
            scenario += 1;
        }
    }
    if token_cursor > fresh_tokens.len() as u64 {
        notes.push(format!(
            "setup d sent {token_cursor} requests with {} minted tokens: tokens came round again \
             (apiserver calls per 10k show how many still missed the cache)",
            fresh_tokens.len()
        ));
    }
    let mut memory_per_setup = Vec::new();
    for (setup, proxy) in &proxies {
        if let Some(pid) = proxy.pid() {
            memory_per_setup.push(SetupMemory {
                setup: setup.id(),
                vm_hwm_kib: procfs::status_kib(pid, "VmHWM")?,
                vm_rss_kib: procfs::status_kib(pid, "VmRSS")?,
            });
        }
    }
    drop(proxies);

    // Flood: distinct bogus tokens at full speed while an authorized scraper reads 225 KB.
    let flood = if args.skip_flood {
        None
    } else {
        Some(flood_run(
            &args,
            &stack,
            &gated,
            &warm_token,
            &fakes[0].1,
            &cores,
            &script,
            &mut notes,
        )?)
    };

    // Memory: RSS after 10k and after N requests with distinct bogus tokens.
    let memory = if args.skip_memory {
        None
    } else {
        Some(memory_run(&args, &stack, &gated, &cores, &script)?)
    };

    let envoy_version = first_line(&EnvoyProcess::binary()?.to_string_lossy(), &["--version"]);
    let report = Report {
        date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        nproc,
        cpu_model: procfs::cpu_model(),
        kernel: first_line("uname", &["-r"]),
        envoy_version: envoy_version
            .split_once("version:")
            .map_or(envoy_version.clone(), |(_, v)| v.trim().to_string()),
        haproxy_version: first_line("haproxy", &["-v"]),
        wrk_version: first_line("wrk", &["-v"]),
        command: std::env::var("MG_BENCH_COMMAND")
            .map(|c| c.trim().to_string())
            .unwrap_or_else(|_| {
                let mut c = vec!["metrics-gate-bench".to_string()];
                c.extend(std::env::args().skip(1));
                c.join(" ")
            }),
        quick: args.quick,
        duration_s: args.duration.as_secs(),
        wasm_bytes,
        payload_bytes,
        apiserver_delay_ms: delay.as_millis() as u64,
        fresh_tokens_minted: fresh_tokens.len(),
        runs,
        memory_per_setup,
        flood,
        memory,
        notes,
    };
    std::fs::create_dir_all(&args.out)?;
    let json_path = args.out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    let md = markdown(&report);
    std::fs::write(args.out.join("results.md"), &md)?;
    if let Some(doc) = &args.doc {
        replace_block(doc, &md)?;
    }
    println!("{md}");
    eprintln!("==> wrote {}", json_path.display());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn flood_run(
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
        bogus_tokens: args.flood_tokens,
        flood_connections: 128,
        scraper_connections: 8,
        ..Default::default()
    };
    let plugin = json!({"max_callouts_in_flight": 64});
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
    let scraper_secs = if args.quick {
        3
    } else {
        args.duration.as_secs().max(6)
    };
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
    let done_file = std::env::temp_dir().join(format!("mg-bench-flood-{}", std::process::id()));
    let _ = std::fs::remove_file(&done_file);
    let flooding = Wrk {
        url: url.clone(),
        connections: flood.flood_connections,
        duration: Duration::from_secs(600),
        token: None,
        env: vec![
            ("MG_MODE", "bogus".into()),
            ("MG_PREFIX", "flood".into()),
            ("MG_LIMIT", args.flood_tokens.to_string()),
            ("MG_DONE_FILE", done_file.to_string_lossy().into_owned()),
        ],
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
    flood.unauthenticated = delta("metrics_gate_requests_unauthenticated");
    flood.apiserver_errors = delta("metrics_gate_apiserver_errors");
    flood.flood_token_reviews = api.count(CallKind::TokenReview) as u64 - tr0;
    flood.flood_subject_access_reviews = api.count(CallKind::SubjectAccessReview) as u64 - sar0;
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

fn memory_run(
    args: &Args,
    stack: &LocalStack,
    gated: &Value,
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
    let envoy = start_envoy(gated, cores)?;
    let pid = envoy.pid();
    let url = format!(
        "http://{}/metrics",
        envoy.listener_addr(PAYLOADS[0].1.name())?
    );
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

// ---------------------------------------------------------------------------------------------
// Markdown.

fn find<'a>(r: &'a Report, setup: Setup, payload: &str, c: u32) -> Option<&'a Run> {
    r.runs
        .iter()
        .find(|x| x.setup == setup.id() && x.payload == payload && x.connections == c)
}

fn kib(k: u64) -> String {
    format!("{:.1} MiB", k as f64 / 1024.0)
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let conc: Vec<u32> = {
        let mut v: Vec<u32> = r.runs.iter().map(|x| x.connections).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let _ = writeln!(
        s,
        "Run {} on {} CPUs ({}), kernel {}.  ",
        r.date, r.nproc, r.cpu_model, r.kernel
    );
    let _ = writeln!(
        s,
        "Envoy {}; {}; {}.  ",
        r.envoy_version, r.haproxy_version, r.wrk_version
    );
    let _ = writeln!(
        s,
        "Command: `{}` — {} s per run, wrk 1 thread; proxies pinned to CPU 1 with one worker, wrk and \
         the fake/apiserver double on CPU 0; apiserver double answers after {} ms; {} tokens minted for d.{}\n",
        r.command,
        r.duration_s,
        r.apiserver_delay_ms,
        r.fresh_tokens_minted,
        if r.quick { " **Quick run: smoke figures only.**" } else { "" }
    );
    for (payload, _, _) in PAYLOADS {
        let bytes = r.payload_bytes.get(payload).copied().unwrap_or(0);
        let _ =
            writeln!(
            s,
            "**{} body ({} bytes)** — requests/s, p50 / p99 latency; proxy CPU seconds per 10,000 \
             requests; apiserver calls per 10,000 requests\n",
            if payload == "225k" { "kube-controller-manager" } else { "kube-proxy" },
            bytes
        );
        let mut head = String::from("| setup |");
        let mut rule = String::from("|---|");
        for c in &conc {
            let _ = write!(head, " c={c} req/s | p50 / p99 |");
            rule.push_str("---:|---:|");
        }
        let each = conc
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" / ");
        let _ = write!(head, " CPU s/10k (c={each}) | apiserver/10k (c={each}) |");
        rule.push_str("---:|---:|");
        let _ = writeln!(s, "{head}\n{rule}");
        for setup in SETUPS {
            let mut row = format!("| {} |", setup.label());
            let mut cpu = Vec::new();
            let mut calls = Vec::new();
            for &c in &conc {
                match find(r, setup, payload, c) {
                    Some(x) => {
                        let _ =
                            write!(row, " {:.0} | {} / {} |", x.rps, us(x.p50_us), us(x.p99_us));
                        cpu.push(x.cpu_s_per_10k.map_or("–".into(), |v| format!("{v:.2}")));
                        calls.push(format!("{:.0}", x.apiserver_calls_per_10k));
                    }
                    None => row.push_str(" – | – |"),
                }
            }
            let _ = writeln!(row, " {} | {} |", cpu.join(" / "), calls.join(" / "));
            s.push_str(&row);
        }
        s.push('\n');
    }
    // Ratios.
    let _ = writeln!(
        s,
        "**Throughput ratios** (c = warm metrics-gate, b = bare Envoy, e = HAProxy)\n"
    );
    let mut head = String::from("| payload | ratio |");
    let mut rule = String::from("|---|---|");
    for c in &conc {
        let _ = write!(head, " c={c} |");
        rule.push_str("---:|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    for (payload, _, _) in PAYLOADS {
        for (name, other) in [
            ("c/b", Setup::Bare),
            ("c/e", Setup::Haproxy),
            ("d/b", Setup::Bare),
        ] {
            let mine = if name.starts_with('d') {
                Setup::Fresh
            } else {
                Setup::Warm
            };
            let mut row = format!("| {payload} | {name} |");
            for &c in &conc {
                match (find(r, mine, payload, c), find(r, other, payload, c)) {
                    (Some(a), Some(b)) if b.rps > 0.0 => {
                        let _ = write!(row, " {:.2} |", a.rps / b.rps);
                    }
                    _ => row.push_str(" – |"),
                }
            }
            let _ = writeln!(s, "{row}");
        }
    }
    s.push('\n');
    // Memory per setup.
    let hwm = |id: &str| r.memory_per_setup.iter().find(|m| m.setup == id);
    let _ = writeln!(
        s,
        "**Proxy memory over the whole run** (VmHWM = peak RSS)\n"
    );
    let _ = writeln!(s, "| setup | VmHWM | VmRSS at end |\n|---|---:|---:|");
    for setup in SETUPS {
        if let Some(m) = hwm(setup.id()) {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                setup.label(),
                kib(m.vm_hwm_kib),
                kib(m.vm_rss_kib)
            );
        }
    }
    s.push('\n');
    if let Some(f) = &r.flood {
        let _ = writeln!(
            s,
            "**Flood**: {} distinct bogus tokens over {} connections while an authorized scraper \
            reads 225 KB over {} connections (plugin configuration `{}`)\n",
            f.bogus_tokens, f.flood_connections, f.scraper_connections, f.plugin_config
        );
        let _ = writeln!(s, "| measure | value |\n|---|---:|");
        let _ = writeln!(
            s,
            "| flood duration / rate | {:.2} s / {:.0} req/s |",
            f.flood_seconds, f.flood_rps
        );
        let _ = writeln!(
            s,
            "| apiserver calls caused (TokenReview + SAR) | {} + {} |",
            f.flood_token_reviews, f.flood_subject_access_reviews
        );
        let _ = writeln!(s, "| most callouts in flight seen (filter gauge) / apiserver requests active (Envoy) | {} / {} |", f.max_callouts_in_flight_seen, f.max_apiserver_requests_active_seen);
        let _ = writeln!(
            s,
            "| refused by the cap (503) / answered 401 | {} / {} |",
            f.rejected_by_cap, f.unauthenticated
        );
        let _ = writeln!(
            s,
            "| scraper success rate under flood | {:.2} % |",
            f.scraper_success_rate * 100.0
        );
        let _ = writeln!(
            s,
            "| scraper req/s: alone / during the flood | {:.0} / {:.0} ({:.2}×) |",
            f.scraper_baseline_rps,
            f.scraper_rps_during_flood,
            if f.scraper_baseline_rps > 0.0 {
                f.scraper_rps_during_flood / f.scraper_baseline_rps
            } else {
                0.0
            }
        );
        s.push('\n');
    }
    if let Some(m) = &r.memory {
        let _ = writeln!(s, "**Memory run**: Envoy + metrics-gate, distinct bogus tokens, {} connections, apiserver double without delay\n", m.connections);
        let _ = writeln!(s, "| requests | VmRSS |\n|---:|---:|");
        let _ = writeln!(s, "| 0 | {} |", kib(m.rss_start_kib));
        let _ = writeln!(
            s,
            "| {} | {} |",
            m.requests_first,
            kib(m.rss_after_first_kib)
        );
        let _ = writeln!(
            s,
            "| {} | {} (VmHWM {}) |",
            m.requests_total,
            kib(m.rss_after_total_kib),
            kib(m.hwm_kib)
        );
        let _ = writeln!(
            s,
            "\n{} apiserver calls, {} cache evictions, {:.0} s.\n",
            m.token_reviews, m.cache_evictions, m.seconds
        );
        if !m.rss_samples.is_empty() {
            let step = m.rss_samples.len().div_ceil(8);
            let along: Vec<String> = m
                .rss_samples
                .iter()
                .step_by(step)
                .map(|(calls, rss)| format!("{}k → {:.1}", calls / 1000, *rss as f64 / 1024.0))
                .collect();
            let _ = writeln!(
                s,
                "VmRSS along the run (apiserver calls → MiB): {}.\n",
                along.join(", ")
            );
        }
    }
    // Targets.
    let _ = writeln!(s, "**Targets of the performance issue**\n");
    let _ = writeln!(s, "| target | measured | |\n|---|---|---|");
    let ratio = |a: Setup, b: Setup, p: &str, c: u32| -> Option<f64> {
        Some(find(r, a, p, c)?.rps / find(r, b, p, c)?.rps)
    };
    if let Some(x) = ratio(Setup::Warm, Setup::Bare, "225k", 8) {
        let _ = writeln!(
            s,
            "| warm throughput ≥ 0.9× bare Envoy (225 KB, c=8) | {x:.2}× | {} |",
            mark(x >= 0.9)
        );
    }
    if let Some(x) = ratio(Setup::Warm, Setup::Haproxy, "225k", 8) {
        let _ = writeln!(
            s,
            "| warm throughput ≥ 1.0× HAProxy (225 KB, c=8) | {x:.2}× | {} |",
            mark(x >= 1.0)
        );
    }
    for (payload, _, _) in PAYLOADS {
        for &c in conc.iter().filter(|c| **c <= 8) {
            if let (Some(w), Some(b)) = (
                find(r, Setup::Warm, payload, c),
                find(r, Setup::Bare, payload, c),
            ) {
                let d50 = w.p50_us as i64 - b.p50_us as i64;
                let d99 = w.p99_us as i64 - b.p99_us as i64;
                let _ = writeln!(s, "| added latency warm ≤ 100 µs p50 / ≤ 250 µs p99 ({payload}, c={c}) | {d50:+} µs / {d99:+} µs | {} |",
                    mark(d50 <= 100 && d99 <= 250));
            }
        }
    }
    let _ = writeln!(
        s,
        "| .wasm ≤ 180 KiB | {:.1} KiB ({} bytes) | {} |",
        r.wasm_bytes as f64 / 1024.0,
        r.wasm_bytes,
        mark(r.wasm_bytes <= 180 * 1024)
    );
    if let (Some(c), Some(b)) = (hwm("c"), hwm("b")) {
        let x = c.vm_hwm_kib as f64 / b.vm_hwm_kib as f64;
        let _ = writeln!(s, "| proxy RSS with filter ≤ 1.15× bare Envoy (VmHWM, c vs b) | {x:.2}× ({} vs {}) | {} |", kib(c.vm_hwm_kib), kib(b.vm_hwm_kib), mark(x <= 1.15));
    }
    if let Some(m) = &r.memory {
        let g = m.rss_after_total_kib as f64 / m.rss_after_first_kib.max(1) as f64;
        let _ = writeln!(s, "| no RSS growth from 10k to 1M requests (≤ +5 % allowed for noise) | {:+.1} % ({} → {} requests) | {} |",
            (g - 1.0) * 100.0, m.requests_first, m.requests_total, mark(g <= 1.05));
    }
    if let Some(f) = &r.flood {
        let cap = 64;
        let _ = writeln!(
            s,
            "| flood: callouts in flight stay ≤ the cap ({cap}) | {} | {} |",
            f.max_callouts_in_flight_seen,
            mark(f.max_callouts_in_flight_seen <= cap)
        );
    }
    for n in &r.notes {
        let _ = writeln!(s, "\nNote: {n}");
    }
    s
}

fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1} ms", v as f64 / 1000.0)
    } else {
        format!("{v} µs")
    }
}

const BEGIN: &str = "<!-- bench:results:begin -->";
const END: &str = "<!-- bench:results:end -->";

/// Replaces what is between the two markers of `doc` with `md`.
fn replace_block(doc: &Path, md: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
    let (head, rest) = text
        .split_once(BEGIN)
        .ok_or_else(|| anyhow!("{} has no {BEGIN} marker", doc.display()))?;
    let (_, tail) = rest
        .split_once(END)
        .ok_or_else(|| anyhow!("{} has no {END} marker", doc.display()))?;
    std::fs::write(doc, format!("{head}{BEGIN}\n{md}\n{END}{tail}"))?;
    Ok(())
}
