//! The only code that talks to Envoy. `exports` is what Envoy calls (the proxy-wasm ABI's
//! `proxy_on_*` functions) and the contexts they name; `abi` is what the filter calls in Envoy;
//! `engine` carries requests through the pure `Gate`; `shared` is the node-wide cache, review
//! budget and callout cap in Envoy's shared data; this module configures a plugin, starts a
//! request, and holds the counters.
//!
//! No proxy-wasm SDK: both directions of the ABI are written here, bytes in, statuses out, with
//! nothing that can trap. The SDK's helpers `unwrap()` or `panic!` on host input (a header value
//! such as `caf\xE9` once stopped every listener of a worker), its dispatcher panics on context
//! ids and callout tokens it does not know, and it was an eighth of the .wasm, which ships in a
//! ConfigMap (docs/reliability.md).

mod abi;
mod engine;
mod exports;
mod memo;
mod shared;

use std::rc::Rc;

use crate::config::Config;
use crate::gate::RequestHead;
use crate::header_map::HeaderMap;
use crate::metrics;
use crate::reply::{Outcome, Reply};
use engine::{Phase, RequestState, Verdict};

/// A line in Envoy's log (errors are what the operator sees when a configuration is refused).
fn log(level: u32, message: &str) {
    // A lost log line must never change an answer.
    let _ = abi::log(level, message);
}

/// Metric ids, defined once per plugin configuration.
struct Metrics {
    outcomes: [u32; metrics::ALL_OUTCOMES.len()],
    callout_duration: u32,
    cache_hits: u32,
    cache_misses: u32,
    coalesced: u32,
    evictions: u32,
    cap_rejections: u32,
    rate_rejections: u32,
    stale: u32,
    in_flight: u32,
}

fn define(kind: u32, name: &str) -> Result<u32, String> {
    abi::define_metric(kind, name)
        .map_err(|status| format!("cannot define metric {name}: {status:?}"))
}

impl Metrics {
    fn define() -> Result<Metrics, String> {
        let mut outcomes = [0; metrics::ALL_OUTCOMES.len()];
        for (slot, outcome) in outcomes.iter_mut().zip(metrics::ALL_OUTCOMES) {
            *slot = define(abi::COUNTER, metrics::counter_name(outcome))?;
        }
        Ok(Metrics {
            outcomes,
            callout_duration: define(abi::HISTOGRAM, metrics::CALLOUT_DURATION)?,
            cache_hits: define(abi::COUNTER, metrics::CACHE_HITS)?,
            cache_misses: define(abi::COUNTER, metrics::CACHE_MISSES)?,
            coalesced: define(abi::COUNTER, metrics::COALESCED_WAITS)?,
            evictions: define(abi::COUNTER, metrics::CACHE_EVICTIONS)?,
            cap_rejections: define(abi::COUNTER, metrics::CAP_REJECTIONS)?,
            rate_rejections: define(abi::COUNTER, metrics::RATE_REJECTIONS)?,
            stale: define(abi::COUNTER, metrics::STALE_ANSWERS)?,
            in_flight: define(abi::GAUGE, metrics::CALLOUTS_IN_FLIGHT)?,
        })
    }

    // A lost count must never change an answer: errors are ignored throughout.
    fn count(&self, outcome: Outcome) {
        let index = metrics::ALL_OUTCOMES.iter().position(|o| *o == outcome);
        if let Some(id) = index.and_then(|i| self.outcomes.get(i)) {
            let _ = abi::increment_metric(*id, 1);
        }
    }

    fn count_cache(&self, hit: bool) {
        let _ = abi::increment_metric(
            if hit {
                self.cache_hits
            } else {
                self.cache_misses
            },
            1,
        );
    }

    fn count_coalesced(&self) {
        let _ = abi::increment_metric(self.coalesced, 1);
    }

    fn count_eviction(&self) {
        let _ = abi::increment_metric(self.evictions, 1);
    }

    fn count_cap_rejection(&self) {
        let _ = abi::increment_metric(self.cap_rejections, 1);
    }

    fn count_rate_rejection(&self) {
        let _ = abi::increment_metric(self.rate_rejections, 1);
    }

    fn count_stale(&self) {
        let _ = abi::increment_metric(self.stale, 1);
    }

    fn callouts_in_flight(&self, delta: i64) {
        let _ = abi::increment_metric(self.in_flight, delta);
    }

    fn record_callout_ms(&self, millis: u64) {
        let _ = abi::record_metric(self.callout_duration, millis);
    }
}

/// What every request of one plugin configuration shares.
struct Shared {
    config: Config,
    metrics: Metrics,
}

/// Reads and checks the plugin configuration of one listener and defines the counters; `None`
/// when Envoy must refuse the configuration (the reason is logged, one line).
fn configure() -> Option<Rc<Shared>> {
    let raw = match abi::buffer(abi::PLUGIN_CONFIGURATION, usize::MAX) {
        Ok(raw) => raw,
        Err(status) => {
            log(
                abi::LOG_ERROR,
                &format!("metrics-gate: cannot read the plugin configuration: {status:?}"),
            );
            return None;
        }
    };
    let config = match Config::parse(&raw) {
        Ok(config) => config,
        Err(error) => {
            // Envoy refuses the configuration; this line is what the operator sees.
            log(abi::LOG_ERROR, &format!("metrics-gate: {error}"));
            return None;
        }
    };
    match Metrics::define() {
        Ok(metrics) => Some(Rc::new(Shared { config, metrics })),
        Err(error) => {
            log(abi::LOG_ERROR, &format!("metrics-gate: {error}"));
            None
        }
    }
}

/// A request's headers have arrived (stream `id`, of a plugin configured as `shared`, if it was).
/// `sub` of the payload `jwt_authn` puts in the request's dynamic metadata (provider setting
/// `payload_in_metadata: kubernetes`, which the renderer writes).
const VERIFIED_SUBJECT: &str =
    "metadata\0filter_metadata\0envoy.filters.http.jwt_authn\0kubernetes\0sub";

fn request_headers(id: u32, shared: Option<Rc<Shared>>) -> Verdict {
    let Some(shared) = shared else {
        // Envoy creates no streams for a configuration it refused; if it ever did, refuse them.
        engine::refuse_unconfigured();
        return Verdict::Pause;
    };
    let now = abi::now_ms();
    let mut state = RequestState::new(Rc::clone(&shared), now);
    let raw = match abi::header_map(abi::REQUEST_HEADERS) {
        Ok(raw) => raw,
        Err(status) => {
            let mut reply = Reply::apiserver_unavailable(shared.config.retry_after_seconds);
            reply.log_detail = Some(format!("cannot read request headers: {status:?}"));
            return engine::advance(id, state, crate::gate::Step::Reply(reply), Phase::Headers);
        }
    };
    let map = HeaderMap::parse(&raw);
    let headers: Vec<(&[u8], &[u8])> = map.iter().collect();
    #[cfg(feature = "fault-injection")]
    if headers
        .iter()
        .any(|(name, value)| *name == b"x-metrics-gate-fault" && *value == b"trap")
    {
        // Test builds only: crash the VM mid-request, as a bug would.
        core::arch::wasm32::unreachable();
    }
    // A pseudo-header that is not UTF-8 matches no allowed path or method: 404 / 405.
    let text = |name: &str| map.get(name).and_then(|v| std::str::from_utf8(v).ok());
    // Only looked up when trusted: one host call less on every other request.
    let peer_subject = if shared.config.client_certificates {
        abi::property("connection\0subject_peer_certificate")
            .ok()
            .flatten()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|subject| !subject.is_empty())
    } else {
        None
    };
    // What `jwt_authn` verified (its payload, in the dynamic metadata it alone writes).
    let verified_subject = if shared.config.local_token_verification {
        abi::property(VERIFIED_SUBJECT)
            .ok()
            .flatten()
            .and_then(|bytes| String::from_utf8(bytes).ok())
    } else {
        None
    };
    let head = RequestHead {
        method: text(":method").unwrap_or(""),
        path: text(":path").unwrap_or(""),
        headers: &headers,
        peer_subject: peer_subject.as_deref(),
        verified_subject: verified_subject.as_deref(),
    };
    let step = state.gate.on_request(&shared.config, &head);
    engine::advance(id, state, step, Phase::Headers)
}
