//! `metrics-gate-render`: prints the Envoy bootstrap of one node (YAML), the SDS resources it reads,
//! a self-signed serving certificate (a Kubernetes Secret, or files), or writes every shipped
//! example. `metrics-gate-render reference` prints this command line's reference in Markdown
//! (docs/cli.md is that output; a test fails when they differ).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use metrics_gate_envoy::cert::{issue, secret_yaml, CertRequest};
use metrics_gate_envoy::file::ComponentsFile;
use metrics_gate_envoy::model::{OWN_PORT, SYSTEM_CA_BUNDLE};
use metrics_gate_envoy::own_endpoints::ADMIN_SOCKET;
use metrics_gate_envoy::{
    examples, render_yaml, sds_client_ca, sds_resource, sds_serving_certificate, Apiserver,
    ClientCertificates, Component, ListenerTls, NodeAddress, OwnListener, Preset, RemoteWasm,
    Stack, TlsFiles, UpstreamTls, WasmCode,
};

/// Renders the Envoy configuration metrics-gate runs with.
#[derive(Parser, Debug)]
#[command(name = "metrics-gate-render", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print one node's Envoy bootstrap (YAML).
    Bootstrap(Box<BootstrapArgs>),
    /// Print a file-based SDS resource for the credentials directory.
    Sds {
        #[command(subcommand)]
        resource: SdsResource,
    },
    /// A fresh self-signed CA and a serving certificate it signs: a kubernetes.io/tls Secret on
    /// standard output, or tls.crt, tls.key and ca.crt files with --out-dir.
    Cert(CertArgs),
    /// Write every configuration the repository ships (or check them with --check).
    Examples {
        /// The repository root.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Compare instead of writing; fail on drift.
        #[arg(long)]
        check: bool,
    },
    /// Print this command line's reference in Markdown (docs/cli.md).
    Reference,
}

#[derive(Args, Debug)]
struct BootstrapArgs {
    /// Listeners bind here. A text such as '${NODE_IP}' is written as is, for an init step to
    /// replace: Envoy does no substitution.
    #[arg(long, value_name = "IP")]
    node_ip: String,
    /// A components file (YAML; see envoy/components.example.yaml). Instead of --preset.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["preset", "plaintext", "client_certificates"])]
    components: Option<PathBuf>,
    /// Presets, repeatable or comma-separated [default: the four control-plane components].
    #[arg(long, value_name = "NAME", value_delimiter = ',', value_parser = preset_names())]
    preset: Vec<String>,
    /// Plain-HTTP listeners for the presets (an explicit opt-in; default TLS).
    #[arg(long, conflicts_with = "client_certificates")]
    plaintext: bool,
    /// Client certificates on the presets' listeners.
    #[arg(long, value_enum, value_name = "MODE")]
    client_certificates: Option<ClientCertsArg>,
    /// tls.crt and tls.key of the listeners (a mounted kubernetes.io/tls Secret)
    /// [default: /etc/metrics-gate/tls, or the components file's tls.cert_dir].
    #[arg(long, value_name = "DIR")]
    tls_cert_dir: Option<String>,
    /// CA that client certificates must chain to.
    #[arg(long, value_name = "FILE")]
    client_ca: Option<String>,
    /// Verify the https presets' certificates (kube-controller-manager, kube-scheduler) against
    /// this CA [default: not verified: they serve self-signed certificates on loopback].
    #[arg(long, value_name = "FILE", requires = "upstream_server_name")]
    upstream_ca: Option<String>,
    /// The name the https presets' certificates must carry with --upstream-ca: a DNS SAN, or an IP
    /// SAN such as 127.0.0.1.
    #[arg(long, value_name = "NAME|IP", requires = "upstream_ca")]
    upstream_server_name: Option<String>,
    /// Envoy admin's Unix socket (admin is never on TCP).
    #[arg(long, value_name = "PATH", default_value = ADMIN_SOCKET)]
    admin_socket: String,
    /// The gate's own listener: /ready for probes, /metrics for its own counters (gated like every
    /// scrape); 0 for none.
    #[arg(long, value_name = "PORT", default_value_t = OWN_PORT)]
    own_port: u16,
    /// metrics_gate.wasm, as Envoy sees it.
    #[arg(long, value_name = "PATH", default_value = examples::WASM)]
    wasm: String,
    /// Instead of --wasm: Envoy fetches metrics_gate.wasm from this http:// or https:// URL when it
    /// starts and loads it only if its sha256 is --wasm-sha256. Otherwise (or when the server cannot
    /// be reached) every gated request is answered 503 until Envoy restarts.
    #[arg(
        long,
        value_name = "URL",
        requires = "wasm_sha256",
        conflicts_with = "wasm"
    )]
    wasm_url: Option<String>,
    /// The sha256 of the .wasm at --wasm-url, 64 hex digits (`sha256sum metrics_gate.wasm`).
    #[arg(long, value_name = "HEX", requires = "wasm_url")]
    wasm_sha256: Option<String>,
    /// CA bundle the server of an https --wasm-url must chain to (its certificate must also name the
    /// URL's host).
    #[arg(long, value_name = "FILE", default_value = SYSTEM_CA_BUNDLE)]
    wasm_ca: String,
    /// Directory of the SDS files (the proxy's token, the serving certificate).
    #[arg(long, value_name = "DIR", default_value = examples::CREDENTIALS_DIR)]
    credentials_dir: String,
    /// kube-apiserver [default: kubernetes.default.svc:443].
    #[arg(long, value_name = "HOST:PORT")]
    apiserver: Option<String>,
    /// The apiserver's TLS server name [default: kubernetes.default.svc].
    #[arg(long, value_name = "NAME")]
    apiserver_sni: Option<String>,
    /// The cluster CA [default: the pod's ServiceAccount ca.crt].
    #[arg(long, value_name = "FILE")]
    apiserver_ca: Option<String>,
    /// Timeout of the review callouts' route [default: 5000].
    #[arg(long, value_name = "MS")]
    apiserver_timeout_ms: Option<u32>,
    /// Verify ServiceAccount tokens of this issuer in Envoy (jwt_authn, the apiserver's published
    /// keys) instead of a TokenReview each; others are still reviewed. The cluster's
    /// --service-account-issuer, e.g. https://kubernetes.default.svc.cluster.local
    #[arg(long, value_name = "ISSUER")]
    verify_tokens_locally: Option<String>,
    /// With --verify-tokens-locally: the audiences a token must name [default: the issuer].
    #[arg(long, value_name = "AUDIENCE", requires = "verify_tokens_locally")]
    token_audience: Vec<String>,
    /// With --verify-tokens-locally: tokens valid for longer than this from now are reviewed
    /// instead (how long a deleted pod's token can go on working here).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 3600,
        requires = "verify_tokens_locally"
    )]
    token_max_lifetime_seconds: u32,
    /// No access log (by default one JSON line per request on stdout: who, what, the decision
    /// and why; never a token).
    #[arg(long)]
    no_access_log: bool,
    /// Print JSON instead of YAML.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ClientCertsArg {
    None,
    Optional,
    Required,
}

#[derive(Subcommand, Debug)]
enum SdsResource {
    /// sds.yaml: the proxy's ServiceAccount token file.
    Token { file: String },
    /// serving-certificate.yaml: the directory holding tls.crt and tls.key.
    ServingCertificate { dir: String },
    /// client-ca.yaml: the CA file of client certificates.
    ClientCa { file: String },
}

#[derive(Args, Debug)]
struct CertArgs {
    /// The Secret's name.
    #[arg(long, default_value = "metrics-gate-tls")]
    name: String,
    /// The Secret's namespace.
    #[arg(long, default_value = "metrics-gate")]
    namespace: String,
    /// DNS SANs, repeatable [default: metrics-gate.metrics-gate.svc(.cluster.local)].
    #[arg(long, value_name = "NAME")]
    dns: Vec<String>,
    /// IP SANs, repeatable (e.g. the node IP, for scraping by address).
    #[arg(long, value_name = "IP")]
    ip: Vec<IpAddr>,
    /// Validity of both certificates.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Write tls.crt, tls.key (mode 0600) and ca.crt here instead of printing a Secret.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

fn preset_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(Preset::names())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("metrics-gate-render: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<String, String> {
    match command {
        Command::Bootstrap(args) => bootstrap(*args),
        Command::Sds { resource } => Ok(match resource {
            SdsResource::Token { file } => sds_resource(&file),
            SdsResource::ServingCertificate { dir } => sds_serving_certificate(&dir),
            SdsResource::ClientCa { file } => sds_client_ca(&file),
        } + "\n"),
        Command::Cert(args) => cert(args),
        Command::Examples { out, check } => write_examples(&out, check),
        Command::Reference => Ok(reference()),
    }
}

fn bootstrap(args: BootstrapArgs) -> Result<String, String> {
    let node_ip = match args.node_ip.parse::<IpAddr>() {
        Ok(ip) => NodeAddress::Ip(ip),
        Err(_) if args.node_ip.starts_with("${") && args.node_ip.ends_with('}') => {
            NodeAddress::Placeholder(args.node_ip.clone())
        }
        Err(e) => {
            return Err(format!(
                "--node-ip {:?}: {e} (or a placeholder such as '${{NODE_IP}}')",
                args.node_ip
            ))
        }
    };
    let mut apiserver = Apiserver::in_cluster();
    if let Some(v) = &args.apiserver {
        let (host, port) = v
            .rsplit_once(':')
            .ok_or(format!("--apiserver {v}: want HOST:PORT"))?;
        apiserver.address = host.trim_start_matches('[').trim_end_matches(']').into();
        apiserver.port = port.parse().map_err(|e| format!("--apiserver {v}: {e}"))?;
    }
    if let Some(sni) = args.apiserver_sni {
        apiserver.sni = sni;
    }
    if let Some(ca) = args.apiserver_ca {
        apiserver.ca_file = ca;
    }
    if let Some(ms) = args.apiserver_timeout_ms {
        apiserver.timeout_ms = ms;
    }

    let (mut tls, mut components) = match &args.components {
        Some(path) => {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| format!("{origin}: {e}"))?;
            let parsed = ComponentsFile::parse(&text, &origin).map_err(|e| e.to_string())?;
            (
                parsed.tls_files(),
                parsed.components(&origin).map_err(|e| e.to_string())?,
            )
        }
        None => {
            let presets: Vec<Preset> = if args.preset.is_empty() {
                Preset::ALL.to_vec()
            } else {
                args.preset
                    .iter()
                    .filter_map(|name| Preset::from_name(name))
                    .collect()
            };
            let listener_tls = if args.plaintext {
                ListenerTls::Plaintext
            } else {
                ListenerTls::Tls {
                    client_certificates: match args.client_certificates {
                        None | Some(ClientCertsArg::None) => ClientCertificates::Off,
                        Some(ClientCertsArg::Optional) => ClientCertificates::Optional,
                        Some(ClientCertsArg::Required) => ClientCertificates::Required,
                    },
                }
            };
            let components = presets
                .iter()
                .map(|p| {
                    let mut c = Component::preset(*p, serde_json::json!({}));
                    c.listener_tls = listener_tls.clone();
                    if let (Some(ca_file), Some(name), UpstreamTls::TlsNoVerify) = (
                        &args.upstream_ca,
                        &args.upstream_server_name,
                        &c.upstream_tls,
                    ) {
                        c.upstream_tls = UpstreamTls::TlsVerify {
                            ca_file: ca_file.clone(),
                            sni: name.clone(),
                        };
                    }
                    c
                })
                .collect();
            (TlsFiles::default(), components)
        }
    };
    if args.components.is_none() && args.upstream_ca.is_some() {
        let https = components
            .iter()
            .any(|c| matches!(c.upstream_tls, UpstreamTls::TlsVerify { .. }));
        if !https {
            return Err("--upstream-ca: none of the presets has an https upstream".into());
        }
    }
    if let Some(dir) = args.tls_cert_dir {
        tls.cert_dir = dir;
    }
    if args.client_ca.is_some() {
        tls.client_ca_file = args.client_ca.clone();
    }
    // Keep the component list order stable and unique by name.
    components.dedup_by(|a, b| a.name == b.name);

    // The own listener speaks what the component listeners speak.
    let own_listener = (args.own_port != 0).then(|| OwnListener {
        port: args.own_port,
        tls: components
            .first()
            .map_or_else(ListenerTls::default, |c| c.listener_tls.clone()),
    });
    let stack = Stack {
        node_ip,
        admin_socket: args.admin_socket,
        own_listener,
        wasm: match (args.wasm_url, args.wasm_sha256) {
            (Some(url), Some(sha256)) => WasmCode::Remote(RemoteWasm {
                url,
                sha256: sha256.to_ascii_lowercase(),
                ca_file: args.wasm_ca,
            }),
            _ => WasmCode::File(args.wasm),
        },
        apiserver,
        credentials_dir: args.credentials_dir,
        tls,
        components,
        access_log: !args.no_access_log,
        local_token_verification: args.verify_tokens_locally.as_deref().map(|issuer| {
            let mut v = metrics_gate_envoy::LocalTokenVerification::for_issuer(issuer);
            if !args.token_audience.is_empty() {
                v.audiences = args.token_audience.clone();
            }
            v.max_lifetime_seconds = args.token_max_lifetime_seconds;
            v
        }),
    };
    stack.check().map_err(|e| e.to_string())?;
    if args.json {
        let v = metrics_gate_envoy::render(&stack);
        return serde_json::to_string_pretty(&v)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string());
    }
    Ok(render_yaml(&stack))
}

fn cert(args: CertArgs) -> Result<String, String> {
    let mut req = CertRequest {
        name: args.name,
        namespace: args.namespace,
        ips: args.ip,
        days: args.days,
        ..CertRequest::default()
    };
    if !args.dns.is_empty() {
        req.dns_names = args.dns;
    }
    let issued = issue(&req)?;
    let Some(dir) = args.out_dir else {
        return Ok(secret_yaml(&req, &issued));
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut report = String::new();
    for (name, pem, mode) in [
        ("tls.crt", &issued.cert_pem, 0o644),
        ("tls.key", &issued.key_pem, 0o600),
        ("ca.crt", &issued.ca_pem, 0o644),
    ] {
        let path = dir.join(name);
        write_file(&path, pem, mode)?;
        report.push_str(&format!("wrote {}\n", path.display()));
    }
    Ok(report)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn write_examples(out: &Path, check: bool) -> Result<String, String> {
    let mut report = String::new();
    let mut drift = Vec::new();
    for ex in examples::all() {
        let path = out.join(ex.path);
        let text = ex.text();
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                drift.push(ex.path);
            }
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(&path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
        report.push_str(&format!("wrote {}\n", ex.path));
    }
    if !drift.is_empty() {
        return Err(format!(
            "out of date (run `{}`): {}",
            examples::REGENERATE,
            drift.join(", ")
        ));
    }
    Ok(report)
}

/// The Markdown reference: every command's full `--help`, as clap renders it.
fn reference() -> String {
    let mut root = Cli::command().term_width(100);
    let mut out = String::from(
        "# metrics-gate-render\n\n\
         The renderer's command line, as `metrics-gate-render <command> --help` prints it. Generated by\n\
         `metrics-gate-render reference` (`just render`); `envoy/tests/cli_reference.rs` fails when it\n\
         drifts.\n\n",
    );
    out.push_str(&format!(
        "```text\n{}```\n",
        root.render_long_help().to_string().trim_end().to_owned() + "\n"
    ));
    let names: Vec<String> = root
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .filter(|n| n != "help")
        .collect();
    for name in names {
        let Some(sub) = root.find_subcommand_mut(&name) else {
            continue;
        };
        let mut sub = sub.clone().bin_name(format!("metrics-gate-render {name}"));
        out.push_str(&format!(
            "\n## {name}\n\n```text\n{}\n```\n",
            sub.render_long_help().to_string().trim_end()
        ));
        let nested: Vec<String> = sub
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .filter(|n| n != "help")
            .collect();
        for inner in nested {
            if let Some(leaf) = sub.find_subcommand_mut(&inner) {
                let mut leaf = leaf
                    .clone()
                    .bin_name(format!("metrics-gate-render {name} {inner}"));
                out.push_str(&format!(
                    "\n### {name} {inner}\n\n```text\n{}\n```\n",
                    leaf.render_long_help().to_string().trim_end()
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
