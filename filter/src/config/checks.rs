//! Checks of the names and paths in the configuration: what Envoy and the apiserver would accept,
//! refused here first with the field that is wrong.

use super::{problem, ConfigError, ResourceAttributes};
use crate::text::quoted;

pub(super) fn check_name(field: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(problem(
            field,
            format!(
                "must be 1-253 characters of [A-Za-z0-9-._:] (got {})",
                quoted(value)
            ),
        ))
    }
}

/// Allowed paths are matched byte for byte against the request path, so only canonical spellings
/// make sense: anything else could never match, which is a configuration mistake worth reporting.
pub(super) fn check_path(field: &str, path: &str) -> Result<(), ConfigError> {
    let why = if !path.starts_with('/') {
        "must start with \"/\""
    } else if path.len() > 256 {
        "must be at most 256 bytes"
    } else if path.as_bytes().windows(2).any(|pair| pair == b"//") {
        "must not contain \"//\""
    } else if path.split('/').any(|s| s == "." || s == "..") {
        "must not contain \".\" or \"..\" segments"
    } else if !path.bytes().all(is_plain_path_byte) {
        "may only contain letters, digits and - . _ ~ / (no query, \"%\" escapes or \";\" parameters)"
    } else {
        return Ok(());
    };
    Err(problem(field, format!("{why} (got {})", quoted(path))))
}

fn is_plain_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~/".contains(&b)
}

pub(super) fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(problem(
            field,
            format!(
                "must be a lowercase header name of [a-z0-9-] (got {})",
                quoted(name)
            ),
        ));
    }
    if matches!(
        name,
        "authorization" | "host" | "cookie" | "content-length" | "transfer-encoding"
    ) {
        return Err(problem(field, format!("{} is reserved", quoted(name))));
    }
    Ok(())
}

pub(super) fn check_resource_attributes(attrs: &ResourceAttributes) -> Result<(), ConfigError> {
    const FIELD: &str = "authorization.resource_attributes";
    if attrs.resource.is_empty() {
        return Err(problem(
            format!("{FIELD}.resource"),
            "is required when resource_attributes is set",
        ));
    }
    let fields = [
        ("namespace", &attrs.namespace),
        ("api_group", &attrs.api_group),
        ("api_version", &attrs.api_version),
        ("resource", &attrs.resource),
        ("subresource", &attrs.subresource),
        ("name", &attrs.name),
    ];
    for (name, value) in fields {
        let ok = value.len() <= 253
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !ok {
            return Err(problem(
                format!("{FIELD}.{name}"),
                format!(
                    "must be at most 253 characters of [A-Za-z0-9-._] (got {})",
                    quoted(value)
                ),
            ));
        }
    }
    Ok(())
}
