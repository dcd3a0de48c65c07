//! A local Clerk issuer: serves a JWKS like Clerk's Frontend API and mints
//! RS256 session tokens signed with keys it holds.
//!
//! The service under test only ever reads Clerk's public keys, so this is all
//! of Clerk it needs. Tokens are shaped like real ones (header `cat`, `sid`,
//! `sts`, `fva`, `v`, `nbf` = `iat` − 10). `GET /dev/token?sub=…[&kind=…]` is
//! a dev-stack convenience (no such route at Clerk) to mint a token for any
//! user from curl, of any kind the service must refuse too: `pending`,
//! `template`, `machine`.

use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::distributions::Alphanumeric;
use rand::Rng;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

use super::server::StandIn;

/// Fixture keys for tests. They are TEST-ONLY and PUBLIC (committed to the
/// repository): never use them for anything but local tests and the dev stack.
/// Fixed keys because generating RSA keys is slow in debug builds.
const TEST_KEYS: [&str; 3] = [
    include_str!("keys/test-key-0.pem"),
    include_str!("keys/test-key-1.pem"),
    include_str!("keys/test-key-2.pem"),
];

/// Origin the frontend's tokens carry in `azp`.
const DEV_AZP: &str = "http://localhost:3000";

/// An RSA signing key with its `kid`, able to publish itself as a JWK.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    private: RsaPrivateKey,
    encoding: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, even a test key's.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    /// A fresh 2048-bit key (slow in debug builds: prefer [`test_key`] in tests).
    ///
    /// # Panics
    /// If the OS random source fails.
    pub fn generate(kid: impl Into<String>) -> Self {
        let private =
            RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key generation failed");
        Self::from_private(kid.into(), private).expect("a fresh RSA key encodes")
    }

    /// Loads a PKCS#8 `PRIVATE KEY` PEM.
    pub fn from_pkcs8_pem(kid: impl Into<String>, pem: &str) -> Result<Self, String> {
        let private = RsaPrivateKey::from_pkcs8_pem(pem)
            .map_err(|e| format!("invalid RSA PKCS#8 key: {e}"))?;
        Self::from_private(kid.into(), private)
    }

    fn from_private(kid: String, private: RsaPrivateKey) -> Result<Self, String> {
        let der = private
            .to_pkcs1_der()
            .map_err(|e| format!("cannot encode RSA key: {e}"))?;
        let encoding = EncodingKey::from_rsa_der(der.as_bytes());
        Ok(Self {
            kid,
            private,
            encoding,
        })
    }

    /// The private key as a PKCS#8 `PRIVATE KEY` PEM.
    pub fn to_pkcs8_pem(&self) -> String {
        self.private
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .unwrap_or_default()
    }

    /// The public key as an SPKI `PUBLIC KEY` PEM (the `CLERK_JWT_KEY` format).
    pub fn public_pem(&self) -> String {
        self.private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// The key id published in the JWK and put in token headers.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK, as Clerk publishes it.
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(self.private.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(self.private.e().to_bytes_be()),
        })
    }

    /// The RS256 header this key signs with: `{alg, typ: "JWT", kid}` (no
    /// `cat`: `jsonwebtoken`'s header type has no such field; see [`Self::sign`]).
    pub fn header(&self) -> Header {
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".into());
        header.kid = Some(self.kid.clone());
        header
    }

    /// The header of a real Clerk token of `kind`:
    /// `{"alg":"RS256","cat":…,"kid":…,"typ":"JWT"}`.
    pub fn clerk_header(&self, kind: TokenKind) -> Value {
        json!({"alg": "RS256", "cat": kind.category(), "kid": self.kid, "typ": "JWT"})
    }

    /// Signs `claims` under a real session token's header (with `cat`).
    ///
    /// # Panics
    /// Only if signing fails, which an RSA key with RS256 does not.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_json_header(&self.clerk_header(TokenKind::Session), claims)
    }

    /// Signs `claims` with RS256 under any header JSON, as given (for tests
    /// of headers `jsonwebtoken` cannot express: `cat`, `crit`, …).
    ///
    /// # Panics
    /// Only if signing fails, which an RSA key with RS256 does not.
    pub fn sign_json_header(&self, header: &Value, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature =
            jsonwebtoken::crypto::sign(signing_input.as_bytes(), &self.encoding, Algorithm::RS256)
                .expect("RS256 signing with an RSA key");
        format!("{signing_input}.{signature}")
    }

    /// Signs `claims` under an arbitrary header (for tests of odd headers).
    ///
    /// # Panics
    /// If `header.alg` is not an RSA algorithm (the key cannot sign with it).
    pub fn sign_with_header(&self, header: Header, claims: &Value) -> String {
        self.try_sign(&header, claims)
            .expect("header algorithm must be an RSA one")
    }

    /// Signs without panicking, for request paths.
    pub fn try_sign(
        &self,
        header: &Header,
        claims: &Value,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(header, claims, &self.encoding)
    }
}

/// Fixture key `n` (0, 1 or 2; taken modulo 3), kid `test-key-{n}`.
///
/// # Panics
/// Never in practice: the fixtures are checked by a unit test.
pub fn test_key(n: usize) -> SigningKey {
    let n = n % TEST_KEYS.len();
    SigningKey::from_pkcs8_pem(format!("test-key-{n}"), TEST_KEYS[n])
        .expect("fixture key is a valid PKCS#8 RSA key")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The kinds of token one Clerk instance key signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A session token: the only kind that opens a user's images.
    Session,
    /// A session with tasks left (`sts: pending`).
    Pending,
    /// A JWT-template token (for other services): its own `cat`, no `sid`.
    Template,
    /// A machine token: its own `cat`, `sub` starting with `mch_`.
    Machine,
}

impl TokenKind {
    /// Parses `session`, `pending`, `template` or `machine`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "session" => Some(Self::Session),
            "pending" => Some(Self::Pending),
            "template" => Some(Self::Template),
            "machine" => Some(Self::Machine),
            _ => None,
        }
    }

    /// The header `cat` Clerk gives this kind.
    pub fn category(self) -> &'static str {
        match self {
            Self::Session | Self::Pending => "cl_B7d4PD111AAA",
            Self::Template => "cl_B7d4PD222AAA",
            Self::Machine => "cl_B7d4PD333AAA",
        }
    }
}

fn random_id(prefix: &str) -> String {
    let id: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(27)
        .map(char::from)
        .collect();
    format!("{prefix}{id}")
}

/// Claims shaped like a real Clerk session token's: `azp` = the dev
/// frontend, `exp` = now + `ttl`, `fva`, `iat` = now, `iss`, `nbf` = now − 10,
/// a random `sid`, `sts: active`, `sub`, `v: 2`.
pub fn standard_claims(issuer: &str, sub: &str, ttl: Duration) -> Value {
    let now = unix_now();
    json!({
        "azp": DEV_AZP,
        "exp": now.saturating_add(ttl.as_secs()),
        "fva": [85, -1],
        "iat": now,
        "iss": issuer,
        "nbf": now.saturating_sub(10),
        "sid": random_id("sess_"),
        "sts": "active",
        "sub": sub,
        "v": 2,
    })
}

/// Claims of a token of `kind` for `sub` (a machine gets an `mch_` subject).
pub fn claims_of_kind(issuer: &str, sub: &str, ttl: Duration, kind: TokenKind) -> Value {
    let mut claims = standard_claims(issuer, sub, ttl);
    match kind {
        TokenKind::Session => {}
        TokenKind::Pending => claims["sts"] = json!("pending"),
        TokenKind::Template => {
            if let Some(map) = claims.as_object_mut() {
                map.remove("sid");
                map.remove("sts");
                map.remove("fva");
                map.remove("v");
            }
        }
        TokenKind::Machine => {
            claims["sub"] = json!(random_id("mch_"));
            if let Some(map) = claims.as_object_mut() {
                map.remove("sid");
                map.remove("sts");
            }
        }
    }
    claims
}

struct ClerkState {
    issuer: OnceLock<String>,
    keys: Mutex<Vec<SigningKey>>,
    jwks_body: Mutex<Option<Value>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The local Clerk issuer. Derefs to its [`StandIn`].
#[derive(Debug)]
pub struct ClerkStandIn {
    server: StandIn,
    state: Arc<ClerkState>,
}

impl std::fmt::Debug for ClerkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClerkState")
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl Deref for ClerkStandIn {
    type Target = StandIn;
    fn deref(&self) -> &StandIn {
        &self.server
    }
}

impl ClerkStandIn {
    /// Starts the issuer on `127.0.0.1:port` (0 = random) publishing `keys`;
    /// tokens are signed with the first one.
    pub async fn start(keys: Vec<SigningKey>, port: u16) -> std::io::Result<Self> {
        let state = Arc::new(ClerkState {
            issuer: OnceLock::new(),
            keys: Mutex::new(keys),
            jwks_body: Mutex::new(None),
        });
        let server = StandIn::start_with(
            Router::new().fallback(handle).with_state(state.clone()),
            port,
            clerk_status_body,
        )
        .await?;
        // The issuer is the server's own URL, known only once bound; no client
        // can know the URL before this returns, so no request sees it unset.
        let _ = state.issuer.set(server.url());
        Ok(Self { server, state })
    }

    /// The issuer (`iss`) of minted tokens: the server's URL.
    pub fn issuer(&self) -> String {
        self.state
            .issuer
            .get()
            .cloned()
            .unwrap_or_else(|| self.server.url())
    }

    /// Where the key set is served.
    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.server.url())
    }

    /// Replaces the key set (rotation); signing then uses the first new key.
    pub fn set_keys(&self, keys: Vec<SigningKey>) {
        *lock(&self.state.keys) = keys;
    }

    /// Serves `body` verbatim as the JWKS instead of the keys (`None` = back to normal).
    pub fn set_jwks_body(&self, body: Option<Value>) {
        *lock(&self.state.jwks_body) = body;
    }

    /// Key `i` of the current set.
    pub fn key(&self, i: usize) -> Option<SigningKey> {
        lock(&self.state.keys).get(i).cloned()
    }

    /// A valid 1-hour session token for `sub`, signed with the first key.
    ///
    /// # Panics
    /// If the key set is empty.
    pub fn mint(&self, sub: &str) -> String {
        self.mint_claims(&standard_claims(
            &self.issuer(),
            sub,
            Duration::from_secs(3600),
        ))
    }

    /// Signs arbitrary claims with the first key, under a session token's header.
    ///
    /// # Panics
    /// If the key set is empty.
    pub fn mint_claims(&self, claims: &Value) -> String {
        self.key(0)
            .expect("ClerkStandIn has no signing key")
            .sign(claims)
    }

    /// A 1-hour token of `kind` for `sub`, with that kind's header and claims.
    ///
    /// # Panics
    /// If the key set is empty.
    pub fn mint_kind(&self, sub: &str, kind: TokenKind) -> String {
        let key = self.key(0).expect("ClerkStandIn has no signing key");
        let claims = claims_of_kind(&self.issuer(), sub, Duration::from_secs(3600), kind);
        key.sign_json_header(&key.clerk_header(kind), &claims)
    }
}

fn clerk_status_body(status: StatusCode) -> Response {
    let body = json!({
        "errors": [{
            "message": status.canonical_reason().unwrap_or("error"),
            "long_message": format!("Request failed with status {}", status.as_u16()),
            "code": if status.is_server_error() { "internal_clerk_error" } else { "request_error" },
        }],
    });
    (status, axum::Json(body)).into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"errors": [{"message": message, "long_message": message, "code": code}]});
    (status, axum::Json(body)).into_response()
}

async fn handle(State(state): State<Arc<ClerkState>>, req: Request) -> Response {
    let path = req.uri().path();
    let known = matches!(path, "/.well-known/jwks.json" | "/dev/token");
    if !known {
        return error(StatusCode::NOT_FOUND, "resource_not_found", "not found");
    }
    if req.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed",
        );
    }
    if path == "/.well-known/jwks.json" {
        let body = lock(&state.jwks_body).clone().unwrap_or_else(|| {
            let keys: Vec<Value> = lock(&state.keys).iter().map(SigningKey::jwk).collect();
            json!({ "keys": keys })
        });
        return (
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    dev_token(&state, req.uri().query())
}

fn dev_token(state: &ClerkState, query: Option<&str>) -> Response {
    let pairs: Vec<(String, String)> = query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(sub) = get("sub") else {
        return error(
            StatusCode::BAD_REQUEST,
            "form_param_missing",
            "sub is required",
        );
    };
    let sub_ok = (1..=128).contains(&sub.len())
        && sub
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !sub_ok {
        return error(
            StatusCode::BAD_REQUEST,
            "form_param_format_invalid",
            "sub must match [A-Za-z0-9_-]{1,128}",
        );
    }
    let ttl = match get("ttl_secs").map(str::parse::<u64>) {
        None => 3600,
        Some(Ok(n)) if (1..=31_536_000).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "form_param_format_invalid",
                "ttl_secs must be an integer between 1 and 31536000",
            )
        }
    };
    let kind = match get("kind").map(TokenKind::parse) {
        None => TokenKind::Session,
        Some(Some(kind)) => kind,
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "form_param_format_invalid",
                "kind must be session, pending, template or machine",
            )
        }
    };
    let Some(key) = lock(&state.keys).first().cloned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_signing_key",
            "the issuer has no signing key",
        );
    };
    let claims = claims_of_kind(
        state.issuer.get().map_or("", String::as_str),
        sub,
        Duration::from_secs(ttl),
        kind,
    );
    let token = key.sign_json_header(&key.clerk_header(kind), &claims);
    axum::Json(json!({
        "token": token,
        "sub": claims["sub"],
        "kind": get("kind").unwrap_or("session"),
        "expires_at": claims["exp"],
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_keys_load_and_round_trip() {
        for i in 0..3 {
            let key = test_key(i);
            assert_eq!(key.kid(), format!("test-key-{i}"));
            let again = SigningKey::from_pkcs8_pem("x", &key.to_pkcs8_pem()).unwrap();
            assert_eq!(again.jwk()["n"], key.jwk()["n"]);
            assert!(key.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
        }
    }
}
