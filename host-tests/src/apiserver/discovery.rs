//! Service-account issuer discovery, as kube-apiserver serves it: `GET
//! /.well-known/openid-configuration` and `GET /openid/v1/jwks`, for a caller that is authenticated
//! and allowed `get` on the path (kube-apiserver's `system:service-account-issuer-discovery` role
//! is such a grant). The JWKS lists every verification key, the signing one first, each with the
//! `kid` its tokens name.

use serde_json::json;

use super::{status_resp, Ctx, State};
use crate::http_server::{respond, Resp};
use crate::k8s_status::Status;
use crate::rbac::Attributes;

pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/openid/v1/jwks";

/// The answer to `ctx`, if it is a discovery request (`None`: not one of its paths).
pub(super) fn answer(st: &State, ctx: &Ctx, external_url: &str) -> Option<Resp> {
    if ctx.path != OPENID_CONFIGURATION_PATH && ctx.path != JWKS_PATH {
        return None;
    }
    let Some(caller) = &ctx.caller else {
        return Some(status_resp(ctx, Status::unauthorized()));
    };
    if ctx.method != "GET" {
        return Some(status_resp(ctx, Status::method_not_allowed(&ctx.method)));
    }
    let allowed = st
        .rbac
        .authorize(
            &caller.username,
            &caller.groups,
            &Attributes::non_resource("get", &ctx.path),
        )
        .allowed;
    if !allowed {
        return Some(status_resp(
            ctx,
            Status::forbidden_path(&caller.username, "get", &ctx.path),
        ));
    }
    let keys = st.keys();
    Some(if ctx.path == JWKS_PATH {
        let jwks = json!({"keys": keys.iter().map(|k| k.jwk().clone()).collect::<Vec<_>>()});
        respond(200, "application/jwk-set+json", jwks.to_string())
    } else {
        let issuer = keys
            .first()
            .map(|k| k.issuer().to_owned())
            .unwrap_or_default();
        let doc = json!({
            "issuer": issuer,
            "jwks_uri": format!("{external_url}{JWKS_PATH}"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        respond(200, "application/json", doc.to_string())
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::apiserver::{Fault, MockApiserver};
    use crate::client::{send, HttpResponse, Tls};
    use crate::tokens::{ServiceAccount, TokenOptions};

    async fn get(api: &MockApiserver, path: &str, caller: Option<&str>) -> HttpResponse {
        let auth = caller.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let tls = Tls {
            ca_pem: api.ca_pem(),
            server_name: "kubernetes.default.svc",
        };
        send(api.addr(), Some(tls), "GET", path, &headers, Vec::new())
            .await
            .unwrap()
    }

    fn kid_of(token: &str) -> String {
        jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
    }

    fn kids(jwks: &Value) -> Vec<String> {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The shipped RBAC grants the proxy's ServiceAccount the discovery paths.
    fn with_discovery_grant() -> crate::apiserver::MockApiserverOptions {
        crate::apiserver::MockApiserverOptions::default()
    }

    #[tokio::test]
    async fn discovery_is_served_to_an_allowed_caller_like_the_real_apiserver() {
        let api = MockApiserver::start_with(with_discovery_grant()).unwrap();
        let proxy = api
            .issuer()
            .mint(&ServiceAccount::metrics_gate(), TokenOptions::default());
        assert_eq!(get(&api, JWKS_PATH, None).await.status, 401);
        // prometheus-server may read /metrics, not the issuer's keys.
        let prometheus = api.issuer().mint(
            &ServiceAccount::prometheus_server(),
            TokenOptions::default(),
        );
        assert_eq!(get(&api, JWKS_PATH, Some(&prometheus)).await.status, 403);

        let doc = get(&api, OPENID_CONFIGURATION_PATH, Some(&proxy)).await;
        assert_eq!(doc.status, 200, "{}", doc.text());
        let doc = doc.json().unwrap();
        assert_eq!(doc["issuer"], api.issuer().issuer());
        assert_eq!(
            doc["jwks_uri"],
            "https://kubernetes.default.svc/openid/v1/jwks"
        );
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            serde_json::json!(["RS256"])
        );

        let jwks = get(&api, JWKS_PATH, Some(&proxy)).await;
        assert_eq!(
            (jwks.status, jwks.header("content-type")),
            (200, Some("application/jwk-set+json"))
        );
        let jwks = jwks.json().unwrap();
        assert_eq!(kids(&jwks), [kid_of(&proxy)]);
        let key = &jwks["keys"][0];
        assert_eq!(
            (&key["kty"], &key["alg"], &key["use"], &key["e"]),
            (
                &Value::from("RSA"),
                &Value::from("RS256"),
                &Value::from("sig"),
                &Value::from("AQAB")
            )
        );
        // The key verifies the token: RS256 with the JWK's own modulus and exponent.
        let decoding =
            jsonwebtoken::DecodingKey::from_rsa_components(key["n"].as_str().unwrap(), "AQAB")
                .unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(&proxy, &decoding, &validation).unwrap();
    }

    #[tokio::test]
    async fn a_rotated_key_is_listed_beside_the_old_until_the_old_is_retired() {
        let api = MockApiserver::start_with(crate::apiserver::MockApiserverOptions {
            issuer: Some(std::sync::Arc::new(
                crate::tokens::TokenIssuer::with_fresh_key(),
            )),
            ..with_discovery_grant()
        })
        .unwrap();
        let old = api
            .issuer()
            .mint(&ServiceAccount::metrics_gate(), TokenOptions::default());
        let new_issuer = api.rotate_signing_key();
        let new = new_issuer.mint(&ServiceAccount::metrics_gate(), TokenOptions::default());
        assert_ne!(kid_of(&old), kid_of(&new));
        let jwks = get(&api, JWKS_PATH, Some(&new)).await.json().unwrap();
        assert_eq!(kids(&jwks), [kid_of(&new), kid_of(&old)]);
        // Tokens of the old key still authenticate until it is retired.
        assert_eq!(get(&api, JWKS_PATH, Some(&old)).await.status, 200);
        api.retire_old_keys();
        assert_eq!(get(&api, JWKS_PATH, Some(&old)).await.status, 401);
        let jwks = get(&api, JWKS_PATH, Some(&new)).await.json().unwrap();
        assert_eq!(kids(&jwks), [kid_of(&new)]);

        api.set_fault(Fault::DiscoveryDown);
        assert_eq!(get(&api, JWKS_PATH, Some(&new)).await.status, 503);
    }
}
