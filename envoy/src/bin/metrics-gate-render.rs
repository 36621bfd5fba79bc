//! `metrics-gate-render`: prints the Envoy bootstrap of one node (YAML), the SDS resources it reads,
//! a self-signed serving certificate as a Kubernetes Secret, or writes every shipped example.
//! Arguments are parsed by hand: this runs in an init step and should not pull in a CLI crate.

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

use metrics_gate_envoy::cert::{issue, secret_yaml, CertRequest};
use metrics_gate_envoy::file::ComponentsFile;
use metrics_gate_envoy::{
    examples, render_yaml, sds_client_ca, sds_resource, sds_serving_certificate, Apiserver,
    ClientCertificates, Component, ListenerTls, NodeAddress, OwnListener, Preset, Stack, TlsFiles,
};

const USAGE: &str = "\
usage: metrics-gate-render bootstrap --node-ip IP|'${NODE_IP}' [--components FILE | --preset NAME...] [options]
       metrics-gate-render sds token FILE | serving-certificate DIR | client-ca FILE
       metrics-gate-render cert [--name N] [--namespace NS] [--dns NAME]... [--ip IP]... [--days N]
       metrics-gate-render examples [--out DIR] [--check]

bootstrap: prints one node's Envoy bootstrap as YAML.
  --node-ip IP                  listeners bind here; a text such as '${NODE_IP}' is written as is for
                                an init step to replace (Envoy does no substitution)      (required)
  --components FILE             components file (YAML; see envoy/src/file.rs and envoy/components.example.yaml)
  --preset NAME                 a preset, repeatable or comma-separated: kube-proxy, kube-controller-manager,
                                kube-scheduler, etcd, kube-vip, cilium-agent, cilium-operator, hubble
                                                                   [the first four, without --components]
  --plaintext                   plain-HTTP listeners for the presets (explicit opt-in)      [TLS]
  --client-certificates MODE    none | optional | required, for the presets' listeners     [none]
  --tls-cert-dir DIR            tls.crt + tls.key (mounted Secret)     [/etc/metrics-gate/tls]
  --client-ca FILE              CA of client certificates
  --admin-socket PATH           Envoy admin's Unix socket (admin is never on TCP)
                                                                       [/var/run/metrics-gate/admin/admin.sock]
  --own-port PORT               the gate's own listener: /ready for probes, /metrics for its own
                                counters (gated like every scrape); 0 = none               [9902]
  --wasm PATH                   metrics_gate.wasm                      [/etc/metrics-gate/metrics_gate.wasm]
  --credentials-dir DIR         directory of the SDS files             [/etc/metrics-gate/credentials]
  --apiserver HOST:PORT         kube-apiserver                         [kubernetes.default.svc:443]
  --apiserver-sni NAME          TLS server name                        [kubernetes.default.svc]
  --apiserver-ca FILE           cluster CA                             [/var/run/secrets/kubernetes.io/serviceaccount/ca.crt]
  --apiserver-timeout-ms MS     callout route timeout                  [5000]
  --json                        print JSON instead of YAML

sds: prints the SDS resource file for the credentials directory: `token FILE` (sds.yaml),
  `serving-certificate DIR` (serving-certificate.yaml), `client-ca FILE` (client-ca.yaml).

cert: prints a kubernetes.io/tls Secret with a fresh self-signed CA (ca.crt) and a serving certificate
  it signs, for clusters without cert-manager.   [--name metrics-gate-tls --namespace metrics-gate
  --dns metrics-gate.metrics-gate.svc(.cluster.local) --days 365]

examples: writes every configuration the repository ships under DIR (the repository root) [.];
  --check compares instead and fails on drift.
";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) if e == "help" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("metrics-gate-render: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(mut args: Vec<String>) -> Result<String, String> {
    if args.is_empty() {
        return Err("help".into());
    }
    let cmd = args.remove(0);
    match cmd.as_str() {
        "-h" | "--help" | "help" => Err("help".into()),
        "bootstrap" => bootstrap(args),
        "sds" => sds(args),
        "cert" => cert(args),
        "examples" => write_examples(args),
        // The first version's interface: flags straight away, `--sds TOKEN_FILE`.
        "--sds" => sds(std::iter::once("token".to_string()).chain(args).collect()),
        flag if flag.starts_with("--") => {
            args.insert(0, cmd);
            bootstrap(args)
        }
        other => Err(format!(
            "unknown command {other:?}: bootstrap, sds, cert or examples"
        )),
    }
}

fn bootstrap(args: Vec<String>) -> Result<String, String> {
    let mut node_ip: Option<NodeAddress> = None;
    let mut admin_socket = metrics_gate_envoy::own_endpoints::ADMIN_SOCKET.to_string();
    let mut own_port: u16 = metrics_gate_envoy::model::OWN_PORT;
    let mut wasm_path = examples::WASM.to_string();
    let mut credentials_dir = examples::CREDENTIALS_DIR.to_string();
    let mut apiserver = Apiserver::in_cluster();
    let mut presets: Vec<Preset> = Vec::new();
    let mut file: Option<String> = None;
    let mut plaintext = false;
    let mut client = ClientCertificates::Off;
    let mut cert_dir: Option<String> = None;
    let mut client_ca: Option<String> = None;
    let mut json = false;

    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err("help".into());
        }
        if flag == "--plaintext" {
            plaintext = true;
            continue;
        }
        if flag == "--json" {
            json = true;
            continue;
        }
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--node-ip" => {
                let v = value()?;
                node_ip = Some(match v.parse::<IpAddr>() {
                    Ok(ip) => NodeAddress::Ip(ip),
                    Err(_) if v.starts_with("${") && v.ends_with('}') => {
                        NodeAddress::Placeholder(v)
                    }
                    Err(e) => {
                        return Err(format!(
                            "--node-ip {v:?}: {e} (or a placeholder such as '${{NODE_IP}}')"
                        ))
                    }
                })
            }
            "--components" => file = Some(value()?),
            "--preset" | "--component" => {
                for name in value()?.split(',').filter(|n| !n.is_empty()) {
                    presets.push(Preset::from_name(name).ok_or(format!(
                        "unknown preset {name:?}; one of: {}",
                        Preset::names().join(", ")
                    ))?);
                }
            }
            "--client-certificates" => {
                client = match value()?.as_str() {
                    "none" => ClientCertificates::Off,
                    "optional" => ClientCertificates::Optional,
                    "required" => ClientCertificates::Required,
                    other => {
                        return Err(format!(
                            "--client-certificates {other:?}: one of none, optional, required"
                        ))
                    }
                }
            }
            "--tls-cert-dir" => cert_dir = Some(value()?),
            "--client-ca" => client_ca = Some(value()?),
            "--admin-socket" => admin_socket = value()?,
            "--own-port" => own_port = parse(&flag, &value()?)?,
            "--wasm" => wasm_path = value()?,
            "--credentials-dir" => credentials_dir = value()?,
            "--apiserver" => {
                let v = value()?;
                let (host, port) = v
                    .rsplit_once(':')
                    .ok_or(format!("--apiserver {v}: want HOST:PORT"))?;
                apiserver.address = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                apiserver.port = parse(&flag, port)?;
            }
            "--apiserver-sni" => apiserver.sni = value()?,
            "--apiserver-ca" => apiserver.ca_file = value()?,
            "--apiserver-timeout-ms" => apiserver.timeout_ms = parse(&flag, &value()?)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }

    let node_ip = node_ip.ok_or("--node-ip is required")?;
    let (mut tls, mut components) = match &file {
        Some(path) => {
            if !presets.is_empty() {
                return Err("--components and --preset: give one of them".into());
            }
            let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
            let parsed = ComponentsFile::parse(&text, path).map_err(|e| e.to_string())?;
            (
                parsed.tls_files(),
                parsed.components(path).map_err(|e| e.to_string())?,
            )
        }
        None => {
            if presets.is_empty() {
                presets = Preset::ALL.to_vec();
            }
            let listener_tls = if plaintext {
                if client != ClientCertificates::Off {
                    return Err(
                        "--plaintext and --client-certificates: client certificates need TLS"
                            .into(),
                    );
                }
                ListenerTls::Plaintext
            } else {
                ListenerTls::Tls {
                    client_certificates: client,
                }
            };
            let components = presets
                .iter()
                .map(|p| {
                    let mut c = Component::preset(*p, serde_json::json!({}));
                    c.listener_tls = listener_tls.clone();
                    c
                })
                .collect();
            (TlsFiles::default(), components)
        }
    };
    if file.is_some() && (plaintext || client != ClientCertificates::Off) {
        return Err(
            "--plaintext / --client-certificates apply to presets; say it in the components file"
                .into(),
        );
    }
    if let Some(d) = cert_dir {
        tls.cert_dir = d;
    }
    if client_ca.is_some() {
        tls.client_ca_file = client_ca;
    }
    // Keep the component list order stable and unique by name.
    components.dedup_by(|a, b| a.name == b.name);

    // The own listener speaks what the component listeners speak.
    let own_listener = (own_port != 0).then(|| OwnListener {
        port: own_port,
        tls: components
            .first()
            .map_or_else(ListenerTls::default, |c| c.listener_tls.clone()),
    });
    let stack = Stack {
        node_ip,
        admin_socket,
        own_listener,
        wasm_path,
        apiserver,
        credentials_dir,
        tls,
        components,
    };
    stack.check().map_err(|e| e.to_string())?;
    if json {
        let v = metrics_gate_envoy::render(&stack);
        return serde_json::to_string_pretty(&v)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string());
    }
    Ok(render_yaml(&stack))
}

fn sds(args: Vec<String>) -> Result<String, String> {
    let [kind, path] = <[String; 2]>::try_from(args).map_err(|_| {
        "sds takes two arguments: token FILE | serving-certificate DIR | client-ca FILE"
    })?;
    let text = match kind.as_str() {
        "token" => sds_resource(&path),
        "serving-certificate" => sds_serving_certificate(&path),
        "client-ca" => sds_client_ca(&path),
        other => {
            return Err(format!(
                "sds {other:?}: one of token, serving-certificate, client-ca"
            ))
        }
    };
    Ok(text + "\n")
}

fn cert(args: Vec<String>) -> Result<String, String> {
    let mut req = CertRequest::default();
    let mut dns = Vec::new();
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--name" => req.name = value()?,
            "--namespace" => req.namespace = value()?,
            "--dns" => dns.push(value()?),
            "--ip" => req.ips.push(parse(&flag, &value()?)?),
            "--days" => req.days = parse(&flag, &value()?)?,
            "-h" | "--help" => return Err("help".into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !dns.is_empty() {
        req.dns_names = dns;
    }
    let issued = issue(&req)?;
    Ok(secret_yaml(&req, &issued))
}

fn write_examples(args: Vec<String>) -> Result<String, String> {
    let mut out = ".".to_string();
    let mut check = false;
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--out" => out = it.next().ok_or("--out needs a value")?,
            "--check" => check = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mut report = String::new();
    let mut drift = Vec::new();
    for ex in examples::all() {
        let path = Path::new(&out).join(ex.path);
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

fn parse<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e| format!("{flag} {v:?}: {e}"))
}
