//! `metrics-gate-oci`: builds the OCI image of metrics_gate.wasm that Istio's WasmPlugin and Envoy
//! Gateway pull (`oci://`), as an OCI image layout directory for `skopeo copy` to push, and a copy
//! of the WasmPlugin example pinned to that image's digest. `just oci` runs it; see
//! `metrics_gate_host_tests::oci` for the layout and why it is that one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use metrics_gate_host_tests::oci::{pin_wasmplugin, tag_of, write_layout};

/// Builds the OCI image of metrics_gate.wasm (Wasm image spec, compat variant) as an OCI image layout.
#[derive(Parser, Debug)]
#[command(name = "metrics-gate-oci")]
struct Cli {
    /// The filter's .wasm.
    #[arg(long, value_name = "FILE")]
    wasm: PathBuf,
    /// Where the image will be pushed, e.g. ghcr.io/you/metrics-gate:v0.1.0: its tag names the image
    /// in the layout, and the pinned WasmPlugin points at it.
    #[arg(long, value_name = "REGISTRY/NAME:TAG")]
    image: String,
    /// The OCI image layout directory to write (replaced if it holds one already).
    #[arg(long, value_name = "DIR")]
    layout: PathBuf,
    /// A WasmPlugin to pin to the image: its `url:` and `sha256:` lines are set and the result
    /// written to --pinned-wasmplugin.
    #[arg(long, value_name = "FILE", requires = "pinned_wasmplugin")]
    wasmplugin: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "wasmplugin")]
    pinned_wasmplugin: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metrics-gate-oci: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let wasm =
        std::fs::read(&cli.wasm).with_context(|| format!("reading {}", cli.wasm.display()))?;
    let tag = tag_of(&cli.image)?;
    let image = write_layout(&wasm, &cli.layout, tag)?;
    println!("image layout   {} (tag {tag})", cli.layout.display());
    println!(
        "image digest   sha256:{}  (a WasmPlugin's sha256 for oci://{})",
        image.manifest_digest, cli.image
    );
    println!(
        "wasm sha256    {}  (--wasm-sha256 for the .wasm served over HTTP(S))",
        image.wasm_sha256
    );
    if let (Some(template), Some(out)) = (&cli.wasmplugin, &cli.pinned_wasmplugin) {
        let text = std::fs::read_to_string(template)
            .with_context(|| format!("reading {}", template.display()))?;
        let pinned = pin_wasmplugin(&text, &cli.image, &image.manifest_digest)
            .with_context(|| template.display().to_string())?;
        std::fs::write(out, pinned).with_context(|| format!("writing {}", out.display()))?;
        println!("pinned         {}", out.display());
    }
    println!(
        "push with      skopeo copy oci:{}:{tag} docker://{}",
        cli.layout.display(),
        cli.image
    );
    Ok(())
}
