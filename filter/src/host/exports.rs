//! What Envoy calls: the proxy-wasm ABI 0.2.1 exports, and the contexts they name.
//!
//! Only the callbacks the filter needs are exported, so Envoy never enters the VM for anything
//! else (a response's headers, each slice of its body, trailers, the access log): a callback the
//! module does not export means "continue" to Envoy. Every function here answers whatever ids
//! Envoy passes, known or not, without trapping: an unknown stream is refused, an unknown
//! callout token is dropped.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use super::engine::{self, Verdict};
use super::{abi, configure, request_headers, Shared};

/// A root context: one per plugin configuration (per listener) in this VM.
struct Plugin {
    id: u32,
    shared: Option<Rc<Shared>>,
}

thread_local! {
    static PLUGINS: RefCell<Vec<Plugin>> = const { RefCell::new(Vec::new()) };
    /// Stream context id → the root context (plugin) it belongs to. Streams live as long as a
    /// request: a vector is smaller in the .wasm than a hash map and as fast at this size.
    static STREAMS: RefCell<Vec<(u32, u32)>> = const { RefCell::new(Vec::new()) };
}

fn shared_of_plugin(root: u32) -> Option<Rc<Shared>> {
    PLUGINS.with(|p| {
        p.borrow()
            .iter()
            .find(|plugin| plugin.id == root)
            .and_then(|plugin| plugin.shared.clone())
    })
}

fn shared_of_stream(stream: u32) -> Option<Rc<Shared>> {
    let root = STREAMS.with(|s| s.borrow().iter().find(|(id, _)| *id == stream).map(|e| e.1))?;
    shared_of_plugin(root)
}

fn is_plugin(id: u32) -> bool {
    PLUGINS.with(|p| p.borrow().iter().any(|plugin| plugin.id == id))
}

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// The module's initialisation (a WASI reactor): static constructors, nothing else.
#[no_mangle]
pub extern "C" fn _initialize() {
    #[cfg(target_os = "wasi")]
    // SAFETY: the linker's constructor list, run once, before any other export.
    unsafe {
        __wasm_call_ctors();
    }
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Memory for a buffer the host hands to the filter; `abi` takes it back as a `Vec` of exactly
/// `size` bytes.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer = std::mem::ManuallyDrop::new(Vec::<u8>::with_capacity(size));
    buffer.as_mut_ptr()
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_id: u32) {
    if parent_id == 0 {
        PLUGINS.with(|p| {
            p.borrow_mut().push(Plugin {
                id: context_id,
                shared: None,
            })
        });
    } else {
        STREAMS.with(|s| s.borrow_mut().push((context_id, parent_id)));
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_id: u32, _vm_configuration_size: usize) -> u32 {
    1
}

/// 1: configuration accepted; 0: Envoy refuses it (the reason is in its log).
#[no_mangle]
pub extern "C" fn proxy_on_configure(root_id: u32, _configuration_size: usize) -> u32 {
    let Some(shared) = configure() else {
        return 0;
    };
    PLUGINS.with(|p| {
        if let Some(plugin) = p
            .borrow_mut()
            .iter_mut()
            .find(|plugin| plugin.id == root_id)
        {
            plugin.shared = Some(shared);
            1
        } else {
            0
        }
    })
}

/// The root context's timer: paused requests past their deadline, waiters moved on.
#[no_mangle]
pub extern "C" fn proxy_on_tick(root_id: u32) {
    let still_waiting = engine::on_tick();
    let _ = abi::set_effective_context(root_id);
    if !still_waiting {
        let _ = abi::set_tick_period(Duration::ZERO);
    }
}

/// 0: continue to the next filter; 1: stop (the filter answers or resumes the request later).
#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context_id: u32, _headers: usize, _end: u32) -> u32 {
    match request_headers(context_id, shared_of_stream(context_id)) {
        Verdict::Continue => 0,
        Verdict::Pause => 1,
    }
}

/// The apiserver answered a callout. Routed by its token, whichever context sent it (a request,
/// or a root context's timer for a request that waited).
#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    context_id: u32,
    token: u32,
    _headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    engine::on_callout_answer(token, body_size);
    if is_plugin(context_id) {
        let _ = abi::set_effective_context(context_id);
    }
}

/// The stream ended (answered, reset or gone): forget what it was waiting for.
#[no_mangle]
pub extern "C" fn proxy_on_done(context_id: u32) -> u32 {
    engine::forget(context_id);
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    STREAMS.with(|s| s.borrow_mut().retain(|(id, _)| *id != context_id));
    PLUGINS.with(|p| p.borrow_mut().retain(|plugin| plugin.id != context_id));
}
