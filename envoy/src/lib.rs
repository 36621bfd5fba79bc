//! Renders the Envoy bootstrap metrics-gate runs with: one Envoy per node, one listener per
//! loopback component, the `metrics-gate` wasm filter in front of each, and the apiserver callout
//! path (internal listener + credential injector) the filter's TokenReview/SubjectAccessReview go
//! through. The demo, the tests and the shipped examples all render through here.
//!
//! [`model`] is the typed input (what runs); [`render`] builds Envoy's own API types from it
//! (envoy-types, prost) and prints proto3 JSON or YAML (how Envoy says it). Only `render.rs` knows
//! Envoy's messages. [`file`] reads a components file into the model; [`examples`] is every
//! configuration the repository ships.

pub mod access_log;
pub mod cert;
pub mod examples;
pub mod file;
pub mod local_verification;
pub mod model;
pub mod own_endpoints;
pub mod remote_code;
mod render;
pub mod testing;

pub use model::{
    Apiserver, ClientCertificates, Component, InvalidStack, ListenerTls, LocalTokenVerification,
    NodeAddress, OwnListener, Preset, RemoteWasm, Stack, TlsFiles, UpstreamCredentials,
    UpstreamTls, WasmCode,
};
pub use render::{
    bootstrap, paused_request_bound_ms, render, render_yaml, sds_client_ca, sds_resource,
    sds_serving_certificate,
};

/// The cluster the filter must name in `dispatch_http_call` for its apiserver callouts.
pub const CALLOUT_CLUSTER: &str = "apiserver-with-credentials";
/// The internal listener behind [`CALLOUT_CLUSTER`] that injects the proxy's token.
pub const CREDENTIALS_LISTENER: &str = "apiserver-credentials";
/// The cluster of the real kube-apiserver.
pub const APISERVER_CLUSTER: &str = "kube-apiserver";
/// The SDS secret holding the proxy's ServiceAccount token.
pub const SECRET_NAME: &str = "serviceaccount-token";
/// File name of the SDS resource inside `Stack::credentials_dir`; write it with [`sds_resource`].
pub const SDS_FILE: &str = "sds.yaml";
/// The SDS secret holding the listeners' serving certificate.
pub const SERVING_CERT_SECRET: &str = "serving-certificate";
/// File name of its SDS resource inside `Stack::credentials_dir`; see [`sds_serving_certificate`].
pub const SERVING_CERT_FILE: &str = "serving-certificate.yaml";
/// The SDS secret holding the CA client certificates are verified against.
pub const CLIENT_CA_SECRET: &str = "client-ca";
/// File name of its SDS resource inside `Stack::credentials_dir`; see [`sds_client_ca`].
pub const CLIENT_CA_FILE: &str = "client-ca.yaml";
/// Plugin name, root_id and vm_id of the filter (the vm_id also scopes its shared data).
pub const PLUGIN_NAME: &str = "metrics-gate";
/// Envoy's node id and cluster (file-based SDS requires both).
pub const NODE_NAME: &str = "metrics-gate";
/// The wasm runtime compiled into the stock Envoy.
pub const WASM_RUNTIME: &str = "envoy.wasm.runtime.v8";

#[cfg(test)]
mod tests;
