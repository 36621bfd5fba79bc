//! The only code that talks to Envoy. `engine` carries requests through the pure `Gate`; `shared`
//! is the node-wide cache and callout cap in Envoy's shared data; this module holds the contexts
//! Envoy creates and the counters.
//!
//! Host calls go through `abi` (bytes in, statuses out, nothing that can trap) rather than the
//! SDK's helpers, which `unwrap()` or `panic!`: here every failure is handled, and always by
//! keeping the gate shut. The SDK still provides the contexts and the callback dispatch.

mod abi;
mod engine;
mod shared;

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::config::Config;
use crate::gate::RequestHead;
use crate::header_map::HeaderMap;
use crate::metrics;
use crate::reply::{Outcome, Reply};
use engine::{Phase, RequestState, Verdict};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(Plugin { id, shared: None }) });
}}

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

/// One per filter configuration (per listener).
struct Plugin {
    id: u32,
    shared: Option<Rc<Shared>>,
}

impl Context for Plugin {
    // Callouts sent from the timer (for a request that waited) are answered here.
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        engine::on_callout_answer(token, body_size);
        let _ = abi::set_effective_context(self.id);
    }
}

impl RootContext for Plugin {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = match abi::buffer(abi::PLUGIN_CONFIGURATION, usize::MAX) {
            Ok(raw) => raw,
            Err(status) => {
                log::error!("metrics-gate: cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        let config = match Config::parse(&raw) {
            Ok(config) => config,
            Err(error) => {
                // Envoy refuses the configuration; this line is what the operator sees.
                log::error!("metrics-gate: {error}");
                return false;
            }
        };
        match Metrics::define() {
            Ok(metrics) => {
                self.shared = Some(Rc::new(Shared { config, metrics }));
                true
            }
            Err(error) => {
                log::error!("metrics-gate: {error}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let still_waiting = engine::on_tick();
        let _ = abi::set_effective_context(self.id);
        if !still_waiting {
            let _ = abi::set_tick_period(Duration::ZERO);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        // Never `None`: the SDK panics on it (a trap for the whole worker). Envoy creates no
        // streams for a configuration it refused; if it ever did, the request is refused below.
        Some(Box::new(Request {
            id,
            shared: self.shared.clone(),
        }))
    }
}

/// A request's handle; its state lives in `engine` so other contexts can move it on.
struct Request {
    id: u32,
    shared: Option<Rc<Shared>>,
}

impl Context for Request {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        engine::on_callout_answer(token, body_size);
    }

    fn on_done(&mut self) -> bool {
        engine::forget(self.id);
        true
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _count: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            engine::refuse_unconfigured();
            return Action::Pause;
        };
        let now = abi::now_ms();
        let mut state = RequestState::new(Rc::clone(&shared), now);
        let raw = match abi::header_map(abi::REQUEST_HEADERS) {
            Ok(raw) => raw,
            Err(status) => {
                let mut reply = Reply::apiserver_unavailable(shared.config.retry_after_seconds);
                reply.log_detail = Some(format!("cannot read request headers: {status:?}"));
                return verdict(engine::advance(
                    self.id,
                    state,
                    crate::gate::Step::Reply(reply),
                    Phase::Headers,
                ));
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
            abi::property(&["connection", "subject_peer_certificate"])
                .ok()
                .flatten()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .filter(|subject| !subject.is_empty())
        } else {
            None
        };
        let head = RequestHead {
            method: text(":method").unwrap_or(""),
            path: text(":path").unwrap_or(""),
            headers: &headers,
            peer_subject: peer_subject.as_deref(),
        };
        let step = state.gate.on_request(&shared.config, &head);
        verdict(engine::advance(self.id, state, step, Phase::Headers))
    }
}

fn verdict(v: Verdict) -> Action {
    match v {
        Verdict::Continue => Action::Continue,
        Verdict::Pause => Action::Pause,
    }
}
