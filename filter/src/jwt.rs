//! The one thing the filter reads from a token itself: when it expires.
//!
//! Nothing here is trusted for a decision: the apiserver decides whether a token is valid. The
//! `exp` claim only shortens how long that decision is remembered, so that a cached "authenticated"
//! never outlives the token. A token that is not a JWT simply has no expiry to honour.

use serde_json::Value;

/// Seconds since the epoch at which the token says it expires, if it says so.
pub fn expiry(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 8192 {
        return None;
    }
    let json = base64url_decode(payload.trim_end_matches('='))?;
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

/// base64url without padding (RFC 4648 §5), the encoding of a JWT's parts. By hand: the base64
/// crate's engine is 3 KB of the .wasm for these few lines. `None` for a character outside the
/// alphabet or a lone trailing character (six bits are no byte).
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in text.bytes() {
        let value = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            // The eight bits above the `bits` left over: truncation is the point.
            #[allow(clippy::cast_possible_truncation)]
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
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

    #[test]
    fn base64url_decodes_as_the_base64_crate_does() {
        let samples: Vec<Vec<u8>> = vec![
            vec![],
            b"f".to_vec(),
            b"fo".to_vec(),
            b"foo".to_vec(),
            b"foob".to_vec(),
            (0..=255u8).collect(),
            br#"{"exp":1795550071,"sub":"system:serviceaccount:a:b"}"#.to_vec(),
        ];
        for bytes in samples {
            let text = URL_SAFE_NO_PAD.encode(&bytes);
            assert_eq!(base64url_decode(&text), Some(bytes), "{text}");
        }
        for bad in ["A", "abcde", "ab+c", "ab/c", "ab c", "é"] {
            assert_eq!(base64url_decode(bad), None, "{bad}");
        }
    }
}
