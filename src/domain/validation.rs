//! The shape of a validation failure, as the old service's express-validator
//! wrote it, and the contract's messages word for word.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// Longest JSON text of a rejected value that is echoed back in `value`.
pub const MAX_ECHO_BYTES: usize = 4 * 1024;

/// Where a rejected value came from (`location` of a validation entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    /// JSON body field.
    Body,
    /// Query-string parameter.
    Query,
    /// Path parameter.
    Params,
}

/// One failed check, in the old service's express-validator shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    #[serde(rename = "type")]
    kind: &'static str,
    // Boxed: a `Value` is large, and this travels in `Result::Err`.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Box<Value>>,
    msg: &'static str,
    path: &'static str,
    location: Location,
}

impl FieldError {
    /// A failed check on `path`; `value` is what was received (`None` when
    /// absent), echoed only when its JSON text is at most 4 KiB.
    pub fn new(
        location: Location,
        path: &'static str,
        value: Option<Value>,
        msg: &'static str,
    ) -> Self {
        let value = value
            .filter(|v| serde_json::to_string(v).is_ok_and(|text| text.len() <= MAX_ECHO_BYTES));
        Self::shaped(location, path, value, msg)
    }

    /// A failed check on a body field as received: its JSON text is parsed
    /// for the echo only when it is at most 4 KiB, so a 48 MB array is never
    /// built in memory.
    pub fn raw(
        location: Location,
        path: &'static str,
        raw: Option<&RawValue>,
        msg: &'static str,
    ) -> Self {
        let value = raw
            .filter(|r| r.get().len() <= MAX_ECHO_BYTES)
            .and_then(|r| serde_json::from_str(r.get()).ok());
        Self::shaped(location, path, value, msg)
    }

    /// A failed check whose value is never echoed (`imageData`).
    pub fn unechoed(location: Location, path: &'static str, msg: &'static str) -> Self {
        Self::shaped(location, path, None, msg)
    }

    fn shaped(
        location: Location,
        path: &'static str,
        value: Option<Value>,
        msg: &'static str,
    ) -> Self {
        Self {
            kind: "field",
            value: value.map(Box::new),
            msg,
            path,
            location,
        }
    }

    /// The message, for tests and logs.
    pub fn msg(&self) -> &'static str {
        self.msg
    }

    /// The echoed value, if any.
    pub fn value(&self) -> Option<&Value> {
        self.value.as_deref()
    }
}

/// Messages of the contract's validation table, word for word.
pub mod msg {
    /// `prompt` absent, not a string, or empty.
    pub const PROMPT_REQUIRED: &str = "Le prompt est requis";
    /// `prompt` over 1000 characters.
    pub const PROMPT_TOO_LONG: &str = "Le prompt ne peut pas dépasser 1000 caractères";
    /// `imageData` absent, not a string, or empty.
    pub const IMAGE_REQUIRED: &str = "Les données d'image sont requises";
    /// `imageData` not base64.
    pub const IMAGE_NOT_BASE64: &str = "Les données d'image doivent être en base64";
    /// Decoded bytes are neither PNG, JPEG nor WebP.
    pub const IMAGE_FORMAT: &str = "Format d'image non supporté (PNG, JPEG ou WebP)";
    /// `metadata` present but not an object.
    pub const METADATA_OBJECT: &str = "Les métadonnées doivent être un objet";
    /// `metadata` over 16 KiB of JSON text or 16 levels deep.
    pub const METADATA_TOO_LARGE: &str = "Les métadonnées sont trop volumineuses";
    /// Bad `page`.
    pub const PAGE: &str = "La page doit être un nombre positif";
    /// Bad `limit`.
    pub const LIMIT: &str = "La limite doit être entre 1 et 100";
    /// Unknown status.
    pub const STATUS: &str = "Statut invalide";
    /// Bad image id.
    pub const ID: &str = "L'ID de l'image doit être un UUID valide";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_over_4_kib_of_json_are_not_echoed() {
        let small = FieldError::new(
            Location::Query,
            "page",
            Some(Value::String("x".repeat(100))),
            msg::PAGE,
        );
        assert!(small.value().is_some());
        let large = FieldError::new(
            Location::Query,
            "page",
            Some(Value::String("x".repeat(5000))),
            msg::PAGE,
        );
        assert!(large.value().is_none());
        let text = format!("[{}0]", "0,".repeat(3000));
        let raw: &RawValue = serde_json::from_str(&text).unwrap();
        assert!(
            FieldError::raw(Location::Body, "metadata", Some(raw), msg::METADATA_OBJECT)
                .value()
                .is_none()
        );
    }
}
