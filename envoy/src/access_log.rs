//! One JSON line per request on Envoy's stdout (the container log in the DaemonSet): Envoy's own
//! view of the request (status, path, timings, upstream) beside the filter's decision, which the
//! filter hands over as filter state (`metrics_gate::access_log`).
//!
//! Nothing here can carry a credential: no request header is logged but the method, path (without
//! its query, where a token could hide) and user agent; the user is the username the apiserver
//! answered, never the token; no client certificate field is logged.

use envoy_types::pb::envoy::config::accesslog::v3::{
    access_log, access_log_filter, AccessLog, AccessLogFilter, NotHealthCheckFilter,
};
use envoy_types::pb::envoy::config::core::v3::{
    substitution_format_string, SubstitutionFormatString,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    stdout_access_log, StdoutAccessLog,
};
use envoy_types::pb::google::protobuf::{value, Struct, Value};
use envoy_types::util::pack_any;

use metrics_gate::access_log as keys;

/// The log line's fields, in the order a reader wants them; `component` is the listener's.
fn fields(component: &str) -> Vec<(&'static str, String)> {
    let state = |key: &str| format!("%FILTER_STATE(wasm.{key}:PLAIN)%");
    vec![
        ("time", "%START_TIME%".into()),
        ("component", component.into()),
        ("client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%".into()),
        ("method", "%REQ(:METHOD)%".into()),
        ("path", "%PATH(NQ)%".into()),
        ("protocol", "%PROTOCOL%".into()),
        ("status", "%RESPONSE_CODE%".into()),
        ("decision", state(keys::DECISION)),
        ("reason", state(keys::REASON)),
        ("user", state(keys::USER)),
        ("cache", state(keys::CACHE)),
        ("review_ms", state(keys::REVIEW_MS)),
        ("upstream_host", "%UPSTREAM_HOST%".into()),
        // `via_upstream` when the status is the component's own answer.
        ("response_details", "%RESPONSE_CODE_DETAILS%".into()),
        ("duration_ms", "%DURATION%".into()),
        ("bytes_sent", "%BYTES_SENT%".into()),
        ("user_agent", "%REQ(USER-AGENT)%".into()),
    ]
}

/// The names of the line's fields (the tests and the docs check against them).
pub fn field_names() -> Vec<&'static str> {
    fields("").into_iter().map(|(name, _)| name).collect()
}

/// Envoy's stdout access log for the listener of `component`.
pub(crate) fn stdout_json(component: &str) -> AccessLog {
    let json = Struct {
        fields: fields(component)
            .into_iter()
            .map(|(name, format)| {
                let value = Value {
                    kind: Some(value::Kind::StringValue(format)),
                };
                (name.to_owned(), value)
            })
            .collect(),
    };
    let stdout = StdoutAccessLog {
        access_log_format: Some(stdout_access_log::AccessLogFormat::LogFormat(
            SubstitutionFormatString {
                format: Some(substitution_format_string::Format::JsonFormat(json)),
                ..Default::default()
            },
        )),
    };
    AccessLog {
        name: "envoy.access_loggers.stdout".into(),
        // The kubelet's probes of /ready (the gate's own listener answers them in its health
        // check filter) would be a line every few seconds that says nothing.
        filter: Some(AccessLogFilter {
            filter_specifier: Some(access_log_filter::FilterSpecifier::NotHealthCheckFilter(
                NotHealthCheckFilter {},
            )),
        }),
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(stdout))),
    }
}
