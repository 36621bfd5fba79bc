//! Test host for metrics-gate: the doubles a real Envoy running the filter talks to.
//!
//! Everything here listens on loopback only and is faithful to the wire captures in the
//! reference data (kube-apiserver 1.28 reviews, component /metrics answers), because the filter's
//! parsers and error handling are only as good as the doubles they were tested against.

pub mod adversarial;
pub mod apiserver;
pub mod client;
pub mod clock;
pub mod components;
pub mod envoy_process;
pub mod http_server;
pub mod k8s_status;
/// The OCI image of the .wasm (`just oci`), not a test double: it lives here beside its test.
pub mod oci;
pub mod payloads;
pub mod raw_http;
pub mod rbac;
pub mod rt;
pub mod stack;
pub mod tls;
pub mod token_dir;
pub mod tokens;
