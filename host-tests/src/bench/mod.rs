//! Parts of `metrics-gate-bench` (the binary in `src/bin/metrics-gate-bench.rs` includes this
//! directory with `#[path]`, so the library crate stays as it is).

pub mod procfs;
pub mod wrk;
