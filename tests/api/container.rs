//! The container: the binary starts and passes its health check with exactly
//! the environment the Dockerfile sets (plus the deployment's own variables),
//! and the Dockerfile keeps its promises (multi-stage, non-root, health check).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::helpers::*;

const DOCKERFILE: &str = include_str!("../../Dockerfile");

/// `ENV` instructions of the last stage, continuation lines joined.
fn dockerfile_env() -> BTreeMap<String, String> {
    let last_stage = DOCKERFILE.rsplit("\nFROM ").next().unwrap();
    let joined = last_stage.replace("\\\n", " ");
    let mut env = BTreeMap::new();
    for line in joined.lines().filter_map(|l| l.trim().strip_prefix("ENV ")) {
        for pair in line.split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV KEY=value");
            env.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
    }
    env
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_with_a_health_check() {
    assert!(
        DOCKERFILE.matches("\nFROM ").count() + usize::from(DOCKERFILE.starts_with("FROM ")) >= 2
    );
    let last_stage = DOCKERFILE.rsplit("\nFROM ").next().unwrap();
    let user = last_stage
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
    assert!(last_stage.contains("HEALTHCHECK"));
    assert!(last_stage.contains("\"healthcheck\"]"));
    assert_eq!(
        dockerfile_env().get("PORT").map(String::as_str),
        Some("5002")
    );
}

#[tokio::test]
async fn the_binary_starts_and_is_healthy_with_the_dockerfile_environment() {
    // Arrange: the Dockerfile's variables, the deployment's required ones,
    // and a free port instead of 5002 so tests can run beside a dev stack.
    let stand_ins = spawn_app().await;
    let port = free_port().to_string();
    let mut env = dockerfile_env();
    env.insert("PORT".into(), port.clone());
    env.insert("CLERK_ISSUER".into(), stand_ins.clerk.issuer());
    env.insert("SUPABASE_URL".into(), stand_ins.storage.url());
    env.insert("SUPABASE_SERVICE_ROLE_KEY".into(), SERVICE_KEY.into());
    env.insert("BDD_SERVICE_URL".into(), stand_ins.bdd.url());
    let workdir = temp_dir("container");

    // Act
    let child = tokio::process::Command::new(BIN)
        .current_dir(&workdir)
        .env_clear()
        .envs(&env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let healthy = loop {
        let check = tokio::process::Command::new(BIN)
            .arg("healthcheck")
            .env_clear()
            .envs(&env)
            .stderr(Stdio::null())
            .status()
            .await
            .unwrap();
        if check.success() || Instant::now() > deadline {
            break check.success();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Assert
    assert!(healthy, "healthcheck never passed");
    // SIGTERM, as a container runtime stops it: the log lines still
    // waiting for their batch are written before the process exits.
    let pid = child.id().expect("running").to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(stopped.success());
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("exits within 10 s of SIGTERM")
        .unwrap();
    assert!(output.status.success(), "{:?}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON logs (LOG_FORMAT=json)"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "image service listening"),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_health_check_fails_when_nothing_listens() {
    let port = free_port().to_string();
    let status = tokio::process::Command::new(BIN)
        .arg("healthcheck")
        .env_clear()
        .env("PORT", port)
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(!status.success());
}
