//! The bench's command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Throughput, latency, CPU and memory of metrics-gate next to bare Envoy, a do-nothing wasm
/// filter and the seed's HAProxy, in one interleaved run on loopback (BENCHMARKS.md).
#[derive(Parser, Debug)]
#[command(name = "metrics-gate-bench")]
pub struct Cli {
    /// Smoke run of about two minutes: 1 s runs, concurrency 8 only, one repeat, small flood and
    /// memory runs. Its figures are not for comparing.
    #[arg(long)]
    quick: bool,
    /// Length of every measured run, in seconds [default: 10; --quick: 1].
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// wrk connection counts [default: 1,8,64; --quick: 8].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    concurrency: Option<Vec<u32>>,
    /// How many times every point is measured; the report gives the median and the spread
    /// [default: 3; --quick: 1].
    #[arg(long, value_name = "N")]
    repeats: Option<u32>,
    /// Valid tokens minted for setup d.
    #[arg(long, value_name = "N", default_value_t = 24_000)]
    tokens: usize,
    /// Seconds of the flood run's flood of distinct bogus tokens (long enough that the review
    /// budget's rate, not its one-second burst, decides what reaches the apiserver) [--quick: 3].
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    flood_seconds: u64,
    /// Requests of the memory run's second reading.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    memory_requests: u64,
    #[arg(long)]
    skip_flood: bool,
    #[arg(long)]
    skip_memory: bool,
    /// Skip the memory of the shipped DaemonSet configuration (four TLS listeners, its
    /// --concurrency).
    #[arg(long)]
    skip_daemonset: bool,
    /// The do-nothing filter of setup f (`just bench` assembles bench/floor.wat into it).
    #[arg(long, value_name = "FILE")]
    floor_wasm: Option<PathBuf>,
    /// Start and warm every setup, print their URLs and PIDs, and wait (for a profiler).
    #[arg(long)]
    hold: bool,
    /// Where results.json and results.md go.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Replace the results block of this file (BENCHMARKS.md) with results.md.
    #[arg(long, value_name = "FILE")]
    doc: Option<PathBuf>,
}

/// The command line with the defaults of a full or a quick run filled in.
pub struct Args {
    pub quick: bool,
    pub duration: Duration,
    pub concurrency: Vec<u32>,
    pub repeats: u32,
    pub tokens: usize,
    pub flood_seconds: u64,
    pub memory_requests: u64,
    pub skip_flood: bool,
    pub skip_memory: bool,
    pub skip_daemonset: bool,
    pub floor_wasm: Option<PathBuf>,
    pub hold: bool,
    pub out: PathBuf,
    pub doc: Option<PathBuf>,
}

impl Args {
    pub fn parse(root: &std::path::Path) -> Args {
        let cli = Cli::parse();
        let quick = cli.quick;
        let limit = |n: u64, quick_max: u64| if quick { n.min(quick_max) } else { n };
        Args {
            quick,
            duration: Duration::from_secs(cli.duration.unwrap_or(if quick { 1 } else { 10 })),
            concurrency: cli.concurrency.unwrap_or_else(|| {
                if quick {
                    vec![8]
                } else {
                    vec![1, 8, 64]
                }
            }),
            repeats: cli.repeats.unwrap_or(if quick { 1 } else { 3 }).max(1),
            tokens: limit(cli.tokens as u64, 1_500) as usize,
            flood_seconds: limit(cli.flood_seconds, 3),
            memory_requests: limit(cli.memory_requests, 4_000),
            skip_flood: cli.skip_flood,
            skip_memory: cli.skip_memory,
            skip_daemonset: cli.skip_daemonset,
            floor_wasm: cli.floor_wasm,
            hold: cli.hold,
            out: cli.out.unwrap_or_else(|| root.join("bench/results")),
            doc: cli.doc,
        }
    }
}
