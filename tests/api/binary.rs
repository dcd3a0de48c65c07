//! The built binary itself: fail-fast configuration, `.env` loading, SIGTERM drain.

use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use stand_ins::{Fault, FaultRule};

use crate::helpers::*;

#[test]
fn a_bad_environment_stops_the_process_with_one_line_per_variable() {
    let dir = temp_dir("badenv");
    let output = Command::new(BIN)
        .current_dir(&dir)
        .env_clear()
        .env("PORT", "http")
        .env("SUPABASE_SERVICE_ROLE_KEY", "super-secret-key")
        .env("MAX_IMAGE_BYTES", "-1")
        .env("NODE_ENV", "production")
        .env("CLERK_SECRET_KEY", "sk_ignored")
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for name in ["PORT", "CLERK_ISSUER", "SUPABASE_URL", "MAX_IMAGE_BYTES"] {
        assert_eq!(
            stderr
                .lines()
                .filter(|l| l.trim_start().starts_with(name))
                .count(),
            1,
            "{name} in {stderr}"
        );
    }
    for ignored in ["NODE_ENV", "CLERK_SECRET_KEY", "SUPABASE_SERVICE_ROLE_KEY"] {
        assert!(!stderr.contains(ignored), "{ignored} in {stderr}");
    }
    assert!(!stderr.contains("super-secret-key"));
    assert_eq!(stderr.lines().count(), 4, "one line per problem: {stderr}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("cargo dev"),
        "points at the dev stack"
    );
}

#[test]
fn a_malformed_dotenv_file_is_a_problem_and_only_the_working_directory_counts() {
    let parent = temp_dir("dotenv-parent");
    std::fs::write(parent.join(".env"), "PORT=not-a-port\n").unwrap();
    let dir = parent.join("child");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".env"), "CLERK_ISSUER=\"unterminated\n").unwrap();

    let output = Command::new(BIN)
        .current_dir(&dir)
        .env_clear()
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.lines().next().unwrap_or("").starts_with(".env: "),
        "{stderr}"
    );
    assert!(
        !stderr.contains("PORT"),
        "the parent's .env is not read: {stderr}"
    );
}

#[test]
fn a_dotenv_file_is_read_and_the_environment_wins_over_it() {
    let dir = temp_dir("dotenv");
    std::fs::write(dir.join(".env"), "PORT=not-a-port\nLOG_FORMAT=xml\n").unwrap();

    let output = Command::new(BIN)
        .current_dir(&dir)
        .env_clear()
        .env("LOG_FORMAT", "pretty")
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PORT: expected a port number"), "{stderr}");
    assert!(!stderr.contains("LOG_FORMAT"), "{stderr}");
}

#[tokio::test]
async fn sigterm_lets_a_request_in_flight_finish_then_exits_cleanly() {
    let stand_ins = spawn_app().await;
    stand_ins.bdd.inject(
        FaultRule::new(Fault::Delay(Duration::from_millis(800))).path_prefix("/api/images"),
    );
    let (mut child, base) = start_binary(&stand_ins, "sigterm", Stdio::null(), &[]).await;
    let client = reqwest::Client::new();

    let token = stand_ins.token("user_a");
    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/api/images");
        async move {
            client
                .request(Method::GET, url)
                .bearer_auth(token)
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());

    let answer = in_flight
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(answer.status(), 200);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after draining")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(client
        .get(format!("{base}/api/health"))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn json_logs_tie_every_line_of_a_request_to_its_request_and_user_ids() {
    // Arrange: the BDD refuses creates with a 500.
    let stand_ins = spawn_app().await;
    stand_ins
        .bdd
        .inject(FaultRule::new(Fault::Status(500)).method(Method::POST));
    let (mut child, base) = start_binary(&stand_ins, "logs", Stdio::piped(), &[]).await;
    let client = reqwest::Client::new();
    let token = stand_ins.token("user_log");

    let create = |request_id: &'static str| {
        client
            .post(format!("{base}/api/images"))
            .bearer_auth(&token)
            .header("x-request-id", request_id)
            .json(&serde_json::json!({"prompt": "p", "imageData": png_base64(32)}))
            .send()
    };

    // Act
    let answer = create("req-log-1").await.unwrap();
    assert_eq!(answer.status(), 502);
    stand_ins.bdd.clear_faults();
    let stored: serde_json::Value = create("req-log-2").await.unwrap().json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();

    // Assert
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let of_request: Vec<_> = lines
        .iter()
        .filter(|l| l["request_id"] == "req-log-1")
        .collect();
    assert!(!of_request.is_empty(), "{stdout}");
    for line in &of_request {
        assert_eq!(line["user_id"], "user_log", "{line}");
    }
    // The upstream failure is logged once: on the request line, naming the upstream.
    let upstream: Vec<_> = of_request
        .iter()
        .filter(|l| l["upstream"] == "bdd")
        .collect();
    assert_eq!(upstream.len(), 1, "{stdout}");
    assert!(upstream[0]["error"].as_str().unwrap().contains("500"));
    let summary = upstream[0];
    assert_eq!(summary["message"], "request failed");
    assert_eq!(summary["status"], 502);
    assert_eq!(summary["method"], "POST");
    assert_eq!(summary["path"], "/api/images");
    assert!(summary["latency_ms"].is_number());
    // An image's id is logged as its text, as the answer gives it.
    let stored_line = lines
        .iter()
        .find(|l| l["request_id"] == "req-log-2" && l["message"] == "image stored")
        .unwrap_or_else(|| panic!("no image stored line: {stdout}"));
    assert_eq!(
        stored_line["image_id"], stored["data"]["image_id"],
        "{stored_line}"
    );
    assert!(!stdout.contains(&token), "a token was logged");
    assert!(!stdout.contains(SERVICE_KEY), "the service key was logged");
}
