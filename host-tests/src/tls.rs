//! A throwaway PKI for tests: one CA per double, leaf certificates with the SANs Envoy will check.
//!
//! Certificates are generated at test time (rcgen, ECDSA P-256) so nothing secret is committed and
//! every run has fresh keys.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Installs ring as rustls' process-wide crypto provider, once (rustls refuses to guess when
/// more than one provider could be compiled in).
pub fn install_crypto_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // Err means someone else installed one first: that is fine too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A test certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A leaf certificate and its private key (PKCS#8), both PEM.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A client certificate (CN = user, O = groups, as Kubernetes and the filter read them).
pub type ClientCert = ServerCert;

impl TestCa {
    /// A self-signed CA whose subject CN is `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generating a CA key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signing the CA");
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A serving certificate for `dns_names` and `ips` (CN = first DNS name).
    pub fn issue_server(&self, dns_names: &[&str], ips: &[IpAddr]) -> ServerCert {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            dns_names.first().copied().unwrap_or("localhost"),
        );
        params.distinguished_name = dn;
        for name in dns_names {
            params.subject_alt_names.push(SanType::DnsName(
                (*name).try_into().expect("DNS SAN must be IA5"),
            ));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate: CN = `user`, one O per group.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> ClientCert {
        self.sign(client_params(user, groups))
    }

    /// Like [`issue_client`](Self::issue_client), but valid only in 2020.
    pub fn issue_expired_client(&self, user: &str, groups: &[&str]) -> ClientCert {
        let mut params = client_params(user, groups);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> ServerCert {
        let key = KeyPair::generate().expect("generating a leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing a leaf");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate to `dir/file_name`.
    pub fn write_cert(&self, dir: &Path, file_name: &str) -> io::Result<PathBuf> {
        write_pem(dir, file_name, &self.cert_pem)
    }
}

impl ServerCert {
    /// Writes `<stem>.crt` and `<stem>.key` into `dir`; returns (cert path, key path).
    pub fn write_to(&self, dir: &Path, stem: &str) -> io::Result<(PathBuf, PathBuf)> {
        Ok((
            write_pem(dir, &format!("{stem}.crt"), &self.cert_pem)?,
            write_pem(dir, &format!("{stem}.key"), &self.key_pem)?,
        ))
    }

    /// A TLS acceptor serving this certificate (HTTP/1.1 only).
    pub fn tls_acceptor(&self) -> anyhow::Result<TlsAcceptor> {
        tls_acceptor(&self.cert_pem, &self.key_pem)
    }
}

/// Writes `pem` to `dir/file_name` (creating `dir`).
pub fn write_pem(dir: &Path, file_name: &str, pem: &str) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let path = dir.join(file_name);
    fs::write(&path, pem)?;
    Ok(path)
}

/// Parses every certificate in a PEM string.
pub fn parse_certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in PEM");
    Ok(certs)
}

/// A rustls server configuration for a PEM certificate chain and key, advertising http/1.1.
pub fn server_config(cert_pem: &str, key_pem: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    install_crypto_provider();
    let certs = parse_certs(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

pub fn tls_acceptor(cert_pem: &str, key_pem: &str) -> anyhow::Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(server_config(cert_pem, key_pem)?))
}

/// A rustls client configuration trusting only `ca_pem` (for tests that talk to the doubles).
pub fn client_config(ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in parse_certs(ca_pem)? {
        roots.add(c)?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

pub fn tls_connector(ca_pem: &str) -> anyhow::Result<TlsConnector> {
    Ok(TlsConnector::from(client_config(ca_pem)?))
}

/// `ServerName` from a DNS name or an IP literal.
pub fn server_name(host: &str) -> anyhow::Result<ServerName<'static>> {
    Ok(ServerName::try_from(host.to_string())?)
}

/// A client certificate's parameters: CN `user`, one O per group (how Kubernetes reads them).
fn client_params(user: &str, groups: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, user);
    for g in groups {
        dn.push(DnType::OrganizationName, *g);
    }
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn handshake_with_dns_and_ip_sans() {
        let ca = TestCa::new("test-ca");
        let leaf = ca.issue_server(&["kubernetes.default.svc"], &["127.0.0.1".parse().unwrap()]);
        let acceptor = leaf.tls_acceptor().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..3 {
                let (s, _) = listener.accept().await.unwrap();
                if let Ok(mut tls) = acceptor.accept(s).await {
                    tls.write_all(b"hi").await.unwrap();
                    tls.shutdown().await.unwrap();
                }
            }
        });
        for host in ["kubernetes.default.svc", "127.0.0.1"] {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut tls = tls_connector(ca.cert_pem())
                .unwrap()
                .connect(server_name(host).unwrap(), tcp)
                .await
                .unwrap();
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await.unwrap();
            assert_eq!(buf, b"hi");
        }
        // A different CA is not trusted.
        let other = TestCa::new("other");
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(tls_connector(other.cert_pem())
            .unwrap()
            .connect(server_name("127.0.0.1").unwrap(), tcp)
            .await
            .is_err());
    }

    #[test]
    fn writes_pems() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("x");
        let leaf = ca.issue_client("alice", &["team-a"]);
        let (c, k) = leaf.write_to(dir.path(), "alice").unwrap();
        assert!(fs::read_to_string(c)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(fs::read_to_string(k).unwrap().contains("PRIVATE KEY"));
        assert!(ca.write_cert(dir.path(), "ca.crt").unwrap().exists());
    }
}
