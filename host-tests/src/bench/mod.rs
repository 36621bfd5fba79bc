//! Parts of `metrics-gate-bench` (the binary in `src/bin/metrics-gate-bench.rs` includes this
//! directory with `#[path]`, so the library crate stays as it is).

pub mod cli;
pub mod configs;
pub mod markdown;
pub mod procfs;
pub mod proxies;
pub mod report;
pub mod setups;
pub mod stress;
pub mod wrk;
