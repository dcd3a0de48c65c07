//! CORS (contract §6): the `FRONTEND_URL` origins only, with credentials,
//! the contract's methods and the asked headers; other origins get no CORS
//! header at all.

use reqwest::Method;

use crate::helpers::*;

fn cors_header_names(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

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
    // A page reads the request id, when to retry, why it was refused, and
    // whether a create was a replay.
    assert_eq!(
        header(&response, "access-control-expose-headers").as_deref(),
        Some("x-request-id, retry-after, www-authenticate, idempotent-replayed")
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
