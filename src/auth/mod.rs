//! Clerk session tokens: the checks of contract §2. Token verification only:
//! no HTTP, no answers; the `AuthUser` extractor turns its errors into answers.

pub mod cache;
pub mod claims;
pub mod jwks;

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::clients::UpstreamFault;
use crate::config::ClerkConfig;
use crate::domain::UserId;
use crate::metrics::Metrics;
use crate::request_id::RequestId;
use cache::{CacheKey, TokenCache};
use claims::{ClaimError, ClaimRules};
use jwks::{KeyStore, MAX_KID_LEN};

/// Longest token accepted (compact JWS).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer <token>`.
    #[error("no bearer token")]
    Missing,
    /// Not a compact JWS we accept (size, shape, header, algorithm, kid).
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The `kid` is not in the key set, even after a refetch.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("rejected token: {0}")]
    Rejected(String),
    /// The header or a claim fails the session-token rules.
    #[error("refused claims: {0}")]
    Claim(ClaimError),
    /// No keys could be obtained at all.
    #[error("keys unavailable: {detail}")]
    Unavailable {
        /// What went wrong, in a word.
        fault: UpstreamFault,
        /// The detail, for the log.
        detail: String,
    },
}

/// Where verification keys come from.
enum Keys {
    /// `CLERK_JWT_KEY`: networkless.
    Static(Arc<DecodingKey>),
    /// Clerk's JWKS, cached.
    Jwks(Arc<KeyStore>),
}

/// Verifies Clerk session tokens.
pub struct Verifier {
    keys: Keys,
    /// Signature only: every claim is checked by `claims`.
    signature: Validation,
    rules: ClaimRules,
    cache: TokenCache,
}

impl Verifier {
    /// Builds the verifier; with a JWKS, starts loading it and its background refresh.
    pub fn new(
        config: &ClerkConfig,
        http: reqwest::Client,
        timeout: std::time::Duration,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let keys = match &config.jwt_key_pem {
            Some(pem) => Keys::Static(Arc::new(
                DecodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|e| format!("CLERK_JWT_KEY: {e}"))?,
            )),
            None => {
                let store = Arc::new(KeyStore::new(
                    config.jwks_url.clone(),
                    http,
                    timeout,
                    config.unknown_kid_cooldown,
                    metrics,
                ));
                store.spawn_refresh(config.refresh_interval);
                Keys::Jwks(store)
            }
        };
        let mut signature = Validation::new(Algorithm::RS256);
        signature.set_required_spec_claims::<&str>(&[]);
        signature.validate_exp = false;
        signature.validate_nbf = false;
        signature.validate_aud = false;
        Ok(Self {
            keys,
            signature,
            rules: ClaimRules {
                issuer: config.issuer.clone(),
                leeway_secs: config.clock_skew.as_secs(),
                authorized_parties: config.authorized_parties.clone(),
                allow_pending: config.allow_pending_sessions,
            },
            cache: TokenCache::default(),
        })
    }

    /// Whether tokens can be verified now, loading the key set if needed (readiness).
    pub async fn ready(&self, request_id: &RequestId) -> Result<(), AuthError> {
        match &self.keys {
            Keys::Static(_) => Ok(()),
            Keys::Jwks(store) => store.ensure_loaded(request_id).await,
        }
    }

    /// Checks a token and returns its user; a key fetch it needs carries `request_id`.
    pub async fn verify(&self, token: &str, request_id: &RequestId) -> Result<UserId, AuthError> {
        let cache_key = CacheKey::of(token);
        if let Some(user) = self
            .cache
            .get(&cache_key, |kid, key| self.still_holds(kid, key))
        {
            return Ok(user);
        }
        let kid = precheck(token)?;
        let key = match (&self.keys, &kid) {
            (Keys::Static(key), _) => key.clone(),
            (Keys::Jwks(store), Some(kid)) => store.key(kid, request_id).await?,
            (Keys::Jwks(_), None) => return Err(AuthError::Malformed("no kid")),
        };
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &self.signature)
            .map_err(|e| AuthError::Rejected(e.to_string()))?
            .claims;
        let session = claims::check_claims(&claims, &self.rules).map_err(AuthError::Claim)?;
        let user = session.user;
        self.cache
            .insert(cache_key, user.clone(), session.expires_at, kid, key);
        Ok(user)
    }

    /// Whether `key` is still what verifies tokens of `kid`.
    fn still_holds(&self, kid: Option<&str>, key: &Arc<DecodingKey>) -> bool {
        match (&self.keys, kid) {
            (Keys::Static(current), _) => Arc::ptr_eq(current, key),
            (Keys::Jwks(store), Some(kid)) => store
                .current(kid)
                .is_some_and(|current| Arc::ptr_eq(&current, key)),
            (Keys::Jwks(_), None) => false,
        }
    }
}

/// The checks done before any key is looked up: size, shape, header, `alg`
/// and `kid` length. Returns the `kid`, if any. Never touches the network.
pub fn precheck(token: &str) -> Result<Option<String>, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed("token over 8 KiB"));
    }
    if token.split('.').count() != 3 {
        return Err(AuthError::Malformed("not a compact JWS"));
    }
    // Fails for `alg: none` and unknown algorithms; `jku`, `x5u` and
    // `jwk` headers are parsed but never used.
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| AuthError::Malformed("unreadable header"))?;
    if header.alg != Algorithm::RS256 {
        return Err(AuthError::Malformed("algorithm is not RS256"));
    }
    if let Some(kid) = &header.kid {
        if kid.is_empty() || kid.chars().count() > MAX_KID_LEN {
            return Err(AuthError::Malformed("kid length"));
        }
    }
    claims::check_header(token).map_err(AuthError::Claim)?;
    Ok(header.kid)
}
