//! Races on one node: Envoy with two workers, every cache cold, 16 client threads firing about
//! 2,000 requests that mix the allowed scraper's tokens with refused identities (a valid token
//! without a binding → 403, garbage → 401, no token → 401), on two listeners, half of the
//! clients on keep-alive connections and half on a new connection per request.
//!
//! Every allowed request must get 200 and every refused one its status, whatever answer another
//! worker or another request is waiting for at that moment; the components must receive exactly
//! the allowed requests (each clean); and the apiserver must have been asked once per distinct
//! question (reviews are shared node-wide and coalesced).
//!
//! (A table of 2^20 cache slots keeps the 14 questions in distinct slots: with the default 8,192 a
//! collision is about 1% likely and would make one extra, legitimate review.)

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Barrier;
use std::time::Duration;

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::adversarial::{
    assert_forwarded_clean, connect, read_answers, vm_health, within,
};
use metrics_gate_host_tests::apiserver::{CallKind, Fault};
use metrics_gate_host_tests::envoy_process::EnvoyOptions;
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use metrics_gate_host_tests::tokens::{ServiceAccount, TokenOptions};
use serde_json::json;

const PRESETS: [Preset; 2] = [Preset::KubeProxy, Preset::KubeScheduler];
const THREADS: usize = 16;
const PER_THREAD: usize = 125;
/// Distinct tokens of each kind.
const VARIANTS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Allowed,
    Nobody,
    Garbage,
    NoToken,
}

impl Kind {
    fn expected(self) -> u16 {
        match self {
            Kind::Allowed => 200,
            Kind::Nobody => 403,
            Kind::Garbage | Kind::NoToken => 401,
        }
    }
}

/// A client that keeps its connection open across requests (and reconnects when Envoy closes it),
/// or opens a new one per request.
struct Client {
    addr: SocketAddr,
    keep_alive: bool,
    stream: Option<TcpStream>,
}

impl Client {
    fn get(&mut self, authorization: Option<&str>) -> Result<u16, String> {
        let mut request = String::from("GET /metrics HTTP/1.1\r\nHost: x\r\n");
        if let Some(auth) = authorization {
            request.push_str(&format!("Authorization: {auth}\r\n"));
        }
        if !self.keep_alive {
            request.push_str("Connection: close\r\n");
        }
        request.push_str("\r\n");
        for attempt in 0..2 {
            let stream = self.stream.get_or_insert_with(|| connect(self.addr));
            if stream.write_all(request.as_bytes()).is_ok() {
                let answer = read_answers(stream, 1, Duration::from_secs(20));
                if let Some(response) = answer.responses.first() {
                    let status = response.status;
                    if !self.keep_alive
                        || answer.closed
                        || response.header("connection") == Some("close")
                    {
                        self.stream = None;
                    }
                    return Ok(status);
                }
                // Closed before answering: an idle keep-alive connection Envoy let go of just
                // as we wrote. Once on a fresh connection; a second time is a failure.
                if !answer.closed || attempt == 1 {
                    return Err(answer.summary());
                }
            }
            self.stream = None;
        }
        Err("no answer on two connections".into())
    }
}

/// What one request was, where it went, and what it got.
type Outcome = (Kind, usize, Preset, Result<u16, String>);

#[test]
fn two_thousand_mixed_requests_on_two_workers_from_a_cold_cache() {
    let stack = LocalStack::start_with(StackOptions {
        presets: PRESETS.to_vec(),
        envoy: EnvoyOptions {
            concurrency: 2,
            ..Default::default()
        },
        // A table large enough that no two questions share a slot (see above).
        plugin_config: json!({"cache": {"max_entries": 1_048_576}}),
        ..Default::default()
    })
    .unwrap();
    let health = vm_health(&stack);
    // The first requests of every question arrive together and wait on each other's reviews.
    stack
        .apiserver
        .set_fault(Fault::Slow(Duration::from_millis(100)));
    let allowed: Vec<String> = (0..VARIANTS as i64)
        .map(|i| {
            stack.token(
                &ServiceAccount::prometheus_server(),
                TokenOptions::default().lifetime_secs(3000 + i),
            )
        })
        .collect();
    let nobody: Vec<String> = (0..VARIANTS as i64)
        .map(|i| {
            stack.token(
                &ServiceAccount::nobody(),
                TokenOptions::default().lifetime_secs(3000 + i),
            )
        })
        .collect();
    let garbage: Vec<String> = (0..VARIANTS)
        .map(|i| format!("garbage-{i}.abc.def"))
        .collect();
    let barrier = Barrier::new(THREADS);

    let results: Vec<Vec<Outcome>> = within(Duration::from_secs(120), "2,000 requests", || {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (stack, barrier, allowed, nobody, garbage) =
                        (&stack, &barrier, &allowed, &nobody, &garbage);
                    s.spawn(move || {
                        let mut clients: Vec<Client> = PRESETS
                            .iter()
                            .map(|p| Client {
                                addr: stack.addr(*p),
                                keep_alive: t % 2 == 0,
                                stream: None,
                            })
                            .collect();
                        barrier.wait();
                        (0..PER_THREAD)
                            .map(|i| {
                                let n = t * 7 + i * 3;
                                let kind =
                                    [Kind::Allowed, Kind::Nobody, Kind::Garbage, Kind::NoToken]
                                        [n % 4];
                                let variant = ((t * 5 + i) / 4) % VARIANTS;
                                let auth = match kind {
                                    Kind::Allowed => Some(format!("Bearer {}", allowed[variant])),
                                    Kind::Nobody => Some(format!("Bearer {}", nobody[variant])),
                                    Kind::Garbage => Some(format!("Bearer {}", garbage[variant])),
                                    Kind::NoToken => None,
                                };
                                let which = (t + i / 2) % PRESETS.len();
                                (
                                    kind,
                                    variant,
                                    PRESETS[which],
                                    clients[which].get(auth.as_deref()),
                                )
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    });

    let all: Vec<_> = results.into_iter().flatten().collect();
    assert_eq!(all.len(), THREADS * PER_THREAD);
    let wrong: Vec<String> = all
        .iter()
        .filter(|(kind, _, _, got)| got.as_ref().ok() != Some(&kind.expected()))
        .map(|(kind, variant, preset, got)| {
            format!("{kind:?} #{variant} on {}: {got:?}", preset.name())
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} requests got the wrong answer, e.g. {:?}",
        wrong.len(),
        all.len(),
        &wrong[..wrong.len().min(10)]
    );

    let count = |k: Kind| all.iter().filter(|(kind, _, _, _)| *kind == k).count();
    let per_preset = |p: Preset| {
        all.iter()
            .filter(|(kind, _, preset, _)| *kind == Kind::Allowed && *preset == p)
            .count()
    };
    let distinct = |k: Kind| {
        let mut v: Vec<usize> = all
            .iter()
            .filter(|(kind, _, _, _)| *kind == k)
            .map(|(_, v, _, _)| *v)
            .collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    assert_eq!(
        (
            distinct(Kind::Allowed),
            distinct(Kind::Nobody),
            distinct(Kind::Garbage)
        ),
        (VARIANTS, VARIANTS, VARIANTS),
        "the mix must use every token"
    );
    for preset in PRESETS {
        assert_eq!(
            stack.component(preset).count(),
            per_preset(preset),
            "{}: upstream requests != allowed requests",
            preset.name()
        );
        for seen in stack.component(preset).requests() {
            assert_eq!(seen.path_and_query, "/metrics");
            let secrets: Vec<&str> = allowed.iter().chain(&nobody).map(String::as_str).collect();
            assert_forwarded_clean(&stack, preset, &seen, &secrets, "race");
        }
    }
    assert_eq!(stack.upstream_requests(), count(Kind::Allowed));
    assert_eq!(
        stack.counter("wasmcustom.metrics_gate_requests_allowed"),
        count(Kind::Allowed) as u64
    );
    assert_eq!(
        stack.counter("wasmcustom.metrics_gate_requests_forbidden"),
        count(Kind::Nobody) as u64
    );
    assert_eq!(
        stack.counter("wasmcustom.metrics_gate_requests_unauthenticated"),
        (count(Kind::Garbage) + count(Kind::NoToken)) as u64
    );
    // One review per distinct question, node-wide: a TokenReview per token (12), a
    // SubjectAccessReview per identity (the four tokens of each ServiceAccount are one user: 2).
    assert_eq!(
        stack.apiserver.count(CallKind::TokenReview),
        3 * VARIANTS,
        "TokenReviews"
    );
    assert_eq!(
        stack.apiserver.count(CallKind::SubjectAccessReview),
        2,
        "SubjectAccessReviews"
    );
    assert_eq!(stack.counter("wasmcustom.metrics_gate_apiserver_errors"), 0);
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.metrics_gate_callouts_in_flight")
            .unwrap(),
        Some(0)
    );
    assert_eq!(vm_health(&stack), health, "the VM crashed or was reloaded");
    eprintln!(
        "{} requests: {} allowed, {} forbidden, {} unauthenticated; {} coalesced waits",
        all.len(),
        count(Kind::Allowed),
        count(Kind::Nobody),
        count(Kind::Garbage) + count(Kind::NoToken),
        stack.counter("wasmcustom.metrics_gate_coalesced_waits")
    );
}
