//! Entry point: `image-service` serves from the environment; `healthcheck`
//! probes a running instance; `--version` and `--help` say what it is.

use std::process::ExitCode;

use image_service::app::App;
use image_service::config::Config;
use image_service::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => serve().await,
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
image-service healthcheck  exit 0 if the local instance's /api/health answers 200 (PORT)
image-service --version    the version
image-service --help       this text

To try the service with no Clerk or Supabase account: cargo dev (the dev stack).";

async fn serve() -> ExitCode {
    // Only ./.env, as the contract says; variables already set win over it.
    let dotenv = match dotenvy::from_path(".env") {
        Err(e) if !e.not_found() => Some(format!(".env: cannot be read: {e}")),
        _ => None,
    };
    let config = match (Config::from_env(), dotenv) {
        (Ok(config), None) => config,
        (result, dotenv) => {
            // stderr: exactly one line per problem, each naming its variable
            // (or the file). stdout: what to do instead.
            for line in dotenv.iter().chain(result.err().iter().flat_map(|e| &e.0)) {
                eprintln!("{line}");
            }
            println!("image-service: not started, the configuration has problems (listed on stderr; see env.example). To try the service with no Clerk or Supabase account, run the dev stack: cargo dev");
            return ExitCode::from(2);
        }
    };
    let _logs = telemetry::init(&config.log_level, config.log_format);
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
