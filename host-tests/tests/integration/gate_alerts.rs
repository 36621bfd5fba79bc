//! The gate's own alerts (manifests/monitoring/prometheusrule.yaml) fire on the trouble they name and
//! stay quiet otherwise, as Prometheus's own rule engine evaluates them:
//!
//! - the plain rule file for a Prometheus without the Operator
//!   (manifests/prometheus/metrics-gate-rules.yaml) is generated from the PrometheusRule, never
//!   edited by hand (`METRICS_GATE_BLESS=1` rewrites it);
//! - `promtool check rules` accepts it and `promtool test rules` passes
//!   host-tests/fixtures/metrics-gate-alerts.test.yaml (Debian's `prometheus` package), which has,
//!   for every alert, a case where it fires and one where it does not;
//! - and that file is not blind: with any one alert taken out of the rules, it fails;
//! - every alert carries a severity, a summary, a description and a runbook_url that is a heading
//!   of docs/alerts.md.
//!
//! That the series the alerts select on exist with these names and labels on a live gate is
//! gate_dashboard.rs's part (it loads the same rule file into a real Prometheus).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

use crate::support::kustomize::{root, which};

fn prometheus_rule() -> Value {
    let path = root().join("manifests/monitoring/prometheusrule.yaml");
    serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn plain_rules_path() -> PathBuf {
    root().join("manifests/prometheus/metrics-gate-rules.yaml")
}

fn unit_tests_path() -> PathBuf {
    root().join("host-tests/fixtures/metrics-gate-alerts.test.yaml")
}

/// The plain rule file: the PrometheusRule's `spec` (its `groups`), under a header.
pub fn plain_rule_file() -> String {
    let spec = &prometheus_rule()["spec"];
    let mut file = serde_yaml_ng::Mapping::new();
    file.insert("groups".into(), spec["groups"].clone());
    format!(
        "# metrics-gate's own alerts for a Prometheus without the Operator: add this file to `rule_files`.\n\
         # Generated from manifests/monitoring/prometheusrule.yaml (its spec) by\n\
         # host-tests/tests/integration/gate_alerts.rs: edit that file, not this one. See docs/alerts.md.\n{}",
        serde_yaml_ng::to_string(&file).unwrap()
    )
}

/// Every alerting rule of the PrometheusRule.
fn alerts() -> Vec<Value> {
    let rule = prometheus_rule();
    rule["spec"]["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().clone())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

fn promtool() -> PathBuf {
    which("promtool").expect("promtool is missing: run `just setup` (Debian: apt-get install prometheus)")
}

/// `promtool <args>`: (passed, output).
fn run_promtool(args: &[&Path]) -> (bool, String) {
    let out = Command::new(promtool()).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn plain_rule_file_is_generated_from_the_prometheusrule() {
    let want = plain_rule_file();
    if std::env::var_os("METRICS_GATE_BLESS").is_some() {
        std::fs::write(plain_rules_path(), &want).unwrap();
    }
    let have = std::fs::read_to_string(plain_rules_path()).unwrap_or_default();
    assert!(
        have == want,
        "{} differs from manifests/monitoring/prometheusrule.yaml: METRICS_GATE_BLESS=1 cargo test -p metrics-gate-host-tests --test integration gate_alerts::",
        plain_rules_path().display()
    );
    let rule = prometheus_rule();
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
}

#[test]
fn every_alert_has_a_severity_and_a_runbook_in_docs() {
    let doc = std::fs::read_to_string(root().join("docs/alerts.md")).unwrap();
    let headings: BTreeSet<String> = doc.lines().filter_map(|l| l.strip_prefix("## ")).map(|h| h.trim().to_owned()).collect();
    let alerts = alerts();
    assert!(alerts.len() >= 9, "{} alerts", alerts.len());
    for rule in &alerts {
        let name = rule["alert"].as_str().unwrap();
        assert!(name.starts_with("MetricsGate"), "{name}");
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["warning", "critical"].contains(&severity), "{name}: severity {severity:?}");
        for key in ["summary", "description"] {
            assert!(!rule["annotations"][key].as_str().unwrap_or_default().is_empty(), "{name}: no {key}");
        }
        // GitHub's anchor for a heading that is one word: the word in lower case.
        assert_eq!(rule["annotations"]["runbook_url"].as_str(), Some(format!("docs/alerts.md#{}", name.to_lowercase()).as_str()), "{name}");
        assert!(headings.contains(name), "docs/alerts.md has no `## {name}`");
    }
    // And docs/alerts.md describes no alert that does not exist.
    let names: BTreeSet<String> = alerts.iter().map(|r| r["alert"].as_str().unwrap().to_owned()).collect();
    for h in headings.iter().filter(|h| h.starts_with("MetricsGate")) {
        assert!(names.contains(h), "docs/alerts.md describes {h}, which no rule raises");
    }
}

#[test]
fn promtool_unit_tests_fire_every_alert_and_keep_each_quiet_when_it_should() {
    let (ok, out) = run_promtool(&[Path::new("check"), Path::new("rules"), &plain_rules_path()]);
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = run_promtool(&[Path::new("test"), Path::new("rules"), &unit_tests_path()]);
    assert!(ok, "promtool test rules:\n{out}");

    // Coverage: each alert has a case where it fires and one where it must not.
    let tests: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(unit_tests_path()).unwrap()).unwrap();
    let cases: Vec<&Value> = tests["tests"].as_sequence().unwrap().iter().flat_map(|t| t["alert_rule_test"].as_sequence().unwrap()).collect();
    for rule in alerts() {
        let name = rule["alert"].as_str().unwrap();
        let of: Vec<&&Value> = cases.iter().filter(|c| c["alertname"] == name).collect();
        assert!(of.iter().any(|c| c["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty())), "{name}: no case where it fires");
        assert!(of.iter().any(|c| c["exp_alerts"].as_sequence().is_some_and(|a| a.is_empty())), "{name}: no case where it stays quiet");
    }
}

#[test]
fn the_unit_tests_fail_without_any_one_alert() {
    // The negative control: the same test file against the rules with one alert removed must fail,
    // for each alert in turn, so no alert's firing case passes vacuously.
    let dir = tempfile::tempdir().unwrap();
    let fixtures = dir.path().join("host-tests/fixtures");
    let rules_dir = dir.path().join("manifests/prometheus");
    std::fs::create_dir_all(&fixtures).unwrap();
    std::fs::create_dir_all(&rules_dir).unwrap();
    let test_file = fixtures.join("metrics-gate-alerts.test.yaml");
    std::fs::copy(unit_tests_path(), &test_file).unwrap();
    let plain: Value = serde_yaml_ng::from_str(&plain_rule_file()).unwrap();
    for name in alerts().iter().map(|r| r["alert"].as_str().unwrap().to_owned()) {
        let mut without = plain.clone();
        for group in without["groups"].as_sequence_mut().unwrap() {
            group["rules"].as_sequence_mut().unwrap().retain(|r| r["alert"].as_str() != Some(name.as_str()));
        }
        std::fs::write(rules_dir.join("metrics-gate-rules.yaml"), serde_yaml_ng::to_string(&without).unwrap()).unwrap();
        let (ok, out) = run_promtool(&[Path::new("test"), Path::new("rules"), &test_file]);
        assert!(!ok, "the unit tests pass without {name}:\n{out}");
        assert!(out.contains(&format!("alertname: {name}")), "without {name}, another case failed:\n{out}");
    }
}

#[test]
fn token_stale_threshold_is_the_daemonsets_token_lifetime() {
    // MetricsGateTokenStale says "older than the token's lifetime": that is the projected token's
    // expirationSeconds in the DaemonSet, so the two must change together.
    let daemonset: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(root().join("manifests/base/daemonset.yaml")).unwrap()).unwrap();
    let lifetimes: Vec<u64> = daemonset["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|v| v["projected"]["sources"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|s| s["serviceAccountToken"]["expirationSeconds"].as_u64())
        .collect();
    assert_eq!(lifetimes.len(), 1, "one projected token in the DaemonSet: {lifetimes:?}");
    let rule = alerts().into_iter().find(|r| r["alert"] == "MetricsGateTokenStale").unwrap();
    let expr = rule["expr"].as_str().unwrap();
    assert!(expr.trim_end().ends_with(&format!("> {}", lifetimes[0])), "{expr}: not the token's {} s", lifetimes[0]);
    let description = rule["annotations"]["description"].as_str().unwrap();
    assert!(description.contains(&format!("expirationSeconds {}", lifetimes[0])), "{description}");
}
