//! The components file: which components one Envoy serves, in YAML, for `metrics-gate-render
//! bootstrap --components FILE`. Every field but `components` is optional; a component is either a
//! preset (`preset: kube-scheduler`, any field below overrides it) or fully described.
//!
//! ```yaml
//! tls:                                  # the listeners' certificate (default: TLS on every listener)
//!   cert_dir: /etc/metrics-gate/tls     # tls.crt + tls.key (a mounted kubernetes.io/tls Secret)
//!   client_ca_file: /etc/metrics-gate/client-ca/ca.crt   # only for client_certificates below
//! components:
//! - preset: kube-scheduler              # kube-proxy kube-controller-manager kube-scheduler etcd
//!                                       # kube-vip cilium-agent cilium-operator hubble
//! - name: my-controller                 # letters, digits, '-', '_'
//!   listen_port: 8443                   # on the node IP
//!   upstream:
//!     address: 127.0.0.1:8080
//!     scheme: https                     # http | https
//!     verify: {ca_file: /etc/ca.crt, server_name: my-controller}   # https only; none = no check
//! - preset: kube-controller-manager     # a preset's https upstream, verified (default: not):
//!   upstream_verify: {ca_file: /etc/kubernetes/pki/kcm-ca.crt, server_name: 127.0.0.1}
//!                                       # server_name: a DNS SAN, or an IP SAN such as 127.0.0.1
//!   upstream_credentials: none          # none | proxy (Envoy sends the proxy's own token)
//!                                       # | passthrough (the caller's Authorization, unchanged)
//!   listener:
//!     tls: tls                          # tls | plaintext (explicit opt-in to clear text)
//!     client_certificates: none         # none | optional (verified when presented) | required
//!   allowed_paths: [/metrics]           # the filter's fields, see the README's plugin table
//!   audiences: []
//!   authorization:
//!     resource_attributes: {namespace: kube-system, api_group: "", api_version: v1,
//!                           resource: services, subresource: proxy, name: my-controller}
//!   identity_headers: {enabled: true, user: x-remote-user, groups: x-remote-groups}
//!   plugin: {cache: {allow_ttl_seconds: 60}}   # any other filter field, passed as is
//! ```
//!
//! Mistakes are reported with the line, the field and what is allowed, e.g.
//! `components[1].upstream_credentials: unknown variant `token`, expected one of `none`, `proxy`,
//! `passthrough` at line 7 column 27`.

use std::net::SocketAddr;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::model::{
    ClientCertificates, Component, ListenerTls, Preset, TlsFiles, UpstreamCredentials, UpstreamTls,
};

/// A components file, parsed.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComponentsFile {
    #[serde(default)]
    pub tls: Option<TlsSection>,
    pub components: Vec<ComponentEntry>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert_dir: Option<String>,
    pub client_ca_file: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComponentEntry {
    pub preset: Option<PresetName>,
    pub name: Option<String>,
    pub listen_port: Option<u16>,
    pub upstream: Option<UpstreamEntry>,
    /// Verification of an https upstream without restating its address and scheme (for presets):
    /// `{ca_file, server_name}` (a DNS name or an IP SAN) or `none`.
    pub upstream_verify: Option<VerifyEntry>,
    pub upstream_credentials: Option<CredentialsEntry>,
    pub listener: Option<ListenerEntry>,
    pub allowed_paths: Option<Vec<String>>,
    pub audiences: Option<Vec<String>>,
    pub authorization: Option<AuthorizationEntry>,
    pub identity_headers: Option<IdentityHeadersEntry>,
    pub plugin: Option<Map<String, Value>>,
}

/// Preset names as the file spells them (serde lists them all when one is misspelt).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PresetName {
    KubeProxy,
    KubeControllerManager,
    KubeScheduler,
    Etcd,
    KubeVip,
    CiliumAgent,
    CiliumOperator,
    Hubble,
}

impl From<PresetName> for Preset {
    fn from(p: PresetName) -> Preset {
        match p {
            PresetName::KubeProxy => Preset::KubeProxy,
            PresetName::KubeControllerManager => Preset::KubeControllerManager,
            PresetName::KubeScheduler => Preset::KubeScheduler,
            PresetName::Etcd => Preset::Etcd,
            PresetName::KubeVip => Preset::KubeVip,
            PresetName::CiliumAgent => Preset::CiliumAgent,
            PresetName::CiliumOperator => Preset::CiliumOperator,
            PresetName::Hubble => Preset::Hubble,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamEntry {
    pub address: SocketAddr,
    pub scheme: Scheme,
    /// https only: `none` (the default: loopback components' self-signed certificates) or a CA.
    #[serde(default)]
    pub verify: Option<VerifyEntry>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VerifyEntry {
    /// `verify: none`
    None,
    /// `verify: {ca: {ca_file, server_name}}` is not needed: a map is read as this variant.
    #[serde(untagged)]
    Ca {
        ca_file: String,
        server_name: String,
    },
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CredentialsEntry {
    None,
    Proxy,
    Passthrough,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerEntry {
    #[serde(default)]
    pub tls: Option<ListenerMode>,
    #[serde(default)]
    pub client_certificates: Option<ClientCertsEntry>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    Tls,
    Plaintext,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertsEntry {
    None,
    Optional,
    Required,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationEntry {
    pub resource_attributes: ResourceAttributesEntry,
}

/// SubjectAccessReview resource attributes; passed to the filter as is.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResourceAttributesEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeadersEntry {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_separator: Option<String>,
}

/// A components file that does not parse or describes an impossible component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError(pub String);

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FileError {}

impl ComponentsFile {
    /// Parses the YAML text; `origin` (a file name) prefixes errors.
    pub fn parse(text: &str, origin: &str) -> Result<ComponentsFile, FileError> {
        serde_yaml_ng::from_str(text).map_err(|e| FileError(format!("{origin}: {e}")))
    }

    /// The listeners' TLS files: the file's `tls:` over [`TlsFiles::default`].
    pub fn tls_files(&self) -> TlsFiles {
        let mut files = TlsFiles::default();
        if let Some(t) = &self.tls {
            if let Some(d) = &t.cert_dir {
                files.cert_dir = d.clone();
            }
            files.client_ca_file = t.client_ca_file.clone();
        }
        files
    }

    /// The components, in file order.
    pub fn components(&self, origin: &str) -> Result<Vec<Component>, FileError> {
        self.components
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.component()
                    .map_err(|msg| FileError(format!("{origin}: components[{i}]{msg}")))
            })
            .collect()
    }
}

impl ComponentEntry {
    /// The component this entry describes; errors start with `.field: `.
    pub fn component(&self) -> Result<Component, String> {
        let mut c = match self.preset {
            Some(p) => Component::preset(p.into(), Value::Object(Map::new())),
            None => {
                let name = self.name.clone().ok_or(
                    ": give `preset` (one of ".to_string()
                        + &Preset::names().join(", ")
                        + ") or `name`, `listen_port` and `upstream`",
                )?;
                let port = self
                    .listen_port
                    .ok_or(format!(" ({name}).listen_port: required without a preset"))?;
                let upstream = self
                    .upstream
                    .as_ref()
                    .ok_or(format!(" ({name}).upstream: required without a preset"))?;
                Component {
                    name,
                    listen_port: port,
                    upstream: upstream.address,
                    upstream_tls: UpstreamTls::Plain,
                    upstream_credentials: UpstreamCredentials::None,
                    plugin_config: Value::Object(Map::new()),
                    listener_tls: ListenerTls::default(),
                }
            }
        };
        if let Some(name) = &self.name {
            c.name = name.clone();
        }
        if let Some(port) = self.listen_port {
            c.listen_port = port;
        }
        if let Some(u) = &self.upstream {
            c.upstream = u.address;
            c.upstream_tls = match (u.scheme, &u.verify) {
                (Scheme::Http, None) => UpstreamTls::Plain,
                (Scheme::Http, Some(_)) => {
                    return Err(format!(
                        " ({}).upstream.verify: only with scheme: https",
                        c.name
                    ))
                }
                (Scheme::Https, None | Some(VerifyEntry::None)) => UpstreamTls::TlsNoVerify,
                (
                    Scheme::Https,
                    Some(VerifyEntry::Ca {
                        ca_file,
                        server_name,
                    }),
                ) => UpstreamTls::TlsVerify {
                    ca_file: ca_file.clone(),
                    sni: server_name.clone(),
                },
            };
        }
        if let Some(verify) = &self.upstream_verify {
            c.upstream_tls = match (&c.upstream_tls, verify) {
                (UpstreamTls::Plain, _) => {
                    return Err(format!(
                        " ({}).upstream_verify: the upstream is plain http",
                        c.name
                    ))
                }
                (_, VerifyEntry::None) => UpstreamTls::TlsNoVerify,
                (
                    _,
                    VerifyEntry::Ca {
                        ca_file,
                        server_name,
                    },
                ) => UpstreamTls::TlsVerify {
                    ca_file: ca_file.clone(),
                    sni: server_name.clone(),
                },
            };
        }
        if let Some(cred) = self.upstream_credentials {
            c.upstream_credentials = match cred {
                CredentialsEntry::None => UpstreamCredentials::None,
                CredentialsEntry::Proxy => UpstreamCredentials::Proxy,
                CredentialsEntry::Passthrough => UpstreamCredentials::Passthrough,
            };
        }
        if let Some(l) = &self.listener {
            let client = match l.client_certificates {
                None | Some(ClientCertsEntry::None) => ClientCertificates::Off,
                Some(ClientCertsEntry::Optional) => ClientCertificates::Optional,
                Some(ClientCertsEntry::Required) => ClientCertificates::Required,
            };
            c.listener_tls = match l.tls {
                None | Some(ListenerMode::Tls) => ListenerTls::Tls {
                    client_certificates: client,
                },
                Some(ListenerMode::Plaintext) if client != ClientCertificates::Off => {
                    return Err(format!(
                        " ({}).listener.client_certificates: needs tls: tls (the listener is plaintext)",
                        c.name
                    ))
                }
                Some(ListenerMode::Plaintext) => ListenerTls::Plaintext,
            };
        }

        let mut plugin = self.plugin.clone().unwrap_or_default();
        let mut set = |key: &str, v: Value| {
            plugin.insert(key.into(), v);
        };
        if let Some(p) = &self.allowed_paths {
            if let Some(bad) = p.iter().find(|p| !p.starts_with('/')) {
                return Err(format!(
                    " ({}).allowed_paths: {bad:?} must start with \"/\"",
                    c.name
                ));
            }
            set("allowed_paths", p.clone().into());
        }
        if let Some(a) = &self.audiences {
            set("audiences", a.clone().into());
        }
        if let Some(a) = &self.authorization {
            let attrs = serde_json::to_value(&a.resource_attributes).unwrap_or_default();
            set(
                "authorization",
                serde_json::json!({ "resource_attributes": attrs }),
            );
        }
        if let Some(h) = &self.identity_headers {
            set(
                "identity_headers",
                serde_json::to_value(h).unwrap_or_default(),
            );
        }
        c.plugin_config = Value::Object(plugin);
        Ok(c)
    }
}
