//! A crash inside the filter (a trap in the VM, as a bug or a panic would cause) never opens the
//! gate: the request in flight fails, nothing reaches the upstream, and after Envoy reloads the VM
//! the gate decides as before.

use std::time::{Duration, Instant};

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::stack::{StackOptions, LocalStack, WasmBuild};

#[test]
fn a_crashed_filter_keeps_the_gate_shut() {
    let stack = LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy],
        wasm: WasmBuild::FaultInjection,
        ..Default::default()
    })
    .unwrap();
    let bearer = format!("Bearer {}", stack.prometheus_token());
    let crash = [("authorization", bearer.as_str()), ("x-metrics-gate-fault", "trap")];

    for round in 0..3 {
        let answer = stack.request(Preset::KubeProxy, "GET", "/metrics", &crash);
        assert!(answer.status >= 500, "round {round}: a crashed filter answered {}", answer.status);
        assert_eq!(stack.component(Preset::KubeProxy).count(), 0, "round {round}: the crash let a request through");
        assert_eq!(stack.apiserver.calls().len(), 0);
        let reloads_before = stack.counter("wasm.metrics-gate.vm_reload_success");

        // Until Envoy has reloaded the VM (1 s backoff by default) every request is refused; then
        // an authorized one passes.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let answer = stack.request(Preset::KubeProxy, "GET", "/metrics", &[("authorization", &bearer)]);
            if answer.status < 500 {
                assert_eq!(answer.status, 200, "round {round}: {}", answer.text());
                break;
            }
            assert_eq!(stack.component(Preset::KubeProxy).count(), 0, "round {round}: a 5xx went upstream");
            assert!(Instant::now() < deadline, "round {round}: the VM was not reloaded: {}", answer.text());
            std::thread::sleep(Duration::from_millis(100));
        }
        stack.component(Preset::KubeProxy).clear();
        let no_token = stack.request(Preset::KubeProxy, "GET", "/metrics", &[]);
        // ...and the replacement VM refuses and admits exactly as before.
        assert_eq!(no_token.status, 401, "round {round}: {}", no_token.text());
        let nobody = stack.scrape(Preset::KubeProxy, "/metrics", &stack.nobody_token());
        assert_eq!(nobody.status, 403, "round {round}");
        assert_eq!(stack.component(Preset::KubeProxy).count(), 0);
        let allowed = stack.request(Preset::KubeProxy, "GET", "/metrics", &[("authorization", &bearer)]);
        assert_eq!(allowed.status, 200, "round {round}: {}", allowed.text());
        stack.component(Preset::KubeProxy).clear();
        stack.apiserver.clear_calls();
        assert!(stack.counter("wasm.metrics-gate.vm_reload_success") > reloads_before, "round {round}: no VM reload");
    }
}
