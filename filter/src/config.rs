//! The plugin configuration: the JSON an operator writes into the Envoy filter's `configuration`.
//!
//! Parsing is strict on purpose: an unknown field is far more often a typo (`allowed_path`) that would
//! silently fall back to a default than a forward-compatible extension, and a proxy that guards
//! metrics must not guess. Every problem is reported as `<field>: <problem>` so that the single log
//! line Envoy prints when it refuses the configuration tells the operator what to fix.

use crate::text::quoted;
use std::fmt;

use serde_json::Value;

use crate::fields::Fields;

mod checks;
use checks::{check_header_name, check_name, check_path, check_resource_attributes};

/// What the filter needs at request time, validated once in `on_configure`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Envoy cluster the TokenReview/SubjectAccessReview callouts go to. It must inject the proxy's
    /// own credential (the filter never sees it): see the README, "The proxy's own credential".
    pub apiserver_cluster: String,
    /// `:authority` of the callouts (the apiserver's TLS name is set on the cluster, not here).
    pub apiserver_authority: String,
    pub apiserver_timeout_ms: u64,
    /// Exact paths (no query) that may be proxied at all.
    pub allowed_paths: Vec<String>,
    /// TokenReview `spec.audiences`; empty means the apiserver's own audiences.
    pub audiences: Vec<String>,
    /// `None`: non-resource `get <path>`, as kube-rbac-proxy and the components themselves check.
    pub resource_attributes: Option<ResourceAttributes>,
    /// Users and groups let in without a SubjectAccessReview (after authentication).
    pub static_allow: StaticAllow,
    pub identity_headers: Option<IdentityHeaders>,
    pub retry_after_seconds: u32,
    pub max_token_bytes: u64,
    pub cache: CacheConfig,
    /// Reviews in flight to the apiserver from the whole node (all workers, all listeners); beyond
    /// it requests get 503 rather than pile onto the apiserver.
    pub max_callouts_in_flight: u32,
    /// Reviews per second the whole node may send (a token bucket that holds one second's worth);
    /// 0: no limit. Beyond it a request that needs a review gets 503 (cached answers go on).
    pub max_reviews_per_second: u32,
    /// Trust a client certificate that the listener verified (CN user, O groups) instead of a
    /// token. Only for listeners whose TLS context verifies client certificates against a CA.
    pub client_certificates: bool,
    /// Send the caller's own `Authorization` on to the component (`passthrough` upstream
    /// credentials); by default it never leaves the proxy.
    pub forward_caller_credentials: bool,
    /// Hand each decision to Envoy's access log as filter state (see `access_log`); off saves
    /// those host calls where no access log reads them.
    pub access_log: bool,
    /// Take the user from a ServiceAccount token that Envoy's `jwt_authn` filter (in front of this
    /// one) verified against the issuer's published keys, instead of a TokenReview; tokens it did
    /// not verify still get one. The renderer sets it together with that filter.
    pub local_token_verification: bool,
}

/// How long answers are remembered (kube-rbac-proxy's defaults); 0 turns a kind off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub token_review_ttl_seconds: u32,
    pub allow_ttl_seconds: u32,
    pub deny_ttl_seconds: u32,
    /// Slots per table; one slot holds one answer (at most ~4 KiB).
    pub max_entries: u32,
    /// Opt-in: while the apiserver cannot be asked, an *allow* answer (authenticated token, allowed
    /// access) keeps serving this long past its TTL — never past the token's `exp`, never a deny.
    pub stale_allow_seconds: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            token_review_ttl_seconds: 120,
            allow_ttl_seconds: 300,
            deny_ttl_seconds: 30,
            max_entries: 8192,
            stale_allow_seconds: 0,
        }
    }
}
/// SubjectAccessReview `resourceAttributes` (the verb comes from the request method).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceAttributes {
    pub namespace: String,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

/// kube-rbac-proxy's static authorization, reduced to what a metrics gate needs: principals that
/// may read the allowed paths without asking the apiserver.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StaticAllow {
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

impl StaticAllow {
    pub fn admits(&self, username: &str, groups: &[String]) -> bool {
        self.users.iter().any(|u| u == username) || groups.iter().any(|g| self.groups.contains(g))
    }
}

/// Headers that tell the upstream who was let in (kube-rbac-proxy's `--auth-header-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    pub user: String,
    pub groups: String,
    pub groups_separator: String,
}

pub const DEFAULT_APISERVER_CLUSTER: &str = "apiserver-with-credentials";
pub const DEFAULT_APISERVER_AUTHORITY: &str = "kubernetes.default.svc";
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_RETRY_AFTER_SECONDS: u32 = 5;
/// Enough for every scraper of a node to be reviewed at once, far below what would worry an apiserver.
pub const DEFAULT_MAX_CALLOUTS_IN_FLIGHT: u32 = 64;
/// A node's scrapers need a handful of reviews per token rotation (one TokenReview, one
/// SubjectAccessReview per listener); 20 a second leaves room for many scrapers and bounds what a
/// flood of bogus tokens can send to the apiserver.
pub const DEFAULT_MAX_REVIEWS_PER_SECOND: u32 = 20;
/// Projected ServiceAccount tokens are about 1 KB; 8 KiB leaves room for large OIDC tokens while
/// keeping a flood of giant headers from reaching the apiserver.
pub const DEFAULT_MAX_TOKEN_BYTES: u64 = 8 * 1024;

/// A configuration problem, with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid plugin configuration: {}: {}",
            self.field, self.problem
        )
    }
}

pub(crate) fn problem(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The configuration as written, before defaults and checks.
#[derive(Default)]
struct RawConfig {
    apiserver: RawApiserver,
    allowed_paths: Option<Vec<String>>,
    audiences: Vec<String>,
    resource_attributes: Option<ResourceAttributes>,
    static_allow: StaticAllow,
    identity_headers: RawIdentityHeaders,
    retry_after_seconds: Option<u64>,
    max_token_bytes: Option<u64>,
    cache: CacheConfig,
    max_callouts_in_flight: Option<u64>,
    max_reviews_per_second: Option<u64>,
    client_certificates: bool,
    forward_caller_credentials: bool,
    access_log: bool,
    local_token_verification: bool,
}

#[derive(Default)]
struct RawApiserver {
    cluster: Option<String>,
    authority: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Default)]
struct RawIdentityHeaders {
    enabled: bool,
    user: Option<String>,
    groups: Option<String>,
    groups_separator: Option<String>,
}

impl Config {
    /// Parses and checks the plugin configuration. Empty input means "all defaults".
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return RawConfig::default().validate();
        }
        let value: Value =
            serde_json::from_slice(json).map_err(|e| problem("configuration", e.to_string()))?;
        RawConfig::read(&value)?.validate()
    }
}

/// A TTL or count that must fit in 32 bits.
fn small(fields: &Fields<'_>, key: &str, default: u32) -> Result<u32, ConfigError> {
    match fields.number(key)? {
        None => Ok(default),
        Some(n) => u32::try_from(n)
            .map_err(|_| problem(fields.path_of(key), format!("is too large (got {n})"))),
    }
}

impl RawConfig {
    fn read(value: &Value) -> Result<RawConfig, ConfigError> {
        let top = Fields::of(
            "configuration",
            Some(value),
            &[
                "apiserver",
                "allowed_paths",
                "audiences",
                "authorization",
                "identity_headers",
                "retry_after_seconds",
                "max_token_bytes",
                "cache",
                "max_callouts_in_flight",
                "max_reviews_per_second",
                "client_certificates",
                "forward_caller_credentials",
                "access_log",
                "local_token_verification",
            ],
        )?;
        let api = top.object("apiserver", &["cluster", "authority", "timeout_ms"])?;
        let authorization =
            top.object("authorization", &["resource_attributes", "static_allow"])?;
        let allow = authorization.object("static_allow", &["users", "groups"])?;
        let static_allow = StaticAllow {
            users: allow.strings("users")?.unwrap_or_default(),
            groups: allow.strings("groups")?.unwrap_or_default(),
        };
        let resource_attributes = match authorization.has("resource_attributes") {
            true => {
                let ra = authorization.object(
                    "resource_attributes",
                    &[
                        "namespace",
                        "api_group",
                        "api_version",
                        "resource",
                        "subresource",
                        "name",
                    ],
                )?;
                let text = |key| ra.string(key).map(Option::unwrap_or_default);
                Some(ResourceAttributes {
                    namespace: text("namespace")?,
                    api_group: text("api_group")?,
                    api_version: text("api_version")?,
                    resource: text("resource")?,
                    subresource: text("subresource")?,
                    name: text("name")?,
                })
            }
            false => None,
        };
        let identity = top.object(
            "identity_headers",
            &["enabled", "user", "groups", "groups_separator"],
        )?;
        let cache = top.object(
            "cache",
            &[
                "token_review_ttl_seconds",
                "allow_ttl_seconds",
                "deny_ttl_seconds",
                "max_entries",
                "stale_allow_seconds",
            ],
        )?;
        let defaults = CacheConfig::default();
        Ok(RawConfig {
            apiserver: RawApiserver {
                cluster: api.string("cluster")?,
                authority: api.string("authority")?,
                timeout_ms: api.number("timeout_ms")?,
            },
            allowed_paths: top.strings("allowed_paths")?,
            audiences: top.strings("audiences")?.unwrap_or_default(),
            resource_attributes,
            static_allow,
            identity_headers: RawIdentityHeaders {
                enabled: identity.boolean("enabled")?.unwrap_or(false),
                user: identity.string("user")?,
                groups: identity.string("groups")?,
                groups_separator: identity.string("groups_separator")?,
            },
            retry_after_seconds: top.number("retry_after_seconds")?,
            max_token_bytes: top.number("max_token_bytes")?,
            cache: CacheConfig {
                token_review_ttl_seconds: small(
                    &cache,
                    "token_review_ttl_seconds",
                    defaults.token_review_ttl_seconds,
                )?,
                allow_ttl_seconds: small(&cache, "allow_ttl_seconds", defaults.allow_ttl_seconds)?,
                deny_ttl_seconds: small(&cache, "deny_ttl_seconds", defaults.deny_ttl_seconds)?,
                max_entries: small(&cache, "max_entries", defaults.max_entries)?,
                stale_allow_seconds: small(
                    &cache,
                    "stale_allow_seconds",
                    defaults.stale_allow_seconds,
                )?,
            },
            max_callouts_in_flight: top.number("max_callouts_in_flight")?,
            max_reviews_per_second: top.number("max_reviews_per_second")?,
            client_certificates: top.boolean("client_certificates")?.unwrap_or(false),
            forward_caller_credentials: top.boolean("forward_caller_credentials")?.unwrap_or(false),
            access_log: top.boolean("access_log")?.unwrap_or(true),
            local_token_verification: top.boolean("local_token_verification")?.unwrap_or(false),
        })
    }

    fn validate(self) -> Result<Config, ConfigError> {
        let apiserver_cluster = self
            .apiserver
            .cluster
            .unwrap_or_else(|| DEFAULT_APISERVER_CLUSTER.to_owned());
        check_name("apiserver.cluster", &apiserver_cluster)?;
        let apiserver_authority = self
            .apiserver
            .authority
            .unwrap_or_else(|| DEFAULT_APISERVER_AUTHORITY.to_owned());
        check_name("apiserver.authority", &apiserver_authority)?;
        let apiserver_timeout_ms = self.apiserver.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(100..=60_000).contains(&apiserver_timeout_ms) {
            return Err(problem(
                "apiserver.timeout_ms",
                format!("must be between 100 and 60000 (got {apiserver_timeout_ms})"),
            ));
        }

        let allowed_paths = self
            .allowed_paths
            .unwrap_or_else(|| vec!["/metrics".to_owned()]);
        if allowed_paths.is_empty() {
            return Err(problem(
                "allowed_paths",
                "must list at least one path, e.g. [\"/metrics\"]",
            ));
        }
        for (i, path) in allowed_paths.iter().enumerate() {
            check_path(&format!("allowed_paths[{i}]"), path)?;
            if allowed_paths.iter().take(i).any(|p| p == path) {
                return Err(problem(
                    format!("allowed_paths[{i}]"),
                    format!("{} is listed twice", quoted(path)),
                ));
            }
        }

        for (i, audience) in self.audiences.iter().enumerate() {
            if audience.trim().is_empty() || audience.len() > 512 {
                return Err(problem(
                    format!("audiences[{i}]"),
                    "must be a non-empty string of at most 512 bytes",
                ));
            }
        }

        let resource_attributes = match self.resource_attributes {
            Some(attrs) => {
                check_resource_attributes(&attrs)?;
                Some(attrs)
            }
            None => None,
        };

        for (kind, names) in [
            ("users", &self.static_allow.users),
            ("groups", &self.static_allow.groups),
        ] {
            if let Some(i) = names.iter().position(|n| n.trim().is_empty()) {
                return Err(problem(
                    format!("authorization.static_allow.{kind}[{i}]"),
                    "must be a non-empty name",
                ));
            }
        }

        let identity_headers = self.identity_headers.validate()?;

        let retry_after_seconds = within(
            "retry_after_seconds",
            self.retry_after_seconds,
            DEFAULT_RETRY_AFTER_SECONDS,
            1..=3600,
        )?;
        let max_token_bytes = within(
            "max_token_bytes",
            self.max_token_bytes,
            DEFAULT_MAX_TOKEN_BYTES,
            64..=65_536,
        )?;

        for (field, ttl) in [
            (
                "cache.token_review_ttl_seconds",
                self.cache.token_review_ttl_seconds,
            ),
            ("cache.allow_ttl_seconds", self.cache.allow_ttl_seconds),
            ("cache.deny_ttl_seconds", self.cache.deny_ttl_seconds),
        ] {
            if ttl > 86_400 {
                return Err(problem(
                    field,
                    format!("must be between 0 and 86400 (got {ttl})"),
                ));
            }
        }
        if self.cache.stale_allow_seconds > 3_600 {
            return Err(problem(
                "cache.stale_allow_seconds",
                format!(
                    "must be between 0 and 3600 (got {})",
                    self.cache.stale_allow_seconds
                ),
            ));
        }
        if !(16..=1_048_576).contains(&self.cache.max_entries) {
            return Err(problem(
                "cache.max_entries",
                format!(
                    "must be between 16 and 1048576 (got {})",
                    self.cache.max_entries
                ),
            ));
        }
        let max_callouts_in_flight = within(
            "max_callouts_in_flight",
            self.max_callouts_in_flight,
            DEFAULT_MAX_CALLOUTS_IN_FLIGHT,
            1..=1024,
        )?;
        let max_reviews_per_second = within(
            "max_reviews_per_second",
            self.max_reviews_per_second,
            DEFAULT_MAX_REVIEWS_PER_SECOND,
            0..=100_000,
        )?;

        Ok(Config {
            apiserver_cluster,
            apiserver_authority,
            apiserver_timeout_ms,
            allowed_paths,
            audiences: self.audiences,
            resource_attributes,
            static_allow: self.static_allow,
            identity_headers,
            retry_after_seconds,
            max_token_bytes,
            cache: self.cache,
            max_callouts_in_flight,
            max_reviews_per_second,
            client_certificates: self.client_certificates,
            forward_caller_credentials: self.forward_caller_credentials,
            access_log: self.access_log,
            local_token_verification: self.local_token_verification,
        })
    }
}

/// `value` (or `default`) if it lies in `range`, converted to the type the filter keeps.
fn within<T: TryFrom<u64> + Into<u64> + Copy>(
    field: &str,
    value: Option<u64>,
    default: T,
    range: std::ops::RangeInclusive<u64>,
) -> Result<T, ConfigError> {
    let value = value.unwrap_or_else(|| default.into());
    let (low, high) = (range.start(), range.end());
    if !range.contains(&value) {
        return Err(problem(
            field,
            format!("must be between {low} and {high} (got {value})"),
        ));
    }
    T::try_from(value).map_err(|_| {
        problem(
            field,
            format!("must be between {low} and {high} (got {value})"),
        )
    })
}

impl RawIdentityHeaders {
    fn validate(self) -> Result<Option<IdentityHeaders>, ConfigError> {
        if !self.enabled {
            if self.user.is_some() || self.groups.is_some() || self.groups_separator.is_some() {
                return Err(problem(
                    "identity_headers",
                    "header names are set but \"enabled\" is not true",
                ));
            }
            return Ok(None);
        }
        let user = self.user.unwrap_or_else(|| "x-remote-user".to_owned());
        let groups = self.groups.unwrap_or_else(|| "x-remote-groups".to_owned());
        check_header_name("identity_headers.user", &user)?;
        check_header_name("identity_headers.groups", &groups)?;
        if user == groups {
            return Err(problem(
                "identity_headers.groups",
                "must differ from identity_headers.user",
            ));
        }
        let groups_separator = self.groups_separator.unwrap_or_else(|| "|".to_owned());
        if groups_separator.is_empty() || groups_separator.chars().any(char::is_control) {
            return Err(problem(
                "identity_headers.groups_separator",
                "must be a non-empty printable string",
            ));
        }
        Ok(Some(IdentityHeaders {
            user,
            groups,
            groups_separator,
        }))
    }
}

#[cfg(test)]
mod tests;
