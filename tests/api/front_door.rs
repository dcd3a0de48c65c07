//! The front door (issue 9, item 6): what someone meets before the first
//! request succeeds. The image's and compose's static promises, env.example's
//! placeholders refused at start, the JSON 431, `--version`, `/api/ready`'s
//! reasons as words, and pretty logs without colour codes when piped.

const DOCKERFILE: &str = include_str!("../../Dockerfile");
const DOCKERIGNORE: &str = include_str!("../../.dockerignore");
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
