//! Upstream orchestration and failures: create/delete ordering (§3), every row of the upstream-failure table (§4), and the exact Storage calls (§5).

use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use stand_ins::{BddMode, BddOptions, Fault, FaultRule, RecordedRequest};

use crate::helpers::*;

/// The caller of every test.
const SUB: &str = "user_x";
/// The upload path prefix for `SUB`.
const UPLOAD_PREFIX: &str = "/storage/v1/object/images/user_x/";
/// The removal endpoint of the bucket.
const REMOVE_PATH: &str = "/storage/v1/object/images";

// ---------------------------------------------------------------- helpers

/// The routes that call the BDD, and the BDD call each one makes last.
#[derive(Debug, Clone, Copy)]
enum Route {
    List,
    Get,
    Create,
    Delete,
    Patch,
}

impl Route {
    const ALL: [Route; 5] = [
        Route::List,
        Route::Get,
        Route::Create,
        Route::Delete,
        Route::Patch,
    ];

    /// The method of the route's own BDD call (after the ownership read, if any).
    fn bdd_method(self) -> Method {
        match self {
            Route::List | Route::Get => Method::GET,
            Route::Create => Method::POST,
            Route::Delete => Method::DELETE,
            Route::Patch => Method::PATCH,
        }
    }

    async fn call(self, app: &TestApp, token: &str, id: &str) -> reqwest::Response {
        match self {
            Route::List => app.get("/api/images", token).await,
            Route::Get => app.get(&format!("/api/images/{id}"), token).await,
            Route::Create => {
                app.post_image(
                    token,
                    &json!({"prompt": "a cat", "imageData": png_base64(64)}),
                )
                .await
            }
            Route::Delete => app.delete(&format!("/api/images/{id}"), token).await,
            Route::Patch => app.patch_status(id, token, "printed").await,
        }
    }
}

/// Spawns the service and creates one image for `SUB`; recorded requests are cleared.
async fn app_with_image(options: TestOptions) -> (TestApp, String, String) {
    let app = spawn_app_with(options).await;
    let token = app.token(SUB);
    let data = app.create_image(&token, "a cat").await;
    let id = data["image_id"].as_str().expect("an image id").to_owned();
    app.bdd.clear_requests();
    app.storage.clear_requests();
    (app, token, id)
}

/// Status and text of an answer, checking its JSON content type.
async fn answer_text(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let content_type = header(&response, "content-type").unwrap_or_default();
    let text = response.text().await.expect("a body");
    assert_eq!(
        content_type, "application/json; charset=utf-8",
        "content type of {status} {text}"
    );
    (status, text)
}

/// An error body never reveals where the upstreams are, nor a secret.
fn assert_no_leak(text: &str, token: &str) {
    for needle in ["127.0.0.1", "http://", SERVICE_KEY, token] {
        assert!(
            !text.contains(needle),
            "error body leaks {needle:?}: {text}"
        );
    }
}

/// Asserts `{"success":false,"error":message}` with `status`, and no leak.
async fn assert_error_no_leak(
    response: reqwest::Response,
    status: u16,
    message: &str,
    token: &str,
    context: &str,
) {
    let (got, text) = answer_text(response).await;
    assert_eq!(got, status, "{context}: status (body {text})");
    assert_no_leak(&text, token);
    let body: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        body,
        json!({"success": false, "error": message}),
        "{context}: body"
    );
}

/// Asserts a `502` whose error starts with `prefix` and says something after it; returns it.
async fn assert_error_prefix(
    response: reqwest::Response,
    prefix: &str,
    token: &str,
    context: &str,
) -> String {
    let (got, text) = answer_text(response).await;
    assert_eq!(got, 502, "{context}: status (body {text})");
    assert_no_leak(&text, token);
    let body: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(body["success"], false, "{context}: {text}");
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(2),
        "{context}: only success and error: {text}"
    );
    let error = body["error"].as_str().expect("an error string").to_owned();
    assert!(
        error.starts_with(prefix) && error.len() > prefix.len(),
        "{context}: {error:?} should start with {prefix:?} and name the failure"
    );
    error
}

fn bdd_creates(app: &TestApp) -> Vec<RecordedRequest> {
    calls(&app.bdd_calls(), &Method::POST)
}

fn uploads(app: &TestApp) -> Vec<RecordedRequest> {
    app.storage_calls()
        .into_iter()
        .filter(|r| r.method == Method::POST && r.path.starts_with("/storage/v1/object/"))
        .collect()
}

fn removals(app: &TestApp) -> Vec<RecordedRequest> {
    app.storage_calls()
        .into_iter()
        .filter(|r| r.method == Method::DELETE)
        .collect()
}

/// `^/storage/v1/object/images/user_x/\d{13}_generated_[0-9a-f-]{36}\.{ext}$`.
fn is_upload_path(path: &str, ext: &str) -> bool {
    let Some(name) = path.strip_prefix(UPLOAD_PREFIX) else {
        return false;
    };
    let Some((millis, rest)) = name.split_once("_generated_") else {
        return false;
    };
    let Some(uuid) = rest.strip_suffix(&format!(".{ext}")) else {
        return false;
    };
    millis.len() == 13
        && millis.bytes().all(|b| b.is_ascii_digit())
        && uuid.len() == 36
        && uuid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
}

/// The object path of a recorded upload (`{sub}/…`).
fn uploaded_path(upload: &RecordedRequest) -> String {
    upload
        .path
        .strip_prefix("/storage/v1/object/images/")
        .expect("an upload to the bucket")
        .to_owned()
}

/// Asserts the one Storage removal of `path`, with the key in both headers.
fn assert_removal_call(removal: &RecordedRequest, path: &str) {
    assert_eq!(removal.method, Method::DELETE);
    assert_eq!(removal.path, REMOVE_PATH);
    assert_eq!(removal.json(), json!({"prefixes": [path]}));
    assert_eq!(
        removal.header("authorization"),
        Some(format!("Bearer {SERVICE_KEY}").as_str())
    );
    assert_eq!(removal.header("apikey"), Some(SERVICE_KEY));
}

/// What the BDD stand-in itself sends for `Status(code)`: fetched directly.
async fn bdd_fault_answer(app: &TestApp, code: u16) -> Bytes {
    let probe = format!("/__probe_{code}");
    app.bdd.inject(
        FaultRule::new(Fault::Status(code))
            .path_prefix(probe.clone())
            .times(1),
    );
    let response = app
        .client
        .get(format!("{}{probe}", app.bdd.url()))
        .send()
        .await
        .expect("stand-in answers");
    assert_eq!(response.status().as_u16(), code);
    let body = response.bytes().await.expect("body");
    app.bdd.clear_requests();
    body
}

fn delay(ms: u64) -> Fault {
    Fault::Delay(Duration::from_millis(ms))
}

fn short_bdd_timeout() -> TestOptions {
    TestOptions::default().env("UPSTREAM_TIMEOUT_MS", "300")
}

// ------------------------------------------------ §3 create orchestration

#[tokio::test]
async fn create_uploads_the_exact_bytes_to_a_unique_path_with_the_storage_headers() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(SUB);

    // Act
    let response = app
        .post_image(
            &token,
            &json!({"prompt": "a cat", "imageData": png_base64(300)}),
        )
        .await;

    // Assert
    assert_eq!(response.status(), 201);
    let body = json_body(response).await;
    let uploads = uploads(&app);
    assert_eq!(uploads.len(), 1, "one upload");
    let upload = &uploads[0];
    assert!(
        is_upload_path(&upload.path, "png"),
        "upload path {}",
        upload.path
    );
    assert_eq!(upload.query, None);
    assert_eq!(upload.header("content-type"), Some("image/png"));
    assert_eq!(upload.header("cache-control"), Some("max-age=3600"));
    assert_eq!(upload.header("x-upsert"), Some("false"));
    assert_eq!(
        upload.header("authorization"),
        Some(format!("Bearer {SERVICE_KEY}").as_str())
    );
    assert_eq!(upload.header("apikey"), Some(SERVICE_KEY));
    assert_eq!(upload.body.as_ref(), png_bytes(300).as_slice());
    let path = uploaded_path(upload);
    let url = app.storage.public_url(BUCKET, &path);
    assert_eq!(body["data"]["image_url"], url.as_str());
    assert_eq!(app.objects(), vec![path]);
}

#[tokio::test]
async fn create_records_the_public_url_of_the_uploaded_object_in_the_bdd() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(SUB);

    // Act
    let response = app
        .post_image(
            &token,
            &json!({"prompt": "a cat", "imageData": png_base64(64), "metadata": {"seed": 7}}),
        )
        .await;

    // Assert
    assert_eq!(response.status(), 201);
    let path = uploaded_path(&uploads(&app)[0]);
    let creates = bdd_creates(&app);
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].path, "/api/images");
    assert_eq!(
        creates[0].json(),
        json!({
            "userId": SUB,
            "prompt": "a cat",
            "imageUrl": format!("{}/storage/v1/object/public/{BUCKET}/{path}", app.storage.url()),
            "metadata": {"seed": 7},
        })
    );
}

#[tokio::test]
async fn a_jpeg_is_uploaded_as_image_jpeg_with_a_jpg_name() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(SUB);
    let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0];
    jpeg.extend_from_slice(&[1; 60]);
    let b64 = base64_of(&jpeg);

    // Act
    let response = app
        .post_image(&token, &json!({"prompt": "a cat", "imageData": b64}))
        .await;

    // Assert
    assert_eq!(response.status(), 201);
    let upload = &uploads(&app)[0];
    assert!(is_upload_path(&upload.path, "jpg"), "{}", upload.path);
    assert_eq!(upload.header("content-type"), Some("image/jpeg"));
    assert_eq!(upload.body.as_ref(), jpeg.as_slice());
}

#[tokio::test]
async fn a_webp_is_uploaded_as_image_webp_with_a_webp_name() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(SUB);
    let mut webp = b"RIFF\x20\0\0\0WEBPVP8 ".to_vec();
    webp.extend_from_slice(&[2; 40]);

    // Act
    let response = app
        .post_image(
            &token,
            &json!({"prompt": "a cat", "imageData": base64_of(&webp)}),
        )
        .await;

    // Assert
    assert_eq!(response.status(), 201);
    let upload = &uploads(&app)[0];
    assert!(is_upload_path(&upload.path, "webp"), "{}", upload.path);
    assert_eq!(upload.header("content-type"), Some("image/webp"));
    assert_eq!(upload.body.as_ref(), webp.as_slice());
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn twenty_concurrent_creates_never_collide_on_an_object_name() {
    // Arrange: one user may hold all twenty upload slots here.
    let app = spawn_app_with(
        TestOptions::default()
            .env("MAX_UPLOADS_IN_FLIGHT", "20")
            .env("MAX_UPLOADS_PER_USER", "20"),
    )
    .await;
    let token = app.token(SUB);
    let body = json!({"prompt": "a cat", "imageData": png_base64(64)});
    let mut set = JoinSet::new();

    // Act
    for _ in 0..20 {
        set.spawn(
            app.authed(Method::POST, "/api/images", &token)
                .json(&body)
                .send(),
        );
    }
    let mut statuses = Vec::new();
    while let Some(done) = set.join_next().await {
        statuses.push(done.expect("task").expect("sent").status().as_u16());
    }

    // Assert
    assert_eq!(statuses, vec![201; 20]);
    let mut paths: Vec<String> = uploads(&app).iter().map(uploaded_path).collect();
    assert_eq!(paths.len(), 20);
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 20, "distinct upload paths");
    assert_eq!(app.objects().len(), 20, "distinct objects");
    assert_eq!(app.bdd.records().len(), 20);
}

// ------------------------------------------------------------ request id

#[tokio::test]
async fn a_given_request_id_is_echoed_and_sent_on_the_upload_and_the_bdd_create() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(SUB);

    // Act
    let response = app
        .authed(Method::POST, "/api/images", &token)
        .header("x-request-id", "req-abc-123")
        .json(&json!({"prompt": "a cat", "imageData": png_base64(64)}))
        .send()
        .await
        .expect("sent");

    // Assert
    assert_eq!(response.status(), 201);
    assert_eq!(
        header(&response, "x-request-id").as_deref(),
        Some("req-abc-123")
    );
    assert_eq!(uploads(&app)[0].header("x-request-id"), Some("req-abc-123"));
    assert_eq!(
        bdd_creates(&app)[0].header("x-request-id"),
        Some("req-abc-123")
    );
}

#[tokio::test]
async fn a_generated_request_id_is_the_one_sent_on_every_upstream_call() {
    // Arrange
    let (app, token, id) = app_with_image(TestOptions::default()).await;
    app.storage.clear_requests();

    // Act
    let created = app
        .post_image(
            &token,
            &json!({"prompt": "a cat", "imageData": png_base64(64)}),
        )
        .await;
    let create_id = header(&created, "x-request-id");
    let create_calls = (app.storage_calls(), app.bdd_calls());
    app.storage.clear_requests();
    app.bdd.clear_requests();
    let deleted = app.delete(&format!("/api/images/{id}"), &token).await;
    let delete_id = header(&deleted, "x-request-id");

    // Assert
    assert_eq!(created.status(), 201);
    assert_eq!(deleted.status(), 200);
    let create_id = create_id.expect("an id on the create answer");
    let delete_id = delete_id.expect("an id on the delete answer");
    assert!(!create_id.is_empty());
    assert_ne!(create_id, delete_id, "one id per request");
    let (storage, bdd) = create_calls;
    assert_eq!(storage.len() + bdd.len(), 2, "upload and create");
    for call in storage.iter().chain(&bdd) {
        assert_eq!(
            call.header("x-request-id"),
            Some(create_id.as_str()),
            "{} {}",
            call.method,
            call.path
        );
    }
    let delete_calls: Vec<RecordedRequest> = app
        .storage_calls()
        .into_iter()
        .chain(app.bdd_calls())
        .collect();
    assert_eq!(delete_calls.len(), 3, "read, removal, record delete");
    for call in &delete_calls {
        assert_eq!(
            call.header("x-request-id"),
            Some(delete_id.as_str()),
            "{} {}",
            call.method,
            call.path
        );
    }
}

// ------------------------------------------------ §4 BDD 4xx pass-through

#[tokio::test]
async fn a_bdd_4xx_with_json_is_passed_through_byte_for_byte_on_every_route() {
    for route in Route::ALL {
        // Arrange
        let (app, token, id) = app_with_image(TestOptions::default()).await;
        let expected = bdd_fault_answer(&app, 409).await;
        app.bdd.inject(
            FaultRule::new(Fault::Status(409))
                .method(route.bdd_method())
                .path_prefix("/api/images"),
        );

        // Act
        let response = route.call(&app, &token, &id).await;

        // Assert
        let (status, text) = answer_text(response).await;
        assert_eq!(status, 409, "{route:?}: {text}");
        assert_eq!(text.as_bytes(), expected.as_ref(), "{route:?}");
    }
}

#[tokio::test]
async fn an_unknown_id_answers_the_bdds_own_404_byte_for_byte() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(SUB);
    let direct = app
        .client
        .get(format!(
            "{}/api/images/cunknown0000?userId={SUB}&user_id={SUB}",
            app.bdd.url()
        ))
        .send()
        .await
        .expect("stand-in answers");
    assert_eq!(direct.status(), 404);
    let expected = direct.bytes().await.expect("body");

    // Act
    let response = app.get("/api/images/cunknown0000", &token).await;

    // Assert
    let (status, text) = answer_text(response).await;
    assert_eq!(status, 404);
    assert_eq!(text.as_bytes(), expected.as_ref());
    assert_eq!(
        serde_json::from_str::<Value>(&text).expect("JSON"),
        json!({"success": false, "error": "Image non trouvée"})
    );
}

#[tokio::test]
async fn a_bdd_400_on_create_is_passed_through_and_the_object_removed() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(SUB);
    let expected = bdd_fault_answer(&app, 400).await;
    app.bdd
        .inject(FaultRule::new(Fault::Status(400)).method(Method::POST));

    // Act
    let response = Route::Create.call(&app, &token, "").await;

    // Assert
    let (status, text) = answer_text(response).await;
    assert_eq!(status, 400);
    assert_eq!(text.as_bytes(), expected.as_ref());
    assert_eq!(app.objects(), Vec::<String>::new());
}

// ------------------------------------------- §4 BDD 404 without JSON, 5xx

#[tokio::test]
async fn a_bdd_without_the_patch_route_answers_502_operation_not_supported() {
    // Arrange
    let options = TestOptions::default().bdd(BddOptions {
        mode: BddMode::LikeReal,
        ..BddOptions::new()
    });
    let (app, token, id) = app_with_image(options).await;

    // Act
    let response = app.patch_status(&id, &token, "printed").await;

    // Assert
    assert_error_no_leak(
        response,
        502,
        "Service BDD: opération non supportée",
        &token,
        "PATCH on the real BDD",
    )
    .await;
    let patches = calls(&app.bdd_calls(), &Method::PATCH);
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].path, format!("/api/images/{id}/status"));
}

#[tokio::test]
async fn a_bdd_5xx_answers_502_on_every_route() {
    for route in Route::ALL {
        // Arrange
        let (app, token, id) = app_with_image(TestOptions::default()).await;
        app.bdd.inject(
            FaultRule::new(Fault::Status(500))
                .method(route.bdd_method())
                .path_prefix("/api/images"),
        );

        // Act
        let response = route.call(&app, &token, &id).await;

        // Assert
        assert_error_no_leak(
            response,
            502,
            "Erreur du service BDD",
            &token,
            &format!("{route:?}"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_bdd_503_answers_502_too() {
    // Arrange
    let (app, token, id) = app_with_image(TestOptions::default()).await;
    app.bdd.inject(FaultRule::new(Fault::Status(503)));

    // Act
    let response = app.get(&format!("/api/images/{id}"), &token).await;

    // Assert
    assert_error_no_leak(response, 502, "Erreur du service BDD", &token, "503").await;
}

#[tokio::test]
async fn a_bdd_dropping_the_connection_answers_502_on_every_route() {
    for route in Route::ALL {
        // Arrange
        let (app, token, id) = app_with_image(TestOptions::default()).await;
        app.bdd.inject(
            FaultRule::new(Fault::Drop)
                .method(route.bdd_method())
                .path_prefix("/api/images"),
        );

        // Act
        let response = route.call(&app, &token, &id).await;

        // Assert
        assert_error_no_leak(
            response,
            502,
            "Erreur du service BDD",
            &token,
            &format!("{route:?}"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_bdd_refusing_connections_answers_503_on_every_route() {
    for route in Route::ALL {
        // Arrange
        let app =
            spawn_app_with(TestOptions::default().env("BDD_SERVICE_URL", closed_port_url())).await;
        let token = app.token(SUB);

        // Act
        let response = route.call(&app, &token, "cabc0000000000000000000000").await;

        // Assert
        assert_error_no_leak(
            response,
            503,
            "Service BDD indisponible",
            &token,
            &format!("{route:?}"),
        )
        .await;
        if let Route::Create = route {
            assert_eq!(app.objects(), Vec::<String>::new(), "no object left behind");
        }
    }
}

#[tokio::test]
async fn a_bdd_slower_than_the_timeout_answers_504_on_every_route() {
    for route in Route::ALL {
        // Arrange
        let (app, token, id) = app_with_image(short_bdd_timeout()).await;
        app.bdd.inject(
            FaultRule::new(delay(1000))
                .method(route.bdd_method())
                .path_prefix("/api/images"),
        );

        // Act
        let response = route.call(&app, &token, &id).await;

        // Assert
        assert_error_no_leak(
            response,
            504,
            "Service BDD: délai dépassé",
            &token,
            &format!("{route:?}"),
        )
        .await;
    }
}

// ----------------------------------------------------------- §4 retries

#[tokio::test]
async fn a_get_is_retried_once_after_a_dropped_connection() {
    // Arrange
    let (app, token, id) = app_with_image(TestOptions::default()).await;
    app.bdd.inject(
        FaultRule::new(Fault::Drop)
            .method(Method::GET)
            .path_prefix("/api/images/")
            .times(1),
    );

    // Act
    let response = app.get(&format!("/api/images/{id}"), &token).await;

    // Assert
    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(body["data"]["id"], id.as_str());
    let gets = calls(&app.bdd_calls(), &Method::GET);
    assert_eq!(gets.len(), 2, "the dropped call and its retry");
    assert_eq!(gets[0].path, gets[1].path);
    assert_eq!(gets[0].query, gets[1].query);
}

#[tokio::test]
async fn a_list_is_retried_once_after_a_dropped_connection() {
    // Arrange
    let (app, token, _id) = app_with_image(TestOptions::default()).await;
    app.bdd.inject(
        FaultRule::new(Fault::Drop)
            .method(Method::GET)
            .path_prefix("/api/images")
            .times(1),
    );

    // Act
    let response = app.get("/api/images", &token).await;

    // Assert
    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(body["data"]["images"].as_array().map(Vec::len), Some(1));
    let gets = calls(&app.bdd_calls(), &Method::GET);
    assert_eq!(gets.len(), 2, "the dropped call and its retry");
    assert_eq!(gets[0].query, gets[1].query);
}

#[tokio::test]
async fn a_record_delete_is_retried_once_after_a_dropped_connection() {
    // Arrange
    let (app, token, id) = app_with_image(TestOptions::default()).await;
    app.bdd.inject(
        FaultRule::new(Fault::Drop)
            .method(Method::DELETE)
            .path_prefix("/api/images/")
            .times(1),
    );

    // Act
    let response = app.delete(&format!("/api/images/{id}"), &token).await;

    // Assert
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_body(response).await,
        json!({"success": true, "message": "Image supprimée avec succès"})
    );
    assert_eq!(calls(&app.bdd_calls(), &Method::DELETE).len(), 2);
    assert!(app.bdd.records().is_empty(), "record gone");
    assert!(app.objects().is_empty(), "object gone");
}

#[tokio::test]
async fn a_create_is_never_retried_and_its_object_is_removed_after_a_dropped_connection() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(SUB);
    app.bdd
        .inject(FaultRule::new(Fault::Drop).method(Method::POST).times(1));

    // Act
    let response = Route::Create.call(&app, &token, "").await;

    // Assert
    assert_error_no_leak(response, 502, "Erreur du service BDD", &token, "create").await;
    assert_eq!(bdd_creates(&app).len(), 1, "never retried");
    assert!(app.bdd.records().is_empty());
    assert!(app.objects().is_empty(), "uploaded object removed");
    let path = uploaded_path(&uploads(&app)[0]);
    let removals = removals(&app);
    assert_eq!(removals.len(), 1);
    assert_removal_call(&removals[0], &path);
}

#[tokio::test]
async fn a_patch_is_never_retried_after_a_dropped_connection() {
    // Arrange
    let (app, token, id) = app_with_image(TestOptions::default()).await;
    app.bdd
        .inject(FaultRule::new(Fault::Drop).method(Method::PATCH).times(1));

    // Act
    let response = app.patch_status(&id, &token, "printed").await;

    // Assert
    assert_error_no_leak(response, 502, "Erreur du service BDD", &token, "patch").await;
    assert_eq!(
        calls(&app.bdd_calls(), &Method::PATCH).len(),
        1,
        "never retried"
    );
    assert_eq!(app.bdd.records()[0]["status"], "generated");
}

#[tokio::test]
async fn a_timeout_is_not_retried() {
    // Arrange
    let (app, token, id) = app_with_image(short_bdd_timeout()).await;
    app.bdd.inject(
        FaultRule::new(delay(1000))
            .method(Method::GET)
            .path_prefix("/api/images/")
            .times(1),
    );

    // Act
    let response = app.get(&format!("/api/images/{id}"), &token).await;

    // Assert
    assert_error_no_leak(response, 504, "Service BDD: délai dépassé", &token, "get").await;
    assert_eq!(
        calls(&app.bdd_calls(), &Method::GET).len(),
        1,
        "one call only"
    );
}

// ------------------------------------------- §3 step 4: nothing left behind

#[tokio::test]
async fn a_refused_create_leaves_no_object_and_removes_exactly_the_uploaded_path() {
    let cases: [(Fault, u16, Option<&str>); 4] = [
        (Fault::Status(400), 400, None),
        (Fault::Status(500), 502, Some("Erreur du service BDD")),
        (Fault::Drop, 502, Some("Erreur du service BDD")),
        (delay(1000), 504, Some("Service BDD: délai dépassé")),
    ];
    for (fault, status, message) in cases {
        // Arrange
        let app = spawn_app_with(short_bdd_timeout()).await;
        let token = app.token(SUB);
        app.bdd
            .inject(FaultRule::new(fault.clone()).method(Method::POST));

        // Act
        let response = Route::Create.call(&app, &token, "").await;

        // Assert
        let context = format!("{fault:?}");
        match message {
            Some(message) => {
                assert_error_no_leak(response, status, message, &token, &context).await
            }
            None => {
                let (got, text) = answer_text(response).await;
                assert_eq!(got, status, "{context}: {text}");
                assert_no_leak(&text, &token);
            }
        }
        assert_eq!(
            app.objects(),
            Vec::<String>::new(),
            "{context}: storage empty"
        );
        let uploads = uploads(&app);
        assert_eq!(uploads.len(), 1, "{context}");
        let removals = removals(&app);
        assert_eq!(removals.len(), 1, "{context}: one removal");
        assert_removal_call(&removals[0], &uploaded_path(&uploads[0]));
    }
}

// --------------------------------------------------- §4 Storage on upload

#[tokio::test]
async fn an_upload_refused_for_a_bad_key_answers_502_with_storages_message() {
    // Arrange
    let app =
        spawn_app_with(TestOptions::default().env("SUPABASE_SERVICE_ROLE_KEY", "wrong")).await;
    let token = app.token(SUB);

    // Act
    let response = Route::Create.call(&app, &token, "").await;

    // Assert
    assert_error_no_leak(
        response,
        502,
        "Erreur lors de l'upload: Invalid Compact JWS",
        &token,
        "bad key",
    )
    .await;
    assert!(bdd_creates(&app).is_empty(), "no record created");
    assert_eq!(uploads(&app)[0].header("apikey"), Some("wrong"));
}

#[tokio::test]
async fn an_upload_refused_as_a_duplicate_answers_502_with_storages_message() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(SUB);
    app.storage
        .inject(FaultRule::new(Fault::Status(409)).method(Method::POST));

    // Act
    let response = Route::Create.call(&app, &token, "").await;

    // Assert
    assert_error_no_leak(
        response,
        502,
        "Erreur lors de l'upload: The resource already exists",
        &token,
        "duplicate",
    )
    .await;
    assert!(bdd_creates(&app).is_empty(), "no record created");
}

#[tokio::test]
async fn an_upload_failing_with_a_5xx_or_a_dropped_connection_answers_502() {
    for fault in [Fault::Status(500), Fault::Status(503), Fault::Drop] {
        // Arrange
        let app = spawn_app().await;
        let token = app.token(SUB);
        app.storage
            .inject(FaultRule::new(fault.clone()).method(Method::POST));

        // Act
        let response = Route::Create.call(&app, &token, "").await;

        // Assert
        let context = format!("{fault:?}");
        assert_error_prefix(response, "Erreur lors de l'upload: ", &token, &context).await;
        assert!(bdd_creates(&app).is_empty(), "{context}: no record created");
        assert!(app.bdd.records().is_empty(), "{context}");
    }
}

#[tokio::test]
async fn an_unreachable_storage_answers_503_on_create() {
    // Arrange
    let app = spawn_app_with(TestOptions::default().env("SUPABASE_URL", closed_port_url())).await;
    let token = app.token(SUB);

    // Act
    let response = Route::Create.call(&app, &token, "").await;

    // Assert
    assert_error_no_leak(
        response,
        503,
        "Service de stockage indisponible",
        &token,
        "refused",
    )
    .await;
    assert!(bdd_creates(&app).is_empty(), "no record created");
}

#[tokio::test]
async fn a_storage_slower_than_the_upload_timeout_answers_504_on_create() {
    // Arrange
    let app = spawn_app_with(TestOptions::default().env("UPLOAD_TIMEOUT_MS", "300")).await;
    let token = app.token(SUB);
    app.storage
        .inject(FaultRule::new(delay(1000)).method(Method::POST));

    // Act
    let response = Route::Create.call(&app, &token, "").await;

    // Assert
    assert_error_no_leak(
        response,
        504,
        "Service de stockage: délai dépassé",
        &token,
        "timeout",
    )
    .await;
    assert!(bdd_creates(&app).is_empty(), "no record created");
}

// --------------------------------------------------- §3 delete orchestration

#[tokio::test]
async fn delete_removes_the_object_then_the_record_with_both_owner_names() {
    // Arrange
    let (app, token, id) = app_with_image(TestOptions::default()).await;
    let path = app.objects()[0].clone();

    // Act
    let response = app.delete(&format!("/api/images/{id}"), &token).await;

    // Assert
    assert_eq!(response.status(), 200);
    let removals = removals(&app);
    assert_eq!(removals.len(), 1);
    assert_removal_call(&removals[0], &path);
    let bdd = app.bdd_calls();
    assert_eq!(bdd.len(), 2, "read then delete");
    assert_eq!(bdd[0].method, Method::GET);
    assert_eq!(bdd[1].method, Method::DELETE);
    assert_eq!(bdd[1].path, format!("/api/images/{id}"));
    assert_eq!(bdd[1].query_param("userId").as_deref(), Some(SUB));
    assert_eq!(bdd[1].query_param("user_id").as_deref(), Some(SUB));
    assert!(app.objects().is_empty());
    assert!(app.bdd.records().is_empty());
}

#[tokio::test]
async fn delete_removes_nothing_when_the_record_cannot_be_read_and_converges_on_retry() {
    // Arrange
    let (app, token, id) = app_with_image(TestOptions::default()).await;
    app.bdd.inject(
        FaultRule::new(Fault::Status(500))
            .method(Method::GET)
            .path_prefix("/api/images/"),
    );

    // Act
    let failed = app.delete(&format!("/api/images/{id}"), &token).await;

    // Assert
    assert_error_no_leak(failed, 502, "Erreur du service BDD", &token, "step 1").await;
    assert!(removals(&app).is_empty(), "nothing removed from Storage");
    assert!(
        calls(&app.bdd_calls(), &Method::DELETE).is_empty(),
        "no record delete"
    );
    assert_eq!(app.objects().len(), 1);
    assert_eq!(app.bdd.records().len(), 1);

    // Act: retry once the BDD is back
    app.bdd.clear_faults();
    let retried = app.delete(&format!("/api/images/{id}"), &token).await;

    // Assert
    assert_eq!(retried.status(), 200);
    assert!(app.objects().is_empty());
    assert!(app.bdd.records().is_empty());
}

#[tokio::test]
async fn delete_keeps_the_record_when_the_removal_fails_and_converges_on_retry() {
    // Arrange
    let (app, token, id) = app_with_image(TestOptions::default()).await;
    let path = app.objects()[0].clone();
    app.storage.inject(
        FaultRule::new(Fault::Status(500))
            .method(Method::DELETE)
            .path_prefix("/storage/v1/object"),
    );

    // Act
    let failed = app.delete(&format!("/api/images/{id}"), &token).await;

    // Assert
    assert_error_prefix(failed, "Erreur lors de la suppression: ", &token, "step 2").await;
    assert!(
        calls(&app.bdd_calls(), &Method::DELETE).is_empty(),
        "record delete not attempted"
    );
    assert_eq!(app.objects(), vec![path.clone()], "object kept");
    assert_eq!(app.bdd.records().len(), 1, "record kept");

    // Act: retry once Storage is back
    app.storage.clear_faults();
    app.storage.clear_requests();
    let retried = app.delete(&format!("/api/images/{id}"), &token).await;

    // Assert
    assert_eq!(retried.status(), 200);
    let removals = removals(&app);
    assert_eq!(removals.len(), 1);
    assert_removal_call(&removals[0], &path);
    assert!(app.objects().is_empty(), "object gone");
    assert!(app.bdd.records().is_empty(), "record gone");
}

#[tokio::test]
async fn delete_keeps_the_record_when_the_removal_is_refused_dropped_or_slow() {
    let cases: [(Fault, u16, &str); 4] = [
        (
            Fault::Status(403),
            502,
            "Erreur lors de la suppression: signature verification failed",
        ),
        (Fault::Status(500), 502, "Erreur lors de la suppression: "),
        (Fault::Drop, 502, "Erreur lors de la suppression: "),
        (delay(1000), 504, "Service de stockage: délai dépassé"),
    ];
    for (fault, status, message) in cases {
        // Arrange
        let (app, token, id) =
            app_with_image(TestOptions::default().env("UPLOAD_TIMEOUT_MS", "300")).await;
        app.storage
            .inject(FaultRule::new(fault.clone()).method(Method::DELETE));

        // Act
        let response = app.delete(&format!("/api/images/{id}"), &token).await;

        // Assert
        let context = format!("{fault:?}");
        if message.ends_with(": ") {
            assert_error_prefix(response, message, &token, &context).await;
        } else {
            assert_error_no_leak(response, status, message, &token, &context).await;
        }
        assert_eq!(app.bdd.records().len(), 1, "{context}: record kept");
        assert!(
            calls(&app.bdd_calls(), &Method::DELETE).is_empty(),
            "{context}: record delete not attempted"
        );
    }
}

#[tokio::test]
async fn delete_answers_503_and_keeps_the_record_when_storage_is_unreachable() {
    // Arrange
    let storage_url = closed_port_url();
    let app = spawn_app_with(TestOptions::default().env("SUPABASE_URL", storage_url.clone())).await;
    let token = app.token(SUB);
    let url = format!("{storage_url}/storage/v1/object/public/{BUCKET}/{SUB}/1_generated_x.png");
    let record = app.bdd.insert_record(SUB, "a cat", &url, json!({}));
    let id = record["id"].as_str().expect("id");

    // Act
    let response = app.delete(&format!("/api/images/{id}"), &token).await;

    // Assert
    assert_error_no_leak(
        response,
        503,
        "Service de stockage indisponible",
        &token,
        "removal",
    )
    .await;
    assert_eq!(app.bdd.records().len(), 1, "record kept");
}

#[tokio::test]
async fn delete_converges_on_retry_when_the_record_delete_fails_after_the_removal() {
    // Arrange
    let (app, token, id) = app_with_image(TestOptions::default()).await;
    let path = app.objects()[0].clone();
    app.bdd.inject(
        FaultRule::new(Fault::Status(500))
            .method(Method::DELETE)
            .path_prefix("/api/images/"),
    );

    // Act
    let failed = app.delete(&format!("/api/images/{id}"), &token).await;

    // Assert
    assert_error_no_leak(failed, 502, "Erreur du service BDD", &token, "step 3").await;
    assert!(app.objects().is_empty(), "object gone");
    assert_eq!(app.bdd.records().len(), 1, "record kept");
    let deletes = calls(&app.bdd_calls(), &Method::DELETE);
    assert_eq!(deletes.len(), 1, "a 5xx is not retried");
    assert_eq!(deletes[0].path, format!("/api/images/{id}"));
    assert_eq!(deletes[0].query_param("userId").as_deref(), Some(SUB));
    assert_eq!(deletes[0].query_param("user_id").as_deref(), Some(SUB));

    // Act: retry once the BDD is back
    app.bdd.clear_faults();
    app.storage.clear_requests();
    let retried = app.delete(&format!("/api/images/{id}"), &token).await;

    // Assert
    assert_eq!(retried.status(), 200);
    assert_eq!(
        json_body(retried).await,
        json!({"success": true, "message": "Image supprimée avec succès"})
    );
    let removals = removals(&app);
    assert_eq!(
        removals.len(),
        1,
        "removal of the missing object is attempted"
    );
    assert_removal_call(&removals[0], &path);
    assert!(app.bdd.records().is_empty(), "record gone");
}

#[tokio::test]
async fn delete_succeeds_when_the_bdd_answers_204_without_a_body() {
    // Arrange
    let (app, token, id) = app_with_image(TestOptions::default()).await;
    app.bdd.inject(
        FaultRule::new(Fault::Status(204))
            .method(Method::DELETE)
            .path_prefix("/api/images/"),
    );

    // Act
    let response = app.delete(&format!("/api/images/{id}"), &token).await;

    // Assert
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_body(response).await,
        json!({"success": true, "message": "Image supprimée avec succès"})
    );
    assert!(app.objects().is_empty(), "object removed");
    assert_eq!(calls(&app.bdd_calls(), &Method::DELETE).len(), 1);
}

#[tokio::test]
async fn a_removal_refused_as_not_found_counts_as_removed() {
    // Arrange: Storage answers 400 {"statusCode":"404",…} to the removal
    let (app, token, id) = app_with_image(TestOptions::default()).await;
    let path = app.objects()[0].clone();
    app.storage.inject(
        FaultRule::new(Fault::Status(404))
            .method(Method::DELETE)
            .path_prefix("/storage/v1/object"),
    );

    // Act
    let response = app.delete(&format!("/api/images/{id}"), &token).await;

    // Assert
    assert_eq!(response.status(), 200);
    let removals = removals(&app);
    assert_eq!(removals.len(), 1);
    assert_removal_call(&removals[0], &path);
    assert!(app.bdd.records().is_empty(), "record deleted");
}

#[tokio::test]
async fn deleting_a_record_with_a_foreign_url_removes_nothing_from_storage() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(SUB);
    let record = app
        .bdd
        .insert_record(SUB, "a cat", "https://elsewhere.test/x.png", json!({}));
    let id = record["id"].as_str().expect("id");

    // Act
    let response = app.delete(&format!("/api/images/{id}"), &token).await;

    // Assert
    assert_eq!(response.status(), 200);
    assert!(removals(&app).is_empty(), "Storage received no DELETE");
    assert!(app.bdd.records().is_empty(), "record deleted");
}

#[tokio::test]
async fn deleting_a_record_pointing_into_another_users_folder_removes_nothing_from_storage() {
    let victim = "user_y/1_generated_victim.png";
    for stored_url_path in [
        victim.to_owned(),
        format!("{SUB}/../{victim}"),
        format!("{SUB}/%2E%2E/{victim}"),
    ] {
        // Arrange
        let app = spawn_app().await;
        let token = app.token(SUB);
        app.storage
            .put_object(BUCKET, victim, png_bytes(16), "image/png");
        let url = format!(
            "{}/storage/v1/object/public/{BUCKET}/{stored_url_path}",
            app.storage.url()
        );
        let record = app.bdd.insert_record(SUB, "a cat", &url, json!({}));
        let id = record["id"].as_str().expect("id");

        // Act
        let response = app.delete(&format!("/api/images/{id}"), &token).await;

        // Assert
        assert_eq!(response.status(), 200, "{stored_url_path}");
        assert!(
            removals(&app).is_empty(),
            "{stored_url_path}: Storage received no DELETE"
        );
        assert_eq!(app.objects(), vec![victim.to_owned()], "{stored_url_path}");
    }
}
