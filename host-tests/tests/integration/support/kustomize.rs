//! Building manifests/ offline, shared by the manifest tests (`#[path]`-included, so every test
//! binary compiles only what it uses).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tool the setup script installs into the checkout (`.venv/bin/...`).
pub fn tool(rel: &str) -> PathBuf {
    let p = root().join(rel);
    assert!(p.exists(), "{} is missing: run scripts/setup.sh (or ./run setup)", p.display());
    p
}

/// `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of manifests/ with what `just manifests` would add: a stand-in .wasm (not valid wasm; only
/// its presence matters to kustomize) and the renderer's sidecar bootstrap.
pub fn manifests_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("manifests");
    copy_dir(&root().join("manifests"), &m);
    let fake_wasm: Vec<u8> = b"\0asm\x01\0\0\0".iter().copied().chain((0..=255u8).cycle().take(4096)).collect();
    for d in ["base", "examples/sidecar"] {
        std::fs::write(m.join(d).join("metrics_gate.wasm"), &fake_wasm).unwrap();
    }
    let sidecar = root().join("envoy/examples/sidecar.yaml");
    let text = std::fs::read_to_string(&sidecar).unwrap_or_else(|_| {
        eprintln!("note: {} not rendered yet; using a stand-in", sidecar.display());
        "{}\n".into()
    });
    std::fs::write(m.join("examples/sidecar/envoy-sidecar.yaml"), text).unwrap();
    dir
}

/// `kubectl kustomize dir`.
pub fn kustomize(dir: &Path) -> String {
    let out = Command::new("kubectl").arg("kustomize").arg(dir).output().expect("kubectl (with kustomize) must be installed");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The non-empty documents of a YAML stream.
pub fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Builds `overlay` (e.g. "overlays/control-plane") from a fresh copy of manifests/.
pub fn build(overlay: &str) -> Vec<Value> {
    let tmp = manifests_copy();
    docs(&kustomize(&tmp.path().join("manifests").join(overlay)))
}
