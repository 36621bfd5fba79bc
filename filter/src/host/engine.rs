//! Carries requests through the gate: every request's state lives here, per VM (one per worker
//! thread), so that whichever callback arrives — the request's own headers, an apiserver answer, or
//! the root context's timer for requests waiting on another request's review — can move it on.
//!
//! State is taken out of the table while a request is worked on and put back only if it still
//! waits: host calls such as `resume_http_request` may re-enter the VM (a local reply finishing the
//! stream), and nothing may be borrowed then.

use crate::text::quoted;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use super::abi;
use super::memo;
use super::shared::{self, CalloutLease, Slot};
use super::Shared;
use crate::access_log::CacheUse;
use crate::cache::{self, Lookup, Record};
use crate::gate::{Callout, Gate, Step};
use crate::header_map;
use crate::reply::{Outcome, Reply};
use crate::review::{Answer, ApiserverTrouble};

/// How often the timer runs while any request is paused: requests waiting on another request's
/// review look for its answer, and any request past its deadline is answered.
pub const WAIT_POLL: Duration = Duration::from_millis(10);

/// How long a request refused by the node's review budget is held before its 503. A caller
/// sending bogus tokens as fast as it is answered (one request per connection at a time) is then
/// slowed to one request per second per connection, and the worker's CPU stays with the callers
/// whose answers are cached; the apiserver is protected by the budget either way.
pub const REFUSED_HOLD_MS: u64 = 1_000;

/// At most this many refused requests are held per VM; past it they are answered at once (the
/// held ones are scanned by every tick, and an HTTP/2 caller can open many streams).
const MAX_HELD: usize = 1_024;

/// Where a step is carried out: in the request's header callback (answer with continue/pause) or
/// later, from a callout answer or the timer (resume or answer the request ourselves).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Headers,
    Later,
}

/// What the header callback should tell Envoy.
pub enum Verdict {
    Continue,
    Pause,
}

pub struct RequestState {
    pub shared: Rc<Shared>,
    pub gate: Gate,
    /// The review being asked (or waited for), and when the request arrived.
    pending: Option<Callout>,
    now_ms: u64,
    /// When the request reached the filter (its access-log entry's `review_ms` counts from here).
    arrived_ms: u64,
    waiting_since_ms: Option<u64>,
    /// This request claimed the question's slot (and must release it if it goes away).
    owns_slot: bool,
    /// The slot of the question it asks (of the two a question may use): its answer goes there.
    slot_key: String,
    lease: Option<CalloutLease>,
    /// When the question it is paused on must have been answered; past it the timer answers 503.
    deadline_ms: u64,
    /// An expired allow for the current question that may stand in, until the time given, if the
    /// apiserver cannot be asked (`cache.stale_allow_seconds`).
    stale: Option<(Answer, u64)>,
    /// The expired answer the claimed slot held (see `Record::Pending::kept`), written back with
    /// a failure.
    kept: Vec<u8>,
    /// Refused by the review budget and held until `deadline_ms` (see `REFUSED_HOLD_MS`): why.
    held: Option<ApiserverTrouble>,
}

impl RequestState {
    pub fn new(shared: Rc<Shared>, now_ms: u64) -> RequestState {
        RequestState {
            shared,
            gate: Gate::default(),
            pending: None,
            now_ms,
            arrived_ms: now_ms,
            waiting_since_ms: None,
            owns_slot: false,
            slot_key: String::new(),
            lease: None,
            deadline_ms: u64::MAX,
            stale: None,
            kept: Vec::new(),
            held: None,
        }
    }
}

thread_local! {
    static REQUESTS: RefCell<Vec<(u32, RequestState)>> = const { RefCell::new(Vec::new()) };
    /// Callout token → the request it asks for.
    static CALLOUTS: RefCell<Vec<(u32, u32)>> = const { RefCell::new(Vec::new()) };
    /// Requests waiting on another request's review.
    static WAITERS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// The tables hold only requests waiting on a review (a few at a time, bounded by the callout cap
/// and by coalescing): a vector is smaller in the .wasm than a hash map and as fast at that size.
fn remove_entry<V>(table: &mut Vec<(u32, V)>, key: u32) -> Option<V> {
    let index = table.iter().position(|(k, _)| *k == key)?;
    Some(table.swap_remove(index).1)
}

/// Pauses request `id`. The timer is armed on every pause, so nothing paused goes unwatched: the
/// tick moves waiters on and answers whatever is past its deadline (see `on_tick`).
fn park(id: u32, state: RequestState) {
    REQUESTS.with(|r| r.borrow_mut().push((id, state)));
    let _ = abi::set_tick_period(WAIT_POLL);
}

fn take(id: u32) -> Option<RequestState> {
    REQUESTS.with(|r| remove_entry(&mut r.borrow_mut(), id))
}

/// Moves request `id` on from `step` until it is answered, forwarded, or waits.
pub fn advance(id: u32, mut state: RequestState, mut step: Step, phase: Phase) -> Verdict {
    // Bounded: a request asks two questions at most, each at most a few times around this loop.
    for _ in 0..8 {
        step = match step {
            Step::Reply(reply) => {
                hand_to_access_log(&state, reply.outcome);
                send_reply(&state.shared, &reply);
                return Verdict::Pause;
            }
            Step::Forward(forward) => {
                hand_to_access_log(&state, Outcome::Allowed);
                return forward_request(&state.shared, forward, phase);
            }
            Step::Call(callout) => match ask(id, &mut state, callout) {
                Asked::Answer(answer) => {
                    let answer = or_stale(&mut state, answer);
                    state.gate.on_answer(&state.shared.config, answer)
                }
                Asked::Waiting => {
                    park(id, state);
                    return Verdict::Pause;
                }
                // Held, unless an expired allow may stand in (it answers now) or too many are.
                Asked::Refused(trouble) if state.stale.is_none() && held_count() < MAX_HELD => {
                    state.held = Some(trouble);
                    state.deadline_ms = abi::now_ms().saturating_add(REFUSED_HOLD_MS);
                    park(id, state);
                    return Verdict::Pause;
                }
                Asked::Refused(trouble) => {
                    let answer = or_stale(&mut state, Err(trouble));
                    state.gate.on_answer(&state.shared.config, answer)
                }
            },
        };
    }
    let detail = "too many steps for one request".to_owned();
    let step = state.gate.trouble(&state.shared.config, detail);
    if let Step::Reply(reply) = step {
        hand_to_access_log(&state, reply.outcome);
        send_reply(&state.shared, &reply);
    }
    Verdict::Pause
}

/// The decision, for Envoy's access log (filter state; see `access_log`). Set before the reply or
/// the forward, while the stream is certainly there; a host that refuses is not worth failing
/// the request over.
fn hand_to_access_log(state: &RequestState, outcome: Outcome) {
    if !state.shared.config.access_log {
        return;
    }
    let entry = &state.gate.entry;
    let review_ms = matches!(entry.cache, CacheUse::Miss | CacheUse::Coalesced)
        .then(|| abi::now_ms().saturating_sub(state.arrived_ms));
    entry.each_property(outcome, review_ms, |key, value| {
        let _ = abi::set_property(key, value);
    });
}

enum Asked {
    /// Known now (cache hit, or a failure): go on.
    Answer(Result<Answer, ApiserverTrouble>),
    /// The request must wait (for its own callout or someone else's).
    Waiting,
    /// The node's review budget is spent: answered 503 after a hold (see `REFUSED_HOLD_MS`).
    Refused(ApiserverTrouble),
}

fn held_count() -> usize {
    REQUESTS.with(|r| r.borrow().iter().filter(|(_, s)| s.held.is_some()).count())
}

/// Gets the answer to `callout`: from the cache, by waiting for whoever asks already, or by asking.
fn ask(id: u32, state: &mut RequestState, callout: Callout) -> Asked {
    let shared = Rc::clone(&state.shared);
    let config = &shared.config;
    let max = config.cache.max_entries;
    let now = abi::now_ms();
    let stale_ms = u64::from(config.cache.stale_allow_seconds).saturating_mul(1000);
    state.stale = None;
    // A copy in this VM, fresh for this listener: no shared data to copy and decode.
    if let Some((answer, stored_ms)) = memo::get(callout.table, &callout.key, now) {
        if cache::fresh_for_reader(stored_ms, callout.ttl_seconds(config, &answer), now) {
            shared.metrics.count_cache(true);
            state.gate.entry.cache = state.gate.entry.cache.and(CacheUse::Hit);
            state.waiting_since_ms = None;
            return Asked::Answer(Ok(answer));
        }
    }
    // Two rounds: a lost race for the slot is settled by reading it again.
    for _ in 0..2 {
        let slot = Slot::find(callout.table, &callout.key, max, now);
        if stale_ms > 0 {
            state.stale = slot
                .stale(&callout.key, now, stale_ms)
                .and_then(|(bytes, until)| {
                    let answer = Answer::decode(callout.table, &bytes)?;
                    let until = callout.stale_until(&answer, until)?;
                    (until > now).then_some((answer, until))
                });
        }
        let lookup = match slot.lookup(&callout.key, now, state.waiting_since_ms) {
            Lookup::Hit { value, stored_ms } => match Answer::decode(callout.table, &value) {
                // Fresh for this listener's own TTL (another listener may keep answers longer),
                // or the very answer this request was waiting for.
                Some(answer)
                    if cache::fresh_for_reader(
                        stored_ms,
                        callout.ttl_seconds(config, &answer),
                        now,
                    ) || state
                        .waiting_since_ms
                        .is_some_and(|since| stored_ms >= since) =>
                {
                    shared.metrics.count_cache(true);
                    state.gate.entry.cache = state.gate.entry.cache.and(CacheUse::Hit);
                    state.waiting_since_ms = None;
                    if let Some(expires_ms) = slot.answer_expiry() {
                        memo::put(callout.table, &callout.key, &answer, stored_ms, expires_ms);
                    }
                    return Asked::Answer(Ok(answer));
                }
                // Too old for this listener but live for the one that wrote it: ask without
                // claiming the slot, so that answer stays (see `on_callout_answer`).
                Some(_) => {
                    shared.metrics.count_cache(false);
                    state.slot_key = slot.key;
                    return dispatch(id, state, callout, now);
                }
                // Unreadable (written by another version of the filter?): ask again.
                None => Lookup::Miss { evicts: false },
            },
            other => other,
        };
        match lookup {
            Lookup::Hit { .. } => {}
            Lookup::Wait => {
                if state.waiting_since_ms.is_none() {
                    state.waiting_since_ms = Some(now);
                    state.deadline_ms = now.saturating_add(lease_ms(config.apiserver_timeout_ms));
                    shared.metrics.count_coalesced();
                    state.gate.entry.cache = state.gate.entry.cache.and(CacheUse::Coalesced);
                }
                WAITERS.with(|w| w.borrow_mut().push(id));
                state.pending = Some(callout);
                return Asked::Waiting;
            }
            Lookup::Failed => {
                return Asked::Answer(Err(ApiserverTrouble(
                    "the review this request waited for failed".into(),
                )));
            }
            Lookup::Miss { evicts } => {
                // The expired answer the slot held stays in it while this request asks, and after
                // a failure: it may stand in for a listener with `cache.stale_allow_seconds`.
                let kept = slot.kept_for(&callout.key);
                let claim = Record::Pending {
                    digest: callout.key,
                    lease_until_ms: now + lease_ms(config.apiserver_timeout_ms),
                    kept: kept.clone(),
                };
                if slot.replace(&claim).is_err() {
                    continue;
                }
                shared.metrics.count_cache(false);
                if evicts {
                    shared.metrics.count_eviction();
                }
                state.owns_slot = true;
                state.slot_key = slot.key;
                state.kept = kept;
                return dispatch(id, state, callout, now);
            }
        }
    }
    Asked::Answer(Err(ApiserverTrouble("the cache slot kept changing".into())))
}

fn lease_ms(timeout_ms: u64) -> u64 {
    timeout_ms + 1_000
}

fn dispatch(id: u32, state: &mut RequestState, callout: Callout, now: u64) -> Asked {
    state.gate.entry.cache = CacheUse::Miss;
    let shared = Rc::clone(&state.shared);
    let config = &shared.config;
    // The cap first: a request it refuses must not spend the node's review budget.
    let [_, _, _, _, a, b, c, d, ..] = callout.key;
    let start = u32::from_be_bytes([a, b, c, d]);
    let Some(lease) = shared::acquire_callout(
        config.max_callouts_in_flight,
        start,
        now,
        now + lease_ms(config.apiserver_timeout_ms),
    ) else {
        shared.metrics.count_cap_rejection();
        give_up_slot(state, &callout, now);
        return Asked::Answer(Err(ApiserverTrouble(format!(
            "{} reviews already in flight on this node (max_callouts_in_flight)",
            config.max_callouts_in_flight
        ))));
    };
    if !shared::take_review_budget(config.max_reviews_per_second, now) {
        shared::release_callout(lease);
        shared.metrics.count_rate_rejection();
        give_up_slot(state, &callout, now);
        return Asked::Refused(ApiserverTrouble(format!(
            "this node already sent {} reviews in the last second (max_reviews_per_second)",
            config.max_reviews_per_second
        )));
    }
    let headers = header_map::serialize([
        (&b":method"[..], &b"POST"[..]),
        (b":path", callout.path.as_bytes()),
        (b":authority", config.apiserver_authority.as_bytes()),
        (b"content-type", b"application/json"),
        (b"accept", b"application/json"),
    ]);
    let timeout = Duration::from_millis(config.apiserver_timeout_ms);
    match abi::http_call(
        &config.apiserver_cluster,
        &headers,
        &callout.body(config),
        timeout,
    ) {
        Ok(token) => {
            shared.metrics.callouts_in_flight(1);
            CALLOUTS.with(|c| c.borrow_mut().push((token, id)));
            state.lease = Some(lease);
            state.pending = Some(callout);
            state.now_ms = now;
            state.deadline_ms = now.saturating_add(lease_ms(config.apiserver_timeout_ms));
            // It asks itself now: if it waits again later, that is a new wait with a new deadline.
            state.waiting_since_ms = None;
            Asked::Waiting
        }
        Err(status) => {
            shared::release_callout(lease);
            give_up_slot(state, &callout, now);
            Asked::Answer(Err(ApiserverTrouble(format!(
                "could not send the review to cluster {}: {status:?}",
                quoted(&config.apiserver_cluster)
            ))))
        }
    }
}

/// The claimed question will not be asked after all: tell whoever waits.
fn give_up_slot(state: &mut RequestState, callout: &Callout, now: u64) {
    if std::mem::take(&mut state.owns_slot) {
        let failed = Record::Failed {
            digest: callout.key,
            at_ms: now,
            kept: std::mem::take(&mut state.kept),
        };
        Slot::overwrite(&state.slot_key, &failed);
    }
}

/// The apiserver answered callout `token` (called from whichever context the SDK routes it to).
pub fn on_callout_answer(token: u32, body_size: usize) {
    // Read the answer first: it belongs to the callback in progress.
    let status = abi::header(abi::CALL_RESPONSE_HEADERS, ":status")
        .ok()
        .flatten()
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
    let body = abi::buffer(abi::CALL_RESPONSE_BODY, body_size).unwrap_or_default();
    let Some(id) = CALLOUTS.with(|c| remove_entry(&mut c.borrow_mut(), token)) else {
        return;
    };
    let Some(mut state) = take(id) else { return };
    let _ = abi::set_effective_context(id);
    let now = abi::now_ms();
    state.shared.metrics.callouts_in_flight(-1);
    state
        .shared
        .metrics
        .record_callout_ms(now.saturating_sub(state.now_ms));
    if let Some(lease) = state.lease.take() {
        shared::release_callout(lease);
    }
    let Some(callout) = state.pending.take() else {
        return;
    };
    let config = &state.shared.config;
    let answer = Answer::read(callout.table, config, status, &body);
    // A request that claimed the slot must leave an answer or a failure in it for its waiters; one
    // that asked without claiming it (the slot holds another listener's live answer) writes only
    // an answer it may cache itself.
    let claimed = std::mem::take(&mut state.owns_slot);
    let record = match &answer {
        Ok(a) => match callout.cache_until(config, a, state.now_ms) {
            Some(expires_ms) => {
                memo::put(callout.table, &callout.key, a, now, expires_ms);
                Some(Record::Ready {
                    digest: callout.key,
                    stored_ms: now,
                    expires_ms,
                    value: a.encode(),
                    negative: a.is_negative(),
                })
            }
            // Not cacheable: release the waiters with a fresh "ask again" — a Failed record older
            // than nobody, so they ask themselves.
            None => claimed.then(|| Record::Failed {
                digest: callout.key,
                at_ms: 0,
                kept: std::mem::take(&mut state.kept),
            }),
        },
        Err(_) => claimed.then(|| Record::Failed {
            digest: callout.key,
            at_ms: now,
            kept: std::mem::take(&mut state.kept),
        }),
    };
    if let Some(record) = record {
        Slot::overwrite(&state.slot_key, &record);
    }
    let answer = or_stale(&mut state, answer);
    let step = state.gate.on_answer(&state.shared.config, answer);
    let _ = advance(id, state, step, Phase::Later);
}

/// The review could not be had: an expired allow stands in if one may (see `RequestState::stale`),
/// counted and logged; otherwise the trouble stands.
fn or_stale(
    state: &mut RequestState,
    answer: Result<Answer, ApiserverTrouble>,
) -> Result<Answer, ApiserverTrouble> {
    let Err(trouble) = answer else {
        return answer;
    };
    match state.stale.take() {
        Some((stale, until)) if abi::now_ms() < until => {
            state.shared.metrics.count_stale();
            super::log(
                abi::LOG_WARN,
                &format!(
                    "metrics-gate: serving a cached allow past its TTL (cache.stale_allow_seconds): {}",
                    trouble.0
                ),
            );
            Ok(stale)
        }
        _ => Err(trouble),
    }
}

/// The root context's timer: answers every paused request past its deadline (whatever it waits
/// for: its own callout whose answer never came, or another request's), then moves on requests
/// waiting for another request's review. Returns whether any request is still paused (the timer
/// must keep running).
pub fn on_tick() -> bool {
    let now = abi::now_ms();
    let overdue: Vec<u32> = REQUESTS.with(|r| {
        r.borrow()
            .iter()
            .filter(|(_, state)| state.deadline_ms <= now)
            .map(|(id, _)| *id)
            .collect()
    });
    for id in overdue {
        time_out(id);
    }
    let waiting = WAITERS.with(|w| std::mem::take(&mut *w.borrow_mut()));
    for id in waiting {
        let Some(mut state) = take(id) else { continue };
        let Some(callout) = state.pending.take() else {
            continue;
        };
        let _ = abi::set_effective_context(id);
        let _ = advance(id, state, Step::Call(callout), Phase::Later);
    }
    REQUESTS.with(|r| !r.borrow().is_empty())
}

/// Request `id` waited past its deadline (or its hold after a refusal is over): release what it
/// holds and answer 503.
fn time_out(id: u32) {
    let Some(mut state) = take(id) else { return };
    WAITERS.with(|w| w.borrow_mut().retain(|w| *w != id));
    CALLOUTS.with(|c| c.borrow_mut().retain(|(_, request)| *request != id));
    let now = abi::now_ms();
    if let Some(lease) = state.lease.take() {
        state.shared.metrics.callouts_in_flight(-1);
        shared::release_callout(lease);
    }
    if let Some(callout) = state.pending.take() {
        give_up_slot(&mut state, &callout, now);
    }
    let _ = abi::set_effective_context(id);
    let trouble = state.held.take().unwrap_or_else(|| {
        ApiserverTrouble(format!(
            "no answer to the review within {} ms",
            lease_ms(state.shared.config.apiserver_timeout_ms)
        ))
    });
    let answer = or_stale(&mut state, Err(trouble));
    let step = state.gate.on_answer(&state.shared.config, answer);
    let _ = advance(id, state, step, Phase::Later);
}

/// A stream of a plugin whose configuration Envoy refused (it should create none): refused.
pub fn refuse_unconfigured() {
    let reply = Reply::apiserver_unavailable(1);
    if abi::send_local_response(reply.status, &reply_headers(&reply), reply.body.as_bytes())
        .is_err()
    {
        let _ = abi::reset_request();
    }
}

/// The request is gone (answered, forwarded, or the client left): forget it, and hand a claimed
/// question back so waiters need not sit out the lease.
pub fn forget(id: u32) {
    let Some(mut state) = take(id) else { return };
    if let Some(lease) = state.lease.take() {
        state.shared.metrics.callouts_in_flight(-1);
        shared::release_callout(lease);
    }
    if let Some(callout) = state.pending.take() {
        give_up_slot(&mut state, &callout, 0);
    }
    WAITERS.with(|w| w.borrow_mut().retain(|w| *w != id));
}

fn reply_headers(reply: &Reply) -> Vec<u8> {
    crate::header_map::serialize(
        reply
            .headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes())),
    )
}

fn send_reply(shared: &Shared, reply: &Reply) {
    shared.metrics.count(reply.outcome);
    if let Some(detail) = &reply.log_detail {
        super::log(
            abi::LOG_WARN,
            &format!("metrics-gate: answering {}: {detail}", reply.status),
        );
    }
    let sent = abi::send_local_response(reply.status, &reply_headers(reply), reply.body.as_bytes());
    if sent.is_err() {
        // Could not answer: end the stream rather than let it continue upstream.
        let _ = abi::reset_request();
    }
}

fn forward_request(shared: &Shared, forward: crate::gate::Forward, phase: Phase) -> Verdict {
    let edited = forward
        .remove
        .iter()
        .try_for_each(|name| abi::remove_header(abi::REQUEST_HEADERS, name))
        .and_then(|()| {
            forward.set.iter().try_for_each(|(name, value)| {
                abi::replace_header(abi::REQUEST_HEADERS, name, value)
            })
        });
    if let Err(status) = edited {
        // The caller's credentials might still be on the request: do not let it pass.
        let mut reply = Reply::apiserver_unavailable(shared.config.retry_after_seconds);
        reply.log_detail = Some(format!("cannot edit request headers: {status:?}"));
        if shared.config.access_log {
            let _ = abi::set_property(crate::access_log::DECISION, b"apiserver_error");
            let _ = abi::set_property(crate::access_log::REASON, b"cannot edit request headers");
        }
        send_reply(shared, &reply);
        return Verdict::Pause;
    }
    shared.metrics.count(Outcome::Allowed);
    match phase {
        Phase::Headers => Verdict::Continue,
        Phase::Later => {
            if abi::resume_request().is_err() {
                let _ = abi::reset_request();
            }
            Verdict::Pause
        }
    }
}
