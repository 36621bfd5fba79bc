//! Envoy's process-wide shared data, as the decision cache and the node-wide callout cap use it.
//!
//! Every worker's VM sees the same map, so one answer serves the whole node and the apiserver sees
//! the same traffic whatever `--concurrency` is and however many listeners share the node.

use super::abi::{self, HostError};

use crate::cache::{self, Digest, Lookup, Record, Table};
use crate::rate::{self, Bucket};

/// The slot a question uses, and what it currently holds.
pub struct Slot {
    pub key: String,
    record: Option<Record>,
    cas: u32,
}

impl Slot {
    fn read(key: String) -> Slot {
        let (bytes, cas) = abi::shared_data(&key).unwrap_or((None, 0));
        let record = bytes.as_deref().and_then(Record::decode);
        Slot { key, record, cas }
    }

    /// The one of the question's two slots it uses (`cache::choose_slot`). A question found in its
    /// first slot, the usual case for a warm answer, costs one read.
    pub fn find(table: Table, digest: &Digest, max_entries: u32, now_ms: u64) -> Slot {
        let [first_key, second_key] = cache::slot_keys(table, digest, max_entries);
        let first = Slot::read(first_key);
        if first.record.as_ref().is_some_and(|r| r.is_for(digest)) {
            return first;
        }
        let second = Slot::read(second_key);
        let records = [first.record.as_ref(), second.record.as_ref()];
        match cache::choose_slot(records, digest, now_ms) {
            0 => first,
            _ => second,
        }
    }

    pub fn lookup(&self, digest: &Digest, now_ms: u64, waiting_since_ms: Option<u64>) -> Lookup {
        cache::lookup(self.record.as_ref(), digest, now_ms, waiting_since_ms)
    }

    /// An allow for `digest` that expired less than `stale_ms` ago, as `cache::stale_answer`.
    pub fn stale(&self, digest: &Digest, now_ms: u64, stale_ms: u64) -> Option<(Vec<u8>, u64)> {
        cache::stale_answer(self.record.as_ref(), digest, now_ms, stale_ms)
    }

    /// The last answer to `digest` the slot holds (see `Record::kept_for`).
    pub fn kept_for(&self, digest: &Digest) -> Vec<u8> {
        self.record
            .as_ref()
            .map_or_else(Vec::new, |r| r.kept_for(digest))
    }

    /// Until when the answer this slot holds is valid, if it holds one.
    pub fn answer_expiry(&self) -> Option<u64> {
        match &self.record {
            Some(Record::Ready { expires_ms, .. }) => Some(*expires_ms),
            _ => None,
        }
    }

    /// Writes `record` only if nobody changed the slot since it was read.
    pub fn replace(&self, record: &Record) -> Result<(), HostError> {
        abi::set_shared_data(&self.key, &record.encode(), self.cas)
    }

    /// Writes `record` into slot `key` whatever it holds (answers are final; a lost race costs
    /// nothing).
    pub fn overwrite(key: &str, record: &Record) {
        let _ = abi::set_shared_data(key, &record.encode(), 0);
    }
}

const REVIEW_BUDGET_KEY: &str = "metrics-gate/review-budget";

/// Takes one review from the node's budget of `per_second` (0: no limit). `false`: spent.
pub fn take_review_budget(per_second: u32, now_ms: u64) -> bool {
    if per_second == 0 {
        return true;
    }
    // Other workers take from the same bucket: a lost compare-and-swap is read again. After a few
    // lost rounds the review is refused, as when the budget is spent (fail closed).
    for _ in 0..4 {
        let Ok((bytes, cas)) = abi::shared_data(REVIEW_BUDGET_KEY) else {
            return false;
        };
        let stored = bytes.as_deref().and_then(Bucket::decode);
        let Some(next) = rate::take(stored, per_second, now_ms) else {
            return false;
        };
        if abi::set_shared_data(REVIEW_BUDGET_KEY, &next.encode(), cas).is_ok() {
            return true;
        }
    }
    false
}

/// A lease on one of the node's `cap` callout slots.
pub struct CalloutLease {
    index: u32,
    until_ms: u64,
}

fn lease_key(index: u32) -> String {
    format!("metrics-gate/inflight/{index}")
}

/// Takes a free (or expired) callout slot, starting the search at `start` so concurrent requests
/// spread out. `None`: the node already has `cap` reviews in flight.
pub fn acquire_callout(
    cap: u32,
    start: u32,
    now_ms: u64,
    lease_until_ms: u64,
) -> Option<CalloutLease> {
    for offset in 0..cap {
        let index = start.wrapping_add(offset) % cap;
        let key = lease_key(index);
        let Ok((bytes, cas)) = abi::shared_data(&key) else {
            continue;
        };
        let held_until = bytes
            .as_deref()
            .and_then(|b| b.first_chunk::<8>())
            .map_or(0, |b| u64::from_be_bytes(*b));
        // An expired lease belongs to a request (or VM) that is gone: take it over.
        if held_until > now_ms {
            continue;
        }
        if abi::set_shared_data(&key, &lease_until_ms.to_be_bytes(), cas).is_ok() {
            return Some(CalloutLease {
                index,
                until_ms: lease_until_ms,
            });
        }
    }
    None
}

/// Frees the slot, unless it expired and someone else holds it by now.
pub fn release_callout(lease: CalloutLease) {
    let key = lease_key(lease.index);
    if let Ok((Some(bytes), cas)) = abi::shared_data(&key) {
        if bytes.as_slice() == lease.until_ms.to_be_bytes() {
            let _ = abi::set_shared_data(&key, &[], cas);
        }
    }
}
