//! The only code that talks to Envoy. `engine` carries requests through the pure `Gate`; `shared`
//! is the node-wide cache and callout cap in Envoy's shared data; this module holds the contexts
//! Envoy creates and the counters.
//!
//! It calls `proxy_wasm::hostcalls` directly rather than the SDK's trait helpers, because those
//! `unwrap()` host errors: here every failure is handled, and always by keeping the gate shut.

mod engine;
mod shared;

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::config::Config;
use crate::gate::RequestHead;
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
    in_flight: u32,
}

fn define(kind: MetricType, name: &str) -> Result<u32, String> {
    hostcalls::define_metric(kind, name)
        .map_err(|status| format!("cannot define metric {name}: {status:?}"))
}

impl Metrics {
    fn define() -> Result<Metrics, String> {
        let mut outcomes = [0; metrics::ALL_OUTCOMES.len()];
        for (slot, outcome) in outcomes.iter_mut().zip(metrics::ALL_OUTCOMES) {
            *slot = define(MetricType::Counter, metrics::counter_name(outcome))?;
        }
        Ok(Metrics {
            outcomes,
            callout_duration: define(MetricType::Histogram, metrics::CALLOUT_DURATION)?,
            cache_hits: define(MetricType::Counter, metrics::CACHE_HITS)?,
            cache_misses: define(MetricType::Counter, metrics::CACHE_MISSES)?,
            coalesced: define(MetricType::Counter, metrics::COALESCED_WAITS)?,
            evictions: define(MetricType::Counter, metrics::CACHE_EVICTIONS)?,
            cap_rejections: define(MetricType::Counter, metrics::CAP_REJECTIONS)?,
            in_flight: define(MetricType::Gauge, metrics::CALLOUTS_IN_FLIGHT)?,
        })
    }

    // A lost count must never change an answer: errors are ignored throughout.
    fn count(&self, outcome: Outcome) {
        let index = metrics::ALL_OUTCOMES.iter().position(|o| *o == outcome);
        if let Some(id) = index.and_then(|i| self.outcomes.get(i)) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }

    fn count_cache(&self, hit: bool) {
        let _ = hostcalls::increment_metric(
            if hit {
                self.cache_hits
            } else {
                self.cache_misses
            },
            1,
        );
    }

    fn count_coalesced(&self) {
        let _ = hostcalls::increment_metric(self.coalesced, 1);
    }

    fn count_eviction(&self) {
        let _ = hostcalls::increment_metric(self.evictions, 1);
    }

    fn count_cap_rejection(&self) {
        let _ = hostcalls::increment_metric(self.cap_rejections, 1);
    }

    fn callouts_in_flight(&self, delta: i64) {
        let _ = hostcalls::increment_metric(self.in_flight, delta);
    }

    fn record_callout_ms(&self, millis: u64) {
        let _ = hostcalls::record_metric(self.callout_duration, millis);
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
        let _ = hostcalls::set_effective_context(self.id);
    }
}

impl RootContext for Plugin {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(raw) => raw.unwrap_or_default(),
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
        let still_waiting = engine::poll_waiters();
        let _ = hostcalls::set_effective_context(self.id);
        if !still_waiting {
            let _ = hostcalls::set_tick_period(Duration::ZERO);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a valid configuration Envoy never creates streams for this plugin; if it did,
        // returning None makes it fail the stream rather than skip the filter.
        let shared = Rc::clone(self.shared.as_ref()?);
        Some(Box::new(Request { id, shared }))
    }
}

/// A request's handle; its state lives in `engine` so other contexts can move it on.
struct Request {
    id: u32,
    shared: Rc<Shared>,
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
        let mut state = RequestState::new(Rc::clone(&self.shared), engine::now_ms());
        let headers = match hostcalls::get_map(MapType::HttpRequestHeaders) {
            Ok(headers) => headers,
            Err(status) => {
                let mut reply =
                    Reply::apiserver_unavailable(self.shared.config.retry_after_seconds);
                reply.log_detail = Some(format!("cannot read request headers: {status:?}"));
                return verdict(engine::advance(
                    self.id,
                    state,
                    crate::gate::Step::Reply(reply),
                    Phase::Headers,
                ));
            }
        };
        #[cfg(feature = "fault-injection")]
        if headers
            .iter()
            .any(|(name, value)| name == "x-metrics-gate-fault" && value == "trap")
        {
            // Test builds only: crash the VM mid-request, as a bug would.
            core::arch::wasm32::unreachable();
        }
        let find = |wanted: &str| {
            headers
                .iter()
                .find(|(name, _)| name == wanted)
                .map_or("", |(_, v)| v.as_str())
        };
        // Only looked up when trusted: one host call less on every other request.
        let peer_subject = if self.shared.config.client_certificates {
            hostcalls::get_property(vec!["connection", "subject_peer_certificate"])
                .ok()
                .flatten()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .filter(|subject| !subject.is_empty())
        } else {
            None
        };
        let head = RequestHead {
            method: find(":method"),
            path: find(":path"),
            headers: &headers,
            peer_subject: peer_subject.as_deref(),
        };
        let step = state.gate.on_request(&self.shared.config, &head);
        verdict(engine::advance(self.id, state, step, Phase::Headers))
    }
}

fn verdict(v: Verdict) -> Action {
    match v {
        Verdict::Continue => Action::Continue,
        Verdict::Pause => Action::Pause,
    }
}
