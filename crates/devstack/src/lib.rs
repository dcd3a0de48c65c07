//! The dev stack: the image service wired to local Clerk, Storage and BDD
//! stand-ins, so every route works with curl and no cloud account.
//!
//! Data (the Clerk signing key, stored objects, records) lives in one folder,
//! `.devstack/` by default, so a restart keeps it. The dev stack never reads
//! `./.env`: that file holds production settings. Service variables set in
//! the environment (`PORT`, `LOG_LEVEL`, limits, …) apply, and the banner
//! lists the ones it took.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use image_service::app::App;
use image_service::config::Config;
use stand_ins::{
    standard_claims, BddMode, BddOptions, BddStandIn, ClerkStandIn, SigningKey, StorageOptions,
    StorageStandIn,
};

/// The dev stack's user when no other is asked for.
pub const DEMO_USER: &str = "user_demo";
/// Service key the local Storage accepts: a local Supabase's well-known
/// `service_role` JWT, so scripts and supabase-js meet the key form the real
/// server wants (not a secret: it guards nothing real).
pub const DEV_SERVICE_KEY: &str = stand_ins::storage::LOCAL_SERVICE_ROLE_KEY;
/// Lifetime of the printed demo token.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Service variables the dev stack sets itself: the upstreams are its own.
const STACK_OWNED: [&str; 9] = [
    "HOST",
    "CLERK_ISSUER",
    "CLERK_JWKS_URL",
    "CLERK_JWT_KEY",
    "SUPABASE_URL",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_SERVICE_KEY",
    "SUPABASE_BUCKET_NAME",
    "BDD_SERVICE_URL",
];

/// Service variables the dev stack takes from the environment when set.
const TUNABLE: [&str; 18] = [
    "PORT",
    "CLERK_AUTHORIZED_PARTIES",
    "CLERK_CLOCK_SKEW_SECS",
    "CLERK_ALLOW_PENDING_SESSIONS",
    "FRONTEND_URL",
    "MAX_IMAGE_BYTES",
    "MAX_BODY_BYTES",
    "UPSTREAM_TIMEOUT_MS",
    "UPLOAD_TIMEOUT_MS",
    "RATE_LIMIT_PER_MINUTE",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "MAX_CONNECTIONS",
    "MAX_UPLOADS_IN_FLIGHT",
    "MAX_UPLOADS_PER_USER",
    "MIN_BODY_RATE_BYTES_PER_SEC",
    "IDEMPOTENCY_TTL_SECS",
    "REDIS_URL",
];

/// Where the dev stack listens, keeps its data, and how its BDD behaves.
#[derive(Debug, Clone)]
pub struct DevStackOptions {
    /// Folder for the signing key, objects and records.
    pub data_dir: PathBuf,
    /// Address the service listens on (the stand-ins always use 127.0.0.1).
    pub host: IpAddr,
    /// Local Clerk port.
    pub clerk_port: u16,
    /// Local Storage port.
    pub storage_port: u16,
    /// Local BDD port (the real one's, 9002).
    pub bdd_port: u16,
    /// How the local BDD behaves.
    pub bdd_mode: BddMode,
}

impl DevStackOptions {
    /// Loopback, `.devstack/`, the usual ports, the documented BDD: for tests, with port 0.
    pub fn local(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            host: IpAddr::from([127, 0, 0, 1]),
            clerk_port: 0,
            storage_port: 0,
            bdd_port: 0,
            bdd_mode: BddMode::Faithful,
        }
    }

    /// Defaults, overridable by `DEV_DATA_DIR`, `DEV_HOST`, `DEV_CLERK_PORT`,
    /// `DEV_STORAGE_PORT`, `DEV_BDD_PORT` and `DEV_BDD_MODE`; every problem is reported.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |name: &str| {
            env(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut problems = Vec::new();
        let mut port = |name: &str, default: u16| match get(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                problems.push(format!("{name}: expected a port number, got {v:?}"));
                default
            }),
        };
        let clerk_port = port("DEV_CLERK_PORT", 5012);
        let storage_port = port("DEV_STORAGE_PORT", 54321);
        let bdd_port = port("DEV_BDD_PORT", 9002);
        let host = match get("DEV_HOST") {
            None => IpAddr::from([127, 0, 0, 1]),
            Some(v) => v.parse().unwrap_or_else(|_| {
                problems.push(format!("DEV_HOST: expected an IP address, got {v:?}"));
                IpAddr::from([127, 0, 0, 1])
            }),
        };
        let bdd_mode = match get("DEV_BDD_MODE").as_deref() {
            None | Some("documented") => BddMode::Faithful,
            Some("like-deployed") => BddMode::LikeReal,
            Some(other) => {
                problems.push(format!(
                    "DEV_BDD_MODE: expected documented or like-deployed, got {other:?}"
                ));
                BddMode::Faithful
            }
        };
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        Ok(Self {
            data_dir: get("DEV_DATA_DIR").map_or_else(|| PathBuf::from(".devstack"), PathBuf::from),
            host,
            clerk_port,
            storage_port,
            bdd_port,
            bdd_mode,
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
    host: IpAddr,
    bdd_mode: BddMode,
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
        bdd_options.mode = options.bdd_mode;
        bdd_options.data_file = Some(dir.join("bdd.json"));
        bdd_options.port = options.bdd_port;
        let bdd = BddStandIn::start(bdd_options)
            .await
            .map_err(|e| format!("local BDD on port {}: {e}", options.bdd_port))?;
        // The dev stack runs for hours; a test's log of requests would only grow.
        for stand_in in [&*clerk, &*storage, &*bdd] {
            stand_in.stop_recording();
        }
        Ok(Self {
            clerk,
            storage,
            bdd,
            host: options.host,
            bdd_mode: options.bdd_mode,
        })
    }

    /// The service's configuration: the upstreams are the stand-ins, tuning
    /// variables come from `env`, logs are pretty unless `LOG_FORMAT` says otherwise.
    pub fn config(&self, env: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let mut vars: HashMap<&str, String> = HashMap::new();
        vars.insert("HOST", self.host.to_string());
        vars.insert("CLERK_ISSUER", self.clerk.issuer());
        vars.insert("SUPABASE_URL", self.storage.url());
        vars.insert("SUPABASE_SERVICE_ROLE_KEY", DEV_SERVICE_KEY.into());
        vars.insert("BDD_SERVICE_URL", self.bdd.url());
        Config::from_lookup(|name| {
            if let Some(v) = vars.get(name) {
                return Some(v.clone());
            }
            if STACK_OWNED.contains(&name) {
                return None;
            }
            match env(name) {
                None if name == "LOG_FORMAT" => Some("pretty".into()),
                other => other,
            }
        })
        .map_err(|e| e.to_string())
    }

    /// A token for `user`, valid for `ttl`.
    pub fn token_for(&self, user: &str, ttl: Duration) -> String {
        self.clerk
            .mint_claims(&standard_claims(&self.clerk.issuer(), user, ttl))
    }

    /// How the local BDD behaves.
    pub fn bdd_mode(&self) -> BddMode {
        self.bdd_mode
    }
}

/// The service variables of `env` the dev stack uses, and those it ignores, by name.
pub fn environment_report(
    env: impl Fn(&str) -> Option<String>,
) -> (BTreeMap<&'static str, String>, Vec<&'static str>) {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let used = TUNABLE
        .iter()
        .filter_map(|&name| set(name).map(|v| (name, v)))
        .collect();
    let ignored = STACK_OWNED
        .iter()
        .copied()
        .filter(|name| set(name).is_some())
        .collect();
    (used, ignored)
}

/// Reads the signing key, or makes one readable by its owner only.
fn load_or_create_key(path: &Path) -> Result<SigningKey, String> {
    match std::fs::read_to_string(path) {
        Ok(pem) => SigningKey::from_pkcs8_pem("dev-key", &pem)
            .map_err(|e| format!("{}: {e} (delete it to get a new key)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate("dev-key");
            write_private(path, key.to_pkcs8_pem().as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Creates `path` with mode 0600 (on Unix) before any byte of the key is written.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

/// Runs the dev stack and the service until Ctrl-C or SIGTERM; prints a banner to start with.
pub async fn run() -> Result<(), String> {
    let env = |name: &str| std::env::var(name).ok();
    let options = DevStackOptions::from_env(env)?;
    let stack = DevStack::start(&options).await?;
    let config = stack.config(env)?;
    let _logs = image_service::telemetry::init(&config.log_level, config.log_format)
        .map_err(|e| format!("cannot start the log writer: {e}"))?;
    let app = App::build(config).await.map_err(|e| e.to_string())?;
    let token = stack.token_for(DEMO_USER, DEMO_TOKEN_TTL);
    println!("{}", banner(&stack, &app, &token, &options, env));
    app.run().await.map_err(|e| e.to_string())
}

/// Runs only the stand-ins (no service) until Ctrl-C or SIGTERM, for
/// benchmarks and for running the service binary against them by hand.
pub async fn run_stand_ins() -> Result<(), String> {
    let options = DevStackOptions::from_env(|name| std::env::var(name).ok())?;
    let stack = DevStack::start(&options).await?;
    println!(
        "clerk={}\nstorage={}\nbdd={}\nservice_key={DEV_SERVICE_KEY}\ndata_dir={}",
        stack.clerk.url(),
        stack.storage.url(),
        stack.bdd.url(),
        options.data_dir.display()
    );
    image_service::app::shutdown_signal().await;
    Ok(())
}

/// A 1x1 PNG, for the curl example.
const TINY_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

/// What the BDD mode means for the person trying the service.
fn bdd_mode_lines(mode: BddMode) -> &'static str {
    match mode {
        BddMode::Faithful => {
            "documented: the BDD API as documented (owners stored as sent, status and\n   \
             metadata kept, PATCH .../status exists). DEV_BDD_MODE=like-deployed runs the\n   \
             deployed BDD's behaviour instead."
        }
        BddMode::LikeReal => {
            "like-deployed: the BDD as deployed today: owners stored as an MD5 UUID,\n   \
             status and metadata dropped, ?status ignored, no PATCH route (status\n   \
             changes answer 502 \"opération non supportée\")."
        }
    }
}

fn banner(
    stack: &DevStack,
    app: &App,
    token: &str,
    options: &DevStackOptions,
    env: impl Fn(&str) -> Option<String>,
) -> String {
    let addr = app.local_addr();
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let base = format!("http://{host}:{}", addr.port());
    let (used, ignored) = environment_report(env);
    let mut settings = String::new();
    if used.is_empty() {
        settings
            .push_str(" settings       defaults (no service variable set in the environment)\n");
    } else {
        let names: Vec<String> = used.keys().map(|k| k.to_string()).collect();
        settings.push_str(&format!(
            " settings       from the environment: {}\n",
            names.join(", ")
        ));
    }
    if !ignored.is_empty() {
        settings.push_str(&format!(
            " ignored        {} (the dev stack's own upstreams are used)\n",
            ignored.join(", ")
        ));
    }
    if Path::new(".env").exists() {
        settings.push_str(" ./.env         not read: it holds production settings\n");
    }
    format!(
        "\n\
==============================================================\n \
Image service dev stack\n\
==============================================================\n \
service        {base}\n \
local Clerk    {clerk}  (JWKS {jwks})\n \
local Storage  {storage}\n \
local BDD      {bdd}\n \
BDD mode       {mode}\n \
data folder    {data}\n\
{settings}\n \
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
        mode = bdd_mode_lines(stack.bdd_mode),
        data = options.data_dir.display(),
    )
}
