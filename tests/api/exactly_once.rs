//! Nothing lost, nothing duplicated, nothing left behind (contract §7):
//! `Idempotency-Key` on creates, creates whose record outcome is unknown
//! settled by reading back, and the cleaner.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use stand_ins::{Fault, FaultRule};

use crate::helpers::*;

const USER: &str = "user_once";

fn body() -> Value {
    json!({"prompt": "a fox", "imageData": png_base64(256), "metadata": {"seed": 7}})
}

async fn keyed(app: &TestApp, token: &str, key: &str, body: &Value) -> reqwest::Response {
    app.authed(Method::POST, "/api/images", token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

/// Short upstream timeouts, so timeouts are quick to provoke.
fn quick() -> TestOptions {
    TestOptions::default()
        .env("UPSTREAM_TIMEOUT_MS", "400")
        .env("UPLOAD_TIMEOUT_MS", "400")
}

fn uploads(app: &TestApp) -> usize {
    calls(&app.storage_calls(), &Method::POST)
        .iter()
        .filter(|c| !c.path.contains("/object/list/"))
        .count()
}

fn bdd_creates(app: &TestApp) -> usize {
    calls(&app.bdd_calls(), &Method::POST).len()
}

fn read_backs(app: &TestApp) -> Vec<stand_ins::RecordedRequest> {
    calls(&app.bdd_calls(), &Method::GET)
        .into_iter()
        .filter(|c| c.path == "/api/images")
        .collect()
}

/// Polls until `condition` holds, failing after `limit`.
async fn eventually(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------- Idempotency-Key

#[tokio::test]
async fn a_keyed_create_retried_gets_the_first_201_byte_for_byte_without_upstream_calls() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);
    let first = keyed(&app, &token, "key-1", &body()).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first = first.bytes().await.unwrap();
    let (storage_calls, bdd_calls) = (app.storage_calls().len(), app.bdd_calls().len());

    // Act
    let again = keyed(&app, &token, "key-1", &body()).await;

    // Assert
    assert_eq!(again.status(), 201);
    assert_eq!(
        header(&again, "idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(
        header(&again, "content-type").as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(again.bytes().await.unwrap(), first, "byte for byte");
    assert_eq!(app.storage_calls().len(), storage_calls, "no Storage call");
    assert_eq!(app.bdd_calls().len(), bdd_calls, "no BDD call");
    assert_eq!(app.bdd.records().len(), 1);
    assert_eq!(app.objects().len(), 1);
}

#[tokio::test]
async fn the_same_key_while_the_first_runs_answers_409_with_retry_after_and_makes_one_image() {
    // Arrange: the upload takes a while.
    let app = spawn_app().await;
    app.storage.inject(
        FaultRule::new(Fault::Delay(Duration::from_millis(700)))
            .method(Method::POST)
            .times(1),
    );
    let token = app.token(USER);
    let body = body();

    // Act: two at once with one key.
    let (a, b) = tokio::join!(keyed(&app, &token, "key-2", &body), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        keyed(&app, &token, "key-2", &body).await
    });

    // Assert
    assert_eq!(a.status(), 201);
    assert_eq!(b.status(), 409);
    assert_eq!(header(&b, "retry-after").as_deref(), Some("1"));
    assert_eq!(
        json_body(b).await,
        json!({"success": false, "error": "Requête déjà en cours de traitement"})
    );
    assert_eq!(app.bdd.records().len(), 1);
    assert_eq!(uploads(&app), 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_answers_422() {
    let app = spawn_app().await;
    let token = app.token(USER);
    assert_eq!(keyed(&app, &token, "key-3", &body()).await.status(), 201);

    let other = keyed(
        &app,
        &token,
        "key-3",
        &json!({"prompt": "another", "imageData": png_base64(64)}),
    )
    .await;

    assert_eq!(other.status(), 422);
    assert_eq!(
        json_body(other).await,
        json!({"success": false, "error": "Idempotency-Key déjà utilisée pour une autre requête"})
    );
    assert_eq!(app.bdd.records().len(), 1);
}

#[tokio::test]
async fn a_key_that_is_not_1_to_255_visible_ascii_characters_answers_400() {
    let app = spawn_app().await;
    let token = app.token(USER);
    for bad in ["".to_owned(), "k".repeat(256), "two words".to_owned()] {
        let response = keyed(&app, &token, &bad, &body()).await;
        assert_eq!(response.status(), 400, "{bad:?}");
        assert_eq!(
            json_body(response).await,
            json!({"success": false, "error": "Idempotency-Key invalide"})
        );
    }
    let accented = app
        .authed(Method::POST, "/api/images", &token)
        .header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(b"cl\xc3\xa9").unwrap(),
        )
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(accented.status(), 400);
    assert_eq!(
        keyed(&app, &token, &"k".repeat(255), &body())
            .await
            .status(),
        201
    );
    assert!(app.bdd.records().len() == 1 && uploads(&app) == 1);
}

#[tokio::test]
async fn two_users_may_use_the_same_key() {
    let app = spawn_app().await;
    let a = keyed(&app, &app.token("user_a"), "shared", &body()).await;
    let b = keyed(&app, &app.token("user_b"), "shared", &body()).await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 201));
    assert!(b.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.bdd.records().len(), 2);
}

#[tokio::test]
async fn a_key_is_forgotten_after_its_ttl() {
    let app = spawn_app_with(TestOptions::default().env("IDEMPOTENCY_TTL_SECS", "1")).await;
    let token = app.token(USER);
    assert_eq!(keyed(&app, &token, "key-ttl", &body()).await.status(), 201);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let later = keyed(&app, &token, "key-ttl", &body()).await;

    assert_eq!(later.status(), 201);
    assert!(later.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.bdd.records().len(), 2, "ran afresh");
}

#[tokio::test]
async fn a_failed_attempt_frees_its_key() {
    // Arrange: Storage refuses the first upload.
    let app = spawn_app().await;
    app.storage.inject(
        FaultRule::new(Fault::Status(403))
            .method(Method::POST)
            .times(1),
    );
    let token = app.token(USER);
    let first = keyed(&app, &token, "key-4", &body()).await;
    assert_eq!(first.status(), 502);

    // Act
    let retry = keyed(&app, &token, "key-4", &body()).await;

    // Assert
    assert_eq!(retry.status(), 201);
    assert!(retry.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.bdd.records().len(), 1);
    assert_eq!(app.objects().len(), 1);
}

#[tokio::test]
async fn a_validation_failure_with_a_key_leaves_it_free() {
    let app = spawn_app().await;
    let token = app.token(USER);
    let bad = keyed(&app, &token, "key-5", &json!({"prompt": ""})).await;
    assert_eq!(bad.status(), 400);
    assert_eq!(keyed(&app, &token, "key-5", &body()).await.status(), 201);
}

#[tokio::test]
async fn a_retry_settles_an_undecided_attempt_first_and_answers_its_record() {
    // Arrange: the record is written but its answer lost, and the read-back
    // fails too: the outcome stays unknown.
    let app = spawn_app_with(quick()).await;
    app.bdd.inject(
        FaultRule::new(Fault::DropAfter)
            .method(Method::POST)
            .times(1),
    );
    app.bdd.inject(
        FaultRule::new(Fault::Status(500))
            .method(Method::GET)
            .times(1),
    );
    let token = app.token(USER);
    let first = keyed(&app, &token, "key-6", &body()).await;
    assert_eq!(first.status(), 502);
    assert_eq!(app.objects().len(), 1, "the object is kept while undecided");
    let record_id = app.bdd.records()[0]["id"].clone();

    // Act
    let retry = keyed(&app, &token, "key-6", &body()).await;

    // Assert: the record found, no second upload or record.
    assert_eq!(retry.status(), 201);
    let retry = json_body(retry).await;
    assert_eq!(retry["data"]["image_id"], record_id);
    assert_eq!(uploads(&app), 1);
    assert_eq!(bdd_creates(&app), 1);
    assert_eq!(app.bdd.records().len(), 1);
    assert_eq!(app.objects().len(), 1);
    let replay = keyed(&app, &token, "key-6", &body()).await;
    assert_eq!(
        header(&replay, "idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(json_body(replay).await, retry);
}

#[tokio::test]
async fn a_retry_of_an_undecided_attempt_without_a_record_runs_afresh() {
    // Arrange: the record create fails with a 5xx (nothing written) and the
    // read-back fails too.
    let app = spawn_app_with(quick()).await;
    app.bdd.inject(
        FaultRule::new(Fault::Status(500))
            .method(Method::POST)
            .times(1),
    );
    app.bdd.inject(
        FaultRule::new(Fault::Status(500))
            .method(Method::GET)
            .times(1),
    );
    let token = app.token(USER);
    assert_eq!(keyed(&app, &token, "key-7", &body()).await.status(), 502);

    // Act
    let retry = keyed(&app, &token, "key-7", &body()).await;

    // Assert: the earlier object removed, one new image.
    assert_eq!(retry.status(), 201);
    let url = json_body(retry).await["data"]["image_url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.bdd.records().len(), 1);
    eventually("one object left", Duration::from_secs(3), || {
        app.objects().len() == 1
    })
    .await;
    assert!(url.ends_with(&app.objects()[0]));
}

// ------------------------------------------------------- unknown outcomes

#[tokio::test]
async fn a_record_written_whose_answer_was_lost_is_found_by_reading_back() {
    let app = spawn_app_with(quick()).await;
    app.bdd.inject(
        FaultRule::new(Fault::DropAfter)
            .method(Method::POST)
            .times(1),
    );
    let token = app.token(USER);

    let response = app.post_image(&token, &body()).await;

    assert_eq!(response.status(), 201);
    let data = json_body(response).await["data"].clone();
    let record = &app.bdd.records()[0];
    assert_eq!(data["image_id"], record["id"]);
    assert_eq!(data["created_at"], record["createdAt"]);
    assert_eq!(data["image_url"], record["imageUrl"]);
    assert_eq!(data["metadata"], json!({"seed": 7}));
    let read_back = read_backs(&app);
    assert_eq!(read_back.len(), 1);
    assert_eq!(read_back[0].query_param("userId").as_deref(), Some(USER));
    assert_eq!(read_back[0].query_param("page").as_deref(), Some("1"));
    assert_eq!(app.objects().len(), 1, "the object stays");
}

#[tokio::test]
async fn a_record_written_whose_answer_came_too_late_is_a_201() {
    let app = spawn_app_with(quick()).await;
    app.bdd.inject(
        FaultRule::new(Fault::DelayAfter(Duration::from_millis(800)))
            .method(Method::POST)
            .times(1),
    );

    let response = app.post_image(&app.token(USER), &body()).await;

    assert_eq!(response.status(), 201);
    assert_eq!(app.bdd.records().len(), 1);
    assert_eq!(app.objects().len(), 1);
}

#[tokio::test]
async fn a_bdd_5xx_without_a_record_removes_the_object_and_answers_502() {
    let app = spawn_app().await;
    app.bdd.inject(
        FaultRule::new(Fault::Status(500))
            .method(Method::POST)
            .times(1),
    );

    let response = app.post_image(&app.token(USER), &body()).await;

    assert_eq!(response.status(), 502);
    assert_eq!(
        json_body(response).await,
        json!({"success": false, "error": "Erreur du service BDD"})
    );
    assert_eq!(read_backs(&app).len(), 1, "read back before removing");
    assert!(app.objects().is_empty());
    assert!(app.bdd.records().is_empty());
}

#[tokio::test]
async fn when_the_read_back_fails_too_the_object_is_kept_until_the_cleaner_settles_it() {
    // Arrange
    let app = spawn_app_with(quick()).await;
    app.bdd.inject(
        FaultRule::new(Fault::Status(503))
            .method(Method::POST)
            .times(1),
    );
    app.bdd.inject(
        FaultRule::new(Fault::Status(500))
            .method(Method::GET)
            .times(2),
    );

    // Act
    let response = app.post_image(&app.token(USER), &body()).await;

    // Assert: kept now, removed once the BDD answers that no record exists.
    assert_eq!(response.status(), 502);
    assert_eq!(app.objects().len(), 1);
    assert_eq!(metric(&app, "cleanup_pending").await, Some(1.0));
    eventually("the cleaner settles it", Duration::from_secs(5), || {
        app.objects().is_empty()
    })
    .await;
    assert!(app.bdd.records().is_empty());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(metric(&app, "cleanup_pending").await, Some(0.0));
    assert_eq!(
        metric(&app, "cleanup_total{result=\"removed\"}").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn the_cleaner_keeps_an_object_once_its_record_shows_up() {
    // Arrange: record written, answer lost, read-back failing.
    let app = spawn_app_with(quick()).await;
    app.bdd.inject(
        FaultRule::new(Fault::DropAfter)
            .method(Method::POST)
            .times(1),
    );
    app.bdd.inject(
        FaultRule::new(Fault::Status(500))
            .method(Method::GET)
            .times(2),
    );

    // Act
    let response = app.post_image(&app.token(USER), &body()).await;

    // Assert
    assert_eq!(response.status(), 502);
    eventually("the cleaner settles it", Duration::from_secs(5), || {
        read_backs(&app).len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.objects().len(), 1, "a record points at it");
    assert_eq!(
        metric(&app, "cleanup_total{result=\"kept\"}").await,
        Some(1.0)
    );
}

// ------------------------------------------------------------- the cleaner

#[tokio::test]
async fn the_cleaner_converges_after_storage_refuses_removals_for_a_while() {
    // Arrange: the record is refused (nothing written), and Storage fails
    // the next three removals.
    let app = spawn_app().await;
    app.bdd.inject(
        FaultRule::new(Fault::Status(400))
            .method(Method::POST)
            .times(1),
    );
    app.storage.inject(
        FaultRule::new(Fault::Status(500))
            .method(Method::DELETE)
            .times(3),
    );

    // Act
    let response = app.post_image(&app.token(USER), &body()).await;

    // Assert
    assert_eq!(response.status(), 400);
    assert_eq!(app.objects().len(), 1, "the first removal failed");
    eventually("the cleaner removes it", Duration::from_secs(8), || {
        app.objects().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(metric(&app, "cleanup_pending").await, Some(0.0));
    assert_eq!(
        metric(&app, "cleanup_total{result=\"removed\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&app, "cleanup_total{result=\"retried\"}").await,
        Some(2.0)
    );
}

#[tokio::test]
async fn an_upload_that_lands_after_its_timeout_is_removed() {
    // Arrange: Storage stores the object after the service gave up.
    let app = spawn_app_with(quick()).await;
    app.storage.inject(
        FaultRule::new(Fault::ActLate(Duration::from_millis(700)))
            .method(Method::POST)
            .times(1),
    );

    // Act
    let response = app.post_image(&app.token(USER), &body()).await;

    // Assert
    assert_eq!(response.status(), 504);
    eventually("the late object lands", Duration::from_secs(2), || {
        !app.objects().is_empty()
    })
    .await;
    eventually("the cleaner removes it", Duration::from_secs(4), || {
        app.objects().is_empty()
    })
    .await;
    assert!(app.bdd.records().is_empty());
}

#[tokio::test]
async fn the_cleanup_gauge_is_exposed_from_the_start() {
    let app = spawn_app().await;
    assert_eq!(metric(&app, "cleanup_pending").await, Some(0.0));
}
