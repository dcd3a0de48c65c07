//! Health and readiness (contract §3, `GET /api/health`,
//! `GET /api/images/health` and `GET /api/ready`): public answers, and a
//! readiness check that names the dependency that fails, within its budget.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use stand_ins::{Fault, FaultRule};

use crate::helpers::*;

// ---------------------------------------------------------------- helpers

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn is_iso_millis(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

async fn ready(app: &TestApp) -> (u16, Value) {
    let response = app
        .request(Method::GET, "/api/ready")
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, json_body(response).await)
}

// ---------------------------------------------------------------- health

#[tokio::test]
async fn the_service_health_answers_with_its_message_and_a_millisecond_timestamp() {
    // Arrange
    let app = spawn_app().await;

    for (path, message) in [
        ("/api/health", "Service d'images opérationnel"),
        ("/api/images/health", "Service Images opérationnel"),
    ] {
        // Act: no token.
        let response = app.request(Method::GET, path).send().await.expect("sent");

        // Assert
        assert_eq!(response.status(), 200, "{path}");
        let body = json_body(response).await;
        assert_eq!(body["success"], json!(true), "{body}");
        assert_eq!(body["message"], json!(message), "{body}");
        let timestamp = body["timestamp"].as_str().expect("a timestamp");
        assert!(is_iso_millis(timestamp), "{timestamp}");
        assert_eq!(body.as_object().map(|o| o.len()), Some(3), "{body}");
    }
}

// ----------------------------------------------------------------- ready

#[tokio::test]
async fn ready_answers_200_when_bdd_keys_and_storage_are_ok() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let (status, body) = ready_once_keys_loaded(&app).await;

    // Assert
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"success": true, "checks": {"bdd": "ok", "auth": "ok", "storage": "ok"}})
    );
    assert!(app
        .bdd_calls()
        .iter()
        .any(|r| r.method == Method::GET && r.path == "/api/health"));
    assert!(app
        .storage_calls()
        .iter()
        .any(|r| r.method == Method::GET && r.path == format!("/storage/v1/bucket/{BUCKET}")));
}

#[tokio::test]
async fn ready_answers_503_naming_the_bdd_when_it_is_down() {
    // Arrange
    let app =
        spawn_app_with(TestOptions::default().env("BDD_SERVICE_URL", closed_port_url())).await;

    // Act
    let (status, body) = ready_once_keys_loaded(&app).await;

    // Assert
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["success"], json!(false), "{body}");
    let bdd = body["checks"]["bdd"].as_str().expect("a reason");
    assert!(!bdd.is_empty() && bdd != "ok", "{body}");
    assert_eq!(body["checks"]["auth"], json!("ok"), "{body}");
    assert_eq!(body["checks"]["storage"], json!("ok"), "{body}");
}

#[tokio::test]
async fn ready_answers_503_within_its_budget_when_the_bdd_is_slow() {
    // Arrange
    let app = spawn_app_with(
        TestOptions::default().tweak(|c| c.ready_timeout = Duration::from_millis(300)),
    )
    .await;
    let (status, _) = ready_once_keys_loaded(&app).await;
    assert_eq!(status, 200, "ready before the fault");
    app.bdd.inject(
        FaultRule::new(Fault::Delay(Duration::from_secs(5)))
            .method(Method::GET)
            .path_prefix("/api/health"),
    );

    // Act
    let started = Instant::now();
    let (status, body) = ready(&app).await;
    let elapsed = started.elapsed();

    // Assert
    assert_eq!(status, 503, "{body}");
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    assert_eq!(body["success"], json!(false), "{body}");
    let bdd = body["checks"]["bdd"].as_str().expect("a reason");
    assert!(!bdd.is_empty() && bdd != "ok", "{body}");
    assert_eq!(body["checks"]["auth"], json!("ok"), "{body}");
    assert_eq!(body["checks"]["storage"], json!("ok"), "{body}");
}

#[tokio::test]
async fn ready_answers_503_naming_storage_when_the_bucket_is_missing() {
    // Arrange
    let app = spawn_app_with(TestOptions::default().env("SUPABASE_BUCKET_NAME", "other")).await;

    // Act
    let (status, body) = ready_once_keys_loaded(&app).await;

    // Assert
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["success"], json!(false), "{body}");
    let storage = body["checks"]["storage"].as_str().expect("a reason");
    assert!(!storage.is_empty() && storage != "ok", "{body}");
    assert_eq!(body["checks"]["bdd"], json!("ok"), "{body}");
    assert_eq!(body["checks"]["auth"], json!("ok"), "{body}");
    assert!(app
        .storage_calls()
        .iter()
        .any(|r| r.method == Method::GET && r.path == "/storage/v1/bucket/other"));
}
