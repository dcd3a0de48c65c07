//! Only Clerk session tokens open a user's images (contract §2): the other
//! kinds one instance key signs (JWT templates, machines), pending sessions,
//! `crit` headers, odd `typ`, `iat` in the future and registered claims of
//! the wrong type are refused; real-shaped session tokens pass.

use serde_json::{json, Value};
use stand_ins::{claims_of_kind, TokenKind};

use crate::helpers::*;

const USER: &str = "user_kinds";

async fn status_with(app: &TestApp, token: &str) -> (u16, Value) {
    let response = app.get("/api/images", token).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The invalid-token 401 of contract §2, and no call reached the BDD.
async fn assert_refused(app: &TestApp, token: &str, case: &str) {
    let calls_before = app.bdd_calls().len();
    assert_invalid_token(app.get("/api/images", token).await, case).await;
    assert_eq!(
        app.bdd_calls().len(),
        calls_before,
        "{case}: reached the BDD"
    );
}

async fn assert_accepted(app: &TestApp, token: &str, case: &str) {
    let (status, body) = status_with(app, token).await;
    assert_eq!(status, 200, "{case}: {body}");
}

/// Signs `claims` under `header` with the stand-in's key.
fn signed(app: &TestApp, header: Value, claims: &Value) -> String {
    app.clerk.key(0).unwrap().sign_json_header(&header, claims)
}

fn session_claims(app: &TestApp) -> Value {
    claims_of_kind(
        &app.clerk.issuer(),
        USER,
        std::time::Duration::from_secs(3600),
        TokenKind::Session,
    )
}

/// A session token's JWT header, with `extra` on top (null removes a field).
fn jwt_header(app: &TestApp, extra: Value) -> Value {
    let mut header = json!({"alg": "RS256", "kid": app.clerk.key(0).unwrap().kid(), "typ": "JWT"});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            header.as_object_mut().unwrap().remove(k);
        } else {
            header[k] = v.clone();
        }
    }
    header
}

#[tokio::test]
async fn real_shaped_session_tokens_pass_with_the_session_or_ignored_category_or_none() {
    let app = spawn_app().await;
    let claims = session_claims(&app);
    for cat in [
        json!("cl_B7d4PD111AAA"),
        json!("cl_I7d4PD111III"),
        Value::Null,
    ] {
        let token = signed(&app, jwt_header(&app, json!({ "cat": cat })), &claims);
        assert_accepted(&app, &token, &format!("cat {cat}")).await;
    }
    assert_accepted(
        &app,
        &app.clerk.mint_kind(USER, TokenKind::Session),
        "minted session",
    )
    .await;
    let mut no_sts = claims.clone();
    no_sts.as_object_mut().unwrap().remove("sts");
    assert_accepted(
        &app,
        &signed(&app, jwt_header(&app, json!({})), &no_sts),
        "no sts",
    )
    .await;
}

#[tokio::test]
async fn jwt_template_and_machine_tokens_are_refused() {
    let app = spawn_app().await;
    assert_refused(
        &app,
        &app.clerk.mint_kind(USER, TokenKind::Template),
        "template",
    )
    .await;
    assert_refused(
        &app,
        &app.clerk.mint_kind(USER, TokenKind::Machine),
        "machine",
    )
    .await;
}

#[tokio::test]
async fn each_session_token_rule_refuses_on_its_own() {
    let app = spawn_app().await;
    let session = session_claims(&app);
    let with = |change: Value| {
        let mut claims = session.clone();
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    };
    let now = session["iat"].as_i64().unwrap();
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "template category",
            json!({"cat": "cl_B7d4PD222AAA"}),
            session.clone(),
        ),
        (
            "machine category",
            json!({"cat": "cl_B7d4PD333AAA"}),
            session.clone(),
        ),
        ("typ at+jwt", json!({"typ": "at+jwt"}), session.clone()),
        ("crit header", json!({"crit": ["exp"]}), session.clone()),
        ("no sid", json!({}), with(json!({"sid": null}))),
        ("empty sid", json!({}), with(json!({"sid": ""}))),
        (
            "machine subject",
            json!({}),
            with(json!({"sub": "mch_2abc"})),
        ),
        (
            "pending session",
            json!({}),
            with(json!({"sts": "pending"})),
        ),
        (
            "iat an hour ahead",
            json!({}),
            with(json!({"iat": now + 3600})),
        ),
        (
            "iss as an array",
            json!({}),
            with(json!({"iss": [app.clerk.issuer()]})),
        ),
        ("nbf not a number", json!({}), with(json!({"nbf": "abc"}))),
        (
            "exp not a number",
            json!({}),
            with(json!({"exp": (now + 3600).to_string()})),
        ),
        ("iat not a number", json!({}), with(json!({"iat": "now"}))),
        ("sub not a string", json!({}), with(json!({"sub": 12345}))),
    ];
    for (case, header_change, claims) in cases {
        let token = signed(&app, jwt_header(&app, header_change), &claims);
        assert_refused(&app, &token, case).await;
    }
}

#[tokio::test]
async fn pending_sessions_pass_when_the_deployment_allows_them() {
    let app =
        spawn_app_with(TestOptions::default().env("CLERK_ALLOW_PENDING_SESSIONS", "true")).await;
    assert_accepted(
        &app,
        &app.clerk.mint_kind(USER, TokenKind::Pending),
        "pending allowed",
    )
    .await;
    assert_refused(
        &app,
        &app.clerk.mint_kind(USER, TokenKind::Template),
        "template still",
    )
    .await;
}
