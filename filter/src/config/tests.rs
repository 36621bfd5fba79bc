//! The configuration's parsing and checks: defaults, every refusal and the field it names.

use super::*;
// Under wasm32-unknown-unknown the same tests run in Node.js through wasm-bindgen-test.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn err(json: &str) -> ConfigError {
    match Config::parse(json.as_bytes()) {
        Ok(c) => unreachable!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn empty_configuration_means_defaults() {
    for input in ["", "  ", "{}"] {
        let c = Config::parse(input.as_bytes()).unwrap();
        assert_eq!(c.allowed_paths, vec!["/metrics"]);
        assert_eq!(c.apiserver_cluster, DEFAULT_APISERVER_CLUSTER);
        assert_eq!(c.apiserver_timeout_ms, DEFAULT_TIMEOUT_MS);
        assert!(c.audiences.is_empty());
        assert!(c.resource_attributes.is_none());
        assert!(c.identity_headers.is_none());
        assert_eq!(c.cache, CacheConfig::default());
        assert_eq!(c.max_callouts_in_flight, DEFAULT_MAX_CALLOUTS_IN_FLIGHT);
        assert_eq!(c.max_reviews_per_second, DEFAULT_MAX_REVIEWS_PER_SECOND);
    }
}

#[test]
fn full_configuration_is_read() {
    let c = Config::parse(
        br#"{"apiserver":{"cluster":"api","authority":"kubernetes","timeout_ms":2000},
            "allowed_paths":["/metrics","/metrics/slis"],"audiences":["metrics-gate"],
            "authorization":{"resource_attributes":{"namespace":"kube-system","resource":"services","subresource":"proxy","name":"kube-scheduler"}},
            "identity_headers":{"enabled":true},"retry_after_seconds":2,"max_token_bytes":4096}"#,
    )
    .unwrap();
    assert_eq!(c.apiserver_cluster, "api");
    assert_eq!(c.allowed_paths.len(), 2);
    assert_eq!(c.resource_attributes.unwrap().subresource, "proxy");
    assert_eq!(c.identity_headers.unwrap().user, "x-remote-user");
    assert_eq!(c.max_token_bytes, 4096);
}

#[test]
fn unknown_fields_are_refused_with_their_name() {
    let e = err(r#"{"allowed_path":["/metrics"]}"#);
    assert_eq!(e.field, "configuration");
    assert!(e.problem.contains("unknown field `allowed_path`"), "{e}");
    assert!(err(r#"{"apiserver":{"clustr":"x"}}"#)
        .problem
        .contains("clustr"));
}

#[test]
fn bad_values_name_the_field() {
    assert_eq!(err(r#"{"allowed_paths":[]}"#).field, "allowed_paths");
    assert_eq!(
        err(r#"{"allowed_paths":["/metrics","metrics"]}"#).field,
        "allowed_paths[1]"
    );
    assert_eq!(
        err(r#"{"allowed_paths":["/metrics","/metrics"]}"#).field,
        "allowed_paths[1]"
    );
    for bad in [
        "/metrics?x",
        "/a//b",
        "/metrics/../x",
        "/%6detrics",
        "/metrics;x",
    ] {
        assert_eq!(
            err(&format!(r#"{{"allowed_paths":["{bad}"]}}"#)).field,
            "allowed_paths[0]",
            "{bad}"
        );
    }
    assert_eq!(
        err(r#"{"apiserver":{"timeout_ms":0}}"#).field,
        "apiserver.timeout_ms"
    );
    assert_eq!(
        err(r#"{"apiserver":{"cluster":""}}"#).field,
        "apiserver.cluster"
    );
    assert_eq!(err(r#"{"audiences":[""]}"#).field, "audiences[0]");
    assert_eq!(
        err(r#"{"authorization":{"resource_attributes":{"namespace":"x"}}}"#).field,
        "authorization.resource_attributes.resource"
    );
    assert_eq!(
        err(r#"{"identity_headers":{"enabled":true,"user":"X-Remote-User"}}"#).field,
        "identity_headers.user"
    );
    assert_eq!(
        err(r#"{"identity_headers":{"user":"x-user"}}"#).field,
        "identity_headers"
    );
    assert_eq!(
        err(r#"{"retry_after_seconds":0}"#).field,
        "retry_after_seconds"
    );
    assert_eq!(err(r#"{"max_token_bytes":1}"#).field, "max_token_bytes");
    assert_eq!(
        err(r#"{"cache":{"deny_ttl_seconds":100000}}"#).field,
        "cache.deny_ttl_seconds"
    );
    assert_eq!(
        err(r#"{"cache":{"max_entries":1}}"#).field,
        "cache.max_entries"
    );
    assert_eq!(
        err(r#"{"cache":{"stale_allow_seconds":86400}}"#).field,
        "cache.stale_allow_seconds"
    );
    assert!(err(r#"{"cache":{"ttl":1}}"#)
        .problem
        .contains("unknown field `ttl`"));
    assert_eq!(
        err(r#"{"max_callouts_in_flight":0}"#).field,
        "max_callouts_in_flight"
    );
    let over = err(r#"{"max_reviews_per_second":100001}"#);
    assert_eq!(over.field, "max_reviews_per_second");
    assert!(
        over.problem.contains("between 0 and 100000"),
        "{}",
        over.problem
    );
    assert_eq!(
        Config::parse(br#"{"max_reviews_per_second":0}"#)
            .unwrap()
            .max_reviews_per_second,
        0
    );
    assert_eq!(err("[1]").field, "configuration");
}

#[test]
fn the_error_reads_as_one_line() {
    let e = err(r#"{"allowed_paths":["metrics"]}"#);
    assert_eq!(
        e.to_string(),
        "invalid plugin configuration: allowed_paths[0]: must start with \"/\" (got \"metrics\")"
    );
}
