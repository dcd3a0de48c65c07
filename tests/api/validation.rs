//! The validation table (contract §3, "Validation errors"): the body of a
//! create, the list query, the image id and the status body; each failing
//! check as one `details` entry, in table order, reaching no upstream.

use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const USER: &str = "user_validation";
const UUID: &str = "0b7c1d9e-6f3a-4a57-9b2c-1e2d3f4a5b6c";

const PAGE_MSG: &str = "La page doit être un nombre positif";
const LIMIT_MSG: &str = "La limite doit être entre 1 et 100";
const STATUS_MSG: &str = "Statut invalide";
const ID_MSG: &str = "L'ID de l'image doit être un UUID valide";
const PROMPT_REQUIRED: &str = "Le prompt est requis";
const PROMPT_TOO_LONG: &str = "Le prompt ne peut pas dépasser 1000 caractères";
const IMAGE_REQUIRED: &str = "Les données d'image sont requises";
const IMAGE_NOT_BASE64: &str = "Les données d'image doivent être en base64";
const IMAGE_FORMAT: &str = "Format d'image non supporté (PNG, JPEG ou WebP)";
const METADATA_MSG: &str = "Les métadonnées doivent être un objet";

// ---------------------------------------------------------------- helpers

/// One expected validation entry; `value: None` means the key must be absent.
fn detail(value: Option<Value>, msg: &str, path: &str, location: &str) -> Value {
    let mut entry = json!({"type": "field", "msg": msg, "path": path, "location": location});
    if let Some(value) = value {
        entry["value"] = value;
    }
    entry
}

/// Asserts a `400 Erreur de validation` answer and returns its `details`.
async fn validation_details(response: reqwest::Response) -> Vec<Value> {
    assert_eq!(response.status(), 400, "expected a validation error");
    let body = json_body(response).await;
    assert_eq!(body["success"], json!(false), "{body}");
    assert_eq!(body["error"], json!("Erreur de validation"), "{body}");
    body["details"]
        .as_array()
        .unwrap_or_else(|| panic!("details is not an array: {body}"))
        .clone()
}

/// A raw HTTP/1.1 request, so paths like `/api/images/..` reach the service
/// as written (URL libraries normalise dot segments away).
async fn raw_request(app: &TestApp, method: &str, path: &str, token: &str) -> (u16, Value) {
    let host = app.host();
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read answer");
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json; charset=utf-8"),
        "{head}"
    );
    (status, serde_json::from_str(body).expect("a JSON body"))
}

fn gif_base64() -> String {
    base64::engine::general_purpose::STANDARD.encode(b"GIF89a\x01\x00\x01\x00\x80\x00\x00")
}

// ------------------------------------------------------- validation: body

#[tokio::test]
async fn an_empty_body_object_lists_prompt_and_image_data_as_required() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    // Act
    let response = app.post_image(&token, &json!({})).await;

    // Assert
    assert_eq!(
        validation_details(response).await,
        vec![
            detail(None, PROMPT_REQUIRED, "prompt", "body"),
            detail(None, IMAGE_REQUIRED, "imageData", "body"),
        ]
    );
    assert!(app.storage_calls().is_empty());
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn a_body_that_is_not_an_object_fails_like_missing_fields() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    // Act
    let response = app.post_image(&token, &json!([])).await;

    // Assert
    assert_eq!(
        validation_details(response).await,
        vec![
            detail(None, PROMPT_REQUIRED, "prompt", "body"),
            detail(None, IMAGE_REQUIRED, "imageData", "body"),
        ]
    );
}

#[tokio::test]
async fn an_empty_or_mistyped_prompt_fails_only_its_first_check_with_its_value() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);
    let long_array = Value::Array(vec![json!("x"); 1001]);

    for prompt in [json!(""), json!(12345), json!(null), long_array] {
        // Act
        let response = app
            .post_image(
                &token,
                &json!({"prompt": prompt.clone(), "imageData": png_base64(64)}),
            )
            .await;

        // Assert
        assert_eq!(
            validation_details(response).await,
            vec![detail(Some(prompt), PROMPT_REQUIRED, "prompt", "body")]
        );
    }
    assert!(app.storage_calls().is_empty());
}

#[tokio::test]
async fn a_prompt_of_1000_multibyte_characters_is_accepted() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);
    let prompt = "é".repeat(1000);

    // Act
    let response = app
        .post_image(
            &token,
            &json!({"prompt": prompt, "imageData": png_base64(64)}),
        )
        .await;

    // Assert
    assert_eq!(response.status(), 201);
    let creates = calls(&app.bdd_calls(), &Method::POST);
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].json()["prompt"], json!(prompt));
}

#[tokio::test]
async fn a_prompt_of_1001_multibyte_characters_is_refused_with_its_value() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);
    let prompt = "é".repeat(1001);

    // Act
    let response = app
        .post_image(
            &token,
            &json!({"prompt": prompt, "imageData": png_base64(64)}),
        )
        .await;

    // Assert
    assert_eq!(
        validation_details(response).await,
        vec![detail(
            Some(json!(prompt)),
            PROMPT_TOO_LONG,
            "prompt",
            "body"
        )]
    );
    assert!(app.storage_calls().is_empty());
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn image_data_absent_empty_or_mistyped_is_required_and_never_echoed() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);
    let variants = [
        json!({"prompt": "a fox"}),
        json!({"prompt": "a fox", "imageData": ""}),
        json!({"prompt": "a fox", "imageData": 42}),
        json!({"prompt": "a fox", "imageData": null}),
        json!({"prompt": "a fox", "imageData": ["iVBORw0KGgo="]}),
        json!({"prompt": "a fox", "imageData": {"b64": "iVBORw0KGgo="}}),
    ];

    for body in variants {
        // Act
        let response = app.post_image(&token, &body).await;

        // Assert
        assert_eq!(
            validation_details(response).await,
            vec![detail(None, IMAGE_REQUIRED, "imageData", "body")],
            "{body}"
        );
    }
    assert!(app.storage_calls().is_empty());
}

#[tokio::test]
async fn image_data_that_is_not_standard_base64_is_refused_and_never_echoed() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    for data in ["abc", "ab c=", "iVBO-_w0", "-_-_", "iVBORw0KGgo=A==="] {
        // Act
        let response = app
            .post_image(&token, &json!({"prompt": "a fox", "imageData": data}))
            .await;

        // Assert
        assert_eq!(
            validation_details(response).await,
            vec![detail(None, IMAGE_NOT_BASE64, "imageData", "body")],
            "{data:?}"
        );
    }
    assert!(app.storage_calls().is_empty());
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn a_png_data_url_prefix_is_accepted_and_stripped() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);
    let data = format!("data:image/png;base64,{}", png_base64(64));

    // Act
    let response = app
        .post_image(&token, &json!({"prompt": "a fox", "imageData": data}))
        .await;

    // Assert
    assert_eq!(response.status(), 201);
    let uploads = calls(&app.storage_calls(), &Method::POST);
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].body.as_ref(), png_bytes(64).as_slice());
    assert_eq!(uploads[0].header("content-type"), Some("image/png"));
}

#[tokio::test]
async fn gif_bytes_are_refused_as_an_unsupported_format_without_echo() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    // Act
    let response = app
        .post_image(
            &token,
            &json!({"prompt": "a fox", "imageData": gif_base64()}),
        )
        .await;

    // Assert
    assert_eq!(
        validation_details(response).await,
        vec![detail(None, IMAGE_FORMAT, "imageData", "body")]
    );
    assert!(app.storage_calls().is_empty());
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn metadata_that_is_not_an_object_is_refused_with_its_value() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    for metadata in [json!([]), json!(null), json!("model=sd"), json!(3)] {
        // Act
        let response = app
            .post_image(
                &token,
                &json!({"prompt": "a fox", "imageData": png_base64(64), "metadata": metadata.clone()}),
            )
            .await;

        // Assert
        assert_eq!(
            validation_details(response).await,
            vec![detail(Some(metadata), METADATA_MSG, "metadata", "body")]
        );
    }
    assert!(app.storage_calls().is_empty());
}

#[tokio::test]
async fn every_failing_body_field_is_reported_in_the_order_of_the_table() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);
    let long = "ü".repeat(1001);
    let cases = [
        (
            json!({"metadata": ["x"], "imageData": "!!!!", "prompt": long}),
            vec![
                detail(Some(json!(long)), PROMPT_TOO_LONG, "prompt", "body"),
                detail(None, IMAGE_NOT_BASE64, "imageData", "body"),
                detail(Some(json!(["x"])), METADATA_MSG, "metadata", "body"),
            ],
        ),
        (
            json!({"metadata": null, "imageData": gif_base64(), "prompt": false}),
            vec![
                detail(Some(json!(false)), PROMPT_REQUIRED, "prompt", "body"),
                detail(None, IMAGE_FORMAT, "imageData", "body"),
                detail(Some(json!(null)), METADATA_MSG, "metadata", "body"),
            ],
        ),
    ];

    for (body, expected) in cases {
        // Act
        let response = app.post_image(&token, &body).await;

        // Assert
        assert_eq!(validation_details(response).await, expected);
    }
    assert!(app.storage_calls().is_empty());
    assert!(app.bdd_calls().is_empty());
}

// ------------------------------------------------------ validation: query

#[tokio::test]
async fn a_page_that_is_not_a_positive_integer_is_refused_with_its_value_as_a_string() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    for (raw, value) in [
        ("0", "0"),
        ("-1", "-1"),
        ("1.5", "1.5"),
        ("abc", "abc"),
        ("", ""),
    ] {
        // Act
        let response = app.get(&format!("/api/images?page={raw}"), &token).await;

        // Assert
        assert_eq!(
            validation_details(response).await,
            vec![detail(Some(json!(value)), PAGE_MSG, "page", "query")],
            "page={raw}"
        );
    }
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn a_limit_outside_1_to_100_is_refused_with_its_value_as_a_string() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    for raw in ["0", "101", "-5", "ten"] {
        // Act
        let response = app.get(&format!("/api/images?limit={raw}"), &token).await;

        // Assert
        assert_eq!(
            validation_details(response).await,
            vec![detail(Some(json!(raw)), LIMIT_MSG, "limit", "query")],
            "limit={raw}"
        );
    }
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn limits_of_1_100_and_plus_5_are_accepted() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    for (raw, expected) in [("1", 1u64), ("100", 100), ("%2B5", 5), ("+5", 5)] {
        app.bdd.clear_requests();

        // Act
        let response = app.get(&format!("/api/images?limit={raw}"), &token).await;

        // Assert
        assert_eq!(response.status(), 200, "limit={raw}");
        let calls = app.bdd_calls();
        assert_eq!(calls.len(), 1);
        let sent = calls[0].query_param("limit").expect("limit sent");
        assert_eq!(
            sent.trim_start_matches('+').parse::<u64>().ok(),
            Some(expected),
            "limit={raw} sent as {sent}"
        );
    }
}

#[tokio::test]
async fn a_status_not_in_the_list_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    for raw in ["archived", "Printed", ""] {
        // Act
        let response = app.get(&format!("/api/images?status={raw}"), &token).await;

        // Assert
        assert_eq!(
            validation_details(response).await,
            vec![detail(Some(json!(raw)), STATUS_MSG, "status", "query")],
            "status={raw}"
        );
    }
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn several_bad_query_parameters_are_all_reported_in_table_order() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    // Act
    let response = app
        .get("/api/images?status=nope&limit=0&page=x", &token)
        .await;

    // Assert
    assert_eq!(
        validation_details(response).await,
        vec![
            detail(Some(json!("x")), PAGE_MSG, "page", "query"),
            detail(Some(json!("0")), LIMIT_MSG, "limit", "query"),
            detail(Some(json!("nope")), STATUS_MSG, "status", "query"),
        ]
    );
}

#[tokio::test]
async fn a_query_parameter_given_twice_counts_by_its_first_value() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    // Act
    let accepted = app.get("/api/images?page=2&page=x", &token).await;
    let refused = app.get("/api/images?page=x&page=2", &token).await;

    // Assert
    assert_eq!(accepted.status(), 200);
    let calls = app.bdd_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].query_param("page").as_deref(), Some("2"));
    assert_eq!(
        validation_details(refused).await,
        vec![detail(Some(json!("x")), PAGE_MSG, "page", "query")]
    );
}

#[tokio::test]
async fn the_list_calls_the_bdd_with_default_page_1_and_limit_10() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    // Act
    let response = app.get("/api/images", &token).await;

    // Assert
    assert_eq!(response.status(), 200);
    let calls = app.bdd_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, Method::GET);
    assert_eq!(calls[0].path, "/api/images");
    assert_eq!(
        calls[0].query.as_deref(),
        Some(format!("userId={USER}&page=1&limit=10").as_str())
    );
}

#[tokio::test]
async fn the_list_passes_page_limit_and_status_to_the_bdd() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    // Act
    let response = app
        .get("/api/images?status=printed&limit=25&page=3", &token)
        .await;

    // Assert
    assert_eq!(response.status(), 200);
    let calls = app.bdd_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/api/images");
    assert_eq!(
        calls[0].query.as_deref(),
        Some(format!("userId={USER}&page=3&limit=25&status=printed").as_str())
    );
}

// ------------------------------------------------------ validation: params

#[tokio::test]
async fn an_invalid_image_id_is_refused_before_reaching_the_bdd() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);
    let long = "x".repeat(65);
    let cases: [(&str, &str); 6] = [
        ("..", ".."),
        ("%2E%2E", ".."),
        ("a%2Fb", "a/b"),
        ("a%3Fb", "a?b"),
        (&long, &long),
        ("a.b", "a.b"),
    ];

    for method in ["GET", "DELETE"] {
        for (sent, received) in cases {
            // Act
            let (status, body) =
                raw_request(&app, method, &format!("/api/images/{sent}"), &token).await;

            // Assert
            assert_eq!(status, 400, "{method} {sent}: {body}");
            assert_eq!(
                body,
                json!({"success": false, "error": "Erreur de validation", "details": [
                    detail(Some(json!(received)), ID_MSG, "id", "params")
                ]}),
                "{method} {sent}"
            );
        }
    }
    assert!(app.bdd_calls().is_empty());
    assert!(app.storage_calls().is_empty());
}

#[tokio::test]
async fn a_uuid_and_a_cuid_are_accepted_as_image_ids() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);
    let max_len = "a".repeat(64);

    for id in [UUID, CUID, max_len.as_str()] {
        app.bdd.clear_requests();

        // Act
        let response = app.get(&format!("/api/images/{id}"), &token).await;

        // Assert: it reached the BDD, which knows no such record.
        assert_error(response, 404, "Image non trouvée").await;
        let calls = app.bdd_calls();
        assert_eq!(calls.len(), 1, "{id}");
        assert_eq!(calls[0].method, Method::GET);
        assert_eq!(calls[0].path, format!("/api/images/{id}"));
    }
}

#[tokio::test]
async fn a_patch_with_a_bad_id_and_a_bad_status_reports_both_id_first() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    // Act
    let response = app.patch_status("a.b", &token, "bogus").await;

    // Assert
    assert_eq!(
        validation_details(response).await,
        vec![
            detail(Some(json!("a.b")), ID_MSG, "id", "params"),
            detail(Some(json!("bogus")), STATUS_MSG, "status", "body"),
        ]
    );
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn a_patch_with_a_missing_or_mistyped_status_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);
    let cases = [
        (json!({}), None),
        (json!({"status": 3}), Some(json!(3))),
        (json!({"status": null}), Some(json!(null))),
        (json!({"status": "PRINTED"}), Some(json!("PRINTED"))),
    ];

    for (body, value) in cases {
        // Act
        let response = app
            .authed(Method::PATCH, &format!("/api/images/{CUID}/status"), &token)
            .json(&body)
            .send()
            .await
            .expect("sent");

        // Assert
        assert_eq!(
            validation_details(response).await,
            vec![detail(value, STATUS_MSG, "status", "body")],
            "{body}"
        );
    }
    assert!(app.bdd_calls().is_empty());
}
