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

/// Answers found in the node-wide cache.
pub const CACHE_HITS: &str = "metrics_gate_cache_hits";
/// Questions that had to go to the apiserver.
pub const CACHE_MISSES: &str = "metrics_gate_cache_misses";
/// Requests that waited for another request's identical review instead of asking again.
pub const COALESCED_WAITS: &str = "metrics_gate_coalesced_waits";
/// Live answers pushed out of their slot by a newer question.
pub const CACHE_EVICTIONS: &str = "metrics_gate_cache_evictions";
/// Requests refused because the node already had `max_callouts_in_flight` reviews under way.
pub const CAP_REJECTIONS: &str = "metrics_gate_callouts_rejected_cap";
/// Requests refused because the node had spent its `max_reviews_per_second`.
pub const RATE_REJECTIONS: &str = "metrics_gate_callouts_rejected_rate";
/// Allow answers served past their TTL while the apiserver could not be asked
/// (`cache.stale_allow_seconds`).
pub const STALE_ANSWERS: &str = "metrics_gate_stale_answers";
/// Gauge: reviews under way to the apiserver right now.
pub const CALLOUTS_IN_FLIGHT: &str = "metrics_gate_callouts_in_flight";
