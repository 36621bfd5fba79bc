//! Every answer the soak gets, classified: expected (the gate did what it must under the fault or
//! probe of the moment) or not, and why; counted over the whole run and per sampling interval.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::client::Answer;

/// The filter's own 503 (apiserver trouble) starts with this; Envoy's own 503s do not.
pub const FILTER_503_PREFIX: &str = "503 Service Unavailable: the Kubernetes API";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The steady scraper with the current token.
    Scrape,
    /// A brand-new token during a fault episode: nothing cached, so 503.
    ProbeNewToken,
    /// A token just past its `exp`: 401, whatever was cached for it.
    ProbeExpiredToken,
}

#[derive(Debug, Clone)]
pub enum Result {
    Answer(Answer),
    /// Connection refused or reset, TLS failure, a broken answer.
    Transport(String),
    /// No answer within the client's deadline.
    Hung,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub kind: Kind,
    pub listener: &'static str,
    /// Seconds since the start of the soak.
    pub sent: f64,
    pub done: f64,
    pub expected_len: usize,
    pub result: Result,
}

/// A fault episode of the apiserver: `[start, end]`, `end` unknown while it lasts.
#[derive(Debug, Clone, Serialize)]
pub struct Episode {
    pub kind: &'static str,
    pub start: f64,
    pub end: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Scrapes sent (answered, failed or hung).
    pub requests: u64,
    /// Scrapes answered 200 with the component's whole body.
    pub ok: u64,
    /// Probe requests (new token during a fault, expired token).
    pub probes: u64,
    /// Every answer that is not an ok scrape, by status (`transport-error`, `hung` for no status).
    pub non_ok_by_status: BTreeMap<String, u64>,
    /// Expected non-200s by cause.
    pub expected: BTreeMap<String, u64>,
    /// Unexpected answers by cause (must stay empty).
    pub unexpected: BTreeMap<String, u64>,
    pub hung: u64,
    /// Response body bytes read.
    pub bytes: u64,
}

impl Counts {
    pub fn expected_total(&self) -> u64 {
        self.expected.values().sum()
    }
    pub fn unexpected_total(&self) -> u64 {
        self.unexpected.values().sum()
    }
}

/// One unexpected answer, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub t: f64,
    pub listener: &'static str,
    pub cause: String,
    pub detail: String,
}

pub struct Ledger {
    /// How long after an episode's end its 503s still count as its own (reviews that were under way
    /// or waited for when it ended: the filter's apiserver timeout plus a margin).
    pub grace: f64,
    pub episodes: Vec<Episode>,
    pub total: Counts,
    pub interval: Counts,
    interval_latencies_ms: Vec<f64>,
    pub examples: Vec<Example>,
    /// Reused keep-alive connections the server had closed just then: retried once on a new one.
    pub stale_retries: u64,
    /// Send slots skipped because a connection was still waiting for an earlier answer.
    pub missed_slots: u64,
    /// TLS handshakes by the fingerprint of the certificate Envoy presented.
    pub handshakes: BTreeMap<String, u64>,
}

/// Latency figures of one interval's scrapes (ms).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub fn fingerprint(der: &[u8]) -> String {
    let d = Sha256::digest(der);
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// A Kubernetes `Status` body from a component that checks callers itself (the gate's own 401 is
/// plain text with `WWW-Authenticate`).
fn component_status(listener: &str, a: &Answer) -> bool {
    matches!(listener, "kube-controller-manager" | "kube-scheduler")
        && a.body_head.trim_start().starts_with('{')
        && a.body_head.contains("\"Status\"")
}

impl Ledger {
    pub fn new(grace: f64) -> Self {
        Ledger {
            grace,
            episodes: Vec::new(),
            total: Counts::default(),
            interval: Counts::default(),
            interval_latencies_ms: Vec::new(),
            examples: Vec::new(),
            stale_retries: 0,
            missed_slots: 0,
            handshakes: BTreeMap::new(),
        }
    }

    /// Call before switching the fault on, so no answer it causes is seen before the episode.
    pub fn episode_starts(&mut self, kind: &'static str, t: f64) {
        self.episodes.push(Episode {
            kind,
            start: t,
            end: None,
        });
    }

    /// Call after switching the fault off.
    pub fn episode_ends(&mut self, t: f64) {
        if let Some(e) = self.episodes.last_mut() {
            e.end.get_or_insert(t);
        }
    }

    pub fn handshake(&mut self, cert_der: &[u8]) {
        *self.handshakes.entry(fingerprint(cert_der)).or_default() += 1;
    }

    /// The episode whose window (grace included) `[sent, done]` overlaps, if any.
    fn episode_overlapping(&self, sent: f64, done: f64) -> Option<&Episode> {
        self.episodes.iter().rev().find(|e| {
            let end = e.end.map_or(f64::INFINITY, |end| end + self.grace);
            sent <= end && done >= e.start
        })
    }

    /// Whether the fault of an episode was on during the whole of `[sent, done]`.
    fn fault_throughout(&self, sent: f64, done: f64) -> bool {
        self.episodes
            .iter()
            .any(|e| e.start <= sent && e.end.is_none_or(|end| done <= end))
    }

    /// `(cause, expected)` for an answer that is not an ok scrape; `None` for an ok scrape.
    fn classify(&self, o: &Outcome) -> Option<(String, bool)> {
        let episode = self.episode_overlapping(o.sent, o.done);
        let during = |e: &Episode| e.kind.to_string();
        match (&o.kind, &o.result) {
            (_, Result::Hung) => Some(("hung".into(), false)),
            (Kind::Scrape, Result::Transport(_)) => Some(("scrape_transport_error".into(), false)),
            (Kind::Scrape, Result::Answer(a)) => match a.status {
                200 if a.body_len == o.expected_len => None,
                200 => Some(("scrape_200_wrong_body_length".into(), false)),
                503 if a.body_head.starts_with(FILTER_503_PREFIX) => match episode {
                    Some(e) => Some((format!("scrape_503_during_{}", during(e)), true)),
                    None => Some(("scrape_503_apiserver_error_outside_faults".into(), false)),
                },
                503 => Some(("scrape_503_from_envoy".into(), false)),
                // kube-controller-manager and kube-scheduler check the proxy's own token themselves
                // (delegated TokenReview, cached 10 s): while the apiserver cannot be reached they
                // answer 401 to a scrape the gate let through. Their answer, passed on.
                401 if component_status(o.listener, a) => match episode {
                    Some(e) => Some((format!("scrape_401_from_component_during_{}", during(e)), true)),
                    None => Some(("scrape_401_from_component_outside_faults".into(), false)),
                },
                s => Some((format!("scrape_{s}"), false)),
            },
            (Kind::ProbeNewToken, Result::Answer(a)) => match (a.status, episode) {
                (503, Some(e)) if a.body_head.starts_with(FILTER_503_PREFIX) => {
                    Some((format!("probe_new_token_503_during_{}", during(e)), true))
                }
                // Answered once the episode was over: the review went through, as it should.
                (200, _) if !self.fault_throughout(o.sent, o.done) && a.body_len == o.expected_len => {
                    Some(("probe_new_token_200_as_episode_ended".into(), true))
                }
                (s, _) => Some((format!("probe_new_token_{s}"), false)),
            },
            (Kind::ProbeExpiredToken, Result::Answer(a)) => match a.status {
                401 => Some(("probe_expired_token_401".into(), true)),
                s => Some((format!("probe_expired_token_{s}"), false)),
            },
            (_, Result::Transport(_)) => Some(("probe_transport_error".into(), false)),
        }
    }

    pub fn record(&mut self, o: Outcome) {
        let verdict = self.classify(&o);
        let status_key = match &o.result {
            Result::Answer(a) => a.status.to_string(),
            Result::Transport(_) => "transport-error".into(),
            Result::Hung => "hung".into(),
        };
        let bytes = match &o.result {
            Result::Answer(a) => a.body_len as u64,
            _ => 0,
        };
        if o.kind == Kind::Scrape {
            self.interval_latencies_ms.push((o.done - o.sent) * 1e3);
        }
        for c in [&mut self.total, &mut self.interval] {
            if o.kind == Kind::Scrape {
                c.requests += 1;
            } else {
                c.probes += 1;
            }
            c.bytes += bytes;
            match &verdict {
                None => c.ok += 1,
                Some((cause, expected)) => {
                    *c.non_ok_by_status.entry(status_key.clone()).or_default() += 1;
                    let map = if *expected { &mut c.expected } else { &mut c.unexpected };
                    *map.entry(cause.clone()).or_default() += 1;
                    if matches!(o.result, Result::Hung) {
                        c.hung += 1;
                    }
                }
            }
        }
        if let Some((cause, false)) = &verdict {
            if self.examples.len() < 50 {
                let detail = match &o.result {
                    Result::Answer(a) => format!(
                        "status {} after {:.0} ms, {} body bytes (expected {}), retry-after {}: {:?}",
                        a.status,
                        (o.done - o.sent) * 1e3,
                        a.body_len,
                        o.expected_len,
                        a.retry_after,
                        a.body_head.chars().take(160).collect::<String>()
                    ),
                    Result::Transport(e) => format!("after {:.0} ms: {e}", (o.done - o.sent) * 1e3),
                    Result::Hung => format!("sent at {:.1} s, no answer", o.sent),
                };
                self.examples.push(Example {
                    t: o.sent,
                    listener: o.listener,
                    cause: cause.clone(),
                    detail,
                });
            }
        }
    }

    /// The interval's counts and scrape latencies; starts a new interval.
    pub fn take_interval(&mut self) -> (Counts, Latency) {
        let counts = std::mem::take(&mut self.interval);
        let mut l = std::mem::take(&mut self.interval_latencies_ms);
        l.sort_by(|a, b| a.total_cmp(b));
        let pick = |q: f64| {
            if l.is_empty() {
                0.0
            } else {
                l[((l.len() - 1) as f64 * q).round() as usize]
            }
        };
        let latency = Latency {
            p50_ms: pick(0.5),
            p99_ms: pick(0.99),
            max_ms: l.last().copied().unwrap_or(0.0),
        };
        (counts, latency)
    }
}
