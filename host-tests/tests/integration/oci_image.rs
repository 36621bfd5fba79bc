//! The OCI image of the .wasm (`just oci`, `metrics_gate_host_tests::oci`) through a real registry:
//! Debian's `docker-registry` (the CNCF distribution registry) on loopback, pushed to and pulled
//! from with `skopeo`, as a release pipeline would. The registry must keep the image as built: the
//! digest it reports is the one `just oci` computed and pinned into the WasmPlugin, its one layer
//! is the compat variant Istio and Envoy Gateway read, and the `plugin.wasm` in it is the built
//! .wasm, byte for byte.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metrics_gate_host_tests::oci::{
    pin_wasmplugin, plugin_wasm_of_layer, sha256_hex, write_layout, LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE, VARIANT_ANNOTATION,
};
use metrics_gate_host_tests::raw_http;
use metrics_gate_host_tests::rbac::manifests_dir;
use metrics_gate_host_tests::stack::WasmBuild;
use serde_json::Value;

const REPOSITORY: &str = "metrics-gate";
const TAG: &str = "v0.1.0";

fn need(binary: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(binary);
    assert!(
        path.exists(),
        "{binary} is missing: run `just setup` (Debian: apt-get install docker-registry skopeo)"
    );
    path
}

/// `docker-registry serve` on a loopback port with its storage in a temporary directory; killed
/// when the test ends, however it ends.
struct Registry {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let binary = need("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let storage = dir.path().join("storage");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n", storage.display()),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut registry = Registry { child, addr, dir };
        // The distribution API's base endpoint answers 200 once the registry serves.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = raw_http::request(addr, "GET", "/v2/", &[]) {
                assert_eq!(r.status, 200, "{}", r.text());
                return registry;
            }
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("docker-registry exited ({status}):\n{}", registry.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not serve {addr}:\n{}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn image(&self) -> String {
        format!("{}/{REPOSITORY}:{TAG}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs skopeo; its stdout, or a failure with everything it said.
fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new(need("skopeo"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn the_image_pushed_to_a_registry_is_the_wasm_and_the_digest_the_wasmplugin_pins() {
    let wasm = std::fs::read(WasmBuild::Release.path().unwrap()).unwrap();
    let work = tempfile::tempdir().unwrap();

    // Built twice, the same bytes: the digest a WasmPlugin pins names this .wasm, not a build time.
    let image = write_layout(&wasm, &work.path().join("layout"), TAG).unwrap();
    let again = write_layout(&wasm, &work.path().join("again"), TAG).unwrap();
    assert_eq!(image.manifest_digest, again.manifest_digest);
    assert!(image.layer == again.layer, "the layer is not reproducible");

    let registry = Registry::start();
    let reference = format!("docker://{}", registry.image());
    let layout = format!("oci:{}:{TAG}", image.dir.display());
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &layout,
        &reference,
    ]);

    // What the registry says it holds: the digest computed before the push, and our one layer.
    let inspected: Value =
        serde_json::from_slice(&skopeo(&["inspect", "--tls-verify=false", &reference])).unwrap();
    assert_eq!(
        inspected["Digest"],
        format!("sha256:{}", image.manifest_digest),
        "{inspected:#}"
    );
    assert_eq!(
        inspected["Layers"],
        serde_json::json!([format!("sha256:{}", image.layer_digest)]),
        "{inspected:#}"
    );
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &reference]);
    assert_eq!(raw, image.manifest, "the registry rewrote the manifest");
    assert_eq!(sha256_hex(&raw), image.manifest_digest);
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        1,
        "the compat variant has one layer"
    );
    assert_eq!(manifest["layers"][0]["mediaType"], LAYER_MEDIA_TYPE);
    assert_eq!(
        manifest["annotations"][VARIANT_ANNOTATION.0],
        VARIANT_ANNOTATION.1
    );

    // Pulled back into a fresh layout: the layer blob is the one pushed, and the plugin.wasm that
    // Istio and Envoy Gateway take out of it is the built .wasm.
    let pulled = work.path().join("pulled");
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &reference,
        &format!("oci:{}:{TAG}", pulled.display()),
    ]);
    let blob = std::fs::read(pulled.join("blobs/sha256").join(&image.layer_digest)).unwrap();
    assert_eq!(sha256_hex(&blob), image.layer_digest);
    let plugin = plugin_wasm_of_layer(&blob).unwrap();
    assert!(
        plugin == wasm,
        "plugin.wasm in the pulled layer differs from the built .wasm ({} vs {} bytes)",
        plugin.len(),
        wasm.len()
    );

    // The WasmPlugin `just oci` writes for this image pins the registry's digest (the manifest's,
    // which Istio compares for oci:// URLs, not the .wasm's own sha256) and changes nothing else of
    // the shipped example.
    let example_path = manifests_dir().join("examples/istio/wasmplugin.yaml");
    let example = std::fs::read_to_string(&example_path).unwrap();
    let pinned: Value = serde_yaml_ng::from_str(
        &pin_wasmplugin(&example, &registry.image(), &image.manifest_digest).unwrap(),
    )
    .unwrap();
    let registry_digest = inspected["Digest"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap();
    assert_eq!(pinned["spec"]["sha256"], registry_digest);
    assert_ne!(
        pinned["spec"]["sha256"], image.wasm_sha256,
        "an oci:// URL is pinned by the image's digest"
    );
    assert_eq!(pinned["spec"]["url"], format!("oci://{}", registry.image()));
    let mut shipped: Value = serde_yaml_ng::from_str(&example).unwrap();
    let mut rest = pinned.clone();
    for v in [&mut shipped, &mut rest] {
        let spec = v["spec"].as_object_mut().unwrap();
        spec.remove("sha256");
        spec.remove("url");
    }
    assert_eq!(rest, shipped);
}
