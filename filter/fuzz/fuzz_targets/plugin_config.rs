#![no_main]
//! `cargo fuzz run plugin_config`: see harness.rs (shared with the corpus replay test) and docs/fuzzing.md.

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::plugin_config(data));
