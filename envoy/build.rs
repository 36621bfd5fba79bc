//! Copies envoy-types' descriptor set (`src/generated/types.bin`, every Envoy API message) into
//! OUT_DIR, so `render.rs` can emit proto3 JSON through prost-reflect. The crate ships the file but
//! does not export it; its source directory is found from Cargo.lock's version under
//! `$CARGO_HOME/registry/src`, else through `cargo metadata`. `ENVOY_TYPES_DESCRIPTORS=<file>`
//! overrides both (vendored builds).

use std::path::{Path, PathBuf};
use std::process::Command;

const REL: &str = "src/generated/types.bin";

fn main() {
    println!("cargo:rerun-if-env-changed=ENVOY_TYPES_DESCRIPTORS");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    let found = std::env::var_os("ENVOY_TYPES_DESCRIPTORS")
        .map(PathBuf::from)
        .or_else(from_registry)
        .or_else(from_metadata)
        .filter(|p| p.is_file());
    let Some(src) = found else {
        panic!(
            "envoy-types' {REL} not found (looked in $CARGO_HOME/registry/src and cargo metadata); \
             set ENVOY_TYPES_DESCRIPTORS to the file"
        );
    };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("envoy-types.bin");
    std::fs::copy(&src, &out).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
    println!("cargo:rerun-if-changed={}", src.display());
}

fn locked_version() -> Option<String> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let lock = std::fs::read_to_string(manifest.join("../Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"envoy-types\"" {
            let v = lines.next()?;
            return Some(
                v.strip_prefix("version = \"")?
                    .strip_suffix('"')?
                    .to_string(),
            );
        }
    }
    None
}

fn from_registry() -> Option<PathBuf> {
    let version = locked_version()?;
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    for index in std::fs::read_dir(home.join("registry/src")).ok()? {
        let candidate = index
            .ok()?
            .path()
            .join(format!("envoy-types-{version}"))
            .join(REL);
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    None
}

fn from_metadata() -> Option<PathBuf> {
    let cargo = std::env::var_os("CARGO")?;
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    // Avoid a JSON dependency in the build script: find the manifest_path ending in envoy-types-x/Cargo.toml.
    text.split("\"manifest_path\":\"")
        .filter_map(|s| s.split('"').next())
        .find(|p| p.contains("/envoy-types-") && p.ends_with("/Cargo.toml"))
        .map(|p| Path::new(p).parent().unwrap_or(Path::new("/")).join(REL))
}
