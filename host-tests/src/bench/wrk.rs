//! Runs wrk (pinned to the load core) with `bench/wrk/bench.lua` and reads its `MGJSON` line.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

/// What one wrk run measured (latencies in µs, from wrk's own histogram).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WrkResult {
    pub requests: u64,
    pub duration_us: u64,
    pub bytes: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub mean_us: f64,
    pub max_us: u64,
    /// Responses that were not 2xx/3xx.
    pub status_errors: u64,
    pub connect_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub timeouts: u64,
    /// Requests the script generated (tokens and bogus modes; 0 in static mode).
    pub sent: u64,
}

impl WrkResult {
    pub fn rps(&self) -> f64 {
        if self.duration_us == 0 {
            return 0.0;
        }
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }

    /// Requests answered 2xx/3xx without a socket error.
    pub fn ok(&self) -> u64 {
        self.requests.saturating_sub(self.status_errors)
    }

    pub fn socket_errors(&self) -> u64 {
        self.connect_errors + self.read_errors + self.write_errors + self.timeouts
    }
}

/// One wrk invocation.
#[derive(Clone, Debug)]
pub struct Wrk<'a> {
    pub url: String,
    pub connections: u32,
    pub duration: Duration,
    /// `Authorization: Bearer` of every request in static mode (the other modes replace it).
    pub token: Option<&'a str>,
    /// MG_MODE and friends (see bench.lua).
    pub env: Vec<(&'static str, String)>,
    /// CPU to pin wrk to (`taskset -c`), if any.
    pub cpu: Option<usize>,
    pub script: &'a Path,
}

impl Wrk<'_> {
    fn command(&self) -> Command {
        let mut cmd = match self.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), "wrk"]);
                c
            }
            None => Command::new("wrk"),
        };
        let secs = self.duration.as_secs_f64().ceil().max(1.0) as u64;
        cmd.args(["-t", "1"])
            .args(["-c", &self.connections.to_string()])
            .args(["-d", &format!("{secs}s")])
            .args(["--timeout", "10s"])
            .arg("--latency")
            .arg("-s")
            .arg(self.script);
        if let Some(t) = self.token {
            cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        cmd.arg(&self.url);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    pub fn run(&self) -> Result<WrkResult> {
        let child = self.spawn()?;
        finish(child)
    }

    /// Starts wrk without waiting (for runs that overlap); [`finish`] collects it.
    pub fn spawn(&self) -> Result<Child> {
        self.command()
            .spawn()
            .context("starting wrk (Debian: apt-get install wrk)")
    }
}

/// Waits for a wrk run with `MG_LIMIT` whose script creates `done_file` when the limit is reached,
/// calling `tick` every 20 ms meanwhile; then ends wrk with SIGINT (it prints its summary then).
/// Returns the result and the seconds until the limit was reached.
pub fn finish_limited(
    mut child: Child,
    done_file: &Path,
    mut tick: impl FnMut(),
) -> Result<(WrkResult, f64)> {
    let started = std::time::Instant::now();
    loop {
        tick();
        if child.try_wait()?.is_some() {
            let secs = started.elapsed().as_secs_f64();
            return Ok((finish(child)?, secs));
        }
        if done_file.exists() {
            let secs = started.elapsed().as_secs_f64();
            let _ = std::fs::remove_file(done_file);
            let status = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()?;
            if !status.success() {
                bail!("could not interrupt wrk {}", child.id());
            }
            return Ok((finish(child)?, secs));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a spawned wrk and parses its result.
pub fn finish(child: Child) -> Result<WrkResult> {
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // SIGINT ends wrk normally (summary printed, exit 0 or 130 depending on the version).
    if !out.status.success() && !stdout.contains("MGJSON ") {
        bail!(
            "wrk failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("MGJSON "))
        .ok_or_else(|| anyhow!("wrk printed no MGJSON line:\n{stdout}"))?;
    Ok(serde_json::from_str(line)?)
}
