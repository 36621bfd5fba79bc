//! Quoting values inside messages, the way `{:?}` would for the names they hold.

/// `value` in double quotes, with quotes, backslashes and control characters escaped, so a name
/// from a request or an apiserver answer cannot break a log line or a reply.
pub fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::quoted;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn quotes_like_debug_for_ordinary_names() {
        for value in [
            "system:serviceaccount:observability:prometheus-server",
            "/metrics",
            "",
            "a\"b\\c\nd\te",
        ] {
            assert_eq!(quoted(value), format!("{value:?}"), "{value}");
        }
    }
}
