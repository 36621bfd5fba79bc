//! A small simulator of Prometheus relabeling, and of what the Prometheus Operator generates in front
//! of a ServiceMonitor's own relabelings, so tests can compute the labels a scrape job gives a
//! target from the shipped YAML itself.
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde_json::{json, Value};

pub type Labels = BTreeMap<String, String>;

/// The subset of RE2 the relabelings here use, anchored as Prometheus anchors them: literals,
/// top-level alternation, `(.*)`/`(.+)` capturing everything, and a literal prefix followed by
/// `(.*)` (the Operator's `Pod;(.*)`). Anything else is refused, so the simulator never silently
/// misreads a rule. Returns the groups ($0, $1) on a match.
pub fn regex_match(re: &str, value: &str) -> Option<Vec<String>> {
    match re {
        "(.*)" => return Some(vec![value.to_string(), value.to_string()]),
        "(.+)" => return (!value.is_empty()).then(|| vec![value.to_string(), value.to_string()]),
        _ => {}
    }
    if let Some(prefix) = re.strip_suffix("(.*)") {
        assert!(is_literal(prefix), "relabel simulator: unsupported regex {re:?}");
        return value.strip_prefix(prefix).map(|rest| vec![value.to_string(), rest.to_string()]);
    }
    assert!(is_literal(re.replace('|', "").as_str()), "relabel simulator: unsupported regex {re:?}");
    re.split('|').any(|alt| alt == value).then(|| vec![value.to_string()])
}

fn is_literal(s: &str) -> bool {
    !s.contains(['(', ')', '[', ']', '*', '+', '?', '.', '\\', '^', '$', '{', '|'])
}

fn expand(replacement: &str, groups: &[String]) -> String {
    let mut out = replacement.to_string();
    for (i, g) in groups.iter().enumerate().rev() {
        out = out.replace(&format!("${{{i}}}"), g).replace(&format!("${i}"), g);
    }
    out
}

/// Applies relabel rules (Operator camelCase or Prometheus snake_case). None = target dropped.
pub fn relabel(mut labels: Labels, rules: &[Value]) -> Option<Labels> {
    for r in rules {
        let get = |camel: &str, snake: &str| r.get(camel).or_else(|| r.get(snake)).cloned();
        let action = get("action", "action").and_then(|v| v.as_str().map(str::to_lowercase)).unwrap_or("replace".into());
        let regex = get("regex", "regex").and_then(|v| v.as_str().map(String::from)).unwrap_or("(.*)".into());
        let sep = get("separator", "separator").and_then(|v| v.as_str().map(String::from)).unwrap_or(";".into());
        let sources: Vec<String> = get("sourceLabels", "source_labels")
            .map(|v| v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        let value = sources.iter().map(|s| labels.get(s).cloned().unwrap_or_default()).collect::<Vec<_>>().join(&sep);
        match action.as_str() {
            "replace" => {
                let target = get("targetLabel", "target_label").and_then(|v| v.as_str().map(String::from)).unwrap();
                let replacement =
                    get("replacement", "replacement").and_then(|v| v.as_str().map(String::from)).unwrap_or("$1".into());
                if let Some(groups) = regex_match(&regex, &value) {
                    let v = expand(&replacement, &groups);
                    if v.is_empty() {
                        labels.remove(&target);
                    } else {
                        labels.insert(target, v);
                    }
                }
            }
            "keep" => {
                regex_match(&regex, &value)?;
            }
            "drop" => {
                if regex_match(&regex, &value).is_some() {
                    return None;
                }
            }
            "labeldrop" => labels.retain(|k, _| regex_match(&regex, k).is_none()),
            "labelkeep" => labels.retain(|k, _| k.starts_with("__") || regex_match(&regex, k).is_some()),
            other => panic!("relabel simulator: action {other} not supported"),
        };
    }
    Some(labels)
}

/// One address of a Service's Endpoints as Prometheus's `role: endpoints` discovers it: a pod's
/// container port behind a named Service port.
#[derive(Clone, Debug)]
pub struct Endpoint<'a> {
    pub namespace: &'a str,
    pub service: &'a str,
    /// The Service's labels (become `__meta_kubernetes_service_label_*`).
    pub service_labels: &'a [(&'a str, &'a str)],
    pub port_name: &'a str,
    pub address: String,
    pub pod: &'a str,
    pub container: &'a str,
    pub node: &'a str,
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// The discovered (`__meta_*`) labels of `ep`, plus what every scrape job starts with.
pub fn discovered(ep: &Endpoint, scheme: &str, path: &str) -> Labels {
    let mut l: Labels = [
        ("__address__", ep.address.clone()),
        ("__scheme__", scheme.to_string()),
        ("__metrics_path__", path.to_string()),
        ("__meta_kubernetes_namespace", ep.namespace.to_string()),
        ("__meta_kubernetes_service_name", ep.service.to_string()),
        ("__meta_kubernetes_endpoint_port_name", ep.port_name.to_string()),
        ("__meta_kubernetes_endpoint_ready", "true".into()),
        ("__meta_kubernetes_endpoint_address_target_kind", "Pod".into()),
        ("__meta_kubernetes_endpoint_address_target_name", ep.pod.to_string()),
        ("__meta_kubernetes_pod_name", ep.pod.to_string()),
        ("__meta_kubernetes_pod_container_name", ep.container.to_string()),
        ("__meta_kubernetes_pod_node_name", ep.node.to_string()),
        ("__meta_kubernetes_pod_phase", "Running".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in ep.service_labels {
        l.insert(format!("__meta_kubernetes_service_label_{}", sanitize(k)), v.to_string());
        l.insert(format!("__meta_kubernetes_service_labelpresent_{}", sanitize(k)), "true".into());
    }
    l
}

/// The relabelings the Prometheus Operator generates for a ServiceMonitor endpoint before the
/// endpoint's own `relabelings` (pkg/prometheus/promcfg.go, generateServiceMonitorConfig, role
/// endpoints), without the selector and port `keep` filters (callers feed only matching endpoints):
/// node/pod from the address's target, namespace, service, pod, container, the running filter, job
/// (the Service's name, or the value of its label `job_label`), endpoint (the port's name).
pub fn operator_relabelings(job_label: Option<&str>, port: &str) -> Vec<Value> {
    let target = json!(["__meta_kubernetes_endpoint_address_target_kind", "__meta_kubernetes_endpoint_address_target_name"]);
    let mut rules = vec![
        json!({"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}),
        json!({"source_labels": target, "separator": ";", "regex": "Node;(.*)", "replacement": "${1}", "target_label": "node"}),
        json!({"source_labels": target, "separator": ";", "regex": "Pod;(.*)", "replacement": "${1}", "target_label": "pod"}),
        json!({"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"}),
        json!({"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"}),
        json!({"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}),
        json!({"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"}),
        json!({"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Failed|Succeeded"}),
        json!({"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"}),
    ];
    if let Some(l) = job_label {
        rules.push(json!({"source_labels": [format!("__meta_kubernetes_service_label_{}", sanitize(l))],
                          "target_label": "job", "regex": "(.+)", "replacement": "${1}"}));
    }
    rules.push(json!({"target_label": "endpoint", "replacement": port}));
    rules
}

/// Prometheus's own last steps: instance defaults to __address__, `__`-labels are dropped.
pub fn finish(mut l: Labels) -> Labels {
    if !l.contains_key("instance") {
        let a = l["__address__"].clone();
        l.insert("instance".into(), a);
    }
    l.retain(|k, _| !k.starts_with("__"));
    l
}

/// The labels a ServiceMonitor endpoint (`sm_endpoint`, with `job_label` the ServiceMonitor's
/// `spec.jobLabel`) gives the series it scrapes from `ep`. None if its relabelings drop the target.
pub fn service_monitor_labels(ep: &Endpoint, job_label: Option<&str>, sm_endpoint: &Value) -> Option<Labels> {
    let scheme = sm_endpoint["scheme"].as_str().unwrap_or("http");
    let path = sm_endpoint["path"].as_str().unwrap_or("/metrics");
    let port = sm_endpoint["port"].as_str().expect("endpoint.port");
    let mut l = discovered(ep, scheme, path);
    l.insert("job".into(), "serviceMonitor/x/y/0".into());
    let l = relabel(l, &operator_relabelings(job_label, port))?;
    let own = sm_endpoint["relabelings"].as_array().cloned().unwrap_or_default();
    relabel(l, &own).map(finish)
}

/// The labels a plain `scrape_configs` job gives the series it scrapes from `ep`.
pub fn scrape_config_labels(ep: &Endpoint, job: &Value) -> Option<Labels> {
    let mut l = discovered(ep, job["scheme"].as_str().unwrap_or("http"), job["metrics_path"].as_str().unwrap_or("/metrics"));
    l.insert("job".into(), job["job_name"].as_str().unwrap().to_string());
    relabel(l, job["relabel_configs"].as_array().map(Vec::as_slice).unwrap_or(&[])).map(finish)
}
