//! The integration tests: the real Envoy running the built .wasm in front of the test host's mock
//! kube-apiserver and fake components. One file per behaviour; one test binary for all of them, so
//! the suite links once (each separate binary carried the whole test host and its dependencies).
//!
//! Run one behaviour with `cargo test -p metrics-gate-host-tests --test integration <file>::`.

mod support;

mod access_log;
mod admin_off_tcp;
mod adversarial_credentials;
mod adversarial_headers;
mod adversarial_paths;
mod adversarial_pending;
mod adversarial_races;
mod adversarial_smuggling;
mod allowed_scrape;
mod apiserver_faults;
mod bind_conflict;
mod cache_keeps_allows;
mod cache_node_wide;
mod cache_outage;
mod cache_ttl_per_listener;
mod callout_cap;
mod coalescing;
mod compose_static;
mod control_plane_outage;
mod credential_stripping;
mod envoy_renderer;
mod forbidden;
mod gate_alerts;
mod gate_dashboard;
mod graceful_drain;
mod head_requests;
mod header_bytes;
mod http2_early_replies;
mod invalid_config;
mod local_token_verification;
mod kube_prometheus_rules;
mod manifests_valid;
mod methods;
mod node_layout;
mod oci_image;
mod paths;
mod paused_requests_end;
mod prometheus_etcd_e2e;
mod proxy_token_rotation;
mod reload_visible;
mod rendered_configs_validate;
mod request_body;
mod review_rate_limit;
mod sidecar;
mod static_authorization;
mod tls_rotation;
mod unauthenticated;
mod upstream_credentials;
mod upstream_down;
mod upstream_verification;
mod wasm_by_digest;
mod wasm_crash;
