//! The whole product on loopback: the mock kube-apiserver, the four fake components on 127.0.0.1,
//! and a real Envoy running the built filter with listeners on the "node IP" 127.0.0.2, all wired
//! through the same renderer the shipped configurations come from. Tests and the demo start one.
//!
//! The listeners are plain HTTP by default (what most tests speak, with `raw_http`); set
//! [`StackOptions::listener_tls`] for TLS listeners with a serving certificate from a [`TestCa`] in
//! a kubelet-style directory (see [`LocalStack::rotate_serving_cert`]) and, optionally, client
//! certificates verified against a second CA.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context};
use metrics_gate_envoy::{
    render, sds_client_ca, sds_resource, sds_serving_certificate, Apiserver, ClientCertificates,
    Component, ListenerTls, OwnListener, Preset, TlsFiles, UpstreamCredentials, CLIENT_CA_FILE,
    SDS_FILE,
    SERVING_CERT_FILE,
};
use serde_json::{json, Value};

use crate::apiserver::{Fault, MockApiserver};
use crate::components::{delegated, ComponentKind, ComponentOptions, FakeComponent};
use crate::envoy_process::{EnvoyOptions, EnvoyProcess};
use crate::raw_http::{self, Response};
use crate::tls::{ClientCert, ServerCert, TestCa};
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
        other => panic!("the test host has no fake {}", other.name()),
    }
}

/// How to start a [`LocalStack`].
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub presets: Vec<Preset>,
    /// The filter's configuration on every listener; `apiserver.timeout_ms` etc. may be set here.
    pub plugin_config: Value,
    /// Replaces `plugin_config` on the listed components' listeners.
    pub listener_plugin_config: Vec<(Preset, Value)>,
    /// Verify these https components' certificates (default: not verified, as shipped).
    pub upstream_verify: Vec<(Preset, UpstreamCheck)>,
    /// RBAC files the mock apiserver evaluates besides the shipped ones.
    pub extra_rbac_files: Vec<PathBuf>,
    /// `--authorization-always-allow-paths` of the fake kube-scheduler / kube-controller-manager
    /// (default, as theirs: `/healthz`, `/readyz`, `/livez`).
    pub component_always_allow_paths: Vec<(Preset, Vec<&'static str>)>,
    /// Use the components' real ports (10249, 10257, 10259, 2381) on both addresses, as on a node.
    /// Otherwise every port is ephemeral, so tests run side by side.
    pub node_ports: bool,
    pub wasm: WasmBuild,
    /// How Envoy gets the code, when not the local file of `wasm` (e.g. a URL pinned by sha256).
    pub wasm_code: Option<metrics_gate_envoy::WasmCode>,
    pub envoy: EnvoyOptions,
    /// The listeners' TLS. Default: [`ListenerTls::Plaintext`], which the plain-HTTP tests speak.
    /// With `Tls`, the serving certificate (for [`SERVER_NAME`] and the node IP) comes from
    /// [`LocalStack::serving_ca`], and client certificates are verified against
    /// [`LocalStack::client_ca`].
    pub listener_tls: ListenerTls,
    /// Overrides the presets' upstream credentials (kube-controller-manager and kube-scheduler:
    /// `Proxy`; the others `None`) for the listed components.
    pub upstream_credentials: Vec<(Preset, UpstreamCredentials)>,
    /// Render without the access log (on by default, as shipped).
    pub no_access_log: bool,
    /// Verify ServiceAccount tokens in Envoy (`jwt_authn` in front of the filter).
    pub local_token_verification: Option<metrics_gate_envoy::LocalTokenVerification>,
    /// A fault the mock apiserver has from the start, before Envoy asks it anything.
    pub apiserver_fault: Option<Fault>,
}

/// kube-scheduler's and kube-controller-manager's default `--authorization-always-allow-paths`.
pub const DEFAULT_ALWAYS_ALLOW_PATHS: [&str; 3] = ["/healthz", "/readyz", "/livez"];

/// How a test stack verifies a component's certificate.
#[derive(Clone, Debug)]
pub enum UpstreamCheck {
    /// Against the CA that signed the component's certificate, for this name (DNS or IP SAN).
    ComponentCa { server_name: String },
    /// Against some other CA.
    OtherCa { server_name: String },
}

/// The DNS name on the test stack's serving certificates (as the DaemonSet's Service would be).
pub const SERVER_NAME: &str = "metrics-gate.metrics-gate.svc";

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            presets: Preset::ALL.to_vec(),
            plugin_config: json!({}),
            listener_plugin_config: Vec::new(),
            component_always_allow_paths: Vec::new(),
            extra_rbac_files: Vec::new(),
            upstream_verify: Vec::new(),
            node_ports: false,
            wasm: WasmBuild::Release,
            wasm_code: None,
            envoy: EnvoyOptions::default(),
            listener_tls: ListenerTls::Plaintext,
            upstream_credentials: Vec::new(),
            no_access_log: false,
            local_token_verification: None,
            apiserver_fault: None,
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
    /// The CA the listeners' serving certificates chain to.
    pub serving_ca: TestCa,
    /// The CA client certificates must chain to (used when client certificates are on).
    pub client_ca: TestCa,
    /// The listeners' certificate directory (tls.crt, tls.key), kubelet-style.
    pub tls_dir: TokenDir,
    listener_tls: ListenerTls,
    listeners: Vec<(Preset, SocketAddr)>,
    own_addr: SocketAddr,
    _files: tempfile::TempDir,
}

impl LocalStack {
    /// All four components, default plugin configuration, ephemeral ports.
    pub fn start() -> anyhow::Result<LocalStack> {
        LocalStack::start_with(StackOptions::default())
    }

    pub fn start_with(opts: StackOptions) -> anyhow::Result<LocalStack> {
        let wasm = opts.wasm.path()?;
        let mut rbac_files = crate::rbac::default_rbac_files();
        rbac_files.extend(opts.extra_rbac_files.iter().cloned());
        let apiserver = MockApiserver::start_with(crate::apiserver::MockApiserverOptions {
            rbac_files,
            ..Default::default()
        })
        .context("starting the mock kube-apiserver")?;
        if let Some(fault) = &opts.apiserver_fault {
            apiserver.set_fault(fault.clone());
        }
        let files = tempfile::tempdir()?;
        let ca_file = crate::tls::write_pem(files.path(), "apiserver-ca.crt", apiserver.ca_pem())?;

        let credentials = TokenDir::temp()?;
        let token_path = credentials.file("token");
        let sds = sds_resource(&token_path.to_string_lossy());
        let proxy_token = apiserver
            .issuer()
            .mint(&ServiceAccount::metrics_gate(), TokenOptions::default());
        // TLS: the serving certificate in a kubelet-style Secret directory, the client CA in another;
        // their SDS resources beside the token's, as the DaemonSet's projected volume has them.
        let serving_ca = TestCa::new("metrics-gate-test-serving-ca");
        let client_ca = TestCa::new("metrics-gate-test-client-ca");
        let tls_dir = TokenDir::temp()?;
        let serving = serving_ca.issue_server(&[SERVER_NAME], &[NODE_IP]);
        tls_dir.write(&[
            ("tls.crt", serving.cert_pem.as_bytes()),
            ("tls.key", serving.key_pem.as_bytes()),
        ])?;
        let client_ca_dir = files.path().join("client-ca");
        let client_ca_file = client_ca.write_cert(&client_ca_dir, "ca.crt")?;
        let serving_sds = sds_serving_certificate(&tls_dir.path().to_string_lossy());
        let client_ca_sds = sds_client_ca(&client_ca_file.to_string_lossy());
        credentials.write(&[
            ("token", proxy_token.as_bytes()),
            (SDS_FILE, sds.as_bytes()),
            (SERVING_CERT_FILE, serving_sds.as_bytes()),
            (CLIENT_CA_FILE, client_ca_sds.as_bytes()),
        ])?;

        // Secure components check every credential themselves, as the real ones do: a TokenReview
        // and a SubjectAccessReview (verb = the lower-case method) against the mock apiserver and
        // the shipped RBAC, remembered 10 s; 401 while the apiserver is unreachable.
        let mut components = Vec::new();
        let mut rendered = Vec::new();
        for preset in &opts.presets {
            let kind = kind_of(*preset);
            let port = if opts.node_ports { preset.port() } else { 0 };
            let options = if kind.is_secure() {
                let always_allow = opts
                    .component_always_allow_paths
                    .iter()
                    .find(|(p, _)| p == preset)
                    .map_or(DEFAULT_ALWAYS_ALLOW_PATHS.to_vec(), |(_, paths)| paths.clone());
                let identity = format!("system:{}", preset.name());
                ComponentOptions::with_verifier(delegated(
                    apiserver.delegated_auth(&identity, &always_allow),
                ))
            } else {
                ComponentOptions::default()
            };
            let fake =
                FakeComponent::start(kind, SocketAddr::from((Ipv4Addr::LOCALHOST, port)), options)
                    .with_context(|| format!("starting the fake {}", preset.name()))?;
            let plugin_config = opts
                .listener_plugin_config
                .iter()
                .find(|(p, _)| p == preset)
                .map_or_else(|| opts.plugin_config.clone(), |(_, c)| c.clone());
            let mut component = Component::preset(*preset, plugin_config);
            component.upstream = fake.addr();
            component.listen_port = port;
            component.listener_tls = opts.listener_tls.clone();
            if let Some((_, creds)) = opts.upstream_credentials.iter().find(|(p, _)| p == preset) {
                component.upstream_credentials = creds.clone();
            }
            if let Some((_, check)) = opts.upstream_verify.iter().find(|(p, _)| p == preset) {
                let (ca_pem, server_name) = match check {
                    UpstreamCheck::ComponentCa { server_name } => {
                        (fake.ca_pem().unwrap_or_default().to_owned(), server_name)
                    }
                    UpstreamCheck::OtherCa { server_name } => {
                        (TestCa::new("not-the-components-ca").cert_pem().to_owned(), server_name)
                    }
                };
                let ca_file = crate::tls::write_pem(
                    files.path(),
                    &format!("{}-upstream-ca.crt", preset.name()),
                    &ca_pem,
                )?;
                component.upstream_tls = metrics_gate_envoy::UpstreamTls::TlsVerify {
                    ca_file: ca_file.to_string_lossy().into_owned(),
                    sni: server_name.clone(),
                };
            }
            rendered.push(component);
            components.push((*preset, fake));
        }

        let stack = metrics_gate_envoy::Stack {
            access_log: !opts.no_access_log,
            local_token_verification: opts.local_token_verification.clone(),
            node_ip: NODE_IP.into(),
            admin_socket: files.path().join("admin.sock").to_string_lossy().into_owned(),
            own_listener: Some(OwnListener {
                port: 0,
                tls: opts.listener_tls.clone(),
            }),
            wasm: opts.wasm_code.clone().unwrap_or_else(|| metrics_gate_envoy::WasmCode::File(wasm.to_string_lossy().into_owned())),
            apiserver: Apiserver {
                address: "127.0.0.1".into(),
                port: apiserver.port(),
                sni: "kubernetes.default.svc".into(),
                ca_file: ca_file.to_string_lossy().into_owned(),
                timeout_ms: 5_000,
            },
            credentials_dir: credentials.path().to_string_lossy().into_owned(),
            tls: TlsFiles {
                cert_dir: tls_dir.path().to_string_lossy().into_owned(),
                client_ca_file: Some(client_ca_file.to_string_lossy().into_owned()),
            },
            components: rendered,
        };
        let config = render(&stack);
        let envoy = EnvoyProcess::start(&config, opts.envoy.clone())?;
        let listeners = opts
            .presets
            .iter()
            .map(|p| Ok((*p, envoy.listener_addr(p.name())?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let own_addr = envoy.listener_addr(metrics_gate_envoy::own_endpoints::OWN_LISTENER)?;
        Ok(LocalStack {
            apiserver,
            components,
            envoy,
            credentials,
            config,
            serving_ca,
            client_ca,
            tls_dir,
            listener_tls: opts.listener_tls,
            listeners,
            own_addr,
            _files: files,
        })
    }

    /// Where the gate's own listener (`/ready`, the proxy's own `/metrics`) bound.
    pub fn own_addr(&self) -> SocketAddr {
        self.own_addr
    }

    /// The proxy's own counters, scraped like a component (through the gate) with `token`:
    /// (status, body), over TLS when the listeners speak it.
    pub fn own_metrics(&self, token: &str) -> (u16, String) {
        let auth = format!("Bearer {token}");
        let headers = [("authorization", auth.as_str())];
        if self.uses_tls() {
            let r = https_request(self.own_addr, SERVER_NAME, self.serving_ca.cert_pem(), None, "GET", "/metrics", &headers)
                .unwrap_or_else(|e| panic!("the gate's own /metrics: {e:#}"));
            (r.status, String::from_utf8_lossy(&r.body).into_owned())
        } else {
            let r = raw_http::request(self.own_addr, "GET", "/metrics", &headers)
                .unwrap_or_else(|e| panic!("the gate's own /metrics: {e:#}"));
            (r.status, r.text())
        }
    }

    /// Whether the listeners speak TLS.
    pub fn uses_tls(&self) -> bool {
        matches!(self.listener_tls, ListenerTls::Tls { .. })
    }

    /// Whether the listeners verify client certificates.
    pub fn client_certificates(&self) -> ClientCertificates {
        match self.listener_tls {
            ListenerTls::Tls {
                client_certificates,
            } => client_certificates,
            ListenerTls::Plaintext => ClientCertificates::Off,
        }
    }

    /// Issues a new serving certificate (new key, new serial) and swaps it into the certificate
    /// directory the way kubelet updates a mounted Secret (atomic `..data` symlink swap). Returns
    /// it, so a test can check it is what Envoy serves next.
    pub fn rotate_serving_cert(&self) -> anyhow::Result<ServerCert> {
        let cert = self.serving_ca.issue_server(&[SERVER_NAME], &[NODE_IP]);
        self.tls_dir.write(&[
            ("tls.crt", cert.cert_pem.as_bytes()),
            ("tls.key", cert.key_pem.as_bytes()),
        ])?;
        Ok(cert)
    }

    /// A client certificate from [`client_ca`](Self::client_ca): CN `user`, O `groups`.
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> ClientCert {
        self.client_ca.issue_client(user, groups)
    }

    /// A request over TLS to `preset`'s listener, verified against [`serving_ca`](Self::serving_ca)
    /// with `server_name`, optionally presenting `client`.
    pub fn https_request(
        &self,
        preset: Preset,
        server_name: &str,
        client: Option<&ClientCert>,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<TlsResponse> {
        https_request(
            self.addr(preset),
            server_name,
            self.serving_ca.cert_pem(),
            client,
            method,
            target,
            headers,
        )
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

    /// Replaces the proxy's own token the way kubelet does: an atomic `..data` swap of the whole
    /// volume, so the other SDS files (serving certificate, client CA) are written again as they
    /// were, not dropped.
    pub fn rotate_proxy_token(&self, token: &str) -> anyhow::Result<()> {
        let sds = sds_resource(&self.credentials.file("token").to_string_lossy());
        let serving = self.credentials.read(SERVING_CERT_FILE)?;
        let client_ca = self.credentials.read(CLIENT_CA_FILE)?;
        self.credentials.write(&[
            ("token", token.as_bytes()),
            (SDS_FILE, sds.as_bytes()),
            (SERVING_CERT_FILE, &serving),
            (CLIENT_CA_FILE, &client_ca),
        ])?;
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

/// An answer over TLS, and the certificate the server presented.
#[derive(Debug)]
pub struct TlsResponse {
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// DER of the leaf certificate the server presented.
    pub peer_certificate: Vec<u8>,
}

impl TlsResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request over TLS (blocking rustls, `Connection: close`), the server verified
/// against `ca_pem` under `server_name`; `client` is presented when the server asks for it.
pub fn https_request(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    client: Option<&ClientCert>,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<TlsResponse> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    use std::io::{Read, Write};

    crate::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in crate::tls::parse_certs(ca_pem)? {
        roots.add(c)?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match client {
        Some(c) => builder.with_client_auth_cert(
            crate::tls::parse_certs(&c.cert_pem)?,
            PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())?,
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(config),
        crate::tls::server_name(server_name)?,
    )?;
    let tcp = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // Envoy may close without close_notify after `Connection: close`.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    let peer_certificate = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP head in {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(TlsResponse {
        status,
        headers,
        body,
        peer_certificate,
    })
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        rest = &rest[eol + 2..];
        if size == 0 || rest.len() < size {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[(size + 2).min(rest.len())..];
    }
    out
}

/// DER of the first certificate in `pem`.
pub fn cert_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    Ok(crate::tls::parse_certs(pem)?[0].as_ref().to_vec())
}
