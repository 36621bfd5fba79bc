//! A rolling update or a node drain loses no scrape in flight: the DaemonSet's preStop hook, run as
//! shipped (the perl script and its arguments from manifests/base/daemonset.yaml, Envoy started
//! with the DaemonSet's --drain-time-s and --drain-strategy, admin on a Unix socket), against the
//! real Envoy with scrapes held in flight by a slow component.
//!
//! What the kubelet does on termination, in order: the preStop hook (drain, wait), then SIGTERM. The
//! test checks every in-flight scrape completes 200 (also one that arrived during the drain and was
//! still running when the listeners closed), new connections are refused once the drain period is
//! over, the hook returns only after the last request, and Envoy then exits at once and cleanly.
//! The second test is the control: SIGTERM alone (Envoy 1.40 closes everything at once) cuts the
//! same scrapes, which is why the hook exists.
//!
//! The slow component is an HttpServer of the test host with a delay in its handler, behind Envoy's
//! kube-proxy listener: host-tests/src/components.rs has no delay option.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::envoy_process::EnvoyProcess;
use metrics_gate_host_tests::http_server::{respond, Handler, HttpServer};
use metrics_gate_host_tests::raw_http;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use serde_json::{json, Value};

/// How long the slow component takes to answer a scrape.
const DELAY: Duration = Duration::from_secs(3);
const BODY: &str = "# TYPE slow_component_metric gauge\nslow_component_metric 1\n";

/// What the DaemonSet runs, from manifests/base/daemonset.yaml.
struct Shipped {
    /// `perl -e SCRIPT SOCKET DRAIN LIMIT`
    pre_stop: Vec<String>,
    drain_seconds: u64,
    limit_seconds: u64,
    /// Envoy's --drain-time-s, --drain-strategy and --concurrency, as the DaemonSet passes them.
    envoy_args: Vec<String>,
}

fn shipped() -> Shipped {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/base/daemonset.yaml");
    let ds: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let envoy = ds["spec"]["template"]["spec"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == "envoy").unwrap();
    let pre_stop: Vec<String> = envoy["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .expect("the envoy container has an exec preStop hook")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(pre_stop.len(), 6, "perl -e SCRIPT SOCKET DRAIN LIMIT: {pre_stop:?}");
    let args: Vec<String> = envoy["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    let mut envoy_args = Vec::new();
    for flag in ["--drain-time-s", "--drain-strategy", "--concurrency"] {
        let value = args.iter().skip_while(|a| *a != flag).nth(1).unwrap_or_else(|| panic!("the DaemonSet passes {flag}"));
        envoy_args.extend([flag.to_string(), value.clone()]);
    }
    Shipped {
        drain_seconds: pre_stop[4].parse().unwrap(),
        limit_seconds: pre_stop[5].parse().unwrap(),
        pre_stop,
        envoy_args,
    }
}

/// One request to Envoy's admin over its Unix socket: (status, body).
fn admin(socket: &Path, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The DaemonSet's Envoy: the stack's bootstrap with admin on a Unix socket and the kube-proxy
/// cluster pointed at `upstream`, started with the DaemonSet's drain flags.
struct NodeEnvoy {
    child: Child,
    socket: PathBuf,
    listener: SocketAddr,
    dir: tempfile::TempDir,
}

impl NodeEnvoy {
    fn start(stack: &LocalStack, upstream: SocketAddr, shipped: &Shipped) -> NodeEnvoy {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let mut config = stack.config.clone();
        config["admin"] = json!({"address": {"pipe": {"path": socket.to_string_lossy(), "mode": 0o600}}});
        let cluster = config["static_resources"]["clusters"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|c| c["name"] == "kube-proxy")
            .expect("the kube-proxy cluster");
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] =
            json!(upstream.port());
        let config_path = dir.path().join("envoy.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let child = Command::new(EnvoyProcess::binary().unwrap())
            .arg("-c")
            .arg(&config_path)
            .args(["--disable-hot-restart", "--base-id", &EnvoyProcess::next_base_id().to_string()])
            .args(["-l", "info", "--log-path"])
            .arg(dir.path().join("envoy.log"))
            .args(&shipped.envoy_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let mut envoy = NodeEnvoy { child, socket, listener: "127.0.0.1:0".parse().unwrap(), dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(admin(&envoy.socket, "GET", "/ready"), Ok((200, _))) {
            assert!(envoy.child.try_wait().unwrap().is_none(), "Envoy exited during start-up:\n{}", envoy.log());
            assert!(Instant::now() < deadline, "Envoy not ready:\n{}", envoy.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        let (_, body) = admin(&envoy.socket, "GET", "/listeners?format=json").unwrap();
        let listeners: Value = serde_json::from_str(&body).unwrap();
        let sa = &listeners["listener_statuses"].as_array().unwrap().iter().find(|l| l["name"] == "kube-proxy").unwrap()
            ["local_address"]["socket_address"];
        envoy.listener = SocketAddr::new(sa["address"].as_str().unwrap().parse().unwrap(), sa["port_value"].as_u64().unwrap() as u16);
        envoy
    }

    fn log(&self) -> String {
        let mut log = std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default();
        log.push_str(&std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default());
        log
    }

    /// What the kubelet sends after the preStop hook.
    fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for Envoy to exit; its exit status.
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "Envoy still running {within:?} after SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A component that takes DELAY to answer; counts the requests it has received.
fn slow_component() -> (Arc<HttpServer>, Arc<AtomicUsize>) {
    let received = Arc::new(AtomicUsize::new(0));
    let r = received.clone();
    let handler: Handler = Arc::new(move |_req| {
        r.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(DELAY).await;
            respond(200, "text/plain; version=0.0.4", BODY)
        })
    });
    (HttpServer::start("127.0.0.1:0".parse().unwrap(), None, handler).unwrap(), received)
}

fn stack() -> LocalStack {
    let mut stack = LocalStack::start_with(StackOptions { presets: vec![Preset::KubeProxy], ..Default::default() }).unwrap();
    // Its own Envoy is not the one under test.
    stack.envoy.stop().unwrap();
    stack
}

/// A scrape on its own connection, in a thread: (status, body) or the error.
fn scrape(addr: SocketAddr, token: &str) -> std::thread::JoinHandle<Result<(u16, String), String>> {
    let auth = format!("Bearer {token}");
    std::thread::spawn(move || {
        raw_http::request(addr, "GET", "/metrics", &[("authorization", &auth)])
            .map(|r| (r.status, r.text()))
            .map_err(|e| format!("{e:#}"))
    })
}

fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn refused(addr: SocketAddr) -> bool {
    matches!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[test]
fn the_prestop_hook_drains_without_losing_a_scrape_in_flight() {
    let shipped = shipped();
    assert!(shipped.drain_seconds >= 2, "the test starts a scrape one second before the drain period ends");
    let stack = stack();
    let (component, received) = slow_component();
    let mut envoy = NodeEnvoy::start(&stack, component.addr(), &shipped);
    let token = stack.prometheus_token();

    // Three scrapes in flight (each held DELAY by the component) when the pod is told to terminate.
    let early: Vec<_> = (0..3).map(|_| scrape(envoy.listener, &token)).collect();
    wait_until("3 scrapes at the component", Duration::from_secs(10), || received.load(Ordering::SeqCst) == 3);

    // The kubelet runs the hook; only the socket path differs from the DaemonSet's.
    let mut hook = shipped.pre_stop.clone();
    hook[3] = envoy.socket.to_string_lossy().into_owned();
    let started = Instant::now();
    let mut pre_stop = Command::new(&hook[0]).args(&hook[1..]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();

    // During the drain period the listener still accepts: one second before it ends, a new scrape
    // arrives on a new connection; it is still at the component when the listener closes.
    let drain = Duration::from_secs(shipped.drain_seconds);
    std::thread::sleep(drain - Duration::from_secs(1) - started.elapsed().min(drain - Duration::from_secs(1)));
    assert!(!refused(envoy.listener), "the listener closed before the drain period was over");
    let late = scrape(envoy.listener, &token);
    wait_until("the late scrape at the component", Duration::from_secs(2), || received.load(Ordering::SeqCst) == 4);

    // After the drain period: new connections are refused, the late scrape is still in flight.
    wait_until("the listener closing after the drain period", drain + Duration::from_secs(3), || refused(envoy.listener));
    let closed_after = started.elapsed();
    assert!(closed_after >= drain - Duration::from_millis(200), "the listener closed after {closed_after:?}, before the drain period");
    assert!(!late.is_finished(), "the late scrape should still be in flight when the listener closes");

    for (i, s) in early.into_iter().enumerate() {
        let answer = s.join().unwrap();
        assert_eq!(answer, Ok((200, BODY.to_string())), "scrape {i}, in flight when the hook began:\n{}", envoy.log());
    }
    let answer = late.join().unwrap();
    let late_done = started.elapsed();
    assert_eq!(answer, Ok((200, BODY.to_string())), "the scrape in flight when the listener closed:\n{}", envoy.log());

    // The hook returns once nothing is in flight (not at its limit), and successfully.
    let status = pre_stop.wait().unwrap();
    let hook_done = started.elapsed();
    let mut out = String::new();
    pre_stop.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    pre_stop.stderr.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(status.success(), "preStop hook failed: {status}\n{out}");
    assert!(out.contains("drained"), "{out}");
    assert!(hook_done + Duration::from_millis(100) >= late_done, "the hook returned at {hook_done:?}, before the last scrape ({late_done:?})");
    assert!(hook_done < Duration::from_secs(shipped.limit_seconds), "the hook ran into its limit: {hook_done:?}\n{out}");

    // Then the kubelet's SIGTERM: Envoy exits at once, cleanly, and the port stays closed.
    envoy.sigterm();
    let exit = envoy.wait_exit(Duration::from_secs(5));
    assert!(exit.success(), "Envoy's exit after SIGTERM: {exit}\n{}", envoy.log());
    assert!(refused(envoy.listener));
    assert_eq!(received.load(Ordering::SeqCst), 4, "no scrape reached the component after the drain");
}

#[test]
fn sigterm_alone_cuts_the_scrapes_in_flight() {
    // The control: without the hook, Envoy 1.40 closes its listeners and connections on SIGTERM.
    let shipped = shipped();
    let stack = stack();
    let (component, received) = slow_component();
    let mut envoy = NodeEnvoy::start(&stack, component.addr(), &shipped);
    let token = stack.prometheus_token();
    let inflight: Vec<_> = (0..3).map(|_| scrape(envoy.listener, &token)).collect();
    wait_until("3 scrapes at the component", Duration::from_secs(10), || received.load(Ordering::SeqCst) == 3);
    envoy.sigterm();
    envoy.wait_exit(Duration::from_secs(5));
    for s in inflight {
        let answer = s.join().unwrap();
        assert!(!matches!(answer, Ok((200, _))), "a scrape survived SIGTERM without the hook: {answer:?}");
    }
}
