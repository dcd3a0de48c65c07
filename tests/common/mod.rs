//! Start-up shared by the test binaries (`tests/api/`, `tests/soak.rs`): the
//! production wiring (`Config`, `App::build`, `run_until`) on a random port,
//! against in-process stand-ins of Clerk, Storage and the BDD service on
//! their own random ports.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::sync::Once;

use image_service::app::App;
use image_service::config::Config;
use stand_ins::{test_key, BddOptions, BddStandIn, ClerkStandIn, StorageOptions, StorageStandIn};
use tokio::sync::oneshot;

/// The service key the Storage stand-in accepts.
pub const SERVICE_KEY: &str = "test-service-role-key";
/// The frontend origin allowed by default.
pub const FRONTEND: &str = "http://localhost:3000";
/// The bucket.
pub const BUCKET: &str = "images";

/// Knobs for one service and its stand-ins.
pub struct TestOptions {
    /// BDD stand-in options (port is ignored).
    pub bdd: BddOptions,
    /// Environment variables on top of the stand-ins' (e.g. `MAX_IMAGE_BYTES`,
    /// or an upstream URL pointing at a proxy in front of a stand-in).
    pub env: Vec<(String, String)>,
    /// Last-minute change to the parsed configuration.
    pub tweak: Box<dyn FnOnce(&mut Config) + Send>,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            bdd: BddOptions::new(),
            env: Vec::new(),
            tweak: Box::new(|_| {}),
        }
    }
}

impl TestOptions {
    /// Adds an environment variable.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Changes the configuration after parsing.
    pub fn tweak(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.tweak = Box::new(f);
        self
    }

    /// Uses these BDD options.
    pub fn bdd(mut self, bdd: BddOptions) -> Self {
        self.bdd = bdd;
        self
    }
}

/// The three stand-ins, started before the service so that a caller can put
/// something between them and it (see [`spawn_app_on`]).
pub struct StandIns {
    /// Local Clerk.
    pub clerk: ClerkStandIn,
    /// Local Storage.
    pub storage: StorageStandIn,
    /// Local BDD.
    pub bdd: BddStandIn,
}

impl StandIns {
    /// Starts each stand-in on a random loopback port.
    pub async fn start(options: &TestOptions) -> StandIns {
        init_logs();
        let clerk = ClerkStandIn::start(vec![test_key(0)], 0)
            .await
            .expect("clerk stand-in");
        let storage = StorageStandIn::start(StorageOptions::new(SERVICE_KEY))
            .await
            .expect("storage stand-in");
        let mut bdd_options = options.bdd.clone();
        bdd_options.port = 0;
        let bdd = BddStandIn::start(bdd_options).await.expect("bdd stand-in");
        StandIns {
            clerk,
            storage,
            bdd,
        }
    }

    /// The service's environment pointing at these stand-ins.
    fn env(&self) -> HashMap<String, String> {
        HashMap::from([
            ("HOST".into(), "127.0.0.1".into()),
            ("PORT".into(), "0".into()),
            ("CLERK_ISSUER".into(), self.clerk.issuer()),
            ("SUPABASE_URL".into(), self.storage.url()),
            ("SUPABASE_SERVICE_ROLE_KEY".into(), SERVICE_KEY.into()),
            ("BDD_SERVICE_URL".into(), self.bdd.url()),
            ("UPSTREAM_TIMEOUT_MS".into(), "2000".into()),
            ("UPLOAD_TIMEOUT_MS".into(), "2000".into()),
        ])
    }
}

/// A running service with its stand-ins; dropping it stops the service.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// A plain client (no redirects, no default headers).
    pub client: reqwest::Client,
    /// Local Clerk.
    pub clerk: ClerkStandIn,
    /// Local Storage.
    pub storage: StorageStandIn,
    /// Local BDD.
    pub bdd: BddStandIn,
    /// The configuration the service runs with.
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            // Kept for the whole test process.
            std::mem::forget(image_service::telemetry::init(
                "info,image_service=debug",
                image_service::config::LogFormat::Pretty,
            ));
        }
    });
}

/// The service with default options.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestOptions::default()).await
}

/// The service with `options`, on stand-ins of its own.
pub async fn spawn_app_with(options: TestOptions) -> TestApp {
    let stand_ins = StandIns::start(&options).await;
    spawn_app_on(stand_ins, options).await
}

/// The service on `stand_ins`, started beforehand with the same `options`.
/// `options.env` overrides the URLs pointing at them, e.g. to route the
/// service through proxies that the caller put in front of them.
pub async fn spawn_app_on(stand_ins: StandIns, options: TestOptions) -> TestApp {
    init_logs();
    let mut env = stand_ins.env();
    env.extend(options.env);
    let mut config = Config::from_lookup(|name| env.get(name).cloned()).expect("test config");
    (options.tweak)(&mut config);

    let app = App::build(config.clone()).await.expect("app builds");
    let address = format!("http://{}", app.local_addr());
    let (tx, rx) = oneshot::channel();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let StandIns {
        clerk,
        storage,
        bdd,
    } = stand_ins;
    TestApp {
        address,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        clerk,
        storage,
        bdd,
        config,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestApp {
    /// Stops the service gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server ran");
        }
    }
}
