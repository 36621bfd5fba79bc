//! The only module that talks to Envoy: it reads the request, carries out the `Step`s the pure
//! `Gate` returns, and counts outcomes.
//!
//! It calls `proxy_wasm::hostcalls` directly rather than the SDK's trait helpers, because those
//! `unwrap()` host errors: here every failure is handled, and always by keeping the gate shut.

use std::rc::Rc;
use std::time::{Duration, SystemTime};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::config::Config;
use crate::gate::{Gate, RequestHead, Step};
use crate::metrics;
use crate::reply::{Outcome, Reply};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Plugin::default()) });
}}

/// Metric ids, defined once per plugin configuration.
struct Metrics {
    outcomes: [u32; metrics::ALL_OUTCOMES.len()],
    callout_duration: u32,
}

impl Metrics {
    fn define() -> Result<Metrics, String> {
        let mut outcomes = [0; metrics::ALL_OUTCOMES.len()];
        for (slot, outcome) in outcomes.iter_mut().zip(metrics::ALL_OUTCOMES) {
            let name = metrics::counter_name(outcome);
            *slot = hostcalls::define_metric(MetricType::Counter, name)
                .map_err(|status| format!("cannot define metric {name}: {status:?}"))?;
        }
        let callout_duration = hostcalls::define_metric(MetricType::Histogram, metrics::CALLOUT_DURATION)
            .map_err(|status| format!("cannot define metric {}: {status:?}", metrics::CALLOUT_DURATION))?;
        Ok(Metrics { outcomes, callout_duration })
    }

    fn count(&self, outcome: Outcome) {
        let index = metrics::ALL_OUTCOMES.iter().position(|o| *o == outcome);
        if let Some(id) = index.and_then(|i| self.outcomes.get(i)) {
            // A lost count must not change the answer.
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }
}

/// One per filter configuration (per listener): holds the validated configuration.
#[derive(Default)]
struct Plugin {
    shared: Option<Rc<Shared>>,
}

struct Shared {
    config: Config,
    metrics: Metrics,
}

impl Context for Plugin {}

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
        let metrics = match Metrics::define() {
            Ok(metrics) => metrics,
            Err(error) => {
                log::error!("metrics-gate: {error}");
                return false;
            }
        };
        self.shared = Some(Rc::new(Shared { config, metrics }));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a valid configuration Envoy never creates streams for this plugin; if it did,
        // returning None makes it fail the stream rather than skip the filter.
        let shared = Rc::clone(self.shared.as_ref()?);
        Some(Box::new(Request { shared, gate: Gate::default(), callout_started: None }))
    }
}

struct Request {
    shared: Rc<Shared>,
    gate: Gate,
    callout_started: Option<SystemTime>,
}

/// Where a step is carried out: in the header callback (answer with an `Action`) or in a callout
/// answer (resume the request ourselves).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Headers,
    CalloutAnswer,
}

impl Request {
    fn run(&mut self, step: Step, phase: Phase) -> Action {
        match step {
            Step::Reply(reply) => {
                self.reply(&reply);
                Action::Pause
            }
            Step::Call(callout) => {
                let config = &self.shared.config;
                let headers = vec![
                    (":method", "POST"),
                    (":path", callout.path),
                    (":authority", config.apiserver_authority.as_str()),
                    ("content-type", "application/json"),
                    ("accept", "application/json"),
                ];
                let timeout = Duration::from_millis(config.apiserver_timeout_ms);
                match hostcalls::dispatch_http_call(
                    &config.apiserver_cluster,
                    headers,
                    Some(&callout.body),
                    vec![],
                    timeout,
                ) {
                    Ok(_token) => {
                        self.callout_started = hostcalls::get_current_time().ok();
                        Action::Pause
                    }
                    Err(status) => {
                        let step = self.gate.on_dispatch_failed(&self.shared.config, &format!("{status:?}"));
                        self.run(step, phase)
                    }
                }
            }
            Step::Forward(forward) => {
                let edited = forward
                    .remove
                    .iter()
                    .try_for_each(|name| hostcalls::remove_map_value(MapType::HttpRequestHeaders, name))
                    .and_then(|()| {
                        forward.set.iter().try_for_each(|(name, value)| {
                            hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
                        })
                    });
                if let Err(status) = edited {
                    // The caller's credentials might still be on the request: do not let it pass.
                    let mut reply = Reply::apiserver_unavailable(self.shared.config.retry_after_seconds);
                    reply.log_detail = Some(format!("cannot edit request headers: {status:?}"));
                    self.reply(&reply);
                    return Action::Pause;
                }
                self.shared.metrics.count(Outcome::Allowed);
                match phase {
                    Phase::Headers => Action::Continue,
                    Phase::CalloutAnswer => {
                        if hostcalls::resume_http_request().is_err() {
                            let _ = hostcalls::reset_http_request();
                        }
                        Action::Pause
                    }
                }
            }
        }
    }

    fn reply(&self, reply: &Reply) {
        self.shared.metrics.count(reply.outcome);
        if let Some(detail) = &reply.log_detail {
            log::warn!("metrics-gate: answering {}: {detail}", reply.status);
        }
        let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        if hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes())).is_err() {
            // Could not answer: end the stream rather than let it continue upstream.
            let _ = hostcalls::reset_http_request();
        }
    }

    fn record_callout_duration(&mut self) {
        let (Some(started), Ok(now)) = (self.callout_started.take(), hostcalls::get_current_time()) else {
            return;
        };
        if let Ok(elapsed) = now.duration_since(started) {
            let millis = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            let _ = hostcalls::record_metric(self.shared.metrics.callout_duration, millis);
        }
    }
}

impl Context for Request {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        self.record_callout_duration();
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u16>().ok());
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let step = self.gate.on_review_answer(&self.shared.config, status, &body);
        self.run(step, Phase::CalloutAnswer);
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _count: usize, _end_of_stream: bool) -> Action {
        let headers = match hostcalls::get_map(MapType::HttpRequestHeaders) {
            Ok(headers) => headers,
            Err(status) => {
                let mut reply = Reply::apiserver_unavailable(self.shared.config.retry_after_seconds);
                reply.log_detail = Some(format!("cannot read request headers: {status:?}"));
                self.reply(&reply);
                return Action::Pause;
            }
        };
        #[cfg(feature = "fault-injection")]
        if headers.iter().any(|(name, value)| name == "x-metrics-gate-fault" && value == "trap") {
            // Test builds only: crash the VM mid-request, as a bug would.
            core::arch::wasm32::unreachable();
        }
        let find = |wanted: &str| {
            headers.iter().find(|(name, _)| name == wanted).map_or("", |(_, value)| value.as_str())
        };
        let head = RequestHead { method: find(":method"), path: find(":path"), headers: &headers };
        let step = self.gate.on_request(&self.shared.config, &head);
        self.run(step, Phase::Headers)
    }
}
