//! Hostile clients: header size and read time (slowloris), body read time,
//! the connection cap, and back-pressure on uploads.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use stand_ins::{Fault, FaultRule};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

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
    let mut stream = TcpStream::connect(app.host()).await.unwrap();

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
    let mut stream = TcpStream::connect(app.host()).await.unwrap();
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
async fn connections_beyond_the_cap_wait_while_every_one_is_busy() {
    // Arrange: ten places, each connection with a list the BDD answers
    // slowly, opened one at a time so each is busy before the next comes.
    let app = spawn_app_with(TestOptions::default().tweak(|c| c.max_connections = 10)).await;
    app.bdd
        .inject(FaultRule::new(Fault::Delay(Duration::from_millis(1500))).times(10));
    let token = app.token("user_busy");
    let mut busy = Vec::new();
    for i in 1..=10 {
        let request = app.authed(Method::GET, "/api/images", &token);
        busy.push(tokio::spawn(async move {
            request.send().await.map(|r| r.status().as_u16())
        }));
        let deadline = Instant::now() + Duration::from_secs(2);
        while app.bdd_calls().len() < i && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // Act
    let started = Instant::now();
    let health = reqwest::get(format!("{}/api/health", app.address))
        .await
        .unwrap();

    // Assert: served only once a busy connection freed its place.
    assert_eq!(health.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "served beyond the cap after {:?}",
        started.elapsed()
    );
    for answer in busy {
        assert_eq!(answer.await.unwrap().unwrap(), 200);
    }
}

#[tokio::test]
async fn idle_connections_are_closed_first_when_the_table_is_full() {
    // Arrange: ten places; nine sockets that send nothing fill 90 % of them.
    let app = spawn_app_with(TestOptions::default().tweak(|c| c.max_connections = 10)).await;
    let mut idle = Vec::new();
    for _ in 0..9 {
        idle.push(TcpStream::connect(app.host()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Act
    let started = Instant::now();
    let health = reqwest::get(format!("{}/api/health", app.address))
        .await
        .unwrap();
    let waited = started.elapsed();

    // Assert: served at once, and the longest-idle socket was closed for it.
    assert_eq!(health.status(), 200);
    assert!(waited < Duration::from_millis(200), "{waited:?}");
    let first = read_until_closed(&mut idle[0], Duration::from_secs(1)).await;
    assert_eq!(
        first.as_deref(),
        Some(""),
        "the oldest idle socket is closed"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_5_s() {
    let app = spawn_app().await;
    let mut stream = TcpStream::connect(app.host()).await.unwrap();
    let started = Instant::now();
    let outcome = read_until_closed(&mut stream, Duration::from_secs(8)).await;
    assert!(outcome.is_some(), "still open after 8 s");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(4500) && after < Duration::from_millis(6500),
        "{after:?}"
    );
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
    let tokens: Vec<String> = (0..3)
        .map(|i| app.token(&format!("user_busy{i}")))
        .collect();
    // Big enough that a refused client is still sending when it is refused.
    let body = json!({"prompt": "p", "imageData": png_base64(3 << 20)});

    // Act: three users, one slot.
    let (a, b, c) = tokio::join!(
        app.post_image(&tokens[0], &body),
        app.post_image(&tokens[1], &body),
        app.post_image(&tokens[2], &body),
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
