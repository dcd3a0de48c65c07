//! The checks of a Clerk session token's header and claims (contract §2),
//! done here rather than by `jsonwebtoken`, which skips a malformed `nbf`,
//! accepts an `iss` array and knows nothing of Clerk's token kinds.
//!
//! Only session tokens open a user's images, as Clerk's own backend SDK
//! decides: the same instance key also signs JWT-template, machine and
//! handshake tokens.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::domain::UserId;

/// Header `cat` of a session token.
pub const SESSION_CATEGORY: &str = "cl_B7d4PD111AAA";
/// Header `cat` of a category the instance ignores (accepted like a session's).
pub const IGNORED_CATEGORY: &str = "cl_I7d4PD111III";

/// Why a token's header or claims are refused (for the log only: every one
/// answers the same 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimError {
    /// The header cannot be read.
    Header,
    /// `typ` present and not `JWT`.
    NotJwt,
    /// `cat` of another kind of token (JWT template, machine, …).
    NotASession,
    /// A `crit` header: no extension is understood here.
    Critical,
    /// A registered claim of the wrong type.
    Type(&'static str),
    /// A required claim is missing.
    Missing(&'static str),
    /// `iss` is not the configured issuer.
    Issuer,
    /// `exp` is past.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iat` is in the future.
    IssuedInTheFuture,
    /// `sub` is not a usable user id.
    Subject,
    /// `sub` names a machine.
    Machine,
    /// The session has tasks left (`sts: pending`).
    Pending,
    /// `azp` not among the authorized parties.
    Party,
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Header => f.write_str("unreadable header"),
            Self::NotJwt => f.write_str("typ is not JWT"),
            Self::NotASession => f.write_str("cat is not a session token's"),
            Self::Critical => f.write_str("crit header"),
            Self::Type(claim) => write!(f, "{claim} has the wrong type"),
            Self::Missing(claim) => write!(f, "{claim} missing"),
            Self::Issuer => f.write_str("issuer mismatch"),
            Self::Expired => f.write_str("expired"),
            Self::NotYetValid => f.write_str("not yet valid (nbf)"),
            Self::IssuedInTheFuture => f.write_str("issued in the future (iat)"),
            Self::Subject => f.write_str("sub is not a user id"),
            Self::Machine => f.write_str("sub is a machine"),
            Self::Pending => f.write_str("session pending"),
            Self::Party => f.write_str("azp not authorized"),
        }
    }
}

/// What the claims must satisfy.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    /// Exact `iss`.
    pub issuer: String,
    /// Leeway for `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
    /// Allowed `azp` values; `None` accepts any.
    pub authorized_parties: Option<Vec<String>>,
    /// Accept `sts: pending`.
    pub allow_pending: bool,
}

/// Checks the protected header (the first segment of the token) for the
/// header rules: `typ`, `cat`, `crit`.
pub fn check_header(token: &str) -> Result<(), ClaimError> {
    let encoded = token.split('.').next().ok_or(ClaimError::Header)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| ClaimError::Header)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| ClaimError::Header)?;
    if header.contains_key("crit") {
        return Err(ClaimError::Critical);
    }
    match header.get("typ") {
        None => {}
        // A media type: compared without regard to case (RFC 7515 §4.1.9).
        Some(Value::String(typ)) if typ.eq_ignore_ascii_case("JWT") => {}
        Some(_) => return Err(ClaimError::NotJwt),
    }
    match header.get("cat") {
        None => {}
        Some(Value::String(cat)) if cat == SESSION_CATEGORY || cat == IGNORED_CATEGORY => {}
        Some(_) => return Err(ClaimError::NotASession),
    }
    Ok(())
}

/// A session token's claims, checked.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user (`sub`).
    pub user: UserId,
    /// `exp`, in unix seconds (rounded down).
    pub expires_at: u64,
}

/// Checks verified claims against `rules` at the current time.
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: &ClaimRules,
) -> Result<Session, ClaimError> {
    check_claims_at(claims, rules, unix_now())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn string<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, ClaimError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ClaimError::Type(name)),
    }
}

fn number(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, ClaimError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(ClaimError::Type(name)),
        Some(_) => Err(ClaimError::Type(name)),
    }
}

fn check_claims_at(
    claims: &Map<String, Value>,
    rules: &ClaimRules,
    now: f64,
) -> Result<Session, ClaimError> {
    let leeway = rules.leeway_secs as f64;
    // Types first: a malformed claim never skips its check.
    let iss = string(claims, "iss")?;
    let sub = string(claims, "sub")?;
    let exp = number(claims, "exp")?;
    let nbf = number(claims, "nbf")?;
    let iat = number(claims, "iat")?;

    if iss.ok_or(ClaimError::Missing("iss"))? != rules.issuer {
        return Err(ClaimError::Issuer);
    }
    let exp = exp.ok_or(ClaimError::Missing("exp"))?;
    if exp + leeway < now {
        return Err(ClaimError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now + leeway) {
        return Err(ClaimError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now + leeway) {
        return Err(ClaimError::IssuedInTheFuture);
    }
    let sub = sub.ok_or(ClaimError::Missing("sub"))?;
    let user = UserId::parse(sub).ok_or(ClaimError::Subject)?;
    if sub.starts_with("mch_") {
        return Err(ClaimError::Machine);
    }
    // JWT-template tokens carry no session id.
    match claims.get("sid") {
        Some(Value::String(sid)) if !sid.is_empty() => {}
        _ => return Err(ClaimError::Missing("sid")),
    }
    if claims.get("sts").and_then(Value::as_str) == Some("pending") && !rules.allow_pending {
        return Err(ClaimError::Pending);
    }
    if let (Some(allowed), Some(azp)) = (&rules.authorized_parties, claims.get("azp")) {
        let listed = azp
            .as_str()
            .is_some_and(|azp| allowed.iter().any(|p| p == azp));
        if !listed {
            return Err(ClaimError::Party);
        }
    }
    Ok(Session {
        user,
        expires_at: exp.max(0.0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: f64 = 1_800_000_000.0;

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: "https://x.clerk.accounts.dev".into(),
            leeway_secs: 5,
            authorized_parties: None,
            allow_pending: false,
        }
    }

    fn session(extra: Value) -> Map<String, Value> {
        let mut claims = json!({
            "azp": "http://localhost:3000", "exp": NOW + 60.0, "fva": [85, -1],
            "iat": NOW, "iss": "https://x.clerk.accounts.dev", "nbf": NOW - 10.0,
            "sid": "sess_2abc", "sts": "active", "sub": "user_2abc", "v": 2,
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims.as_object().unwrap().clone()
    }

    fn check(extra: Value) -> Result<Session, ClaimError> {
        check_claims_at(&session(extra), &rules(), NOW)
    }

    #[test]
    fn a_real_shaped_session_passes() {
        assert_eq!(check(json!({})).unwrap().user.as_str(), "user_2abc");
        assert!(
            check(json!({"sts": null})).is_ok(),
            "older tokens have no sts"
        );
    }

    #[test]
    fn other_kinds_of_token_are_refused() {
        assert_eq!(
            check(json!({"sid": null})).unwrap_err(),
            ClaimError::Missing("sid")
        );
        assert_eq!(
            check(json!({"sid": ""})).unwrap_err(),
            ClaimError::Missing("sid")
        );
        assert_eq!(
            check(json!({"sub": "mch_2abc"})).unwrap_err(),
            ClaimError::Machine
        );
        assert_eq!(
            check(json!({"sts": "pending"})).unwrap_err(),
            ClaimError::Pending
        );
        let lenient = ClaimRules {
            allow_pending: true,
            ..rules()
        };
        assert!(check_claims_at(&session(json!({"sts": "pending"})), &lenient, NOW).is_ok());
    }

    #[test]
    fn registered_claims_of_the_wrong_type_are_refused() {
        for (claim, value) in [
            ("iss", json!(["https://x.clerk.accounts.dev"])),
            ("sub", json!(7)),
            ("exp", json!("9999999999")),
            ("nbf", json!("abc")),
            ("iat", json!({"t": 1})),
        ] {
            assert_eq!(
                check(json!({ claim: value })).unwrap_err(),
                ClaimError::Type(claim),
                "{claim}"
            );
        }
    }

    #[test]
    fn times_are_checked_with_the_leeway() {
        assert!(check(json!({"exp": NOW - 4.0})).is_ok());
        assert_eq!(
            check(json!({"exp": NOW - 6.0})).unwrap_err(),
            ClaimError::Expired
        );
        assert!(check(json!({"nbf": NOW + 4.0})).is_ok());
        assert_eq!(
            check(json!({"nbf": NOW + 6.0})).unwrap_err(),
            ClaimError::NotYetValid
        );
        assert!(check(json!({"iat": NOW + 4.0})).is_ok());
        assert_eq!(
            check(json!({"iat": NOW + 3600.0})).unwrap_err(),
            ClaimError::IssuedInTheFuture
        );
        assert_eq!(
            check(json!({"exp": null})).unwrap_err(),
            ClaimError::Missing("exp")
        );
    }

    fn header(value: Value) -> String {
        format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(value.to_string()))
    }

    #[test]
    fn header_rules() {
        let ok = |h: Value| check_header(&header(h));
        assert!(
            ok(json!({"alg": "RS256", "cat": SESSION_CATEGORY, "kid": "k", "typ": "JWT"})).is_ok()
        );
        assert!(ok(json!({"alg": "RS256", "kid": "k"})).is_ok());
        assert!(ok(json!({"alg": "RS256", "cat": IGNORED_CATEGORY})).is_ok());
        assert_eq!(
            ok(json!({"alg": "RS256", "cat": "cl_B7d4PD222AAA"})).unwrap_err(),
            ClaimError::NotASession
        );
        assert_eq!(
            ok(json!({"alg": "RS256", "cat": "cl_B7d4PD333AAA"})).unwrap_err(),
            ClaimError::NotASession
        );
        assert_eq!(
            ok(json!({"alg": "RS256", "typ": "at+jwt"})).unwrap_err(),
            ClaimError::NotJwt
        );
        assert_eq!(
            ok(json!({"alg": "RS256", "crit": ["exp"]})).unwrap_err(),
            ClaimError::Critical
        );
    }
}
