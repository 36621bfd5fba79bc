//! Reading the caller's bearer token from the request, without ever copying it anywhere but the
//! TokenReview body.

/// Why a request carries no usable credential. Each maps to a 401; the variant only shapes the
/// `WWW-Authenticate` challenge and the counters, never echoes the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialProblem {
    Missing,
    /// Several `Authorization` headers (or values joined with ","): ambiguous, so refused.
    Duplicate,
    /// Not `Bearer <token68>`, empty, or too long.
    Malformed,
}

/// Finds exactly one `Authorization: Bearer <token>` among the request headers.
///
/// The scheme is case-insensitive (RFC 7235); the token must be token68 (RFC 7235 §2.1), which every
/// Kubernetes token is: anything else (spaces, commas from a merged duplicate header, control bytes)
/// cannot be a token and is refused before the apiserver is asked.
pub fn bearer_token<'h>(
    headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
    max_token_bytes: u64,
) -> Result<&'h str, CredentialProblem> {
    let mut found = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"authorization") {
            if found.is_some() {
                return Err(CredentialProblem::Duplicate);
            }
            found = Some(value);
        }
    }
    let value = found.ok_or(CredentialProblem::Missing)?;
    // Header values are bytes: one that is not even UTF-8 cannot hold a token68.
    let value = std::str::from_utf8(value).map_err(|_| CredentialProblem::Malformed)?;
    let (scheme, rest) = value.split_once(' ').ok_or(CredentialProblem::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(CredentialProblem::Malformed);
    }
    let token = rest.trim_start_matches(' ');
    if token.contains(',') {
        return Err(CredentialProblem::Duplicate);
    }
    if token.is_empty()
        || u64::try_from(token.len()).unwrap_or(u64::MAX) > max_token_bytes
        || !is_token68(token)
    {
        return Err(CredentialProblem::Malformed);
    }
    Ok(token)
}

fn is_token68(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    // Under wasm32-unknown-unknown the same tests run in Node.js through wasm-bindgen-test.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

    fn token(headers: &[(&'static str, &'static str)]) -> Result<&'static str, CredentialProblem> {
        bearer_token(
            headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            8192,
        )
    }

    #[test]
    fn accepts_one_bearer_token_in_any_case() {
        let header = format!("Bearer {JWT}");
        let leaked: &'static str = Box::leak(header.into_boxed_str());
        assert_eq!(token(&[("authorization", leaked)]), Ok(JWT));
        assert_eq!(token(&[("Authorization", "bearer abc.def")]), Ok("abc.def"));
        assert_eq!(
            token(&[("authorization", "BEARER   abcdef.0123456789abcdef")]),
            Ok("abcdef.0123456789abcdef")
        );
        assert_eq!(token(&[("authorization", "Bearer YWJj==")]), Ok("YWJj=="));
    }

    #[test]
    fn refuses_what_is_not_exactly_one_plausible_token() {
        assert_eq!(token(&[]), Err(CredentialProblem::Missing));
        assert_eq!(
            token(&[("x-authorization", "Bearer abc")]),
            Err(CredentialProblem::Missing)
        );
        assert_eq!(
            token(&[
                ("authorization", "Bearer abc"),
                ("authorization", "Bearer def")
            ]),
            Err(CredentialProblem::Duplicate)
        );
        assert_eq!(
            token(&[("authorization", "Bearer abc,Bearer def")]),
            Err(CredentialProblem::Duplicate)
        );
        for bad in [
            "Bearer",
            "Bearer ",
            "Basic YWJjOmRlZg==",
            "abc",
            "Bearer a b",
            "Bearer ===",
            "Bearer a\tb",
            "Bearer tök",
        ] {
            assert_eq!(
                token(&[("authorization", bad)]),
                Err(CredentialProblem::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            bearer_token([(&b"authorization"[..], &b"Bearer caf\xE9"[..])], 64),
            Err(CredentialProblem::Malformed),
            "a value that is not UTF-8"
        );
        let long = format!("Bearer {}", "a".repeat(65));
        assert_eq!(
            bearer_token([(&b"authorization"[..], long.as_bytes())], 64),
            Err(CredentialProblem::Malformed)
        );
    }
}

/// The identity in a verified client certificate's subject, the way kube-apiserver reads one: the
/// first CN is the user, every O a group, plus `system:authenticated`.
///
/// `subject` is Envoy's RFC 2253 rendering (`CN=name,O=group1,O=group2`; `\,` escapes a comma).
pub fn certificate_identity(subject: &str) -> Option<(String, Vec<String>)> {
    let mut user = None;
    let mut groups = Vec::new();
    for rdn in split_unescaped(subject, ',') {
        // Multi-valued RDNs (`+`) are rare in client certificates; each part counts on its own.
        for attribute in split_unescaped(&rdn, '+') {
            let Some((kind, value)) = attribute.split_once('=') else {
                continue;
            };
            let value = unescape(value.trim());
            match kind.trim() {
                "CN" if user.is_none() && !value.is_empty() => user = Some(value),
                "O" if !value.is_empty() => groups.push(value),
                _ => {}
            }
        }
    }
    let user = user?;
    groups.push("system:authenticated".to_owned());
    Some((user, groups))
}

/// The user kube-apiserver's ServiceAccount authenticator makes of a verified token whose `sub` is
/// `system:serviceaccount:<namespace>:<name>`: that username, and the groups
/// `system:serviceaccounts`, `system:serviceaccounts:<namespace>`, `system:authenticated`. For a
/// token Envoy's `jwt_authn` verified against the issuer's published keys (see
/// `Config::local_token_verification`); anything else is not a ServiceAccount (`None`: the token
/// goes to the TokenReview).
pub fn service_account_identity(subject: &str) -> Option<(String, Vec<String>)> {
    let rest = subject.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    // Namespaces are DNS labels and ServiceAccount names DNS subdomains: lowercase letters,
    // digits, '-' and '.'. Nothing else can be a ServiceAccount the apiserver would accept.
    let plain = |part: &str| {
        !part.is_empty()
            && part.len() <= 253
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if !plain(namespace) || !plain(name) {
        return None;
    }
    Some((
        subject.to_owned(),
        vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".to_owned(),
        ],
    ))
}

fn split_unescaped(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == separator {
            parts.push(String::new());
            continue;
        }
        if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut escaped = false;
    for c in value.chars() {
        if !escaped && c == '\\' {
            escaped = true;
            continue;
        }
        escaped = false;
        out.push(c);
    }
    out
}

#[cfg(test)]
mod certificate_tests {
    use super::{certificate_identity, service_account_identity};
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn cn_is_the_user_and_every_o_a_group() {
        assert_eq!(
            certificate_identity("CN=prometheus,O=monitoring,O=system:monitoring"),
            Some((
                "prometheus".to_owned(),
                vec![
                    "monitoring".into(),
                    "system:monitoring".into(),
                    "system:authenticated".into()
                ]
            ))
        );
        assert_eq!(
            certificate_identity("O=b,CN=system:kube-scheduler"),
            Some((
                "system:kube-scheduler".to_owned(),
                vec!["b".into(), "system:authenticated".into()]
            ))
        );
        assert_eq!(
            certificate_identity(r"CN=a\,b,O=x\+y"),
            Some((
                "a,b".to_owned(),
                vec!["x+y".into(), "system:authenticated".into()]
            ))
        );
    }

    #[test]
    fn a_subject_without_cn_is_no_identity() {
        assert_eq!(certificate_identity("O=masters"), None);
        assert_eq!(certificate_identity(""), None);
        assert_eq!(certificate_identity("CN="), None);
    }

    #[test]
    fn a_service_account_subject_is_the_user_the_apiserver_makes_of_it() {
        let (user, groups) =
            service_account_identity("system:serviceaccount:observability:prometheus-server")
                .unwrap();
        assert_eq!(
            user,
            "system:serviceaccount:observability:prometheus-server"
        );
        assert_eq!(
            groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:observability",
                "system:authenticated"
            ]
        );
        for not_one in [
            "",
            "system:serviceaccount:",
            "system:serviceaccount:ns",
            "system:serviceaccount::name",
            "system:serviceaccount:ns:",
            "system:serviceaccount:ns:a:b",
            "system:serviceaccount:NS:name",
            "system:serviceaccount:ns:name with space",
            "system:admin",
            "kubernetes-admin",
        ] {
            assert_eq!(service_account_identity(not_one), None, "{not_one:?}");
        }
    }
}
