//! Builds the Envoy bootstrap from a [`Stack`] as proto3 JSON (snake_case field names, `@type` on
//! every `Any`), which Envoy loads from a `.json` file. Everything Envoy-specific lives here: the
//! typed input says what runs, this file says how Envoy expresses it.

use serde_json::{json, Value};

use crate::model::{Apiserver, Component, Stack, UpstreamCredentials, UpstreamTls};
use crate::{
    APISERVER_CLUSTER, CALLOUT_CLUSTER, CREDENTIALS_LISTENER, NODE_NAME, PLUGIN_NAME, SDS_FILE,
    SECRET_NAME, WASM_RUNTIME,
};

/// Route timeout towards a component. Router timeouts start once the filter has let the request
/// through, so the apiserver callouts do not eat into it; a large /metrics takes well under this.
const COMPONENT_TIMEOUT_MS: u32 = 30_000;
/// TCP connect timeout of every cluster: all upstreams are on loopback or in-cluster.
const CONNECT_TIMEOUT_MS: u32 = 1_000;

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// The only apiserver calls the proxy's token may be used for.
const REVIEW_PATHS: [&str; 2] = [
    "/apis/authentication.k8s.io/v1/tokenreviews",
    "/apis/authorization.k8s.io/v1/subjectaccessreviews",
];
const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// The whole bootstrap for one node.
pub fn render(stack: &Stack) -> Value {
    let mut listeners = vec![credentials_listener(stack)];
    let mut clusters = vec![callout_cluster(), apiserver_cluster(&stack.apiserver)];
    for c in &stack.components {
        listeners.push(component_listener(stack, c));
        clusters.push(component_cluster(c));
    }
    json!({
        // File-based SDS refuses to start without a node id and cluster.
        "node": {"id": NODE_NAME, "cluster": NODE_NAME},
        // Lets the callout cluster reach the in-process `apiserver-credentials` listener.
        "bootstrap_extensions": [{
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
            }
        }],
        "admin": {"address": socket_address(&stack.admin.ip().to_string(), stack.admin.port())},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

/// Text of `<credentials_dir>/sds.yaml`: the secret `serviceaccount-token` read from `token_file`
/// (the projected ServiceAccount token). JSON, which is also YAML.
pub fn sds_resource(token_file: &str) -> String {
    let doc = json!({
        "resources": [{
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": SECRET_NAME,
            "generic_secret": {"secret": {"filename": token_file}},
        }]
    });
    // Serializing a Value cannot fail; fall back to the compact form to stay panic-free anyway.
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string())
}

/// The internal listener the filter's callouts pass through: it adds the proxy's own token
/// (the filter cannot read files) and forwards to the real apiserver. Only POSTs of the two reviews
/// are routed (anything else gets 404), so nothing can spend the proxy's token on another API call.
fn credentials_listener(stack: &Stack) -> Value {
    json!({
        "name": CREDENTIALS_LISTENER,
        "internal_listener": {},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM,
                "stat_prefix": "apiserver_credentials",
                "route_config": {"virtual_hosts": [{
                    "name": "apiserver",
                    "domains": ["*"],
                    "routes": REVIEW_PATHS.iter().map(|path| json!({
                        "match": {
                            "path": path,
                            "headers": [{"name": ":method", "string_match": {"exact": "POST"}}],
                        },
                        "route": {
                            "cluster": APISERVER_CLUSTER,
                            "timeout": duration(stack.apiserver.timeout_ms),
                        },
                    })).collect::<Vec<_>>(),
                }]},
                "http_filters": [credential_injector(stack), router()],
            }
        }]}],
    })
}

/// The cluster the filter names in `dispatch_http_call`: the internal listener above.
fn callout_cluster() -> Value {
    json!({
        "name": CALLOUT_CLUSTER,
        "connect_timeout": duration(CONNECT_TIMEOUT_MS),
        "load_assignment": {
            "cluster_name": CALLOUT_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "envoy_internal_address": {"server_listener_name": CREDENTIALS_LISTENER}
            }}}]}],
        },
    })
}

/// The real apiserver, TLS verified against the cluster CA. An IP needs no resolver (STATIC); a
/// name such as kubernetes.default.svc is re-resolved (STRICT_DNS).
fn apiserver_cluster(api: &Apiserver) -> Value {
    let kind = if api.address.parse::<std::net::IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    json!({
        "name": APISERVER_CLUSTER,
        "type": kind,
        "connect_timeout": duration(CONNECT_TIMEOUT_MS),
        "load_assignment": {
            "cluster_name": APISERVER_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": socket_address(&api.address, api.port)
            }}]}],
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": UPSTREAM_TLS,
                "sni": api.sni,
                "common_tls_context": {"validation_context": {
                    "trusted_ca": {"filename": api.ca_file},
                    // The cluster CA signs more than the apiserver (kubelet serving certificates,
                    // for one): the name must match too.
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": api.sni}}],
                }},
            },
        },
    })
}

fn component_listener(stack: &Stack, c: &Component) -> Value {
    let mut http_filters = vec![wasm_filter(stack, c)];
    if c.upstream_credentials == UpstreamCredentials::Proxy {
        // After the filter: only admitted requests get the proxy's token, and it overwrites
        // whatever `Authorization` the caller sent.
        http_filters.push(credential_injector(stack));
    }
    http_filters.push(router());

    let mut route = json!({
        "match": {"prefix": "/"},
        "route": {"cluster": c.name, "timeout": duration(COMPONENT_TIMEOUT_MS)},
    });
    if c.upstream_credentials == UpstreamCredentials::None {
        // The filter strips the caller's credentials already; this is a second lock that does not
        // depend on the wasm code. Not with `Proxy`: the router applies it after the injector.
        route["request_headers_to_remove"] = json!(["authorization", "proxy-authorization"]);
    }

    json!({
        "name": c.name,
        "stat_prefix": c.name,
        "address": socket_address(&stack.node_ip.to_string(), c.listen_port),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM,
                "stat_prefix": c.name,
                "codec_type": "AUTO",
                // Resolve `.`/`..` and decode unreserved %XX before the filter sees :path, but keep
                // `//` and `%2F` as sent: the filter answers 404 to any path that is not exactly an
                // allowed one, so odd spellings are refused instead of being rewritten into a match.
                "normalize_path": true,
                "merge_slashes": false,
                "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
                // Envoy is the edge here: take the peer address from the connection and do not
                // trust a caller's x-forwarded-for / x-envoy-* headers.
                "use_remote_address": true,
                "route_config": {
                    "name": c.name,
                    "virtual_hosts": [{"name": c.name, "domains": ["*"], "routes": [route]}],
                },
                "http_filters": http_filters,
            }
        }]}],
    })
}

/// The metrics-gate plugin. Every component's listener names the same vm_id and code, so Envoy runs
/// one VM per worker for all of them; each gets its own root context from its own configuration.
fn wasm_filter(stack: &Stack, c: &Component) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": PLUGIN_NAME,
                "root_id": PLUGIN_NAME,
                // Fail closed: a crashed VM is replaced, and requests meanwhile get 503, never
                // pass through unchecked.
                "failure_policy": "FAIL_RELOAD",
                "vm_config": {
                    "vm_id": PLUGIN_NAME,
                    "runtime": WASM_RUNTIME,
                    "code": {"local": {"filename": stack.wasm_path}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": c.plugin_config.to_string(),
                },
            },
        },
    })
}

/// `Authorization: Bearer <proxy's ServiceAccount token>`, the token read through file-based SDS.
/// The same SDS source is named wherever the injector appears, so Envoy keeps one subscription.
fn credential_injector(stack: &Stack) -> Value {
    let dir = stack.credentials_dir.trim_end_matches('/');
    let dir = if dir.is_empty() { "/" } else { dir };
    let sds_path = if dir == "/" {
        format!("/{SDS_FILE}")
    } else {
        format!("{dir}/{SDS_FILE}")
    };
    json!({
        "name": "envoy.filters.http.credential_injector",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
            "overwrite": true,
            "credential": {
                "name": "envoy.http.injected_credentials.generic",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic",
                    "header": "Authorization",
                    "header_value_prefix": "Bearer ",
                    "credential": {
                        "name": SECRET_NAME,
                        "sds_config": {"path_config_source": {
                            "path": sds_path,
                            // Watching the directory (not the file) is what picks up kubelet's
                            // atomic `..data` symlink swap on token rotation.
                            "watched_directory": {"path": dir},
                        }},
                    },
                },
            },
        },
    })
}

fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
}

fn component_cluster(c: &Component) -> Value {
    let mut cluster = json!({
        "name": c.name,
        "type": "STATIC",
        "connect_timeout": duration(CONNECT_TIMEOUT_MS),
        "load_assignment": {
            "cluster_name": c.name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": socket_address(&c.upstream.ip().to_string(), c.upstream.port())
            }}]}],
        },
    });
    let tls = match &c.upstream_tls {
        UpstreamTls::Plain => None,
        // No validation_context: Envoy then accepts any certificate, as the seed's HAProxy does
        // (`ssl verify none`) for the in-memory self-signed certificates on loopback.
        UpstreamTls::TlsNoVerify => Some(json!({"@type": UPSTREAM_TLS})),
        UpstreamTls::TlsVerify { ca_file, sni } => Some(json!({
            "@type": UPSTREAM_TLS,
            "sni": sni,
            "common_tls_context": {"validation_context": {
                "trusted_ca": {"filename": ca_file},
                // A CA alone proves nothing about which server answered: pin the name too.
                "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": sni}}],
            }},
        })),
    };
    if let Some(typed_config) = tls {
        cluster["transport_socket"] =
            json!({"name": "envoy.transport_sockets.tls", "typed_config": typed_config});
    }
    cluster
}

fn socket_address(address: &str, port: u16) -> Value {
    json!({"socket_address": {"address": address, "port_value": port}})
}

/// proto3 JSON form of google.protobuf.Duration: seconds with a fractional part, e.g. "0.250s".
fn duration(ms: u32) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_are_proto3_json() {
        assert_eq!(duration(0), "0.000s");
        assert_eq!(duration(250), "0.250s");
        assert_eq!(duration(5_000), "5.000s");
        assert_eq!(duration(61_001), "61.001s");
    }
}
