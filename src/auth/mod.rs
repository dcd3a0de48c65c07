//! Clerk session tokens: the checks of contract §2. Token verification only:
//! no HTTP, no answers; the `AuthUser` extractor turns its errors into answers.

pub mod cache;
pub mod jwks;

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::clients::UpstreamFault;
use crate::config::ClerkConfig;
use crate::domain::UserId;
use crate::metrics::Metrics;
use crate::request_id::RequestId;
use cache::{CacheKey, TokenCache};
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
    /// Signature or registered claims rejected.
    #[error("rejected token: {0}")]
    Rejected(String),
    /// A claim of ours rejected (`sub`, `azp`).
    #[error("bad claim: {0}")]
    BadClaim(&'static str),
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

/// The claims we read; `exp`, `nbf` and `iss` are checked by `jsonwebtoken`.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    azp: Option<String>,
}

/// Verifies Clerk session tokens.
pub struct Verifier {
    keys: Keys,
    validation: Validation,
    authorized_parties: Option<Vec<String>>,
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
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = config.clock_skew.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Clerk session tokens carry no audience by default.
        validation.validate_aud = false;
        Ok(Self {
            keys,
            validation,
            authorized_parties: config.authorized_parties.clone(),
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
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|e| AuthError::Rejected(e.to_string()))?
            .claims;
        let user = UserId::parse(&claims.sub).ok_or(AuthError::BadClaim("sub"))?;
        if let (Some(allowed), Some(azp)) = (&self.authorized_parties, &claims.azp) {
            if !allowed.iter().any(|p| p == azp) {
                return Err(AuthError::BadClaim("azp not authorized"));
            }
        }
        self.cache
            .insert(cache_key, user.clone(), claims.exp, kid, key);
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
    Ok(header.kid)
}
