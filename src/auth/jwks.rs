//! Clerk's public keys, fetched once, kept, and refreshed (contract §2).
//!
//! - a background task refreshes the set well before it is 10 minutes old;
//! - an unknown `kid` triggers at most one refetch per cooldown, and every
//!   request waiting meanwhile shares that one fetch (single flight);
//! - a failed fetch keeps the keys already held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use serde_json::Value;

use super::AuthError;
use crate::clients::{read_limited, ReadError, Transport, UpstreamFault};
use crate::metrics::{Metrics, Outcome, Upstream};
use crate::request_id::{RequestId, X_REQUEST_ID};

/// Largest key set accepted; Clerk's holds a handful of keys.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Keys kept from one set at most.
const MAX_KEYS: usize = 64;
/// Longest `kid` looked up.
pub const MAX_KID_LEN: usize = 256;

/// Verification keys by `kid`, swapped whole on each successful fetch.
type KeySet = Arc<HashMap<String, Arc<DecodingKey>>>;

/// Why a refetch is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// A token named a `kid` we do not hold: rate-limited by the cooldown.
    UnknownKid,
    /// Nothing is held yet, or the periodic refresh is due.
    Load,
}

#[derive(Default)]
struct FetchState {
    last_unknown_kid_fetch: Option<Instant>,
    /// Error of the last attempt, if it failed.
    last_error: Option<(UpstreamFault, String)>,
}

/// The cached key set and the rules to refresh it.
pub struct KeyStore {
    url: String,
    http: reqwest::Client,
    timeout: Duration,
    cooldown: Duration,
    keys: RwLock<Option<KeySet>>,
    /// Held while fetching, so concurrent callers wait for one fetch.
    fetch: tokio::sync::Mutex<FetchState>,
    /// Bumped after every completed attempt; waiters compare it to reuse the outcome.
    attempts: AtomicU64,
    metrics: Metrics,
}

impl KeyStore {
    /// A store for the JWKS at `url`; nothing is fetched yet.
    pub fn new(
        url: String,
        http: reqwest::Client,
        timeout: Duration,
        cooldown: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            url,
            http,
            timeout,
            cooldown,
            keys: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            attempts: AtomicU64::new(0),
            metrics,
        }
    }

    /// Starts the background refresh; it ends when the store is dropped.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration) {
        let store: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                match store.upgrade() {
                    Some(store) => {
                        // No request behind a scheduled refresh: it gets its own id.
                        let _ = store.refetch(Trigger::Load, &RequestId::generate()).await;
                    }
                    None => return,
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Whether a key set is held (readiness).
    pub fn is_loaded(&self) -> bool {
        self.read_keys().is_some()
    }

    /// Loads the set if none is held yet; a fetch carries `request_id`.
    pub async fn ensure_loaded(&self, request_id: &RequestId) -> Result<(), AuthError> {
        if self.is_loaded() {
            return Ok(());
        }
        self.refetch(Trigger::Load, request_id).await
    }

    /// The key named `kid`, refetching the set once if it is unknown (the
    /// fetch carries the id of the request that makes it).
    pub async fn key(
        &self,
        kid: &str,
        request_id: &RequestId,
    ) -> Result<Arc<DecodingKey>, AuthError> {
        let trigger = match self.read_keys() {
            Some(keys) => match keys.get(kid) {
                Some(key) => return Ok(key.clone()),
                None => Trigger::UnknownKid,
            },
            None => Trigger::Load,
        };
        self.refetch(trigger, request_id).await?;
        self.read_keys()
            .and_then(|keys| keys.get(kid).cloned())
            .ok_or(AuthError::UnknownKey)
    }

    /// The key held for `kid` now, without fetching.
    pub fn current(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.read_keys().and_then(|keys| keys.get(kid).cloned())
    }

    fn read_keys(&self) -> Option<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fetches the set unless another caller just did; `Unavailable` only when nothing is held.
    async fn refetch(&self, trigger: Trigger, request_id: &RequestId) -> Result<(), AuthError> {
        let seen = self.attempts.load(Ordering::Acquire);
        let mut state = self.fetch.lock().await;
        let outcome = |state: &FetchState| match (self.is_loaded(), &state.last_error) {
            (true, _) => Ok(()),
            (false, error) => {
                let (fault, detail) = error
                    .clone()
                    .unwrap_or_else(|| (UpstreamFault::BadAnswer, "no key set".into()));
                Err(AuthError::Unavailable { fault, detail })
            }
        };
        // Someone completed an attempt while we waited: share its outcome.
        if self.attempts.load(Ordering::Acquire) != seen {
            return outcome(&state);
        }
        if trigger == Trigger::UnknownKid {
            if let Some(at) = state.last_unknown_kid_fetch {
                if at.elapsed() < self.cooldown {
                    return Ok(());
                }
            }
            state.last_unknown_kid_fetch = Some(Instant::now());
        }
        let started = Instant::now();
        let fetched = self.fetch_set(request_id).await;
        let kind = match &fetched {
            Ok(_) => Outcome::Ok,
            Err(FetchError::Timeout) => Outcome::Timeout,
            Err(FetchError::Unavailable(_)) => Outcome::Unavailable,
            Err(_) => Outcome::Failed,
        };
        self.metrics
            .upstream(Upstream::Clerk, kind, started.elapsed());
        self.metrics.jwks_fetch(
            fetched.is_ok(),
            trigger == Trigger::Load && self.is_loaded(),
        );
        match fetched.map_err(|e| (e.fault(), e.to_string())) {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "JWKS fetched");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
                state.last_error = None;
            }
            Err((fault, error)) => {
                // Logged here, once: a refresh has no request to carry it.
                tracing::warn!(upstream = "clerk", %error, "JWKS fetch failed; keeping the keys held");
                state.last_error = Some((fault, error));
            }
        }
        self.attempts.fetch_add(1, Ordering::Release);
        outcome(&state)
    }

    async fn fetch_set(
        &self,
        request_id: &RequestId,
    ) -> Result<HashMap<String, Arc<DecodingKey>>, FetchError> {
        let response = self
            .http
            .get(&self.url)
            .timeout(self.timeout)
            .header(&X_REQUEST_ID, request_id.as_str())
            .send()
            .await
            .map_err(|e| FetchError::from(Transport::classify(&e)))?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let body = read_limited(response, MAX_JWKS_BYTES)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => FetchError::Invalid("JWKS too large".into()),
                ReadError::Transport(e) => Transport::classify(&e).into(),
            })?;
        let keys = parse_jwks(&body).map_err(FetchError::Invalid)?;
        // A set with nothing usable is a failed refresh, not a revocation of every key.
        if keys.is_empty() {
            return Err(FetchError::Invalid(
                "JWKS holds no usable RSA signing key".into(),
            ));
        }
        Ok(keys)
    }
}

/// Why a key set could not be fetched.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("JWKS timed out")]
    Timeout,
    #[error("JWKS unreachable: {0}")]
    Unavailable(String),
    #[error("JWKS connection closed: {0}")]
    Closed(String),
    #[error("JWKS answered HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Invalid(String),
}

impl FetchError {
    fn fault(&self) -> UpstreamFault {
        match self {
            Self::Timeout => UpstreamFault::Timeout,
            Self::Unavailable(_) => UpstreamFault::Unreachable,
            Self::Status(status @ 400..=499) => UpstreamFault::Refused(*status),
            Self::Status(status) => UpstreamFault::Failed(*status),
            Self::Closed(_) | Self::Invalid(_) => UpstreamFault::BadAnswer,
        }
    }
}

impl From<Transport> for FetchError {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Timeout => Self::Timeout,
            Transport::Connect(d) => Self::Unavailable(d),
            Transport::Closed(d) => Self::Closed(d),
        }
    }
}

/// Keeps the RSA signing keys of a JWKS, by `kid`; the first of a duplicated `kid` wins.
pub fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
    let set: Value = serde_json::from_slice(body).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let keys = set
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS has no keys array")?;
    let mut out = HashMap::new();
    for jwk in keys {
        if out.len() == MAX_KEYS {
            break;
        }
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        let usable = field("kty") == Some("RSA")
            && matches!(field("use"), None | Some("sig"))
            && matches!(field("alg"), None | Some("RS256"));
        let (Some(kid), Some(n), Some(e)) = (field("kid"), field("n"), field("e")) else {
            continue;
        };
        if !usable || kid.is_empty() || kid.chars().count() > MAX_KID_LEN || out.contains_key(kid) {
            continue;
        }
        if let Ok(key) = DecodingKey::from_rsa_components(n, e) {
            out.insert(kid.to_owned(), Arc::new(key));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rsa_signing_keys_are_kept() {
        let body = serde_json::json!({"keys": [
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "hs", "alg": "HS256", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "ok", "use": "sig", "alg": "RS256", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
        ]});
        let keys = parse_jwks(body.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ok"]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_jwks(b"<html>").is_err());
        assert!(parse_jwks(b"{\"keys\": 3}").is_err());
    }
}
