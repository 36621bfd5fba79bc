//! Real Kubernetes ServiceAccount tokens: RS256 JWTs with the claims kube-apiserver issues, and the
//! checks its ServiceAccount authenticator applies (signature, algorithm, expiry, issuer, audiences).
//!
//! Real JWTs (not opaque strings) matter: the filter reads `exp` to bound its cache lifetimes, and
//! tests of expiry, audience and rotation only mean something if the token carries those claims.

use std::fmt;
use std::sync::{Arc, OnceLock};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::unix_now;

/// The issuer (and default API audience) of a kubeadm-style cluster.
pub const APISERVER_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The apiserver's own audiences (`--api-audiences`), used when a TokenReview names none.
pub fn apiserver_audiences() -> Vec<String> {
    vec![APISERVER_ISSUER.to_string()]
}

/// A ServiceAccount identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ServiceAccount {
    /// A ServiceAccount with a deterministic, UUID-shaped uid derived from namespace/name, so the same
    /// account has the same uid in every test run.
    pub fn new(namespace: &str, name: &str) -> Self {
        let d = Sha256::digest(format!("{namespace}/{name}").as_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        b[6] = (b[6] & 0x0f) | 0x40; // version 4
        b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let uid = format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        );
        Self::with_uid(namespace, name, &uid)
    }

    pub fn with_uid(namespace: &str, name: &str, uid: &str) -> Self {
        ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    /// observability/prometheus-server with the uid of the reference captures.
    pub fn prometheus_server() -> Self {
        Self::with_uid(
            "observability",
            "prometheus-server",
            "e2a1121a-9135-4ae6-a12c-ae79aa2a43a2",
        )
    }

    /// observability/nobody (authenticates, has no binding) with the uid of the reference captures.
    pub fn nobody() -> Self {
        Self::with_uid(
            "observability",
            "nobody",
            "79970fe2-8f03-482a-9d74-d346daaf7761",
        )
    }

    /// The proxy's own ServiceAccount (manifests/base/rbac.yaml).
    pub fn metrics_gate() -> Self {
        Self::new("metrics-gate", "metrics-gate")
    }

    /// `system:serviceaccount:<ns>:<name>`
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    /// The groups the apiserver reports for a ServiceAccount, in its order.
    pub fn groups(&self) -> Vec<String> {
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", self.namespace),
            "system:authenticated".into(),
        ]
    }
}

/// How to mint a token.
#[derive(Debug, Clone)]
pub struct TokenOptions {
    /// `aud` claim.
    pub audiences: Vec<String>,
    /// Seconds from now until `exp`; negative mints an already expired token.
    pub lifetime: i64,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions {
            audiences: apiserver_audiences(),
            lifetime: 3600,
        }
    }
}

impl TokenOptions {
    pub fn audiences(mut self, audiences: &[&str]) -> Self {
        self.audiences = audiences.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn lifetime_secs(mut self, secs: i64) -> Self {
        self.lifetime = secs;
        self
    }

    /// A token that expired an hour ago.
    pub fn expired() -> Self {
        Self::default().lifetime_secs(-3600)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    pub serviceaccount: SaRef,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaRef {
    pub name: String,
    pub uid: String,
}

/// The claims of a projected ServiceAccount token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub aud: Audience,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
    pub nbf: i64,
    pub sub: String,
}

/// `aud` may be a string or an array (RFC 7519).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Audience::One(a) => vec![a.clone()],
            Audience::Many(v) => v.clone(),
        }
    }
}

/// What a successful verification yields (what TokenReview puts in `status.user` / `audiences`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedUser {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    /// Token audiences ∩ target audiences, in the target's order.
    pub audiences: Vec<String>,
    pub expires_at: i64,
}

/// Why a token was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT at all, or undecodable claims.
    Malformed,
    /// Signed by another key.
    BadSignature,
    /// Not RS256 (e.g. `none`, HS256).
    WrongAlgorithm(String),
    Expired,
    NotYetValid,
    /// Not issued by this cluster: the ServiceAccount authenticator ignores it.
    WrongIssuer(String),
    /// Claims decode but are not a ServiceAccount token (`sub`/`kubernetes.io` inconsistent).
    NotAServiceAccount,
    AudienceMismatch {
        token_audiences: Vec<String>,
        target_audiences: Vec<String>,
    },
}

impl TokenError {
    /// The `status.error` text kube-apiserver 1.28 puts in a TokenReview for this failure.
    pub fn review_error(&self) -> String {
        match self {
            TokenError::Malformed
            | TokenError::BadSignature
            | TokenError::WrongAlgorithm(_)
            | TokenError::WrongIssuer(_)
            | TokenError::NotAServiceAccount => "invalid bearer token".into(),
            TokenError::Expired => {
                "[invalid bearer token, service account token has expired]".into()
            }
            TokenError::NotYetValid => {
                "[invalid bearer token, service account token is not valid yet]".into()
            }
            TokenError::AudienceMismatch {
                token_audiences,
                target_audiences,
            } => format!(
                "[invalid bearer token, token audiences {} is invalid for the target audiences {}]",
                go_quoted_list(token_audiences),
                go_quoted_list(target_audiences)
            ),
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.review_error())
    }
}

impl std::error::Error for TokenError {}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub fn go_quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// Signs and checks ServiceAccount tokens with one RSA-2048 key.
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_key_pem: String,
    /// The public key as a JSON Web Key (what `/openid/v1/jwks` lists).
    jwk: serde_json::Value,
    kid: String,
    issuer: String,
    api_audiences: Vec<String>,
}

impl TokenIssuer {
    /// An issuer using the process-wide key (RSA generation costs ~100 ms; one key is plenty).
    pub fn new() -> Self {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        Self::from_key(KEY.get_or_init(generate_key))
    }

    /// The process-wide issuer, shared.
    pub fn shared() -> Arc<Self> {
        static ISSUER: OnceLock<Arc<TokenIssuer>> = OnceLock::new();
        ISSUER.get_or_init(|| Arc::new(TokenIssuer::new())).clone()
    }

    /// An issuer with a fresh key: its tokens look right but fail signature checks elsewhere.
    pub fn with_fresh_key() -> Self {
        Self::from_key(&generate_key())
    }

    fn from_key(key: &RsaPrivateKey) -> Self {
        let pem = key.to_pkcs1_pem(LineEnding::LF).expect("encoding RSA key");
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA PEM accepted");
        let public = key.to_public_key();
        let decoding = DecodingKey::from_rsa_raw_components(
            &public.n().to_bytes_be(),
            &public.e().to_bytes_be(),
        );
        let public_key_pem = public
            .to_public_key_pem(LineEnding::LF)
            .expect("encoding public key");
        // Like kube-apiserver: kid = base64url(sha256(DER of the public key)).
        let der = public.to_public_key_der().expect("public key DER");
        let kid = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            Sha256::digest(der.as_bytes()),
        );
        let b64 = |bytes: Vec<u8>| {
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
        };
        // Field order and members as kube-apiserver's /openid/v1/jwks has them.
        let jwk = serde_json::json!({
            "use": "sig",
            "kty": "RSA",
            "kid": kid,
            "alg": "RS256",
            "n": b64(public.n().to_bytes_be()),
            "e": b64(public.e().to_bytes_be()),
        });
        TokenIssuer {
            encoding,
            decoding,
            public_key_pem,
            jwk,
            kid,
            issuer: APISERVER_ISSUER.into(),
            api_audiences: apiserver_audiences(),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn api_audiences(&self) -> &[String] {
        &self.api_audiences
    }

    /// The verification key as a JSON Web Key, with its `kid`.
    pub fn jwk(&self) -> &serde_json::Value {
        &self.jwk
    }

    /// The `kid` every token of this issuer names.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The verification key, PEM (SubjectPublicKeyInfo), e.g. for `--service-account-key-file`.
    pub fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    /// Mints a token for `sa`.
    pub fn mint(&self, sa: &ServiceAccount, opts: TokenOptions) -> String {
        let now = unix_now();
        let claims = Claims {
            aud: Audience::Many(opts.audiences),
            exp: now + opts.lifetime,
            iat: now.min(now + opts.lifetime),
            iss: self.issuer.clone(),
            kubernetes: KubernetesClaims {
                namespace: sa.namespace.clone(),
                serviceaccount: SaRef {
                    name: sa.name.clone(),
                    uid: sa.uid.clone(),
                },
            },
            nbf: now.min(now + opts.lifetime),
            sub: sa.username(),
        };
        self.mint_claims(&claims)
    }

    /// Mints a token with arbitrary claims (wrong issuer, odd `aud`, …) signed by this issuer.
    pub fn mint_claims<T: Serialize>(&self, claims: &T) -> String {
        // Kubernetes' tokens carry only `alg` and `kid` in their header (no `typ`).
        let mut header = Header::new(Algorithm::RS256);
        header.typ = None;
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("RS256 signing")
    }

    /// Verifies `token` for `target_audiences` (empty = the apiserver's own audiences).
    pub fn verify(
        &self,
        token: &str,
        target_audiences: &[String],
    ) -> Result<VerifiedUser, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(TokenError::WrongAlgorithm(format!("{:?}", header.alg)));
        }
        // Issuer first: the ServiceAccount authenticator skips tokens of other issuers.
        let unverified: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| TokenError::Malformed)?;
        let iss = unverified
            .get("iss")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if iss != self.issuer {
            return Err(TokenError::WrongIssuer(iss.to_string()));
        }
        let mut v = Validation::new(Algorithm::RS256);
        v.leeway = 0;
        v.validate_exp = false; // checked below, so expiry is distinguishable from bad signatures
        v.validate_nbf = false;
        v.validate_aud = false; // intersected below, like the apiserver
        v.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                    _ => TokenError::Malformed,
                }
            })?;
        let c = data.claims;
        let now = unix_now();
        if now >= c.exp {
            return Err(TokenError::Expired);
        }
        if now < c.nbf {
            return Err(TokenError::NotYetValid);
        }
        let expected_sub = format!(
            "system:serviceaccount:{}:{}",
            c.kubernetes.namespace, c.kubernetes.serviceaccount.name
        );
        if c.sub != expected_sub {
            return Err(TokenError::NotAServiceAccount);
        }
        let targets: Vec<String> = if target_audiences.is_empty() {
            self.api_audiences.clone()
        } else {
            target_audiences.to_vec()
        };
        let token_auds = c.aud.to_vec();
        let audiences: Vec<String> = targets
            .iter()
            .filter(|t| token_auds.contains(t))
            .cloned()
            .collect();
        if audiences.is_empty() {
            return Err(TokenError::AudienceMismatch {
                token_audiences: token_auds,
                target_audiences: targets,
            });
        }
        let sa = ServiceAccount::with_uid(
            &c.kubernetes.namespace,
            &c.kubernetes.serviceaccount.name,
            &c.kubernetes.serviceaccount.uid,
        );
        Ok(VerifiedUser {
            username: sa.username(),
            uid: sa.uid.clone(),
            groups: sa.groups(),
            audiences,
            expires_at: c.exp,
        })
    }
}

impl Default for TokenIssuer {
    fn default() -> Self {
        Self::new()
    }
}

fn generate_key() -> RsaPrivateKey {
    RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("generating RSA-2048")
}

/// Hex SHA-256 of a token: how recordings refer to tokens without holding them.
pub fn token_digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aud(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn mints_and_verifies_a_service_account_token() {
        let issuer = TokenIssuer::new();
        let sa = ServiceAccount::prometheus_server();
        let t = issuer.mint(&sa, TokenOptions::default());
        let u = issuer.verify(&t, &[]).unwrap();
        assert_eq!(
            u.username,
            "system:serviceaccount:observability:prometheus-server"
        );
        assert_eq!(u.uid, "e2a1121a-9135-4ae6-a12c-ae79aa2a43a2");
        assert_eq!(
            u.groups,
            aud(&[
                "system:serviceaccounts",
                "system:serviceaccounts:observability",
                "system:authenticated"
            ])
        );
        assert_eq!(u.audiences, aud(&[APISERVER_ISSUER]));
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        assert!(header.kid.is_some());
        let claims: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode_claims(&t).unwrap();
        assert_eq!(
            claims["kubernetes.io"]["serviceaccount"]["name"],
            "prometheus-server"
        );
        assert_eq!(claims["iss"], APISERVER_ISSUER);
        assert!(claims["exp"].as_i64().unwrap() > unix_now());
    }

    #[test]
    fn rejects_expired_garbage_foreign_and_wrong_alg() {
        let issuer = TokenIssuer::new();
        let sa = ServiceAccount::new("observability", "prometheus-server");
        let expired = issuer.mint(&sa, TokenOptions::expired());
        assert_eq!(issuer.verify(&expired, &[]), Err(TokenError::Expired));
        assert_eq!(issuer.verify("garbage", &[]), Err(TokenError::Malformed));
        assert_eq!(TokenError::Malformed.review_error(), "invalid bearer token");
        // Same claims, other key.
        let foreign = TokenIssuer::with_fresh_key().mint(&sa, TokenOptions::default());
        assert_eq!(issuer.verify(&foreign, &[]), Err(TokenError::BadSignature));
        // Tampered payload keeps the signature of another payload.
        let good = issuer.mint(&sa, TokenOptions::default());
        let other = issuer.mint(&ServiceAccount::nobody(), TokenOptions::default());
        let parts: Vec<&str> = good.split('.').collect();
        let oparts: Vec<&str> = other.split('.').collect();
        let spliced = format!("{}.{}.{}", parts[0], oparts[1], parts[2]);
        assert_eq!(issuer.verify(&spliced, &[]), Err(TokenError::BadSignature));
        // HS256 with a guessable secret is refused whatever its claims.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"iss": APISERVER_ISSUER, "sub": sa.username(), "exp": unix_now() + 60}),
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(matches!(
            issuer.verify(&hs, &[]),
            Err(TokenError::WrongAlgorithm(_))
        ));
        // Another issuer's RS256 token.
        let mut c: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode_claims(&good).unwrap();
        c["iss"] = "https://oidc.example".into();
        assert!(matches!(
            issuer.verify(&issuer.mint_claims(&c), &[]),
            Err(TokenError::WrongIssuer(_))
        ));
    }

    #[test]
    fn audiences_are_intersected() {
        let issuer = TokenIssuer::new();
        let sa = ServiceAccount::new("observability", "prometheus-server");
        let t = issuer.mint(&sa, TokenOptions::default());
        let err = issuer.verify(&t, &aud(&["prometheus"])).unwrap_err();
        // Same text as tokenreview-prometheus-server-wrong-audience.response.json.
        assert_eq!(
            err.review_error(),
            "[invalid bearer token, token audiences [\"https://kubernetes.default.svc.cluster.local\"] is invalid for the target audiences [\"prometheus\"]]"
        );
        let t2 = issuer.mint(
            &sa,
            TokenOptions::default().audiences(&["prometheus", "metrics-gate"]),
        );
        let u = issuer
            .verify(&t2, &aud(&["metrics-gate", "other"]))
            .unwrap();
        assert_eq!(u.audiences, aud(&["metrics-gate"]));
        // A token for a custom audience is not valid for the apiserver itself.
        assert!(matches!(
            issuer.verify(&t2, &[]),
            Err(TokenError::AudienceMismatch { .. })
        ));
    }

    #[test]
    fn uids_are_deterministic_and_uuid_shaped() {
        let a = ServiceAccount::new("ns", "a");
        assert_eq!(a, ServiceAccount::new("ns", "a"));
        assert_ne!(a.uid, ServiceAccount::new("ns", "b").uid);
        assert_eq!(a.uid.len(), 36);
        assert_eq!(&a.uid[14..15], "4");
        assert_eq!(go_quoted_list(&aud(&["a", "b"])), "[\"a\" \"b\"]");
    }
}
