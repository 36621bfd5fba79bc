//! A per-VM copy of recent answers in front of Envoy's shared data.
//!
//! A warm request used to copy its two answers out of shared data and decode them (the user info
//! of a TokenReview is JSON) on every scrape. Answers are final until they expire, so a copy taken
//! when one was read or written is as good as the record itself until then; each listener still
//! applies its own TTL on read (`cache::fresh_for_reader`), exactly as for shared data. Errors and
//! claims are never copied. Direct-mapped and small: a miss only means reading shared data.

use std::cell::RefCell;

use crate::cache::{Digest, Table};
use crate::review::Answer;

const SLOTS: usize = 256;

struct Entry {
    table: Table,
    digest: Digest,
    answer: Answer,
    stored_ms: u64,
    expires_ms: u64,
}

thread_local! {
    static MEMO: RefCell<Vec<Option<Entry>>> = const { RefCell::new(Vec::new()) };
}

fn slot(digest: &Digest) -> usize {
    let [_, _, _, _, _, _, _, _, _, _, _, _, a, b, ..] = *digest;
    usize::from(u16::from_be_bytes([a, b])) % SLOTS
}

/// The answer to `digest` and when it was stored, if a copy is here and has not expired.
pub fn get(table: Table, digest: &Digest, now_ms: u64) -> Option<(Answer, u64)> {
    MEMO.with(|m| {
        let memo = m.borrow();
        let entry = memo.get(slot(digest))?.as_ref()?;
        (entry.table == table && entry.digest == *digest && entry.expires_ms > now_ms)
            .then(|| (entry.answer.clone(), entry.stored_ms))
    })
}

/// Keeps a copy of an answer read from or written to shared data.
pub fn put(table: Table, digest: &Digest, answer: &Answer, stored_ms: u64, expires_ms: u64) {
    MEMO.with(|m| {
        let mut memo = m.borrow_mut();
        if memo.is_empty() {
            memo.resize_with(SLOTS, || None);
        }
        if let Some(place) = memo.get_mut(slot(digest)) {
            *place = Some(Entry {
                table,
                digest: *digest,
                answer: answer.clone(),
                stored_ms,
                expires_ms,
            });
        }
    });
}
