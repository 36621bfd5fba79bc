//! The whole product on loopback: the mock kube-apiserver, the four fake components on 127.0.0.1,
//! and a real Envoy running the built filter with listeners on the "node IP" 127.0.0.2, all wired
//! through the same renderer the shipped configurations come from. Tests and the demo start one.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context};
use metrics_gate_envoy::{render, sds_resource, Apiserver, Component, Preset, SDS_FILE};
use serde_json::{json, Value};

use crate::apiserver::MockApiserver;
use crate::components::{allow_users, ComponentKind, ComponentOptions, FakeComponent};
use crate::envoy_process::{EnvoyOptions, EnvoyProcess};
use crate::raw_http::{self, Response};
use crate::token_dir::TokenDir;
use crate::tokens::{ServiceAccount, TokenOptions};

/// Where Envoy listens, beside the components on 127.0.0.1, as a node's own IP would be.
pub const NODE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Which build of the filter to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WasmBuild {
    /// The release .wasm that ships.
    Release,
    /// The same filter built with the `fault-injection` feature (a header makes it trap).
    FaultInjection,
}

impl WasmBuild {
    pub fn path(self) -> anyhow::Result<PathBuf> {
        let (var, rel) = match self {
            WasmBuild::Release => (
                "METRICS_GATE_WASM",
                "../target/wasm32-wasip1/release/metrics_gate.wasm",
            ),
            WasmBuild::FaultInjection => (
                "METRICS_GATE_FAULT_WASM",
                "../target/fault-injection/wasm32-wasip1/release/metrics_gate.wasm",
            ),
        };
        let path = std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel));
        if !path.is_file() {
            bail!(
                "{} is missing: build the filter first with `just build` (or `./run build`)",
                path.display()
            );
        }
        Ok(path)
    }
}

pub fn kind_of(preset: Preset) -> ComponentKind {
    match preset {
        Preset::KubeProxy => ComponentKind::KubeProxy,
        Preset::KubeControllerManager => ComponentKind::KubeControllerManager,
        Preset::KubeScheduler => ComponentKind::KubeScheduler,
        Preset::Etcd => ComponentKind::Etcd,
    }
}

/// How to start a [`LocalStack`].
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub presets: Vec<Preset>,
    /// The filter's configuration on every listener; `apiserver.timeout_ms` etc. may be set here.
    pub plugin_config: Value,
    /// Use the components' real ports (10249, 10257, 10259, 2381) on both addresses, as on a node.
    /// Otherwise every port is ephemeral, so tests run side by side.
    pub node_ports: bool,
    pub wasm: WasmBuild,
    pub envoy: EnvoyOptions,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            presets: Preset::ALL.to_vec(),
            plugin_config: json!({}),
            node_ports: false,
            wasm: WasmBuild::Release,
            envoy: EnvoyOptions::default(),
        }
    }
}

pub struct LocalStack {
    pub apiserver: MockApiserver,
    pub components: Vec<(Preset, FakeComponent)>,
    pub envoy: EnvoyProcess,
    /// The proxy's own projected ServiceAccount token (and the SDS file naming it).
    pub credentials: TokenDir,
    /// The bootstrap Envoy runs.
    pub config: Value,
    listeners: Vec<(Preset, SocketAddr)>,
    _files: tempfile::TempDir,
}

impl LocalStack {
    /// All four components, default plugin configuration, ephemeral ports.
    pub fn start() -> anyhow::Result<LocalStack> {
        LocalStack::start_with(StackOptions::default())
    }

    pub fn start_with(opts: StackOptions) -> anyhow::Result<LocalStack> {
        let wasm = opts.wasm.path()?;
        let apiserver = MockApiserver::start().context("starting the mock kube-apiserver")?;
        let files = tempfile::tempdir()?;
        let ca_file = crate::tls::write_pem(files.path(), "apiserver-ca.crt", apiserver.ca_pem())?;

        let credentials = TokenDir::temp()?;
        let token_path = credentials.file("token");
        let sds = sds_resource(&token_path.to_string_lossy());
        let proxy_token = apiserver
            .issuer()
            .mint(&ServiceAccount::metrics_gate(), TokenOptions::default());
        credentials.write(&[
            ("token", proxy_token.as_bytes()),
            (SDS_FILE, sds.as_bytes()),
        ])?;

        // Secure components accept only the proxy's own account, as a real kube-scheduler with an
        // RBAC binding for it would; the caller's token never reaches them.
        let proxy_user = ServiceAccount::metrics_gate().username();
        let mut components = Vec::new();
        let mut rendered = Vec::new();
        for preset in &opts.presets {
            let kind = kind_of(*preset);
            let port = if opts.node_ports { preset.port() } else { 0 };
            let options = if kind.is_secure() {
                ComponentOptions::with_verifier(allow_users(apiserver.issuer(), &[&proxy_user]))
            } else {
                ComponentOptions::default()
            };
            let fake =
                FakeComponent::start(kind, SocketAddr::from((Ipv4Addr::LOCALHOST, port)), options)
                    .with_context(|| format!("starting the fake {}", preset.name()))?;
            let mut component = Component::preset(*preset, opts.plugin_config.clone());
            component.upstream = fake.addr();
            component.listen_port = port;
            rendered.push(component);
            components.push((*preset, fake));
        }

        let stack = metrics_gate_envoy::Stack {
            node_ip: NODE_IP,
            admin: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            wasm_path: wasm.to_string_lossy().into_owned(),
            apiserver: Apiserver {
                address: "127.0.0.1".into(),
                port: apiserver.port(),
                sni: "kubernetes.default.svc".into(),
                ca_file: ca_file.to_string_lossy().into_owned(),
                timeout_ms: 5_000,
            },
            credentials_dir: credentials.path().to_string_lossy().into_owned(),
            components: rendered,
        };
        let config = render(&stack);
        let envoy = EnvoyProcess::start(&config, opts.envoy.clone())?;
        let listeners = opts
            .presets
            .iter()
            .map(|p| Ok((*p, envoy.listener_addr(p.name())?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(LocalStack {
            apiserver,
            components,
            envoy,
            credentials,
            config,
            listeners,
            _files: files,
        })
    }

    /// Envoy's listener for `preset`.
    pub fn addr(&self, preset: Preset) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(p, _)| *p == preset)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("{} is not part of this stack", preset.name()))
    }

    pub fn component(&self, preset: Preset) -> &FakeComponent {
        self.components
            .iter()
            .find(|(p, _)| *p == preset)
            .map(|(_, c)| c)
            .unwrap_or_else(|| panic!("{} is not part of this stack", preset.name()))
    }

    /// Upstream requests of every component together.
    pub fn upstream_requests(&self) -> usize {
        self.components.iter().map(|(_, c)| c.count()).sum()
    }

    pub fn request(
        &self,
        preset: Preset,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        raw_http::request(self.addr(preset), method, target, headers)
            .unwrap_or_else(|e| panic!("{method} {target} to {}: {e:#}", preset.name()))
    }

    /// `GET target` with `Authorization: Bearer <token>`.
    pub fn scrape(&self, preset: Preset, target: &str, token: &str) -> Response {
        let auth = format!("Bearer {token}");
        self.request(preset, "GET", target, &[("authorization", &auth)])
    }

    /// A token of prometheus-server, which the example binding lets read /metrics.
    pub fn prometheus_token(&self) -> String {
        self.apiserver.issuer().mint(
            &ServiceAccount::prometheus_server(),
            TokenOptions::default(),
        )
    }

    /// A valid token of a ServiceAccount without any binding.
    pub fn nobody_token(&self) -> String {
        self.apiserver
            .issuer()
            .mint(&ServiceAccount::nobody(), TokenOptions::default())
    }

    pub fn token(&self, sa: &ServiceAccount, options: TokenOptions) -> String {
        self.apiserver.issuer().mint(sa, options)
    }

    /// Replaces the proxy's own token the way kubelet does (atomic `..data` swap).
    pub fn rotate_proxy_token(&self, token: &str) -> anyhow::Result<()> {
        let sds = sds_resource(&self.credentials.file("token").to_string_lossy());
        self.credentials
            .write(&[("token", token.as_bytes()), (SDS_FILE, sds.as_bytes())])?;
        Ok(())
    }

    /// A counter of Envoy's, by its full stats name (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.envoy.stat(name).ok().flatten().unwrap_or(0)
    }
}

/// A plugin `cache` setting that turns every cache off, for tests that need each scrape to reach
/// the apiserver.
pub fn no_cache() -> Value {
    json!({"token_review_ttl_seconds": 0, "allow_ttl_seconds": 0, "deny_ttl_seconds": 0})
}
