//! Kubernetes RBAC, evaluated from the very ClusterRole/ClusterRoleBinding YAML that manifests/
//! ships: the mock apiserver's authorisation decisions are only trustworthy if a typo in the shipped
//! RBAC makes the tests fail.
//!
//! Scope: cluster-wide objects (what a metrics proxy needs). Namespaced Role/RoleBinding and
//! aggregated ClusterRoles are ignored, as are kinds other than the two below.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Metadata {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub api_groups: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub resource_names: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClusterRole {
    pub metadata: Metadata,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleRef {
    #[serde(default)]
    pub api_group: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub api_group: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRoleBinding {
    pub metadata: Metadata,
    pub role_ref: RoleRef,
    #[serde(default)]
    pub subjects: Vec<Subject>,
}

/// What is being asked for, as in a SubjectAccessReview spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    NonResource {
        path: String,
        verb: String,
    },
    Resource {
        namespace: String,
        verb: String,
        group: String,
        resource: String,
        subresource: String,
        name: String,
    },
}

impl Attributes {
    /// Cluster-scoped `verb` on `group`/`resource`.
    pub fn resource(verb: &str, group: &str, resource: &str) -> Self {
        Attributes::Resource {
            namespace: String::new(),
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: String::new(),
            name: String::new(),
        }
    }

    pub fn non_resource(verb: &str, path: &str) -> Self {
        Attributes::NonResource {
            path: path.into(),
            verb: verb.into(),
        }
    }
}

/// An authorisation decision. `reason` is only set when allowed: that is what kube-apiserver's RBAC
/// authorizer reports (a denial has no opinion and no reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Option<String>,
}

/// A set of ClusterRoles and ClusterRoleBindings.
#[derive(Debug, Clone, Default)]
pub struct Rbac {
    pub roles: Vec<ClusterRole>,
    pub bindings: Vec<ClusterRoleBinding>,
}

impl Rbac {
    /// Loads every ClusterRole/ClusterRoleBinding from multi-document YAML files.
    pub fn load(paths: &[PathBuf]) -> anyhow::Result<Self> {
        let mut rbac = Rbac::default();
        for p in paths {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
            rbac.add_yaml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        }
        Ok(rbac)
    }

    /// The RBAC files the product ships plus the example Prometheus binding (manifests/).
    pub fn shipped() -> anyhow::Result<Self> {
        Self::load(&default_rbac_files())
    }

    /// Adds the objects of a multi-document YAML string.
    pub fn add_yaml(&mut self, text: &str) -> anyhow::Result<()> {
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let value = serde_yaml_ng::Value::deserialize(doc)?;
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default();
            let api_version = value
                .get("apiVersion")
                .and_then(|k| k.as_str())
                .unwrap_or_default();
            if api_version != "rbac.authorization.k8s.io/v1" {
                continue;
            }
            match kind {
                "ClusterRole" => self.roles.push(serde_yaml_ng::from_value(value)?),
                "ClusterRoleBinding" => self.bindings.push(serde_yaml_ng::from_value(value)?),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn role(&self, name: &str) -> Option<&ClusterRole> {
        self.roles.iter().find(|r| r.metadata.name == name)
    }

    pub fn binding(&self, name: &str) -> Option<&ClusterRoleBinding> {
        self.bindings.iter().find(|b| b.metadata.name == name)
    }

    /// Evaluates like the RBAC authorizer: the first binding whose subject matches the user and whose
    /// role has a rule covering the attributes allows.
    pub fn authorize(&self, user: &str, groups: &[String], attrs: &Attributes) -> Decision {
        for b in &self.bindings {
            if b.role_ref.kind != "ClusterRole" {
                continue;
            }
            let Some(subject) = b.subjects.iter().find(|s| applies_to(s, user, groups)) else {
                continue;
            };
            let Some(role) = self.role(&b.role_ref.name) else {
                continue; // a binding to a missing role grants nothing
            };
            if role.rules.iter().any(|r| rule_allows(r, attrs)) {
                return Decision {
                    allowed: true,
                    reason: Some(format!(
                        "RBAC: allowed by ClusterRoleBinding \"{}\" of ClusterRole \"{}\" to {}",
                        b.metadata.name,
                        role.metadata.name,
                        describe_subject(subject)
                    )),
                };
            }
        }
        Decision {
            allowed: false,
            reason: None,
        }
    }

    /// Whether `user` may `verb` the cluster-scoped `resource` of `api_group` (the check the
    /// apiserver makes on the caller of a review).
    pub fn can(
        &self,
        user: &str,
        groups: &[String],
        verb: &str,
        api_group: &str,
        resource: &str,
    ) -> bool {
        self.authorize(
            user,
            groups,
            &Attributes::resource(verb, api_group, resource),
        )
        .allowed
    }
}

/// `manifests/base/rbac.yaml` and `manifests/examples/prometheus-metrics-reader-binding.yaml`.
pub fn default_rbac_files() -> Vec<PathBuf> {
    let manifests = manifests_dir();
    vec![
        manifests.join("base/rbac.yaml"),
        manifests.join("examples/prometheus-metrics-reader-binding.yaml"),
    ]
}

/// The repository's manifests/ directory.
pub fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("manifests")
}

fn applies_to(s: &Subject, user: &str, groups: &[String]) -> bool {
    match s.kind.as_str() {
        "ServiceAccount" => {
            !s.namespace.is_empty()
                && user == format!("system:serviceaccount:{}:{}", s.namespace, s.name)
        }
        "User" => s.name == user,
        "Group" => groups.contains(&s.name),
        _ => false,
    }
}

fn describe_subject(s: &Subject) -> String {
    match s.kind.as_str() {
        "ServiceAccount" => format!("ServiceAccount \"{}/{}\"", s.name, s.namespace),
        kind => format!("{kind} \"{}\"", s.name),
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

fn rule_allows(r: &PolicyRule, attrs: &Attributes) -> bool {
    match attrs {
        Attributes::NonResource { path, verb } => {
            has(&r.verbs, verb)
                && r.non_resource_urls.iter().any(|u| {
                    u == "*"
                        || u == path
                        || u.strip_suffix('*')
                            .is_some_and(|prefix| path.starts_with(prefix))
                })
        }
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            if !has(&r.verbs, verb) || !has(&r.api_groups, group) {
                return false;
            }
            let combined = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            let resource_ok = r.resources.iter().any(|x| {
                x == "*"
                    || *x == combined
                    || (!subresource.is_empty()
                        && x.strip_prefix("*/").is_some_and(|sub| sub == subresource))
            });
            resource_ok
                && (r.resource_names.is_empty() || r.resource_names.iter().any(|n| n == name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::ServiceAccount;

    fn sa(ns: &str, name: &str) -> (String, Vec<String>) {
        let s = ServiceAccount::new(ns, name);
        (s.username(), s.groups())
    }

    #[test]
    fn shipped_rbac_matches_the_reference_decisions() {
        let rbac = Rbac::shipped().unwrap();
        let metrics = Attributes::non_resource("get", "/metrics");
        let (u, g) = sa("observability", "prometheus-server");
        let d = rbac.authorize(&u, &g, &metrics);
        assert_eq!(
            d.reason.as_deref(),
            Some("RBAC: allowed by ClusterRoleBinding \"prometheus-server-metrics-reader\" of ClusterRole \"metrics-reader\" to ServiceAccount \"prometheus-server/observability\"")
        );
        let (u, g) = sa("observability", "nobody");
        assert_eq!(
            rbac.authorize(&u, &g, &metrics),
            Decision {
                allowed: false,
                reason: None
            }
        );
        let anon = rbac.authorize(
            "system:anonymous",
            &["system:unauthenticated".into()],
            &metrics,
        );
        assert!(!anon.allowed);
        // Only get, only /metrics.
        let (u, g) = sa("observability", "prometheus-server");
        assert!(
            !rbac
                .authorize(&u, &g, &Attributes::non_resource("post", "/metrics"))
                .allowed
        );
        assert!(
            !rbac
                .authorize(&u, &g, &Attributes::non_resource("get", "/metrics/slis"))
                .allowed
        );
        assert!(!rbac.can(&u, &g, "create", "authentication.k8s.io", "tokenreviews"));
    }

    #[test]
    fn the_proxy_may_review_and_read_metrics() {
        let rbac = Rbac::shipped().unwrap();
        let (u, g) = sa("metrics-gate", "metrics-gate");
        assert!(rbac.can(&u, &g, "create", "authentication.k8s.io", "tokenreviews"));
        assert!(rbac.can(
            &u,
            &g,
            "create",
            "authorization.k8s.io",
            "subjectaccessreviews"
        ));
        assert!(!rbac.can(
            &u,
            &g,
            "create",
            "authorization.k8s.io",
            "localsubjectaccessreviews"
        ));
        assert!(!rbac.can(&u, &g, "get", "authentication.k8s.io", "tokenreviews"));
        // Envoy presents the proxy's own token to kube-scheduler/kube-controller-manager upstream.
        assert!(
            rbac.authorize(&u, &g, &Attributes::non_resource("get", "/metrics"))
                .allowed
        );
        // Same name in another namespace is someone else.
        let (u, g) = sa("default", "metrics-gate");
        assert!(!rbac.can(&u, &g, "create", "authentication.k8s.io", "tokenreviews"));
    }

    #[test]
    fn rule_matching_like_kubernetes() {
        let yaml = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: ignored}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: wide}
rules:
- nonResourceURLs: ["/debug/*"]
  verbs: ["*"]
- apiGroups: [""]
  resources: ["services/proxy", "*/metrics"]
  resourceNames: ["kube-dns"]
  verbs: ["get"]
- apiGroups: ["*"]
  resources: ["*"]
  verbs: ["list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: to-user}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: wide}
subjects: [{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: to-group}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: wide}
subjects: [{kind: Group, name: ops, apiGroup: rbac.authorization.k8s.io}]
"#;
        let mut rbac = Rbac::default();
        rbac.add_yaml(yaml).unwrap();
        assert_eq!(rbac.roles.len(), 1);
        let none: Vec<String> = vec![];
        let d = rbac.authorize(
            "alice",
            &none,
            &Attributes::non_resource("post", "/debug/pprof/heap"),
        );
        assert_eq!(d.reason.unwrap(), "RBAC: allowed by ClusterRoleBinding \"to-user\" of ClusterRole \"wide\" to User \"alice\"");
        assert!(
            !rbac
                .authorize("alice", &none, &Attributes::non_resource("get", "/debug"))
                .allowed
        );
        let d = rbac.authorize(
            "bob",
            &["ops".into()],
            &Attributes::resource("list", "apps", "deployments"),
        );
        assert_eq!(d.reason.unwrap(), "RBAC: allowed by ClusterRoleBinding \"to-group\" of ClusterRole \"wide\" to Group \"ops\"");
        assert!(
            !rbac
                .authorize(
                    "bob",
                    &none,
                    &Attributes::resource("list", "apps", "deployments")
                )
                .allowed
        );
        let proxy = |name: &str, sub: &str| Attributes::Resource {
            namespace: "kube-system".into(),
            verb: "get".into(),
            group: String::new(),
            resource: "services".into(),
            subresource: sub.into(),
            name: name.into(),
        };
        assert!(
            rbac.authorize("alice", &none, &proxy("kube-dns", "proxy"))
                .allowed
        );
        assert!(
            rbac.authorize("alice", &none, &proxy("kube-dns", "metrics"))
                .allowed
        );
        assert!(
            !rbac
                .authorize("alice", &none, &proxy("other", "proxy"))
                .allowed
        );
        assert!(
            !rbac
                .authorize("alice", &none, &proxy("kube-dns", ""))
                .allowed
        );
    }
}
