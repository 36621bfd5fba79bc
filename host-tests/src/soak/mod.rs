//! Parts of `metrics-gate-soak` (`just soak`). The binary in `src/bin/metrics-gate-soak.rs` includes
//! this directory with `#[path]`, as `metrics-gate-bench` does with `src/bench/`, so the library
//! crate stays as it is.
//!
//! - [`client`]: keep-alive HTTP/1.1 over TLS to Envoy's listeners, one request at a time per
//!   connection, the server verified like Prometheus would (serving CA, Service name);
//! - [`ledger`]: every answer classified (expected or not, and why) and counted per 5 s interval;
//! - [`report`]: the samples, the RSS fit, `results.json` and `results.md`.

pub mod client;
pub mod ledger;
pub mod report;
