//! Envoy's process-wide shared data, as the decision cache and the node-wide callout cap use it.
//!
//! Every worker's VM sees the same map, so one answer serves the whole node and the apiserver sees
//! the same traffic whatever `--concurrency` is and however many listeners share the node.

use super::abi::{self, HostError};

use crate::cache::{self, Digest, Lookup, Record, Table};

/// The slot for a question, and what it currently holds.
pub struct Slot {
    key: String,
    record: Option<Record>,
    cas: u32,
}

impl Slot {
    pub fn read(table: Table, digest: &Digest, max_entries: u32) -> Slot {
        let key = cache::slot_key(table, digest, max_entries);
        let (bytes, cas) = abi::shared_data(&key).unwrap_or((None, 0));
        let record = bytes.as_deref().and_then(Record::decode);
        Slot { key, record, cas }
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

    /// Writes `record` only if nobody changed the slot since it was read.
    pub fn replace(&self, record: &Record) -> Result<(), HostError> {
        abi::set_shared_data(&self.key, &record.encode(), self.cas)
    }

    /// Writes `record` whatever the slot holds (answers are final; a lost race costs nothing).
    pub fn overwrite(table: Table, digest: &Digest, max_entries: u32, record: &Record) {
        let key = cache::slot_key(table, digest, max_entries);
        let _ = abi::set_shared_data(&key, &record.encode(), 0);
    }
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
