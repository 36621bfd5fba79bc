//! The filter's own counters, as they appear in Envoy's `/stats/prometheus`.

use crate::reply::Outcome;

/// Counter names, one per outcome. Envoy shows them with its `wasmcustom` prefix.
pub const fn counter_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allowed => "metrics_gate_requests_allowed",
        Outcome::PathNotAllowed => "metrics_gate_requests_denied_path",
        Outcome::MethodNotAllowed => "metrics_gate_requests_denied_method",
        Outcome::Unauthenticated => "metrics_gate_requests_unauthenticated",
        Outcome::Forbidden => "metrics_gate_requests_forbidden",
        Outcome::ApiserverError => "metrics_gate_apiserver_errors",
    }
}

pub const ALL_OUTCOMES: [Outcome; 6] = [
    Outcome::Allowed,
    Outcome::PathNotAllowed,
    Outcome::MethodNotAllowed,
    Outcome::Unauthenticated,
    Outcome::Forbidden,
    Outcome::ApiserverError,
];

/// Histogram of TokenReview and SubjectAccessReview round trips, in milliseconds.
pub const CALLOUT_DURATION: &str = "metrics_gate_apiserver_callout_duration_ms";
