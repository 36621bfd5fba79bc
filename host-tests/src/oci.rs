//! An OCI image of `metrics_gate.wasm` that Istio's WasmPlugin and Envoy Gateway's
//! EnvoyExtensionPolicy both pull (`oci://`), written as an OCI image layout directory (`oci-layout`,
//! `index.json`, `blobs/sha256/…`) that `skopeo copy oci:<dir>:<tag> docker://<registry>/<name>:<tag>`
//! pushes. No container engine is involved.
//!
//! The layout is the Wasm image spec's *compat* variant: an OCI manifest with one
//! `application/vnd.oci.image.layer.v1.tar+gzip` layer holding `plugin.wasm`, annotated
//! `module.wasm.image/variant: compat`. Both fetchers (Envoy Gateway's `internal/wasm` is Istio's
//! `pkg/wasm` adapted) try that variant first on an OCI manifest and take `plugin.wasm` out of the
//! last layer. The other, *oci* variant (`application/vnd.module.wasm.content.layer.v1+wasm`) is
//! accepted by their code only with exactly two layers, and not by every registry; the compat image
//! is what any registry stores.
//!
//! The bytes are reproducible: fixed tar metadata (mtime 0, uid/gid 0, mode 0644), a gzip header
//! without time or name, JSON with sorted keys and no timestamps. The same .wasm gives the same
//! manifest digest, which is what a WasmPlugin's `sha256` pins for an `oci://` URL (Istio compares
//! it with the pulled image's manifest digest, not with the .wasm's own sha256).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The file name the compat variant's layer must hold.
pub const PLUGIN_FILE: &str = "plugin.wasm";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The annotation the Wasm image spec's compat variant carries.
pub const VARIANT_ANNOTATION: (&str, &str) = ("module.wasm.image/variant", "compat");

/// What [`write_layout`] wrote, digests as lowercase hex (no `sha256:` prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WasmImage {
    pub dir: PathBuf,
    pub tag: String,
    /// The image's digest: what a registry reports and a WasmPlugin's `sha256` pins.
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub config_digest: String,
    pub layer_digest: String,
    pub layer: Vec<u8>,
    /// sha256 of the .wasm itself (what `--wasm-sha256` pins for a plain URL).
    pub wasm_sha256: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": format!("sha256:{}", sha256_hex(bytes)), "size": bytes.len()})
}

/// The uncompressed layer: a tar holding only `plugin.wasm`, with fixed metadata.
fn layer_tar(wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut header = tar::Header::new_ustar();
    header.set_path(PLUGIN_FILE)?;
    header.set_size(wasm.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, wasm)?;
    Ok(builder.into_inner()?)
}

/// gzip without a file name or time in its header, so equal input gives equal bytes.
fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

/// `plugin.wasm` out of a compat layer, as Istio's and Envoy Gateway's fetchers read it.
pub fn plugin_wasm_of_layer(layer: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer));
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()?.file_name().is_some_and(|n| n == PLUGIN_FILE) {
            let mut out = Vec::new();
            entry.read_to_end(&mut out)?;
            return Ok(out);
        }
    }
    bail!("no {PLUGIN_FILE} in the layer")
}

/// Writes the image of `wasm` as an OCI image layout in `dir`, tagged `tag`. An existing layout
/// there is replaced; any other non-empty directory is refused.
pub fn write_layout(wasm: &[u8], dir: &Path, tag: &str) -> anyhow::Result<WasmImage> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        bail!("not a WebAssembly module (no \\0asm magic)");
    }
    if tag.is_empty()
        || !tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        || tag.len() > 128
    {
        bail!("tag {tag:?}: use letters, digits, '.', '_' and '-' (at most 128)");
    }
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join("oci-layout").is_file() {
            bail!(
                "{} is neither empty nor an OCI image layout: not overwriting it",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;

    let tar = layer_tar(wasm)?;
    let layer = gzip(&tar)?;
    // A minimal image config: no command or environment (nothing runs it as a container); the
    // diff_id is the uncompressed layer's digest, as the image spec requires.
    let config = serde_json::to_vec(&json!({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&tar))]},
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config),
        "layers": [descriptor(LAYER_MEDIA_TYPE, &layer)],
        "annotations": {VARIANT_ANNOTATION.0: VARIANT_ANNOTATION.1},
    }))?;
    let mut index_entry = descriptor(MANIFEST_MEDIA_TYPE, &manifest);
    index_entry["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [index_entry],
    }))?;

    for blob in [&layer, &config, &manifest] {
        std::fs::write(blobs.join(sha256_hex(blob)), blob)?;
    }
    std::fs::write(dir.join("index.json"), &index)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(WasmImage {
        dir: dir.to_path_buf(),
        tag: tag.into(),
        manifest_digest: sha256_hex(&manifest),
        manifest,
        config_digest: sha256_hex(&config),
        layer_digest: sha256_hex(&layer),
        layer,
        wasm_sha256: sha256_hex(wasm),
    })
}

/// The tag of an image reference (`registry/name:tag`), `latest` when it has none. A reference by
/// digest (`@sha256:…`) is refused: the digest is what this builds.
pub fn tag_of(image: &str) -> anyhow::Result<&str> {
    if image.contains('@') {
        bail!("{image}: give a tag, not a digest");
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    Ok(last.split_once(':').map_or("latest", |(_, tag)| tag))
}

/// The WasmPlugin `template` (manifests/examples/istio/wasmplugin.yaml) with `spec.url` set to
/// `oci://<image>` and `spec.sha256` to `manifest_digest`: what to apply for the image just built.
/// Each of the two lines must be there exactly once.
pub fn pin_wasmplugin(
    template: &str,
    image: &str,
    manifest_digest: &str,
) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    let (mut urls, mut digests) = (0, 0);
    for line in template.lines() {
        if line.starts_with("  url: ") {
            urls += 1;
            out.push_str(&format!("  url: oci://{image}\n"));
        } else if line.starts_with("  sha256: ") {
            digests += 1;
            out.push_str(&format!("  sha256: \"{manifest_digest}\"\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if (urls, digests) != (1, 1) {
        bail!("the WasmPlugin template must have one `  url:` and one `  sha256:` line under spec (found {urls} and {digests})");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid module: magic and version.
    const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn the_same_module_gives_the_same_digest_and_plugin_wasm_round_trips() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let one = write_layout(EMPTY_MODULE, &a.path().join("x"), "v1").unwrap();
        let two = write_layout(EMPTY_MODULE, &b.path().join("y"), "v1").unwrap();
        assert_eq!(one.manifest_digest, two.manifest_digest);
        assert_eq!(plugin_wasm_of_layer(&one.layer).unwrap(), EMPTY_MODULE);
        let mut other = EMPTY_MODULE.to_vec();
        other.push(0);
        let three = write_layout(&other, &b.path().join("z"), "v1").unwrap();
        assert_ne!(three.manifest_digest, one.manifest_digest);
        // Rewriting a layout replaces it; a directory that is not one is left alone.
        write_layout(EMPTY_MODULE, &a.path().join("x"), "v2").unwrap();
        std::fs::write(a.path().join("keep"), "mine").unwrap();
        assert!(write_layout(EMPTY_MODULE, a.path(), "v1").is_err());
        assert!(write_layout(b"not wasm", &a.path().join("w"), "v1").is_err());
    }

    #[test]
    fn tags_and_pins() {
        assert_eq!(
            tag_of("ghcr.io/example/metrics-gate:v0.1.0").unwrap(),
            "v0.1.0"
        );
        assert_eq!(tag_of("127.0.0.1:5000/metrics-gate").unwrap(), "latest");
        assert!(tag_of("ghcr.io/x@sha256:00").is_err());
        let template = "spec:\n  url: oci://old\n  # keep\n  sha256: \"00\"\n  pluginName: x\n";
        let pinned = pin_wasmplugin(template, "r/n:t", "ab").unwrap();
        assert_eq!(
            pinned,
            "spec:\n  url: oci://r/n:t\n  # keep\n  sha256: \"ab\"\n  pluginName: x\n"
        );
        assert!(pin_wasmplugin("spec:\n  url: x\n", "r", "ab").is_err());
    }
}
