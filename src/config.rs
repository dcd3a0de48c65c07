//! Configuration, read once at start-up from the environment (contract §1).
//!
//! Every variable is checked before the service starts; all problems are
//! reported together, one line each, naming the variable and never echoing a
//! secret.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// A value that must never be printed (keys, tokens).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// How Clerk session tokens are verified.
#[derive(Debug, Clone)]
pub struct ClerkConfig {
    /// Exact `iss` every token must carry.
    pub issuer: String,
    /// Where the JSON Web Key Set is fetched from.
    pub jwks_url: String,
    /// PEM public key; when set, no JWKS is ever fetched.
    pub jwt_key_pem: Option<String>,
    /// Allowed `azp` values; `None` accepts any.
    pub authorized_parties: Option<Vec<String>>,
    /// Leeway for `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// Accept session tokens whose `sts` is `pending`.
    pub allow_pending_sessions: bool,
    /// How often the key set is refreshed in the background (under 10 min).
    pub refresh_interval: Duration,
    /// Least time between two refetches caused by unknown `kid`s.
    pub unknown_kid_cooldown: Duration,
}

/// Where and how images are stored.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Supabase project URL, without a trailing slash.
    pub url: String,
    /// Service role key, sent as `Authorization` and `apikey`.
    pub service_key: Secret,
    /// Public bucket holding the images.
    pub bucket: String,
}

/// The whole configuration of the service.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listening address.
    pub host: IpAddr,
    /// Listening port (0 picks a free one, as tests do).
    pub port: u16,
    /// Token verification.
    pub clerk: ClerkConfig,
    /// Supabase Storage.
    pub storage: StorageConfig,
    /// BDD service base URL, without a trailing slash.
    pub bdd_url: String,
    /// Origins allowed by CORS.
    pub frontend_origins: Vec<String>,
    /// Largest decoded image, in bytes.
    pub max_image_bytes: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Timeout of each call to the BDD service and the JWKS endpoint.
    pub upstream_timeout: Duration,
    /// Timeout of each call to Supabase Storage.
    pub upload_timeout: Duration,
    /// Requests per user per minute on `/api/images*`; 0 turns it off.
    pub rate_limit_per_minute: u32,
    /// `tracing` filter directive.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Creates reading or uploading at once; beyond, `503` + `Retry-After`.
    pub max_uploads_in_flight: usize,
    /// Upload slots one user may hold at once; beyond, `429`.
    pub max_uploads_per_user: usize,
    /// How long a create waits for an upload slot before answering `503`.
    pub upload_slot_wait: Duration,
    /// Time allowed to send a complete request head, idle keep-alive included.
    pub header_read_timeout: Duration,
    /// Time allowed to send a whole request body.
    pub body_read_timeout: Duration,
    /// Slowest average body rate accepted once `body_grace` has passed.
    pub min_body_rate: u64,
    /// Time a body may take before its average rate is checked.
    pub body_grace: Duration,
    /// Largest request head (request line and headers); hyper checks it when
    /// its read buffer fills, so a head a little larger may still pass.
    pub max_header_bytes: usize,
    /// How long an `Idempotency-Key` is remembered, and the longest a
    /// cleanup is retried.
    pub idempotency_ttl: Duration,
    /// Redis shared by every instance; `None`: one instance, state in process.
    pub redis_url: Option<Secret>,
    /// Budget of the whole `/api/ready` check.
    pub ready_timeout: Duration,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
}

/// Every problem found in the environment, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the process environment (call `dotenvy` before, if wanted).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup`, so tests can pass a map.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader {
            lookup: &lookup,
            problems: Vec::new(),
        };

        let host = r.host();
        let port = r.parsed("PORT", "5002", "a port number (0-65535)");

        // Kept exactly as written: tokens must carry this very `iss`.
        let issuer = r.required("CLERK_ISSUER");
        if let Some(issuer) = &issuer {
            if !r.placeholder("CLERK_ISSUER", issuer) {
                r.check_url("CLERK_ISSUER", issuer);
            }
        }
        let jwks_url = match r.optional("CLERK_JWKS_URL") {
            Some(url) => {
                r.check_url("CLERK_JWKS_URL", &url);
                url
            }
            None => format!(
                "{}/.well-known/jwks.json",
                trim_slash(issuer.clone().unwrap_or_default())
            ),
        };
        let jwt_key_pem = r
            .optional("CLERK_JWT_KEY")
            .map(|pem| pem.replace("\\n", "\n"));
        if let Some(pem) = &jwt_key_pem {
            if jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).is_err() {
                r.problem("CLERK_JWT_KEY: not a PEM-encoded RSA public key");
            }
        }
        let authorized_parties = r.optional("CLERK_AUTHORIZED_PARTIES").map(|list| {
            list.split(',')
                .map(|p| trim_slash(p.trim().to_owned()))
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
        });
        let clock_skew: Option<u64> =
            r.parsed("CLERK_CLOCK_SKEW_SECS", "5", "a whole number of seconds");
        let allow_pending_sessions = r.boolean("CLERK_ALLOW_PENDING_SESSIONS");

        let storage_url = r.required("SUPABASE_URL").map(trim_slash);
        if let Some(url) = &storage_url {
            if !r.placeholder("SUPABASE_URL", url) {
                r.check_url("SUPABASE_URL", url);
            }
        }
        let service_key = ["SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_SERVICE_KEY"]
            .into_iter()
            .find_map(|name| r.optional(name).map(|key| (name, key)));
        match &service_key {
            None => r.problem("SUPABASE_SERVICE_ROLE_KEY: required but not set (SUPABASE_SERVICE_KEY is accepted too)"),
            Some((name, key)) => {
                if !r.placeholder(name, key)
                    && !key.bytes().all(|b| b.is_ascii_graphic())
                {
                    r.problem(format!(
                        "{name}: only visible ASCII characters (it is sent in HTTP headers)"
                    ));
                }
            }
        }
        let service_key = service_key.map(|(_, key)| key);
        let bucket = r
            .optional("SUPABASE_BUCKET_NAME")
            .unwrap_or_else(|| "images".into());
        if !bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            r.problem(format!(
                "SUPABASE_BUCKET_NAME: {bucket:?} may only hold letters, digits, '_', '-' and '.'"
            ));
        }

        let bdd_url = trim_slash(
            r.optional("BDD_SERVICE_URL")
                .unwrap_or_else(|| "http://localhost:9002".into()),
        );
        r.check_url("BDD_SERVICE_URL", &bdd_url);

        let frontend = r
            .optional("FRONTEND_URL")
            .unwrap_or_else(|| "http://localhost:3000".into());
        let frontend_origins: Vec<String> = frontend
            .split(',')
            .map(|o| trim_slash(o.trim().to_owned()))
            .filter(|o| !o.is_empty())
            .collect();
        for origin in &frontend_origins {
            if origin == "*" || url::Url::parse(origin).is_err() || origin.contains(['\r', '\n']) {
                r.problem(format!(
                    "FRONTEND_URL: {origin:?} is not an origin like http://localhost:3000"
                ));
            }
        }

        let max_image_bytes = r.positive("MAX_IMAGE_BYTES", "10485760");
        let max_body_bytes = r.positive("MAX_BODY_BYTES", "52428800");
        let upstream_timeout = r.positive("UPSTREAM_TIMEOUT_MS", "10000");
        let upload_timeout = r.positive("UPLOAD_TIMEOUT_MS", "30000");
        let max_connections = r.positive("MAX_CONNECTIONS", "1024");
        let max_uploads_in_flight = r.positive("MAX_UPLOADS_IN_FLIGHT", "8");
        let max_uploads_per_user = r.positive("MAX_UPLOADS_PER_USER", "2");
        let idempotency_ttl = r.positive("IDEMPOTENCY_TTL_SECS", "86400");
        let redis_url = r.optional("REDIS_URL");
        if let Some(url) = &redis_url {
            // Never echoed: it may carry a password.
            let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
            if !scheme_ok || redis::Client::open(url.as_str()).is_err() {
                r.problem("REDIS_URL: expected a redis://[user:password@]host[:port][/db] URL");
            }
        }
        let min_body_rate = r.positive("MIN_BODY_RATE_BYTES_PER_SEC", "65536");
        let rate_limit_per_minute = r.parsed(
            "RATE_LIMIT_PER_MINUTE",
            "0",
            "a whole number (0 turns it off)",
        );

        let log_level = r.optional("LOG_LEVEL").unwrap_or_else(|| "info".into());
        if log_filter(&log_level).is_none() {
            r.problem(format!("LOG_LEVEL: {log_level:?} is not a log filter such as info or info,image_service=debug"));
        }
        let log_format = match r
            .optional("LOG_FORMAT")
            .map(|f| f.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("json") => Some(LogFormat::Json),
            Some("pretty") => Some(LogFormat::Pretty),
            Some(other) => {
                r.problem(format!(
                    "LOG_FORMAT: expected json or pretty, got {other:?}"
                ));
                None
            }
        };

        if !r.problems.is_empty() {
            return Err(ConfigError(r.problems));
        }
        // Every `None` below has pushed a problem, so this is unreachable in practice;
        // the `ok_or` keeps it a reported error rather than a panic.
        let missing = || ConfigError(vec!["configuration: internal inconsistency".into()]);
        Ok(Config {
            host: host.ok_or_else(missing)?,
            port: port.ok_or_else(missing)?,
            clerk: ClerkConfig {
                issuer: issuer.ok_or_else(missing)?,
                jwks_url,
                jwt_key_pem,
                authorized_parties,
                clock_skew: Duration::from_secs(clock_skew.ok_or_else(missing)?),
                allow_pending_sessions: allow_pending_sessions.ok_or_else(missing)?,
                refresh_interval: Duration::from_secs(5 * 60),
                unknown_kid_cooldown: Duration::from_secs(30),
            },
            storage: StorageConfig {
                url: storage_url.ok_or_else(missing)?,
                service_key: Secret::new(service_key.ok_or_else(missing)?),
                bucket,
            },
            bdd_url,
            frontend_origins,
            max_image_bytes: max_image_bytes.ok_or_else(missing)? as usize,
            max_body_bytes: max_body_bytes.ok_or_else(missing)? as usize,
            upstream_timeout: Duration::from_millis(upstream_timeout.ok_or_else(missing)?),
            upload_timeout: Duration::from_millis(upload_timeout.ok_or_else(missing)?),
            rate_limit_per_minute: rate_limit_per_minute.ok_or_else(missing)?,
            log_level,
            log_format: log_format.ok_or_else(missing)?,
            max_connections: max_connections.ok_or_else(missing)? as usize,
            max_uploads_in_flight: max_uploads_in_flight.ok_or_else(missing)? as usize,
            max_uploads_per_user: max_uploads_per_user.ok_or_else(missing)? as usize,
            upload_slot_wait: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(30),
            min_body_rate: min_body_rate.ok_or_else(missing)?,
            body_grace: Duration::from_secs(5),
            max_header_bytes: 32 * 1024,
            idempotency_ttl: Duration::from_secs(idempotency_ttl.ok_or_else(missing)?),
            redis_url: redis_url.map(Secret::new),
            ready_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
        })
    }
}

/// The values env.example gives the required variables, and what to set
/// instead. Obvious placeholders rather than plausible examples, so that a
/// copied env.example fails at start, naming each variable, instead of
/// failing every request against a host that does not exist. Compared
/// ignoring case and a trailing slash (host names ignore case; the old
/// env.example's `your-service-role-key` is caught too).
const PLACEHOLDERS: [(&str, &str, &str); 4] = [
    (
        "CLERK_ISSUER",
        "https://YOUR-INSTANCE.clerk.accounts.dev",
        "set your Clerk instance's issuer (the `iss` of its session tokens, e.g. https://<slug>.clerk.accounts.dev)",
    ),
    (
        "SUPABASE_URL",
        "https://YOUR-PROJECT.supabase.co",
        "set your Supabase project URL (https://<project-ref>.supabase.co)",
    ),
    (
        "SUPABASE_SERVICE_ROLE_KEY",
        "YOUR-SERVICE-ROLE-KEY",
        "set your Supabase service role key",
    ),
    (
        "SUPABASE_SERVICE_KEY",
        "YOUR-SERVICE-ROLE-KEY",
        "set your Supabase service role key",
    ),
];

/// Collects problems while reading variables.
struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
}

impl Reader<'_> {
    fn problem(&mut self, line: impl Into<String>) {
        self.problems.push(line.into());
    }

    /// A set, non-blank value; blank counts as unset (as in many `.env` files).
    fn optional(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn required(&mut self, name: &str) -> Option<String> {
        let value = self.optional(name);
        if value.is_none() {
            self.problem(format!("{name}: required but not set"));
        }
        value
    }

    /// Reports `value` if it is still env.example's placeholder for `name`;
    /// says whether it was. The line names the variable, never the value.
    fn placeholder(&mut self, name: &str, value: &str) -> bool {
        let value = trim_slash(value.to_owned());
        let Some((_, _, hint)) = PLACEHOLDERS.iter().find(|(variable, placeholder, _)| {
            *variable == name && placeholder.eq_ignore_ascii_case(&value)
        }) else {
            return false;
        };
        self.problem(format!("{name}: still the env.example placeholder; {hint}"));
        true
    }

    fn parsed<T: FromStr>(&mut self, name: &str, default: &str, expected: &str) -> Option<T> {
        let raw = self.optional(name).unwrap_or_else(|| default.to_owned());
        match raw.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.problem(format!("{name}: expected {expected}, got {raw:?}"));
                None
            }
        }
    }

    /// `HOST`: an IP address, or a name such as `localhost` resolved once here.
    fn host(&mut self) -> Option<IpAddr> {
        let raw = self.optional("HOST").unwrap_or_else(|| "0.0.0.0".into());
        if let Ok(ip) = raw.parse() {
            return Some(ip);
        }
        let resolved = std::net::ToSocketAddrs::to_socket_addrs(&(raw.as_str(), 0))
            .ok()
            .and_then(|mut addrs| addrs.next());
        if resolved.is_none() {
            self.problem(format!(
                "HOST: expected an IP address or a resolvable host name, got {raw:?}"
            ));
        }
        resolved.map(|a| a.ip())
    }

    /// `true` or `false` (any case), `false` when unset.
    fn boolean(&mut self, name: &str) -> Option<bool> {
        match self
            .optional(name)
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("false") => Some(false),
            Some("true") => Some(true),
            Some(other) => {
                self.problem(format!("{name}: expected true or false, got {other:?}"));
                None
            }
        }
    }

    fn positive(&mut self, name: &str, default: &str) -> Option<u64> {
        match self.parsed::<u64>(name, default, "a whole number above 0") {
            Some(0) => {
                self.problem(format!(
                    "{name}: expected a whole number above 0, got \"0\""
                ));
                None
            }
            other => other,
        }
    }

    fn check_url(&mut self, name: &str, value: &str) {
        match url::Url::parse(value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => self.problem(format!("{name}: expected an http(s) URL, got {value:?}")),
        }
    }
}

fn trim_slash(mut s: String) -> String {
    while s.ends_with('/') {
        s.pop();
    }
    s
}

/// `LOG_LEVEL` as a filter: `info`, or `target=level` directives such as
/// `info,image_service=debug`. A `Targets` filter rather than `EnvFilter`:
/// no span or field filters, but no regex engine in the binary (270 KiB of
/// code, resident) and no per-span bookkeeping on every request.
pub fn log_filter(level: &str) -> Option<tracing_subscriber::filter::Targets> {
    level.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const MINIMAL: &[(&str, &str)] = &[
        ("CLERK_ISSUER", "https://example.clerk.accounts.dev/"),
        ("SUPABASE_URL", "https://xyz.supabase.co"),
        ("SUPABASE_SERVICE_ROLE_KEY", "service-key"),
    ];

    #[test]
    fn minimal_environment_gets_the_documented_defaults() {
        let c = config(MINIMAL).unwrap();
        assert_eq!(c.port, 5002);
        assert_eq!(c.host.to_string(), "0.0.0.0");
        assert_eq!(c.clerk.issuer, "https://example.clerk.accounts.dev/");
        assert_eq!(
            c.clerk.jwks_url,
            "https://example.clerk.accounts.dev/.well-known/jwks.json"
        );
        assert_eq!(c.storage.bucket, "images");
        assert_eq!(c.bdd_url, "http://localhost:9002");
        assert_eq!(c.frontend_origins, vec!["http://localhost:3000"]);
        assert_eq!(c.max_image_bytes, 10_485_760);
        assert_eq!(c.max_body_bytes, 52_428_800);
        assert_eq!(c.upstream_timeout, Duration::from_secs(10));
        assert_eq!(c.upload_timeout, Duration::from_secs(30));
        assert_eq!(c.clerk.clock_skew, Duration::from_secs(5));
        assert_eq!(c.rate_limit_per_minute, 0);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn a_service_key_that_cannot_be_sent_in_a_header_is_refused() {
        let mut vars = MINIMAL.to_vec();
        vars.retain(|(k, _)| *k != "SUPABASE_SERVICE_ROLE_KEY");
        vars.push(("SUPABASE_SERVICE_ROLE_KEY", "key with spaces\n"));
        let text = config(&vars).unwrap_err().to_string();
        assert!(
            text.contains("SUPABASE_SERVICE_ROLE_KEY: only visible ASCII"),
            "{text}"
        );
        assert!(
            !text.contains("key with spaces"),
            "the key is never printed: {text}"
        );
    }

    #[test]
    fn log_level_takes_a_level_or_target_directives_and_refuses_the_rest() {
        for good in [
            "info",
            "off",
            "WARN",
            "info,image_service=debug",
            "hyper=warn",
        ] {
            let mut vars = MINIMAL.to_vec();
            vars.push(("LOG_LEVEL", good));
            assert_eq!(config(&vars).unwrap().log_level, good);
        }
        for bad in ["image_service=loud", "a=b=c"] {
            let mut vars = MINIMAL.to_vec();
            vars.push(("LOG_LEVEL", bad));
            let text = config(&vars).unwrap_err().to_string();
            assert!(text.contains("LOG_LEVEL"), "{bad}: {text}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_its_variable() {
        let err = config(&[("PORT", "http"), ("LOG_FORMAT", "xml")]).unwrap_err();
        let text = err.to_string();
        for name in [
            "PORT",
            "CLERK_ISSUER",
            "SUPABASE_URL",
            "SUPABASE_SERVICE_ROLE_KEY",
            "LOG_FORMAT",
        ] {
            assert!(text.contains(name), "{name} missing from {text}");
        }
        assert_eq!(err.0.len(), 5);
    }

    #[test]
    fn host_takes_a_name_and_log_format_any_case() {
        let mut vars = MINIMAL.to_vec();
        vars.push(("HOST", "localhost"));
        vars.push(("LOG_FORMAT", "Pretty"));
        let c = config(&vars).unwrap();
        assert!(c.host.is_loopback(), "{}", c.host);
        assert_eq!(c.log_format, LogFormat::Pretty);
        let mut unresolvable = MINIMAL.to_vec();
        unresolvable.push(("HOST", "no such host.invalid"));
        assert!(config(&unresolvable)
            .unwrap_err()
            .to_string()
            .starts_with("HOST: "));
    }

    #[test]
    fn the_old_service_key_name_is_an_alias() {
        let mut vars = MINIMAL.to_vec();
        vars.retain(|(k, _)| *k != "SUPABASE_SERVICE_ROLE_KEY");
        vars.push(("SUPABASE_SERVICE_KEY", "old-name"));
        assert_eq!(
            config(&vars).unwrap().storage.service_key.expose(),
            "old-name"
        );
    }

    #[test]
    fn secrets_are_never_printed() {
        let mut vars = MINIMAL.to_vec();
        vars.push(("MAX_IMAGE_BYTES", "lots"));
        let c = config(MINIMAL).unwrap();
        assert!(!format!("{c:?}").contains("service-key"));
        let err = config(&vars).unwrap_err().to_string();
        assert!(!err.contains("service-key"));
    }

    #[test]
    fn frontend_url_accepts_a_comma_list() {
        let mut vars = MINIMAL.to_vec();
        vars.push(("FRONTEND_URL", "http://a.test, https://b.test/"));
        assert_eq!(
            config(&vars).unwrap().frontend_origins,
            vec!["http://a.test", "https://b.test"]
        );
    }

    #[test]
    fn a_malformed_pem_key_is_refused() {
        let mut vars = MINIMAL.to_vec();
        vars.push(("CLERK_JWT_KEY", "not a key"));
        assert!(config(&vars)
            .unwrap_err()
            .to_string()
            .contains("CLERK_JWT_KEY"));
    }

    /// The three required values exactly as env.example writes them.
    const ENV_EXAMPLE_PLACEHOLDERS: &[(&str, &str)] = &[
        ("CLERK_ISSUER", "https://YOUR-INSTANCE.clerk.accounts.dev"),
        ("SUPABASE_URL", "https://YOUR-PROJECT.supabase.co"),
        ("SUPABASE_SERVICE_ROLE_KEY", "YOUR-SERVICE-ROLE-KEY"),
    ];

    #[test]
    fn env_example_placeholders_are_refused_one_line_each_naming_the_variable() {
        let err = config(ENV_EXAMPLE_PLACEHOLDERS).unwrap_err();
        assert_eq!(
            err.0,
            vec![
                "CLERK_ISSUER: still the env.example placeholder; set your Clerk instance's issuer (the `iss` of its session tokens, e.g. https://<slug>.clerk.accounts.dev)",
                "SUPABASE_URL: still the env.example placeholder; set your Supabase project URL (https://<project-ref>.supabase.co)",
                "SUPABASE_SERVICE_ROLE_KEY: still the env.example placeholder; set your Supabase service role key",
            ]
        );
    }

    #[test]
    fn each_placeholder_is_refused_alone_and_whatever_its_case() {
        for (name, placeholder) in ENV_EXAMPLE_PLACEHOLDERS {
            for written in [
                placeholder.to_string(),
                placeholder.to_ascii_lowercase(),
                format!("{placeholder}/"),
            ] {
                let mut vars = MINIMAL.to_vec();
                vars.retain(|(k, _)| k != name);
                vars.push((name, &written));
                let err = config(&vars).unwrap_err();
                assert_eq!(err.0.len(), 1, "{written}: {err}");
                assert!(
                    err.0[0].starts_with(&format!("{name}: still the env.example placeholder")),
                    "{err}"
                );
                assert!(
                    !err.0[0].contains(&written),
                    "the value is not echoed: {err}"
                );
            }
        }
    }

    #[test]
    fn the_placeholder_key_under_its_old_name_is_refused_naming_that_name() {
        let mut vars = MINIMAL.to_vec();
        vars.retain(|(k, _)| *k != "SUPABASE_SERVICE_ROLE_KEY");
        vars.push(("SUPABASE_SERVICE_KEY", "YOUR-SERVICE-ROLE-KEY"));
        let err = config(&vars).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(
            err.0[0].starts_with("SUPABASE_SERVICE_KEY: still the env.example placeholder"),
            "{err}"
        );
    }

    #[test]
    fn only_the_placeholders_themselves_are_refused() {
        // Real-looking values, and a placeholder under another variable's
        // name, are left to the usual checks.
        let mut vars = MINIMAL.to_vec();
        vars.retain(|(k, _)| *k != "SUPABASE_SERVICE_ROLE_KEY");
        vars.push((
            "SUPABASE_SERVICE_ROLE_KEY",
            "https://YOUR-PROJECT.supabase.co",
        ));
        vars.push((
            "CLERK_JWKS_URL",
            "https://YOUR-INSTANCE.clerk.accounts.dev/jwks",
        ));
        assert!(config(&vars).is_ok());
        let mut vars = MINIMAL.to_vec();
        vars.retain(|(k, _)| *k != "SUPABASE_URL");
        vars.push(("SUPABASE_URL", "https://your-project-2.supabase.co"));
        assert!(config(&vars).is_ok());
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let mut vars = MINIMAL.to_vec();
        vars.push(("UPSTREAM_TIMEOUT_MS", "0"));
        assert!(config(&vars)
            .unwrap_err()
            .to_string()
            .contains("UPSTREAM_TIMEOUT_MS"));
    }
}
