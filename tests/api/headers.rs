//! Headers on every answer (contract §6): the security set, and
//! `X-Request-Id` taken from the request or generated, echoed, and sent
//! upstream.

use reqwest::Method;

use crate::helpers::*;

const USER: &str = "user_headers";

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

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
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
