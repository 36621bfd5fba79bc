//! The one thing the filter reads from a token itself: when it expires.
//!
//! Nothing here is trusted for a decision: the apiserver decides whether a token is valid. The
//! `exp` claim only shortens how long that decision is remembered, so that a cached "authenticated"
//! never outlives the token. A token that is not a JWT simply has no expiry to honour.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

/// Seconds since the epoch at which the token says it expires, if it says so.
pub fn expiry(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 8192 {
        return None;
    }
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let exp = serde_json::from_slice::<Value>(&json)
        .ok()?
        .get("exp")?
        .as_f64()?;
    if exp.is_finite() && exp >= 0.0 {
        // Truncation is what we want: a fraction of a second less is on the safe side.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(exp as u64)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn jwt(payload: &str) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_exp_of_a_service_account_token() {
        assert_eq!(
            expiry(&jwt(
                r#"{"aud":["x"],"exp":1795550071,"sub":"system:serviceaccount:a:b"}"#
            )),
            Some(1795550071)
        );
    }

    #[test]
    fn anything_else_has_no_expiry() {
        for token in ["abcdef.0123456789abcdef", "a.b.c.d", "", "a.%%%.c"] {
            assert_eq!(expiry(token), None, "{token}");
        }
        assert_eq!(expiry(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(expiry(&jwt(r#"{"exp":"soon"}"#)), None);
        assert_eq!(expiry(&jwt(r#"{"exp":-5}"#)), None);
    }
}
