//! `devstack`: the image service on local Clerk, Storage and BDD stand-ins;
//! `devstack stand-ins`: only the stand-ins, for benchmarks.

use std::process::ExitCode;

const USAGE: &str = "\
devstack             the image service on local Clerk, Storage and BDD stand-ins (no account needed)
devstack stand-ins   only the local Clerk, Storage and BDD (DEV_* ports), for benchmarks
devstack --help      this text

Environment: DEV_DATA_DIR (.devstack), DEV_HOST (127.0.0.1), DEV_CLERK_PORT (5012),
DEV_STORAGE_PORT (54321), DEV_BDD_PORT (9002), DEV_BDD_MODE (documented | like-deployed),
and the service's own tuning variables (PORT, LOG_LEVEL, limits...). ./.env is not read.";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => devstack::run().await,
        Some("stand-ins") => devstack::run_stand_ins().await,
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("devstack: unknown argument {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("devstack: {e}");
            ExitCode::FAILURE
        }
    }
}
