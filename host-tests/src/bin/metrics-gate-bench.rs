//! metrics-gate-bench: throughput, latency, CPU and memory of metrics-gate against bare Envoy, a
//! do-nothing wasm filter and the seed's HAProxy, in one interleaved run on loopback (`just bench`;
//! BENCHMARKS.md has the results and how to read them).
//!
//! Setups, all serving the same plain-HTTP fake component (225 KB kube-controller-manager body and
//! 27 KB kube-proxy body):
//!   a  the fake directly
//!   b  bare Envoy: the rendered bootstrap with the wasm filter taken out
//!   c  Envoy + metrics-gate, warm cache (one authorized token)
//!   d  Envoy + metrics-gate, a new valid token on every request (apiserver double answers in ~2 ms)
//!   e  HAProxy 2.6 with the seed's configuration (bench/haproxy.cfg)
//!   f  Envoy + a do-nothing wasm filter exporting only the callbacks metrics-gate uses (the floor)
//! Proxies run on one core with one worker; wrk and this process (fake, apiserver double) on the other.
//! Every point is measured `--repeats` times; the report gives medians and the spread. Then a flood
//! run (bogus tokens while an authorized scraper runs), a memory run (RSS after 10k and 1M requests
//! with distinct bogus tokens) and the shipped DaemonSet configuration's memory.

#[path = "../bench/mod.rs"]
mod bench;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::apiserver::{CallKind, Fault};
use metrics_gate_host_tests::components::{ComponentKind, ComponentOptions, FakeComponent};
use metrics_gate_host_tests::envoy_process::EnvoyProcess;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions, WasmBuild};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};
use serde_json::json;

use bench::cli::Args;
use bench::configs::{bench_bootstrap, with_plugin_config, with_wasm, without_filter};
use bench::markdown::markdown;
use bench::procfs;
use bench::proxies::{start_envoy, start_haproxy, Cores, Proxy};
use bench::report::{first_line, replace_block, Report, Run, SetupMemory};
use bench::setups::{Setup, PAYLOADS, SETUPS};
use bench::stress::{daemonset_run, flood_run, memory_run};
use bench::wrk::Wrk;

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let args = Args::parse(&root);
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
    let floor_wasm_bytes = match &args.floor_wasm {
        Some(path) => Some(
            std::fs::metadata(path)
                .with_context(|| {
                    format!("the floor filter {} (just bench builds it)", path.display())
                })?
                .len(),
        ),
        None => {
            notes.push("no --floor-wasm: setup f (the floor) not measured".into());
            None
        }
    };
    let setups: Vec<Setup> = SETUPS
        .into_iter()
        .filter(|s| *s != Setup::Floor || args.floor_wasm.is_some())
        .collect();

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
        // The setups compare proxies, not loggers: HAProxy logs nothing here either. The
        // DaemonSet run keeps the shipped access log.
        no_access_log: true,
        ..Default::default()
    })?;
    stack.envoy.stop()?;
    let upstreams: Vec<(Preset, SocketAddr)> = PAYLOADS
        .iter()
        .map(|(payload, preset, _)| (*preset, fake_addr(payload)))
        .collect();
    // Setup d and the memory run measure the review path itself, a new token per request: the
    // node's review budget (`max_reviews_per_second`, 20 by default) would refuse almost all of
    // them. The flood run keeps the default, which is what it measures.
    let gated = with_plugin_config(
        &bench_bootstrap(&stack, &upstreams),
        &json!({"max_reviews_per_second": 0}),
    );
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
    eprintln!("==> starting bare Envoy, two Envoys with metrics-gate, the floor, HAProxy");
    let mut proxies: BTreeMap<Setup, Proxy> = BTreeMap::new();
    let mut addrs: BTreeMap<(Setup, &'static str), SocketAddr> = BTreeMap::new();
    for (payload, _, _) in PAYLOADS {
        addrs.insert((Setup::Direct, payload), fake_addr(payload));
    }
    proxies.insert(Setup::Direct, Proxy::None);
    let floor = args
        .floor_wasm
        .as_deref()
        .map(|wasm| with_wasm(&gated, wasm));
    let mut envoys = vec![
        (Setup::Bare, &bare),
        (Setup::Warm, &gated),
        (Setup::Fresh, &gated),
    ];
    if let Some(floor) = &floor {
        envoys.push((Setup::Floor, floor));
    }
    for (setup, config) in envoys {
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
    for &setup in &setups {
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
        for &setup in &setups {
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

    // Measured runs, interleaved: per scenario every setup once, the order rotated per scenario;
    // then the whole pass again for every repeat, so that a slow minute of the machine lands on
    // one repeat of every setup rather than on all repeats of one.
    let mut runs = Vec::new();
    let mut scenario = 0usize;
    for repeat in 0..args.repeats {
        eprintln!("==> pass {} of {}", repeat + 1, args.repeats);
        for (payload, _, _) in PAYLOADS {
            for &c in &args.concurrency {
                for i in 0..setups.len() {
                    let setup = setups[(scenario + i) % setups.len()];
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
                        repeat,
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
                rss_anon_kib: procfs::status_kib(pid, "RssAnon")?,
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
        Some(memory_run(
            &args,
            &stack,
            &gated,
            &warm_token,
            &cores,
            &script,
        )?)
    };

    // The shipped DaemonSet configuration, idle and under load.
    let daemonset = if args.skip_daemonset {
        None
    } else {
        Some(daemonset_run(&args, &root, &cores, &script)?)
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
        repeats: args.repeats,
        wasm_bytes,
        floor_wasm_bytes,
        payload_bytes,
        apiserver_delay_ms: delay.as_millis() as u64,
        fresh_tokens_minted: fresh_tokens.len(),
        runs,
        memory_per_setup,
        flood,
        memory,
        daemonset,
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
