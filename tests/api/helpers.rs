//! What the API tests share: the start-up of `tests/common` (re-exported
//! here, so a test file needs one `use crate::helpers::*`), typed requests
//! on [`TestApp`], and the assertions several test files make.
#![allow(dead_code)] // each test area uses its own subset

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, Header};
use reqwest::Method;
use serde_json::{json, Value};
use stand_ins::{standard_claims, RecordedRequest};

pub use crate::common::*;

/// The value of one series (name and labels, exactly) in a `/metrics` scrape.
pub fn metric_in(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The value of one series of `app`'s `/metrics` now.
pub async fn metric(app: &TestApp, series: &str) -> Option<f64> {
    let scrape = app
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_in(&scrape, series)
}

/// A well-formed image id (cuid style) that no record has.
pub const CUID: &str = "clx2k9abc0000qwerty123456";
/// The built service, for tests that run it as a process.
pub const BIN: &str = env!("CARGO_BIN_EXE_image-service");
/// The 401 answer's message for a token that fails verification (contract §2).
pub const INVALID_TOKEN: &str = "Token d'authentification Clerk invalide";
/// The 503 answer's message when no signing key can be had (contract §2).
pub const AUTH_UNAVAILABLE: &str = "Service d'authentification indisponible";

impl TestApp {
    /// A valid token for `sub`, signed by the Clerk stand-in's first key.
    pub fn token(&self, sub: &str) -> String {
        self.clerk.mint(sub)
    }

    /// Valid claims for `sub` from the Clerk stand-in's issuer, to sign by hand.
    pub fn claims(&self, sub: &str) -> Value {
        standard_claims(&self.clerk.issuer(), sub, Duration::from_secs(3600))
    }

    /// A token with these claims on top of valid ones (null removes a claim).
    pub fn token_with(&self, sub: &str, extra: Value) -> String {
        let mut claims = self.claims(sub);
        if let (Some(map), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            for (k, v) in extra {
                if v.is_null() {
                    map.remove(&k);
                } else {
                    map.insert(k, v);
                }
            }
        }
        self.clerk.mint_claims(&claims)
    }

    /// `127.0.0.1:PORT`, for raw TCP clients.
    pub fn host(&self) -> &str {
        self.address.trim_start_matches("http://")
    }

    /// A request to the service.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.address))
    }

    /// A request with `Authorization: Bearer {token}`.
    pub fn authed(&self, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.request(method, path).bearer_auth(token)
    }

    /// `POST /api/images` with a JSON body.
    pub async fn post_image(&self, token: &str, body: &Value) -> reqwest::Response {
        self.authed(Method::POST, "/api/images", token)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Creates an image for `token`'s user and returns the answer's `data`.
    pub async fn create_image(&self, token: &str, prompt: &str) -> Value {
        let response = self
            .post_image(
                token,
                &json!({"prompt": prompt, "imageData": png_base64(64)}),
            )
            .await;
        assert_eq!(response.status(), 201, "create failed");
        response.json::<Value>().await.expect("json")["data"].clone()
    }

    /// `GET path` with a token.
    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.authed(Method::GET, path, token)
            .send()
            .await
            .expect("request sent")
    }

    /// `DELETE path` with a token.
    pub async fn delete(&self, path: &str, token: &str) -> reqwest::Response {
        self.authed(Method::DELETE, path, token)
            .send()
            .await
            .expect("request sent")
    }

    /// `PATCH /api/images/{id}/status`.
    pub async fn patch_status(&self, id: &str, token: &str, status: &str) -> reqwest::Response {
        self.authed(Method::PATCH, &format!("/api/images/{id}/status"), token)
            .json(&json!({ "status": status }))
            .send()
            .await
            .expect("request sent")
    }

    /// Requests the BDD stand-in received.
    pub fn bdd_calls(&self) -> Vec<RecordedRequest> {
        self.bdd.requests()
    }

    /// Requests the Storage stand-in received.
    pub fn storage_calls(&self) -> Vec<RecordedRequest> {
        self.storage.requests()
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.clerk
            .requests()
            .iter()
            .filter(|r| r.path == "/.well-known/jwks.json")
            .count()
    }

    /// Object paths in the bucket.
    pub fn objects(&self) -> Vec<String> {
        self.storage.object_paths(BUCKET)
    }
}

/// A PNG-signed payload of `size` bytes (at least the 8-byte signature).
pub fn png_bytes(size: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.resize(size.max(8), 7);
    bytes
}

/// `png_bytes(size)` in standard base64.
pub fn png_base64(size: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(png_bytes(size))
}

/// A header of an answer as text (`None` when absent or not text).
pub fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Reads an answer as JSON, checking its content type.
pub async fn json_body(response: reqwest::Response) -> Value {
    let content_type = header(&response, "content-type").unwrap_or_default();
    assert_eq!(content_type, "application/json; charset=utf-8");
    response.json().await.expect("a JSON body")
}

/// Asserts `{"success":false,"error":message}` with this status.
pub async fn assert_error(response: reqwest::Response, status: u16, message: &str) {
    assert_eq!(response.status(), status, "status");
    let body = json_body(response).await;
    assert_eq!(body, json!({"success": false, "error": message}));
}

/// Asserts the "invalid token" 401 of contract §2: its challenge header and
/// its exact body (nothing of the token echoed back).
pub async fn assert_invalid_token(response: reqwest::Response, case: &str) {
    assert_eq!(response.status(), 401, "{case}");
    assert_eq!(
        header(&response, "www-authenticate").as_deref(),
        Some(r#"Bearer error="invalid_token""#),
        "{case}"
    );
    assert_eq!(
        json_body(response).await,
        json!({"success": false, "error": INVALID_TOKEN}),
        "{case}"
    );
}

/// An RS256 JWT header with this `kid`, for tokens signed by hand.
pub fn rs256_header(kid: &str) -> Header {
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("JWT".into());
    header.kid = Some(kid.into());
    header
}

/// Polls `condition` every 10 ms until it holds, failing after 3 s.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the start-up key load, proves a valid token works, and returns
/// the JWKS fetch count from then on (recorded BDD calls are cleared).
pub async fn jwks_baseline(app: &TestApp) -> usize {
    wait_until("the start-up JWKS fetch", || app.jwks_fetches() >= 1).await;
    // The fetch was received; a valid request proves its answer is installed.
    let response = app.get("/api/images", &app.token("warm_up")).await;
    assert_eq!(response.status(), 200, "warm-up request");
    app.bdd.clear_requests();
    app.jwks_fetches()
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A port nothing listens on (connections are refused).
pub fn closed_port_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// A new empty directory, for a process that must not see this repository's `.env`.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("image-service-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The recorded requests with this method.
pub fn calls(requests: &[RecordedRequest], method: &Method) -> Vec<RecordedRequest> {
    requests
        .iter()
        .filter(|r| r.method == *method)
        .cloned()
        .collect()
}

/// Starts the built binary against `stand_ins`' upstreams on a free port, in
/// a directory of its own (no stray `.env`), with `env` on top, and waits
/// until it answers; returns it and its base URL.
pub async fn start_binary(
    stand_ins: &TestApp,
    name: &str,
    stdout: Stdio,
    env: &[(&str, &str)],
) -> (tokio::process::Child, String) {
    let port = free_port();
    let child = tokio::process::Command::new(BIN)
        .current_dir(temp_dir(name))
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("CLERK_ISSUER", stand_ins.clerk.issuer())
        .env("SUPABASE_URL", stand_ins.storage.url())
        .env("SUPABASE_SERVICE_ROLE_KEY", SERVICE_KEY)
        .env("BDD_SERVICE_URL", stand_ins.bdd.url())
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .get(format!("{base}/api/health"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "binary did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, base)
}

/// `/api/ready`'s status and body once the key set is reported loaded (or
/// after 3 s): the start-up key fetch runs beside the first requests.
pub async fn ready_once_keys_loaded(app: &TestApp) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let response = app
            .request(Method::GET, "/api/ready")
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        let body = json_body(response).await;
        if body["checks"]["auth"] == json!("ok") || Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
