//! `metrics-gate-testbed`: the test host's doubles as one long-running process, for the
//! docker-compose setup in envoy/compose/ (a "node" whose loopback holds the components).
//!
//! Starts, on 127.0.0.1: the mock kube-apiserver (:6443, HTTPS, RBAC from the shipped manifests),
//! fake kube-proxy (:10249), kube-controller-manager (:10257, HTTPS), kube-scheduler (:10259, HTTPS)
//! and etcd (:2381). Writes into DIR (default /testbed, a volume Envoy's container mounts too):
//!
//!   apiserver-ca.crt                  the CA the apiserver's certificate chains to
//!   credentials/token, sds.yaml       the proxy's own token, kubelet-style (`..data` symlinks)
//!   credentials/serving-certificate.yaml  the SDS resource naming tls/tls.crt and tls/tls.key
//!   tls/tls.crt, tls.key, ca.crt      a serving certificate for Envoy's listeners
//!   tokens/prometheus-server, nobody  caller tokens (24 h): allowed by RBAC / no binding; written
//!                                     last (compose's health check waits for tokens/nobody)
//!
//! Runs until SIGINT or SIGTERM.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use metrics_gate_envoy::{sds_resource, sds_serving_certificate, SDS_FILE, SERVING_CERT_FILE};
use metrics_gate_host_tests::apiserver::{MockApiserver, MockApiserverOptions};
use metrics_gate_host_tests::components::{allow_users, ComponentKind, ComponentOptions, FakeComponent};
use metrics_gate_host_tests::rbac::default_rbac_files;
use metrics_gate_host_tests::tls::{write_pem, TestCa};
use metrics_gate_host_tests::token_dir::TokenDir;
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};

const USAGE: &str = "\
usage: metrics-gate-testbed [--dir DIR] [--apiserver-port PORT] [--rbac FILE]...

  --dir DIR             where tokens, CA and certificates are written    [/testbed]
  --apiserver-port N    the mock kube-apiserver's port on 127.0.0.1     [6443]
  --rbac FILE           RBAC YAML the apiserver evaluates (repeatable)  [the shipped manifests]
";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metrics-gate-testbed: {e:#}\n\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> anyhow::Result<()> {
    let mut dir = PathBuf::from("/testbed");
    let mut port: u16 = 6443;
    let mut rbac_files = Vec::new();
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => dir = PathBuf::from(value()?),
            "--apiserver-port" => port = value()?.parse().context("--apiserver-port")?,
            "--rbac" => rbac_files.push(PathBuf::from(value()?)),
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    if rbac_files.is_empty() {
        rbac_files = default_rbac_files();
    }

    let apiserver = MockApiserver::start_with(MockApiserverOptions {
        port,
        rbac_files,
        ..Default::default()
    })
    .context("starting the mock kube-apiserver")?;
    let issuer = apiserver.issuer();
    std::fs::create_dir_all(&dir)?;
    write_pem(&dir, "apiserver-ca.crt", apiserver.ca_pem())?;

    let ca = TestCa::new("metrics-gate-testbed-ca");
    let serving = ca.issue_server(
        &["metrics-gate.metrics-gate.svc", "localhost"],
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
    );
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    serving.write_to(&tls, "tls")?;
    ca.write_cert(&tls, "ca.crt")?;

    // The proxy's token and the SDS resources Envoy loads from the credentials directory: the token's
    // and the serving certificate's (tls/ above), through the renderer's own functions.
    let credentials = TokenDir::new(dir.join("credentials"))?;
    let token_file = credentials.file("token");
    let proxy_token = issuer.mint(&ServiceAccount::metrics_gate(), TokenOptions::default().lifetime_secs(24 * 3600));
    credentials.write(&[
        ("token", proxy_token.as_bytes()),
        (SDS_FILE, sds_resource(&token_file.to_string_lossy()).as_bytes()),
        (SERVING_CERT_FILE, sds_serving_certificate(&tls.to_string_lossy()).as_bytes()),
    ])?;

    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let day = TokenOptions::default().lifetime_secs(24 * 3600);
    std::fs::write(tokens.join("prometheus-server"), issuer.mint(&ServiceAccount::prometheus_server(), day.clone()))?;
    std::fs::write(tokens.join("nobody"), issuer.mint(&ServiceAccount::nobody(), day))?;

    // kube-controller-manager and kube-scheduler accept only the proxy's own account, as real ones
    // with an RBAC binding for it would.
    let proxy_user = ServiceAccount::metrics_gate().username();
    let mut components = Vec::new();
    for kind in ComponentKind::ALL {
        let options = if kind.is_secure() {
            ComponentOptions::with_verifier(allow_users(issuer.clone(), &[&proxy_user]))
        } else {
            ComponentOptions::default()
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, kind.default_port()));
        let c = FakeComponent::start(kind, addr, options).with_context(|| format!("starting {}", kind.name()))?;
        eprintln!("{:<24} {}{}", kind.name(), if kind.is_secure() { "https://" } else { "http://" }, c.addr());
        components.push(c);
    }
    eprintln!("{:<24} {}", "kube-apiserver", apiserver.url());
    eprintln!("files in {}: apiserver-ca.crt credentials/ tokens/ tls/", dir.display());
    eprintln!("ready");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    eprintln!("stopping");
    drop(components);
    drop(apiserver);
    Ok(())
}
