//! The dev stack end to end (every route, data kept across restarts, the
//! BDD modes, the environment it takes and ignores, the key file) and
//! `scripts/smoke.sh`, the operators' deployment check, run against it.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use devstack::{environment_report, DevStack, DevStackOptions};
use image_service::app::App;
use serde_json::{json, Value};
use stand_ins::BddMode;
use tokio::sync::oneshot;

/// A 1x1 PNG.
const TINY_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

/// The dev stack and the service on random ports, in a fresh data folder.
struct Stack {
    stack: DevStack,
    base: String,
    data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Stack {
    async fn start() -> Self {
        Self::start_in(fresh_dir("smoke"), BddMode::Faithful).await
    }

    async fn start_in(data_dir: PathBuf, bdd_mode: BddMode) -> Self {
        let mut options = DevStackOptions::local(&data_dir);
        options.bdd_mode = bdd_mode;
        let stack = DevStack::start(&options).await.expect("dev stack starts");
        let config = stack
            .config(|name| (name == "PORT").then(|| "0".to_string()))
            .expect("dev stack config");
        let app = App::build(config).await.expect("app builds");
        let base = format!("http://{}", app.local_addr());
        let (tx, rx) = oneshot::channel();
        let server = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Self {
            stack,
            base,
            data_dir,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    /// Runs `bash scripts/smoke.sh` with `BASE_URL` and `TOKEN`.
    async fn smoke(&self, token: &str) -> (Output, Vec<String>) {
        let output = tokio::process::Command::new("bash")
            .arg("scripts/smoke.sh")
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .env("BASE_URL", &self.base)
            .env("TOKEN", token)
            .env("TIMEOUT", "10")
            .kill_on_drop(true)
            .output()
            .await
            .expect("bash runs");
        let lines = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        (output, lines)
    }

    fn token(&self, user: &str) -> String {
        self.stack.token_for(user, Duration::from_secs(600))
    }

    /// Stops the service and the stand-ins, keeping the data folder.
    async fn stop_keeping_data(mut self) -> PathBuf {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server ran");
        }
        std::mem::take(&mut self.data_dir)
    }

    async fn stop(self) {
        let dir = self.stop_keeping_data().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn fresh_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "image-service-{tag}-{}-{nanos}",
        std::process::id()
    ))
}

async fn json_body(response: reqwest::Response) -> Value {
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json; charset=utf-8")
    );
    response.json().await.expect("a JSON body")
}

/// The script's line for `step` (lines start with the step name).
fn line<'a>(lines: &'a [String], step: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.split_whitespace().next() == Some(step))
        .unwrap_or_else(|| panic!("no {step} line in {lines:#?}"))
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn the_smoke_script_passes_against_the_dev_stack_and_leaves_nothing_behind() {
    // Arrange
    let stack = Stack::start().await;
    let token = stack.token("user_smoke");

    // Act
    let (output, lines) = stack.smoke(&token).await;

    // Assert
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(lines.last().map(String::as_str), Some("PASS"), "{lines:#?}");
    for step in ["health", "create", "list", "get", "status", "delete"] {
        assert!(
            line(&lines, step).contains(" ok"),
            "{step}: {}",
            describe(&output)
        );
    }
    assert!(line(&lines, "status").contains("printed"));
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains(&token),
        "the token is never printed"
    );
    assert!(
        stack.stack.bdd.records().is_empty(),
        "the record is deleted"
    );
    assert!(
        stack.stack.storage.object_paths("images").is_empty(),
        "the object is deleted"
    );
    let s = &stack.stack;
    assert!(
        s.clerk.requests().is_empty()
            && s.storage.requests().is_empty()
            && s.bdd.requests().is_empty(),
        "the dev stack keeps no log of the requests it served (it runs for hours)"
    );
    stack.stop().await;
}

#[tokio::test]
async fn the_status_step_is_skipped_when_the_bdd_has_no_patch_route() {
    // Arrange: the deployed BDD service, which has no PATCH route.
    let stack = Stack::start().await;
    stack.stack.bdd.set_mode(BddMode::LikeReal);

    // Act
    let (output, lines) = stack.smoke(&stack.token("user_smoke")).await;

    // Assert
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        line(&lines, "status").contains("502") && line(&lines, "status").contains("SKIP"),
        "{lines:#?}"
    );
    assert_eq!(lines.last().map(String::as_str), Some("PASS"));
    stack.stop().await;
}

#[tokio::test]
async fn the_smoke_script_fails_with_the_step_status_and_body() {
    // Arrange
    let stack = Stack::start().await;

    // Act: a token this deployment does not accept.
    let (output, lines) = stack.smoke("not-a-valid-token").await;

    // Assert
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert_eq!(
        lines.last().map(String::as_str),
        Some(
            r#"FAIL: create: 401 {"success":false,"error":"Token d'authentification Clerk invalide"}"#
        ),
        "{lines:#?}"
    );
    assert!(stack.stack.bdd.records().is_empty());
    stack.stop().await;
}

#[test]
fn the_dev_stack_options_default_to_loopback_and_name_each_bad_variable() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    let defaults = DevStackOptions::from_env(env(&[("HOST", "0.0.0.0")])).unwrap();
    assert!(defaults.host.is_loopback(), "HOST is a production setting");
    assert_eq!(defaults.bdd_mode, BddMode::Faithful);
    let deployed = DevStackOptions::from_env(env(&[("DEV_BDD_MODE", "like-deployed")])).unwrap();
    assert_eq!(deployed.bdd_mode, BddMode::LikeReal);
    let wide = DevStackOptions::from_env(env(&[("DEV_HOST", "0.0.0.0")])).unwrap();
    assert!(wide.host.is_unspecified());
    let err = DevStackOptions::from_env(env(&[
        ("DEV_BDD_MODE", "real"),
        ("DEV_HOST", "here"),
        ("DEV_BDD_PORT", "x"),
    ]))
    .unwrap_err();
    assert_eq!(err.lines().count(), 3, "{err}");
    for name in ["DEV_BDD_MODE", "DEV_HOST", "DEV_BDD_PORT"] {
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn the_environment_report_names_what_the_dev_stack_uses_and_ignores() {
    let vars = [
        ("LOG_LEVEL", "debug"),
        ("HOST", "0.0.0.0"),
        ("SUPABASE_URL", "https://real.supabase.co"),
        ("PATH", "/usr/bin"),
    ];
    let (used, ignored) = environment_report(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    });
    assert_eq!(used.keys().copied().collect::<Vec<_>>(), vec!["LOG_LEVEL"]);
    assert_eq!(ignored, vec!["HOST", "SUPABASE_URL"]);
}

#[tokio::test]
async fn production_settings_in_the_environment_never_reach_the_dev_stack_service() {
    let stack = Stack::start().await;
    let config = stack
        .stack
        .config(|name| match name {
            "HOST" => Some("0.0.0.0".into()),
            "SUPABASE_URL" => Some("https://real.supabase.co".into()),
            "LOG_LEVEL" => Some("debug".into()),
            _ => None,
        })
        .expect("config");
    assert!(config.host.is_loopback());
    assert_eq!(config.storage.url, stack.stack.storage.url());
    assert_eq!(config.log_level, "debug");
    assert_eq!(config.log_format, image_service::config::LogFormat::Pretty);
    stack.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_dev_signing_key_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let stack = Stack::start().await;
    let mode = std::fs::metadata(stack.data_dir.join("clerk-key.pem"))
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    stack.stop().await;
}

#[tokio::test]
async fn the_like_deployed_mode_drops_status_and_metadata_and_has_no_patch_route() {
    let stack = Stack::start_in(fresh_dir("deployed"), BddMode::LikeReal).await;
    let token = stack.token("user_demo");
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{}/api/images", stack.base))
        .bearer_auth(&token)
        .json(&json!({"prompt": "p", "imageData": TINY_PNG, "metadata": {"a": 1}}))
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    let id = json_body(created).await["data"]["image_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let record = &stack.stack.bdd.records()[0];
    assert_eq!(record["metadata"], json!({}));
    assert_ne!(record["userId"], json!("user_demo"), "owner stored hashed");
    let patched = client
        .patch(format!("{}/api/images/{id}/status", stack.base))
        .bearer_auth(&token)
        .json(&json!({"status": "printed"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(patched.status(), 502);
    assert_eq!(
        json_body(patched).await["error"],
        json!("Service BDD: opération non supportée")
    );
    stack.stop().await;
}

#[tokio::test]
async fn the_dev_stack_serves_every_route_and_keeps_data_across_restarts() {
    // Arrange
    let data_dir = fresh_dir("devstack");
    let running = Stack::start_in(data_dir.clone(), BddMode::Faithful).await;
    let token = running.token("user_demo");
    let client = reqwest::Client::new();
    let base = running.base.clone();

    // Act + Assert: create.
    let created = client
        .post(format!("{base}/api/images"))
        .bearer_auth(&token)
        .json(&json!({"prompt": "a red fox", "imageData": TINY_PNG, "metadata": {"model": "demo"}}))
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    let created = json_body(created).await;
    let id = created["data"]["image_id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let url = created["data"]["image_url"]
        .as_str()
        .expect("a url")
        .to_owned();
    let object_path = url
        .split_once("/storage/v1/object/public/images/")
        .map(|(_, p)| p.to_owned())
        .expect("a public URL of the images bucket");
    assert!(object_path.starts_with("user_demo/"), "{object_path}");
    let object_file = data_dir.join("storage").join("images").join(&object_path);
    assert!(object_file.is_file(), "{} missing", object_file.display());
    let bdd_file = std::fs::read_to_string(data_dir.join("bdd.json")).expect("bdd.json");
    assert!(bdd_file.contains(&id), "record {id} not in bdd.json");

    // List.
    let listed = client
        .get(format!("{base}/api/images"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(listed.status(), 200);
    let listed = json_body(listed).await;
    let ids: Vec<&str> = listed["data"]["images"]
        .as_array()
        .expect("images")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);

    // Get.
    let got = client
        .get(format!("{base}/api/images/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(got.status(), 200);
    let got = json_body(got).await;
    assert_eq!(got["data"]["id"], json!(id));
    assert_eq!(got["data"]["imageUrl"], json!(url));

    // Patch.
    let patched = client
        .patch(format!("{base}/api/images/{id}/status"))
        .bearer_auth(&token)
        .json(&json!({"status": "printed"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(patched.status(), 200);
    let after_patch = client
        .get(format!("{base}/api/images/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(
        json_body(after_patch).await["data"]["status"],
        json!("printed")
    );

    // Delete.
    let deleted = client
        .delete(format!("{base}/api/images/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(deleted.status(), 200);
    assert_eq!(
        json_body(deleted).await,
        json!({"success": true, "message": "Image supprimée avec succès"})
    );
    assert!(!object_file.exists(), "object file left after delete");

    // A record that must survive the restart.
    let kept = client
        .post(format!("{base}/api/images"))
        .bearer_auth(&token)
        .json(&json!({"prompt": "kept", "imageData": TINY_PNG}))
        .send()
        .await
        .expect("sent");
    assert_eq!(kept.status(), 201);
    let kept_id = json_body(kept).await["data"]["image_id"]
        .as_str()
        .expect("an id")
        .to_owned();

    // Restart on the same folder.
    let data_dir = running.stop_keeping_data().await;
    let running = Stack::start_in(data_dir, BddMode::Faithful).await;
    let token = running.token("user_demo");
    let listed = client
        .get(format!("{}/api/images", running.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");

    // Assert
    assert_eq!(listed.status(), 200);
    let listed = json_body(listed).await;
    let ids: Vec<&str> = listed["data"]["images"]
        .as_array()
        .expect("images")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, vec![kept_id.as_str()]);

    running.stop().await;
}

#[tokio::test]
async fn the_local_clerk_mints_each_kind_of_token_and_only_sessions_open_images() {
    let stack = Stack::start().await;
    let client = reqwest::Client::new();
    let clerk = stack.stack.clerk.url();
    let mut statuses = Vec::new();
    for kind in ["session", "pending", "template", "machine"] {
        let minted: Value = client
            .get(format!("{clerk}/dev/token?sub=user_kind&kind={kind}"))
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        let token = minted["token"].as_str().expect("a token");
        let answer = client
            .get(format!("{}/api/images", stack.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("sent");
        statuses.push((kind, answer.status().as_u16()));
    }
    assert_eq!(
        statuses,
        vec![
            ("session", 200),
            ("pending", 401),
            ("template", 401),
            ("machine", 401)
        ]
    );
    let bad = client
        .get(format!("{clerk}/dev/token?sub=user_kind&kind=handshake"))
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status(), 400);
    stack.stop().await;
}
