//! metrics-gate: a proxy-wasm filter that lets a request reach a Kubernetes component's metrics only
//! when the path is allowed and the Kubernetes API authenticates (TokenReview) and authorizes
//! (SubjectAccessReview) the caller.
//!
//! Everything that decides is plain Rust in `config`, `credentials`, `review`, `gate`, `reply`,
//! `cache` and `jwt`,
//! tested natively; `host` is the only module that talks to Envoy, and only exists in the wasm build.

pub mod access_log;
pub mod cache;
pub mod config;
pub mod credentials;
mod fields;
pub mod gate;
pub mod header_map;
pub mod identity_headers;
pub mod jwt;
pub mod metrics;
pub mod rate;
pub mod reply;
pub mod review;
mod text;

#[cfg(target_os = "wasi")]
mod host;
