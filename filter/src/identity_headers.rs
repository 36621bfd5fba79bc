//! Request headers that assert or carry an identity, which no caller may hand to a component.
//!
//! Components, aggregated apiservers, kube-rbac-proxy, oauth2-proxy and many dashboards trust such
//! headers from "their" proxy; behind metrics-gate the proxy is us, so whatever the caller sent is
//! removed before forwarding — on `proxy` listeners they would otherwise sit next to the proxy's
//! own token. The list is documented in the README ("What reaches the component").
//!
//! Names are compared case-insensitively with `_` read as `-`, so `x_remote_user` and
//! `Impersonate_User` are caught too (many servers, CGI and WSGI among them, treat both spellings
//! as one header).

/// Removed wherever they appear (exact names).
pub const NAMES: &[&str] = &[
    "proxy-authorization",
    "cookie",
    "remote-user",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-forwarded-client-cert",
    "x-webauth-user",
];

/// Removed wherever they appear (every name that starts so).
pub const PREFIXES: &[&str] = &["x-remote-", "impersonate-", "x-auth-request-"];

/// Whether `name` asserts or carries an identity (the caller's `Authorization` is handled apart:
/// it is kept when the listener forwards the caller's credentials).
pub fn asserts_identity(name: &[u8]) -> bool {
    // Longer than any name in the lists is not worth normalising beyond the longest prefix.
    let mut normal = [0u8; 40];
    let len = name.len().min(normal.len());
    for (out, byte) in normal.iter_mut().zip(name) {
        *out = match byte.to_ascii_lowercase() {
            b'_' => b'-',
            other => other,
        };
    }
    let Some(normal) = normal.get(..len) else {
        return false;
    };
    let exact = name.len() <= 40;
    (exact && NAMES.iter().any(|n| n.as_bytes() == normal))
        || PREFIXES.iter().any(|p| normal.starts_with(p.as_bytes()))
}

/// Whether `name` is `wanted` (lowercase, with `-`) in any case and either spelling of `-`.
pub fn same_header(name: &[u8], wanted: &str) -> bool {
    name.len() == wanted.len()
        && name.iter().zip(wanted.bytes()).all(|(a, b)| {
            let a = a.to_ascii_lowercase();
            a == b || (a == b'_' && b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn every_spelling_of_an_identity_header_is_caught() {
        for name in [
            "x-remote-user",
            "X-Remote-Groups",
            "x_remote_user",
            "x-remote-extra-scopes",
            "impersonate-user",
            "Impersonate-Group",
            "impersonate-uid",
            "impersonate-extra-scopes",
            "impersonate_user",
            "x-forwarded-user",
            "X_Forwarded_User",
            "x-auth-request-user",
            "x-auth-request-access-token",
            "remote-user",
            "remote_user",
            "cookie",
            "proxy-authorization",
            "x-forwarded-client-cert",
        ] {
            assert!(asserts_identity(name.as_bytes()), "{name}");
        }
        for name in [
            "accept",
            "user-agent",
            "x-forwarded-for",
            "x-forwarded-proto",
            "authorization",
            "x-remote",
            "remote-users",
            "x-request-id",
        ] {
            assert!(!asserts_identity(name.as_bytes()), "{name}");
        }
        let long = format!("x-remote-{}", "a".repeat(100));
        assert!(asserts_identity(long.as_bytes()));
        let long = format!("cookie{}", "a".repeat(100));
        assert!(!asserts_identity(long.as_bytes()));
    }

    #[test]
    fn same_header_reads_underscores_as_dashes() {
        assert!(same_header(b"X_Remote_User", "x-remote-user"));
        assert!(same_header(b"authorization", "authorization"));
        assert!(!same_header(b"x-remote-use", "x-remote-user"));
    }
}
