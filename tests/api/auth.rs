//! Contract §2 over HTTP: bearer tokens, token checks, the JWKS cache and its
//! refresh rules, `CLERK_JWT_KEY`, headers never followed, and the rate limit.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use stand_ins::{test_key, ClerkStandIn, Fault, FaultRule};

use crate::helpers::*;

const MISSING: &str = "Token d'authentification manquant";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// `GET /api/images` with this raw `Authorization` value (or none).
async fn list_with_header(app: &TestApp, authorization: Option<&str>) -> reqwest::Response {
    let mut request = app.request(Method::GET, "/api/images");
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.expect("request sent")
}

/// Asserts the "missing token" 401 and its challenge header.
async fn assert_missing(response: reqwest::Response, case: &str) {
    assert_eq!(response.status(), 401, "{case}");
    assert_eq!(
        header(&response, "www-authenticate").as_deref(),
        Some("Bearer"),
        "{case}"
    );
    assert_eq!(
        json_body(response).await,
        json!({"success": false, "error": MISSING}),
        "{case}"
    );
}

/// Asserts the "keys unavailable" 503.
async fn assert_unavailable(response: reqwest::Response) {
    assert_error(response, 503, AUTH_UNAVAILABLE).await;
}

/// A token signed with `test_key(1)`, which the Clerk stand-in does not serve.
fn unknown_kid_token(app: &TestApp) -> String {
    test_key(1).sign(&app.claims("user_a"))
}

fn list_calls(app: &TestApp) -> usize {
    app.bdd_calls()
        .iter()
        .filter(|r| r.method == Method::GET && r.path == "/api/images")
        .count()
}

// ---------------------------------------------------------------- bearer header

#[tokio::test]
async fn a_request_without_a_bearer_token_is_refused_as_missing() {
    let app = spawn_app().await;

    for (case, header) in [
        ("no header", None),
        ("basic scheme", Some("Basic xyz")),
        ("bearer without token", Some("Bearer")),
        ("bearer with blank token", Some("Bearer   ")),
        ("token without scheme", Some("abc.def.ghi")),
    ] {
        let response = list_with_header(&app, header).await;
        assert_missing(response, case).await;
    }
    assert!(app.bdd_calls().is_empty(), "the BDD received a request");
}

#[tokio::test]
async fn the_bearer_scheme_is_accepted_in_any_case() {
    let app = spawn_app().await;
    let token = app.token("user_a");

    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let response = list_with_header(&app, Some(&format!("{scheme} {token}"))).await;
        assert_eq!(response.status(), 200, "scheme {scheme}");
    }
    let calls = app.bdd_calls();
    assert_eq!(calls.len(), 3);
    assert!(calls
        .iter()
        .all(|c| c.query_param("userId").as_deref() == Some("user_a")));
}

// ---------------------------------------------------------------- token checks

#[tokio::test]
async fn a_valid_token_authenticates_its_subject() {
    let app = spawn_app().await;

    let response = app.get("/api/images", &app.token("user_Abc-09")).await;

    assert_eq!(response.status(), 200);
    let calls = app.bdd_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].query_param("userId").as_deref(),
        Some("user_Abc-09")
    );
}

#[tokio::test]
async fn malformed_tokens_are_refused_as_invalid() {
    let app = spawn_app().await;
    let valid = app.token("user_a");
    let two_parts = valid.rsplit_once('.').expect("three parts").0.to_owned();

    for (case, token) in [
        ("garbage", "garbage".to_owned()),
        ("two parts", two_parts),
        ("four parts", format!("{valid}.x")),
        ("bad signature", format!("{valid}x")),
    ] {
        assert_invalid_token(app.get("/api/images", &token).await, case).await;
    }
    assert!(app.bdd_calls().is_empty(), "the BDD received a request");
}

#[tokio::test]
async fn a_token_expired_beyond_the_clock_skew_is_refused() {
    let app = spawn_app().await;
    let token = app.token_with("user_a", json!({"exp": now() - 10, "nbf": now() - 60}));

    assert_invalid_token(app.get("/api/images", &token).await, "expired").await;
}

#[tokio::test]
async fn a_token_expired_within_the_clock_skew_is_accepted() {
    let app = spawn_app().await;
    let token = app.token_with("user_a", json!({"exp": now() - 2, "nbf": now() - 60}));

    let response = app.get("/api/images", &token).await;

    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_token_not_yet_valid_beyond_the_clock_skew_is_refused() {
    let app = spawn_app().await;
    let token = app.token_with("user_a", json!({"nbf": now() + 60}));

    assert_invalid_token(app.get("/api/images", &token).await, "nbf in the future").await;
}

#[tokio::test]
async fn a_token_not_yet_valid_within_the_clock_skew_is_accepted() {
    let app = spawn_app().await;
    let token = app.token_with("user_a", json!({"nbf": now() + 2}));

    let response = app.get("/api/images", &token).await;

    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_token_without_exp_is_refused() {
    let app = spawn_app().await;
    let token = app.token_with("user_a", json!({"exp": null}));

    assert_invalid_token(app.get("/api/images", &token).await, "no exp").await;
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused() {
    let app = spawn_app().await;

    for (case, iss) in [
        ("foreign issuer", json!("https://evil.clerk.accounts.dev")),
        (
            "issuer with a trailing slash",
            json!(format!("{}/", app.clerk.issuer())),
        ),
        ("numeric issuer", json!(1)),
        ("no issuer", Value::Null),
    ] {
        let token = app.token_with("user_a", json!({ "iss": iss }));
        assert_invalid_token(app.get("/api/images", &token).await, case).await;
    }
}

#[tokio::test]
async fn the_issuer_is_compared_exactly_as_configured() {
    // Configured with a trailing slash, tokens must carry that very string.
    let app = spawn_app_with(TestOptions::default().tweak(|c| c.clerk.issuer.push('/'))).await;
    let with_slash = app.token_with(
        "user_a",
        json!({ "iss": format!("{}/", app.clerk.issuer()) }),
    );
    let without = app.token_with("user_a", json!({ "iss": app.clerk.issuer() }));

    assert_eq!(app.get("/api/images", &with_slash).await.status(), 200);
    assert_invalid_token(
        app.get("/api/images", &without).await,
        "iss without the slash",
    )
    .await;
}

#[tokio::test]
async fn a_token_signed_with_a_key_not_in_the_set_is_refused() {
    let app = spawn_app().await;

    // Same kid as the served key, other key material.
    let forged = test_key(1).sign_with_header(rs256_header("test-key-0"), &app.claims("user_a"));
    assert_invalid_token(
        app.get("/api/images", &forged).await,
        "forged with served kid",
    )
    .await;
    // A kid the set does not hold.
    let unknown = unknown_kid_token(&app);
    assert_invalid_token(app.get("/api/images", &unknown).await, "unknown kid").await;
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn a_token_with_alg_none_is_refused() {
    let app = spawn_app().await;
    let header = URL_SAFE_NO_PAD
        .encode(json!({"alg": "none", "typ": "JWT", "kid": "test-key-0"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(app.claims("user_a").to_string());

    for (case, header) in [
        ("alg none", header),
        (
            "alg None",
            URL_SAFE_NO_PAD.encode(json!({"alg": "None", "kid": "test-key-0"}).to_string()),
        ),
    ] {
        let token = format!("{header}.{payload}.");
        assert_invalid_token(app.get("/api/images", &token).await, case).await;
    }
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn a_token_hmac_signed_with_the_public_key_is_refused() {
    let app = spawn_app().await;
    let pem = test_key(0).public_pem();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("test-key-0".into());
    let token = jsonwebtoken::encode(
        &header,
        &app.claims("user_a"),
        &EncodingKey::from_secret(pem.as_bytes()),
    )
    .expect("HS256 signs");

    assert_invalid_token(
        app.get("/api/images", &token).await,
        "HS256 with public PEM",
    )
    .await;
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn a_token_signed_with_another_rsa_algorithm_is_refused() {
    let app = spawn_app().await;
    let mut header = rs256_header("test-key-0");
    header.alg = Algorithm::RS512;
    let token = test_key(0).sign_with_header(header, &app.claims("user_a"));

    assert_invalid_token(app.get("/api/images", &token).await, "RS512").await;
}

#[tokio::test]
async fn a_token_over_8_kib_is_refused_even_when_correctly_signed() {
    let app = spawn_app().await;
    let token = app.token_with("user_a", json!({"pad": "x".repeat(9000)}));
    assert!(token.len() > 8 * 1024);

    assert_invalid_token(app.get("/api/images", &token).await, "token over 8 KiB").await;
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn a_token_with_an_unusable_subject_is_refused() {
    let app = spawn_app().await;

    for (case, sub) in [
        ("slash", json!("user/a")),
        ("dot dot", json!("..")),
        ("129 characters", json!("a".repeat(129))),
        ("empty", json!("")),
        ("number", json!(42)),
        ("space", json!("user a")),
        ("no sub", Value::Null),
    ] {
        let token = app.token_with("user_a", json!({ "sub": sub }));
        assert_invalid_token(app.get("/api/images", &token).await, case).await;
    }
    assert!(app.bdd_calls().is_empty(), "the BDD received a request");
}

#[tokio::test]
async fn a_subject_of_128_characters_is_accepted() {
    let app = spawn_app().await;
    let sub = "a".repeat(128);

    let response = app.get("/api/images", &app.token(&sub)).await;

    assert_eq!(response.status(), 200);
    assert_eq!(app.bdd_calls()[0].query_param("userId"), Some(sub));
}

#[tokio::test]
async fn an_azp_outside_the_authorized_parties_is_refused() {
    let app =
        spawn_app_with(TestOptions::default().env("CLERK_AUTHORIZED_PARTIES", FRONTEND)).await;
    let token = app.token_with("user_a", json!({"azp": "https://evil.example"}));

    assert_invalid_token(app.get("/api/images", &token).await, "foreign azp").await;
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn an_azp_listed_or_absent_is_accepted() {
    let app =
        spawn_app_with(TestOptions::default().env("CLERK_AUTHORIZED_PARTIES", FRONTEND)).await;
    let listed = app.token_with("user_a", json!({ "azp": FRONTEND }));
    let absent = app.token_with("user_a", json!({"azp": null}));

    assert_eq!(
        app.get("/api/images", &listed).await.status(),
        200,
        "listed"
    );
    assert_eq!(
        app.get("/api/images", &absent).await.status(),
        200,
        "absent"
    );
}

#[tokio::test]
async fn any_azp_is_accepted_when_no_authorized_parties_are_set() {
    let app = spawn_app().await;
    let token = app.token_with("user_a", json!({"azp": "https://elsewhere.example"}));

    assert_eq!(app.get("/api/images", &token).await.status(), 200);
}

#[tokio::test]
async fn a_kid_longer_than_256_characters_is_refused() {
    let app = spawn_app().await;
    let token = test_key(0).sign_with_header(rs256_header(&"k".repeat(257)), &app.claims("user_a"));

    assert_invalid_token(app.get("/api/images", &token).await, "kid of 257").await;
}

#[tokio::test]
async fn a_kid_full_of_path_and_sql_characters_is_refused_and_not_used_in_the_jwks_url() {
    let app = spawn_app().await;
    let baseline = jwks_baseline(&app).await;
    let token = test_key(0).sign_with_header(
        rs256_header("../../etc/passwd' OR 1=1 --"),
        &app.claims("user_a"),
    );

    assert_invalid_token(app.get("/api/images", &token).await, "hostile kid").await;
    assert!(app.jwks_fetches() <= baseline + 1);
    let clerk_calls = app.clerk.requests();
    assert!(clerk_calls
        .iter()
        .all(|r| r.path == "/.well-known/jwks.json" && r.query.is_none()));
    assert!(app.bdd_calls().is_empty());
}

// ---------------------------------------------------------------- order and public routes

#[tokio::test]
async fn authentication_runs_before_query_validation() {
    let app = spawn_app().await;

    let anonymous = app
        .request(Method::GET, "/api/images?page=0&limit=1000&status=nope")
        .send()
        .await
        .expect("sent");
    assert_missing(anonymous, "no token, invalid query").await;
    let forged = app
        .authed(Method::GET, "/api/images?page=0", "garbage")
        .send()
        .await
        .expect("sent");
    assert_invalid_token(forged, "bad token, invalid query").await;
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn authentication_runs_before_body_and_param_validation() {
    let app = spawn_app().await;

    let invalid_body = app
        .request(Method::POST, "/api/images")
        .json(&json!({"prompt": "", "imageData": "%%%"}))
        .send()
        .await
        .expect("sent");
    assert_missing(invalid_body, "invalid body").await;
    let not_json = app
        .request(Method::POST, "/api/images")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_missing(not_json, "body not JSON").await;
    let bad_id = app
        .request(Method::GET, "/api/images/not%20an%20id!")
        .send()
        .await
        .expect("sent");
    assert_missing(bad_id, "invalid id").await;
    let bad_status = app
        .request(Method::PATCH, "/api/images/abc/status")
        .json(&json!({"status": "nope"}))
        .send()
        .await
        .expect("sent");
    assert_missing(bad_status, "invalid status").await;
    let delete = app
        .request(Method::DELETE, "/api/images/abc")
        .send()
        .await
        .expect("sent");
    assert_missing(delete, "delete").await;

    assert!(app.bdd_calls().is_empty(), "the BDD received a request");
    assert!(app.storage_calls().is_empty(), "Storage received a request");
}

#[tokio::test]
async fn the_health_routes_need_no_token() {
    let app = spawn_app().await;

    for path in ["/api/health", "/api/images/health"] {
        let response = app.request(Method::GET, path).send().await.expect("sent");
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(json_body(response).await["success"], true, "{path}");
    }
}

// ---------------------------------------------------------------- key set cache

#[tokio::test]
async fn a_rotated_key_is_picked_up_through_one_refetch() {
    let app = spawn_app().await;
    let baseline = jwks_baseline(&app).await;
    app.clerk.set_keys(vec![test_key(1)]);

    let response = app.get("/api/images", &app.token("user_a")).await;

    assert_eq!(response.status(), 200);
    assert_eq!(app.jwks_fetches(), baseline + 1);
    assert_eq!(
        app.bdd_calls()[0].query_param("userId").as_deref(),
        Some("user_a")
    );
}

#[tokio::test]
async fn a_refetch_carries_the_request_id_of_the_request_that_made_it() {
    let app = spawn_app().await;
    jwks_baseline(&app).await;
    app.clerk.set_keys(vec![test_key(1)]);

    let response = app
        .authed(Method::GET, "/api/images", &app.token("user_a"))
        .header("x-request-id", "rid-jwks-1")
        .send()
        .await
        .expect("sent");

    assert_eq!(response.status(), 200);
    let fetches: Vec<_> = app
        .clerk
        .requests()
        .into_iter()
        .filter(|r| r.path == "/.well-known/jwks.json")
        .collect();
    assert_eq!(
        fetches.last().unwrap().header("x-request-id"),
        Some("rid-jwks-1")
    );
    assert!(
        fetches.iter().all(|r| r.header("x-request-id").is_some()),
        "the start-up fetch has an id of its own"
    );
}

#[tokio::test]
async fn concurrent_unknown_kids_share_one_refetch_and_the_cooldown_holds() {
    let app = spawn_app().await;
    let baseline = jwks_baseline(&app).await;
    let token = unknown_kid_token(&app);

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let request = app.authed(Method::GET, "/api/images", &token);
        tasks.spawn(async move { request.send().await.expect("sent").status() });
    }
    let statuses = tasks.join_all().await;

    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert!(
        app.jwks_fetches() <= baseline + 1,
        "{} fetches after a baseline of {baseline}",
        app.jwks_fetches()
    );
    let after_burst = app.jwks_fetches();
    assert_invalid_token(app.get("/api/images", &token).await, "within cooldown").await;
    assert_eq!(
        app.jwks_fetches(),
        after_burst,
        "refetched within the cooldown"
    );
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn an_unknown_kid_refetches_again_once_the_cooldown_has_passed() {
    let app = spawn_app_with(
        TestOptions::default().tweak(|c| c.clerk.unknown_kid_cooldown = Duration::from_millis(200)),
    )
    .await;
    let baseline = jwks_baseline(&app).await;
    let token = unknown_kid_token(&app);

    assert_invalid_token(app.get("/api/images", &token).await, "first").await;
    assert_eq!(app.jwks_fetches(), baseline + 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_invalid_token(app.get("/api/images", &token).await, "after cooldown").await;

    assert_eq!(app.jwks_fetches(), baseline + 2);
}

async fn cached_keys_survive_a_failing_refetch(fault: Fault) {
    let app = spawn_app().await;
    let baseline = jwks_baseline(&app).await;
    app.clerk.inject(FaultRule::new(fault.clone()));

    // An unknown kid forces a refetch, which fails.
    assert_invalid_token(
        app.get("/api/images", &unknown_kid_token(&app)).await,
        "unknown kid",
    )
    .await;
    assert_eq!(
        app.jwks_fetches(),
        baseline + 1,
        "{fault:?}: no refetch attempted"
    );
    let response = app.get("/api/images", &app.token("user_a")).await;

    assert_eq!(response.status(), 200, "{fault:?}");
}

#[tokio::test]
async fn cached_keys_still_verify_tokens_when_the_jwks_answers_500() {
    cached_keys_survive_a_failing_refetch(Fault::Status(500)).await;
}

#[tokio::test]
async fn cached_keys_still_verify_tokens_when_the_jwks_drops_the_connection() {
    cached_keys_survive_a_failing_refetch(Fault::Drop).await;
}

#[tokio::test]
async fn failed_background_refreshes_keep_the_keys() {
    let app = spawn_app_with(
        TestOptions::default().tweak(|c| c.clerk.refresh_interval = Duration::from_millis(100)),
    )
    .await;
    let baseline = jwks_baseline(&app).await;
    app.clerk.inject(FaultRule::new(Fault::Status(500)));

    wait_until("three failed refreshes", || {
        app.jwks_fetches() >= baseline + 3
    })
    .await;
    let response = app.get("/api/images", &app.token("user_a")).await;

    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn background_refreshes_pick_up_a_new_key_set() {
    let app = spawn_app_with(
        TestOptions::default().tweak(|c| c.clerk.refresh_interval = Duration::from_millis(100)),
    )
    .await;
    let baseline = jwks_baseline(&app).await;
    app.clerk.set_keys(vec![test_key(1)]);
    wait_until("a refresh", || app.jwks_fetches() >= baseline + 2).await;

    // The old key is gone from the set: its tokens no longer verify.
    let old = test_key(0).sign(&app.claims("user_a"));
    assert_invalid_token(app.get("/api/images", &old).await, "retired key").await;
    assert_eq!(
        app.get("/api/images", &app.token("user_a")).await.status(),
        200
    );
}

#[tokio::test]
async fn an_unreachable_jwks_with_nothing_cached_answers_503() {
    let app = spawn_app_with(TestOptions::default().env(
        "CLERK_JWKS_URL",
        format!("{}/.well-known/jwks.json", closed_port_url()),
    ))
    .await;

    assert_unavailable(app.get("/api/images", &app.token("user_a")).await).await;
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn a_jwks_answering_500_from_the_start_answers_503() {
    // A separate issuer failing before the service's first fetch (the harness's
    // own stand-in starts serving before a fault could be injected).
    let failing = ClerkStandIn::start(vec![test_key(0)], 0)
        .await
        .expect("stand-in");
    failing.inject(FaultRule::new(Fault::Status(500)));
    let app =
        spawn_app_with(TestOptions::default().env("CLERK_JWKS_URL", failing.jwks_url())).await;

    assert_unavailable(app.get("/api/images", &app.token("user_a")).await).await;
    assert!(!failing.requests().is_empty(), "the JWKS was never asked");
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn a_jwks_answering_404_from_the_start_answers_503() {
    let failing = ClerkStandIn::start(vec![test_key(0)], 0)
        .await
        .expect("stand-in");
    let app = spawn_app_with(
        TestOptions::default().env("CLERK_JWKS_URL", format!("{}/no/such/jwks", failing.url())),
    )
    .await;

    assert_unavailable(app.get("/api/images", &app.token("user_a")).await).await;
    assert!(!failing.requests().is_empty(), "the JWKS was never asked");
}

#[tokio::test]
async fn a_jwks_that_is_not_a_key_set_from_the_start_answers_503() {
    let failing = ClerkStandIn::start(vec![test_key(0)], 0)
        .await
        .expect("stand-in");
    failing.set_jwks_body(Some(json!("not a set")));
    let app =
        spawn_app_with(TestOptions::default().env("CLERK_JWKS_URL", failing.jwks_url())).await;

    assert_unavailable(app.get("/api/images", &app.token("user_a")).await).await;
    assert!(!failing.requests().is_empty(), "the JWKS was never asked");
}

#[tokio::test]
async fn the_service_recovers_once_the_jwks_becomes_reachable() {
    let failing = ClerkStandIn::start(vec![test_key(0)], 0)
        .await
        .expect("stand-in");
    failing.inject(FaultRule::new(Fault::Status(500)));
    let app =
        spawn_app_with(TestOptions::default().env("CLERK_JWKS_URL", failing.jwks_url())).await;
    assert_unavailable(app.get("/api/images", &app.token("user_a")).await).await;

    failing.clear_faults();
    let response = app.get("/api/images", &app.token("user_a")).await;

    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_static_clerk_jwt_key_verifies_tokens_without_any_jwks_fetch() {
    let app = spawn_app_with(
        TestOptions::default()
            .env("CLERK_JWT_KEY", test_key(0).public_pem())
            .env(
                "CLERK_JWKS_URL",
                format!("{}/.well-known/jwks.json", closed_port_url()),
            ),
    )
    .await;

    let response = app.get("/api/images", &app.token("user_a")).await;
    let other_key = unknown_kid_token(&app);
    let refused = app.get("/api/images", &other_key).await;

    assert_eq!(response.status(), 200);
    assert_invalid_token(refused, "token of another key").await;
    assert_eq!(app.jwks_fetches(), 0);
    assert!(app.clerk.requests().is_empty());
}

// ---------------------------------------------------------------- headers never followed

#[tokio::test]
async fn jku_x5u_and_embedded_jwk_headers_are_never_followed() {
    let app = spawn_app().await;
    let attacker = ClerkStandIn::start(vec![test_key(2)], 0)
        .await
        .expect("stand-in");
    let claims = app.claims("user_a");

    let mut jku = rs256_header("test-key-2");
    jku.jku = Some(attacker.jwks_url());
    let mut x5u = rs256_header("test-key-2");
    x5u.x5u = Some(attacker.jwks_url());
    let mut jwk = rs256_header("test-key-2");
    jwk.jwk = Some(serde_json::from_value(test_key(2).jwk()).expect("a JWK"));

    for (case, header) in [("jku", jku), ("x5u", x5u), ("jwk", jwk)] {
        let token = test_key(2).sign_with_header(header, &claims);
        assert_invalid_token(app.get("/api/images", &token).await, case).await;
    }
    assert!(
        attacker.requests().is_empty(),
        "the attacker's URL was fetched"
    );
    assert!(app.bdd_calls().is_empty());
}

// ---------------------------------------------------------------- hostile key sets

#[tokio::test]
async fn only_the_rsa_signing_keys_of_the_set_are_used_and_the_first_duplicate_wins() {
    let app = spawn_app().await;
    jwks_baseline(&app).await;
    let mut enc = test_key(2).jwk();
    enc["kid"] = json!("enc-key");
    enc["use"] = json!("enc");
    let mut no_kid = test_key(2).jwk();
    no_kid.as_object_mut().expect("object").remove("kid");
    let mut duplicate = test_key(2).jwk();
    duplicate["kid"] = json!("test-key-1");
    app.clerk.set_jwks_body(Some(json!({"keys": [
        {"kty": "EC", "kid": "ec-key", "use": "sig", "alg": "ES256", "crv": "P-256",
         "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
         "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        enc,
        no_kid,
        test_key(1).jwk(),
        duplicate,
    ]})));
    let claims = app.claims("user_a");

    // Unknown kid: the set is refetched and the real key found.
    let real = test_key(1).sign(&claims);
    assert_eq!(
        app.get("/api/images", &real).await.status(),
        200,
        "real key"
    );

    let by_duplicate = test_key(2).sign_with_header(rs256_header("test-key-1"), &claims);
    assert_invalid_token(
        app.get("/api/images", &by_duplicate).await,
        "second of duplicate kid",
    )
    .await;
    let by_enc = test_key(2).sign_with_header(rs256_header("enc-key"), &claims);
    assert_invalid_token(app.get("/api/images", &by_enc).await, "enc key").await;
    let mut kidless = Header::new(Algorithm::RS256);
    kidless.typ = Some("JWT".into());
    let by_kidless = test_key(2).sign_with_header(kidless, &claims);
    assert_invalid_token(app.get("/api/images", &by_kidless).await, "key without kid").await;
    let by_ec_kid = test_key(2).sign_with_header(rs256_header("ec-key"), &claims);
    assert_invalid_token(app.get("/api/images", &by_ec_kid).await, "EC kid").await;

    assert_eq!(app.bdd_calls().len(), 1);
}

// ---------------------------------------------------------------- rate limit

#[tokio::test]
async fn a_user_over_the_rate_limit_gets_429_while_others_are_served() {
    let app = spawn_app_with(TestOptions::default().env("RATE_LIMIT_PER_MINUTE", "2")).await;
    let user_a = app.token("user_a");

    assert_eq!(app.get("/api/images", &user_a).await.status(), 200, "first");
    assert_eq!(
        app.get("/api/images", &user_a).await.status(),
        200,
        "second"
    );
    let limited = app.get("/api/images", &user_a).await;
    let other = app.get("/api/images", &app.token("user_b")).await;

    assert_eq!(limited.status(), 429);
    let retry_after = header(&limited, "retry-after").expect("a Retry-After header");
    let seconds: u64 = retry_after.parse().expect("Retry-After in whole seconds");
    assert!(seconds >= 1, "Retry-After {seconds}");
    let body = json_body(limited).await;
    assert_eq!(body["success"], false);
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{body}");
    assert_eq!(other.status(), 200);
    assert_eq!(list_calls(&app), 3, "the limited request reached the BDD");
}

#[tokio::test]
async fn a_token_verified_before_its_key_was_removed_is_refused_after_the_refresh() {
    // Arrange: a token accepted (and remembered) while its key is served.
    let app = spawn_app_with(
        TestOptions::default().tweak(|c| c.clerk.refresh_interval = Duration::from_millis(100)),
    )
    .await;
    let token = app.token("user_revoked");
    assert_eq!(app.get("/api/images", &token).await.status(), 200);
    assert_eq!(app.get("/api/images", &token).await.status(), 200);

    // Act: the key set drops that key; wait for two background refreshes.
    app.clerk.set_keys(vec![test_key(1)]);
    let seen = app.jwks_fetches();
    wait_until("two background refreshes", || {
        app.jwks_fetches() >= seen + 2
    })
    .await;
    let response = app.get("/api/images", &token).await;

    // Assert
    assert_eq!(response.status(), 401);
}
