//! The node-wide budget of reviews per second: a token bucket that every worker's VM shares.
//!
//! The callout cap bounds how many reviews are in flight, not how many are sent: an apiserver that
//! answers in 2 ms lets a flood of distinct bogus tokens through at thousands of reviews a second.
//! The bucket bounds the rate. It holds up to one second's worth of reviews, so the burst after a
//! token rotation (one TokenReview and a SubjectAccessReview per listener) passes at once, and it
//! refills continuously. Cached answers never touch it: an authorized scraper whose answers are
//! cached goes on whatever a flood does to the budget.
//!
//! The state is 16 bytes in Envoy's shared data, updated with compare-and-swap; this module is the
//! arithmetic, `host::shared` the storage.

/// One review, in the bucket's unit (thousandths of a review, so that a refill of a few
/// milliseconds at a low rate is not rounded away).
const ONE: u64 = 1_000;

/// The bucket as stored: its level (thousandths of a review) at `at_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub level: u64,
    pub at_ms: u64,
}

impl Bucket {
    pub fn encode(self) -> [u8; 16] {
        let mut out = [0; 16];
        let (level, at) = out.split_at_mut(8);
        level.copy_from_slice(&self.level.to_be_bytes());
        at.copy_from_slice(&self.at_ms.to_be_bytes());
        out
    }

    /// `None` for an empty (never written) or unreadable value: a full bucket.
    pub fn decode(bytes: &[u8]) -> Option<Bucket> {
        let (level, rest) = bytes.split_first_chunk::<8>()?;
        let (at, rest) = rest.split_first_chunk::<8>()?;
        rest.is_empty().then_some(Bucket {
            level: u64::from_be_bytes(*level),
            at_ms: u64::from_be_bytes(*at),
        })
    }
}

/// The bucket after one review is taken at `now_ms`, or `None` when the budget is spent.
/// `per_second`: the configured rate, which is also the bucket's size.
pub fn take(stored: Option<Bucket>, per_second: u32, now_ms: u64) -> Option<Bucket> {
    let size = u64::from(per_second).saturating_mul(ONE);
    let level = match stored {
        None => size,
        // The clock stepped back: start over with a full bucket (one burst), rather than refill
        // nothing until the clock is back where it was, which could be hours of no reviews.
        Some(bucket) if now_ms < bucket.at_ms => size,
        Some(bucket) => bucket
            .level
            .min(size)
            .saturating_add((now_ms - bucket.at_ms).saturating_mul(u64::from(per_second)))
            .min(size),
    };
    let level = level.checked_sub(ONE)?;
    Some(Bucket {
        level,
        at_ms: now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// Takes as many reviews as the bucket gives at `now_ms`.
    fn drain(mut bucket: Option<Bucket>, rate: u32, now_ms: u64) -> (usize, Option<Bucket>) {
        let mut taken = 0;
        while let Some(next) = take(bucket, rate, now_ms) {
            bucket = Some(next);
            taken += 1;
        }
        (taken, bucket)
    }

    #[test]
    fn a_full_bucket_gives_one_seconds_worth_then_refills_at_the_rate() {
        let (burst, bucket) = drain(None, 20, 1_000);
        assert_eq!(burst, 20);
        // 100 ms later: 2 more; one second later: the full 20 again, never more.
        assert_eq!(drain(bucket, 20, 1_100).0, 2);
        assert_eq!(drain(bucket, 20, 2_000).0, 20);
        assert_eq!(drain(bucket, 20, 60_000).0, 20);
    }

    #[test]
    fn a_low_rate_refills_in_fractions() {
        let (_, bucket) = drain(None, 1, 0);
        assert_eq!(take(bucket, 1, 999), None);
        let after_a_second = take(bucket, 1, 1_000);
        assert!(after_a_second.is_some());
        // 300 ms + 700 ms in two steps add up to one review.
        let bucket = after_a_second;
        assert_eq!(take(bucket, 1, 1_300), None);
        assert!(take(bucket, 1, 2_000).is_some());
    }

    #[test]
    fn over_a_long_run_the_rate_holds() {
        // A flood that asks every millisecond for ten seconds gets the first second's burst plus
        // ten seconds of refill, not more.
        let mut bucket = None;
        let mut taken = 0;
        for now in 0..10_000 {
            if let Some(next) = take(bucket, 20, now) {
                bucket = Some(next);
                taken += 1;
            }
        }
        assert!((200..=220).contains(&taken), "{taken}");
    }

    #[test]
    fn a_clock_that_steps_back_starts_over_instead_of_stopping_reviews() {
        let (_, bucket) = drain(None, 20, 5_000);
        let (burst, after) = drain(bucket, 20, 1_000);
        assert_eq!(burst, 20);
        // From the new time on, the rate holds again.
        assert_eq!(drain(after, 20, 1_050).0, 1);
    }

    #[test]
    fn a_bucket_sized_for_a_higher_rate_is_cut_to_this_one() {
        // Listeners configured with different rates share the bucket: a level written under a
        // higher rate never lets a lower-rate listener exceed its own burst.
        let high = Some(Bucket {
            level: 500 * ONE,
            at_ms: 0,
        });
        assert_eq!(drain(high, 20, 0).0, 20);
    }

    #[test]
    fn stored_bytes_round_trip_and_junk_reads_as_full() {
        let bucket = Bucket {
            level: 12_345,
            at_ms: 67_890,
        };
        assert_eq!(Bucket::decode(&bucket.encode()), Some(bucket));
        assert_eq!(Bucket::decode(b""), None);
        assert_eq!(Bucket::decode(&[1; 15]), None);
        assert_eq!(Bucket::decode(&[1; 17]), None);
    }
}
