//! JWT and JWKS abuse, beyond the single cases of `auth.rs`:
//! huge and oversized key sets, hostile key-set bodies, floods of random
//! `kid`s, `kid`s full of path / SQL / unicode / control characters, and
//! floods of `jku` / `x5u` / `jwk` headers pointing at a server that must
//! never be contacted.

use std::time::{Duration, Instant};

use rand::distributions::Alphanumeric;
use rand::Rng;
use reqwest::Method;
use serde_json::{json, Value};
use stand_ins::{test_key, ClerkStandIn, SigningKey};
use tokio::task::JoinSet;

use crate::helpers::*;

/// The key store's body limit (`MAX_JWKS_BYTES` in src/auth/jwks.rs).
const JWKS_LIMIT: usize = 256 * 1024;

fn random_kid() -> String {
    let len = rand::thread_rng().gen_range(1..=64);
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Sends every token to `GET /api/images` at once; returns the statuses.
async fn flood(app: &TestApp, tokens: Vec<String>) -> Vec<u16> {
    let mut tasks = JoinSet::new();
    for token in tokens {
        let request = app.authed(Method::GET, "/api/images", &token);
        tasks.spawn(async move { request.send().await.expect("sent").status().as_u16() });
    }
    tasks.join_all().await
}

/// `n` junk RSA keys: a 17-bit "modulus" (65537), so thousands fit under the limit.
fn junk_keys(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": format!("junk-{i}"), "n": "AQAB", "e": "AQAB"}))
        .collect()
}

/// A full-size JWK of `key` under another `kid`.
fn jwk_as(key: &SigningKey, kid: &str) -> Value {
    let mut jwk = key.jwk();
    jwk["kid"] = json!(kid);
    jwk
}

// ---------------------------------------------------------------- huge key sets

#[tokio::test]
async fn a_key_set_of_thousands_of_keys_is_capped_and_keeps_working() {
    let app = spawn_app().await;
    let baseline = jwks_baseline(&app).await;
    let mut keys = vec![test_key(0).jwk()];
    keys.extend(junk_keys(3000));
    keys.push(test_key(1).jwk());
    let body = json!({ "keys": keys });
    assert!(
        body.to_string().len() < JWKS_LIMIT,
        "the set must fit the size limit"
    );
    app.clerk.set_jwks_body(Some(body));
    let claims = app.claims("user_a");

    // test-key-1 is in the set, but after 3000 others: over the cap, not kept.
    let started = Instant::now();
    let beyond_cap = test_key(1).sign(&claims);
    assert_invalid_token(
        app.get("/api/images", &beyond_cap).await,
        "key beyond the cap",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refetch and parse took {:?}",
        started.elapsed()
    );
    assert_eq!(app.jwks_fetches(), baseline + 1);

    // The first key of the new set verifies; a junk key never does (and never panics).
    assert_eq!(
        app.get("/api/images", &app.token("user_a")).await.status(),
        200
    );
    for kid in ["junk-0", "junk-63", "junk-2999"] {
        let token = test_key(1).sign_with_header(rs256_header(kid), &claims);
        assert_invalid_token(app.get("/api/images", &token).await, kid).await;
    }
    assert_eq!(
        app.jwks_fetches(),
        baseline + 1,
        "refetched within the cooldown"
    );
    assert_eq!(
        app.request(Method::GET, "/api/health")
            .send()
            .await
            .expect("sent")
            .status(),
        200
    );
    assert_eq!(
        app.bdd_calls().len(),
        1,
        "only the valid request reached the BDD"
    );
}

#[tokio::test]
async fn a_key_set_over_the_size_limit_is_refused_and_the_previous_keys_are_kept() {
    let app = spawn_app().await;
    let baseline = jwks_baseline(&app).await;
    // test-key-1 first, then thousands of full-size keys: about 1.5 MB.
    let mut keys = vec![test_key(1).jwk()];
    keys.extend((0..3500).map(|i| jwk_as(&test_key(2), &format!("big-{i}"))));
    let body = json!({ "keys": keys });
    assert!(body.to_string().len() > 4 * JWKS_LIMIT);
    app.clerk.set_jwks_body(Some(body));

    let rotated = test_key(1).sign(&app.claims("user_a"));
    let started = Instant::now();
    assert_invalid_token(
        app.get("/api/images", &rotated).await,
        "key only in the oversized set",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.jwks_fetches(), baseline + 1);

    // The set held before is still in use.
    assert_eq!(
        app.get("/api/images", &app.token("user_a")).await.status(),
        200
    );
    assert_eq!(
        app.request(Method::GET, "/api/health")
            .send()
            .await
            .expect("sent")
            .status(),
        200
    );
}

/// For each body: serve it, force a refetch with an unknown kid, then check
/// that the keys held before still verify tokens.
async fn refetch_keeps_the_keys_held(bodies: Vec<(&str, Value)>) {
    let app = spawn_app_with(
        TestOptions::default().tweak(|c| c.clerk.unknown_kid_cooldown = Duration::from_millis(50)),
    )
    .await;
    let mut baseline = jwks_baseline(&app).await;
    for (case, body) in bodies {
        app.clerk.set_jwks_body(Some(body));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let rotated = test_key(1).sign(&app.claims("user_a"));
        assert_invalid_token(app.get("/api/images", &rotated).await, case).await;
        assert_eq!(app.jwks_fetches(), baseline + 1, "{case}: one refetch");
        baseline += 1;
        assert_eq!(
            app.get("/api/images", &app.token("user_a")).await.status(),
            200,
            "{case}: the keys held before must still verify"
        );
    }
}

#[tokio::test]
async fn unreadable_key_set_bodies_never_replace_the_keys_held() {
    let mut nested = json!([]);
    for _ in 0..1000 {
        nested = json!([nested]);
    }
    refetch_keeps_the_keys_held(vec![
        ("deeply nested JSON", json!({ "keys": nested })),
        ("keys is an object", json!({"keys": {"kid": "test-key-1"}})),
        ("not an object", json!("keys")),
        ("null keys", json!({"keys": null})),
    ])
    .await;
}

/// A set that parses but holds no usable key is a failed refresh too (the
/// contract: "a failed refresh keeps the old keys"; Clerk never publishes an
/// empty set). It once replaced the keys held, locking every user out until
/// the next good fetch: see SECURITY.md, fixed findings.
#[tokio::test]
async fn key_sets_without_a_usable_key_never_replace_the_keys_held() {
    refetch_keeps_the_keys_held(vec![
        ("empty set", json!({"keys": []})),
        (
            "60000 empty keys",
            json!({ "keys": vec![json!({}); 60000] }),
        ),
        (
            "non-RSA and malformed keys only",
            json!({"keys": [
                {"kty": "oct", "kid": "test-key-1", "k": "c2VjcmV0"},
                {"kty": "RSA", "kid": "test-key-1", "n": 42, "e": null},
                {"kty": "RSA", "kid": "test-key-1", "n": "!!!", "e": "@@@"},
                {"kty": "RSA", "kid": "", "n": "AQAB", "e": "AQAB"},
                {"kty": "RSA", "kid": "k".repeat(300), "n": "AQAB", "e": "AQAB"},
            ]}),
        ),
    ])
    .await;
}

#[tokio::test]
async fn an_oversized_key_set_with_nothing_cached_answers_503_and_the_service_stays_up() {
    let issuer = ClerkStandIn::start(vec![test_key(0)], 0)
        .await
        .expect("stand-in");
    let keys: Vec<Value> = (0..3000)
        .map(|i| jwk_as(&test_key(0), &format!("k{i}")))
        .chain([test_key(0).jwk()])
        .collect();
    issuer.set_jwks_body(Some(json!({ "keys": keys })));
    let app = spawn_app_with(TestOptions::default().env("CLERK_JWKS_URL", issuer.jwks_url())).await;

    let response = app.get("/api/images", &app.token("user_a")).await;

    assert_error(response, 503, AUTH_UNAVAILABLE).await;
    assert!(!issuer.requests().is_empty(), "the JWKS was never asked");
    assert_eq!(
        app.request(Method::GET, "/api/health")
            .send()
            .await
            .expect("sent")
            .status(),
        200
    );
    assert!(app.bdd_calls().is_empty());
    // Once the set is sane again, the service recovers on its own.
    issuer.set_jwks_body(None);
    assert_eq!(
        app.get("/api/images", &app.token("user_a")).await.status(),
        200
    );
}

// ---------------------------------------------------------------- random-kid floods

#[tokio::test]
async fn a_sequential_flood_of_random_kids_fetches_at_most_once_per_cooldown() {
    let cooldown = Duration::from_millis(250);
    let app = spawn_app_with(
        TestOptions::default().tweak(move |c| c.clerk.unknown_kid_cooldown = cooldown),
    )
    .await;
    let baseline = jwks_baseline(&app).await;
    let claims = app.claims("user_a");
    let tokens: Vec<String> = (0..500)
        .map(|_| test_key(1).sign_with_header(rs256_header(&random_kid()), &claims))
        .collect();

    let started = Instant::now();
    for token in &tokens {
        let response = app.get("/api/images", token).await;
        assert_eq!(response.status(), 401);
    }
    let elapsed = started.elapsed();

    let fetches = app.jwks_fetches() - baseline;
    let allowed = elapsed.as_millis() / cooldown.as_millis() + 1;
    assert!(
        fetches as u128 <= allowed,
        "{fetches} JWKS fetches in {elapsed:?} with a {cooldown:?} cooldown"
    );
    assert!(fetches >= 1, "an unknown kid must trigger a refetch");
    assert!(app.bdd_calls().is_empty());
    assert!(app
        .clerk
        .requests()
        .iter()
        .all(|r| r.path == "/.well-known/jwks.json" && r.query.is_none()));
}

#[tokio::test]
async fn a_concurrent_flood_of_random_kids_fetches_once_and_valid_tokens_still_pass() {
    let app = spawn_app().await;
    let baseline = jwks_baseline(&app).await;
    let claims = app.claims("user_a");
    let tokens: Vec<String> = (0..500)
        .map(|_| test_key(1).sign_with_header(rs256_header(&random_kid()), &claims))
        .collect();
    let valid = app.token("user_b");

    let mut legit = JoinSet::new();
    for _ in 0..20 {
        let request = app.authed(Method::GET, "/api/images", &valid);
        legit.spawn(async move { request.send().await.expect("sent").status().as_u16() });
    }
    let statuses = flood(&app, tokens).await;
    let legit = legit.join_all().await;

    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert!(
        legit.iter().all(|s| *s == 200),
        "valid tokens during the flood: {legit:?}"
    );
    assert!(
        app.jwks_fetches() <= baseline + 1,
        "{} fetches after a baseline of {baseline}",
        app.jwks_fetches()
    );
    assert_eq!(
        app.bdd_calls().len(),
        20,
        "only the valid requests reached the BDD"
    );
}

// ---------------------------------------------------------------- hostile kid characters

/// `kid`s an attacker might hope end up in a path, a query, a log line or a header.
fn hostile_kids() -> Vec<String> {
    let mut kids: Vec<String> = [
        "../../../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "/.well-known/jwks.json?x=1#frag",
        "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data/",
        "' OR '1'='1",
        "1; DROP TABLE images; --",
        "\" UNION SELECT * FROM keys --",
        "${jndi:ldap://x/a}",
        "%s%s%s%n",
        "{{7*7}}",
        "<script>alert(1)</script>",
        "test-key-0\u{0000}",
        "test-key-0\r\nX-Injected: 1",
        "\u{1b}[31mred\u{1b}[0m",
        "\t\u{b}\u{c}\u{7f}",
        "\u{202e}0-yek-tset",
        "test\u{200b}-key-0",
        "ｔｅｓｔ－ｋｅｙ－０",
        "TEST-KEY-0",
        " test-key-0",
        "🔑🔑🔑",
        "\u{fffd}\u{feff}",
    ]
    .map(String::from)
    .to_vec();
    kids.push("k".repeat(256)); // the longest accepted length, still unknown
    kids.push("é".repeat(128)); // 128 characters, 256 bytes
    kids
}

#[tokio::test]
async fn kids_full_of_path_sql_unicode_and_control_characters_are_opaque_and_refused() {
    let app = spawn_app().await;
    let baseline = jwks_baseline(&app).await;
    let claims = app.claims("user_a");

    // Signed with the real key: only the kid is wrong, and it must never match.
    for kid in hostile_kids() {
        let token = test_key(0).sign_with_header(rs256_header(&kid), &claims);
        assert_invalid_token(app.get("/api/images", &token).await, &format!("{kid:?}")).await;
    }

    assert!(
        app.jwks_fetches() <= baseline + 1,
        "one refetch per cooldown"
    );
    assert!(app
        .clerk
        .requests()
        .iter()
        .all(|r| r.path == "/.well-known/jwks.json" && r.query.is_none()));
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn a_hostile_kid_that_the_key_set_really_publishes_is_just_a_lookup_key() {
    let app = spawn_app().await;
    let baseline = jwks_baseline(&app).await;
    let kids = hostile_kids();
    let keys: Vec<Value> = kids.iter().map(|kid| jwk_as(&test_key(1), kid)).collect();
    app.clerk.set_jwks_body(Some(json!({ "keys": keys })));
    let claims = app.claims("user_a");

    let mut accepted = 0;
    for kid in &kids {
        let token = test_key(1).sign_with_header(rs256_header(kid), &claims);
        let response = app.get("/api/images", &token).await;
        assert_eq!(response.status(), 200, "{kid:?}");
        accepted += 1;
    }

    assert_eq!(accepted, kids.len());
    assert_eq!(
        app.jwks_fetches(),
        baseline + 1,
        "one refetch loads them all"
    );
    assert!(app
        .bdd_calls()
        .iter()
        .all(|c| c.query_param("userId").as_deref() == Some("user_a")));
}

// ---------------------------------------------------------------- jku / x5u / jwk under flood

#[tokio::test]
async fn jku_x5u_and_jwk_headers_are_never_followed_even_under_flood() {
    let app = spawn_app().await;
    let baseline = jwks_baseline(&app).await;
    let attacker = ClerkStandIn::start(vec![test_key(2)], 0)
        .await
        .expect("stand-in");
    let claims = app.claims("user_a");
    let embedded: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(test_key(2).jwk()).expect("a JWK");

    let tokens: Vec<String> = (0..300)
        .map(|i| {
            let kid = match i % 3 {
                0 => "test-key-2".to_owned(),
                1 => "test-key-0".to_owned(), // a real kid, the attacker's key
                _ => random_kid(),
            };
            let mut header = rs256_header(&kid);
            header.jku = Some(format!("{}?n={i}", attacker.jwks_url()));
            header.x5u = Some(format!("{}/cert.pem?n={i}", attacker.url()));
            if i % 2 == 0 {
                header.jwk = Some(embedded.clone());
            }
            if i % 5 == 0 {
                header.x5c = Some(vec!["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA".into()]);
            }
            test_key(2).sign_with_header(header, &claims)
        })
        .collect();

    let statuses = flood(&app, tokens).await;

    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert!(
        attacker.requests().is_empty(),
        "the attacker's server was contacted {} times",
        attacker.requests().len()
    );
    assert!(app.jwks_fetches() <= baseline + 1);
    assert!(app
        .clerk
        .requests()
        .iter()
        .all(|r| r.path == "/.well-known/jwks.json" && r.query.is_none()));
    assert!(app.bdd_calls().is_empty());
}
