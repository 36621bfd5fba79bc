//! `metrics-gate-render cert`: a self-signed CA and a serving certificate it signs, printed as a
//! `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`, `ca.crt`), for clusters without cert-manager.
//! Give Prometheus `ca.crt` and the server name; rotate by running it again and replacing the Secret
//! (Envoy picks the new certificate up without a restart).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;

/// What to issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertRequest {
    /// Secret name and namespace.
    pub name: String,
    pub namespace: String,
    /// DNS SANs of the serving certificate (the first is also its CN).
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Validity of both certificates, from now.
    pub days: u32,
}

impl Default for CertRequest {
    fn default() -> Self {
        CertRequest {
            name: "metrics-gate-tls".into(),
            namespace: "metrics-gate".into(),
            dns_names: vec![
                "metrics-gate".into(),
                "metrics-gate.metrics-gate.svc".into(),
                "metrics-gate.metrics-gate.svc.cluster.local".into(),
            ],
            ips: Vec::new(),
            days: 365,
        }
    }
}

/// The PEMs of one issue.
#[derive(Clone, Debug)]
pub struct Issued {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A fresh CA (ECDSA P-256) and a serving certificate for `req`.
pub fn issue(req: &CertRequest) -> Result<Issued, String> {
    if req.dns_names.is_empty() && req.ips.is_empty() {
        return Err("give at least one --dns NAME or --ip IP".into());
    }
    let err = |e: rcgen::Error| e.to_string();
    let now = time_now();
    let until = now + std::time::Duration::from_secs(u64::from(req.days) * 86_400);

    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{} CA", req.name));
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now.into();
    ca.not_after = until.into();
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().map_err(err)?;
    let mut leaf = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let cn = req
        .dns_names
        .first()
        .cloned()
        .unwrap_or_else(|| req.ips[0].to_string());
    dn.push(DnType::CommonName, cn);
    leaf.distinguished_name = dn;
    for n in &req.dns_names {
        leaf.subject_alt_names.push(SanType::DnsName(
            n.clone()
                .try_into()
                .map_err(|e: rcgen::Error| format!("--dns {n}: {e}"))?,
        ));
    }
    leaf.subject_alt_names
        .extend(req.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now.into();
    leaf.not_after = until.into();
    let cert = leaf.signed_by(&key, &issuer).map_err(err)?;
    Ok(Issued {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The Secret's YAML.
pub fn secret_yaml(req: &CertRequest, issued: &Issued) -> String {
    let block = |pem: &str| {
        pem.trim_end()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "# Self-signed by `metrics-gate-render cert`: give Prometheus ca.crt to verify the listeners.\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: {}\n  namespace: {}\ntype: kubernetes.io/tls\n\
         stringData:\n  tls.crt: |\n{}  tls.key: |\n{}  ca.crt: |\n{}",
        req.name,
        req.namespace,
        block(&issued.cert_pem),
        block(&issued.key_pem),
        block(&issued.ca_pem),
    )
}

fn time_now() -> std::time::SystemTime {
    std::time::SystemTime::now()
}
