//! Hostile clients (contract §9, and the owner and leak rows of §3 and §4):
//! each attack found on the running service, replayed. Attacks on memory and
//! sockets drive the built binary over real sockets and read its peak memory
//! from `/proc/<pid>/status`; the figures are printed for SECURITY.md.
//!
//! A test binary of its own, so its measurements never share the machine
//! with the rest of the suite; its tests also run one at a time.

use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use stand_ins::{Fault, FaultRule};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "../common/mod.rs"]
mod common;
#[path = "../api/helpers.rs"]
mod helpers;
use helpers::*;

/// Held by every test here: what one measures is never shared with another.
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: u64 = 1024 * 1024;

/// The built binary, against `stand_ins`' upstreams, on a free port.
struct Binary {
    child: tokio::process::Child,
    base: String,
    port: u16,
}

impl Binary {
    async fn start(stand_ins: &TestApp, env: &[(&str, &str)]) -> Self {
        let env: Vec<(&str, &str)> = [("LOG_LEVEL", "warn")]
            .into_iter()
            .chain(env.iter().copied())
            .collect();
        let (child, base) = start_binary(stand_ins, "hostile", Stdio::null(), &env).await;
        let port = base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the base URL");
        Self { child, base, port }
    }

    /// A `/proc/<pid>/status` figure, in bytes (`VmHWM`: peak resident memory).
    fn memory(&self, field: &str) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .expect("a memory figure")
            * 1024
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A create body whose `metadata` is the JSON text `metadata`.
fn create_body_with_metadata(metadata: &str) -> Vec<u8> {
    format!(
        r#"{{"prompt":"p","imageData":"{}","metadata":{metadata}}}"#,
        png_base64(64)
    )
    .into_bytes()
}

/// `[0,0,…]` of `items` zeros: two bytes an item.
fn zeros_array(items: usize) -> String {
    let mut text = String::with_capacity(items * 2 + 2);
    text.push('[');
    for i in 0..items {
        if i > 0 {
            text.push(',');
        }
        text.push('0');
    }
    text.push(']');
    text
}

/// `{"k0":0,"k1":0,…}` of `keys` keys.
fn many_keys(keys: usize) -> String {
    let mut text = String::with_capacity(keys * 12);
    text.push('{');
    for i in 0..keys {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!("\"k{i}\":0"));
    }
    text.push('}');
    text
}

async fn post_raw(base: &str, token: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/api/images"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// What the server sent within `limit` (or until it closed).
async fn read_for(stream: &mut TcpStream, limit: Duration) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// Opens a create whose head announces `length` bytes, then sends nothing.
async fn stalled_create(addr: &str, token: &str, length: u64, expect_continue: bool) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let expect = if expect_continue {
        "Expect: 100-continue\r\n"
    } else {
        ""
    };
    let head = format!(
        "POST /api/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n{expect}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

fn status_of(answer: &str) -> Option<u16> {
    answer
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .find(|&s| s != 100)
}

// ------------------------------------------------------------------ memory

#[tokio::test]
async fn a_48_mb_metadata_array_costs_less_than_3x_its_size_and_is_never_echoed() {
    let _measuring = MEASURING.lock().await;
    // Arrange
    let stand_ins = spawn_app().await;
    let service = Binary::start(&stand_ins, &[]).await;
    let body = create_body_with_metadata(&zeros_array(24_000_000));
    let size = body.len() as u64;
    let before = service.memory("VmHWM:");

    // Act
    let answer = post_raw(&service.base, &stand_ins.token("user_mem"), body).await;

    // Assert
    assert_eq!(answer.status(), 400);
    let text = answer.text().await.unwrap();
    assert!(
        text.len() < 4096,
        "the array was echoed: {} bytes",
        text.len()
    );
    let details: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        details["details"],
        json!([{"type": "field", "msg": "Les métadonnées doivent être un objet", "path": "metadata", "location": "body"}])
    );
    let peak = service.memory("VmHWM:");
    println!(
        "48 MB metadata array: body {} MiB, peak memory {} -> {} MiB",
        size / MIB,
        before / MIB,
        peak / MIB
    );
    assert!(
        peak - before < 3 * size,
        "grew {} MiB",
        (peak - before) / MIB
    );
    assert!(stand_ins.bdd_calls().is_empty() && stand_ins.storage_calls().is_empty());
}

#[tokio::test]
async fn a_metadata_object_of_3_million_keys_is_refused_without_being_built() {
    let _measuring = MEASURING.lock().await;
    // Arrange
    let stand_ins = spawn_app().await;
    let service = Binary::start(&stand_ins, &[]).await;
    let body = create_body_with_metadata(&many_keys(3_000_000));
    let size = body.len() as u64;
    let before = service.memory("VmHWM:");

    // Act
    let answer = post_raw(&service.base, &stand_ins.token("user_mem"), body).await;

    // Assert
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        body["details"][0]["msg"],
        "Les métadonnées sont trop volumineuses"
    );
    assert!(body["details"][0].get("value").is_none());
    let peak = service.memory("VmHWM:");
    println!(
        "3 million metadata keys: body {} MiB, peak memory {} -> {} MiB",
        size / MIB,
        before / MIB,
        peak / MIB
    );
    assert!(
        peak - before < 3 * size,
        "grew {} MiB",
        (peak - before) / MIB
    );
    assert!(stand_ins.bdd_calls().is_empty(), "nothing reaches the BDD");
}

#[tokio::test]
async fn eight_48_mb_hostile_bodies_at_once_keep_the_process_under_512_mib() {
    let _measuring = MEASURING.lock().await;
    // Arrange: eight users, eight slots.
    let stand_ins = spawn_app().await;
    let service = Binary::start(&stand_ins, &[]).await;
    let body = create_body_with_metadata(&zeros_array(24_000_000));

    // Act
    let answers = futures_join_all((0..8).map(|i| {
        let (base, token, body) = (
            service.base.clone(),
            stand_ins.token(&format!("user_mem{i}")),
            body.clone(),
        );
        async move { post_raw(&base, &token, body).await }
    }))
    .await;

    // Assert
    for answer in answers {
        assert_eq!(answer.status(), 400, "{:?}", answer.text().await);
    }
    let peak = service.memory("VmHWM:");
    println!("eight 48 MB bodies at once: peak memory {} MiB", peak / MIB);
    assert!(peak < 512 * MIB, "peak {} MiB", peak / MIB);
}

/// Runs every future on its own task and collects their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

// ----------------------------------------------------------------- sockets

#[tokio::test]
async fn a_content_length_over_the_limit_is_refused_before_100_continue() {
    let _measuring = MEASURING.lock().await;
    // Arrange
    let stand_ins = spawn_app().await;
    let service = Binary::start(&stand_ins, &[]).await;
    let token = stand_ins.token("user_big");

    for expect_continue in [true, false] {
        // Act
        let mut stream = stalled_create(&service.addr(), &token, 60_000_000, expect_continue).await;
        let answer = read_for(&mut stream, Duration::from_secs(2)).await;

        // Assert
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(!answer.contains("100 Continue"), "{answer}");
        assert!(answer.contains(r#"{"success":false,"error":"Image trop volumineuse"}"#));
    }
}

#[tokio::test]
async fn one_user_holding_upload_sockets_cannot_stop_other_users_creates() {
    let _measuring = MEASURING.lock().await;
    // Arrange: user A opens eight creates announcing 14 MB, then sends nothing.
    let stand_ins = spawn_app().await;
    let service = Binary::start(&stand_ins, &[]).await;
    let attacker = stand_ins.token("user_attacker");
    let mut sockets = Vec::new();
    for i in 0..8 {
        // Half wait for 100 Continue, half just stall.
        sockets.push(stalled_create(&service.addr(), &attacker, 14_000_000, i % 2 == 0).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Act: user B creates an image meanwhile.
    let started = Instant::now();
    let other = post_raw(
        &service.base,
        &stand_ins.token("user_other"),
        serde_json::to_vec(&json!({"prompt": "p", "imageData": png_base64(1024)})).unwrap(),
    )
    .await;
    let other_latency = started.elapsed();
    let answers = futures_join_all(sockets.into_iter().map(|mut s| async move {
        let started = Instant::now();
        let answer = read_for(&mut s, Duration::from_secs(9)).await;
        (status_of(&answer), started.elapsed(), answer)
    }))
    .await;

    // Assert
    assert_eq!(other.status(), 201);
    println!("another user's create while one user holds 8 upload sockets: {other_latency:?}");
    assert!(other_latency < Duration::from_secs(2), "{other_latency:?}");
    let mut statuses: Vec<u16> = answers.iter().filter_map(|(s, _, _)| *s).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        vec![408, 408, 429, 429, 429, 429, 429, 429],
        "{answers:#?}"
    );
    for (status, _, answer) in &answers {
        if *status == Some(429) {
            assert!(answer.contains("Retry-After: 1") || answer.contains("retry-after: 1"));
            assert!(
                answer.contains("Trop de téléversements simultanés"),
                "{answer}"
            );
        }
    }
}

#[tokio::test]
async fn under_1400_idle_sockets_health_answers_within_200_ms_and_the_health_check_passes() {
    let _measuring = MEASURING.lock().await;
    // Arrange: 1,400 connections that send nothing, reopened when closed.
    let stand_ins = spawn_app().await;
    let service = Binary::start(&stand_ins, &[]).await;
    // The attackers run on a runtime and thread of their own, so the client
    // measured below is not queued behind 1,400 tasks of its own process.
    let stop = tokio_util::sync::CancellationToken::new();
    let attackers = {
        let (addr, stop) = (service.addr(), stop.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut tasks = Vec::new();
                for _ in 0..1400 {
                    let (addr, stop) = (addr.clone(), stop.clone());
                    tasks.push(tokio::spawn(async move {
                        while !stop.is_cancelled() {
                            let Ok(mut stream) = TcpStream::connect(&addr).await else {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            };
                            let mut buf = [0u8; 64];
                            tokio::select! {
                                _ = stream.read(&mut buf) => {}
                                () = stop.cancelled() => {}
                            }
                        }
                    }));
                }
                stop.cancelled().await;
                for task in tasks {
                    task.abort();
                }
            });
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Act: eight health checks from another client, each on a new connection.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut latencies = Vec::new();
    for _ in 0..8 {
        let started = Instant::now();
        let answer = client
            .get(format!("{}/api/health", service.base))
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap();
        latencies.push(started.elapsed());
        assert_eq!(answer.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let check = tokio::process::Command::new(BIN)
        .arg("healthcheck")
        .env_clear()
        .env("PORT", service.port.to_string())
        .output()
        .await
        .unwrap();
    stop.cancel();
    attackers.join().unwrap();

    // Assert
    println!("health under 1,400 idle sockets: {latencies:?}");
    let worst = latencies.iter().max().copied().unwrap_or_default();
    assert!(worst < Duration::from_millis(200), "{latencies:?}");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[tokio::test]
async fn a_body_slower_than_the_minimum_rate_is_cut_with_408_and_frees_its_slot() {
    let _measuring = MEASURING.lock().await;
    // Arrange: one slot per user; a 1 s grace to keep the test short.
    let app = spawn_app_with(
        TestOptions::default()
            .env("MAX_UPLOADS_PER_USER", "1")
            .env("MIN_BODY_RATE_BYTES_PER_SEC", "65536")
            .tweak(|c| c.body_grace = Duration::from_secs(1)),
    )
    .await;
    let token = app.token("user_slow");
    let addr = app.host().to_owned();
    let mut slow = stalled_create(&addr, &token, 100_000, false).await;

    // Act: 1 KiB a second.
    let started = Instant::now();
    let trickle = async {
        for _ in 0..5 {
            if slow.write_all(&[b' '; 1024]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        read_for(&mut slow, Duration::from_secs(3)).await
    };
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        app.post_image(&token, &json!({"prompt": "p", "imageData": png_base64(64)}))
            .await
            .status()
            .as_u16()
    };
    let (answer, second) = tokio::join!(trickle, second);

    // Assert: the slow body was cut after the grace; while it held the
    // user's one slot, a second create got 429.
    assert_eq!(status_of(&answer), Some(408), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(second, 429);
    let after = app
        .post_image(&token, &json!({"prompt": "p", "imageData": png_base64(64)}))
        .await;
    assert_eq!(after.status(), 201, "the slot was freed");
    assert!(app
        .storage_calls()
        .iter()
        .all(|c| c.method != Method::POST || c.body.len() < 1000));
}

// ------------------------------------------------------ metadata limits

#[tokio::test]
async fn metadata_of_16_kib_and_16_levels_is_accepted_and_one_more_is_refused() {
    let _measuring = MEASURING.lock().await;
    let app = spawn_app().await;
    let token = app.token("user_meta");
    let post = |metadata: Value| {
        let app = &app;
        let token = token.clone();
        async move {
            app.post_image(
                &token,
                &json!({"prompt": "p", "imageData": png_base64(64), "metadata": metadata}),
            )
            .await
        }
    };
    // {"a":"xxx…"}: 8 bytes of JSON around the string.
    let exactly_16_kib = json!({"a": "x".repeat(16 * 1024 - 8)});
    assert_eq!(exactly_16_kib.to_string().len(), 16 * 1024);
    let mut deep = json!(1);
    for _ in 0..16 {
        deep = json!({ "d": deep });
    }
    let too_deep = json!({ "d": deep.clone() });

    assert_eq!(post(exactly_16_kib).await.status(), 201);
    assert_eq!(post(deep).await.status(), 201);
    let over = post(json!({"a": "x".repeat(16 * 1024 - 7)})).await;
    assert_eq!(over.status(), 400);
    let over = json_body(over).await;
    assert_eq!(
        over["details"],
        json!([{"type": "field", "msg": "Les métadonnées sont trop volumineuses", "path": "metadata", "location": "body"}]),
        "over 4 KiB: not echoed"
    );
    let deeper = post(too_deep.clone()).await;
    assert_eq!(deeper.status(), 400);
    let deeper = json_body(deeper).await;
    assert_eq!(
        deeper["details"][0]["msg"],
        "Les métadonnées sont trop volumineuses"
    );
    assert_eq!(deeper["details"][0]["value"], too_deep, "small: echoed");
}

#[tokio::test]
async fn a_rejected_prompt_over_4_kib_is_not_echoed() {
    let _measuring = MEASURING.lock().await;
    let app = spawn_app().await;
    let answer = app
        .post_image(
            &app.token("user_p"),
            &json!({"prompt": "x".repeat(5000), "imageData": png_base64(64)}),
        )
        .await;
    assert_eq!(answer.status(), 400);
    let body = json_body(answer).await;
    assert_eq!(
        body["details"][0]["msg"],
        "Le prompt ne peut pas dépasser 1000 caractères"
    );
    assert!(body["details"][0].get("value").is_none());
    let array = app
        .post_image(
            &app.token("user_p"),
            &json!({"prompt": vec![0; 3000], "imageData": png_base64(64)}),
        )
        .await;
    let body = json_body(array).await;
    assert_eq!(body["details"][0]["msg"], "Le prompt est requis");
    assert!(body["details"][0].get("value").is_none());
}

// ------------------------------------------- a BDD that ignores the owner

/// Record shapes whose owner cannot be proven to be `user_a`.
fn unprovable_records() -> Vec<(&'static str, String)> {
    let b = r#""user_b""#;
    vec![
        ("owner missing", r#"{"id":"x1","imageUrl":"u"}"#.to_owned()),
        (
            "owner an object",
            r#"{"id":"x1","userId":{"id":"user_a"}}"#.to_owned(),
        ),
        ("owner a number", r#"{"id":"x1","userId":42}"#.to_owned()),
        ("owner null", r#"{"id":"x1","userId":null}"#.to_owned()),
        (
            "owner given twice",
            r#"{"id":"x1","userId":"user_a","userId":"user_b"}"#.to_owned(),
        ),
        (
            "both names, other user's",
            format!(r#"{{"id":"x1","userId":"user_a","user_id":{b}}}"#),
        ),
        ("another user's", format!(r#"{{"id":"x1","userId":{b}}}"#)),
    ]
}

#[tokio::test]
async fn a_record_whose_owner_cannot_be_proven_is_answered_404_on_get_patch_and_delete() {
    let _measuring = MEASURING.lock().await;
    let app = spawn_app().await;
    let token = app.token("user_a");
    for (case, record) in unprovable_records() {
        let answer = format!(r#"{{"success":true,"data":{record}}}"#);
        for method in [Method::GET, Method::PATCH, Method::DELETE] {
            // Arrange
            app.bdd.clear_faults();
            app.bdd.inject(FaultRule::new(Fault::Answer {
                status: 200,
                body: answer.clone(),
            }));
            app.storage.clear_requests();

            // Act
            let path = match method {
                Method::PATCH => "/api/images/x1/status",
                _ => "/api/images/x1",
            };
            let response = app
                .authed(method.clone(), path, &token)
                .json(&json!({"status": "printed"}))
                .send()
                .await
                .unwrap();

            // Assert
            assert_eq!(response.status(), 404, "{case} on {method}");
            let text = response.text().await.unwrap();
            assert_eq!(
                text, r#"{"success":false,"error":"Image non trouvée"}"#,
                "{case} on {method}"
            );
            assert!(app.storage_calls().is_empty(), "{case}: nothing removed");
        }
    }
    app.bdd.clear_faults();
}

#[tokio::test]
async fn a_record_answer_whose_data_is_not_an_object_is_a_bad_gateway() {
    let _measuring = MEASURING.lock().await;
    let app = spawn_app().await;
    let token = app.token("user_a");
    for data in [r#"[{"userId":"user_a"}]"#, r#""user_a""#, "null"] {
        app.bdd.clear_faults();
        app.bdd.inject(FaultRule::new(Fault::Answer {
            status: 200,
            body: format!(r#"{{"success":true,"data":{data}}}"#),
        }));
        let response = app.get("/api/images/x1", &token).await;
        assert_eq!(response.status(), 502, "{data}");
        assert_eq!(
            json_body(response).await,
            json!({"success": false, "error": "Erreur du service BDD"})
        );
    }
    app.bdd.clear_faults();
}

#[tokio::test]
async fn a_list_keeps_only_records_proven_to_be_the_callers() {
    let _measuring = MEASURING.lock().await;
    let app = spawn_app().await;
    let token = app.token("user_a");
    let mut images = vec![r#"{"id":"mine","userId":"user_a"}"#.to_owned()];
    images.extend(unprovable_records().into_iter().map(|(_, r)| r));
    images.push(r#""just a string""#.to_owned());
    app.bdd.inject(FaultRule::new(Fault::Answer {
        status: 200,
        body: format!(
            r#"{{"success":true,"data":{{"images":[{}],"pagination":{{"total":9}}}}}}"#,
            images.join(",")
        ),
    }));

    let response = app.get("/api/images", &token).await;

    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(
        body["data"]["images"],
        json!([{"id": "mine", "userId": "user_a"}])
    );
    assert_eq!(body["data"]["pagination"]["total"], 9);
}

#[tokio::test]
async fn a_list_whose_images_are_not_an_array_is_a_bad_gateway() {
    let _measuring = MEASURING.lock().await;
    let app = spawn_app().await;
    let token = app.token("user_a");
    for data in [
        r#"{"images":{"0":{"userId":"user_b"}}}"#,
        r#"{"pagination":{}}"#,
        r#"[{"userId":"user_b"}]"#,
        r#"{"images":[],"images":[{"userId":"user_b"}]}"#,
    ] {
        app.bdd.clear_faults();
        app.bdd.inject(FaultRule::new(Fault::Answer {
            status: 200,
            body: format!(r#"{{"success":true,"data":{data}}}"#),
        }));
        let response = app.get("/api/images", &token).await;
        assert_eq!(response.status(), 502, "{data}");
        let text = response.text().await.unwrap();
        assert!(!text.contains("user_b"), "{text}");
    }
    app.bdd.clear_faults();
}

// ------------------------------------------------ nothing internal leaks

#[tokio::test]
async fn a_storage_5xx_message_is_never_quoted_to_the_client() {
    let _measuring = MEASURING.lock().await;
    let app = spawn_app().await;
    let internal = "connect ECONNREFUSED db-internal.prod.example:5432 at /var/lib/storage arn:aws:s3:::secret-bucket";
    app.storage.inject(
        FaultRule::new(Fault::Answer {
            status: 500,
            body: json!({"statusCode": "500", "error": "internal", "message": internal})
                .to_string(),
        })
        .method(Method::POST),
    );

    let response = app
        .post_image(
            &app.token("user_a"),
            &json!({"prompt": "p", "imageData": png_base64(64)}),
        )
        .await;

    assert_eq!(response.status(), 502);
    assert_eq!(
        json_body(response).await,
        json!({"success": false, "error": "Erreur lors de l'upload: service de stockage en erreur"})
    );
}

#[tokio::test]
async fn a_storage_refusal_is_quoted_to_200_characters() {
    let _measuring = MEASURING.lock().await;
    let app = spawn_app().await;
    let long = "é".repeat(300);
    app.storage.inject(
        FaultRule::new(Fault::Answer {
            status: 400,
            body: json!({"statusCode": "403", "error": "Unauthorized", "message": long})
                .to_string(),
        })
        .method(Method::POST),
    );

    let response = app
        .post_image(
            &app.token("user_a"),
            &json!({"prompt": "p", "imageData": png_base64(64)}),
        )
        .await;

    assert_eq!(response.status(), 502);
    let error = json_body(response).await["error"]
        .as_str()
        .unwrap()
        .to_owned();
    let quoted = error.strip_prefix("Erreur lors de l'upload: ").unwrap();
    assert_eq!(quoted.chars().count(), 200);
}

#[tokio::test]
async fn a_bdd_4xx_body_is_reduced_to_its_short_error() {
    let _measuring = MEASURING.lock().await;
    let app = spawn_app().await;
    let token = app.token("user_a");
    let cases = [
        (
            400,
            json!({"success": false, "error": "Requête invalide", "stack": "Error: at /srv/app.js:12", "query": "SELECT * FROM images"}),
            400,
            json!({"success": false, "error": "Requête invalide"}),
        ),
        (
            409,
            json!({"error": "x".repeat(201)}),
            409,
            json!({"success": false, "error": "Erreur du service BDD"}),
        ),
        (
            422,
            json!({"error": {"nested": true}}),
            422,
            json!({"success": false, "error": "Erreur du service BDD"}),
        ),
        (
            401,
            json!({"success": false, "error": "Jeton du service invalide"}),
            502,
            json!({"success": false, "error": "Erreur du service BDD"}),
        ),
        (
            403,
            json!({"success": false, "error": "Interdit"}),
            502,
            json!({"success": false, "error": "Erreur du service BDD"}),
        ),
    ];
    for (status, body, expected_status, expected) in cases {
        app.bdd.clear_faults();
        app.bdd.inject(FaultRule::new(Fault::Answer {
            status,
            body: body.to_string(),
        }));
        let response = app.get("/api/images/x1", &token).await;
        assert_eq!(response.status(), expected_status, "BDD {status}");
        assert!(response.headers().get("www-authenticate").is_none());
        assert_eq!(json_body(response).await, expected, "BDD {status}");
    }
    app.bdd.clear_faults();
}

// ---------------------------------------------------------------- streaming

#[tokio::test]
async fn concurrent_10_mib_creates_cost_memory_independent_of_the_image_size() {
    let _measuring = MEASURING.lock().await;
    // Arrange: twenty users, twenty slots, images just under the 10 MiB limit.
    let stand_ins = spawn_app().await;
    let service = Binary::start(&stand_ins, &[("MAX_UPLOADS_IN_FLIGHT", "20")]).await;
    let body = format!(
        r#"{{"prompt":"p","imageData":"{}","metadata":{{}}}}"#,
        png_base64((10 << 20) - 4096)
    )
    .into_bytes();
    let before = service.memory("VmHWM:");

    // Act
    let started = Instant::now();
    let answers = futures_join_all((0..20).map(|i| {
        let (base, token, body) = (
            service.base.clone(),
            stand_ins.token(&format!("user_big{i}")),
            body.clone(),
        );
        async move { post_raw(&base, &token, body).await.status().as_u16() }
    }))
    .await;

    // Assert
    let peak = service.memory("VmHWM:");
    println!(
        "twenty 10 MiB creates at once: {:?}, peak memory {} -> {} MiB",
        started.elapsed(),
        before / MIB,
        peak / MIB
    );
    assert_eq!(answers, vec![201; 20]);
    assert!(peak < 64 * MIB, "peak {} MiB", peak / MIB);
}
