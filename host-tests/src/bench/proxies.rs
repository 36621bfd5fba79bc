//! The proxies under test: Envoy (one worker, pinned) and HAProxy with the seed's configuration.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use metrics_gate_host_tests::envoy_process::{EnvoyOptions, EnvoyProcess};
use metrics_gate_host_tests::stack::NODE_IP;

use serde_json::{json, Value};

use super::procfs;

pub struct Cores {
    /// The core wrk and the harness run on.
    pub load: Option<usize>,
    /// The core every proxy is pinned to.
    pub proxy: Option<usize>,
}

pub enum Proxy {
    None,
    Envoy(EnvoyProcess),
    Haproxy(Child),
}

impl Proxy {
    pub fn pid(&self) -> Option<u32> {
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

/// Starts an Envoy on `config` with one worker, pinned to the proxy core. Every Envoy of the bench
/// gets an admin socket of its own: the rendered bootstrap names one path, and a second Envoy on
/// the same path would take it over, so that every setup's listeners were looked up (and
/// measured) on whichever Envoy held it.
pub fn start_envoy(config: &Value, cores: &Cores) -> Result<EnvoyProcess> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let mut config = config.clone();
    let socket = std::env::temp_dir().join(format!(
        "mg-bench-admin-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    config["admin"]["address"]["pipe"]["path"] = json!(socket.to_string_lossy());
    let envoy = EnvoyProcess::start(
        &config,
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

pub fn free_port(ip: Ipv4Addr) -> Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn start_haproxy(
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

/// Envoy stats whose names contain `filter`, as numbers.
pub fn envoy_stats(envoy: &EnvoyProcess, filter: &str) -> BTreeMap<String, u64> {
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

/// The sum of the stats whose names end with `suffix`.
pub fn stat(stats: &BTreeMap<String, u64>, suffix: &str) -> u64 {
    stats
        .iter()
        .filter(|(k, _)| k.ends_with(suffix))
        .map(|(_, v)| *v)
        .sum()
}
