//! `image-service reconcile` (contract §7) on a seeded bucket, and the crash
//! it exists for: the built binary killed with SIGKILL in the middle of
//! creates, then one `reconcile` run: no orphan, every acknowledged create
//! still there.

use std::collections::HashSet;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{TimeZone, Utc};
use serde_json::{json, Value};
use stand_ins::{Fault, FaultRule};

use crate::helpers::*;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `image-service reconcile <args>` against `app`'s stand-ins.
async fn reconcile(app: &TestApp, args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .arg("reconcile")
        .args(args)
        .current_dir(temp_dir("reconcile"))
        .env_clear()
        .env("CLERK_ISSUER", app.clerk.issuer())
        .env("SUPABASE_URL", app.storage.url())
        .env("SUPABASE_SERVICE_ROLE_KEY", SERVICE_KEY)
        .env("BDD_SERVICE_URL", app.bdd.url())
        .env("LOG_LEVEL", "warn")
        .output()
        .await
        .expect("reconcile runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The seeded bucket's names.
struct Seeded {
    kept_with_record: String,
    orphan_a: String,
    young: String,
    foreign: String,
    in_sub_folder: String,
    in_foreign_folder: String,
    orphan_b: String,
    dangling_b: String,
}

fn own_name(user: &str, millis: u64, extension: &str) -> String {
    format!(
        "{user}/{millis}_generated_{}.{extension}",
        uuid::Uuid::new_v4()
    )
}

fn seed(app: &TestApp) -> Seeded {
    let old = now_ms() - 2 * 3600 * 1000;
    let young = now_ms() - 10_000;
    let seeded = Seeded {
        kept_with_record: own_name("user_a", old, "png"),
        orphan_a: own_name("user_a", old, "png"),
        young: own_name("user_a", young, "jpg"),
        foreign: "user_a/avatar.png".into(),
        in_sub_folder: own_name("user_a/sub", old, "png"),
        in_foreign_folder: own_name("shared!", old, "png"),
        orphan_b: own_name("user_b", old, "webp"),
        dangling_b: own_name("user_b", old, "webp"),
    };
    let created = Utc.timestamp_millis_opt(old as i64).unwrap();
    for path in [
        &seeded.kept_with_record,
        &seeded.orphan_a,
        &seeded.young,
        &seeded.foreign,
        &seeded.in_sub_folder,
        &seeded.in_foreign_folder,
        &seeded.orphan_b,
    ] {
        app.storage
            .put_object_at(BUCKET, path, png_bytes(16), "image/png", created);
    }
    let url = |path: &str| app.storage.public_url(BUCKET, path);
    app.bdd
        .insert_record("user_a", "kept", &url(&seeded.kept_with_record), json!({}));
    app.bdd
        .insert_record("user_b", "gone", &url(&seeded.dangling_b), json!({}));
    seeded
}

#[tokio::test]
async fn a_dry_run_reports_orphans_and_dangling_records_and_removes_nothing() {
    // Arrange
    let app = spawn_app().await;
    let seeded = seed(&app);
    let before = app.objects();

    // Act
    let output = reconcile(&app, &["--dry-run", "--json"]).await;

    // Assert
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report: Value = serde_json::from_str(stdout(&output).trim()).expect("one JSON object");
    assert_eq!(report["users"], 2, "{report}");
    assert_eq!(report["objects"], 5);
    assert_eq!(report["records"], 2);
    assert_eq!(report["orphans_removed"], 0);
    assert_eq!(report["dangling"], 1);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["dry_run"], true);
    let orphans: HashSet<&str> = report["orphan_paths"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        orphans,
        HashSet::from([seeded.orphan_a.as_str(), seeded.orphan_b.as_str()])
    );
    assert_eq!(report["dangling_paths"], json!([seeded.dangling_b]));
    assert_eq!(app.objects(), before, "nothing removed");
}

#[tokio::test]
async fn reconcile_removes_only_old_unreferenced_objects_named_as_ours() {
    // Arrange
    let app = spawn_app().await;
    let seeded = seed(&app);

    // Act
    let output = reconcile(&app, &[]).await;

    // Assert
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        stdout(&output).trim(),
        "reconcile: users=2 objects=5 records=2 orphans_removed=2 dangling=1 errors=0"
    );
    let left: HashSet<String> = app.objects().into_iter().collect();
    for kept in [
        &seeded.kept_with_record,
        &seeded.young,
        &seeded.foreign,
        &seeded.in_sub_folder,
        &seeded.in_foreign_folder,
    ] {
        assert!(left.contains(kept), "{kept} was removed");
    }
    assert!(!left.contains(&seeded.orphan_a) && !left.contains(&seeded.orphan_b));
    assert_eq!(app.bdd.records().len(), 2, "records are never removed");
}

#[tokio::test]
async fn reconcile_can_look_at_one_user_and_at_younger_objects() {
    let app = spawn_app().await;
    let seeded = seed(&app);

    let output = reconcile(&app, &["--user", "user_b", "--older-than", "0"]).await;

    assert_eq!(
        stdout(&output).trim(),
        "reconcile: users=1 objects=1 records=1 orphans_removed=1 dangling=1 errors=0"
    );
    let left = app.objects();
    assert!(!left.contains(&seeded.orphan_b));
    assert!(left.contains(&seeded.orphan_a) && left.contains(&seeded.young));

    let output = reconcile(&app, &["--older-than", "0"]).await;
    assert!(
        stdout(&output).contains("orphans_removed=2"),
        "{}",
        stdout(&output)
    );
    assert!(
        !app.objects().contains(&seeded.young),
        "younger than 1 h, older than 0 s"
    );
}

#[tokio::test]
async fn reconcile_counts_failures_and_never_removes_without_the_records() {
    // Arrange: the BDD fails every list.
    let app = spawn_app().await;
    let seeded = seed(&app);
    app.bdd.inject(FaultRule::new(Fault::Status(500)));

    // Act
    let output = reconcile(&app, &[]).await;

    // Assert: it finished (exit 0), counted both users' failures, removed nothing.
    assert_eq!(output.status.code(), Some(0));
    assert!(
        stdout(&output).ends_with("errors=2\n"),
        "{}",
        stdout(&output)
    );
    assert!(app.objects().contains(&seeded.orphan_a));
}

#[tokio::test]
async fn reconcile_exits_2_on_bad_arguments_or_configuration() {
    let app = spawn_app().await;
    assert_eq!(
        reconcile(&app, &["--older-than", "soon"])
            .await
            .status
            .code(),
        Some(2)
    );
    assert_eq!(reconcile(&app, &["--force"]).await.status.code(), Some(2));
    let unconfigured = tokio::process::Command::new(BIN)
        .arg("reconcile")
        .current_dir(temp_dir("reconcile-bare"))
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(unconfigured.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unconfigured.stderr).contains("CLERK_ISSUER"));
}

// ------------------------------------------------------------------ a crash

#[tokio::test]
async fn after_a_sigkill_mid_creates_one_reconcile_leaves_no_orphan_and_loses_no_acknowledged_image(
) {
    // Arrange: the built binary; record creates slow enough that a kill
    // falls between upload and record.
    let app = spawn_app().await;
    app.bdd
        .set_fault_rate(1.0, vec![Fault::Delay(Duration::from_millis(120))]);
    let (mut child, base) = start_binary(&app, "crash", Stdio::null(), &[]).await;
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop_at = Instant::now() + Duration::from_millis(1500);
    let mut clients = Vec::new();
    for i in 0..6 {
        let (base, token, acknowledged) = (
            base.clone(),
            app.token(&format!("user_crash{}", i % 3)),
            acknowledged.clone(),
        );
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while Instant::now() < stop_at + Duration::from_secs(1) {
                let sent = client
                    .post(format!("{base}/api/images"))
                    .bearer_auth(&token)
                    .json(&json!({"prompt": "p", "imageData": png_base64(2048)}))
                    .send()
                    .await;
                let Ok(answer) = sent else { return };
                if answer.status() == 201 {
                    if let Ok(body) = answer.json::<Value>().await {
                        let id = body["data"]["image_id"].as_str().unwrap_or_default();
                        acknowledged.lock().unwrap().push(id.to_owned());
                    }
                }
            }
        }));
    }

    // Act: SIGKILL in the middle of creates, a restart, one reconcile.
    tokio::time::sleep_until(stop_at.into()).await;
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    for client in clients {
        let _ = client.await;
    }
    app.bdd.set_fault_rate(0.0, Vec::new());
    // Calls the dead process had sent finish at the stand-ins.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_restarted, _) = start_binary(&app, "crash-restart", Stdio::null(), &[]).await;
    let objects_before = app.objects().len();
    let output = reconcile(&app, &["--older-than", "0"]).await;

    // Assert
    let records = app.bdd.records();
    let acknowledged = acknowledged.lock().unwrap().clone();
    println!(
        "crash: {} creates acknowledged, {} records, {} objects before reconcile: {}",
        acknowledged.len(),
        records.len(),
        objects_before,
        stdout(&output).trim()
    );
    assert!(
        !acknowledged.is_empty(),
        "the load created images before the kill"
    );
    assert!(
        stdout(&output).ends_with("dangling=0 errors=0\n"),
        "{}",
        stdout(&output)
    );
    let record_ids: HashSet<&str> = records.iter().filter_map(|r| r["id"].as_str()).collect();
    for id in &acknowledged {
        assert!(
            record_ids.contains(id.as_str()),
            "acknowledged image {id} lost"
        );
    }
    let pointed: HashSet<String> = records
        .iter()
        .filter_map(|r| r["imageUrl"].as_str())
        .map(|url| url.rsplit("/public/images/").next().unwrap().to_owned())
        .collect();
    let objects: HashSet<String> = app.objects().into_iter().collect();
    assert_eq!(
        objects, pointed,
        "every object has its record and every record its object"
    );
}
