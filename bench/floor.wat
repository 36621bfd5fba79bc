;; Setup f of `just bench`, the floor: a proxy-wasm filter that does nothing and exports exactly
;; the callbacks metrics-gate's .wasm exports (after `just build` drops the unused ones), so
;; Envoy enters the VM for the same events. Whatever metrics-gate costs above this is the filter's
;; own work; what this costs above bare Envoy is the price of any wasm filter.
;; Every request: proxy_on_context_create, proxy_on_request_headers (continue), proxy_on_done,
;; proxy_on_delete. It never calls the host, so the allocator is only a bump pointer.
(module
  (memory (export "memory") 2)
  (global $next (mut i32) (i32.const 1024))
  (func (export "_initialize"))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (global.set $next (i32.add (local.get $at) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_tick") (param i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32))
)
