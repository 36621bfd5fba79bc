//! `just demo`: the whole product on loopback, for a person to poke at with curl.
//!
//! Starts the mock kube-apiserver, the four fake components on 127.0.0.1 and a real Envoy running
//! the built filter on the "node IP" 127.0.0.2, checks the four answers a newcomer should see, prints
//! tokens and curl lines to try, and stops everything on Ctrl-C.

use std::process::ExitCode;

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    eprintln!("==> starting the mock kube-apiserver, fake components and Envoy");
    let stack = match LocalStack::start_with(StackOptions { node_ports: true, ..Default::default() }) {
        Ok(stack) => stack,
        Err(e) => {
            eprintln!("    the components' own ports are taken ({e:#});\n    using free ports instead");
            LocalStack::start()?
        }
    };
    let day = TokenOptions::default().lifetime_secs(24 * 3600);
    let allowed = stack.token(&ServiceAccount::prometheus_server(), day.clone());
    let denied = stack.token(&ServiceAccount::nobody(), day);

    let kube_proxy = stack.addr(Preset::KubeProxy);
    let checks = [
        ("authorized scrape", stack.scrape(Preset::KubeProxy, "/metrics", &allowed).status, 200),
        ("no token", stack.request(Preset::KubeProxy, "GET", "/metrics", &[]).status, 401),
        ("valid token, no RBAC binding", stack.scrape(Preset::KubeProxy, "/metrics", &denied).status, 403),
        ("not a metrics path", stack.scrape(Preset::KubeProxy, "/debug/pprof", &allowed).status, 404),
    ];
    eprintln!("==> self-check through Envoy at {kube_proxy}:");
    for (what, got, want) in checks {
        let mark = if got == want { "ok" } else { "UNEXPECTED" };
        eprintln!("    {what:<30} {got}  {mark}");
        if got != want {
            anyhow::bail!("{what}: expected {want}, got {got}; Envoy log: {}", stack.envoy.dir().display());
        }
    }

    let listeners: Vec<String> =
        Preset::ALL.iter().map(|p| format!("{} {}", p.name(), stack.addr(*p))).collect();
    println!(
        r#"
metrics-gate is running. Envoy listens on the node IP 127.0.0.2, beside the components on 127.0.0.1:
  {listeners}
Mock kube-apiserver: https://{apiserver}
The gate's own listener: http://{own} (/ready; /metrics gated like the components)
Envoy admin (Unix socket only, never TCP): {admin}

In another terminal:

  ALLOWED='{allowed}'
  DENIED='{denied}'

  # 200: prometheus-server is bound to the metrics-reader ClusterRole (manifests/)
  curl -s -H "Authorization: Bearer $ALLOWED" http://{kp}/metrics | head -3
  # 401: no token
  curl -si http://{kp}/metrics
  # 403: a valid token of observability/nobody, which has no binding
  curl -si -H "Authorization: Bearer $DENIED" http://{kp}/metrics
  # 404: only /metrics is served, whoever asks
  curl -si -H "Authorization: Bearer $ALLOWED" http://{kp}/debug/pprof
  # the gate's own counters, authorized like every scrape
  curl -s -H "Authorization: Bearer $ALLOWED" http://{own}/metrics | grep '^metrics_gate'
  # admin, for whoever can open its socket on this machine
  curl -s --unix-socket {admin} http://admin/stats | grep metrics_gate

Press Ctrl-C to stop."#,
        listeners = listeners.join("\n  "),
        apiserver = stack.apiserver.addr(),
        admin = stack.envoy.admin_socket().display(),
        own = stack.own_addr(),
        kp = kube_proxy,
    );

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(tokio::signal::ctrl_c())?;
    eprintln!("\n==> stopping");
    drop(stack);
    Ok(())
}
