//! The gate's own endpoints.
//!
//! Envoy's admin interface is served on a Unix socket (mode 0600, in a directory only the gate's
//! pod mounts), never on TCP: the DaemonSet runs in the node's network namespace, where any process
//! or hostNetwork pod could otherwise POST `/quitquitquit` (stop the gate), set
//! `/logging?level=trace` (callers' tokens into the log), `/runtime_modify` or read `/config_dump`.
//!
//! What the outside does need gets one listener of its own, [`OWN_LISTENER`], beside the component
//! listeners:
//! - `GET /ready` for the kubelet's probes: Envoy's `health_check` filter answers it (200, or 503
//!   once Envoy is draining) and reveals or changes nothing;
//! - `GET /metrics` for Prometheus: the proxy's own counters (admin's `/stats/prometheus`, over the
//!   socket), admitted by the metrics-gate filter exactly like a component scrape.
//!
//! Every other path is the filter's 404; nothing else of admin is routed.

use envoy_types::pb::envoy::config::bootstrap::v3::Admin;
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, Address, Pipe};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{header_matcher, HeaderMatcher};
use envoy_types::pb::envoy::extensions::filters::http::health_check::v3::HealthCheck;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use serde_json::json;

use crate::model::{Component, OwnListener, Stack, UpstreamCredentials, UpstreamTls};
use crate::render::{duration, exact, gated_listener, http_filter, load_assignment, OnlyPath};

/// The gate's own listener (and its stats prefix).
pub const OWN_LISTENER: &str = "metrics-gate-self";
/// The cluster that reaches admin's Unix socket (only `/stats/prometheus` is routed to it).
pub const ADMIN_CLUSTER: &str = "metrics-gate-admin";
/// The kubelet's probe path on the own listener.
pub const HEALTH_PATH: &str = "/ready";
/// Where the shipped configurations put admin's socket (an emptyDir in the pod).
pub const ADMIN_SOCKET: &str = "/var/run/metrics-gate/admin.sock";

/// Owner read and write only: the kubelet and other pods have no business there.
const SOCKET_MODE: u32 = 0o600;

fn pipe(path: &str) -> Address {
    Address {
        address: Some(address::Address::Pipe(Pipe {
            path: path.into(),
            mode: SOCKET_MODE,
        })),
    }
}

pub fn admin(stack: &Stack) -> Admin {
    Admin {
        address: Some(pipe(&stack.admin_socket)),
        ..Default::default()
    }
}

pub fn admin_cluster(stack: &Stack) -> Cluster {
    Cluster {
        name: ADMIN_CLUSTER.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration(1_000)),
        load_assignment: Some(load_assignment(ADMIN_CLUSTER, pipe(&stack.admin_socket))),
        ..Default::default()
    }
}

/// The own listener as a gated "component": its upstream is admin's metrics, its one allowed path
/// `/metrics`, with the plugin defaults otherwise.
pub fn listener(stack: &Stack, own: &OwnListener) -> Listener {
    let gate = Component {
        name: OWN_LISTENER.into(),
        listen_port: own.port,
        // Not used: the route names the admin cluster below.
        upstream: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        upstream_tls: UpstreamTls::Plain,
        upstream_credentials: UpstreamCredentials::None,
        plugin_config: json!({"allowed_paths": ["/metrics"]}),
        listener_tls: own.tls.clone(),
    };
    let health = HealthCheck {
        pass_through_mode: Some(BoolValue { value: false }),
        headers: vec![HeaderMatcher {
            name: ":path".into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(exact(
                HEALTH_PATH,
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    gated_listener(
        stack,
        &gate,
        vec![http_filter(
            "envoy.filters.http.health_check",
            pack_any(health),
        )],
        Some(OnlyPath {
            path: "/metrics",
            rewrite: "/stats/prometheus",
            cluster: ADMIN_CLUSTER,
        }),
    )
}
