//! Entry point: `image-service` serves from the environment; `reconcile`
//! cleans up after a crash; `healthcheck` probes a running instance;
//! `--version` and `--help` say what it is.

use std::process::ExitCode;

use image_service::app::App;
use image_service::config::Config;
use image_service::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => serve().await,
        Some("reconcile") => reconcile(&args[1..]).await,
        Some("healthcheck") => healthcheck().await,
        Some("-V" | "--version" | "version") => {
            println!("image-service {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("unknown argument {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str = "\
image-service              serve, configured by the environment (and ./.env)
image-service reconcile [--older-than SECS (default 3600)] [--user SUB] [--dry-run] [--json]
                           remove the objects no record points at (what a crash left),
                           report records whose object is missing; same configuration
image-service healthcheck  exit 0 if the local instance's /api/health answers 200 (PORT)
image-service --version    the version
image-service --help       this text

To try the service with no Clerk or Supabase account: cargo dev (the dev stack).";

/// The configuration from `./.env` and the environment, or the problems,
/// one line each on stderr.
fn load_config() -> Result<Config, ()> {
    // Only ./.env, as the contract says; variables already set win over it.
    let dotenv = match dotenvy::from_path(".env") {
        Err(e) if !e.not_found() => Some(format!(".env: cannot be read: {e}")),
        _ => None,
    };
    match (Config::from_env(), dotenv) {
        (Ok(config), None) => Ok(config),
        (result, dotenv) => {
            // stderr: exactly one line per problem, each naming its variable
            // (or the file).
            for line in dotenv.iter().chain(result.err().iter().flat_map(|e| &e.0)) {
                eprintln!("{line}");
            }
            Err(())
        }
    }
}

async fn serve() -> ExitCode {
    let Ok(config) = load_config() else {
        // stdout: what to do instead.
        println!("image-service: not started, the configuration has problems (listed on stderr; see env.example). To try the service with no Clerk or Supabase account, run the dev stack: cargo dev");
        return ExitCode::from(2);
    };
    let _logs = match telemetry::init(&config.log_level, config.log_format) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("image-service: cannot start the log writer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("image-service: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %app.local_addr(), "image service listening");
    match app.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// `image-service reconcile …`: exit 0 when it finished (errors are counted
/// in its report), 2 on bad arguments or configuration.
async fn reconcile(args: &[String]) -> ExitCode {
    let options = match image_service::reconcile::Options::parse(args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e}\nusage: {}", image_service::reconcile::USAGE);
            return ExitCode::from(2);
        }
    };
    let Ok(config) = load_config() else {
        return ExitCode::from(2);
    };
    // Logs go to stderr: stdout is the report.
    let _logs = match telemetry::init_to(
        &config.log_level,
        config.log_format,
        telemetry::Output::Stderr,
    ) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("image-service: cannot start the log writer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = image_service::reconcile::run(&config, &options).await;
    if options.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        println!("{}", report.line());
    }
    ExitCode::SUCCESS
}

/// For container health checks: the runtime image has no curl.
async fn healthcheck() -> ExitCode {
    let port = std::env::var("PORT").unwrap_or_else(|_| "5002".into());
    let url = format!("http://127.0.0.1:{}/api/health", port.trim());
    let answer = reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(2))
        .send()
        .await;
    match answer {
        Ok(response) if response.status().is_success() => ExitCode::SUCCESS,
        Ok(response) => {
            eprintln!("{url}: HTTP {}", response.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            ExitCode::FAILURE
        }
    }
}
