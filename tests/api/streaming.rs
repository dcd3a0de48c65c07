//! Creates that stream: `imageData` is decoded as it arrives and uploaded as
//! it is decoded (chunked), and every rule of the contract holds: a failure
//! found later (a trailing field, a base64 error, the size limit, a client
//! hanging up) cuts the upload off and leaves nothing in Storage.

use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::*;

const USER: &str = "user_stream";
/// Big enough to start streaming before the body ends.
const BIG: usize = 2 << 20;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn post_text(app: &TestApp, token: &str, body: String) -> reqwest::Response {
    app.authed(Method::POST, "/api/images", token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("sent")
}

async fn eventually(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `uploads_in_flight` gauge: an upload under way shows there before
/// Storage has its whole body.
async fn uploads_in_flight(app: &TestApp) -> f64 {
    metric(app, "uploads_in_flight").await.unwrap_or(0.0)
}

fn uploads(app: &TestApp) -> Vec<stand_ins::RecordedRequest> {
    calls(&app.storage_calls(), &Method::POST)
}

#[tokio::test]
async fn a_big_image_is_uploaded_chunked_byte_for_byte() {
    let app = spawn_app().await;
    let image = png_bytes(BIG);

    let response = app
        .post_image(
            &app.token(USER),
            &json!({"prompt": "big", "imageData": b64(&image)}),
        )
        .await;

    assert_eq!(response.status(), 201);
    let upload = &uploads(&app)[0];
    assert_eq!(upload.header("transfer-encoding"), Some("chunked"));
    assert!(upload.header("content-length").is_none());
    assert_eq!(upload.header("content-type"), Some("image/png"));
    assert_eq!(upload.body.len(), image.len());
    assert!(upload.body[..] == image[..], "stored byte for byte");
}

#[tokio::test]
async fn a_trailing_field_that_fails_removes_the_streamed_object() {
    // Arrange: metadata comes last, as JSON.stringify of the AI service's object puts it.
    let app = spawn_app().await;
    let body = format!(
        r#"{{"prompt":"p","imageData":"{}","metadata":[1,2]}}"#,
        b64(&png_bytes(BIG))
    );

    // Act
    let response = post_text(&app, &app.token(USER), body).await;

    // Assert
    assert_eq!(response.status(), 400);
    assert_eq!(
        json_body(response).await["details"],
        json!([{"type": "field", "value": [1, 2], "msg": "Les métadonnées doivent être un objet", "path": "metadata", "location": "body"}])
    );
    eventually(
        "the streamed object removed",
        Duration::from_secs(3),
        || app.objects().is_empty(),
    )
    .await;
}

#[tokio::test]
async fn a_bad_leading_field_keeps_the_image_from_ever_reaching_storage() {
    let app = spawn_app().await;
    let body = format!(r#"{{"prompt":"","imageData":"{}"}}"#, b64(&png_bytes(BIG)));

    let response = post_text(&app, &app.token(USER), body).await;

    assert_eq!(response.status(), 400);
    assert!(app.storage_calls().is_empty());
}

#[tokio::test]
async fn a_base64_error_far_into_the_image_stops_the_upload_and_leaves_nothing() {
    let app = spawn_app().await;
    let mut data = b64(&png_bytes(BIG));
    data.replace_range(BIG..BIG + 1, "*");

    let response = post_text(
        &app,
        &app.token(USER),
        format!(r#"{{"prompt":"p","imageData":"{data}"}}"#),
    )
    .await;

    assert_eq!(response.status(), 400);
    assert_eq!(
        json_body(response).await["details"][0]["msg"],
        "Les données d'image doivent être en base64"
    );
    eventually("nothing left", Duration::from_secs(3), || {
        app.objects().is_empty()
    })
    .await;
    assert!(app.bdd.records().is_empty());
}

#[tokio::test]
async fn an_image_over_the_limit_is_cut_off_with_413_and_leaves_nothing() {
    let app =
        spawn_app_with(TestOptions::default().env("MAX_IMAGE_BYTES", (1 << 20).to_string())).await;

    let response = app
        .post_image(
            &app.token(USER),
            &json!({"prompt": "p", "imageData": b64(&png_bytes(BIG))}),
        )
        .await;

    assert_eq!(response.status(), 413);
    eventually("nothing left", Duration::from_secs(3), || {
        app.objects().is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_client_hanging_up_mid_body_leaves_nothing_behind() {
    // Arrange: a create announcing 3 MB that sends half, then closes.
    let app = spawn_app().await;
    let body = format!(r#"{{"prompt":"p","imageData":"{}"}}"#, b64(&png_bytes(BIG)));
    let mut stream = TcpStream::connect(app.host()).await.unwrap();
    let head = format!(
        "POST /api/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.token(USER),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while uploads_in_flight(&app).await < 1.0 {
        assert!(Instant::now() < deadline, "the upload never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Act
    drop(stream);

    // Assert
    eventually("nothing left", Duration::from_secs(4), || {
        app.objects().is_empty() && app.bdd.records().is_empty()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while uploads_in_flight(&app).await > 0.0 {
        assert!(Instant::now() < deadline, "the upload was never cut off");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_key_given_twice_counts_by_its_last_image() {
    let app = spawn_app().await;
    let first = png_bytes(BIG);
    let mut second = png_bytes(BIG);
    second[100] = 42;
    let body = format!(
        r#"{{"prompt":"p","imageData":"{}","imageData":"{}"}}"#,
        b64(&first),
        b64(&second)
    );

    let response = post_text(&app, &app.token(USER), body).await;

    assert_eq!(response.status(), 201);
    eventually("one object left", Duration::from_secs(3), || {
        app.objects().len() == 1
    })
    .await;
    let (stored, _) = app.storage.object(BUCKET, &app.objects()[0]).unwrap();
    assert!(stored[..] == second[..], "the last imageData is stored");
}

#[tokio::test]
async fn a_keyed_big_create_is_replayed_without_reading_storage_again() {
    let app = spawn_app().await;
    let token = app.token(USER);
    let body: Value = json!({"prompt": "p", "imageData": b64(&png_bytes(BIG))});
    let keyed = || {
        app.authed(Method::POST, "/api/images", &token)
            .header("idempotency-key", "big-key")
            .json(&body)
            .send()
    };
    let first = keyed().await.unwrap();
    assert_eq!(first.status(), 201);
    let first = first.bytes().await.unwrap();
    let calls = app.storage_calls().len();

    let again = keyed().await.unwrap();

    assert_eq!(
        header(&again, "idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(again.bytes().await.unwrap(), first);
    assert_eq!(app.storage_calls().len(), calls);
    assert_eq!(app.objects().len(), 1);
}

#[tokio::test]
async fn escaped_slashes_in_a_big_image_are_read_as_json_reads_them() {
    let app = spawn_app().await;
    let image = png_bytes(BIG);
    let body = format!(
        r#"{{"prompt":"p","imageData":"data:image\/png;base64,{}"}}"#,
        b64(&image).replace('/', "\\/")
    );

    let response = post_text(&app, &app.token(USER), body).await;

    assert_eq!(response.status(), 201);
    let (stored, content_type) = app.storage.object(BUCKET, &app.objects()[0]).unwrap();
    assert_eq!(content_type, "image/png");
    assert!(stored[..] == image[..]);
}
