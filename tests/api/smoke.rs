//! `scripts/smoke.sh`, the operators' deployment check, run against the dev
//! stack served in-process: it passes on a working service, reports the
//! deployed BDD's missing PATCH route as SKIP, and fails with the step, status
//! and body when something is wrong.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use image_service::app::App;
use image_service::devstack::stack::{DevStack, DevStackOptions};
use image_service::devstack::BddMode;
use tokio::sync::oneshot;

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
        let data_dir =
            std::env::temp_dir().join(format!("image-service-smoke-{}", uuid::Uuid::new_v4()));
        let options = DevStackOptions {
            data_dir: data_dir.clone(),
            clerk_port: 0,
            storage_port: 0,
            bdd_port: 0,
        };
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
            .current_dir(env!("CARGO_MANIFEST_DIR"))
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

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server ran");
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
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
