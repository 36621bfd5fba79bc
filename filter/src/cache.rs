//! The decision cache's records, as they sit in Envoy's shared data.
//!
//! Envoy's shared data is one key-value map per process, seen by every worker's VM, with
//! compare-and-swap; keys can be overwritten but never deleted. So the cache is a fixed table of
//! `max_entries` slots per kind (TokenReview, SubjectAccessReview): a digest picks the slot, the
//! record in it carries the full digest, and a newer entry simply replaces an older one. Memory is
//! bounded by design, whatever the number of distinct tokens. Keys and records hold digests only,
//! never a token.
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

/// Digest of a SubjectAccessReview question: its whole request body (user, uid, groups, extra and
/// attributes), so two questions share an answer only if they are the same question.
pub fn access_review_key(body: &[u8]) -> Digest {
    let mut h = Sha256::new();
    h.update(b"subjectaccessreview\0");
    h.update(body);
    h.finalize().into()
}

/// The shared-data key of the slot for `digest`.
pub fn slot_key(table: Table, digest: &Digest, max_entries: u32) -> String {
    let [a, b, c, d, ..] = *digest;
    let slot = u32::from_be_bytes([a, b, c, d]) % max_entries.max(1);
    format!("{}{slot}", table.prefix())
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

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, digest, time, value): (u8, &Digest, u64, &[u8]) = match self {
            Record::Ready {
                digest,
                stored_ms,
                expires_ms,
                value,
            } => {
                let mut out = Vec::with_capacity(49 + value.len());
                out.push(READY);
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
            READY => {
                let (stored, value) = value.split_first_chunk::<8>()?;
                Some(Record::Ready {
                    digest,
                    stored_ms: u64::from_be_bytes(*stored),
                    expires_ms: time,
                    value: value.to_vec(),
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
            },
            Record::Ready {
                digest: D,
                stored_ms: 1,
                expires_ms: 5,
                value: vec![],
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
        assert_eq!(Record::decode(&[4; 41]), None);
    }

    #[test]
    fn keys_never_contain_the_token_and_differ_by_audience() {
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        let plain = token_review_key(token, &[]);
        let with_audience = token_review_key(token, &["metrics-gate".to_owned()]);
        assert_ne!(plain, with_audience);
        let key = slot_key(Table::TokenReview, &plain, 8192);
        assert!(key.starts_with("metrics-gate/tr/") && !key.contains(token));
        let slot: u32 = key.trim_start_matches("metrics-gate/tr/").parse().unwrap();
        assert!(slot < 8192);
        assert_ne!(access_review_key(b"{}"), access_review_key(b"{ }"));
    }

    #[test]
    fn a_stale_answer_stands_in_only_within_its_window() {
        let ready = Record::Ready {
            digest: D,
            stored_ms: 0,
            expires_ms: 100,
            value: b"v".to_vec(),
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
}
