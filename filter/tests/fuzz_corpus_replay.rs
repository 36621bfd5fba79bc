//! Replays the committed fuzz corpora on stable Rust, so CI checks every invariant of the fuzz
//! harness against every input the fuzzer ever kept, in seconds, without nightly or libFuzzer.
//!
//! For each target, every file in `filter/fuzz/corpus/<target>/` and
//! `filter/fuzz/regressions/<target>/` (reproducers of fixed findings) goes through the very
//! harness function the fuzz target runs (`filter/fuzz/harness.rs`, included below, not copied).
//! See docs/fuzzing.md.
#![cfg(not(target_arch = "wasm32"))]

#[path = "../fuzz/harness.rs"]
mod harness;

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .filter(|path| {
            // Not inputs: a README or a .gitkeep next to them.
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && !n.ends_with(".md"))
        })
        .collect();
    files.sort();
    files
}

/// Runs `target`'s harness over its corpus and regressions; fails naming every input that panics.
fn replay(target: &str) {
    let run = harness::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, run)| *run);
    let Some(run) = run else {
        unreachable!("no harness function for {target}");
    };
    let corpus = files(&fuzz_dir().join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ holds no input: the corpus is missing"
    );
    let regressions = files(&fuzz_dir().join("regressions").join(target));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = match std::fs::read(path) {
            Ok(data) => data,
            Err(e) => {
                failed.push(format!("{} (unreadable: {e})", path.display()));
                continue;
            }
        };
        // The panic message (the broken invariant, with its harness.rs line) is printed by the
        // default hook; the file is named here.
        if panic::catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            let shown = path
                .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                .unwrap_or(path);
            failed.push(shown.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs panic in the harness (reproduce with `cargo +nightly fuzz run {target} <file>` in filter/):\n  {}",
        failed.len(),
        corpus.len() + regressions.len(),
        failed.join("\n  ")
    );
}

#[test]
fn every_corpus_directory_belongs_to_a_target() {
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let known = harness::TARGETS.iter().any(|(target, _)| *target == name);
            assert!(
                known || !entry.path().is_dir(),
                "fuzz/{kind}/{name}/ is not a fuzz target"
            );
        }
    }
}

#[test]
fn plugin_config() {
    replay("plugin_config");
}

#[test]
fn bearer_token() {
    replay("bearer_token");
}

#[test]
fn certificate_subject() {
    replay("certificate_subject");
}

#[test]
fn jwt_exp() {
    replay("jwt_exp");
}

#[test]
fn review_answers() {
    replay("review_answers");
}

#[test]
fn cache_records() {
    replay("cache_records");
}

#[test]
fn header_map() {
    replay("header_map");
}

#[test]
fn gate() {
    replay("gate");
}

#[test]
fn every_target_is_replayed() {
    let replayed = [
        "plugin_config",
        "bearer_token",
        "certificate_subject",
        "jwt_exp",
        "review_answers",
        "cache_records",
        "header_map",
        "gate",
    ];
    for (target, _) in harness::TARGETS {
        assert!(replayed.contains(target), "{target} has no replay test");
    }
}
