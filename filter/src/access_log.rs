//! What the filter tells Envoy's access log about each request it decides: who asked (the username,
//! never the token), the decision and why, whether the answer came from the cache, and how long
//! the request waited for the apiserver.
//!
//! The filter hands these over as filter state (`proxy_set_property`); Envoy keeps each one as
//! `wasm.<key>`, and the listener's access log reads them with `%FILTER_STATE(wasm.<key>:PLAIN)%`
//! (the renderer writes that format). Envoy's own fields (status, path, duration, upstream) come
//! from Envoy itself.

use crate::reply::Outcome;

/// Filter-state keys, without the `wasm.` prefix Envoy puts in front.
pub const USER: &str = "metrics_gate.user";
pub const DECISION: &str = "metrics_gate.decision";
pub const REASON: &str = "metrics_gate.reason";
pub const CACHE: &str = "metrics_gate.cache";
pub const REVIEW_MS: &str = "metrics_gate.review_ms";

/// Every key, for the renderer's log format.
pub const KEYS: [&str; 5] = [USER, DECISION, REASON, CACHE, REVIEW_MS];

/// Where a request's review answers came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum CacheUse {
    /// No review was needed (404, 405, 401 without a token, a client certificate with a static
    /// allow).
    #[default]
    None,
    /// Every answer it needed was cached.
    Hit,
    /// It waited for another request's identical review.
    Coalesced,
    /// It asked the apiserver (or was refused before it could).
    Miss,
}

impl CacheUse {
    /// A request that asks two questions reports the costlier way (miss over coalesced over hit).
    pub fn and(self, other: CacheUse) -> CacheUse {
        self.max(other)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheUse::None => "none",
            CacheUse::Hit => "hit",
            CacheUse::Coalesced => "coalesced",
            CacheUse::Miss => "miss",
        }
    }
}

/// The decision's name in the log: the same words as the filter's counters.
pub fn decision(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allowed => "allowed",
        Outcome::PathNotAllowed => "denied_path",
        Outcome::MethodNotAllowed => "denied_method",
        Outcome::Unauthenticated => "unauthenticated",
        Outcome::Forbidden => "forbidden",
        Outcome::ApiserverError => "apiserver_error",
    }
}

/// One request's entry: what the gate knows (`user`, `reason`) and what the host adds (`cache`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub user: Option<String>,
    pub reason: String,
    pub cache: CacheUse,
}

impl Entry {
    /// Hands each filter-state value to `set`, borrowed (this runs on every request); a value
    /// that is unknown is left out (the log shows it as null). `review_ms`: how long the request
    /// was held for reviews, `None` when it was never held.
    pub fn each_property(
        &self,
        outcome: Outcome,
        review_ms: Option<u64>,
        mut set: impl FnMut(&'static str, &[u8]),
    ) {
        if let Some(user) = &self.user {
            set(USER, user.as_bytes());
        }
        set(DECISION, decision(outcome).as_bytes());
        set(REASON, self.reason.as_bytes());
        set(CACHE, self.cache.as_str().as_bytes());
        if let Some(ms) = review_ms {
            set(REVIEW_MS, ms.to_string().as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_second_question_reports_the_costlier_way() {
        assert_eq!(CacheUse::Hit.and(CacheUse::Miss), CacheUse::Miss);
        assert_eq!(CacheUse::Miss.and(CacheUse::Hit), CacheUse::Miss);
        assert_eq!(CacheUse::Hit.and(CacheUse::Coalesced), CacheUse::Coalesced);
        assert_eq!(CacheUse::None.and(CacheUse::Hit), CacheUse::Hit);
    }

    #[test]
    fn unknown_values_are_left_out() {
        let collect = |entry: &Entry, outcome, review_ms| {
            let mut out: Vec<(&str, Vec<u8>)> = Vec::new();
            entry.each_property(outcome, review_ms, |k, v| out.push((k, v.to_vec())));
            out
        };
        let entry = Entry {
            reason: "path not in the allow-list".into(),
            ..Entry::default()
        };
        let keys: Vec<&str> = collect(&entry, Outcome::PathNotAllowed, None)
            .iter()
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(keys, [DECISION, REASON, CACHE]);
        let full = Entry {
            user: Some("system:serviceaccount:monitoring:prometheus".into()),
            reason: "cache hit".into(),
            cache: CacheUse::Hit,
        };
        let props = collect(&full, Outcome::Allowed, Some(0));
        assert_eq!(props.len(), KEYS.len());
        assert!(props.contains(&(DECISION, b"allowed".to_vec())));
        assert!(props.contains(&(REVIEW_MS, b"0".to_vec())));
    }
}
