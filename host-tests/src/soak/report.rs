//! What the soak writes: one sample per interval, the whole run's figures, `results.json` and a
//! markdown summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::ledger::{Counts, Episode, Example, Latency};

/// One sampling interval (default 5 s). Counts named `*_total` and the apiserver and filter counters
/// are cumulative; the rest belong to the interval.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the start of the soak.
    pub t: f64,
    pub requests_total: u64,
    pub rps: f64,
    pub rss_mib: f64,
    /// Envoy's CPU over the interval, in % of one core.
    pub cpu_pct: f64,
    /// Where Envoy's memory is: bytes its allocator has handed out (`server.memory_allocated`), the
    /// allocator's heap (`server.memory_heap_size`), and RSS split into anonymous memory (heaps,
    /// V8 and the filter VMs, stacks) and file pages (the Envoy binary's code and data as they are
    /// first touched).
    pub heap_allocated_mib: f64,
    pub heap_size_mib: f64,
    pub rss_anon_mib: f64,
    pub rss_file_mib: f64,
    /// This process (mock apiserver, fake components, scraper), to tell its growth from Envoy's.
    pub harness_rss_mib: f64,
    /// This process's CPU over the interval, in % of one core.
    pub harness_cpu_pct: f64,
    pub interval: Counts,
    pub latency: Latency,
    pub unexpected_total: u64,
    pub hung_total: u64,
    pub token_reviews: u64,
    pub subject_access_reviews: u64,
    /// The filter's `metrics_gate_*` counters (short names).
    pub counters: BTreeMap<String, u64>,
    pub callouts_in_flight: u64,
    /// The fault switched on at the time of the sample.
    pub fault: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub t: f64,
    pub what: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listener {
    pub component: String,
    pub payload_bytes: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Rss {
    pub first_mib: f64,
    pub last_mib: f64,
    pub max_mib: f64,
    /// Least-squares slope of RSS over time, from `fit_from_s` on.
    pub slope_mib_per_hour: f64,
    pub fit_from_s: f64,
    /// Whether the run was long enough for the slope to be judged (10 min after the first one).
    pub judged: bool,
    /// The same over the second half of the run only.
    pub slope_second_half_mib_per_hour: f64,
    /// The same figures for anonymous RSS (heaps, V8 and the filter VMs, stacks): what a leak
    /// grows. File-backed RSS (Envoy's code pages) comes and goes as the kernel reclaims page cache,
    /// so the verdict is on this one.
    pub anon_first_mib: f64,
    pub anon_last_mib: f64,
    pub anon_max_mib: f64,
    pub anon_slope_mib_per_hour: f64,
    pub anon_slope_second_half_mib_per_hour: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub command: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub envoy_version: String,
    pub planned_duration_s: f64,
    pub elapsed_s: f64,
    pub interrupted: bool,
    pub rate_target: f64,
    pub connections: usize,
    pub envoy_concurrency: u32,
    pub apiserver_timeout_ms: u64,
    pub slow_fault_delay_ms: u64,
    pub sample_interval_s: f64,
    pub listeners: Vec<Listener>,
    pub totals: Counts,
    pub achieved_rps: f64,
    pub rss: Rss,
    pub cpu_mean_pct: f64,
    pub cpu_max_pct: f64,
    pub token_reviews: u64,
    pub subject_access_reviews: u64,
    pub filter_counters: BTreeMap<String, u64>,
    /// `wasm.metrics-gate.vm_reload*` and the runtime's VM creations.
    pub vm: BTreeMap<String, u64>,
    pub callouts_in_flight_end: u64,
    pub episodes: Vec<Episode>,
    pub events: Vec<Event>,
    pub handshakes_by_certificate: BTreeMap<String, u64>,
    pub stale_connection_retries: u64,
    pub missed_slots: u64,
    pub envoy_crash_log_lines: Vec<String>,
    pub unexpected_examples: Vec<Example>,
    /// Empty when the soak passed.
    pub problems: Vec<String>,
    /// Worth knowing, not a failure (e.g. the rate fell short on a busy machine).
    pub notes: Vec<String>,
    pub samples: Vec<Sample>,
}

/// Least-squares slope of `ys` over `xs` (0 with fewer than two distinct points).
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

pub fn rss_summary(samples: &[Sample], fit_from_s: f64) -> Rss {
    let half = samples.last().map_or(0.0, |s| s.t / 2.0);
    let series = |f: &dyn Fn(&Sample) -> f64| {
        let all: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, f(s))).collect();
        let after: Vec<(f64, f64)> = all.iter().copied().filter(|p| p.0 >= fit_from_s).collect();
        let second: Vec<(f64, f64)> = all.iter().copied().filter(|p| p.0 >= half).collect();
        (
            all.first().map_or(0.0, |p| p.1),
            all.last().map_or(0.0, |p| p.1),
            all.iter().map(|p| p.1).fold(0.0, f64::max),
            slope(&after) * 3600.0,
            slope(&second) * 3600.0,
        )
    };
    let total = series(&|s| s.rss_mib);
    let anon = series(&|s| s.rss_anon_mib);
    Rss {
        first_mib: total.0,
        last_mib: total.1,
        max_mib: total.2,
        slope_mib_per_hour: total.3,
        fit_from_s,
        judged: false,
        slope_second_half_mib_per_hour: total.4,
        anon_first_mib: anon.0,
        anon_last_mib: anon.1,
        anon_max_mib: anon.2,
        anon_slope_mib_per_hour: anon.3,
        anon_slope_second_half_mib_per_hour: anon.4,
    }
}

pub fn hms(secs: f64) -> String {
    let s = secs.round() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

fn causes(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("`{k}` {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let t = &r.totals;
    let verdict = if r.problems.is_empty() { "PASS" } else { "FAIL" };
    let _ = writeln!(s, "## metrics-gate soak, {} — {verdict}\n", r.date);
    let _ = writeln!(
        s,
        "`{}`: {} of the planned {}{}, {} listeners over TLS, {} keep-alive connections at {} req/s, \
         Envoy `--concurrency {}`, {} CPUs ({}), Envoy {}.\n",
        r.command,
        hms(r.elapsed_s),
        hms(r.planned_duration_s),
        if r.interrupted { " (interrupted)" } else { "" },
        r.listeners.len(),
        r.connections,
        r.rate_target,
        r.envoy_concurrency,
        r.nproc,
        r.cpu_model,
        r.envoy_version,
    );
    let _ = writeln!(s, "| figure | value |\n| --- | --- |");
    let row = |s: &mut String, k: &str, v: String| {
        let _ = writeln!(s, "| {k} | {v} |");
    };
    row(&mut s, "scrapes", format!("{} ({:.1} req/s achieved)", t.requests, r.achieved_rps));
    row(&mut s, "scrapes answered 200 with the whole body", t.ok.to_string());
    row(&mut s, "probes (new token during a fault, expired token)", t.probes.to_string());
    let statuses = t
        .non_ok_by_status
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    row(&mut s, "answers other than an ok scrape, by status", if statuses.is_empty() { "none".into() } else { statuses });
    row(&mut s, "expected, by cause", causes(&t.expected));
    row(&mut s, "**unexpected**, by cause", format!("**{}** ({})", t.unexpected_total(), causes(&t.unexpected)));
    row(&mut s, "**hung** (no answer within 30 s)", format!("**{}**", t.hung));
    row(
        &mut s,
        "Envoy RSS first / last / max",
        format!("{:.1} / {:.1} / {:.1} MiB", r.rss.first_mib, r.rss.last_mib, r.rss.max_mib),
    );
    row(
        &mut s,
        "RSS slope (least squares)",
        format!(
            "{:+.2} MiB/h after the first {:.0} s; {:+.2} MiB/h over the second half",
            r.rss.slope_mib_per_hour, r.rss.fit_from_s, r.rss.slope_second_half_mib_per_hour
        ),
    );
    row(
        &mut s,
        "**anonymous RSS** (what the verdict judges) first / last / max, slope",
        format!(
            "{:.1} / {:.1} / {:.1} MiB, **{:+.2} MiB/h** after the first {:.0} s; {:+.2} MiB/h over the second half",
            r.rss.anon_first_mib,
            r.rss.anon_last_mib,
            r.rss.anon_max_mib,
            r.rss.anon_slope_mib_per_hour,
            r.rss.fit_from_s,
            r.rss.anon_slope_second_half_mib_per_hour
        ),
    );
    if let (Some(first), Some(last)) = (r.samples.first(), r.samples.last()) {
        let max = |f: &dyn Fn(&Sample) -> f64| r.samples.iter().map(f).fold(0.0, f64::max);
        row(
            &mut s,
            "RSS anonymous / file-backed (code pages), first → last",
            format!(
                "{:.1} → {:.1} / {:.1} → {:.1} MiB",
                first.rss_anon_mib, last.rss_anon_mib, first.rss_file_mib, last.rss_file_mib,
            ),
        );
        row(
            &mut s,
            "Envoy heap in use / allocator heap, first → last (max)",
            format!(
                "{:.1} → {:.1} ({:.1}) / {:.1} → {:.1} ({:.1}) MiB",
                first.heap_allocated_mib,
                last.heap_allocated_mib,
                max(&|s| s.heap_allocated_mib),
                first.heap_size_mib,
                last.heap_size_mib,
                max(&|s| s.heap_size_mib),
            ),
        );
    }
    row(&mut s, "Envoy CPU (mean / max of 5 s intervals)", format!("{:.1} % / {:.1} % of one core", r.cpu_mean_pct, r.cpu_max_pct));
    row(&mut s, "apiserver callouts", format!("{} TokenReviews, {} SubjectAccessReviews", r.token_reviews, r.subject_access_reviews));
    let c = |n: &str| r.filter_counters.get(n).copied().unwrap_or(0);
    row(
        &mut s,
        "filter counters",
        format!(
            "allowed {}, apiserver_errors {}, cache hits {} / misses {}, coalesced waits {}, evictions {}, cap rejections {}",
            c("metrics_gate_requests_allowed"),
            c("metrics_gate_apiserver_errors"),
            c("metrics_gate_cache_hits"),
            c("metrics_gate_cache_misses"),
            c("metrics_gate_coalesced_waits"),
            c("metrics_gate_cache_evictions"),
            c("metrics_gate_callouts_rejected_cap"),
        ),
    );
    row(&mut s, "callouts in flight at the end", r.callouts_in_flight_end.to_string());
    row(
        &mut s,
        "VM reloads",
        r.vm.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
    );
    row(
        &mut s,
        "fault episodes",
        r.episodes
            .iter()
            .map(|e| format!("{} {:.0}–{:.0} s", e.kind, e.start, e.end.unwrap_or(r.elapsed_s)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    row(
        &mut s,
        "TLS handshakes by serving certificate",
        r.handshakes_by_certificate.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", "),
    );
    row(&mut s, "stale keep-alive connections retried / send slots missed", format!("{} / {}", r.stale_connection_retries, r.missed_slots));
    let _ = writeln!(s, "\n### Events\n");
    for e in &r.events {
        let _ = writeln!(s, "- {:>7.1} s — {}", e.t, e.what);
    }
    if !r.unexpected_examples.is_empty() {
        let _ = writeln!(s, "\n### Unexpected answers (first {})\n", r.unexpected_examples.len());
        for e in &r.unexpected_examples {
            let _ = writeln!(s, "- {:.1} s, {}: `{}` — {}", e.t, e.listener, e.cause, e.detail);
        }
    }
    if !r.envoy_crash_log_lines.is_empty() {
        let _ = writeln!(s, "\n### Envoy log lines telling of a crashed filter\n\n```");
        for l in r.envoy_crash_log_lines.iter().take(20) {
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(s, "```");
    }
    let _ = writeln!(s, "\n### Verdict: {verdict}\n");
    if r.problems.is_empty() {
        let rss = if r.rss.judged { "anonymous RSS flat" } else { "RSS not judged (run too short)" };
        let _ = writeln!(s, "No hung request, no unexpected answer, no VM reload, callouts back to 0, {rss}.");
    }
    for p in &r.problems {
        let _ = writeln!(s, "- {p}");
    }
    for n in &r.notes {
        let _ = writeln!(s, "- note: {n}");
    }
    s
}
