//! Identifiers: an image's id and a user's id.

use serde_json::Value;

use super::validation::{msg, FieldError, Location};

/// An image id: a UUID or a cuid-style id, `[A-Za-z0-9_-]{1,64}`.
///
/// The alphabet guarantees the id is exactly one URL path segment upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageId(String);

impl ImageId {
    /// Checks a path parameter.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        if (1..=64).contains(&raw.len()) && raw.bytes().all(is_id_byte) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldError::new(
                Location::Params,
                "id",
                Some(Value::String(raw.to_owned())),
                msg::ID,
            ))
        }
    }

    /// The id, safe to put in a URL path as is.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// A Clerk user id (`sub`): `[A-Za-z0-9_-]{1,128}`; it names a storage folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
    /// Checks a token's `sub`.
    pub fn parse(raw: &str) -> Option<Self> {
        ((1..=128).contains(&raw.len()) && raw.bytes().all(is_id_byte))
            .then(|| Self(raw.to_owned()))
    }

    /// The id as Clerk issued it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The BDD service's form of this id: its MD5 laid out as a UUID.
    pub fn owner_uuid(&self) -> String {
        use md5::{Digest, Md5};
        let hex: String = Md5::digest(self.0.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    /// Whether a record's owner field names this user (either form).
    pub fn owns(&self, owner: &str) -> bool {
        owner == self.0 || owner.eq_ignore_ascii_case(&self.owner_uuid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_uuids_and_cuids_only() {
        assert!(ImageId::parse("0b7c1d9e-6f3a-4a57-9b2c-1e2d3f4a5b6c").is_ok());
        assert!(ImageId::parse("clx2k9abc0000qwerty123456").is_ok());
        for bad in ["", "..", "a/b", "a?b", "a%2Fb", "a.b", &"x".repeat(65)] {
            assert!(ImageId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_ids_are_folder_safe() {
        assert!(UserId::parse("user_2abcDEF-9").is_some());
        for bad in ["", "../x", "a/b", "a b", &"u".repeat(129)] {
            assert!(UserId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn owner_uuid_is_md5_laid_out_as_a_uuid() {
        // md5("abc") is the RFC 1321 test vector 900150983cd24fb0d6963f7d28e17f72.
        let u = UserId::parse("abc").unwrap();
        assert_eq!(u.owner_uuid(), "90015098-3cd2-4fb0-d696-3f7d28e17f72");
        assert!(u.owns("abc"));
        assert!(u.owns("90015098-3cd2-4fb0-d696-3f7d28e17f72"));
        assert!(!u.owns("abd"));
    }
}
