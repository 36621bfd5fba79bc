//! The report as Markdown: results.md, and the results block of BENCHMARKS.md.

use std::fmt::Write;

use super::report::{point, Report};
use super::setups::{Setup, PAYLOADS, SETUPS};

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

pub fn markdown(r: &Report) -> String {
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
        "Command: `{}` — {} s per run, each point measured {} times (medians; ±: half the range of \
         the repeats' throughput), wrk 1 thread; proxies pinned to CPU 1 with one worker, wrk and \
         the fake/apiserver double on CPU 0; apiserver double answers after {} ms; {} tokens minted for d.{}\n",
        r.command,
        r.duration_s,
        r.repeats,
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
                match point(r, setup, payload, c) {
                    Some(x) => {
                        let _ = write!(
                            row,
                            " {:.0} ±{:.0}% | {} / {} |",
                            x.rps,
                            x.spread() * 100.0,
                            us(x.p50_us),
                            us(x.p99_us)
                        );
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
        "**Throughput ratios** of the medians (c = warm metrics-gate, b = bare Envoy, e = HAProxy, f = do-nothing wasm filter)\n"
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
            ("c/f", Setup::Floor),
            ("f/b", Setup::Bare),
            ("c/e", Setup::Haproxy),
            ("d/b", Setup::Bare),
        ] {
            let mine = match name.as_bytes().first() {
                Some(b'd') => Setup::Fresh,
                Some(b'f') => Setup::Floor,
                _ => Setup::Warm,
            };
            let mut row = format!("| {payload} | {name} |");
            for &c in &conc {
                match (point(r, mine, payload, c), point(r, other, payload, c)) {
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
    let _ = writeln!(
        s,
        "| setup | VmHWM | VmRSS at end | of which anonymous (RssAnon) |\n|---|---:|---:|---:|"
    );
    for setup in SETUPS {
        if let Some(m) = hwm(setup.id()) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                setup.label(),
                kib(m.vm_hwm_kib),
                kib(m.vm_rss_kib),
                kib(m.rss_anon_kib)
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
            "| refused by the cap / by the review budget (503) / answered 401 | {} / {} / {} |",
            f.rejected_by_cap, f.rejected_by_rate, f.unauthenticated
        );
        let _ = writeln!(
            s,
            "| reviews sent per second of flood | {:.1} |",
            f.reviews_per_second
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
    targets(&mut s, r);
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

/// The DaemonSet's own configuration, as a node runs it.
fn daemonset(s: &mut String, r: &Report) {
    let Some(d) = &r.daemonset else { return };
    let _ = writeln!(
        s,
        "**The shipped DaemonSet configuration**: {} listeners over TLS (the components behind \
         them as on a node, kube-controller-manager and kube-scheduler over TLS with the proxy's \
         token), `--concurrency {}`; load: {} connections to each listener for {} s at once\n",
        d.listeners, d.concurrency, d.connections_per_listener, d.load_seconds
    );
    let _ = writeln!(s, "| measure | value |\n|---|---:|");
    let _ = writeln!(
        s,
        "| VmRSS idle (started, one scrape per listener); of which anonymous | {} ; {} |",
        kib(d.idle_rss_kib),
        kib(d.idle_anon_kib)
    );
    let _ = writeln!(
        s,
        "| VmRSS after the load / VmHWM; anonymous after the load | {} / {} ; {} |",
        kib(d.loaded_rss_kib),
        kib(d.hwm_kib),
        kib(d.loaded_anon_kib)
    );
    let _ = writeln!(
        s,
        "| scrapes answered 200 under load | {} of {} |",
        d.ok, d.requests
    );
    s.push('\n');
}

/// The performance issue's targets, each with what this run measured.
fn targets(s: &mut String, r: &Report) {
    daemonset(s, r);
    let conc: Vec<u32> = {
        let mut v: Vec<u32> = r.runs.iter().map(|x| x.connections).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let _ = writeln!(s, "**Targets of the performance issue**\n");
    let _ = writeln!(s, "| target | measured | |\n|---|---|---|");
    let ratio = |a: Setup, b: Setup, p: &str, c: u32| -> Option<f64> {
        let (a, b) = (point(r, a, p, c)?, point(r, b, p, c)?);
        (b.rps > 0.0).then(|| a.rps / b.rps)
    };
    for (payload, want) in [("225k", 0.95), ("27k", 0.9)] {
        let found: Vec<(u32, f64)> = conc
            .iter()
            .filter_map(|&c| Some((c, ratio(Setup::Warm, Setup::Bare, payload, c)?)))
            .collect();
        if found.is_empty() {
            continue;
        }
        let text: Vec<String> = found
            .iter()
            .map(|(c, x)| format!("c={c} {x:.2}×"))
            .collect();
        let ok = found.iter().all(|(_, x)| *x >= want);
        let _ = writeln!(
            s,
            "| warm throughput ≥ {want}× bare Envoy ({payload}) | {} | {} |",
            text.join(", "),
            mark(ok)
        );
    }
    for (payload, _, _) in PAYLOADS {
        let found: Vec<(u32, f64)> = conc
            .iter()
            .filter_map(|&c| {
                let warm = point(r, Setup::Warm, payload, c)?.cpu_us_per_request()?;
                let floor = point(r, Setup::Floor, payload, c)?.cpu_us_per_request()?;
                Some((c, warm - floor))
            })
            .collect();
        if found.is_empty() {
            continue;
        }
        let text: Vec<String> = found
            .iter()
            .map(|(c, d)| format!("c={c} {d:+.1} µs"))
            .collect();
        let ok = found.iter().all(|(_, d)| *d <= 20.0);
        let _ = writeln!(s, "| filter's proxy CPU per warm request ≤ 20 µs above the floor f ({payload}) | {} | {} |", text.join(", "), mark(ok));
    }
    for (payload, _, _) in PAYLOADS {
        if let (Some(w), Some(b)) = (
            point(r, Setup::Warm, payload, 1),
            point(r, Setup::Bare, payload, 1),
        ) {
            let d = w.p50_us as i64 - b.p50_us as i64;
            let _ = writeln!(s, "| added p50 latency, warm, c=1 ≤ 60 µs over bare Envoy ({payload}) | {d:+} µs | {} |", mark(d <= 60));
        }
    }
    if let Some(x) = ratio(Setup::Warm, Setup::Haproxy, "225k", 8) {
        let _ = writeln!(
            s,
            "| warm throughput ≥ 1.0× the seed's HAProxy (225k, c=8) | {x:.2}× | {} |",
            mark(x >= 1.0)
        );
    }
    let hwm = |id: &str| r.memory_per_setup.iter().find(|m| m.setup == id);
    if let (Some(c), Some(b)) = (hwm("c"), hwm("b")) {
        let x = c.vm_hwm_kib as f64 / b.vm_hwm_kib as f64;
        let _ = writeln!(s, "| peak RSS with the filter ≤ 1.15× bare Envoy (VmHWM, c vs b) | {x:.2}× ({} vs {}) | {} |", kib(c.vm_hwm_kib), kib(b.vm_hwm_kib), mark(x <= 1.15));
    }
    if let Some(d) = &r.daemonset {
        let worst = d.idle_rss_kib.max(d.hwm_kib);
        let _ = writeln!(s, "| the shipped DaemonSet configuration ≤ 80 MiB idle and under load (VmRSS; anonymous in brackets) | {} idle ({}), {} peak ({} after load) | {} |", kib(d.idle_rss_kib), kib(d.idle_anon_kib), kib(d.hwm_kib), kib(d.loaded_anon_kib), mark(worst <= 80 * 1024));
    }
    let _ = writeln!(
        s,
        "| .wasm ≤ 180 KiB | {:.1} KiB ({} bytes) | {} |",
        r.wasm_bytes as f64 / 1024.0,
        r.wasm_bytes,
        mark(r.wasm_bytes <= 180 * 1024)
    );
    if let Some(f) = &r.flood {
        let limit = f64::from(metrics_gate::config::DEFAULT_MAX_REVIEWS_PER_SECOND);
        // The bucket gives one second's worth at once, then the rate: over a flood of t seconds at
        // most limit × (1 + t) reviews (one more for a race between workers).
        let reviews = f.flood_token_reviews + f.flood_subject_access_reviews;
        let bound = limit * (1.0 + f.flood_seconds) + 1.0;
        let _ = writeln!(s, "| flood of distinct bogus tokens: reviews from the node ≤ {limit}/s (default budget: its one-second burst, then the rate) | {reviews} reviews in {:.2} s (≤ {bound:.0} allowed) | {} |", f.flood_seconds, mark(reviews as f64 <= bound));
        let kept = if f.scraper_baseline_rps > 0.0 {
            f.scraper_rps_during_flood / f.scraper_baseline_rps
        } else {
            0.0
        };
        let _ = writeln!(s, "| flood: the authorized scraper on the same node keeps ≥ 0.8× its throughput | {kept:.2}× | {} |", mark(kept >= 0.8));
    }
    if let Some(m) = &r.memory {
        let _ = writeln!(s, "| {} distinct bogus tokens never evict an authorized scraper's answers | {} reviews for the scraper afterwards | {} |", m.requests_total, m.scraper_reviews_after, mark(m.scraper_reviews_after == 0));
        let g = m.rss_after_total_kib as f64 / m.rss_after_first_kib.max(1) as f64;
        let _ = writeln!(
            s,
            "| no RSS growth from {} to {} requests (≤ +5 % for noise) | {:+.1} % | {} |",
            m.requests_first,
            m.requests_total,
            (g - 1.0) * 100.0,
            mark(g <= 1.05)
        );
    }
    s.push('\n');
}
