//! ServiceAccount tokens verified in Envoy (opt-in, `--verify-tokens-locally`): Envoy's
//! `jwt_authn` checks the token against the keys the mock apiserver publishes at /openid/v1/jwks
//! (RS256, `kid`, fetched through the proxy's credentialed callout path, RBAC-checked like the real
//! one) and the filter builds the user as the apiserver would; only the SubjectAccessReview goes to
//! the apiserver. Every token that cannot be verified so — another issuer or audience, expired,
//! forged, a legacy token, no `exp`, valid for longer than the bound, not a JWT, a key not yet
//! fetched, the keys unreachable — gets a TokenReview, and the apiserver's answer stands.

use std::time::{Duration, Instant};

use metrics_gate_envoy::{LocalTokenVerification, Preset};
use metrics_gate_host_tests::apiserver::{CallKind, Fault};
use metrics_gate_host_tests::stack::{LocalStack, StackOptions};
use metrics_gate_host_tests::tokens::{Audience, Claims, KubernetesClaims, SaRef, ServiceAccount, TokenIssuer, TokenOptions, APISERVER_ISSUER};

fn verification(jwks_cache_seconds: u32) -> LocalTokenVerification {
    LocalTokenVerification { jwks_cache_seconds, ..LocalTokenVerification::for_issuer(APISERVER_ISSUER) }
}

fn stack_with(v: LocalTokenVerification, fault: Option<Fault>) -> LocalStack {
    LocalStack::start_with(StackOptions {
        presets: vec![Preset::KubeProxy],
        local_token_verification: Some(v),
        apiserver_fault: fault,
        ..Default::default()
    })
    .unwrap()
}

fn fetches(stack: &LocalStack) -> usize {
    stack.apiserver.count(CallKind::Discovery)
}

/// Scrapes with fresh tokens of prometheus-server until one is verified locally (no TokenReview):
/// the keys are fetched by each worker when a request needs them, or again once they are older
/// than `jwks_cache_seconds`.
/// `mint(n)` must give a token of its own for every `n` (a token seen before would be answered
/// from the cache).
fn until_verified_locally(stack: &LocalStack, mint: impl Fn(i64) -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 0.. {
        let before = token_reviews(stack);
        assert_eq!(status(stack, &mint(n)), 200);
        if token_reviews(stack) == before {
            return;
        }
        assert!(Instant::now() < deadline, "never verified locally; apiserver calls: {:?}", stack.apiserver.calls());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A token of prometheus-server signed by `issuer`, distinct for every `n` (tokens minted within
/// the same second with the same lifetime are the same bytes).
fn distinct(issuer: &TokenIssuer, n: i64) -> String {
    issuer.mint(&ServiceAccount::prometheus_server(), TokenOptions::default().lifetime_secs(1800 - n))
}

fn token_reviews(stack: &LocalStack) -> usize {
    stack.apiserver.count(CallKind::TokenReview)
}

fn status(stack: &LocalStack, token: &str) -> u16 {
    stack.scrape(Preset::KubeProxy, "/metrics", token).status
}

/// Claims of a projected token of prometheus-server, valid for `lifetime` seconds.
fn claims(lifetime: i64) -> Claims {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let sa = ServiceAccount::prometheus_server();
    Claims {
        aud: Audience::Many(vec![APISERVER_ISSUER.into()]),
        exp: now + lifetime,
        iat: now,
        iss: APISERVER_ISSUER.into(),
        kubernetes: KubernetesClaims { namespace: sa.namespace.clone(), serviceaccount: SaRef { name: sa.name.clone(), uid: sa.uid.clone() } },
        nbf: now,
        sub: sa.username(),
    }
}

#[test]
fn service_account_tokens_are_verified_without_a_token_review() {
    let stack = stack_with(verification(300), None);
    // The first request fetches the keys (and waits for them): verified locally already.
    assert_eq!(status(&stack, &stack.prometheus_token()), 200);
    assert_eq!(token_reviews(&stack), 0);
    assert!(fetches(&stack) >= 1);
    // Every fetch went through the proxy's credentialed path: the mock checked the proxy's token
    // and its RBAC (the shipped metrics-gate-issuer-discovery grant).
    let fetches: Vec<_> = stack.apiserver.calls().into_iter().filter(|c| c.kind == CallKind::Discovery).collect();
    assert!(fetches.iter().all(|c| c.status == 200 && c.method == "GET" && c.path == "/openid/v1/jwks"), "{fetches:?}");
    assert!(fetches.iter().all(|c| c.caller.as_deref() == Some("system:serviceaccount:metrics-gate:metrics-gate")), "{fetches:?}");

    // Ten distinct tokens of prometheus-server: no TokenReview, one SubjectAccessReview (the user's
    // answer is cached whatever the token).
    let tokens: Vec<String> = (0..10).map(|n| distinct(&stack.apiserver.issuer(), n)).collect();
    assert_eq!(tokens.iter().collect::<std::collections::HashSet<_>>().len(), 10);
    for token in &tokens {
        assert_eq!(status(&stack, token), 200);
    }
    assert_eq!(token_reviews(&stack), 0);
    assert_eq!(stack.apiserver.count(CallKind::SubjectAccessReview), 1);
    // The user is exactly the apiserver's: name and groups, as the SubjectAccessReview shows.
    let sar = stack.apiserver.calls().into_iter().find(|c| c.kind == CallKind::SubjectAccessReview).unwrap();
    assert_eq!(sar.spec["user"], "system:serviceaccount:observability:prometheus-server");
    assert_eq!(sar.spec["groups"], serde_json::json!(["system:serviceaccounts", "system:serviceaccounts:observability", "system:authenticated"]));

    // Verified is not authorized: a ServiceAccount without a binding is still 403.
    assert_eq!(status(&stack, &stack.nobody_token()), 403);
    assert_eq!(token_reviews(&stack), 0);
    // And the token never reaches the component.
    assert!(stack.component(Preset::KubeProxy).requests().iter().all(|r| r.header("authorization").is_none()));
}

#[test]
fn tokens_that_cannot_be_verified_locally_get_a_token_review() {
    let stack = stack_with(verification(300), None);
    until_verified_locally(&stack, |n| distinct(&stack.apiserver.issuer(), n));
    let issuer = stack.apiserver.issuer();
    let forger = TokenIssuer::with_fresh_key();
    let other_issuer = Claims { iss: "https://issuer.example.com".into(), ..claims(1800) };
    let other_audience = Claims { aud: Audience::Many(vec!["vault".into()]), ..claims(1800) };
    let legacy = serde_json::json!({
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": "observability",
        "kubernetes.io/serviceaccount/secret.name": "prometheus-server-token-x7k2p",
        "kubernetes.io/serviceaccount/service-account.name": "prometheus-server",
        "kubernetes.io/serviceaccount/service-account.uid": ServiceAccount::prometheus_server().uid,
        "sub": "system:serviceaccount:observability:prometheus-server",
    });
    let mut no_exp = serde_json::to_value(claims(1800)).unwrap();
    no_exp.as_object_mut().unwrap().remove("exp");
    // (token, what the apiserver answers it)
    let cases: Vec<(&str, String, u16)> = vec![
        ("another issuer", issuer.mint_claims(&other_issuer), 401),
        ("another audience", issuer.mint_claims(&other_audience), 401),
        ("expired", issuer.mint(&ServiceAccount::prometheus_server(), TokenOptions::expired()), 401),
        ("forged (a key not in the set)", forger.mint(&ServiceAccount::prometheus_server(), TokenOptions::default()), 401),
        ("legacy Secret token", issuer.mint_claims(&legacy), 401),
        ("no exp", issuer.mint_claims(&no_exp), 401),
        ("not a JWT", "abcdef0123456789".into(), 401),
        // Valid, but longer than the bound (an hour) from now: the apiserver says whether it still is.
        ("valid for two hours", issuer.mint(&ServiceAccount::prometheus_server(), TokenOptions::default().lifetime_secs(7200)), 200),
    ];
    for (what, token, expected) in cases {
        let before = token_reviews(&stack);
        assert_eq!(status(&stack, &token), expected, "{what}");
        assert_eq!(token_reviews(&stack), before + 1, "{what}: not sent to the TokenReview");
    }
    // A locally verifiable token still is, after all that.
    let before = token_reviews(&stack);
    assert_eq!(status(&stack, &stack.prometheus_token()), 200);
    assert_eq!(token_reviews(&stack), before);
}

#[test]
fn keys_out_of_reach_mean_token_reviews_until_they_are_fetched() {
    let stack = stack_with(verification(300), Some(Fault::DiscoveryDown));
    for i in 1..=3 {
        let token = distinct(&stack.apiserver.issuer(), 1000 + i as i64);
        assert_eq!(status(&stack, &token), 200);
        assert_eq!(token_reviews(&stack), i, "the keys are unreachable: reviewed");
    }
    assert!(fetches(&stack) >= 1);
    assert!(stack.apiserver.calls().iter().filter(|c| c.kind == CallKind::Discovery).all(|c| c.status == 503));
    // The keys come back: fetched again, then tokens are verified locally.
    stack.apiserver.set_fault(Fault::None);
    until_verified_locally(&stack, |n| distinct(&stack.apiserver.issuer(), n));
}

#[test]
fn a_rotated_signing_key_is_verified_locally_once_fetched() {
    let stack = stack_with(verification(3), None);
    let old_key = stack.apiserver.issuer();
    let old_token = |n| distinct(&old_key, n);
    until_verified_locally(&stack, old_token);

    // The apiserver signs with a new key. Its tokens are not in the keys Envoy holds: reviewed
    // (and valid) until Envoy fetches the keys again (after 3 s here); then verified locally.
    let rotated = stack.apiserver.rotate_signing_key();
    let new_token = |n| distinct(&rotated, n);
    let (before, fetched) = (token_reviews(&stack), fetches(&stack));
    assert_eq!(status(&stack, &new_token(500)), 200);
    if fetches(&stack) == fetched {
        assert_eq!(token_reviews(&stack), before + 1, "a key Envoy has not fetched yet: reviewed");
    }
    until_verified_locally(&stack, new_token);
    // The old key's tokens too, while the apiserver still lists it.
    until_verified_locally(&stack, |n| old_token(n + 100));

    // The old key retired, after the kubelet gave the proxy a token of the new one: once Envoy has
    // the new set, the old key's tokens are reviewed, and refused.
    let proxy = rotated.mint(&ServiceAccount::metrics_gate(), TokenOptions::default());
    stack.rotate_proxy_token(&proxy).unwrap();
    stack.apiserver.retire_old_keys();
    let fetched = fetches(&stack);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = token_reviews(&stack);
        let answer = status(&stack, &old_token(fetches(&stack) as i64 + 300));
        if fetches(&stack) > fetched && token_reviews(&stack) == before + 1 {
            assert_eq!(answer, 401);
            break;
        }
        assert!(Instant::now() < deadline, "the retired key's tokens were still verified locally");
        std::thread::sleep(Duration::from_millis(200));
    }
}
