//! Hostile clients: header size and read time (slowloris), body read time,
//! the connection cap, and back-pressure on uploads.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use stand_ins::{Fault, FaultRule};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

fn host_port(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection or `limit` passes; returns what came.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&received).into_owned()),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn oversized_headers_are_refused_with_431() {
    let app = spawn_app().await;
    let response = app
        .request(Method::GET, "/api/health")
        .header("x-padding", "a".repeat(100 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
}

#[tokio::test]
async fn a_client_sending_headers_too_slowly_is_disconnected() {
    // Arrange
    let app = spawn_app_with(
        TestOptions::default().tweak(|c| c.header_read_timeout = Duration::from_millis(300)),
    )
    .await;
    let mut stream = TcpStream::connect(host_port(&app)).await.unwrap();

    // Act: half a request head, then nothing.
    stream
        .write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let outcome = read_until_closed(&mut stream, Duration::from_secs(3)).await;

    // Assert
    let received = outcome.expect("the server closed the connection");
    assert!(!received.contains("200 OK"), "{received}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_body_sent_too_slowly_answers_408_and_reaches_no_upstream() {
    // Arrange
    let app = spawn_app_with(
        TestOptions::default().tweak(|c| c.body_read_timeout = Duration::from_millis(300)),
    )
    .await;
    let token = app.token("user_slow");
    let mut stream = TcpStream::connect(host_port(&app)).await.unwrap();
    let head = format!(
        "POST /api/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"prompt\":"
    );

    // Act
    stream.write_all(head.as_bytes()).await.unwrap();
    let received = read_until_closed(&mut stream, Duration::from_secs(3))
        .await
        .unwrap_or_default();

    // Assert
    assert!(received.starts_with("HTTP/1.1 408"), "{received}");
    assert!(received.contains("\"success\":false"), "{received}");
    assert!(app.storage_calls().is_empty());
    assert!(app.bdd_calls().is_empty());
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_frees() {
    // Arrange: two idle connections take both places.
    let app = spawn_app_with(TestOptions::default().tweak(|c| c.max_connections = 2)).await;
    let first = TcpStream::connect(host_port(&app)).await.unwrap();
    let _second = TcpStream::connect(host_port(&app)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Act
    let waiting = tokio::spawn({
        let url = format!("{}/api/health", app.address);
        async move { reqwest::get(url).await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served_while_full = waiting.is_finished();
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("served once a place frees")
        .unwrap()
        .unwrap();

    // Assert
    assert!(
        !served_while_full,
        "a third connection was served beyond the cap"
    );
    assert_eq!(status, 200);
}

#[tokio::test]
async fn creates_beyond_the_upload_slots_get_a_clean_503_with_retry_after() {
    // Arrange: one slot, held by an upload Storage answers slowly.
    let app = spawn_app_with(TestOptions::default().tweak(|c| {
        c.max_uploads_in_flight = 1;
        c.upload_slot_wait = Duration::from_millis(100);
    }))
    .await;
    app.storage
        .inject(FaultRule::new(Fault::Delay(Duration::from_millis(600))).method(Method::POST));
    let token = app.token("user_busy");
    // Big enough that a refused client is still sending when it is refused.
    let body = json!({"prompt": "p", "imageData": png_base64(3 << 20)});

    // Act
    let (a, b, c) = tokio::join!(
        app.post_image(&token, &body),
        app.post_image(&token, &body),
        app.post_image(&token, &body),
    );
    let answers = vec![a, b, c];

    // Assert
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![201, 503, 503]);
    for answer in answers.into_iter().filter(|r| r.status() == 503) {
        assert_eq!(answer.headers()["retry-after"], "1");
        let body = json_body(answer).await;
        assert_eq!(body["success"], false);
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(app.objects().len(), 1);
    assert_eq!(app.bdd.records().len(), 1);
}

#[tokio::test]
async fn a_status_body_over_64_kib_is_refused_with_413() {
    let app = spawn_app().await;
    let token = app.token("user_a");
    let id = app.create_image(&token, "p").await["image_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let response = app
        .authed(Method::PATCH, &format!("/api/images/{id}/status"), &token)
        .json(&json!({"status": "printed", "padding": "x".repeat(70 * 1024)}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 413);
    assert_eq!(
        json_body(response).await,
        json!({"success": false, "error": "Image trop volumineuse"})
    );
}

#[tokio::test]
async fn a_status_body_over_a_smaller_max_body_bytes_is_refused_with_413() {
    let app = spawn_app_with(TestOptions::default().env("MAX_BODY_BYTES", "4096")).await;
    let token = app.token("user_a");
    let id = app.create_image(&token, "p").await["image_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let response = app
        .authed(Method::PATCH, &format!("/api/images/{id}/status"), &token)
        .json(&json!({"status": "printed", "padding": "x".repeat(8 * 1024)}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 413);
}
