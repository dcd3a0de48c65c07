//! Behaviour shared by every route: common errors, the validation table,
//! health and readiness, CORS, security headers, request ids, graceful
//! shutdown (contract §3 and §6).

use crate::helpers::*;

use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use serde_json::{json, Value};
use stand_ins::{Fault, FaultRule};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USER: &str = "user_behaviour";
const CUID: &str = "clx2k9abc0000qwerty123456";
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

const SECURITY_HEADERS: [(&str, &str); 9] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "SAMEORIGIN"),
    ("referrer-policy", "no-referrer"),
    (
        "strict-transport-security",
        "max-age=15552000; includeSubDomains",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("x-dns-prefetch-control", "off"),
    ("x-permitted-cross-domain-policies", "none"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
];

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

fn cors_header_names(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

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

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
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

async fn ready(app: &TestApp) -> (u16, Value) {
    let response = app
        .request(Method::GET, "/api/ready")
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, json_body(response).await)
}

/// Polls `/api/ready` until the key set is reported loaded (or a deadline).
async fn ready_once_keys_loaded(app: &TestApp) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, body) = ready(app).await;
        if body["checks"]["auth"] == json!("ok") || Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn gif_base64() -> String {
    base64::engine::general_purpose::STANDARD.encode(b"GIF89a\x01\x00\x01\x00\x80\x00\x00")
}

// ------------------------------------------------- errors common to all routes

#[tokio::test]
async fn an_unknown_path_answers_404_route_non_trouvee() {
    // Arrange
    let app = spawn_app().await;

    for path in ["/nope", "/api/imagesX"] {
        // Act
        let response = app.request(Method::GET, path).send().await.expect("sent");

        // Assert
        assert_error(response, 404, "Route non trouvée").await;
    }
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn a_known_path_with_a_wrong_method_answers_405_with_an_allow_header() {
    // Arrange
    let app = spawn_app().await;
    let cases = [
        (Method::PUT, "/api/images", vec!["GET", "POST"]),
        (Method::POST, "/api/health", vec!["GET"]),
    ];

    for (method, path, expected) in cases {
        // Act
        let response = app
            .request(method.clone(), path)
            .send()
            .await
            .expect("sent");

        // Assert
        assert_eq!(response.status(), 405, "{method} {path}");
        let allow = header(&response, "allow").expect("an Allow header");
        let allowed: Vec<String> = allow.split(',').map(|m| m.trim().to_owned()).collect();
        for m in expected {
            assert!(allowed.iter().any(|a| a == m), "{allow} lacks {m}");
        }
        assert!(!allowed.iter().any(|a| a == method.as_str()), "{allow}");
        let body = json_body(response).await;
        assert_eq!(body["success"], json!(false), "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
        assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{body}");
    }
}

#[tokio::test]
async fn malformed_json_answers_400_json_invalide_on_post_and_patch() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    for (method, path) in [
        (Method::POST, "/api/images".to_string()),
        (Method::PATCH, format!("/api/images/{CUID}/status")),
    ] {
        // Act
        let response = app
            .authed(method, &path, &token)
            .header(CONTENT_TYPE, "application/json")
            .body(r#"{"prompt": "a fox", "imageData": "#)
            .send()
            .await
            .expect("sent");

        // Assert
        assert_error(response, 400, "JSON invalide").await;
    }
    assert!(app.bdd_calls().is_empty());
    assert!(app.storage_calls().is_empty());
}

#[tokio::test]
async fn a_body_without_a_json_content_type_answers_415_on_post_and_patch() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);
    let post_body = json!({"prompt": "a fox", "imageData": png_base64(64)}).to_string();
    let patch_body = json!({"status": "printed"}).to_string();
    let targets = [
        (Method::POST, "/api/images".to_string(), post_body),
        (
            Method::PATCH,
            format!("/api/images/{CUID}/status"),
            patch_body,
        ),
    ];

    for (method, path, body) in targets {
        for content_type in [Some("text/plain"), None] {
            // Act
            let mut request = app.authed(method.clone(), &path, &token).body(body.clone());
            if let Some(ct) = content_type {
                request = request.header(CONTENT_TYPE, ct);
            }
            let response = request.send().await.expect("sent");

            // Assert
            assert_error(response, 415, "Content-Type application/json requis").await;
        }
    }
    assert!(app.bdd_calls().is_empty());
    assert!(app.storage_calls().is_empty());
}

#[tokio::test]
async fn a_body_over_max_body_bytes_answers_413() {
    // Arrange
    let app = spawn_app_with(TestOptions::default().env("MAX_BODY_BYTES", "2000")).await;
    let token = app.token(USER);
    let body = json!({"prompt": "a fox", "imageData": png_base64(3000)});

    // Act
    let response = app.post_image(&token, &body).await;

    // Assert
    assert_error(response, 413, "Image trop volumineuse").await;
    assert!(app.storage_calls().is_empty());
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn a_decoded_image_over_max_image_bytes_answers_413() {
    // Arrange
    let app = spawn_app_with(TestOptions::default().env("MAX_IMAGE_BYTES", "1000")).await;
    let token = app.token(USER);
    let body = json!({"prompt": "a fox", "imageData": png_base64(1001)});

    // Act
    let response = app.post_image(&token, &body).await;

    // Assert
    assert_error(response, 413, "Image trop volumineuse").await;
    assert!(app.storage_calls().is_empty());
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn an_image_of_exactly_max_image_bytes_is_accepted() {
    // Arrange
    let app = spawn_app_with(TestOptions::default().env("MAX_IMAGE_BYTES", "1000")).await;
    let token = app.token(USER);
    let body = json!({"prompt": "a fox", "imageData": png_base64(1000)});

    // Act
    let response = app.post_image(&token, &body).await;

    // Assert
    assert_eq!(response.status(), 201);
    assert_eq!(app.objects().len(), 1);
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

// ------------------------------------------------------------------ CORS

#[tokio::test]
async fn the_frontend_origin_gets_cors_headers_with_credentials() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app
        .request(Method::GET, "/api/health")
        .header("origin", FRONTEND)
        .send()
        .await
        .expect("sent");

    // Assert
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "access-control-allow-origin").as_deref(),
        Some(FRONTEND)
    );
    assert_eq!(
        header(&response, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
}

#[tokio::test]
async fn a_preflight_from_the_frontend_answers_204_with_methods_and_the_asked_headers() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app
        .request(Method::OPTIONS, "/api/images")
        .header("origin", FRONTEND)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("sent");

    // Assert
    assert_eq!(response.status(), 204);
    assert_eq!(
        header(&response, "access-control-allow-origin").as_deref(),
        Some(FRONTEND)
    );
    assert_eq!(
        header(&response, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        header(&response, "access-control-allow-methods").as_deref(),
        Some("GET, POST, PATCH, DELETE, OPTIONS")
    );
    let allowed: Vec<String> = header(&response, "access-control-allow-headers")
        .expect("allow-headers")
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    assert_eq!(allowed, vec!["authorization", "content-type"]);
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn another_origin_gets_no_cors_header_on_a_simple_request_or_a_preflight() {
    // Arrange
    let app = spawn_app().await;
    let evil = "http://evil.test";

    // Act
    let simple = app
        .request(Method::GET, "/api/health")
        .header("origin", evil)
        .send()
        .await
        .expect("sent");
    let preflight = app
        .request(Method::OPTIONS, "/api/images")
        .header("origin", evil)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("sent");

    // Assert
    assert_eq!(simple.status(), 200);
    assert_eq!(cors_header_names(&simple), Vec::<String>::new());
    assert_eq!(cors_header_names(&preflight), Vec::<String>::new());
}

#[tokio::test]
async fn every_origin_of_a_comma_list_is_allowed() {
    // Arrange
    let app =
        spawn_app_with(TestOptions::default().env("FRONTEND_URL", "http://a.test,http://b.test"))
            .await;

    for origin in ["http://a.test", "http://b.test"] {
        // Act
        let response = app
            .request(Method::GET, "/api/health")
            .header("origin", origin)
            .send()
            .await
            .expect("sent");

        // Assert
        assert_eq!(
            header(&response, "access-control-allow-origin").as_deref(),
            Some(origin)
        );
        assert_eq!(
            header(&response, "access-control-allow-credentials").as_deref(),
            Some("true")
        );
    }
    // The default origin is no longer in the list.
    let other = app
        .request(Method::GET, "/api/health")
        .header("origin", FRONTEND)
        .send()
        .await
        .expect("sent");
    assert_eq!(cors_header_names(&other), Vec::<String>::new());
}

// ------------------------------------------------------ security headers

#[tokio::test]
async fn security_headers_are_on_a_success_a_401_and_a_404() {
    // Arrange
    let app = spawn_app().await;
    let cases = [("/api/health", 200), ("/api/images", 401), ("/nope", 404)];

    for (path, status) in cases {
        // Act
        let response = app.request(Method::GET, path).send().await.expect("sent");

        // Assert
        assert_eq!(response.status(), status, "{path}");
        for (name, value) in SECURITY_HEADERS {
            assert_eq!(
                header(&response, name).as_deref(),
                Some(value),
                "{name} on {path}"
            );
        }
    }
}

// ------------------------------------------------------------ request id

#[tokio::test]
async fn a_sent_request_id_is_echoed_and_forwarded_upstream() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);

    for id in ["req-1234_abcd.5678", "trace@host#1~{x}|\"q\""] {
        app.bdd.clear_requests();

        // Act
        let response = app
            .authed(Method::GET, "/api/images", &token)
            .header("x-request-id", id)
            .send()
            .await
            .expect("sent");

        // Assert
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-request-id").as_deref(), Some(id));
        let calls = app.bdd_calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].header("x-request-id"), Some(id));
    }
}

#[tokio::test]
async fn a_missing_request_id_is_generated_as_a_uuid() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let first = app
        .request(Method::GET, "/api/health")
        .send()
        .await
        .expect("sent");
    let second = app
        .request(Method::GET, "/api/health")
        .send()
        .await
        .expect("sent");

    // Assert
    let first = header(&first, "x-request-id").expect("a request id");
    let second = header(&second, "x-request-id").expect("a request id");
    assert!(is_uuid(&first), "{first}");
    assert!(is_uuid(&second), "{second}");
    assert_ne!(first, second);
}

#[tokio::test]
async fn a_request_id_with_spaces_or_over_128_characters_is_replaced() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);
    let long = "a".repeat(129);

    for sent in ["has some spaces", long.as_str()] {
        app.bdd.clear_requests();

        // Act
        let response = app
            .authed(Method::GET, "/api/images", &token)
            .header("x-request-id", sent)
            .send()
            .await
            .expect("sent");

        // Assert
        assert_eq!(response.status(), 200);
        let echoed = header(&response, "x-request-id").expect("a request id");
        assert_ne!(echoed, sent);
        assert!(is_uuid(&echoed), "{echoed}");
        let calls = app.bdd_calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].header("x-request-id"), Some(echoed.as_str()));
    }
}

// ------------------------------------------------------ graceful shutdown

#[tokio::test]
async fn a_request_in_flight_completes_when_the_service_stops_and_new_connections_are_refused() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token(USER);
    app.bdd.inject(
        FaultRule::new(Fault::Delay(Duration::from_millis(500)))
            .method(Method::GET)
            .path_prefix("/api/images"),
    );
    let client = app.client.clone();
    let url = format!("{}/api/images", app.address);
    let host = app.host().to_owned();
    let in_flight = tokio::spawn(async move { client.get(url).bearer_auth(token).send().await });
    wait_until("the request to reach the BDD", || {
        !app.bdd_calls().is_empty()
    })
    .await;

    // Act
    let stopping = tokio::time::timeout(Duration::from_secs(3), app.stop()).await;

    // Assert
    assert!(stopping.is_ok(), "stop did not finish");
    let response = in_flight
        .await
        .expect("request task")
        .expect("the request in flight got an answer");
    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(body["success"], json!(true), "{body}");
    assert!(
        tokio::net::TcpStream::connect(&host).await.is_err(),
        "still accepting connections after stop"
    );
}

// -------------------------------------------------------------- dev stack
