//! ServiceAccount tokens verified by Envoy itself (opt-in): Envoy's `jwt_authn` filter, in front
//! of metrics-gate, checks a bearer token's RS256 signature against the keys the apiserver
//! publishes (`/openid/v1/jwks`, fetched through the proxy's credentialed callout path), its
//! issuer, audience, expiry and remaining lifetime, and leaves the payload in the request's
//! dynamic metadata; the filter builds the user from its `sub` as the apiserver would and skips
//! the TokenReview. A token it cannot verify (not a JWT, another issuer, no `exp`, too long-lived,
//! a key not in the set, the keys unreachable) passes on unverified and gets the TokenReview.
//! The .wasm carries no RSA code.

use envoy_types::pb::envoy::config::core::v3::{http_uri, HttpUri};
use envoy_types::pb::envoy::config::route::v3::{route_match, RouteMatch};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider, jwt_requirement, requirement_rule, JwtAuthentication, JwtProvider,
    JwtRequirement, JwtRequirementOrList, RemoteJwks, RequirementRule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::google::protobuf::Empty;
use envoy_types::util::pack_any;

use crate::model::{LocalTokenVerification, Stack};
use crate::render::{duration, http_filter};
use crate::CALLOUT_CLUSTER;

/// kube-apiserver's JWKS path (service-account issuer discovery).
pub const JWKS_PATH: &str = "/openid/v1/jwks";
/// The provider's name, and the key of its payload in `envoy.filters.http.jwt_authn`'s dynamic
/// metadata, where the filter reads `sub` (`local_token_verification` in its configuration).
pub const PROVIDER: &str = "kubernetes";

/// The `jwt_authn` filter for the gated listeners.
pub(crate) fn jwt_authn(stack: &Stack, v: &LocalTokenVerification) -> HttpFilter {
    let provider = JwtProvider {
        issuer: v.issuer.clone(),
        audiences: v.audiences.clone(),
        // A token without `exp`, or valid for longer than the bound from now, is not verified
        // here: the bound is how long a deleted pod's or ServiceAccount's token can go on working.
        require_expiration: true,
        max_lifetime: Some(duration(v.max_lifetime_seconds.saturating_mul(1000))),
        // Envoy's default (also what 0 means) tolerates 60 s past `exp`; one second is for clocks
        // that tick apart.
        clock_skew_seconds: 1,
        // The filter still sees the token: it must be the one bearer token, and it is removed
        // before forwarding (and reviewed by the apiserver if this filter did not verify it).
        forward: true,
        payload_in_metadata: PROVIDER.into(),
        jwks_source_specifier: Some(jwt_provider::JwksSourceSpecifier::RemoteJwks(RemoteJwks {
            http_uri: Some(HttpUri {
                uri: format!("https://{}{JWKS_PATH}", stack.apiserver.sni),
                http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(
                    CALLOUT_CLUSTER.into(),
                )),
                timeout: Some(duration(stack.apiserver.timeout_ms)),
            }),
            cache_duration: Some(duration(v.jwks_cache_seconds.saturating_mul(1000))),
            // Fetched by each worker when a request first needs the keys (and again once they
            // are older than `cache_duration`), not ahead of time (`async_fetch`): that fetch runs
            // on Envoy's main thread, which cannot reach the internal listener holding the
            // proxy's credentials. A failed fetch leaves the token to the TokenReview.
            ..Default::default()
        })),
        ..Default::default()
    };
    // Verified or not, the request goes on to metrics-gate: it decides.
    let verified_or_not = JwtRequirement {
        requires_type: Some(jwt_requirement::RequiresType::RequiresAny(
            JwtRequirementOrList {
                requirements: vec![
                    JwtRequirement {
                        requires_type: Some(jwt_requirement::RequiresType::ProviderName(
                            PROVIDER.into(),
                        )),
                    },
                    JwtRequirement {
                        requires_type: Some(jwt_requirement::RequiresType::AllowMissingOrFailed(
                            Empty {},
                        )),
                    },
                ],
            },
        )),
    };
    let config = JwtAuthentication {
        providers: [(PROVIDER.to_owned(), provider)].into_iter().collect(),
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(requirement_rule::RequirementType::Requires(verified_or_not)),
        }],
        ..Default::default()
    };
    http_filter("envoy.filters.http.jwt_authn", pack_any(config))
}
