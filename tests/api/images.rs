//! The image routes end to end: create, list, get, delete, status; validation; ownership.

use reqwest::Method;
use serde_json::{json, Value};

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
        format!("{}/storage/v1/object/public/images/{path}", app.storage.url())
    );
    let (bytes, content_type) = app.storage.object(BUCKET, path).unwrap();
    assert_eq!(bytes.as_ref(), png_bytes(100).as_slice());
    assert_eq!(content_type, "image/png");

    let upload = &app.storage_calls()[0];
    assert_eq!(upload.method, Method::POST);
    assert_eq!(upload.header("authorization"), Some(format!("Bearer {SERVICE_KEY}").as_str()));
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
