//! `metrics-gate-render`: prints the Envoy bootstrap (JSON, which Envoy and YAML readers both load)
//! for one node, or with `--sds TOKEN_FILE` the SDS resource to put in the credentials directory.
//! Arguments are parsed by hand: this runs in an init step and should not pull in a CLI crate.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use metrics_gate_envoy::{render, sds_resource, Apiserver, Component, Preset, Stack};

const USAGE: &str = "\
usage: metrics-gate-render --node-ip IP [options]
       metrics-gate-render --sds TOKEN_FILE

Prints the Envoy bootstrap of one node as JSON on stdout.

  --node-ip IP                  address the component listeners bind to (required)
  --admin ADDR:PORT             Envoy admin address            [127.0.0.1:9901]
  --wasm PATH                   metrics_gate.wasm              [/etc/metrics-gate/metrics_gate.wasm]
  --credentials-dir DIR         directory holding sds.yaml     [/etc/metrics-gate/credentials]
  --apiserver HOST:PORT         kube-apiserver                 [kubernetes.default.svc:443]
  --apiserver-sni NAME          TLS server name                [kubernetes.default.svc]
  --apiserver-ca FILE           cluster CA                     [/var/run/secrets/kubernetes.io/serviceaccount/ca.crt]
  --apiserver-timeout-ms MS     callout route timeout          [5000]
  --component NAME[:PORT]       a preset (kube-proxy, kube-controller-manager, kube-scheduler, etcd),
                                optionally listening on PORT; repeatable   [all four, standard ports]
  --plugin-config NAME=FILE     the filter's JSON configuration for component NAME   [{}]
  --sds TOKEN_FILE              print the SDS resource (sds.yaml) for the token file instead
";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("metrics-gate-render: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<String, String> {
    let mut node_ip: Option<IpAddr> = None;
    let mut admin: SocketAddr = "127.0.0.1:9901".parse().map_err(|e| format!("{e}"))?;
    let mut wasm_path = "/etc/metrics-gate/metrics_gate.wasm".to_string();
    let mut credentials_dir = "/etc/metrics-gate/credentials".to_string();
    let mut apiserver = Apiserver::in_cluster();
    let mut components: Vec<(Preset, Option<u16>)> = Vec::new();
    let mut plugin_files: Vec<(String, String)> = Vec::new();

    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err("help requested".into());
        }
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--sds" => return Ok(sds_resource(&value()?)),
            "--node-ip" => node_ip = Some(parse(&flag, &value()?)?),
            "--admin" => admin = parse(&flag, &value()?)?,
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
            "--component" => {
                let v = value()?;
                let (name, port) = match v.split_once(':') {
                    Some((n, p)) => (n.to_string(), Some(parse(&flag, p)?)),
                    None => (v.clone(), None),
                };
                let preset =
                    Preset::from_name(&name).ok_or(format!("unknown component {name:?}"))?;
                components.push((preset, port));
            }
            "--plugin-config" => {
                let v = value()?;
                let (name, file) = v
                    .split_once('=')
                    .ok_or(format!("--plugin-config {v}: want NAME=FILE"))?;
                plugin_files.push((name.to_string(), file.to_string()));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }

    let node_ip = node_ip.ok_or("--node-ip is required")?;
    if components.is_empty() {
        components = Preset::ALL.iter().map(|p| (*p, None)).collect();
    }
    for (name, _) in &plugin_files {
        if !components.iter().any(|(p, _)| p.name() == name) {
            return Err(format!(
                "--plugin-config for {name:?}, which is not rendered"
            ));
        }
    }
    let mut rendered = Vec::new();
    for (preset, port) in components {
        let config = match plugin_files.iter().find(|(n, _)| n == preset.name()) {
            Some((_, file)) => {
                let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
                serde_json::from_str(&text).map_err(|e| format!("{file}: not JSON: {e}"))?
            }
            None => serde_json::json!({}),
        };
        let mut c = Component::preset(preset, config);
        if let Some(port) = port {
            c.listen_port = port;
        }
        rendered.push(c);
    }

    let stack = Stack {
        node_ip,
        admin,
        wasm_path,
        apiserver,
        credentials_dir,
        components: rendered,
    };
    stack.check().map_err(|e| e.to_string())?;
    serde_json::to_string_pretty(&render(&stack)).map_err(|e| e.to_string())
}

fn parse<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e| format!("{flag} {v:?}: {e}"))
}
