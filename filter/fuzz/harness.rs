//! The fuzz harness: one function per fuzz target, each taking the fuzzer's bytes.
//!
//! Shared, not copied: every `fuzz_targets/<target>.rs` includes this file, and so does the
//! stable-Rust test `filter/tests/fuzz_corpus_replay.rs`, which runs each function over its
//! committed corpus and regressions. A function returns normally or panics: a panic is a finding
//! (an assertion below names the invariant that broke).
//!
//! Inputs are untrusted bytes throughout: nothing here assumes that a header name or value, a
//! body or a record is UTF-8. Structured inputs (the gate's request and answers) are read from the
//! bytes with `Input`, which never fails: past the end every read yields zeros / nothing.

// Each fuzz target uses one of these functions.
#![allow(dead_code)]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use metrics_gate::cache::{self, Lookup, Record, Table};
use metrics_gate::config::Config;
use metrics_gate::credentials::{self, certificate_identity, CredentialProblem};
use metrics_gate::gate::{Callout, Forward, Gate, RequestHead, Step};
use metrics_gate::header_map::{self, HeaderMap};
use metrics_gate::identity_headers::{asserts_identity, same_header};
use metrics_gate::jwt;
use metrics_gate::review::{Answer, ApiserverTrouble, Authentication, User};

/// A target's function.
pub type Harness = fn(&[u8]);

/// Every target: its name (the corpus directory) and its function.
pub const TARGETS: &[(&str, Harness)] = &[
    ("plugin_config", plugin_config),
    ("bearer_token", bearer_token),
    ("certificate_subject", certificate_subject),
    ("jwt_exp", jwt_exp),
    ("review_answers", review_answers),
    ("cache_records", cache_records),
    ("header_map", header_map),
    ("gate", gate),
];

// ---------------------------------------------------------------------------------------------
// Reading structured input out of the fuzzer's bytes.

struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        let mut word = [0u8; 8];
        for b in &mut word {
            *b = self.byte();
        }
        u64::from_le_bytes(word)
    }

    /// `n` bytes, or what is left.
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length-prefixed run: one length byte below 0xF0, else 12 bits of length over two bytes.
    fn bytes(&mut self) -> &'a [u8] {
        let first = self.byte();
        let len = if first < 0xF0 {
            usize::from(first)
        } else {
            (usize::from(first & 0x0F) << 8) | usize::from(self.byte())
        };
        self.take(len)
    }

    fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }

    /// A word of `dictionary` (half of the choices) or raw bytes.
    fn pick(&mut self, dictionary: &[&'static [u8]]) -> &'a [u8] {
        let choice = usize::from(self.byte()) % (dictionary.len().max(1) * 2);
        match dictionary.get(choice) {
            Some(word) => word,
            None => self.bytes(),
        }
    }

    /// Like `pick`, as text (raw bytes read lossily: method, path and subject are `&str`).
    fn text(&mut self, dictionary: &[&'static [u8]]) -> String {
        String::from_utf8_lossy(self.pick(dictionary)).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Words the structured targets draw from (half of the time; raw bytes the other half).

const METHODS: &[&[u8]] = &[b"GET", b"HEAD", b"POST", b"get", b"PUT", b"OPTIONS"];

const PATHS: &[&[u8]] = &[
    b"/metrics",
    b"/metrics?format=prometheus",
    b"/metrics/slis",
    b"/metrics/cadvisor",
    b"/federate",
    b"/metrics/",
    b"//metrics",
    b"/%6detrics",
    b"/metrics;x",
    b"/metrics%3Fx",
    b"/debug/pprof",
    b"",
];

const HEADER_NAMES: &[&[u8]] = &[
    b"authorization",
    b"Authorization",
    b"AUTHORIZATION",
    b"proxy-authorization",
    b"x-remote-user",
    b"X_Remote_Groups",
    b"x-remote-extra-scopes",
    b"impersonate-user",
    b"Impersonate_Group",
    b"cookie",
    b"remote_user",
    b"x-forwarded-user",
    b"x-forwarded-client-cert",
    b"x-auth-request-email",
    b"x-webauth-user",
    b"x-metrics-user",
    b"x_metrics_groups",
    b"accept",
    b"user-agent",
    b"x-forwarded-for",
];

/// The shape of a projected ServiceAccount token (RS256; the signature is random bytes).
const JWT: &[u8] = b"eyJhbGciOiJSUzI1NiIsImtpZCI6IjNxQ2xKNTVLaHhfSnFnU3pXc2NZWEFYZ0ZtZ0R2N1NYWGFqZ3lOeFN0QVkifQ.eyJhdWQiOlsiaHR0cHM6Ly9rdWJlcm5ldGVzLmRlZmF1bHQuc3ZjLmNsdXN0ZXIubG9jYWwiXSwiZXhwIjoxNzk1NTUwMDcxLCJpYXQiOjE3NjQwMTQwNzEsImlzcyI6Imh0dHBzOi8va3ViZXJuZXRlcy5kZWZhdWx0LnN2Yy5jbHVzdGVyLmxvY2FsIiwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50Om9ic2VydmFiaWxpdHk6cHJvbWV0aGV1cy1zZXJ2ZXIifQ.c2lnbmF0dXJl";

const HEADER_VALUES: &[&[u8]] = &[
    b"Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6IjNxQ2xKNTVLaHhfSnFnU3pXc2NZWEFYZ0ZtZ0R2N1NYWGFqZ3lOeFN0QVkifQ.eyJhdWQiOlsiaHR0cHM6Ly9rdWJlcm5ldGVzLmRlZmF1bHQuc3ZjLmNsdXN0ZXIubG9jYWwiXSwiZXhwIjoxNzk1NTUwMDcxLCJpYXQiOjE3NjQwMTQwNzEsImlzcyI6Imh0dHBzOi8va3ViZXJuZXRlcy5kZWZhdWx0LnN2Yy5jbHVzdGVyLmxvY2FsIiwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50Om9ic2VydmFiaWxpdHk6cHJvbWV0aGV1cy1zZXJ2ZXIifQ.c2lnbmF0dXJl",
    b"Bearer abc.def.ghi",
    b"bearer   YWJj==",
    b"BEARER abc",
    b"Bearer ",
    b"Bearer a b",
    b"Bearer abc,Bearer def",
    b"Basic YWJjOmRlZg==",
    b"Bearer caf\xE9",
    b"system:masters",
    b"",
];

const USERS: &[&[u8]] = &[
    b"system:serviceaccount:observability:prometheus-server",
    b"system:kube-scheduler",
    b"system:serviceaccount:observability:nobody",
    b"system:anonymous",
    b"",
];

const GROUPS: &[&str] = &[
    "system:authenticated",
    "system:monitoring",
    "system:serviceaccounts",
    "system:unauthenticated",
];

const SUBJECTS: &[&[u8]] = &[
    b"CN=system:kube-scheduler",
    b"CN=prometheus,O=system:monitoring",
    b"CN=scraper,O=monitoring,O=system:monitoring",
    b"O=system:masters",
    b"CN=a\\,b,O=x\\+y",
    b"CN=,O=system:monitoring",
    b"",
];

const STATUSES: &[Option<u16>] = &[
    Some(201),
    Some(200),
    Some(401),
    Some(403),
    Some(404),
    Some(500),
    Some(503),
    Some(504),
    None,
];

/// Real kube-apiserver 1.28 answers (compact), and a few broken ones.
const BODIES: &[&[u8]] = &[
    br#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"token":"<redacted>"},"status":{"authenticated":true,"user":{"username":"system:serviceaccount:observability:prometheus-server","uid":"e2a1121a-9135-4ae6-a12c-ae79aa2a43a2","groups":["system:serviceaccounts","system:serviceaccounts:observability","system:authenticated"]},"audiences":["https://kubernetes.default.svc.cluster.local"]}}"#,
    br#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"token":"<redacted>"},"status":{"user":{},"error":"invalid bearer token"}}"#,
    br#"{"kind":"TokenReview","status":{"authenticated":true,"user":{"username":"system:kube-scheduler","groups":["system:monitoring"]}}}"#,
    br#"{"kind":"TokenReview","status":{"authenticated":true,"user":{}}}"#,
    br#"{"kind":"SubjectAccessReview","apiVersion":"authorization.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"nonResourceAttributes":{"path":"/metrics","verb":"get"},"user":"u"},"status":{"allowed":true,"reason":"RBAC: allowed by ClusterRoleBinding"}}"#,
    br#"{"kind":"SubjectAccessReview","apiVersion":"authorization.k8s.io/v1","spec":{},"status":{"allowed":false}}"#,
    br#"{"kind":"SubjectAccessReview","status":{"allowed":true,"denied":true}}"#,
    br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"tokenreviews.authentication.k8s.io is forbidden","reason":"Forbidden","code":403}"#,
    b"",
];

/// The listeners the gate target is driven through (chosen by one byte).
const GATE_CONFIGS: &[&str] = &[
    "{}",
    r#"{"allowed_paths":["/metrics","/metrics/slis","/metrics/cadvisor"],
        "audiences":["https://kubernetes.default.svc.cluster.local"],
        "authorization":{"static_allow":{"users":["system:serviceaccount:observability:prometheus-server"],"groups":["system:monitoring"]}},
        "identity_headers":{"enabled":true}}"#,
    r#"{"client_certificates":true,"forward_caller_credentials":true,
        "authorization":{"static_allow":{"users":["system:kube-scheduler"]}}}"#,
    r#"{"client_certificates":true,"allowed_paths":["/metrics","/federate"],"max_token_bytes":64,
        "authorization":{"resource_attributes":{"namespace":"kube-system","resource":"services","subresource":"proxy","name":"kube-scheduler"}},
        "identity_headers":{"enabled":true,"user":"x-metrics-user","groups":"x-metrics-groups","groups_separator":","}}"#,
    r#"{"forward_caller_credentials":true,
        "authorization":{"static_allow":{"groups":["system:authenticated"]}},
        "cache":{"token_review_ttl_seconds":0,"allow_ttl_seconds":0,"deny_ttl_seconds":0}}"#,
];

fn gate_configs() -> &'static [Config] {
    static CONFIGS: OnceLock<Vec<Config>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        GATE_CONFIGS
            .iter()
            .filter_map(|json| {
                let parsed = Config::parse(json.as_bytes());
                assert!(
                    parsed.is_ok(),
                    "gate config {json} does not parse: {parsed:?}"
                );
                parsed.ok()
            })
            .collect()
    })
}

/// The review configs: no audiences, the apiserver's own, one the answers never carry.
fn review_configs() -> &'static [Config] {
    static CONFIGS: OnceLock<Vec<Config>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        [
            "{}",
            r#"{"audiences":["https://kubernetes.default.svc.cluster.local"]}"#,
            r#"{"audiences":["metrics-gate"]}"#,
        ]
        .iter()
        .filter_map(|json| Config::parse(json.as_bytes()).ok())
        .collect()
    })
}

fn chosen<T>(items: &[T], byte: u8) -> Option<&T> {
    items.get(usize::from(byte) % items.len().max(1))
}

/// Header pairs: a count, then each name and value a dictionary word or raw bytes.
fn header_pairs<'a>(input: &mut Input<'a>) -> Vec<(&'a [u8], &'a [u8])> {
    let count = input.byte() % 9;
    (0..count)
        .map(|_| (input.pick(HEADER_NAMES), input.pick(HEADER_VALUES)))
        .collect()
}

fn is_token68(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

// ---------------------------------------------------------------------------------------------
// plugin_config: Config::parse on arbitrary bytes.

pub fn plugin_config(data: &[u8]) {
    let first = Config::parse(data);
    match &first {
        Ok(config) => {
            // Deterministic: the same input parses to the same configuration.
            let again = Config::parse(data);
            assert_eq!(again.as_ref(), Ok(config), "a second parse differs");
            // What validation promises the rest of the filter.
            assert!(!config.allowed_paths.is_empty());
            for path in &config.allowed_paths {
                assert!(path.starts_with('/') && path.len() <= 256, "path {path:?}");
                assert!(!path.contains("//") && !path.contains('?'), "path {path:?}");
                assert!(
                    path.split('/').all(|s| s != "." && s != ".."),
                    "path {path:?}"
                );
            }
            assert!((100..=60_000).contains(&config.apiserver_timeout_ms));
            assert!((1..=3600).contains(&config.retry_after_seconds));
            assert!((64..=65_536).contains(&config.max_token_bytes));
            assert!((1..=1024).contains(&config.max_callouts_in_flight));
            assert!((16..=1_048_576).contains(&config.cache.max_entries));
            let cache = &config.cache;
            for ttl in [
                cache.token_review_ttl_seconds,
                cache.allow_ttl_seconds,
                cache.deny_ttl_seconds,
            ] {
                assert!(ttl <= 86_400);
            }
            assert!(cache.stale_allow_seconds <= 3_600);
            if let Some(names) = &config.identity_headers {
                assert!(!names.user.is_empty() && names.user != names.groups);
                assert!(!names.groups_separator.is_empty());
            }
        }
        Err(error) => {
            // The one log line Envoy prints must render, and name a field.
            let line = error.to_string();
            assert!(
                !error.field.is_empty() && line.contains(&error.field),
                "{line}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bearer_token: arbitrary header pairs.

pub fn bearer_token(data: &[u8]) {
    let mut input = Input::new(data);
    let max_token_bytes = match input.byte() % 4 {
        0 => 64,
        1 => 8192,
        2 => 65_536,
        _ => u64::from(input.u16()),
    };
    let pairs = header_pairs(&mut input);
    let result = credentials::bearer_token(pairs.iter().copied(), max_token_bytes);
    let authorization: Vec<&[u8]> = pairs
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"authorization"))
        .map(|(_, value)| *value)
        .collect();
    match (authorization.as_slice(), result) {
        ([], result) => assert_eq!(result, Err(CredentialProblem::Missing)),
        ([_, _, ..], result) => assert_eq!(result, Err(CredentialProblem::Duplicate)),
        ([value], Ok(token)) => {
            assert!(
                !token.is_empty() && token.is_ascii() && is_token68(token),
                "{token:?}"
            );
            assert!(u64::try_from(token.len()).is_ok_and(|n| n <= max_token_bytes));
            // The token is the end of the one authorization value, after "Bearer" and spaces.
            assert!(
                value.ends_with(token.as_bytes()),
                "token not from the header"
            );
            let scheme = value.get(..7).unwrap_or_default();
            assert!(scheme.eq_ignore_ascii_case(b"bearer "), "scheme {scheme:?}");
        }
        ([value], Err(_)) => {
            // The canonical spelling of a plausible token is never refused.
            if let Some(token) = value.strip_prefix(b"Bearer ") {
                if let Ok(token) = std::str::from_utf8(token) {
                    let fits = u64::try_from(token.len()).is_ok_and(|n| n <= max_token_bytes);
                    assert!(
                        !(fits && !token.starts_with(' ') && is_token68(token)),
                        "refused {token:?}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// certificate_subject: a verified certificate's subject, as Envoy renders it.

pub fn certificate_subject(data: &[u8]) {
    let subject = String::from_utf8_lossy(data);
    if let Some((user, groups)) = certificate_identity(&subject) {
        assert!(!user.is_empty(), "empty user from {subject:?}");
        assert_eq!(
            groups.last().map(String::as_str),
            Some("system:authenticated")
        );
        assert!(
            groups.iter().all(|g| !g.is_empty()),
            "empty group from {subject:?}"
        );
        assert!(subject.contains("CN"), "a user without a CN in {subject:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// jwt_exp: jwt::expiry on arbitrary strings, and on JWTs around arbitrary payloads.

pub fn jwt_exp(data: &[u8]) {
    let mut input = Input::new(data);
    if input.byte() & 1 == 0 {
        let token = String::from_utf8_lossy(input.rest());
        if jwt::expiry(&token).is_some() {
            assert_eq!(token.matches('.').count(), 2, "an expiry from {token:?}");
        }
        return;
    }
    // A JWT whose payload is the rest of the bytes: the expiry is exactly the payload's `exp`.
    let payload = input.rest();
    let encoded = URL_SAFE_NO_PAD.encode(payload);
    let token = format!("eyJhbGciOiJSUzI1NiJ9.{encoded}.c2lnbmF0dXJl");
    let expected = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|json| json.get("exp").and_then(serde_json::Value::as_f64))
        .filter(|exp| encoded.len() <= 8192 && exp.is_finite() && *exp >= 0.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let expected = expected.map(|exp| exp as u64);
    assert_eq!(jwt::expiry(&token), expected, "payload {payload:?}");
}

// ---------------------------------------------------------------------------------------------
// review_answers: what the apiserver says, read and cached.

pub fn review_answers(data: &[u8]) {
    let mut input = Input::new(data);
    let configs = review_configs();
    let Some(config) = chosen(configs, input.byte()) else {
        return;
    };
    let status = match chosen(STATUSES, input.byte()) {
        Some(&status) if input.byte() & 0x80 == 0 => status,
        _ => Some(input.u16()),
    };
    let body = input.rest();
    for table in [Table::TokenReview, Table::AccessReview] {
        match Answer::read(table, config, status, body) {
            Ok(answer) => {
                assert!(
                    matches!(status, Some(200 | 201)),
                    "an answer with {status:?}"
                );
                let of_its_kind = match (&answer, table) {
                    (Answer::Token(Authentication::Authenticated(user)), Table::TokenReview) => {
                        !user.username.is_empty()
                    }
                    (Answer::Token(Authentication::Rejected), Table::TokenReview)
                    | (Answer::Access(_), Table::AccessReview) => true,
                    _ => false,
                };
                assert!(of_its_kind, "{answer:?} read as {table:?}");
                let encoded = answer.encode();
                assert!(!encoded.is_empty());
                assert_eq!(Answer::decode(table, &encoded), Some(answer), "round trip");
            }
            Err(ApiserverTrouble(detail)) => assert!(!detail.is_empty()),
        }
        // The cache's bytes are shared by every listener: any bytes may sit in a slot.
        if let Some(answer) = Answer::decode(table, body) {
            if let Answer::Token(Authentication::Authenticated(user)) = &answer {
                assert!(!user.username.is_empty());
            }
            let encoded = answer.encode();
            assert_eq!(Answer::decode(table, &encoded), Some(answer), "round trip");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// cache_records: the decision cache's slots.

pub fn cache_records(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let now_ms = input.u64();
    let waiting_since_ms = (flags & 1 == 1).then(|| input.u64());
    let own_digest = flags & 2 == 2;
    let mut digest = [0u8; 32];
    if !own_digest {
        for (out, b) in digest.iter_mut().zip(input.take(32)) {
            *out = *b;
        }
    }
    let ttl_seconds = input.u32();
    let token_exp = (flags & 4 == 4).then(|| input.u64());
    let max_entries = input.u32();
    let bytes = input.rest();

    // Any bytes may be in a slot: decode never panics, and a record is its own encoding.
    let record = Record::decode(bytes);
    if let Some(record) = &record {
        assert_eq!(record.encode(), bytes, "decode/encode is not the identity");
        assert_eq!(Record::decode(&record.encode()).as_ref(), Some(record));
        if own_digest {
            digest = match record {
                Record::Ready { digest, .. }
                | Record::Pending { digest, .. }
                | Record::Failed { digest, .. } => *digest,
            };
        }
    }

    // Records built from arbitrary fields survive their encoding.
    let value = bytes.get(..bytes.len().min(64)).unwrap_or_default();
    for built in [
        Record::Ready {
            digest,
            stored_ms: ttl_seconds.into(),
            expires_ms: now_ms,
            value: value.to_vec(),
            negative: ttl_seconds.is_multiple_of(2),
        },
        Record::Pending {
            digest,
            lease_until_ms: now_ms,
            kept: value.to_vec(),
        },
        Record::Failed {
            digest,
            at_ms: now_ms,
            kept: value.to_vec(),
        },
    ] {
        assert_eq!(Record::decode(&built.encode()), Some(built));
    }

    // lookup against its contract, for any times.
    let found = cache::lookup(record.as_ref(), &digest, now_ms, waiting_since_ms);
    let same = |d: &[u8; 32]| *d == digest;
    match (&record, &found) {
        (None, Lookup::Miss { evicts: false }) => {}
        (
            Some(Record::Ready {
                digest: d,
                expires_ms,
                value,
                stored_ms,
                ..
            }),
            Lookup::Hit {
                value: v,
                stored_ms: s,
            },
        ) => {
            assert!(same(d) && *expires_ms > now_ms && value == v && stored_ms == s);
        }
        (
            Some(Record::Pending {
                digest: d,
                lease_until_ms,
                ..
            }),
            Lookup::Wait,
        ) => {
            assert!(same(d) && *lease_until_ms > now_ms);
        }
        (
            Some(Record::Failed {
                digest: d, at_ms, ..
            }),
            Lookup::Failed,
        ) => {
            assert!(same(d) && waiting_since_ms.is_some_and(|since| since <= *at_ms));
        }
        (Some(record), Lookup::Miss { evicts }) => {
            let (d, live, answers) = match record {
                Record::Ready {
                    digest, expires_ms, ..
                } => (digest, *expires_ms > now_ms, *expires_ms > now_ms),
                Record::Pending {
                    digest,
                    lease_until_ms,
                    ..
                } => (digest, *lease_until_ms > now_ms, *lease_until_ms > now_ms),
                Record::Failed { digest, at_ms, .. } => (
                    digest,
                    false,
                    waiting_since_ms.is_some_and(|since| since <= *at_ms),
                ),
            };
            assert_eq!(*evicts, !same(d) && live, "evicts");
            assert!(
                !(same(d) && answers),
                "a miss for a live record of the question"
            );
        }
        (record, found) => {
            assert!(
                record.is_none() && found == &Lookup::Miss { evicts: false },
                "{record:?} gave {found:?}"
            );
        }
    }

    // Lifetimes: never past the TTL, never past the token, never already over.
    let stored_ms = now_ms.wrapping_sub(u64::from(ttl_seconds));
    let _ = cache::fresh_for_reader(stored_ms, ttl_seconds, now_ms);
    if let Some(until) = cache::token_review_expiry_ms(now_ms, ttl_seconds, token_exp) {
        assert!(until > now_ms);
        assert!(u128::from(until) <= u128::from(now_ms) + u128::from(ttl_seconds) * 1000);
        if let Some(exp) = token_exp {
            assert!(u128::from(until) <= u128::from(exp) * 1000);
        }
    }
    if ttl_seconds == 0 {
        assert_eq!(cache::token_review_expiry_ms(now_ms, 0, token_exp), None);
    }

    // What a slot keeps for a question is its own answer only, and an expired answer stands in
    // only as that very answer, within the window after its expiry (any u32 serves as a window).
    let stale_ms = u64::from(max_entries);
    if let Some(record) = &record {
        let kept = record.kept_for(&digest);
        match record {
            Record::Ready { digest: d, .. } if same(d) => assert_eq!(kept, record.encode()),
            Record::Pending {
                digest: d, kept: k, ..
            }
            | Record::Failed {
                digest: d, kept: k, ..
            } if same(d) => {
                assert_eq!(&kept, k);
            }
            _ => assert!(kept.is_empty(), "another question's record keeps {kept:?}"),
        }
    }
    if let Some((value, until)) = cache::stale_answer(record.as_ref(), &digest, now_ms, stale_ms) {
        assert!(
            stale_ms > 0 && until > now_ms,
            "stale until {until} at {now_ms}"
        );
        let kept = record
            .as_ref()
            .map(|r| r.kept_for(&digest))
            .unwrap_or_default();
        let standing_in = match Record::decode(&kept) {
            Some(Record::Ready {
                digest: d,
                expires_ms,
                value: v,
                ..
            }) => same(&d) && v == value && until == expires_ms.saturating_add(stale_ms),
            _ => false,
        };
        assert!(standing_in, "a stale answer that is not the kept one");
    }

    // The question's two slots are distinct and inside the table.
    for table in [Table::TokenReview, Table::AccessReview] {
        let keys = cache::slot_keys(table, &digest, max_entries);
        assert_ne!(keys[0], keys[1]);
        for key in &keys {
            let slot = key.rsplit('/').next().and_then(|s| s.parse::<u32>().ok());
            assert!(slot.is_some_and(|s| s < max_entries.max(2)), "{key}");
        }
    }

    // The slot a question takes: the one that holds it, if any; never out of the two.
    let other = record.as_ref().filter(|r| !r.is_for(&digest));
    for pair in [
        [record.as_ref(), other],
        [other, record.as_ref()],
        [None, record.as_ref()],
    ] {
        let chosen = cache::choose_slot(pair, &digest, now_ms);
        assert!(chosen < 2);
        if let Some(holding) = pair
            .iter()
            .position(|r| r.is_some_and(|r| r.is_for(&digest)))
        {
            assert_eq!(
                chosen, holding,
                "a question must use the slot that holds it"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// header_map: the proxy-wasm serialized header map.

pub fn header_map(data: &[u8]) {
    // As a buffer from the host: whatever it holds, reading it stops and yields what adds up.
    let map = HeaderMap::parse(data);
    let pairs: Vec<(&[u8], &[u8])> = map.iter().collect();
    let declared = data
        .first_chunk::<4>()
        .map_or(0, |word| u64::from(u32::from_le_bytes(*word)));
    assert!(u64::try_from(pairs.len()).is_ok_and(|n| n <= declared));
    for (name, _) in &pairs {
        let first = pairs.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        if let Ok(name) = std::str::from_utf8(name) {
            assert_eq!(map.get(name), first, "get({name:?})");
        }
    }
    // When every declared pair was read and nothing is left over, what was read serializes back
    // to the same count and sizes (the byte after each field is skipped, NUL or not).
    let again = header_map::serialize(pairs.iter().copied());
    let whole =
        u64::try_from(pairs.len()).is_ok_and(|n| n == declared) && again.len() == data.len();
    if whole {
        let table = 4 + 8 * pairs.len();
        assert_eq!(
            again.get(..table),
            data.get(..table),
            "sizes read back differently"
        );
    }
    assert_eq!(HeaderMap::parse(&again).iter().collect::<Vec<_>>(), pairs);

    // As pairs the gate could see: serialize then parse is the identity.
    let mut input = Input::new(data);
    let built = header_pairs(&mut input);
    let buffer = header_map::serialize(built.iter().copied());
    assert_eq!(HeaderMap::parse(&buffer).iter().collect::<Vec<_>>(), built);
}

// ---------------------------------------------------------------------------------------------
// gate: the whole decision, from the request head through any sequence of answers.

fn user(input: &mut Input<'_>) -> User {
    let username = String::from_utf8_lossy(input.pick(USERS)).into_owned();
    let mask = input.byte();
    let mut groups: Vec<String> = GROUPS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, g)| (*g).to_owned())
        .collect();
    if mask & 0x80 != 0 {
        groups.push(String::from_utf8_lossy(input.bytes()).into_owned());
    }
    User {
        username,
        groups,
        ..User::default()
    }
}

/// A callout's cache lifetimes: never past the TTL or the token's `exp`, and only an allow may
/// stand in past its TTL.
fn check_callout(config: &Config, callout: &Callout, token: Option<&str>) {
    let someone = Answer::Token(Authentication::Authenticated(User {
        username: "someone".to_owned(),
        ..User::default()
    }));
    let exp_ms = token
        .and_then(jwt::expiry)
        .map(|exp| exp.saturating_mul(1000));
    for at_ms in [0, 1_800_000_000_000, u64::MAX] {
        for denial in [
            Answer::Access(false),
            Answer::Token(Authentication::Rejected),
        ] {
            assert_eq!(
                callout.stale_until(&denial, at_ms),
                None,
                "{denial:?} stands in"
            );
        }
        let (allow, other) = match callout.table {
            Table::TokenReview => (someone.clone(), Answer::Access(true)),
            Table::AccessReview => (Answer::Access(true), someone.clone()),
        };
        assert_eq!(
            callout.stale_until(&other, at_ms),
            None,
            "{other:?} stands in"
        );
        if let Some(until) = callout.stale_until(&allow, at_ms) {
            assert!(until <= at_ms, "stale past its window");
            if callout.table == Table::TokenReview {
                assert!(
                    exp_ms.is_some_and(|exp| until <= exp),
                    "stale past the token"
                );
            }
        } else {
            assert!(callout.table == Table::TokenReview && exp_ms.is_none());
        }
        if let Some(until) = callout.cache_until(config, &allow, at_ms) {
            let ttl = callout.ttl_seconds(config, &allow);
            assert!(until > at_ms);
            assert!(u128::from(until) <= u128::from(at_ms) + u128::from(ttl) * 1000);
            if callout.table == Table::TokenReview {
                assert!(
                    exp_ms.is_none_or(|exp| until <= exp),
                    "cached past the token"
                );
            }
        }
    }
}

/// What every Forward must have removed: the caller's credentials (unless the listener forwards
/// them) and every header that asserts an identity, in whatever spelling the caller sent.
fn check_forward(config: &Config, headers: &[(&[u8], &[u8])], forward: &Forward) {
    for (name, _) in headers {
        let credentials =
            !config.forward_caller_credentials && name.eq_ignore_ascii_case(b"authorization");
        let own = config
            .identity_headers
            .as_ref()
            .is_some_and(|h| same_header(name, &h.user) || same_header(name, &h.groups));
        if credentials || own || asserts_identity(name) {
            assert!(
                forward.remove.iter().any(|r| r.as_slice() == *name),
                "Forward keeps the caller's header {:?} (remove: {:?})",
                String::from_utf8_lossy(name),
                forward.remove
            );
        }
    }
}

pub fn gate(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(config) = chosen(gate_configs(), input.byte()) else {
        return;
    };
    let method = input.text(METHODS);
    let path = input.text(PATHS);
    let peer_subject = match input.byte() % 3 {
        0 => None,
        _ => Some(input.text(SUBJECTS)),
    };
    let headers = header_pairs(&mut input);

    // What the contract allows, worked out from the request alone.
    let bare_path = path.split_once('?').map_or(path.as_str(), |(p, _)| p);
    let path_ok = config.allowed_paths.iter().any(|p| p == bare_path);
    let method_ok = method == "GET" || method == "HEAD";
    let certificate = peer_subject
        .as_deref()
        .filter(|_| config.client_certificates)
        .and_then(certificate_identity);
    let admits = |user: &str, groups: &[String]| config.static_allow.admits(user, groups);

    let mut gate = Gate::default();
    let head = RequestHead {
        method: &method,
        path: &path,
        headers: &headers,
        peer_subject: peer_subject.as_deref(),
        verified_subject: None,
    };
    // The question the gate waits for, whether the caller is authenticated, whether it is over.
    let mut outstanding: Option<Table> = None;
    let mut authenticated = false;
    let mut finished = false;
    match gate.on_request(config, &head) {
        Step::Reply(reply) => {
            if !path_ok {
                assert_eq!(reply.status, 404, "path {path:?}");
            } else if !method_ok {
                assert_eq!(reply.status, 405, "method {method:?}");
            }
            finished = true;
        }
        Step::Call(callout) => {
            assert!(path_ok && method_ok, "a review for {method:?} {path:?}");
            // A TokenReview only for one plausible token; an access review at once only for a
            // trusted certificate that is not statically allowed.
            let expected = match (callout.table, &certificate) {
                (Table::TokenReview, None) => {
                    credentials::bearer_token(headers.iter().copied(), config.max_token_bytes)
                        .is_ok()
                }
                (Table::AccessReview, Some((user, groups))) => !admits(user, groups),
                _ => false,
            };
            assert!(
                expected,
                "{:?} review on request (certificate {certificate:?})",
                callout.table
            );
            let token = credentials::bearer_token(headers.iter().copied(), config.max_token_bytes);
            check_callout(config, &callout, token.ok());
            authenticated = callout.table == Table::AccessReview;
            outstanding = Some(callout.table);
        }
        Step::Forward(forward) => {
            assert!(path_ok && method_ok, "Forward of {method:?} {path:?}");
            let admitted = certificate.as_ref().is_some_and(|(u, g)| admits(u, g));
            assert!(
                admitted,
                "Forward without any answer (certificate {certificate:?})"
            );
            check_forward(config, &headers, &forward);
            finished = true;
        }
    }

    for _ in 0..8 {
        if input.is_empty() {
            break;
        }
        // `answer` is what the gate was told, as the contract reads it.
        let (answer, step) = match input.byte() % 6 {
            0 => {
                let answer = Ok(Answer::Token(Authentication::Authenticated(user(
                    &mut input,
                ))));
                (answer.clone(), gate.on_answer(config, answer))
            }
            1 => {
                let answer = Ok(Answer::Token(Authentication::Rejected));
                (answer.clone(), gate.on_answer(config, answer))
            }
            2 => {
                let answer = Ok(Answer::Access(input.bool()));
                (answer.clone(), gate.on_answer(config, answer))
            }
            3 => {
                let detail = String::from_utf8_lossy(input.bytes()).into_owned();
                let answer = Err(ApiserverTrouble(detail));
                (answer.clone(), gate.on_answer(config, answer))
            }
            4 => {
                let status = match chosen(STATUSES, input.byte()) {
                    Some(&status) if input.byte() & 0x80 == 0 => status,
                    _ => Some(input.u16()),
                };
                let body = input.pick(BODIES);
                let answer = match outstanding {
                    Some(table) => Answer::read(table, config, status, body),
                    None => Err(ApiserverTrouble("nothing asked".to_owned())),
                };
                (answer, gate.on_review_answer(config, status, body))
            }
            _ => {
                let answer = Err(ApiserverTrouble("callout refused".to_owned()));
                (answer, gate.trouble(config, "callout refused".to_owned()))
            }
        };
        if finished {
            assert!(
                matches!(&step, Step::Reply(reply) if reply.status == 503),
                "after the end, {answer:?} gave {step:?}"
            );
            continue;
        }
        match step {
            Step::Reply(reply) => {
                if answer.is_err() {
                    assert_eq!(reply.status, 503, "trouble answered {}", reply.status);
                }
                finished = true;
                outstanding = None;
            }
            Step::Call(callout) => {
                let authenticated_now = matches!(
                    (&outstanding, &answer),
                    (Some(Table::TokenReview), Ok(Answer::Token(Authentication::Authenticated(u))))
                        if !admits(&u.username, &u.groups)
                );
                assert!(
                    callout.table == Table::AccessReview && authenticated_now,
                    "{:?} review after {answer:?} while awaiting {outstanding:?}",
                    callout.table
                );
                check_callout(config, &callout, None);
                authenticated = true;
                outstanding = Some(Table::AccessReview);
            }
            Step::Forward(forward) => {
                let justified = match (&outstanding, &answer) {
                    (
                        Some(Table::TokenReview),
                        Ok(Answer::Token(Authentication::Authenticated(u))),
                    ) => admits(&u.username, &u.groups),
                    (Some(Table::AccessReview), Ok(Answer::Access(true))) => authenticated,
                    _ => false,
                };
                assert!(
                    justified && path_ok && method_ok,
                    "Forward of {method:?} {path:?} after {answer:?} while awaiting {outstanding:?}"
                );
                check_forward(config, &headers, &forward);
                finished = true;
                outstanding = None;
            }
        }
    }
}
