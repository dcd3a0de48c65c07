//! Supabase's API keys and signed-URL tokens: HS256 JWTs under the project's
//! JWT secret, checked the way the real server's JWT library (jose) checks
//! them, with its words for each failure (clients show those words).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::{json, Map, Value};

/// The JWT secret of a local Supabase (`supabase start`): public, guards nothing.
pub const DEFAULT_JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

/// A local Supabase's well-known `service_role` key, signed with [`DEFAULT_JWT_SECRET`].
pub const LOCAL_SERVICE_ROLE_KEY: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU";

/// A local Supabase's well-known `anon` key, signed with [`DEFAULT_JWT_SECRET`].
pub const LOCAL_ANON_KEY: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0";

/// An API key for `role` (`service_role`, `anon`, …) signed with `secret`.
pub fn api_key(secret: &str, role: &str) -> String {
    sign(
        secret,
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"iss": "supabase-demo", "role": role}),
    )
}

/// A compact JWS of `header` and `claims`, HMAC-SHA256 under `secret`.
pub(crate) fn sign(secret: &str, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &EncodingKey::from_secret(secret.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap_or_default();
    format!("{input}.{signature}")
}

/// The claims of `token` if it is an HS256 JWT signed with `secret` and in
/// its validity window; otherwise jose's reason, in jose's order of checks.
pub(crate) fn verify(token: &str, secret: &str) -> Result<Map<String, Value>, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return Err("Invalid Compact JWS".into());
    };
    let header: Map<String, Value> = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("JWS Protected Header is invalid")?;
    match header.get("alg").and_then(Value::as_str) {
        None => return Err("JWS \"alg\" (Algorithm) Header Parameter missing or invalid".into()),
        Some("HS256") => {}
        Some(_) => return Err("\"alg\" (Algorithm) Header Parameter value not allowed".into()),
    }
    let input = format!("{}.{payload}", parts[0]);
    let valid = jsonwebtoken::crypto::verify(
        signature,
        input.as_bytes(),
        &DecodingKey::from_secret(secret.as_bytes()),
        Algorithm::HS256,
    )
    .map_err(|_| "Failed to base64url decode the signature")?;
    if !valid {
        return Err("signature verification failed".into());
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| "Failed to base64url decode the payload")?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|_| "JWT Claims Set must be a top-level JSON object")?;
    let now = chrono::Utc::now().timestamp();
    for (claim, expired) in [
        ("exp", (|t: i64, now: i64| t <= now) as fn(i64, i64) -> bool),
        ("nbf", |t, now| t > now),
    ] {
        match claims.get(claim) {
            None => {}
            Some(v) => match v.as_f64() {
                None => return Err(format!("\"{claim}\" claim must be a number")),
                Some(t) if expired(t as i64, now) => {
                    return Err(format!("\"{claim}\" claim timestamp check failed"))
                }
                Some(_) => {}
            },
        }
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_keys_are_the_ones_minted_with_the_local_secret() {
        for (key, role) in [
            (LOCAL_SERVICE_ROLE_KEY, "service_role"),
            (LOCAL_ANON_KEY, "anon"),
        ] {
            let claims = verify(key, DEFAULT_JWT_SECRET).expect("valid");
            assert_eq!(claims["role"], role);
        }
        let minted = api_key(DEFAULT_JWT_SECRET, "service_role");
        assert_eq!(
            verify(&minted, DEFAULT_JWT_SECRET).unwrap()["role"],
            "service_role"
        );
    }

    #[test]
    fn failures_carry_the_real_servers_words() {
        assert_eq!(
            verify("wrong-key", DEFAULT_JWT_SECRET).unwrap_err(),
            "Invalid Compact JWS"
        );
        let other = api_key("another-secret-another-secret-another", "service_role");
        assert_eq!(
            verify(&other, DEFAULT_JWT_SECRET).unwrap_err(),
            "signature verification failed"
        );
        let expired = sign(
            DEFAULT_JWT_SECRET,
            &json!({"alg": "HS256"}),
            &json!({"exp": 1}),
        );
        assert_eq!(
            verify(&expired, DEFAULT_JWT_SECRET).unwrap_err(),
            "\"exp\" claim timestamp check failed"
        );
    }
}
