//! What a bench run found: every measured run, the medians over repeats, and the report files.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use super::setups::Setup;
use super::stress::{DaemonsetMemory, Flood, Memory};
use super::wrk::WrkResult;

/// One wrk run of one setup.
#[derive(Serialize, Clone)]
pub struct Run {
    pub setup: &'static str,
    pub payload: &'static str,
    pub connections: u32,
    /// Which repeat of this point (0-based).
    pub repeat: u32,
    pub rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Proxy CPU (user + system) per 10,000 requests; none for the direct setup.
    pub cpu_s_per_10k: Option<f64>,
    pub token_reviews: u64,
    pub subject_access_reviews: u64,
    pub apiserver_calls_per_10k: f64,
    pub wrk: WrkResult,
}

#[derive(Serialize)]
pub struct SetupMemory {
    pub setup: &'static str,
    pub vm_hwm_kib: u64,
    pub vm_rss_kib: u64,
    /// Anonymous memory at the end (heap, V8): what the process itself allocated. VmRSS also
    /// counts the pages of Envoy's ~100 MB binary that happen to be in memory, which come and go
    /// with the page cache.
    pub rss_anon_kib: u64,
}

#[derive(Serialize)]
pub struct Report {
    pub date: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub envoy_version: String,
    pub haproxy_version: String,
    pub wrk_version: String,
    pub command: String,
    pub quick: bool,
    pub duration_s: u64,
    pub repeats: u32,
    pub wasm_bytes: u64,
    pub floor_wasm_bytes: Option<u64>,
    pub payload_bytes: BTreeMap<&'static str, usize>,
    pub apiserver_delay_ms: u64,
    pub fresh_tokens_minted: usize,
    pub runs: Vec<Run>,
    pub memory_per_setup: Vec<SetupMemory>,
    pub flood: Option<Flood>,
    pub memory: Option<Memory>,
    pub daemonset: Option<DaemonsetMemory>,
    pub notes: Vec<String>,
}

/// The repeats of one setup, payload and concurrency: medians, and the spread of throughput.
#[derive(Clone, Debug)]
pub struct Point {
    pub rps: f64,
    pub rps_min: f64,
    pub rps_max: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub cpu_s_per_10k: Option<f64>,
    pub apiserver_calls_per_10k: f64,
}

impl Point {
    /// Half the range of the repeats' throughput, relative to the median (0 for one repeat).
    pub fn spread(&self) -> f64 {
        if self.rps > 0.0 {
            (self.rps_max - self.rps_min) / 2.0 / self.rps
        } else {
            0.0
        }
    }

    /// Proxy CPU per request, in µs.
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        self.cpu_s_per_10k.map(|s| s * 100.0)
    }
}

/// The median of `values` (the upper one of the middle two for an even count).
fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> Option<T> {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values.get(values.len() / 2).copied()
}

pub fn point(r: &Report, setup: Setup, payload: &str, c: u32) -> Option<Point> {
    let runs: Vec<&Run> = r
        .runs
        .iter()
        .filter(|x| x.setup == setup.id() && x.payload == payload && x.connections == c)
        .collect();
    let rps: Vec<f64> = runs.iter().map(|x| x.rps).collect();
    Some(Point {
        rps: median(rps.clone())?,
        rps_min: rps.iter().copied().fold(f64::INFINITY, f64::min),
        rps_max: rps.iter().copied().fold(0.0, f64::max),
        p50_us: median(runs.iter().map(|x| x.p50_us).collect())?,
        p99_us: median(runs.iter().map(|x| x.p99_us).collect())?,
        cpu_s_per_10k: median(runs.iter().filter_map(|x| x.cpu_s_per_10k).collect()),
        apiserver_calls_per_10k: median(runs.iter().map(|x| x.apiserver_calls_per_10k).collect())?,
    })
}

/// The first non-empty line a command prints (stdout, then stderr), or "".
pub fn first_line(cmd: &str, args: &[&str]) -> String {
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

const BEGIN: &str = "<!-- bench:results:begin -->";
const END: &str = "<!-- bench:results:end -->";

/// Replaces what is between the two markers of `doc` with `md`.
pub fn replace_block(doc: &Path, md: &str) -> Result<()> {
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
