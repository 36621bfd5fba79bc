//! Bootstrap surgery: the rendered stack, pointed at the bench's fakes, with or without the filter,
//! with another plugin configuration, or with the do-nothing floor filter in its place.

use std::net::SocketAddr;
use std::path::Path;

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::stack::LocalStack;
use serde_json::{json, Value};

use super::setups::PAYLOADS;

pub fn listeners_mut<'a>(config: &'a mut Value, name: &str) -> Vec<&'a mut Value> {
    config["static_resources"]["listeners"]
        .as_array_mut()
        .map(|ls| ls.iter_mut().filter(|l| l["name"] == name).collect())
        .unwrap_or_default()
}

pub fn http_filter_lists(listener: &mut Value) -> Vec<&mut Vec<Value>> {
    let mut lists = Vec::new();
    if let Some(chains) = listener["filter_chains"].as_array_mut() {
        for chain in chains {
            if let Some(filters) = chain["filters"].as_array_mut() {
                for f in filters {
                    if let Some(hf) = f["typed_config"]["http_filters"].as_array_mut() {
                        lists.push(hf);
                    }
                }
            }
        }
    }
    lists
}

pub fn set_socket_addresses(v: &mut Value, addr: SocketAddr) {
    match v {
        Value::Object(map) => {
            if let Some(sa) = map.get_mut("socket_address") {
                sa["address"] = json!(addr.ip().to_string());
                sa["port_value"] = json!(addr.port());
            }
            for (_, child) in map.iter_mut() {
                set_socket_addresses(child, addr);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| set_socket_addresses(i, addr)),
        _ => {}
    }
}

/// The stack's bootstrap serving plain HTTP on the bench's listeners, their clusters pointed at
/// the fakes.
pub fn bench_bootstrap(stack: &LocalStack, upstreams: &[(Preset, SocketAddr)]) -> Value {
    let mut config = stack.config.clone();
    for (preset, addr) in upstreams {
        if let Some(clusters) = config["static_resources"]["clusters"].as_array_mut() {
            for c in clusters.iter_mut().filter(|c| c["name"] == preset.name()) {
                set_socket_addresses(&mut c["load_assignment"], *addr);
                if let Some(obj) = c.as_object_mut() {
                    obj.remove("transport_socket");
                }
            }
        }
        for l in listeners_mut(&mut config, preset.name()) {
            if let Some(chains) = l["filter_chains"].as_array_mut() {
                for chain in chains.iter_mut().filter_map(Value::as_object_mut) {
                    chain.remove("transport_socket");
                }
            }
        }
    }
    config
}

pub fn without_filter(config: &Value) -> Value {
    let mut config = config.clone();
    for (_, preset, _) in PAYLOADS {
        for l in listeners_mut(&mut config, preset.name()) {
            for list in http_filter_lists(l) {
                list.retain(|f| f["name"] != "envoy.filters.http.wasm");
            }
        }
    }
    config
}

/// `config` with `change` applied to the wasm filter's `config` of every bench listener.
fn with_each_wasm_filter(config: &Value, mut change: impl FnMut(&mut Value)) -> Value {
    let mut config = config.clone();
    for (_, preset, _) in PAYLOADS {
        for l in listeners_mut(&mut config, preset.name()) {
            for list in http_filter_lists(l) {
                for f in list
                    .iter_mut()
                    .filter(|f| f["name"] == "envoy.filters.http.wasm")
                {
                    change(&mut f["typed_config"]["config"]);
                }
            }
        }
    }
    config
}

/// `config` with `fields` set in every listener's plugin configuration (the others kept).
pub fn with_plugin_config(config: &Value, fields: &Value) -> Value {
    with_each_wasm_filter(config, |wasm| {
        let value = &mut wasm["configuration"]["value"];
        let mut plugin: Value = value
            .as_str()
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_else(|| json!({}));
        if let (Some(plugin), Some(fields)) = (plugin.as_object_mut(), fields.as_object()) {
            for (k, v) in fields {
                plugin.insert(k.clone(), v.clone());
            }
        }
        *value = json!(plugin.to_string());
    })
}

/// `config` with every listener's wasm filter running the module at `wasm` instead (same vm_id,
/// same plugin configuration): setup f, the floor.
pub fn with_wasm(config: &Value, wasm: &Path) -> Value {
    with_each_wasm_filter(config, |filter| {
        filter["vm_config"]["code"]["local"]["filename"] = json!(wasm.to_string_lossy());
    })
}
