//! `GET /metrics`: a scrape after some traffic shows the right counts.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use stand_ins::{Fault, FaultRule};

use crate::helpers::*;

/// The value of the sample of `name` carrying every label of `labels`.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

async fn scrape(app: &TestApp) -> String {
    let response = app.request(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    response.text().await.unwrap()
}

#[tokio::test]
async fn a_scrape_after_some_traffic_shows_the_right_counts() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token("user_m");

    // Act
    app.create_image(&token, "one").await;
    for _ in 0..2 {
        assert_eq!(app.get("/api/images", &token).await.status(), 200);
    }
    let missing = app
        .get("/api/images/cmissing00000000000000000", &token)
        .await;
    assert_eq!(missing.status(), 404);
    let unauthenticated = app
        .request(Method::GET, "/api/images")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    app.request(Method::GET, "/nope").send().await.unwrap();
    let text = scrape(&app).await;

    // Assert
    let requests = |route, method, status| {
        sample(
            &text,
            "http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(requests("/api/images", "POST", "201"), Some(1.0));
    assert_eq!(requests("/api/images", "GET", "200"), Some(2.0));
    assert_eq!(requests("/api/images", "GET", "401"), Some(1.0));
    assert_eq!(requests("/api/images/{id}", "GET", "404"), Some(1.0));
    assert_eq!(requests("unmatched", "GET", "404"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "http_request_duration_seconds_count",
            &[("route", "/api/images"), ("method", "GET")]
        ),
        Some(3.0)
    );
    assert!(text.contains("http_request_duration_seconds_bucket{"));

    let upstream = |service, outcome| {
        sample(
            &text,
            "upstream_requests_total",
            &[("service", service), ("outcome", outcome)],
        )
    };
    assert_eq!(upstream("storage", "ok"), Some(1.0));
    // create + two lists + the 404 read.
    assert_eq!(upstream("bdd", "ok"), Some(3.0));
    assert_eq!(upstream("bdd", "rejected"), Some(1.0));
    assert!(upstream("clerk", "ok").unwrap_or(0.0) >= 1.0);
    assert!(sample(&text, "jwks_fetches_total", &[("result", "ok")]).unwrap_or(0.0) >= 1.0);
    assert_eq!(sample(&text, "stored_bytes_total", &[]), Some(64.0));
    assert_eq!(sample(&text, "uploads_in_flight", &[]), Some(0.0));
    assert!(text.contains("upstream_request_duration_seconds_bucket{"));
}

#[tokio::test]
async fn invented_methods_share_one_label() {
    // Arrange
    let app = spawn_app().await;

    // Act
    for name in ["BREW", "WHEN", "BREW"] {
        let method = Method::from_bytes(name.as_bytes()).unwrap();
        app.request(method, "/api/health").send().await.unwrap();
    }
    let text = scrape(&app).await;

    // Assert
    assert_eq!(
        sample(
            &text,
            "http_requests_total",
            &[
                ("route", "/api/health"),
                ("method", "OTHER"),
                ("status", "405")
            ]
        ),
        Some(3.0)
    );
    assert!(!text.contains("BREW") && !text.contains("WHEN"));
}

#[tokio::test]
async fn upstream_failures_are_counted_by_outcome() {
    // Arrange
    let app = spawn_app_with(TestOptions::default().env("UPSTREAM_TIMEOUT_MS", "200")).await;
    let token = app.token("user_m");
    app.bdd.inject(
        FaultRule::new(Fault::Delay(Duration::from_millis(600)))
            .method(Method::GET)
            .times(1),
    );
    app.bdd
        .inject(FaultRule::new(Fault::Status(500)).method(Method::GET));

    // Act
    let timed_out = app.get("/api/images", &token).await;
    let failed = app.get("/api/images", &token).await;
    let text = scrape(&app).await;

    // Assert
    assert_eq!(timed_out.status(), 504);
    assert_eq!(failed.status(), 502);
    let upstream = |outcome| {
        sample(
            &text,
            "upstream_requests_total",
            &[("service", "bdd"), ("outcome", outcome)],
        )
    };
    assert_eq!(upstream("timeout"), Some(1.0));
    assert_eq!(upstream("failed"), Some(1.0));
}

#[tokio::test]
async fn failed_background_jwks_refreshes_are_counted() {
    // Arrange: refresh every 100 ms, the JWKS failing after the first load.
    let app = spawn_app_with(
        TestOptions::default().tweak(|c| c.clerk.refresh_interval = Duration::from_millis(100)),
    )
    .await;
    wait_until("the start-up JWKS fetch", || app.jwks_fetches() >= 1).await;
    app.clerk.inject(FaultRule::new(Fault::Status(500)));

    // Act
    tokio::time::sleep(Duration::from_millis(450)).await;
    let text = scrape(&app).await;

    // Assert
    assert!(
        sample(&text, "jwks_refresh_failures_total", &[]).unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    assert!(sample(&text, "jwks_fetches_total", &[("result", "error")]).unwrap_or(0.0) >= 2.0);
    let still_valid = app
        .post_image(
            &app.token("user_m"),
            &json!({"prompt": "p", "imageData": png_base64(16)}),
        )
        .await;
    assert_eq!(still_valid.status(), 201);
}

#[tokio::test]
async fn samples_folded_by_the_background_upkeep_are_all_still_counted() {
    // Arrange
    let app = spawn_app().await;

    // Act: traffic, then past an upkeep, then more traffic.
    for _ in 0..5 {
        app.request(Method::GET, "/api/health")
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for _ in 0..3 {
        app.request(Method::GET, "/api/health")
            .send()
            .await
            .unwrap();
    }
    let text = scrape(&app).await;

    // Assert
    let count = sample(
        &text,
        "http_request_duration_seconds_count",
        &[("route", "/api/health"), ("method", "GET")],
    );
    assert_eq!(count, Some(8.0), "{text}");
}
