//! The dev stack: the service wired to local Clerk, Storage and BDD stand-ins,
//! so every route works with curl and no cloud account.
//!
//! Data (the Clerk signing key, stored objects, records) lives in one folder,
//! `.devstack/` by default, so a restart keeps it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{
    BddMode, BddOptions, BddStandIn, ClerkStandIn, SigningKey, StorageOptions, StorageStandIn,
};
use crate::app::App;
use crate::config::Config;

/// The dev stack's user when no other is asked for.
pub const DEMO_USER: &str = "user_demo";
/// Service key the local Storage accepts (not a secret: it guards nothing real).
pub const DEV_SERVICE_KEY: &str = "dev-service-role-key";
/// Lifetime of the printed demo token.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Where the dev stack listens and keeps its data.
#[derive(Debug, Clone)]
pub struct DevStackOptions {
    /// Folder for the signing key, objects and records.
    pub data_dir: PathBuf,
    /// Local Clerk port.
    pub clerk_port: u16,
    /// Local Storage port.
    pub storage_port: u16,
    /// Local BDD port (the real one's, 9002).
    pub bdd_port: u16,
}

impl DevStackOptions {
    /// Defaults, overridable by `DEV_DATA_DIR`, `DEV_CLERK_PORT`, `DEV_STORAGE_PORT`, `DEV_BDD_PORT`.
    pub fn from_env() -> Result<Self, String> {
        let port = |name: &str, default: u16| -> Result<u16, String> {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}: expected a port number, got {v:?}")),
                _ => Ok(default),
            }
        };
        Ok(Self {
            data_dir: std::env::var("DEV_DATA_DIR")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map_or_else(|| PathBuf::from(".devstack"), PathBuf::from),
            clerk_port: port("DEV_CLERK_PORT", 5012)?,
            storage_port: port("DEV_STORAGE_PORT", 54321)?,
            bdd_port: port("DEV_BDD_PORT", 9002)?,
        })
    }
}

/// The three stand-ins, running.
pub struct DevStack {
    /// Local Clerk.
    pub clerk: ClerkStandIn,
    /// Local Supabase Storage.
    pub storage: StorageStandIn,
    /// Local BDD service.
    pub bdd: BddStandIn,
}

impl DevStack {
    /// Starts the stand-ins, creating the data folder and signing key on first run.
    pub async fn start(options: &DevStackOptions) -> Result<Self, String> {
        let dir = &options.data_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let key = load_or_create_key(&dir.join("clerk-key.pem"))?;
        let clerk = ClerkStandIn::start(vec![key], options.clerk_port)
            .await
            .map_err(|e| format!("local Clerk on port {}: {e}", options.clerk_port))?;
        let mut storage_options = StorageOptions::new(DEV_SERVICE_KEY);
        storage_options.data_dir = Some(dir.join("storage"));
        storage_options.port = options.storage_port;
        let storage = StorageStandIn::start(storage_options)
            .await
            .map_err(|e| format!("local Storage on port {}: {e}", options.storage_port))?;
        let mut bdd_options = BddOptions::new();
        bdd_options.mode = BddMode::Faithful;
        bdd_options.data_file = Some(dir.join("bdd.json"));
        bdd_options.port = options.bdd_port;
        let bdd = BddStandIn::start(bdd_options)
            .await
            .map_err(|e| format!("local BDD on port {}: {e}", options.bdd_port))?;
        Ok(Self {
            clerk,
            storage,
            bdd,
        })
    }

    /// The service's configuration: the environment, with the upstreams pointed here.
    ///
    /// `HOST` defaults to loopback and `LOG_FORMAT` to pretty: this is a laptop.
    pub fn config(&self, env: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let mut vars: HashMap<&str, String> = HashMap::new();
        vars.insert("HOST", env("HOST").unwrap_or_else(|| "127.0.0.1".into()));
        vars.insert(
            "LOG_FORMAT",
            env("LOG_FORMAT").unwrap_or_else(|| "pretty".into()),
        );
        vars.insert("CLERK_ISSUER", self.clerk.issuer());
        vars.insert("SUPABASE_URL", self.storage.url());
        vars.insert("SUPABASE_SERVICE_ROLE_KEY", DEV_SERVICE_KEY.into());
        vars.insert("BDD_SERVICE_URL", self.bdd.url());
        // Upstream settings come from the stack; tuning ones from the environment.
        let forced = [
            "CLERK_JWKS_URL",
            "CLERK_JWT_KEY",
            "SUPABASE_SERVICE_KEY",
            "SUPABASE_BUCKET_NAME",
        ];
        Config::from_lookup(|name| {
            if let Some(v) = vars.get(name) {
                return Some(v.clone());
            }
            if forced.contains(&name) {
                return None;
            }
            env(name)
        })
        .map_err(|e| e.to_string())
    }

    /// A long-lived token for `user`.
    pub fn token_for(&self, user: &str, ttl: Duration) -> String {
        self.clerk
            .mint_claims(&super::standard_claims(&self.clerk.issuer(), user, ttl))
    }
}

fn load_or_create_key(path: &std::path::Path) -> Result<SigningKey, String> {
    match std::fs::read_to_string(path) {
        Ok(pem) => SigningKey::from_pkcs8_pem("dev-key", &pem)
            .map_err(|e| format!("{}: {e} (delete it to get a new key)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate("dev-key");
            std::fs::write(path, key.to_pkcs8_pem())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Runs the dev stack and the service until Ctrl-C; prints a banner to start with.
pub async fn run() -> Result<(), String> {
    let _ = dotenvy::dotenv();
    let options = DevStackOptions::from_env()?;
    let stack = DevStack::start(&options).await?;
    let config = stack.config(|name| std::env::var(name).ok())?;
    let _logs = crate::telemetry::init(&config.log_level, config.log_format);
    let app = App::build(config).await.map_err(|e| e.to_string())?;
    let token = stack.token_for(DEMO_USER, DEMO_TOKEN_TTL);
    println!("{}", banner(&stack, &app, &token, &options));
    app.run().await.map_err(|e| e.to_string())
}

/// Runs only the stand-ins (no service) until Ctrl-C, for benchmarks and
/// for running the service binary against them by hand.
pub async fn run_stand_ins() -> Result<(), String> {
    let options = DevStackOptions::from_env()?;
    let stack = DevStack::start(&options).await?;
    println!(
        "clerk={}\nstorage={}\nbdd={}\nservice_key={DEV_SERVICE_KEY}\ndata_dir={}",
        stack.clerk.url(),
        stack.storage.url(),
        stack.bdd.url(),
        options.data_dir.display()
    );
    crate::app::shutdown_signal().await;
    Ok(())
}

/// A 1x1 PNG, for the curl example.
const TINY_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

fn banner(stack: &DevStack, app: &App, token: &str, options: &DevStackOptions) -> String {
    let addr = app.local_addr();
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let base = format!("http://{host}:{}", addr.port());
    format!(
        "\n\
==============================================================\n \
Image service dev stack\n\
==============================================================\n \
service        {base}\n \
local Clerk    {clerk}  (JWKS {jwks})\n \
local Storage  {storage}\n \
local BDD      {bdd}\n \
data folder    {data}\n\n \
Demo user {DEMO_USER}, token valid 30 days:\n\n\
export TOKEN={token}\n\n \
Try:\n\
curl -s {base}/api/health\n\
curl -s -X POST {base}/api/images -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\\n  \
-d '{{\"prompt\":\"a red fox\",\"imageData\":\"{TINY_PNG}\",\"metadata\":{{\"model\":\"demo\"}}}}'\n\
curl -s {base}/api/images -H \"Authorization: Bearer $TOKEN\"\n\n \
A token for another user:\n\
curl -s '{clerk}/dev/token?sub=user_other'\n\
==============================================================\n",
        clerk = stack.clerk.url(),
        jwks = stack.clerk.jwks_url(),
        storage = stack.storage.url(),
        bdd = stack.bdd.url(),
        data = options.data_dir.display(),
    )
}
