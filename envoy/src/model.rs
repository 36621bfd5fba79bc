//! The typed input of the renderer: what a node runs, said in the product's terms rather than in
//! Envoy's. Kept apart from the Envoy API types (`render.rs`), so callers never see Envoy's field
//! names. `file.rs` reads the same thing from a components file.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Everything one Envoy on one node serves.
#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    /// Listeners bind here: the node's IP (or the `${NODE_IP}` placeholder an init step fills in:
    /// Envoy does no substitution itself), 127.0.0.2 in tests (beside the components' 127.0.0.1).
    pub node_ip: NodeAddress,
    /// Envoy's admin interface: a Unix socket (mode 0600), never a TCP port — on a node's host
    /// network any process could otherwise stop the gate (`/quitquitquit`), log callers' tokens
    /// (`/logging?level=trace`) or read its configuration.
    pub admin_socket: String,
    /// The gate's own listener: a health check for the kubelet and the proxy's own metrics for
    /// Prometheus, authorized like every scrape (see `own_endpoints`). `None`: not served.
    pub own_listener: Option<OwnListener>,
    /// Where Envoy gets `metrics_gate.wasm`: a local file, or a URL pinned by its sha256.
    pub wasm: WasmCode,
    /// Where the filter's TokenReview/SubjectAccessReview callouts finally go.
    pub apiserver: Apiserver,
    /// Directory holding the file-based SDS resources: `sds.yaml` (the proxy's token, see
    /// [`crate::sds_resource`]) and, when a listener uses TLS, `serving-certificate.yaml`
    /// ([`crate::sds_serving_certificate`]) and `client-ca.yaml` ([`crate::sds_client_ca`]). Envoy
    /// watches the directory, so a kubelet-style `..data` symlink swap (projected volume) reloads
    /// them live.
    pub credentials_dir: String,
    /// The serving certificate and client CA every TLS listener of this Envoy uses.
    pub tls: TlsFiles,
    pub components: Vec<Component>,
    /// One JSON line per request on Envoy's stdout (see [`crate::access_log`]).
    pub access_log: bool,
    /// Verify ServiceAccount tokens in Envoy against the issuer's published keys, sparing their
    /// TokenReviews (opt-in; see [`crate::local_verification`]).
    pub local_token_verification: Option<LocalTokenVerification>,
}

/// Which ServiceAccount tokens Envoy may verify itself (see [`crate::local_verification`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalTokenVerification {
    /// The cluster's service-account issuer (kube-apiserver's `--service-account-issuer`): a
    /// token's `iss` must be exactly this.
    pub issuer: String,
    /// A token must name one of these (kube-apiserver's `--api-audiences`, by default the issuer).
    pub audiences: Vec<String>,
    /// A token valid for longer than this from now is not verified locally but reviewed: the bound
    /// on how long the token of a deleted pod or ServiceAccount goes on working here.
    pub max_lifetime_seconds: u32,
    /// How long fetched keys are used before they are fetched again (a new signing key is
    /// verified locally once they are; its tokens are reviewed until then).
    pub jwks_cache_seconds: u32,
}

impl LocalTokenVerification {
    /// An hour at most (what the kubelet gives a projected ServiceAccount token by default), keys
    /// fetched again every five minutes.
    pub fn for_issuer(issuer: &str) -> LocalTokenVerification {
        LocalTokenVerification {
            issuer: issuer.into(),
            audiences: vec![issuer.into()],
            max_lifetime_seconds: 3_600,
            jwks_cache_seconds: 300,
        }
    }
}

/// Where Envoy gets the filter's code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WasmCode {
    /// A local file (a mounted ConfigMap in the DaemonSet). Envoy reads it at start and refuses to
    /// start without it.
    File(String),
    /// Fetched by Envoy over HTTP(S) when it starts, and loaded only if its sha256 is the pinned
    /// one; see [`RemoteWasm`].
    Remote(RemoteWasm),
}

impl WasmCode {
    pub fn file(path: impl Into<String>) -> WasmCode {
        WasmCode::File(path.into())
    }
}

/// `metrics_gate.wasm` served by an HTTP(S) server, pinned by digest: Envoy compares the sha256 of
/// what it fetched with [`RemoteWasm::sha256`] and loads nothing else. On a mismatch, or when the
/// server cannot be reached after a few retries, the plugin stays unloaded and every gated listener
/// answers 503 (the filter's failure policy is fail-closed): nothing passes unchecked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteWasm {
    /// `http://` or `https://` URL of the .wasm. Plain HTTP is acceptable: the digest, not the
    /// transport, decides what is loaded.
    pub url: String,
    /// Hex sha256 of the .wasm (64 lowercase digits), e.g. `sha256sum metrics_gate.wasm`.
    pub sha256: String,
    /// For an `https://` URL: the CA bundle the server's certificate must chain to (its name must
    /// match the URL's host). Unused for `http://`.
    pub ca_file: String,
}

/// The CA bundle of Debian/Ubuntu-based images, the Envoy image among them.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The gate's own listener, on `node_ip` beside the component listeners.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnListener {
    /// [`OWN_PORT`] on a node; 0 in tests (the kernel picks).
    pub port: u16,
    pub tls: ListenerTls,
}

/// The port of the gate's own listener in the shipped configurations.
pub const OWN_PORT: u16 = 9902;

/// Where the component listeners bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeAddress {
    Ip(IpAddr),
    /// A literal text such as `${NODE_IP}` written into the listener addresses, for an init step to
    /// replace (`sed`) before Envoy starts. Envoy refuses to start with it left in.
    Placeholder(String),
}

impl NodeAddress {
    /// The placeholder the shipped DaemonSet and compose file fill in.
    pub fn node_ip_placeholder() -> NodeAddress {
        NodeAddress::Placeholder("${NODE_IP}".into())
    }
}

impl From<IpAddr> for NodeAddress {
    fn from(ip: IpAddr) -> Self {
        NodeAddress::Ip(ip)
    }
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeAddress::Ip(ip) => write!(f, "{ip}"),
            NodeAddress::Placeholder(p) => f.write_str(p),
        }
    }
}

/// Files of the listeners' TLS, shared by every component listener that uses TLS.
///
/// Both are read through file-based SDS, with the directory watched: a certificate renewed in the
/// mounted Secret (kubelet's atomic `..data` swap; cert-manager renewals) is served to new
/// connections without a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Directory holding `tls.crt` (chain) and `tls.key`: a mounted `kubernetes.io/tls` Secret.
    pub cert_dir: String,
    /// PEM bundle of the CA(s) that client certificates must chain to; needed only by listeners with
    /// [`ClientCertificates::Optional`] or [`ClientCertificates::Required`]. Its directory is watched.
    pub client_ca_file: Option<String>,
}

impl Default for TlsFiles {
    /// The DaemonSet's mounts: Secret `metrics-gate-tls` at /etc/metrics-gate/tls, no client CA.
    fn default() -> Self {
        TlsFiles {
            cert_dir: "/etc/metrics-gate/tls".into(),
            client_ca_file: None,
        }
    }
}

/// How a component's listener talks to its callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenerTls {
    /// Plain HTTP. Only by explicit choice: bearer tokens then cross the network in clear text.
    Plaintext,
    /// TLS with [`TlsFiles::cert_dir`]'s certificate (the default).
    Tls {
        client_certificates: ClientCertificates,
    },
}

impl Default for ListenerTls {
    fn default() -> Self {
        ListenerTls::Tls {
            client_certificates: ClientCertificates::Off,
        }
    }
}

/// Client certificates on a TLS listener. With `Optional` or `Required` the filter is told
/// (`client_certificates: true` in its configuration) that a verified certificate (CN user, O
/// groups) is an identity, as kube-rbac-proxy's `--client-ca-file` does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientCertificates {
    /// None asked for; callers authenticate with bearer tokens only.
    #[default]
    Off,
    /// Asked for, not required: a certificate that is presented must chain to the client CA (else
    /// the handshake fails); callers without one use a bearer token.
    Optional,
    /// Every connection must present a certificate that chains to the client CA; the handshake
    /// fails otherwise. A bearer token may still be sent over it.
    Required,
}

/// The kube-apiserver as seen from the node.
#[derive(Clone, Debug, PartialEq)]
pub struct Apiserver {
    /// Host name (resolved by Envoy, STRICT_DNS) or IP address (STATIC).
    pub address: String,
    pub port: u16,
    /// TLS server name sent to the apiserver.
    pub sni: String,
    /// The cluster CA the apiserver's serving certificate must chain to.
    pub ca_file: String,
    /// Route timeout of one callout through Envoy.
    pub timeout_ms: u32,
}

impl Apiserver {
    /// The apiserver as any pod reaches it: `kubernetes.default.svc:443`, verified with the CA that
    /// the ServiceAccount volume mounts.
    pub fn in_cluster() -> Apiserver {
        Apiserver {
            address: "kubernetes.default.svc".into(),
            port: 443,
            sni: "kubernetes.default.svc".into(),
            ca_file: "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into(),
            timeout_ms: 5_000,
        }
    }
}

/// One loopback component behind its own listener.
#[derive(Clone, Debug, PartialEq)]
pub struct Component {
    /// e.g. "kube-scheduler": the name of its listener, its cluster and its stats prefix.
    pub name: String,
    /// Port of the listener on `node_ip`; the presets reuse the component's own port, which is free
    /// on the node IP because the component binds only 127.0.0.1.
    pub listen_port: u16,
    /// Where the component listens, e.g. 127.0.0.1:10259.
    pub upstream: SocketAddr,
    pub upstream_tls: UpstreamTls,
    pub upstream_credentials: UpstreamCredentials,
    /// The filter's own configuration, passed (as JSON text) to the wasm plugin. The renderer adds
    /// `client_certificates` and `forward_caller_credentials` where the listener's TLS and the
    /// upstream credentials call for them.
    pub plugin_config: serde_json::Value,
    /// TLS towards callers; [`ListenerTls::default`] is TLS without client certificates.
    pub listener_tls: ListenerTls,
}

/// How Envoy speaks to the component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Plain HTTP (kube-proxy, etcd's metrics URL).
    Plain,
    /// TLS without verifying the component's certificate: kube-controller-manager and kube-scheduler
    /// serve a self-signed certificate on loopback; kube-rbac-proxy and the seed's HAProxy do the same.
    TlsNoVerify,
    /// TLS verified against `ca_file`; the certificate must also carry `sni` as a DNS SAN.
    TlsVerify { ca_file: String, sni: String },
}

/// Which credentials Envoy presents to the component once the filter has admitted a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamCredentials {
    /// None: the component's metrics endpoint is open on loopback.
    None,
    /// The proxy's own ServiceAccount token (`Authorization: Bearer`), injected by Envoy's
    /// credential_injector after the filter: components with delegated authorization
    /// (kube-controller-manager, kube-scheduler) then check the proxy, as with kube-rbac-proxy.
    Proxy,
    /// Envoy forwards the caller's own `Authorization` unchanged, for components that check the
    /// caller themselves too. The renderer sets the filter's `forward_caller_credentials: true`
    /// (by default the filter strips it) and adds no credential of its own.
    Passthrough,
}

/// Components the product ships presets for: the four loopback control-plane components
/// ([`Preset::ALL`]) and host-network components whose metrics can be moved onto loopback
/// ([`Preset::HOST_NETWORK`]; configure them to bind 127.0.0.1 first, they listen on all interfaces
/// by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    KubeProxy,
    KubeControllerManager,
    KubeScheduler,
    Etcd,
    /// kube-vip's Prometheus endpoint (`--prometheusHTTPServer`, default :2112), plain HTTP.
    KubeVip,
    /// cilium-agent (`prometheus.port`, 9962), plain HTTP.
    CiliumAgent,
    /// cilium-operator (`operator.prometheus.port`, 9963), plain HTTP.
    CiliumOperator,
    /// Hubble's metrics server in the agent (`hubble.metrics.port`, 9965), plain HTTP.
    Hubble,
}

impl Preset {
    /// The loopback control-plane components (what the DaemonSet and the test stack serve).
    pub const ALL: [Preset; 4] = [
        Preset::KubeProxy,
        Preset::KubeControllerManager,
        Preset::KubeScheduler,
        Preset::Etcd,
    ];

    /// Host-network components outside the core scope.
    pub const HOST_NETWORK: [Preset; 4] = [
        Preset::KubeVip,
        Preset::CiliumAgent,
        Preset::CiliumOperator,
        Preset::Hubble,
    ];

    /// Every preset.
    pub fn every() -> impl Iterator<Item = Preset> {
        Preset::ALL.into_iter().chain(Preset::HOST_NETWORK)
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::KubeProxy => "kube-proxy",
            Preset::KubeControllerManager => "kube-controller-manager",
            Preset::KubeScheduler => "kube-scheduler",
            Preset::Etcd => "etcd",
            Preset::KubeVip => "kube-vip",
            Preset::CiliumAgent => "cilium-agent",
            Preset::CiliumOperator => "cilium-operator",
            Preset::Hubble => "hubble",
        }
    }

    /// The component's standard metrics port.
    pub fn port(self) -> u16 {
        match self {
            Preset::KubeProxy => 10249,
            Preset::KubeControllerManager => 10257,
            Preset::KubeScheduler => 10259,
            Preset::Etcd => 2381,
            Preset::KubeVip => 2112,
            Preset::CiliumAgent => 9962,
            Preset::CiliumOperator => 9963,
            Preset::Hubble => 9965,
        }
    }

    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::every().find(|p| p.name() == name)
    }

    /// Every preset name, for error messages.
    pub fn names() -> Vec<&'static str> {
        Preset::every().map(Preset::name).collect()
    }
}

impl Component {
    /// A component with its standard port and scheme: kube-controller-manager and kube-scheduler over
    /// unverified TLS with the proxy's token; the others over plain HTTP without credentials.
    /// The listener uses the same port on the node IP, with TLS (no client certificates).
    pub fn preset(preset: Preset, plugin_config: serde_json::Value) -> Component {
        let secure = matches!(
            preset,
            Preset::KubeControllerManager | Preset::KubeScheduler
        );
        Component {
            name: preset.name().into(),
            listen_port: preset.port(),
            upstream: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), preset.port()),
            upstream_tls: if secure {
                UpstreamTls::TlsNoVerify
            } else {
                UpstreamTls::Plain
            },
            upstream_credentials: if secure {
                UpstreamCredentials::Proxy
            } else {
                UpstreamCredentials::None
            },
            plugin_config,
            listener_tls: ListenerTls::default(),
        }
    }

    /// The same component with a plain-HTTP listener.
    pub fn plaintext(mut self) -> Component {
        self.listener_tls = ListenerTls::Plaintext;
        self
    }
}

/// A stack Envoy would refuse, or that would silently misroute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidStack(pub String);

impl fmt::Display for InvalidStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid metrics-gate stack: {}", self.0)
    }
}

impl std::error::Error for InvalidStack {}

impl Stack {
    /// Catches what the renderer cannot express: names that collide with each other or with the
    /// renderer's own listener/clusters (Envoy would refuse them, or route callouts to a component),
    /// and two listeners on one port. `render` does not call it, so tests can still render broken
    /// stacks on purpose.
    pub fn check(&self) -> Result<(), InvalidStack> {
        let reserved = [
            crate::CREDENTIALS_LISTENER,
            crate::CALLOUT_CLUSTER,
            crate::APISERVER_CLUSTER,
            crate::remote_code::WASM_CODE_CLUSTER,
        ];
        for (i, c) in self.components.iter().enumerate() {
            let valid_name = !c.name.is_empty()
                && c.name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
            if !valid_name {
                return Err(InvalidStack(format!(
                    "component name {:?}: use letters, digits, '-' and '_'",
                    c.name
                )));
            }
            if reserved.contains(&c.name.as_str()) {
                return Err(InvalidStack(format!(
                    "component name {:?} is reserved",
                    c.name
                )));
            }
            if let ListenerTls::Tls {
                client_certificates: ClientCertificates::Optional | ClientCertificates::Required,
            } = c.listener_tls
            {
                if self.tls.client_ca_file.is_none() {
                    return Err(InvalidStack(format!(
                        "{}: client certificates need a client CA file (tls.client_ca_file)",
                        c.name
                    )));
                }
            }
            if !c.plugin_config.is_object() {
                return Err(InvalidStack(format!(
                    "{}: the plugin configuration must be a JSON object",
                    c.name
                )));
            }
            for other in &self.components[..i] {
                if other.name == c.name {
                    return Err(InvalidStack(format!("two components named {:?}", c.name)));
                }
                // Port 0 (tests) lets the kernel pick distinct ports.
                if other.listen_port == c.listen_port && c.listen_port != 0 {
                    return Err(InvalidStack(format!(
                        "{} and {} both listen on port {}",
                        other.name, c.name, c.listen_port
                    )));
                }
            }
        }
        if let Some(own) = &self.own_listener {
            if own.port != 0 {
                if let Some(c) = self.components.iter().find(|c| c.listen_port == own.port) {
                    return Err(InvalidStack(format!(
                        "the gate's own listener and {} both listen on port {}",
                        c.name, own.port
                    )));
                }
            }
        }
        if let WasmCode::Remote(remote) = &self.wasm {
            crate::remote_code::check(remote)?;
        }
        if self.admin_socket.is_empty() {
            return Err(InvalidStack(
                "the admin socket path is empty (admin is only served on a Unix socket)".into(),
            ));
        }
        Ok(())
    }
}
