//! Builds the Envoy bootstrap from a [`Stack`] with Envoy's own API types and prints it as proto3
//! JSON or YAML. Everything Envoy-specific lives here: the typed input says what runs, this file
//! says how Envoy expresses it.
//!
//! Why these crates: `envoy-types` (prost 0.14) carries every message needed (bootstrap, HCM, wasm,
//! TLS, credential injector, internal listener) and builds in about a minute here, without protoc;
//! it has no JSON support of its own, so [`prost_reflect`] re-reads the encoded `Bootstrap` through
//! envoy-types' own descriptor set (`build.rs` copies `types.bin`) and serialises proto3 JSON with
//! `@type` on every `Any` — the form Envoy loads, from JSON or (through `serde_yaml_ng`) YAML.
//! xds-api's serde output was rejected by Envoy (nested `Any` as bytes), and hand-built
//! `serde_json` (what this replaced) let typos in field names through to Envoy.

use std::sync::OnceLock;

use envoy_types::pb::envoy::config::bootstrap::v3::{bootstrap::StaticResources, Bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, data_source, http_protocol_options, socket_address, Address,
    AsyncDataSource, ConfigSource, DataSource, EnvoyInternalAddress, HttpProtocolOptions, Node,
    PathConfigSource, SocketAddress, TransportSocket, TypedExtensionConfig, WatchedDirectory,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener, Filter, FilterChain, Listener,
};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, HeaderMatcher, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::bootstrap::internal_listener::v3::InternalListener;
use envoy_types::pb::envoy::extensions::filters::http::buffer::v3::Buffer;
use envoy_types::pb::envoy::extensions::filters::http::credential_injector::v3::CredentialInjector;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::http::injected_credentials::generic::v3::Generic;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, secret, subject_alt_name_matcher, CertificateValidationContext,
    CommonTlsContext, DownstreamTlsContext, GenericSecret, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::wasm::v3::{
    plugin_config, FailurePolicy, PluginConfig, VmConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, StringValue, UInt32Value};
use envoy_types::util::pack_any;
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

use crate::access_log;
use crate::local_verification;
use crate::model::{
    Apiserver, ClientCertificates, Component, ListenerTls, Stack, UpstreamCredentials, UpstreamTls,
    WasmCode,
};
use crate::{own_endpoints, remote_code};
use crate::{
    APISERVER_CLUSTER, CALLOUT_CLUSTER, CLIENT_CA_FILE, CLIENT_CA_SECRET, CREDENTIALS_LISTENER,
    NODE_NAME, PLUGIN_NAME, SDS_FILE, SECRET_NAME, SERVING_CERT_FILE, SERVING_CERT_SECRET,
    WASM_RUNTIME,
};

/// Route timeout towards a component. Router timeouts start once the filter has let the request
/// through, so the apiserver callouts do not eat into it; a large /metrics takes well under this.
const COMPONENT_TIMEOUT_MS: u32 = 30_000;
/// How long Envoy lets a request wait for the filter: each of the two reviews is bounded by the
/// apiserver timeout plus the filter's one-second margin, and two more seconds cover the timer.
pub fn paused_request_bound_ms(apiserver_timeout_ms: u32) -> u32 {
    apiserver_timeout_ms
        .saturating_add(1_000)
        .saturating_mul(2)
        .saturating_add(2_000)
}
/// The apiserver timeout the filter on `c`'s listener works with: its plugin configuration's
/// `apiserver.timeout_ms`, or the filter's default (5 s).
fn filter_apiserver_timeout_ms(c: &Component) -> u32 {
    c.plugin_config
        .pointer("/apiserver/timeout_ms")
        .and_then(Value::as_u64)
        .map_or(5_000, |ms| u32::try_from(ms).unwrap_or(u32::MAX))
}
/// TCP connect timeout of every cluster: all upstreams are on loopback or in-cluster.
pub(crate) const CONNECT_TIMEOUT_MS: u32 = 1_000;
/// The only apiserver calls the proxy's token may be used for.
const REVIEW_PATHS: [&str; 2] = [
    "/apis/authentication.k8s.io/v1/tokenreviews",
    "/apis/authorization.k8s.io/v1/subjectaccessreviews",
];

/// The whole bootstrap for one node, as Envoy's typed message.
pub fn bootstrap(stack: &Stack) -> Bootstrap {
    let mut listeners = vec![credentials_listener(stack)];
    let mut clusters = vec![callout_cluster(), apiserver_cluster(&stack.apiserver)];
    for c in &stack.components {
        listeners.push(component_listener(stack, c));
        clusters.push(component_cluster(c));
    }
    if let Some(own) = &stack.own_listener {
        listeners.push(own_endpoints::listener(stack, own));
        clusters.push(own_endpoints::admin_cluster(stack));
    }
    if let WasmCode::Remote(remote) = &stack.wasm {
        clusters.push(remote_code::cluster(remote));
    }
    Bootstrap {
        // File-based SDS refuses to start without a node id and cluster.
        node: Some(Node {
            id: NODE_NAME.into(),
            cluster: NODE_NAME.into(),
            ..Default::default()
        }),
        // Lets the callout cluster reach the in-process `apiserver-credentials` listener.
        bootstrap_extensions: vec![TypedExtensionConfig {
            name: "envoy.bootstrap.internal_listener".into(),
            typed_config: Some(pack_any(InternalListener::default())),
        }],
        admin: Some(own_endpoints::admin(stack)),
        static_resources: Some(StaticResources {
            listeners,
            clusters,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The whole bootstrap for one node as proto3 JSON (snake_case field names, `@type` on every
/// `Any`, default values left out), which Envoy loads from a `.json` file.
pub fn render(stack: &Stack) -> Value {
    to_json(&bootstrap(stack))
}

/// The bootstrap as YAML (the same proto3 JSON mapping), which Envoy loads from a `.yaml` file.
pub fn render_yaml(stack: &Stack) -> String {
    to_yaml(&bootstrap(stack))
}

/// Text of `<credentials_dir>/sds.yaml`: the secret `serviceaccount-token` read from `token_file`
/// (the projected ServiceAccount token). JSON, which is also YAML.
pub fn sds_resource(token_file: &str) -> String {
    sds_file(Secret {
        name: SECRET_NAME.into(),
        r#type: Some(secret::Type::GenericSecret(GenericSecret {
            secret: Some(file(token_file)),
            ..Default::default()
        })),
    })
}

/// Text of `<credentials_dir>/serving-certificate.yaml`: the listeners' certificate, `tls.crt`
/// and `tls.key` of `cert_dir` (a mounted `kubernetes.io/tls` Secret). `cert_dir` is watched, so a
/// renewed certificate (kubelet's `..data` swap) is served to new connections without a restart;
/// Envoy reads the pair together and retries until both files belong to one update.
pub fn sds_serving_certificate(cert_dir: &str) -> String {
    let dir = dir_path(cert_dir);
    sds_file(Secret {
        name: SERVING_CERT_SECRET.into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(file(&join(&dir, "tls.crt"))),
            private_key: Some(file(&join(&dir, "tls.key"))),
            watched_directory: Some(WatchedDirectory {
                path: dir,
                ..Default::default()
            }),
            ..Default::default()
        })),
    })
}

/// Text of `<credentials_dir>/client-ca.yaml`: the CA client certificates must chain to; its
/// directory is watched like the serving certificate's.
pub fn sds_client_ca(ca_file: &str) -> String {
    let dir = match ca_file.rsplit_once('/') {
        Some((d, _)) => dir_path(d),
        None => ".".into(),
    };
    sds_file(Secret {
        name: CLIENT_CA_SECRET.into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(file(ca_file)),
                watched_directory: Some(WatchedDirectory {
                    path: dir,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    })
}

fn sds_file(secret: Secret) -> String {
    // The file-based SDS format: `{"resources": [Any...]}`.
    let doc = serde_json::json!({"resources": [to_json_any(&pack_any(secret))]});
    // Serializing a Value cannot fail; fall back to the compact form to stay panic-free anyway.
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string())
}

// ---- proto3 JSON ----------------------------------------------------------------------------------

/// envoy-types' descriptor set: every Envoy API message and its dependencies.
fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/envoy-types.bin"))[..])
            .unwrap_or_else(|e| panic!("envoy-types' descriptor set does not decode: {e}"))
    })
}

fn options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
}

fn dynamic<T: Message + Name>(msg: &T) -> DynamicMessage {
    let desc = pool()
        .get_message_by_name(&T::full_name())
        .unwrap_or_else(|| panic!("{} is not in envoy-types' descriptor set", T::full_name()));
    // The bytes come from the same generated type: decoding them cannot fail.
    DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .unwrap_or_else(|e| panic!("re-decoding {}: {e}", T::full_name()))
}

fn to_json<T: Message + Name>(msg: &T) -> Value {
    dynamic(msg)
        .serialize_with_options(serde_json::value::Serializer, &options())
        .unwrap_or_else(|e| panic!("{} to JSON: {e}", T::full_name()))
}

fn to_json_any(any: &Any) -> Value {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let desc = pool()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is not in envoy-types' descriptor set"));
    let inner = DynamicMessage::decode(desc, any.value.as_slice())
        .unwrap_or_else(|e| panic!("re-decoding {name}: {e}"));
    let mut v = inner
        .serialize_with_options(serde_json::value::Serializer, &options())
        .unwrap_or_else(|e| panic!("{name} to JSON: {e}"));
    let mut with_type = serde_json::Map::new();
    with_type.insert("@type".into(), Value::String(any.type_url.clone()));
    if let Some(fields) = v.as_object_mut() {
        with_type.append(fields);
    }
    Value::Object(with_type)
}

fn to_yaml<T: Message + Name>(msg: &T) -> String {
    let mut out = Vec::new();
    let mut ser = serde_yaml_ng::Serializer::new(&mut out);
    dynamic(msg)
        .serialize_with_options(&mut ser, &options())
        .unwrap_or_else(|e| panic!("{} to YAML: {e}", T::full_name()));
    String::from_utf8(out).unwrap_or_else(|e| panic!("YAML is not UTF-8: {e}"))
}

// ---- the pieces -----------------------------------------------------------------------------------

/// The internal listener the filter's callouts pass through: it adds the proxy's own token
/// (the filter cannot read files) and forwards to the real apiserver. Only POSTs of the two reviews
/// are routed (anything else gets 404), so nothing can spend the proxy's token on another API call.
fn credentials_listener(stack: &Stack) -> Listener {
    // With local token verification, also `jwt_authn`'s GET of the issuer's public keys.
    let jwks = stack
        .local_token_verification
        .as_ref()
        .map(|_| ("GET", local_verification::JWKS_PATH));
    let routes = REVIEW_PATHS
        .iter()
        .map(|path| ("POST", *path))
        .chain(jwks)
        .map(|(method, path)| Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Path(path.into())),
                headers: vec![HeaderMatcher {
                    name: ":method".into(),
                    header_match_specifier: Some(
                        envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier::StringMatch(
                            exact(method),
                        ),
                    ),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                    APISERVER_CLUSTER.into(),
                )),
                timeout: Some(duration(stack.apiserver.timeout_ms)),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    let hcm = HttpConnectionManager {
        stat_prefix: "apiserver_credentials".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            RouteConfiguration {
                virtual_hosts: vec![VirtualHost {
                    name: "apiserver".into(),
                    domains: vec!["*".into()],
                    routes,
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        http_filters: vec![credential_injector(stack), router()],
        ..Default::default()
    };
    Listener {
        name: CREDENTIALS_LISTENER.into(),
        listener_specifier: Some(listener::ListenerSpecifier::InternalListener(
            Default::default(),
        )),
        filter_chains: vec![FilterChain {
            filters: vec![hcm_filter(hcm)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The cluster the filter names in `dispatch_http_call`: the internal listener above.
fn callout_cluster() -> Cluster {
    Cluster {
        name: CALLOUT_CLUSTER.into(),
        connect_timeout: Some(duration(CONNECT_TIMEOUT_MS)),
        load_assignment: Some(load_assignment(
            CALLOUT_CLUSTER,
            Address {
                address: Some(address::Address::EnvoyInternalAddress(EnvoyInternalAddress {
                    address_name_specifier: Some(
                        envoy_types::pb::envoy::config::core::v3::envoy_internal_address::AddressNameSpecifier::ServerListenerName(
                            CREDENTIALS_LISTENER.into(),
                        ),
                    ),
                    ..Default::default()
                })),
            },
        )),
        ..Default::default()
    }
}

/// The real apiserver, TLS verified against the cluster CA. An IP needs no resolver (STATIC); a
/// name such as kubernetes.default.svc is re-resolved (STRICT_DNS).
fn apiserver_cluster(api: &Apiserver) -> Cluster {
    // The cluster CA signs more than the apiserver (kubelet serving certificates, for one): the
    // name must match too.
    let tls = upstream_tls(Some((&api.ca_file, &api.sni)), &api.sni);
    host_cluster(APISERVER_CLUSTER, &api.address, api.port, Some(tls))
}

/// A cluster of one server outside Envoy: an IP needs no resolver (STATIC), a name is re-resolved
/// (STRICT_DNS).
pub(crate) fn host_cluster(
    name: &str,
    host: &str,
    port: u16,
    transport_socket: Option<TransportSocket>,
) -> Cluster {
    let kind = if host.parse::<std::net::IpAddr>().is_ok() {
        cluster::DiscoveryType::Static
    } else {
        cluster::DiscoveryType::StrictDns
    };
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: Some(duration(CONNECT_TIMEOUT_MS)),
        load_assignment: Some(load_assignment(name, socket_address(host, port))),
        transport_socket,
        ..Default::default()
    }
}

fn component_listener(stack: &Stack, c: &Component) -> Listener {
    gated_listener(stack, c, Vec::new(), None)
}

/// One path a gated listener routes, to `cluster`, forwarded as `rewrite`.
pub(crate) struct OnlyPath {
    pub path: &'static str,
    pub rewrite: &'static str,
    pub cluster: &'static str,
}

/// A listener on the node IP whose requests go through the metrics-gate filter, then to `c`'s
/// cluster. `first_filters` run before the gate (the own listener's health check); `only`, if
/// given, is the one path routed instead of all of them (the filter decides on paths anyway).
pub(crate) fn gated_listener(
    stack: &Stack,
    c: &Component,
    first_filters: Vec<HttpFilter>,
    only: Option<OnlyPath>,
) -> Listener {
    let mut http_filters = first_filters;
    // The whole request before the gate: it then answers a complete request, so an early local
    // reply (404, 405, 401, 403) ends an HTTP/2 stream normally instead of with a reset that
    // clients such as curl 7.x take for an error; and no body is in flight while it decides.
    // Scrapes have no body: for them this filter passes the headers straight on.
    http_filters.push(request_buffer());
    if let Some(v) = &stack.local_token_verification {
        http_filters.push(local_verification::jwt_authn(stack, v));
    }
    http_filters.push(wasm_filter(stack, c));
    if c.upstream_credentials == UpstreamCredentials::Proxy {
        // After the filter: only admitted requests get the proxy's token, and it overwrites
        // whatever `Authorization` the caller sent.
        http_filters.push(credential_injector(stack));
    }
    http_filters.push(router());

    let request_headers_to_remove = match c.upstream_credentials {
        // The filter strips the caller's credentials already; this is a second lock that does not
        // depend on the wasm code. Not with `Proxy`: the router applies it after the injector.
        UpstreamCredentials::None => vec!["authorization".into(), "proxy-authorization".into()],
        // The caller's Authorization goes on (passthrough, by choice) or is overwritten by the
        // injector (proxy; the router removes headers after it, so not `authorization` here);
        // a caller's Proxy-Authorization never goes on.
        UpstreamCredentials::Passthrough | UpstreamCredentials::Proxy => {
            vec!["proxy-authorization".into()]
        }
    };
    let (path_specifier, prefix_rewrite, cluster) = match only {
        None => (
            route_match::PathSpecifier::Prefix("/".into()),
            String::new(),
            c.name.clone(),
        ),
        Some(only) => (
            route_match::PathSpecifier::Path(only.path.into()),
            only.rewrite.into(),
            only.cluster.into(),
        ),
    };
    let route = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(path_specifier),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
            timeout: Some(duration(COMPONENT_TIMEOUT_MS)),
            prefix_rewrite,
            ..Default::default()
        })),
        request_headers_to_remove,
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: c.name.clone(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        // Resolve `.`/`..` and decode unreserved %XX before the filter sees :path, but keep `//` and
        // `%2F` as sent: the filter answers 404 to any path that is not exactly an allowed one, so
        // odd spellings are refused instead of being rewritten into a match.
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: false,
        path_with_escaped_slashes_action:
            http_connection_manager::PathWithEscapedSlashesAction::KeepUnchanged as i32,
        // Envoy is the edge here: take the peer address from the connection and do not trust a
        // caller's x-forwarded-for / x-envoy-* headers.
        use_remote_address: Some(BoolValue { value: true }),
        // A request the filter holds (reviews under way) ends within this even if the filter
        // never answers it (a crashed VM): longer than the filter's own bound, two reviews each
        // within the apiserver timeout plus a margin, so normally the filter's 503 comes first.
        request_timeout: Some(duration(paused_request_bound_ms(
            filter_apiserver_timeout_ms(c),
        ))),
        common_http_protocol_options: Some(HttpProtocolOptions {
            // `x_remote_user` is `x-remote-user` to many servers: such names never go upstream.
            headers_with_underscores_action:
                http_protocol_options::HeadersWithUnderscoresAction::DropHeader as i32,
            ..Default::default()
        }),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            RouteConfiguration {
                name: c.name.clone(),
                virtual_hosts: vec![VirtualHost {
                    name: c.name.clone(),
                    domains: vec!["*".into()],
                    routes: vec![route],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        http_filters,
        access_log: if stack.access_log {
            vec![access_log::stdout_json(&c.name)]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    Listener {
        name: c.name.clone(),
        stat_prefix: c.name.clone(),
        address: Some(socket_address(&stack.node_ip.to_string(), c.listen_port)),
        filter_chains: vec![FilterChain {
            filters: vec![hcm_filter(hcm)],
            transport_socket: downstream_tls(stack, &c.listener_tls),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The listener's TLS: serving certificate (and client CA) by file-based SDS from the credentials
/// directory, so renewals are served without a restart.
fn downstream_tls(stack: &Stack, tls: &ListenerTls) -> Option<TransportSocket> {
    let ListenerTls::Tls {
        client_certificates,
    } = tls
    else {
        return None;
    };
    let validation_context_type = match client_certificates {
        ClientCertificates::Off => None,
        ClientCertificates::Optional | ClientCertificates::Required => Some(
            common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                sds_secret(stack, CLIENT_CA_SECRET, CLIENT_CA_FILE),
            ),
        ),
    };
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds_secret(
                stack,
                SERVING_CERT_SECRET,
                SERVING_CERT_FILE,
            )],
            // Prometheus speaks HTTP/1.1; h2 is offered too for other clients.
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            validation_context_type,
            ..Default::default()
        }),
        require_client_certificate: (*client_certificates == ClientCertificates::Required)
            .then_some(BoolValue { value: true }),
        ..Default::default()
    };
    Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                pack_any(context),
            ),
        ),
    })
}

/// The filter's configuration as the model says, plus what the listener and upstream imply:
/// `client_certificates` where the listener verifies them, `forward_caller_credentials` for
/// passthrough.
pub(crate) fn plugin_config(c: &Component) -> Value {
    let mut config = c.plugin_config.clone();
    if let Value::Object(map) = &mut config {
        if let ListenerTls::Tls {
            client_certificates: ClientCertificates::Optional | ClientCertificates::Required,
        } = c.listener_tls
        {
            map.insert("client_certificates".into(), Value::Bool(true));
        }
        if c.upstream_credentials == UpstreamCredentials::Passthrough {
            map.insert("forward_caller_credentials".into(), Value::Bool(true));
        }
    }
    config
}

/// The metrics-gate plugin. Every component's listener names the same vm_id and code, so Envoy runs
/// one VM per worker for all of them; each gets its own root context from its own configuration.
fn wasm_filter(stack: &Stack, c: &Component) -> HttpFilter {
    let mut configuration = plugin_config(c);
    if let (false, Value::Object(map)) = (stack.access_log, &mut configuration) {
        // Nothing reads the decision: spare the filter handing it over.
        map.insert("access_log".into(), Value::Bool(false));
    }
    if let (Some(_), Value::Object(map)) = (&stack.local_token_verification, &mut configuration) {
        map.insert("local_token_verification".into(), Value::Bool(true));
    }
    let wasm = Wasm {
        config: Some(PluginConfig {
            name: PLUGIN_NAME.into(),
            root_id: PLUGIN_NAME.into(),
            // Fail closed: a crashed VM is replaced, and requests meanwhile get 503, never pass
            // through unchecked.
            failure_policy: FailurePolicy::FailReload as i32,
            vm: Some(plugin_config::Vm::VmConfig(VmConfig {
                vm_id: PLUGIN_NAME.into(),
                runtime: WASM_RUNTIME.into(),
                code: Some(match &stack.wasm {
                    WasmCode::File(path) => AsyncDataSource {
                        specifier: Some(
                            envoy_types::pb::envoy::config::core::v3::async_data_source::Specifier::Local(
                                file(path),
                            ),
                        ),
                    },
                    // Loaded only with the pinned sha256; see remote_code.rs for what a mismatch does.
                    WasmCode::Remote(remote) => remote_code::code_source(remote),
                }),
                ..Default::default()
            })),
            configuration: Some(pack_any(StringValue {
                value: configuration.to_string(),
            })),
            ..Default::default()
        }),
    };
    http_filter("envoy.filters.http.wasm", pack_any(wasm))
}

/// `Authorization: Bearer <proxy's ServiceAccount token>`, the token read through file-based SDS.
/// The same SDS source is named wherever the injector appears, so Envoy keeps one subscription.
fn credential_injector(stack: &Stack) -> HttpFilter {
    let generic = Generic {
        credential: Some(sds_secret(stack, SECRET_NAME, SDS_FILE)),
        header: "Authorization".into(),
        header_value_prefix: "Bearer ".into(),
    };
    let injector = CredentialInjector {
        overwrite: true,
        credential: Some(TypedExtensionConfig {
            name: "envoy.http.injected_credentials.generic".into(),
            typed_config: Some(pack_any(generic)),
        }),
        ..Default::default()
    };
    http_filter("envoy.filters.http.credential_injector", pack_any(injector))
}

/// An SDS secret read from `<credentials_dir>/<file>`. Watching the directory (not the file) is
/// what picks up kubelet's atomic `..data` symlink swap.
fn sds_secret(stack: &Stack, name: &str, file: &str) -> SdsSecretConfig {
    let dir = dir_path(&stack.credentials_dir);
    SdsSecretConfig {
        name: name.into(),
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::PathConfigSource(
                PathConfigSource {
                    path: join(&dir, file),
                    watched_directory: Some(WatchedDirectory {
                        path: dir,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
    }
}

/// Largest request body the gate waits for; beyond it Envoy answers 413 (metrics requests have none).
const MAX_REQUEST_BODY_BYTES: u32 = 64 * 1024;

fn request_buffer() -> HttpFilter {
    http_filter(
        "envoy.filters.http.buffer",
        pack_any(Buffer {
            max_request_bytes: Some(UInt32Value {
                value: MAX_REQUEST_BODY_BYTES,
            }),
        }),
    )
}

pub(crate) fn router() -> HttpFilter {
    http_filter("envoy.filters.http.router", pack_any(Router::default()))
}

pub(crate) fn http_filter(name: &str, config: Any) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

fn hcm_filter(hcm: HttpConnectionManager) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
    }
}

fn component_cluster(c: &Component) -> Cluster {
    let transport_socket = match &c.upstream_tls {
        UpstreamTls::Plain => None,
        // No validation_context: Envoy then accepts any certificate, as the seed's HAProxy does
        // (`ssl verify none`) for the in-memory self-signed certificates on loopback.
        UpstreamTls::TlsNoVerify => Some(upstream_tls(None, "")),
        // A CA alone proves nothing about which server answered: pin the name too.
        UpstreamTls::TlsVerify { ca_file, sni } => Some(upstream_tls(Some((ca_file, sni)), sni)),
    };
    Cluster {
        name: c.name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration(CONNECT_TIMEOUT_MS)),
        load_assignment: Some(load_assignment(
            &c.name,
            socket_address(&c.upstream.ip().to_string(), c.upstream.port()),
        )),
        transport_socket,
        ..Default::default()
    }
}

/// TLS towards an upstream, verified against `ca_file` with a SAN of `name` when given: an IP SAN
/// when `name` is an IP address (loopback components often have no DNS name), else a DNS SAN.
pub(crate) fn upstream_tls(verify: Option<(&str, &str)>, sni: &str) -> TransportSocket {
    let is_ip = |name: &str| name.parse::<std::net::IpAddr>().is_ok();
    // SNI carries host names only (RFC 6066).
    let sni = if is_ip(sni) { "" } else { sni };
    let common_tls_context = verify.map(|(ca_file, name)| CommonTlsContext {
        validation_context_type: Some(
            common_tls_context::ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(file(ca_file)),
                    match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                        san_type: if is_ip(name) {
                            subject_alt_name_matcher::SanType::IpAddress
                        } else {
                            subject_alt_name_matcher::SanType::Dns
                        } as i32,
                        matcher: Some(exact(name)),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    });
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                pack_any(UpstreamTlsContext {
                    common_tls_context,
                    sni: sni.into(),
                    ..Default::default()
                }),
            ),
        ),
    }
}

pub(crate) fn load_assignment(cluster_name: &str, address: Address) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster_name.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(address),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(crate) fn socket_address(address: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.into())),
        ..Default::default()
    }
}

pub(crate) fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(s.into())),
        ..Default::default()
    }
}

pub(crate) fn duration(ms: u32) -> Duration {
    Duration {
        seconds: i64::from(ms / 1000),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// `dir` without trailing slashes ("/" stays "/").
fn dir_path(dir: &str) -> String {
    let d = dir.trim_end_matches('/');
    if d.is_empty() {
        "/".into()
    } else {
        d.into()
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_proto3_json() {
        let d = |ms| to_json(&duration(ms));
        assert_eq!(d(0), "0s");
        assert_eq!(d(250), "0.250s");
        assert_eq!(d(5_000), "5s");
        assert_eq!(d(61_001), "61.001s");
    }

    #[test]
    fn descriptor_pool_has_every_packed_type() {
        for name in [
            Bootstrap::full_name(),
            HttpConnectionManager::full_name(),
            Wasm::full_name(),
            CredentialInjector::full_name(),
            Generic::full_name(),
            DownstreamTlsContext::full_name(),
            UpstreamTlsContext::full_name(),
            InternalListener::full_name(),
            Router::full_name(),
            Secret::full_name(),
            envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog::full_name(),
        ] {
            assert!(pool().get_message_by_name(&name).is_some(), "{name}");
        }
    }
}
