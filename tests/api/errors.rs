//! Errors common to all routes (contract §3, "Errors common to all routes"):
//! unknown paths, wrong methods, malformed JSON, a missing JSON content type,
//! and bodies or decoded images over their size limits.

use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

const USER: &str = "user_errors";

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
