//! The proxy-wasm host calls the filter makes (ABI 0.2.1), declared here rather than taken from
//! the SDK's `hostcalls`, because those cannot be trusted not to trap the VM: they `panic!` on any
//! status they do not expect, and the String-returning ones `unwrap()` UTF-8 (a header value such
//! as `caf\xE9` then stopped every listener of the worker). Here every status is a plain `u32`
//! (never an enum the host could put an unknown value in), every buffer is bytes, and every
//! failure is the caller's to handle — which the filter always does by keeping the gate shut.

use std::ptr::{null, null_mut};
use std::time::Duration;

/// A status other than Ok from the host (proxy-wasm `WasmResult`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostError(pub u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;

pub const REQUEST_HEADERS: u32 = 0;
pub const CALL_RESPONSE_HEADERS: u32 = 6;
pub const CALL_RESPONSE_BODY: u32 = 4;
pub const PLUGIN_CONFIGURATION: u32 = 7;
const HTTP_REQUEST_STREAM: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_close_stream(stream: u32) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_effective_context(context: u32) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_log(level: u32, message: *const u8, message_size: usize) -> u32;
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
}

fn status(code: u32) -> Result<(), HostError> {
    if code == OK {
        Ok(())
    } else {
        Err(HostError(code))
    }
}

/// Takes ownership of a buffer the host allocated in the VM (through the SDK's
/// `exports::proxy_on_memory_allocate`, which hands out exactly `size` bytes).
///
/// # Safety
/// `data`/`size` must be what a host call just returned.
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

/// A whole header map, serialized (read it with `crate::header_map::HeaderMap`).
pub fn header_map(map: u32) -> Result<Vec<u8>, HostError> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the host writes a buffer it allocated through our allocator, or nothing.
    let code = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
    let bytes = unsafe { owned(data, size) };
    status(code).map(|()| bytes)
}

/// One header's value, as bytes; `None` when absent.
pub fn header(map: u32, name: &str) -> Result<Option<Vec<u8>>, HostError> {
    let (mut data, mut size) = (null_mut(), 0);
    let code =
        unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
    let bytes = unsafe { owned(data, size) };
    match code {
        OK => Ok(Some(bytes)),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

pub fn remove_header(map: u32, name: &[u8]) -> Result<(), HostError> {
    status(unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) })
}

pub fn replace_header(map: u32, name: &str, value: &str) -> Result<(), HostError> {
    status(unsafe {
        proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

/// Up to `max` bytes of a buffer; empty when there is none.
pub fn buffer(kind: u32, max: usize) -> Result<Vec<u8>, HostError> {
    let (mut data, mut size) = (null_mut(), 0);
    let code = unsafe { proxy_get_buffer_bytes(kind, 0, max, &mut data, &mut size) };
    let bytes = unsafe { owned(data, size) };
    match code {
        OK | NOT_FOUND => Ok(bytes),
        other => Err(HostError(other)),
    }
}

/// A property, by its path: the segments joined by NUL (e.g. `"connection\0subject_peer_certificate"`).
pub fn property(serialized: &str) -> Result<Option<Vec<u8>>, HostError> {
    let (mut data, mut size) = (null_mut(), 0);
    let code =
        unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) };
    let bytes = unsafe { owned(data, size) };
    match code {
        OK => Ok(Some(bytes)),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// Sets filter state `wasm.<key>` of the current stream (Envoy's access log reads it). The key is
/// one path segment: Envoy uses it as given.
pub fn set_property(key: &str, value: &[u8]) -> Result<(), HostError> {
    status(unsafe { proxy_set_property(key.as_ptr(), key.len(), value.as_ptr(), value.len()) })
}

/// A shared-data value and its CAS token; `(None, 0)` when the key was never written.
pub fn shared_data(key: &str) -> Result<(Option<Vec<u8>>, u32), HostError> {
    let (mut data, mut size, mut cas) = (null_mut(), 0, 0);
    let code =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    let bytes = unsafe { owned(data, size) };
    match code {
        OK => Ok((Some(bytes), cas)),
        NOT_FOUND => Ok((None, 0)),
        other => Err(HostError(other)),
    }
}

/// Writes a shared-data value; with `cas` non-zero only if nobody wrote it since that read.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
    status(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// Answers the request locally (Envoy sends it once the current callback returns).
pub fn send_local_response(code: u32, headers: &[u8], body: &[u8]) -> Result<(), HostError> {
    status(unsafe {
        proxy_send_local_response(
            code,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

pub fn resume_request() -> Result<(), HostError> {
    status(unsafe { proxy_continue_stream(HTTP_REQUEST_STREAM) })
}

pub fn reset_request() -> Result<(), HostError> {
    status(unsafe { proxy_close_stream(HTTP_REQUEST_STREAM) })
}

/// Milliseconds since the epoch; 0 if the host cannot say (every deadline then looks expired,
/// which fails closed).
pub fn now_ms() -> u64 {
    let mut nanos = 0u64;
    if unsafe { proxy_get_current_time_nanoseconds(&mut nanos) } == OK {
        nanos / 1_000_000
    } else {
        0
    }
}

pub fn set_tick_period(period: Duration) -> Result<(), HostError> {
    let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    status(unsafe { proxy_set_tick_period_milliseconds(millis) })
}

pub fn set_effective_context(context: u32) -> Result<(), HostError> {
    status(unsafe { proxy_set_effective_context(context) })
}

pub const COUNTER: u32 = 0;
pub const GAUGE: u32 = 1;
pub const HISTOGRAM: u32 = 2;

pub fn define_metric(kind: u32, name: &str) -> Result<u32, HostError> {
    let mut id = 0;
    status(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) }).map(|()| id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), HostError> {
    status(unsafe { proxy_increment_metric(id, offset) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    status(unsafe { proxy_record_metric(id, value) })
}

pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;

pub fn log(level: u32, message: &str) -> Result<(), HostError> {
    status(unsafe { proxy_log(level, message.as_ptr(), message.len()) })
}

/// Sends a request to the Envoy cluster `upstream`; its answer comes to
/// `exports::proxy_on_http_call_response` with the token returned here.
pub fn http_call(
    upstream: &str,
    headers: &[u8],
    body: &[u8],
    timeout: Duration,
) -> Result<u32, HostError> {
    // An empty serialized map: a count of zero.
    let trailers = 0u32.to_le_bytes();
    let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let mut token = 0;
    status(unsafe {
        proxy_http_call(
            upstream.as_ptr(),
            upstream.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    })
    .map(|()| token)
}
