//! The filter's code fetched by Envoy over HTTP(S) and pinned by its sha256 (Envoy's remote code
//! source), instead of a local file: `vm_config.code.remote` and the cluster it is fetched through.
//!
//! What Envoy 1.40 does with it (the integration test `wasm_by_digest` runs it): it fetches the
//! module while it starts, before its listeners serve, and compares the sha256 of what it got with
//! the pinned one. On a mismatch (or when the server cannot be reached) it retries a few times,
//! then logs `Retry limit exceeded for fetching data from remote data source.` and `Plugin
//! metrics-gate failed to load`, starts its listeners anyway, and every request on a gated listener
//! is answered 503 by the fail-closed plugin: nothing reaches a component unchecked. (With
//! `FAIL_OPEN` Envoy would skip the missing plugin and forward every request: the failure policy
//! in `render.rs` is what keeps the gate shut.) Envoy does not fetch again later; a restart does.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    async_data_source, http_uri, AsyncDataSource, BackoffStrategy, HttpUri, RemoteDataSource,
    RetryPolicy,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use crate::model::{InvalidStack, RemoteWasm};
use crate::render::{duration, host_cluster, upstream_tls};

/// The cluster Envoy fetches the .wasm through; no request of a caller is ever routed to it.
pub const WASM_CODE_CLUSTER: &str = "metrics-gate-wasm-code";
/// One fetch of the .wasm (a few hundred kilobytes).
const FETCH_TIMEOUT_MS: u32 = 10_000;
/// Retries after a failed fetch or a wrong digest: a server that is still starting (a pod beside the
/// DaemonSet's) gets a few seconds; a wrong digest stays wrong and only delays the 503s.
const FETCH_RETRIES: u32 = 3;
const RETRY_BASE_MS: u32 = 500;
const RETRY_MAX_MS: u32 = 4_000;

/// The parts of the URL the cluster needs.
#[derive(Debug, PartialEq, Eq)]
struct Location {
    https: bool,
    host: String,
    port: u16,
}

fn locate(url: &str) -> Result<Location, String> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err("want an http:// or https:// URL".into());
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("white space in the URL".into());
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if path.len() < 2 {
        return Err("the URL names no file (want a path such as /metrics_gate.wasm)".into());
    }
    if authority.contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    let default_port = if https { 443 } else { 80 };
    // [v6]:port, [v6], host:port or host.
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed '[' in the host")?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("unexpected {after:?} after the host")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or(format!("port {p:?} is not a port number"))?,
        None => default_port,
    };
    Ok(Location {
        https,
        host: host.into(),
        port,
    })
}

/// Refuses what Envoy would refuse later (or worse, accept and never match).
pub(crate) fn check(remote: &RemoteWasm) -> Result<(), InvalidStack> {
    locate(&remote.url).map_err(|e| InvalidStack(format!("wasm URL {:?}: {e}", remote.url)))?;
    // Envoy compares lowercase hex: an uppercase digest would never match, and the gate would
    // answer 503 for good.
    let hex = remote.sha256.len() == 64
        && remote
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        return Err(InvalidStack(format!(
            "wasm sha256 {:?}: want 64 lowercase hex digits (sha256sum metrics_gate.wasm)",
            remote.sha256
        )));
    }
    if locate(&remote.url).is_ok_and(|l| l.https) && remote.ca_file.is_empty() {
        return Err(InvalidStack(
            "an https wasm URL needs a CA file to verify the server with".into(),
        ));
    }
    Ok(())
}

/// `vm_config.code` for the remote module.
pub(crate) fn code_source(remote: &RemoteWasm) -> AsyncDataSource {
    AsyncDataSource {
        specifier: Some(async_data_source::Specifier::Remote(RemoteDataSource {
            http_uri: Some(HttpUri {
                uri: remote.url.clone(),
                timeout: Some(duration(FETCH_TIMEOUT_MS)),
                http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(
                    WASM_CODE_CLUSTER.into(),
                )),
            }),
            sha256: remote.sha256.clone(),
            retry_policy: Some(RetryPolicy {
                retry_back_off: Some(BackoffStrategy {
                    base_interval: Some(duration(RETRY_BASE_MS)),
                    max_interval: Some(duration(RETRY_MAX_MS)),
                }),
                num_retries: Some(UInt32Value {
                    value: FETCH_RETRIES,
                }),
                ..Default::default()
            }),
        })),
    }
}

/// The server of the URL: STATIC for an IP, STRICT_DNS for a name; TLS verified against the CA file
/// with the host as SNI and as the SAN to match for `https://`.
pub(crate) fn cluster(remote: &RemoteWasm) -> Cluster {
    // `check` has refused bad URLs; an unchecked stack still renders (Envoy then refuses it).
    let loc = locate(&remote.url).unwrap_or(Location {
        https: false,
        host: String::new(),
        port: 0,
    });
    let tls = loc
        .https
        .then(|| upstream_tls(Some((&remote.ca_file, &loc.host)), &loc.host));
    host_cluster(WASM_CODE_CLUSTER, &loc.host, loc.port, tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(url: &str, sha256: &str) -> RemoteWasm {
        RemoteWasm {
            url: url.into(),
            sha256: sha256.into(),
            ca_file: crate::model::SYSTEM_CA_BUNDLE.into(),
        }
    }

    const SHA: &str = "e677df5339883c68e1d73dba0e7200dd7cf8bc213ee3be2bee07ae4ed29c6808";

    #[test]
    fn urls_are_split_into_scheme_host_and_port() {
        let l = |u: &str| locate(u).unwrap();
        assert_eq!(
            l("https://wasm.example.com/m.wasm"),
            Location {
                https: true,
                host: "wasm.example.com".into(),
                port: 443
            }
        );
        assert_eq!(l("http://127.0.0.1:8080/a/b.wasm").port, 8080);
        assert_eq!(l("http://127.0.0.1/a.wasm").port, 80);
        let v6 = l("https://[::1]:8443/m.wasm");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8443));
        for bad in [
            "ftp://h/m.wasm",
            "http://h",
            "http://h/",
            "http:///m.wasm",
            "http://u:p@h/m.wasm",
            "http://h:0/m.wasm",
            "http://h:99999/m.wasm",
            "http://[::1/m.wasm",
            "http://h/m wasm",
        ] {
            assert!(locate(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn the_digest_must_be_lowercase_hex_of_sha256_length() {
        assert!(check(&remote("http://h/m.wasm", SHA)).is_ok());
        for bad in [
            "",
            &SHA[..63],
            &SHA.to_uppercase(),
            &format!("sha256:{SHA}"),
            &format!("{}g", &SHA[..63]),
        ] {
            let e = check(&remote("http://h/m.wasm", bad)).unwrap_err();
            assert!(e.0.contains("sha256"), "{e}");
        }
        let mut no_ca = remote("https://h/m.wasm", SHA);
        no_ca.ca_file.clear();
        assert!(check(&no_ca).is_err());
    }
}
