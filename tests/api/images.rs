//! The image routes end to end: create, list, get, delete, status; validation; ownership.

use reqwest::Method;
use serde_json::{json, Value};

use stand_ins::{Fault, FaultRule};

use crate::helpers::*;

#[tokio::test]
async fn create_uploads_the_image_then_records_it() {
    let app = spawn_app().await;
    let token = app.token("user_a");

    let response = app
        .post_image(
            &token,
            &json!({"prompt": "a red fox", "imageData": png_base64(100), "metadata": {"model": "sd"}}),
        )
        .await;

    assert_eq!(response.status(), 201);
    let body = json_body(response).await;
    let data = &body["data"];
    assert_eq!(body["success"], true);
    assert_eq!(data["user_id"], "user_a");
    assert_eq!(data["prompt"], "a red fox");
    assert_eq!(data["status"], "generated");
    assert_eq!(data["metadata"], json!({"model": "sd"}));
    let record = &app.bdd.records()[0];
    assert_eq!(data["image_id"], record["id"]);
    assert_eq!(data["created_at"], record["createdAt"]);

    let objects = app.objects();
    assert_eq!(objects.len(), 1);
    let path = &objects[0];
    assert!(path.starts_with("user_a/"), "{path}");
    assert!(path.ends_with(".png"));
    assert_eq!(
        data["image_url"],
        format!(
            "{}/storage/v1/object/public/images/{path}",
            app.storage.url()
        )
    );
    let (bytes, content_type) = app.storage.object(BUCKET, path).unwrap();
    assert_eq!(bytes.as_ref(), png_bytes(100).as_slice());
    assert_eq!(content_type, "image/png");

    let upload = &app.storage_calls()[0];
    assert_eq!(upload.method, Method::POST);
    assert_eq!(
        upload.header("authorization"),
        Some(format!("Bearer {SERVICE_KEY}").as_str())
    );
    assert_eq!(upload.header("apikey"), Some(SERVICE_KEY));
    assert_eq!(upload.header("cache-control"), Some("max-age=3600"));
    assert_eq!(upload.header("x-upsert"), Some("false"));
    let create = &app.bdd_calls()[0];
    assert_eq!(create.path, "/api/images");
    assert_eq!(
        create.json(),
        json!({"userId": "user_a", "prompt": "a red fox", "imageUrl": data["image_url"], "metadata": {"model": "sd"}})
    );
    let _: Value = body;
}

#[tokio::test]
async fn list_returns_the_bdd_page_of_the_callers_images() {
    let app = spawn_app().await;
    let token = app.token("user_a");
    for prompt in ["one", "two", "three"] {
        app.create_image(&token, prompt).await;
    }
    app.create_image(&app.token("user_b"), "not mine").await;
    app.bdd.clear_requests();

    let response = app.get("/api/images?page=1&limit=2", &token).await;

    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(body["success"], true);
    let images = body["data"]["images"].as_array().unwrap();
    let prompts: Vec<_> = images
        .iter()
        .map(|i| i["prompt"].as_str().unwrap())
        .collect();
    assert_eq!(prompts, vec!["three", "two"]);
    assert_eq!(body["data"]["pagination"]["total"], 3);
    let call = &app.bdd_calls()[0];
    assert_eq!(call.method, Method::GET);
    assert_eq!(call.path, "/api/images");
    assert_eq!(call.query.as_deref(), Some("userId=user_a&page=1&limit=2"));
}

#[tokio::test]
async fn list_forwards_the_status_filter_and_url_encodes_values() {
    let app = spawn_app().await;
    let token = app.token("user_a");

    let response = app.get("/api/images?status=printed", &token).await;

    assert_eq!(response.status(), 200);
    let call = &app.bdd_calls()[0];
    assert_eq!(call.query_param("status").as_deref(), Some("printed"));
    assert_eq!(call.query_param("page").as_deref(), Some("1"));
    assert_eq!(call.query_param("limit").as_deref(), Some("10"));
}

#[tokio::test]
async fn list_answers_an_empty_page_when_the_bdd_answer_has_no_data() {
    let app = spawn_app().await;
    // A status fault of 200 answers `{"success":…}` without `data`.
    app.bdd
        .inject(FaultRule::new(Fault::Status(200)).path_prefix("/api/images"));
    let response = app.get("/api/images", &app.token("user_a")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_body(response).await,
        json!({"success": true, "data": {"images": [], "pagination": {"total": 0}}})
    );
}

#[tokio::test]
async fn get_returns_the_bdd_answer_as_it_is_and_sends_both_owner_names() {
    let app = spawn_app().await;
    let token = app.token("user_a");
    let created = app.create_image(&token, "a cat").await;
    let id = created["image_id"].as_str().unwrap().to_owned();
    app.bdd.clear_requests();

    let response = app.get(&format!("/api/images/{id}"), &token).await;

    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(body["success"], true);
    assert_eq!(body["data"]["id"], id.as_str());
    assert_eq!(body["data"]["prompt"], "a cat");
    assert_eq!(body["data"]["imageUrl"], created["image_url"]);
    let call = &app.bdd_calls()[0];
    assert_eq!(call.path, format!("/api/images/{id}"));
    assert_eq!(call.query_param("userId").as_deref(), Some("user_a"));
    assert_eq!(call.query_param("user_id").as_deref(), Some("user_a"));
}

#[tokio::test]
async fn delete_removes_the_object_then_the_record() {
    let app = spawn_app().await;
    let token = app.token("user_a");
    let created = app.create_image(&token, "to delete").await;
    let id = created["image_id"].as_str().unwrap().to_owned();
    let path = app.objects()[0].clone();
    app.storage.clear_requests();
    app.bdd.clear_requests();

    let response = app.delete(&format!("/api/images/{id}"), &token).await;

    assert_eq!(response.status(), 200);
    assert_eq!(
        json_body(response).await,
        json!({"success": true, "message": "Image supprimée avec succès"})
    );
    assert!(app.objects().is_empty());
    assert!(app.bdd.records().is_empty());
    let removal = &app.storage_calls()[0];
    assert_eq!(removal.method, Method::DELETE);
    assert_eq!(removal.path, "/storage/v1/object/images");
    assert_eq!(removal.json(), json!({"prefixes": [path]}));
    let calls: Vec<_> = app.bdd_calls().iter().map(|c| c.method.clone()).collect();
    assert_eq!(calls, vec![Method::GET, Method::DELETE]);
    let delete = &app.bdd_calls()[1];
    assert_eq!(delete.path, format!("/api/images/{id}"));
    assert_eq!(delete.query_param("userId").as_deref(), Some("user_a"));
    assert_eq!(delete.query_param("user_id").as_deref(), Some("user_a"));
}

#[tokio::test]
async fn deleting_an_unknown_image_answers_the_bdd_404() {
    let app = spawn_app().await;
    let response = app
        .delete("/api/images/cnotthere000000000000000", &app.token("user_a"))
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        json_body(response).await,
        json!({"success": false, "error": "Image non trouvée"})
    );
    assert!(app.storage_calls().is_empty());
}

#[tokio::test]
async fn patch_status_forwards_status_and_both_owner_names() {
    let app = spawn_app().await;
    let token = app.token("user_a");
    let id = app.create_image(&token, "p").await["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.bdd.clear_requests();

    let response = app.patch_status(&id, &token, "printed").await;

    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(body["data"]["status"], "printed");
    let patch = app
        .bdd_calls()
        .into_iter()
        .find(|c| c.method == Method::PATCH)
        .expect("a PATCH reached the BDD");
    assert_eq!(patch.path, format!("/api/images/{id}/status"));
    assert_eq!(
        patch.json(),
        json!({"status": "printed", "user_id": "user_a", "userId": "user_a"})
    );
    assert_eq!(app.bdd.records()[0]["status"], "printed");
}

async fn image_of(app: &TestApp, owner: &str) -> String {
    app.create_image(&app.token(owner), "owned").await["image_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// B reads, patches, deletes and lists A's image; returns the status A's record has after.
async fn b_tries_to_touch_a_image(app: &TestApp) -> Value {
    let id = image_of(app, "user_a").await;
    let b = app.token("user_b");

    let read = app.get(&format!("/api/images/{id}"), &b).await;
    let patch = app.patch_status(&id, &b, "ordered").await;
    let delete = app.delete(&format!("/api/images/{id}"), &b).await;
    let list = json_body(app.get("/api/images", &b).await).await;

    let not_found = json!({"success": false, "error": "Image non trouvée"});
    assert_eq!(read.status(), 404);
    assert_eq!(json_body(read).await, not_found);
    assert_eq!(patch.status(), 404);
    assert_eq!(
        json_body(patch).await,
        not_found,
        "A's record is never shown"
    );
    assert_eq!(delete.status(), 404);
    assert_eq!(list["data"]["images"], json!([]));
    assert_eq!(app.objects().len(), 1, "A's object is still there");
    assert!(
        !app.bdd_calls().iter().any(|c| c.method == Method::DELETE),
        "no delete reached the BDD for B"
    );
    // The PATCH is the one call the contract names: it carries B as owner.
    let patches = calls(&app.bdd_calls(), &Method::PATCH);
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0].json(),
        json!({"status": "ordered", "user_id": "user_b", "userId": "user_b"})
    );
    app.bdd.records()[0]["status"].clone()
}

#[tokio::test]
async fn a_user_can_neither_read_delete_nor_patch_another_users_image() {
    let app = spawn_app().await;
    let status = b_tries_to_touch_a_image(&app).await;
    assert_eq!(status, "generated", "the BDD refused B's PATCH");
}

#[tokio::test]
async fn ownership_holds_even_when_the_bdd_ignores_the_owner_filter() {
    let mut bdd = stand_ins::BddOptions::new();
    bdd.ignore_owner_filter = true;
    let app = spawn_app_with(TestOptions::default().bdd(bdd)).await;
    // Reads, deletes and lists are guarded here; a PATCH is guarded by the
    // BDD alone (it is the only call the contract allows), so this broken
    // BDD re-labels, but B is still answered 404 and never sees the record.
    b_tries_to_touch_a_image(&app).await;
}

#[tokio::test]
async fn the_real_bdd_shape_works_for_create_list_get_and_delete() {
    let mut bdd = stand_ins::BddOptions::new();
    bdd.mode = stand_ins::BddMode::LikeReal;
    let app = spawn_app_with(TestOptions::default().bdd(bdd)).await;
    let token = app.token("user_real");

    let created = app.create_image(&token, "real").await;
    let id = created["image_id"].as_str().unwrap().to_owned();
    let record = &app.bdd.records()[0];
    assert_eq!(record["userId"], stand_ins::owner_uuid("user_real"));

    let list = json_body(app.get("/api/images", &token).await).await;
    assert_eq!(list["data"]["images"].as_array().unwrap().len(), 1);
    let one = app.get(&format!("/api/images/{id}"), &token).await;
    assert_eq!(one.status(), 200);
    let other = app
        .get(&format!("/api/images/{id}"), &app.token("user_other"))
        .await;
    assert_eq!(other.status(), 404);
    let patch = app.patch_status(&id, &token, "printed").await;
    assert_eq!(patch.status(), 502);
    assert_eq!(
        json_body(patch).await,
        json!({"success": false, "error": "Service BDD: opération non supportée"})
    );
    let delete = app.delete(&format!("/api/images/{id}"), &token).await;
    assert_eq!(delete.status(), 200);
    assert!(app.objects().is_empty());
    assert!(app.bdd.records().is_empty());
}

#[tokio::test]
async fn a_jpeg_and_a_webp_are_stored_with_their_type() {
    let app = spawn_app().await;
    let token = app.token("user_a");
    let jpeg = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        [0xFF, 0xD8, 0xFF, 0xE0, 1, 2],
    );
    let webp = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        b"RIFF\x04\0\0\0WEBPVP8 ",
    );

    for (data, ext, mime) in [(jpeg, "jpg", "image/jpeg"), (webp, "webp", "image/webp")] {
        let response = app
            .post_image(&token, &json!({"prompt": "p", "imageData": data}))
            .await;
        assert_eq!(response.status(), 201);
        let url = json_body(response).await["data"]["image_url"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(url.ends_with(&format!(".{ext}")), "{url}");
        let path = url.rsplit_once("/public/images/").unwrap().1;
        assert_eq!(app.storage.object(BUCKET, path).unwrap().1, mime);
    }
}

#[tokio::test]
async fn a_trailing_slash_is_ignored_as_express_did() {
    let app = spawn_app().await;
    let response = app.get("/api/images/", &app.token("user_a")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.bdd_calls()[0].path, "/api/images");
}
