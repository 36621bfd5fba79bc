//! The decision cache's records, as they sit in Envoy's shared data.
//!
//! Envoy's shared data is one key-value map per process, seen by every worker's VM, with
//! compare-and-swap; keys can be overwritten but never deleted. So the cache is a fixed table of
//! `max_entries` slots per kind (TokenReview, SubjectAccessReview). A digest may live in either of
//! two slots (a 2-way table); the record in a slot carries the full digest. A new question takes
//! the better victim of its two slots: an empty or dead one first, then a negative answer, and a
//! live allow last — so a flood of distinct bogus tokens, whose answers are all negative, pushes
//! out other bogus answers and not an authorized scraper's. Memory is bounded by design, whatever
//! the number of distinct tokens. Keys and records hold digests only, never a token.
//!
//! A slot also coordinates concurrent misses across workers: the first request claims it with a
//! `Pending` record (CAS) and calls the apiserver; others find `Pending` and wait for the answer.
//! Errors are never cached: a `Failed` record only answers requests that were already waiting when
//! the call failed, and anything newer calls again.

use sha2::{Digest as _, Sha256};

pub type Digest = [u8; 32];

/// Which review a record belongs to; each has its own table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    TokenReview,
    AccessReview,
}

impl Table {
    fn prefix(self) -> &'static str {
        match self {
            Table::TokenReview => "metrics-gate/tr/",
            Table::AccessReview => "metrics-gate/sar/",
        }
    }
}

/// Digest of the TokenReview question: the token and the audiences it is checked against.
pub fn token_review_key(token: &str, audiences: &[String]) -> Digest {
    let mut h = Sha256::new();
    h.update(b"tokenreview\0");
    h.update(token.as_bytes());
    for audience in audiences {
        h.update(b"\0");
        h.update(audience.as_bytes());
    }
    h.finalize().into()
}

/// A digest built field by field, each field length-prefixed so that no two different sequences
/// of fields hash the same bytes (for `review::access_review_key`).
pub struct FieldDigest(Sha256);

impl FieldDigest {
    pub fn new(domain: &[u8]) -> FieldDigest {
        let mut h = Sha256::new();
        h.update(domain);
        h.update(b"\0");
        FieldDigest(h)
    }

    pub fn field(&mut self, bytes: &[u8]) -> &mut FieldDigest {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
        self
    }

    pub fn count(&mut self, n: usize) -> &mut FieldDigest {
        self.0.update((n as u64).to_be_bytes());
        self
    }

    pub fn finish(self) -> Digest {
        self.0.finalize().into()
    }
}

/// The shared-data keys of the two slots `digest` may live in (independent bits of the digest
/// pick them; never the same slot twice).
pub fn slot_keys(table: Table, digest: &Digest, max_entries: u32) -> [String; 2] {
    let n = max_entries.max(2);
    let [a, b, c, d, _, _, _, _, e, f, g, h, ..] = *digest;
    let first = u32::from_be_bytes([a, b, c, d]) % n;
    let mut second = u32::from_be_bytes([e, f, g, h]) % n;
    if second == first {
        second = (first + 1) % n;
    }
    [first, second].map(|slot| format!("{}{slot}", table.prefix()))
}

/// Which of a question's two slots it uses: the one that holds it already, else the cheaper one to
/// lose (see `victim_rank`); the first on a tie, so a settled table is read once per request.
pub fn choose_slot(records: [Option<&Record>; 2], digest: &Digest, now_ms: u64) -> usize {
    if let Some(index) = records
        .iter()
        .position(|r| r.is_some_and(|r| r.digest() == digest))
    {
        return index;
    }
    let [first, second] = records.map(|r| victim_rank(r, now_ms));
    usize::from(second < first)
}

/// How much is lost by replacing `record`: nothing for an empty slot or a dead record, then a
/// negative answer (a bogus token asked again costs a review, never a scrape), then someone's
/// review under way, and an allow last — the older one of two allows first.
fn victim_rank(record: Option<&Record>, now_ms: u64) -> (u8, u64) {
    match record {
        None => (0, 0),
        Some(Record::Ready {
            expires_ms,
            negative,
            ..
        }) if *expires_ms > now_ms => (if *negative { 1 } else { 3 }, *expires_ms),
        Some(Record::Pending { lease_until_ms, .. }) if *lease_until_ms > now_ms => (2, 0),
        Some(_) => (0, 0),
    }
}

/// What a slot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// An answer written at `stored_ms`, valid until `expires_ms` — for a reader whose own TTL for
    /// it has not run out since `stored_ms` (listeners may differ; see `Lookup::Hit`).
    Ready {
        digest: Digest,
        stored_ms: u64,
        expires_ms: u64,
        value: Vec<u8>,
        /// A rejected token or a denied access: the first to go when the slot is needed.
        negative: bool,
    },
    /// Someone is asking the apiserver; they own the question until `lease_until_ms`. `kept`: the
    /// expired answer the slot held before (an encoded `Ready`, or empty), kept so it can stand in
    /// while the apiserver cannot be asked (`cache.stale_allow_seconds`).
    Pending {
        digest: Digest,
        lease_until_ms: u64,
        kept: Vec<u8>,
    },
    /// The last call for this question failed at `at_ms`; `kept` as for `Pending`.
    Failed {
        digest: Digest,
        at_ms: u64,
        kept: Vec<u8>,
    },
}

const READY: u8 = 1;
const PENDING: u8 = 2;
const FAILED: u8 = 3;
const READY_NEGATIVE: u8 = 4;

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, digest, time, value): (u8, &Digest, u64, &[u8]) = match self {
            Record::Ready {
                digest,
                stored_ms,
                expires_ms,
                value,
                negative,
            } => {
                let mut out = Vec::with_capacity(49 + value.len());
                out.push(if *negative { READY_NEGATIVE } else { READY });
                out.extend_from_slice(digest);
                out.extend_from_slice(&expires_ms.to_be_bytes());
                out.extend_from_slice(&stored_ms.to_be_bytes());
                out.extend_from_slice(value);
                return out;
            }
            Record::Pending {
                digest,
                lease_until_ms,
                kept,
            } => (PENDING, digest, *lease_until_ms, kept),
            Record::Failed {
                digest,
                at_ms,
                kept,
            } => (FAILED, digest, *at_ms, kept),
        };
        let mut out = Vec::with_capacity(41 + value.len());
        out.push(tag);
        out.extend_from_slice(digest);
        out.extend_from_slice(&time.to_be_bytes());
        out.extend_from_slice(value);
        out
    }

    /// `None` for an empty slot or bytes that are not a record (treated as empty).
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let (&tag, rest) = bytes.split_first()?;
        let (digest, rest) = rest.split_first_chunk::<32>()?;
        let (time, value) = rest.split_first_chunk::<8>()?;
        let time = u64::from_be_bytes(*time);
        let digest = *digest;
        match tag {
            READY | READY_NEGATIVE => {
                let (stored, value) = value.split_first_chunk::<8>()?;
                Some(Record::Ready {
                    digest,
                    stored_ms: u64::from_be_bytes(*stored),
                    expires_ms: time,
                    value: value.to_vec(),
                    negative: tag == READY_NEGATIVE,
                })
            }
            PENDING => Some(Record::Pending {
                digest,
                lease_until_ms: time,
                kept: value.to_vec(),
            }),
            FAILED => Some(Record::Failed {
                digest,
                at_ms: time,
                kept: value.to_vec(),
            }),
            _ => None,
        }
    }

    /// The last answer to `digest` this slot holds, live or expired, encoded (for `kept`); empty
    /// if none.
    pub fn kept_for(&self, digest: &Digest) -> Vec<u8> {
        match self {
            Record::Ready { digest: d, .. } if d == digest => self.encode(),
            Record::Pending {
                digest: d, kept, ..
            }
            | Record::Failed {
                digest: d, kept, ..
            } if d == digest => kept.clone(),
            _ => Vec::new(),
        }
    }

    /// Whether this record is about `digest`.
    pub fn is_for(&self, digest: &Digest) -> bool {
        self.digest() == digest
    }

    fn digest(&self) -> &Digest {
        match self {
            Record::Ready { digest, .. }
            | Record::Pending { digest, .. }
            | Record::Failed { digest, .. } => digest,
        }
    }
}

/// What a request should do about its question, given the slot's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The answer is known, as stored at `stored_ms`: the reader still checks it against its own
    /// TTL for that answer (a listener with shorter TTLs, or 0, never takes an older answer).
    Hit { value: Vec<u8>, stored_ms: u64 },
    /// Nobody is asking: claim the slot and ask. `evicts` says whether that replaces another
    /// question's live answer.
    Miss { evicts: bool },
    /// Someone else is asking: wait for their answer.
    Wait,
    /// The call this request was waiting for failed.
    Failed,
}

/// `waiting_since_ms`: when this request started waiting for the question, if it is waiting.
pub fn lookup(
    record: Option<&Record>,
    digest: &Digest,
    now_ms: u64,
    waiting_since_ms: Option<u64>,
) -> Lookup {
    let Some(record) = record else {
        return Lookup::Miss { evicts: false };
    };
    if record.digest() != digest {
        let live = match record {
            Record::Ready { expires_ms, .. } => *expires_ms > now_ms,
            Record::Pending { lease_until_ms, .. } => *lease_until_ms > now_ms,
            Record::Failed { .. } => false,
        };
        return Lookup::Miss { evicts: live };
    }
    match record {
        Record::Ready {
            expires_ms,
            value,
            stored_ms,
            ..
        } if *expires_ms > now_ms => Lookup::Hit {
            value: value.clone(),
            stored_ms: *stored_ms,
        },
        Record::Pending { lease_until_ms, .. } if *lease_until_ms > now_ms => Lookup::Wait,
        Record::Failed { at_ms, .. } if waiting_since_ms.is_some_and(|since| since <= *at_ms) => {
            Lookup::Failed
        }
        _ => Lookup::Miss { evicts: false },
    }
}

/// An answer to `digest` that expired less than `stale_ms` ago (and until when it may stand in),
/// for serving while the apiserver cannot be asked; `None` if there is none or `stale_ms` is 0.
pub fn stale_answer(
    record: Option<&Record>,
    digest: &Digest,
    now_ms: u64,
    stale_ms: u64,
) -> Option<(Vec<u8>, u64)> {
    if stale_ms == 0 {
        return None;
    }
    match Record::decode(&record?.kept_for(digest))? {
        Record::Ready {
            digest: d,
            expires_ms,
            value,
            ..
        } if &d == digest => {
            let until = expires_ms.saturating_add(stale_ms);
            (until > now_ms).then_some((value, until))
        }
        _ => None,
    }
}

/// Whether an answer stored at `stored_ms` is still fresh at `now_ms` for a reader whose TTL for
/// it is `ttl_seconds` (0: never — that reader does not cache).
pub fn fresh_for_reader(stored_ms: u64, ttl_seconds: u32, now_ms: u64) -> bool {
    // 0 is never, even if the clock stepped back below `stored_ms`.
    ttl_seconds > 0
        && stored_ms.saturating_add(u64::from(ttl_seconds).saturating_mul(1000)) > now_ms
}

/// How long a TokenReview answer may be remembered: the configured TTL, but never past the token's
/// own expiry. `None`: do not cache.
pub fn token_review_expiry_ms(
    now_ms: u64,
    ttl_seconds: u32,
    token_exp_seconds: Option<u64>,
) -> Option<u64> {
    let mut expires = now_ms.checked_add(u64::from(ttl_seconds).saturating_mul(1000))?;
    if let Some(exp) = token_exp_seconds {
        expires = expires.min(exp.saturating_mul(1000));
    }
    (expires > now_ms).then_some(expires)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const D: Digest = [7; 32];
    const OTHER: Digest = [9; 32];

    #[test]
    fn records_round_trip() {
        for record in [
            Record::Ready {
                digest: D,
                stored_ms: 1,
                expires_ms: 5,
                value: b"user".to_vec(),
                negative: false,
            },
            Record::Ready {
                digest: D,
                stored_ms: 1,
                expires_ms: 5,
                value: vec![],
                negative: true,
            },
            Record::Pending {
                digest: D,
                lease_until_ms: 6,
                kept: vec![],
            },
            Record::Failed {
                digest: D,
                at_ms: 7,
                kept: vec![],
            },
        ] {
            assert_eq!(Record::decode(&record.encode()), Some(record));
        }
        assert_eq!(Record::decode(b""), None);
        assert_eq!(Record::decode(&[1; 20]), None);
        assert_eq!(Record::decode(&[5; 41]), None);
    }

    #[test]
    fn keys_never_contain_the_token_and_differ_by_audience() {
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        let plain = token_review_key(token, &[]);
        let with_audience = token_review_key(token, &["metrics-gate".to_owned()]);
        assert_ne!(plain, with_audience);
        let keys = slot_keys(Table::TokenReview, &plain, 8192);
        assert_ne!(keys[0], keys[1]);
        for key in keys {
            assert!(key.starts_with("metrics-gate/tr/") && !key.contains(token));
            let slot: u32 = key.trim_start_matches("metrics-gate/tr/").parse().unwrap();
            assert!(slot < 8192);
        }
        // Length-prefixed fields: moving a byte from one field to the next changes the digest.
        let digest = |a: &[u8], b: &[u8]| {
            let mut d = FieldDigest::new(b"t");
            d.field(a).field(b);
            d.finish()
        };
        assert_ne!(digest(b"ab", b"c"), digest(b"a", b"bc"));
        assert_eq!(digest(b"ab", b"c"), digest(b"ab", b"c"));
    }

    #[test]
    fn a_stale_answer_stands_in_only_within_its_window() {
        let ready = Record::Ready {
            digest: D,
            stored_ms: 0,
            expires_ms: 100,
            value: b"v".to_vec(),
            negative: false,
        };
        assert_eq!(
            stale_answer(Some(&ready), &D, 150, 100),
            Some((b"v".to_vec(), 200))
        );
        assert_eq!(stale_answer(Some(&ready), &D, 200, 100), None);
        assert_eq!(stale_answer(Some(&ready), &D, 150, 0), None, "off");
        assert_eq!(stale_answer(Some(&ready), &OTHER, 150, 100), None);
        let pending = Record::Pending {
            digest: D,
            lease_until_ms: 500,
            kept: vec![],
        };
        assert_eq!(stale_answer(Some(&pending), &D, 150, 100), None);
        // Someone is asking again, or failed to: the answer they found is kept for standing in.
        let asking = Record::Pending {
            digest: D,
            lease_until_ms: 500,
            kept: ready.kept_for(&D),
        };
        assert_eq!(
            stale_answer(Some(&asking), &D, 150, 100),
            Some((b"v".to_vec(), 200))
        );
        let failed = Record::Failed {
            digest: D,
            at_ms: 150,
            kept: asking.kept_for(&D),
        };
        assert_eq!(Record::decode(&failed.encode()), Some(failed.clone()));
        assert_eq!(
            stale_answer(Some(&failed), &D, 150, 100),
            Some((b"v".to_vec(), 200))
        );
        assert_eq!(stale_answer(Some(&failed), &OTHER, 150, 100), None);
    }

    #[test]
    fn lookup_follows_the_record() {
        assert_eq!(lookup(None, &D, 10, None), Lookup::Miss { evicts: false });
        let ready = Record::Ready {
            digest: D,
            stored_ms: 3,
            expires_ms: 20,
            value: b"v".to_vec(),
            negative: false,
        };
        assert_eq!(
            lookup(Some(&ready), &D, 10, None),
            Lookup::Hit {
                value: b"v".to_vec(),
                stored_ms: 3
            }
        );
        assert_eq!(
            lookup(Some(&ready), &D, 20, None),
            Lookup::Miss { evicts: false },
            "expired"
        );
        assert_eq!(
            lookup(Some(&ready), &OTHER, 10, None),
            Lookup::Miss { evicts: true }
        );
        assert_eq!(
            lookup(Some(&ready), &OTHER, 30, None),
            Lookup::Miss { evicts: false }
        );
        let pending = Record::Pending {
            digest: D,
            lease_until_ms: 20,
            kept: vec![],
        };
        assert_eq!(lookup(Some(&pending), &D, 10, Some(5)), Lookup::Wait);
        assert_eq!(
            lookup(Some(&pending), &D, 25, Some(5)),
            Lookup::Miss { evicts: false },
            "lease over: take over"
        );
    }

    #[test]
    fn a_failure_answers_only_those_already_waiting() {
        let failed = Record::Failed {
            digest: D,
            at_ms: 10,
            kept: vec![],
        };
        assert_eq!(lookup(Some(&failed), &D, 11, Some(8)), Lookup::Failed);
        assert_eq!(
            lookup(Some(&failed), &D, 11, None),
            Lookup::Miss { evicts: false },
            "new requests ask again"
        );
        assert_eq!(
            lookup(Some(&failed), &D, 12, Some(11)),
            Lookup::Miss { evicts: false }
        );
    }

    #[test]
    fn token_reviews_are_not_remembered_past_the_token() {
        assert_eq!(token_review_expiry_ms(1_000, 120, None), Some(121_000));
        assert_eq!(token_review_expiry_ms(1_000, 120, Some(60)), Some(60_000));
        assert_eq!(
            token_review_expiry_ms(1_000, 120, Some(1)),
            None,
            "expires now"
        );
        assert_eq!(token_review_expiry_ms(1_000, 0, None), None, "caching off");
    }

    fn ready(digest: Digest, expires_ms: u64, negative: bool) -> Record {
        Record::Ready {
            digest,
            stored_ms: 0,
            expires_ms,
            value: vec![],
            negative,
        }
    }

    #[test]
    fn two_slots_of_a_question_are_distinct_even_when_the_digest_bits_agree() {
        let mut digest = [0; 32];
        digest[3] = 5;
        digest[11] = 5;
        let [first, second] = slot_keys(Table::AccessReview, &digest, 16);
        assert_eq!(first, "metrics-gate/sar/5");
        assert_eq!(second, "metrics-gate/sar/6");
    }

    #[test]
    fn a_question_uses_the_slot_that_holds_it() {
        let mine = ready(D, 100, true);
        let other = ready(OTHER, 100, true);
        assert_eq!(choose_slot([Some(&other), Some(&mine)], &D, 10), 1);
        assert_eq!(choose_slot([Some(&mine), None], &D, 10), 0);
    }

    #[test]
    fn a_new_question_replaces_dead_then_negative_then_pending_then_the_older_allow() {
        const THIRD: Digest = [3; 32];
        let allow = ready(OTHER, 100, false);
        let older_allow = ready(THIRD, 50, false);
        let deny = ready(THIRD, 100, true);
        let dead_allow = ready(THIRD, 5, false);
        let asking = Record::Pending {
            digest: THIRD,
            lease_until_ms: 100,
            kept: vec![],
        };
        let failed = Record::Failed {
            digest: THIRD,
            at_ms: 1,
            kept: vec![],
        };
        let now = 10;
        assert_eq!(choose_slot([Some(&allow), None], &D, now), 1, "empty");
        assert_eq!(
            choose_slot([Some(&allow), Some(&dead_allow)], &D, now),
            1,
            "expired"
        );
        assert_eq!(
            choose_slot([Some(&allow), Some(&failed)], &D, now),
            1,
            "failed"
        );
        assert_eq!(
            choose_slot([Some(&allow), Some(&deny)], &D, now),
            1,
            "negative"
        );
        assert_eq!(
            choose_slot([Some(&deny), Some(&allow)], &D, now),
            0,
            "negative"
        );
        assert_eq!(
            choose_slot([Some(&allow), Some(&asking)], &D, now),
            1,
            "pending"
        );
        assert_eq!(choose_slot([Some(&deny), Some(&asking)], &D, now), 0);
        assert_eq!(
            choose_slot([Some(&allow), Some(&older_allow)], &D, now),
            1,
            "older allow"
        );
        assert_eq!(choose_slot([None, None], &D, now), 0, "first on a tie");
        assert_eq!(choose_slot([Some(&deny), Some(&deny)], &D, now), 0);
    }

    #[test]
    fn a_flood_of_negative_answers_never_pushes_out_an_allow() {
        // A small table: one allow, then a million distinct rejected tokens, each placed as the
        // engine places them. The allow is still there at the end.
        let max = 64;
        let mut table: Vec<Option<Record>> = vec![None; max as usize];
        let index = |key: &str| -> usize { key.rsplit('/').next().unwrap().parse().unwrap() };
        let place = |digest: Digest, negative: bool, now: u64, table: &mut Vec<Option<Record>>| {
            let keys = slot_keys(Table::TokenReview, &digest, max);
            let slots = keys.each_ref().map(|k| index(k));
            let chosen = choose_slot(slots.map(|i| table[i].as_ref()), &digest, now);
            table[slots[chosen]] = Some(ready(digest, now + 1_000_000, negative));
        };
        let scraper = token_review_key("the scraper's token", &[]);
        place(scraper, false, 0, &mut table);
        for n in 0..1_000_000u32 {
            place(
                token_review_key(&format!("bogus-{n}"), &[]),
                true,
                1 + u64::from(n),
                &mut table,
            );
        }
        assert!(table.iter().flatten().any(|r| r.digest() == &scraper));
    }
}
