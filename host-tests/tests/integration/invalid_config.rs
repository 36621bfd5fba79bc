//! A bad plugin configuration makes Envoy refuse to start, with one log line naming the field.

use metrics_gate_envoy::{render, Preset};
use metrics_gate_host_tests::envoy_process::EnvoyProcess;
use metrics_gate_host_tests::stack::LocalStack;
use serde_json::{json, Value};

/// The running stack's bootstrap with `config` on the kube-proxy listener's plugin.
fn with_plugin_config(stack: &LocalStack, config: &Value) -> Value {
    let mut bootstrap = stack.config.clone();
    let listeners = bootstrap["static_resources"]["listeners"].as_array_mut().unwrap();
    let kube_proxy = listeners.iter_mut().find(|l| l["name"] == Preset::KubeProxy.name()).unwrap();
    let filters = kube_proxy["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].as_array_mut().unwrap();
    let wasm = filters.iter_mut().find(|f| f["name"] == "envoy.filters.http.wasm").expect("the metrics-gate filter");
    wasm["typed_config"]["config"]["configuration"]["value"] = json!(config.to_string());
    // Its own admin socket: the running stack's would answer `/ready` for the refused Envoy.
    let socket = bootstrap["admin"]["address"]["pipe"]["path"].as_str().unwrap().to_owned();
    let own = format!("{socket}.{}", std::process::id() ^ config.to_string().len() as u32);
    serde_json::from_str(&bootstrap.to_string().replace(&socket, &own)).unwrap()
}

#[test]
fn invalid_plugin_configurations_are_refused_with_the_field_named() {
    let _ = render; // the stack's bootstrap comes from the renderer
    let stack = LocalStack::start_with(metrics_gate_host_tests::stack::StackOptions {
        presets: vec![Preset::KubeProxy],
        ..Default::default()
    })
    .unwrap();
    let cases = [
        (json!({"allowed_paths": ["metrics"]}), r#"allowed_paths[0]: must start with "/" (got "metrics")"#),
        (json!({"allowed_paths": []}), "allowed_paths: must list at least one path"),
        (json!({"allowed_path": ["/metrics"]}), "unknown field `allowed_path`"),
        (json!({"apiserver": {"timeout_ms": 0}}), "apiserver.timeout_ms: must be between 100 and 60000 (got 0)"),
        (json!({"identity_headers": {"enabled": true, "user": "Authorization"}}), "identity_headers.user"),
        (json!({"authorization": {"resource_attributes": {"namespace": "x"}}}), "authorization.resource_attributes.resource: is required"),
        (json!(["/metrics"]), "invalid plugin configuration: configuration:"),
    ];
    for (config, message) in cases {
        let bootstrap = with_plugin_config(&stack, &config);
        let log = EnvoyProcess::start_expecting_failure(&bootstrap).unwrap();
        let line = log.lines().find(|l| l.contains("invalid plugin configuration")).unwrap_or_else(|| {
            panic!("{config}: no configuration error in the log:\n{log}")
        });
        assert!(line.contains(message), "{config}: {line}");
        // `--mode validate` catches it too, so a bad ConfigMap is found before a rollout.
        let (valid, output) = EnvoyProcess::validate(&bootstrap).unwrap();
        assert!(!valid, "{config}: validate accepted it:\n{output}");
    }
    // The same stack with a good configuration validates.
    let (valid, output) = EnvoyProcess::validate(&stack.config).unwrap();
    assert!(valid, "{output}");
}
