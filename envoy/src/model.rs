//! The typed input of the renderer: what a node runs, said in the product's terms rather than in
//! Envoy's. Kept apart from the JSON building (`render.rs`) so that swapping serde_json for the
//! prost-generated Envoy API types later does not touch callers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Everything one Envoy on one node serves.
#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    /// Listeners bind here: `$NODE_IP` on a node, 127.0.0.2 in tests (beside the components' 127.0.0.1).
    pub node_ip: IpAddr,
    /// Envoy's admin interface. Keep it on loopback: it can change Envoy's state.
    pub admin: SocketAddr,
    /// Local file of `metrics_gate.wasm`. Envoy reads it at start and refuses to start without it.
    pub wasm_path: String,
    /// Where the filter's TokenReview/SubjectAccessReview callouts finally go.
    pub apiserver: Apiserver,
    /// Directory holding `sds.yaml` (see [`crate::sds_resource`]). Envoy watches the directory, so a
    /// kubelet-style `..data` symlink swap (projected volume) reloads the proxy's token live.
    pub credentials_dir: String,
    pub components: Vec<Component>,
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
    /// The filter's own configuration, passed verbatim (as JSON text) to the wasm plugin.
    pub plugin_config: serde_json::Value,
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
}

/// The four components the product ships presets for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    KubeProxy,
    KubeControllerManager,
    KubeScheduler,
    Etcd,
}

impl Preset {
    pub const ALL: [Preset; 4] = [
        Preset::KubeProxy,
        Preset::KubeControllerManager,
        Preset::KubeScheduler,
        Preset::Etcd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Preset::KubeProxy => "kube-proxy",
            Preset::KubeControllerManager => "kube-controller-manager",
            Preset::KubeScheduler => "kube-scheduler",
            Preset::Etcd => "etcd",
        }
    }

    /// The component's standard loopback port.
    pub fn port(self) -> u16 {
        match self {
            Preset::KubeProxy => 10249,
            Preset::KubeControllerManager => 10257,
            Preset::KubeScheduler => 10259,
            Preset::Etcd => 2381,
        }
    }

    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl Component {
    /// A component with its standard port and scheme: kube-controller-manager and kube-scheduler over
    /// unverified TLS with the proxy's token; kube-proxy and etcd over plain HTTP without credentials.
    /// The listener uses the same port on the node IP.
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
        }
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
        if self.admin.port() != 0
            && self.components.iter().any(|c| {
                c.listen_port == self.admin.port()
                    && (self.admin.ip() == self.node_ip || self.admin.ip().is_unspecified())
            })
        {
            return Err(InvalidStack(format!(
                "admin {} collides with a listener",
                self.admin
            )));
        }
        Ok(())
    }
}
