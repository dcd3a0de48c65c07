//! The front door: what someone meets before the first request succeeds. The
//! image's and compose's static promises, env.example's placeholders refused
//! at start, the JSON 431, `--version`, `/api/ready`'s reasons as words, and
//! pretty logs without colour codes when piped.

use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use serde_norway::Value as Yaml;
use stand_ins::{Fault, FaultRule};

use crate::helpers::*;

const DOCKERFILE: &str = include_str!("../../Dockerfile");
const DOCKERIGNORE: &str = include_str!("../../.dockerignore");
const COMPOSE: &str = include_str!("../../compose.yaml");
const ENV_EXAMPLE: &str = include_str!("../../env.example");
const CARGO_TOML: &str = include_str!("../../Cargo.toml");

/// distroless's `nonroot` user and group.
const NONROOT_UID: &str = "65532";

// ------------------------------------------------------------- Dockerfile

/// One `FROM` and its instructions (continuation lines joined, comments dropped).
struct Stage {
    name: String,
    base: String,
    instructions: Vec<String>,
}

impl Stage {
    /// Instructions starting with `keyword`, without it.
    fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter_map(|i| i.strip_prefix(keyword)?.strip_prefix(' '))
            .map(str::trim)
            .collect()
    }

    /// `COPY` lines, split into words.
    fn copies(&self) -> Vec<Vec<&str>> {
        self.all("COPY")
            .into_iter()
            .map(|c| c.split_whitespace().collect())
            .collect()
    }
}

fn stages() -> Vec<Stage> {
    let joined = DOCKERFILE
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let mut stages: Vec<Stage> = Vec::new();
    for line in joined.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(from) = line.strip_prefix("FROM ") {
            let words: Vec<&str> = from.split_whitespace().collect();
            let name = match words.as_slice() {
                [.., as_, name] if as_.eq_ignore_ascii_case("as") => (*name).to_owned(),
                _ => String::new(),
            };
            stages.push(Stage {
                name,
                base: words[0].to_owned(),
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .expect("an instruction before the first FROM")
                .instructions
                .push(line.to_owned());
        }
    }
    stages
}

fn stage(name: &str) -> Stage {
    stages()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no stage named {name}"))
}

#[test]
fn the_build_stage_copies_the_workspace_and_the_embedded_files_and_builds_locked() {
    let build = stage("build");
    let sources: Vec<String> = build
        .copies()
        .iter()
        .filter(|words| !words.iter().any(|w| w.starts_with("--from")))
        .flat_map(|words| {
            let args: Vec<&str> = words
                .iter()
                .copied()
                .filter(|w| !w.starts_with("--"))
                .collect();
            args[..args.len() - 1]
                .iter()
                .map(|s| s.trim_start_matches("./").to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let covered = |path: &str| {
        sources
            .iter()
            .any(|s| path == s || path.starts_with(&format!("{s}/")))
    };
    // What src/routes/docs.rs embeds, and every workspace member's manifest.
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src/main.rs",
        "openapi.json",
        "docs/api.html",
    ] {
        assert!(covered(needed), "{needed} is not copied: {sources:?}");
    }
    let members = CARGO_TOML
        .split("members = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("a members list");
    for member in members.split(',').map(|m| m.trim().trim_matches('"')) {
        if member != "." && !member.is_empty() {
            assert!(
                covered(&format!("{member}/Cargo.toml")),
                "member {member} is not copied: {sources:?}"
            );
        }
    }
    let run = build.all("RUN").join("\n");
    assert!(
        run.contains("cargo build --release --locked --bin image-service"),
        "{run}"
    );
}

#[test]
fn the_runtime_stage_holds_only_the_service_binary_and_is_the_default_target() {
    let all = stages();
    let runtime = all.last().expect("stages");
    assert_eq!(
        runtime.name, "runtime",
        "the last stage is what `docker build .` gives"
    );
    assert_eq!(runtime.base, "gcr.io/distroless/cc-debian12:nonroot");
    let copies = runtime.copies();
    assert_eq!(
        copies,
        vec![vec![
            "--from=build",
            "/src/target/release/image-service",
            "/usr/local/bin/image-service"
        ]],
        "the runtime copies the service binary and nothing else"
    );
    assert!(!runtime.instructions.join("\n").contains("devstack"));
    assert_eq!(runtime.all("USER"), vec!["nonroot:nonroot"]);
    assert!(runtime.all("HEALTHCHECK")[0]
        .ends_with(r#"CMD ["/usr/local/bin/image-service", "healthcheck"]"#));
    assert_eq!(
        runtime.all("ENTRYPOINT"),
        vec![r#"["/usr/local/bin/image-service"]"#]
    );
}

#[test]
fn the_dev_target_adds_the_dev_stack_and_a_data_folder_owned_by_nonroot() {
    // Arrange
    let build = stage("build");
    let dev = stage("dev");

    // Assert: /data made in the build stage (distroless has no shell) ...
    let run = build.all("RUN").join("\n");
    assert!(run.contains("mkdir -p /data"), "{run}");
    assert!(
        run.contains(&format!("chown {NONROOT_UID}:{NONROOT_UID} /data")),
        "{run}"
    );
    // ... and copied with its owner, so a new named volume on /data is writable.
    let copies = dev.copies();
    assert!(
        copies.contains(&vec![
            "--from=build",
            &format!("--chown={NONROOT_UID}:{NONROOT_UID}"),
            "/data",
            "/data"
        ]),
        "{copies:?}"
    );
    assert!(copies
        .iter()
        .any(|c| c.last() == Some(&"/usr/local/bin/devstack")));
    assert!(copies
        .iter()
        .any(|c| c.last() == Some(&"/usr/local/bin/image-service")));
    assert_eq!(dev.base, "gcr.io/distroless/cc-debian12:nonroot");
    assert_eq!(dev.all("USER"), vec!["nonroot:nonroot"]);
    assert_eq!(
        dev.all("ENTRYPOINT"),
        vec![r#"["/usr/local/bin/devstack"]"#]
    );
    assert!(dev.all("ENV").join(" ").contains("DEV_DATA_DIR=/data"));
    assert!(dev.all("HEALTHCHECK")[0].contains("\"healthcheck\"]"));
}

#[test]
fn the_dockerignore_keeps_build_output_local_data_secrets_and_history_out() {
    let entries: Vec<&str> = DOCKERIGNORE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target", ".devstack", ".env", ".git"] {
        assert!(entries.contains(&needed), "{needed} missing: {entries:?}");
    }
}

// ----------------------------------------------------------------- compose

fn compose() -> Yaml {
    serde_norway::from_str(COMPOSE).expect("compose.yaml is YAML")
}

/// A service's `environment`, map or `KEY=value` list, as pairs.
fn environment(service: &Yaml) -> Vec<(String, String)> {
    match &service["environment"] {
        Yaml::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Yaml::String(s) => s.clone(),
                    Yaml::Null => String::new(),
                    other => serde_norway::to_string(other).unwrap().trim().to_owned(),
                };
                (k.as_str().unwrap().to_owned(), value)
            })
            .collect(),
        Yaml::Sequence(list) => list
            .iter()
            .filter_map(Yaml::as_str)
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn env_value(service: &Yaml, name: &str) -> Option<String> {
    environment(service)
        .into_iter()
        .find_map(|(k, v)| (k == name).then_some(v))
}

#[test]
fn compose_needs_no_dotenv_file() {
    // `env_file: .env` fails `up` on older Compose when .env is missing, even
    // for a service of another profile.
    for (name, service) in compose()["services"].as_mapping().unwrap() {
        assert!(service.get("env_file").is_none(), "{name:?} has env_file");
    }
}

#[test]
fn the_dev_stack_in_compose_listens_on_loopback_unless_told_otherwise() {
    let dev = &compose()["services"]["dev"];
    assert_eq!(dev["build"]["target"].as_str(), Some("dev"));
    // The devstack binary reads DEV_HOST (default 127.0.0.1), not HOST.
    assert!(env_value(dev, "HOST").is_none());
    match env_value(dev, "DEV_HOST") {
        None => {}
        Some(v) => assert!(
            v == "127.0.0.1" || v == "${DEV_HOST:-127.0.0.1}",
            "DEV_HOST: {v}"
        ),
    }
    if dev["network_mode"].as_str() != Some("host") {
        // Published ports would have to be bound to loopback on the host.
        for port in dev["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().expect("short syntax");
            assert!(port.starts_with("127.0.0.1:"), "{port}");
        }
    }
}

#[test]
fn the_dev_stack_keeps_its_data_in_a_named_volume_on_the_nonroot_data_folder() {
    let doc = compose();
    let dev = &doc["services"]["dev"];
    assert_eq!(env_value(dev, "DEV_DATA_DIR").as_deref(), Some("/data"));
    let mount = dev["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(Yaml::as_str)
        .find(|v| v.split(':').nth(1) == Some("/data"))
        .expect("a volume on /data");
    // A named volume (not a bind mount) takes the owner of the image's /data.
    let volume = mount.split(':').next().unwrap();
    assert!(
        doc["volumes"].get(volume).is_some(),
        "{volume} is not a named volume"
    );
    assert!(stage("dev")
        .copies()
        .iter()
        .any(|c| c.contains(&"--chown=65532:65532") && c.last() == Some(&"/data")));
}

#[test]
fn the_prod_service_takes_every_env_example_variable_from_dotenv_when_present() {
    let service = &compose()["services"]["service"];
    assert_eq!(service["build"]["target"].as_str(), Some("runtime"));
    // Every variable env.example names, set or commented out.
    let names: Vec<&str> = ENV_EXAMPLE
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert!(names.contains(&"SUPABASE_SERVICE_ROLE_KEY"), "{names:?}");
    for name in names {
        let value = env_value(service, name);
        if name == "HOST" {
            // Inside a container only 0.0.0.0 is reachable: the image's.
            assert!(value.is_none(), "HOST: {value:?}");
            continue;
        }
        let value = value.unwrap_or_else(|| panic!("{name} is not passed"));
        assert!(
            value.starts_with(&format!("${{{name}:-")) && value.ends_with('}'),
            "{name}: {value} (an unset variable must not fail `up`)"
        );
    }
    for required in ["CLERK_ISSUER", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"] {
        assert_eq!(
            env_value(service, required).as_deref(),
            Some(format!("${{{required}:-}}").as_str()),
            "no default for a required variable"
        );
    }
}

// ------------------------------------------------- env.example placeholders

#[test]
fn a_copied_env_example_is_refused_at_start_one_line_per_placeholder() {
    // Arrange: `cp env.example .env`, nothing else.
    let dir = temp_dir("env-example");
    std::fs::write(dir.join(".env"), ENV_EXAMPLE).unwrap();

    // Act
    let output = Command::new(BIN)
        .current_dir(&dir)
        .env_clear()
        .output()
        .unwrap();

    // Assert
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "one line per placeholder: {stderr}");
    for (line, name) in
        lines
            .iter()
            .zip(["CLERK_ISSUER", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"])
    {
        assert!(
            line.starts_with(&format!(
                "{name}: still the env.example placeholder; set your "
            )),
            "{line}"
        );
    }
    assert!(!stderr.contains("YOUR-SERVICE-ROLE-KEY"), "{stderr}");
}

// --------------------------------------------------------------------- 431

#[tokio::test]
async fn a_head_over_32_kib_answers_431_in_the_json_error_shape() {
    // 40 KiB: past the service's 32 KiB, within hyper's 64 KiB buffer, so
    // the edge middleware answers rather than hyper's bare 431.
    let app = spawn_app().await;
    let response = app
        .request(Method::GET, "/api/health")
        .header("x-padding", "a".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    assert_eq!(
        json_body(response).await,
        json!({"success": false, "error": "En-têtes de requête trop volumineux"})
    );
}

#[tokio::test]
async fn a_head_under_32_kib_is_served() {
    let app = spawn_app().await;
    let response = app
        .request(Method::GET, "/api/health")
        .header("x-padding", "a".repeat(31 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

// --------------------------------------------------------------- --version

#[test]
fn version_prints_the_name_and_the_package_version() {
    for flag in ["--version", "-V"] {
        let output = Command::new(BIN).arg(flag).env_clear().output().unwrap();
        assert!(output.status.success());
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("image-service {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

// ------------------------------------------------------------ /api/ready

/// Every reason is one of the words of contract §9, never an error chain.
fn assert_reasons_are_words(body: &Value) {
    let text = body.to_string();
    for leak in [
        "tcp connect",
        "os error",
        "error sending",
        "connection",
        "127.0.0.1",
        "http://",
    ] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
    for (check, reason) in body["checks"].as_object().expect("checks") {
        let reason = reason.as_str().expect("a string");
        let word = matches!(reason, "ok" | "unreachable" | "timeout" | "bad answer")
            || ["refused (", "failed ("].iter().any(|p| {
                reason
                    .strip_prefix(p)
                    .and_then(|r| r.strip_suffix(')'))
                    .is_some_and(|code| code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
            });
        assert!(word, "{check}: {reason}");
        assert!(!reason.contains("error"), "{check}: {reason}");
    }
}

#[tokio::test]
async fn ready_says_unreachable_when_the_bdd_refuses_connections() {
    let app =
        spawn_app_with(TestOptions::default().env("BDD_SERVICE_URL", closed_port_url())).await;

    let (status, body) = ready_once_keys_loaded(&app).await;

    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["checks"],
        json!({"bdd": "unreachable", "auth": "ok", "storage": "ok"})
    );
    assert_reasons_are_words(&body);
}

#[tokio::test]
async fn ready_says_timeout_when_the_bdd_is_slow() {
    let app = spawn_app_with(
        TestOptions::default().tweak(|c| c.ready_timeout = Duration::from_millis(300)),
    )
    .await;
    assert_eq!(
        ready_once_keys_loaded(&app).await.0,
        200,
        "ready before the fault"
    );
    app.bdd.inject(
        FaultRule::new(Fault::Delay(Duration::from_secs(5)))
            .method(Method::GET)
            .path_prefix("/api/health"),
    );

    let (status, body) = ready_once_keys_loaded(&app).await;

    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["checks"],
        json!({"bdd": "timeout", "auth": "ok", "storage": "ok"})
    );
    assert_reasons_are_words(&body);
}

#[tokio::test]
async fn ready_says_refused_404_when_the_storage_bucket_is_missing() {
    let app = spawn_app_with(TestOptions::default().env("SUPABASE_BUCKET_NAME", "other")).await;

    let (status, body) = ready_once_keys_loaded(&app).await;

    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["checks"],
        json!({"bdd": "ok", "auth": "ok", "storage": "refused (404)"})
    );
    assert_reasons_are_words(&body);
}

#[tokio::test]
async fn ready_names_a_bdd_500_in_a_word_without_its_body() {
    // The stand-in's 500 body is an error text; none of it reaches the answer.
    let app = spawn_app().await;
    assert_eq!(
        ready_once_keys_loaded(&app).await.0,
        200,
        "ready before the fault"
    );
    app.bdd.inject(
        FaultRule::new(Fault::Status(500))
            .method(Method::GET)
            .path_prefix("/api/health"),
    );

    let (status, body) = ready_once_keys_loaded(&app).await;

    assert_eq!(status, 503, "{body}");
    assert_ne!(body["checks"]["bdd"], "ok", "{body}");
    assert_reasons_are_words(&body);
}

// ------------------------------------------------------------ pretty logs

#[tokio::test]
async fn pretty_logs_piped_to_a_file_carry_no_colour_codes() {
    // Arrange: the binary with LOG_FORMAT=pretty, stdout a pipe (not a terminal).
    let stand_ins = spawn_app().await;
    let (mut child, base) = start_binary(
        &stand_ins,
        "pretty",
        Stdio::piped(),
        &[("LOG_FORMAT", "pretty")],
    )
    .await;
    let client = reqwest::Client::new();

    // Act: one request that logs its fields.
    let answer = client
        .get(format!("{base}/api/images"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();

    // Assert
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("image service listening"), "{stdout}");
    assert!(stdout.contains("status=401"), "{stdout}");
    assert!(
        !stdout.contains("\x1b["),
        "ANSI codes in piped logs: {stdout:?}"
    );
}

#[test]
fn the_many_instances_profile_shares_one_redis_behind_a_streaming_load_balancer() {
    let doc = compose();
    let services = &doc["services"];
    for name in ["redis", "instance", "lb"] {
        let profiles: Vec<&str> = services[name]["profiles"]
            .as_sequence()
            .expect("profiles")
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(profiles, vec!["many"], "{name}");
    }
    let instance = &services["instance"];
    assert_eq!(instance["build"]["target"].as_str(), Some("runtime"));
    assert!(instance["deploy"]["replicas"].as_u64().unwrap_or(0) >= 2);
    assert_eq!(
        env_value(instance, "REDIS_URL").as_deref(),
        Some("${REDIS_URL:-redis://redis:6379}")
    );
    // Every setting of a single instance reaches each of the many.
    let single: Vec<String> = environment(&services["service"])
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let many: Vec<String> = environment(instance).into_iter().map(|(k, _)| k).collect();
    assert_eq!(single, many);
    let redis = serde_norway::to_string(&services["redis"]["command"]).unwrap();
    assert!(
        redis.contains("--appendonly") && redis.contains("--save"),
        "{redis}"
    );
    let nginx = include_str!("../../deploy/nginx.conf");
    assert!(nginx.contains("server instance:5002"));
    // Creates stream end to end and the service's own 413 comes first.
    assert!(nginx.contains("proxy_request_buffering off"));
    assert!(nginx.contains("client_max_body_size 0"));
    let mounts = serde_norway::to_string(&services["lb"]["volumes"]).unwrap();
    assert!(mounts.contains("./deploy/nginx.conf:/etc/nginx/nginx.conf:ro"));
}
