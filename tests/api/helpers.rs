//! `spawn_app()`: the production wiring on a random port, against in-process
//! stand-ins of Clerk, Storage and the BDD service on their own random ports.
#![allow(dead_code)] // each test area uses its own subset

use std::collections::HashMap;
use std::sync::Once;
use std::time::Duration;

use base64::Engine;
use image_service::app::App;
use image_service::config::Config;
use reqwest::Method;
use serde_json::{json, Value};
use stand_ins::{
    standard_claims, test_key, BddOptions, BddStandIn, ClerkStandIn, RecordedRequest,
    StorageOptions, StorageStandIn,
};
use tokio::sync::oneshot;

/// The service key the Storage stand-in accepts.
pub const SERVICE_KEY: &str = "test-service-role-key";
/// The frontend origin allowed by default.
pub const FRONTEND: &str = "http://localhost:3000";
/// The bucket.
pub const BUCKET: &str = "images";

/// A running service with its stand-ins.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// A plain client (no redirects, no default headers).
    pub client: reqwest::Client,
    /// Local Clerk.
    pub clerk: ClerkStandIn,
    /// Local Storage.
    pub storage: StorageStandIn,
    /// Local BDD.
    pub bdd: BddStandIn,
    /// The configuration the service runs with.
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Knobs for one test.
pub struct TestOptions {
    /// BDD stand-in options (port is ignored).
    pub bdd: BddOptions,
    /// Environment variables on top of the stand-ins' (e.g. `MAX_IMAGE_BYTES`).
    pub env: Vec<(String, String)>,
    /// Last-minute change to the parsed configuration.
    pub tweak: Box<dyn FnOnce(&mut Config) + Send>,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            bdd: BddOptions::new(),
            env: Vec::new(),
            tweak: Box::new(|_| {}),
        }
    }
}

impl TestOptions {
    /// Adds an environment variable.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Changes the configuration after parsing.
    pub fn tweak(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.tweak = Box::new(f);
        self
    }

    /// Uses these BDD options.
    pub fn bdd(mut self, bdd: BddOptions) -> Self {
        self.bdd = bdd;
        self
    }
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            // Kept for the whole test process.
            std::mem::forget(image_service::telemetry::init(
                "info,image_service=debug",
                image_service::config::LogFormat::Pretty,
            ));
        }
    });
}

/// The service with default options.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestOptions::default()).await
}

/// The service with `options`.
pub async fn spawn_app_with(options: TestOptions) -> TestApp {
    init_logs();
    let clerk = ClerkStandIn::start(vec![test_key(0)], 0)
        .await
        .expect("clerk stand-in");
    let storage = StorageStandIn::start(StorageOptions::new(SERVICE_KEY))
        .await
        .expect("storage stand-in");
    let mut bdd_options = options.bdd;
    bdd_options.port = 0;
    let bdd = BddStandIn::start(bdd_options).await.expect("bdd stand-in");

    let mut env: HashMap<String, String> = HashMap::from([
        ("HOST".into(), "127.0.0.1".into()),
        ("PORT".into(), "0".into()),
        ("CLERK_ISSUER".into(), clerk.issuer()),
        ("SUPABASE_URL".into(), storage.url()),
        ("SUPABASE_SERVICE_ROLE_KEY".into(), SERVICE_KEY.into()),
        ("BDD_SERVICE_URL".into(), bdd.url()),
        ("UPSTREAM_TIMEOUT_MS".into(), "2000".into()),
        ("UPLOAD_TIMEOUT_MS".into(), "2000".into()),
    ]);
    env.extend(options.env);
    let mut config = Config::from_lookup(|name| env.get(name).cloned()).expect("test config");
    (options.tweak)(&mut config);

    let app = App::build(config.clone()).await.expect("app builds");
    let address = format!("http://{}", app.local_addr());
    let (tx, rx) = oneshot::channel();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    TestApp {
        address,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        clerk,
        storage,
        bdd,
        config,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestApp {
    /// Stops the service gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server ran");
        }
    }

    /// A valid token for `sub`, signed by the Clerk stand-in's first key.
    pub fn token(&self, sub: &str) -> String {
        self.clerk.mint(sub)
    }

    /// A token with these claims on top of valid ones (null removes a claim).
    pub fn token_with(&self, sub: &str, extra: Value) -> String {
        let mut claims = standard_claims(&self.clerk.issuer(), sub, Duration::from_secs(3600));
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

/// Reads an answer as JSON, checking its content type.
pub async fn json_body(response: reqwest::Response) -> Value {
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/json; charset=utf-8");
    response.json().await.expect("a JSON body")
}

/// A port nothing listens on (connections are refused).
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// The recorded requests with this method.
pub fn calls(requests: &[RecordedRequest], method: &Method) -> Vec<RecordedRequest> {
    requests
        .iter()
        .filter(|r| r.method == *method)
        .cloned()
        .collect()
}
