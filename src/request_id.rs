//! The request id (contract §6): taken from `X-Request-Id` or generated,
//! echoed on the answer and sent on every upstream call.
//!
//! The bottom layer: the edge puts it in the request's scope (where
//! handlers extract it, see `request_scope`), and the clients and the key
//! store send it, so none of them needs the others.

use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A caller's id is kept when it is 1 to 128 visible ASCII characters
    /// (no spaces): any tracing id fits, and it stays one token in logs and headers.
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        let s = value.to_str().ok()?;
        let kept = (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
        kept.then(|| Self(s.into()))
    }

    /// A random (v4) UUID from the thread's RNG: no system call per request.
    pub fn generate() -> Self {
        let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        Self(Arc::from(&*uuid.hyphenated().encode_lower(&mut text)))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_id_is_kept_only_when_visible_ascii_and_short() {
        let id = |s: &str| RequestId::from_header(&HeaderValue::from_str(s).unwrap());
        assert_eq!(id("abc-123_X").unwrap().as_str(), "abc-123_X");
        assert!(id(&"x".repeat(128)).is_some());
        for bad in ["", "a b", &"x".repeat(129)] {
            assert!(id(bad).is_none(), "{bad:?}");
        }
        assert_eq!(RequestId::generate().as_str().len(), 36);
    }
}
