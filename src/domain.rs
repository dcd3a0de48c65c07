//! Validated values: built once at the edge, so handlers only see valid data.

use base64::engine::{general_purpose::GeneralPurposeConfig, DecodePaddingMode, GeneralPurpose};
use base64::Engine;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;

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
    /// A failed check on `path`; `value` is what was received (`None` when absent).
    pub fn new(
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
    /// Bad `page`.
    pub const PAGE: &str = "La page doit être un nombre positif";
    /// Bad `limit`.
    pub const LIMIT: &str = "La limite doit être entre 1 et 100";
    /// Unknown status.
    pub const STATUS: &str = "Statut invalide";
    /// Bad image id.
    pub const ID: &str = "L'ID de l'image doit être un UUID valide";
}

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

/// An image's status label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageStatus {
    /// Fresh from the AI.
    Generated,
    /// Printed.
    Printed,
    /// Ordered.
    Ordered,
    /// Marked deleted.
    Deleted,
}

impl ImageStatus {
    /// Parses one of the four labels, exactly.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "generated" => Some(Self::Generated),
            "printed" => Some(Self::Printed),
            "ordered" => Some(Self::Ordered),
            "deleted" => Some(Self::Deleted),
            _ => None,
        }
    }

    /// The label on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generated => "generated",
            Self::Printed => "printed",
            Self::Ordered => "ordered",
            Self::Deleted => "deleted",
        }
    }
}

/// Validated query of `GET /api/images`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Page number, from 1.
    pub page: u64,
    /// Page size, 1..=100.
    pub limit: u64,
    /// Optional status filter.
    pub status: Option<ImageStatus>,
}

impl ListQuery {
    /// Parses a raw query string; a parameter given twice counts by its first value.
    pub fn parse(raw_query: Option<&str>) -> Result<Self, Vec<FieldError>> {
        let mut page = None;
        let mut limit = None;
        let mut status = None;
        // A literal `+` is kept as a plus, not read as a form-encoded space:
        // `?page=+2` is the "optional leading `+`" the contract allows, typed
        // by hand, and no valid value of these parameters contains a space.
        let raw_query = raw_query.unwrap_or("").replace('+', "%2B");
        for (key, value) in url::form_urlencoded::parse(raw_query.as_bytes()) {
            let slot = match key.as_ref() {
                "page" => &mut page,
                "limit" => &mut limit,
                "status" => &mut status,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.into_owned());
            }
        }

        let mut errors = Vec::new();
        let mut bad = |name: &'static str, value: &str, msg: &'static str| {
            errors.push(FieldError::new(
                Location::Query,
                name,
                Some(Value::String(value.to_owned())),
                msg,
            ));
        };
        let page = match page {
            None => Some(1),
            Some(raw) => match parse_decimal(&raw) {
                Some(n) if n >= 1 => Some(n),
                _ => {
                    bad("page", &raw, msg::PAGE);
                    None
                }
            },
        };
        let limit = match limit {
            None => Some(10),
            Some(raw) => match parse_decimal(&raw) {
                Some(n) if (1..=100).contains(&n) => Some(n),
                _ => {
                    bad("limit", &raw, msg::LIMIT);
                    None
                }
            },
        };
        let status = match status {
            None => Some(None),
            Some(raw) => match ImageStatus::parse(&raw) {
                Some(s) => Some(Some(s)),
                None => {
                    bad("status", &raw, msg::STATUS);
                    None
                }
            },
        };
        match (page, limit, status) {
            (Some(page), Some(limit), Some(status)) if errors.is_empty() => Ok(Self {
                page,
                limit,
                status,
            }),
            _ => Err(errors),
        }
    }
}

/// A decimal integer with an optional leading `+`; `None` if not one or too large.
fn parse_decimal(raw: &str) -> Option<u64> {
    let digits = raw.strip_prefix('+').unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The image formats the service accepts, recognised by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
    /// WebP.
    Webp,
}

impl ImageKind {
    /// Recognises a PNG, JPEG or WebP signature.
    pub fn detect(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Self::Webp)
        } else {
            None
        }
    }

    /// File extension of stored objects.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
        }
    }

    /// MIME type sent to Storage.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }
}

/// Why `imageData` could not become an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageDataError {
    /// Not standard padded base64 (after an optional data-URL prefix).
    NotBase64,
    /// Decoded size over the limit; nothing was decoded.
    TooLarge,
    /// Decoded bytes are not PNG, JPEG or WebP.
    UnsupportedFormat,
}

/// Decoded image bytes of a known kind.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// The raw image.
    pub bytes: Bytes,
    /// Its detected format.
    pub kind: ImageKind,
}

/// Standard alphabet; padding required, trailing bits tolerated like
/// express-validator's `isBase64`, which the old service used.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

impl DecodedImage {
    /// Strips an optional `data:image/<type>;base64,` prefix, checks the
    /// base64 shape and size, decodes, and detects the format.
    pub fn decode(image_data: &str, max_bytes: usize) -> Result<Self, ImageDataError> {
        let b64 = strip_data_url(image_data).as_bytes();
        // The size is known from the length: refuse before decoding anything.
        if !b64.len().is_multiple_of(4) {
            return Err(ImageDataError::NotBase64);
        }
        let padding = b64.iter().rev().take(2).take_while(|&&b| b == b'=').count();
        if b64.len() / 4 * 3 - padding > max_bytes {
            // Still nothing decoded, but the base64 check comes first in the
            // contract: an oversized string that is not base64 is a 400.
            return Err(if is_base64_shaped(b64, padding) {
                ImageDataError::TooLarge
            } else {
                ImageDataError::NotBase64
            });
        }
        // SIMD first (about 5x faster on megabytes); it refuses non-zero
        // trailing bits, which the contract's base64 allows, so a refusal is
        // confirmed by the scalar engine: it refuses any byte outside the
        // standard alphabet, `=` anywhere but the end, and missing padding.
        let bytes = match base64_simd::STANDARD.decode_to_vec(b64) {
            Ok(bytes) => bytes,
            Err(_) => BASE64.decode(b64).map_err(|_| ImageDataError::NotBase64)?,
        };
        let kind = ImageKind::detect(&bytes).ok_or(ImageDataError::UnsupportedFormat)?;
        Ok(Self {
            bytes: Bytes::from(bytes),
            kind,
        })
    }
}

/// Only standard-alphabet bytes before the `padding` trailing `=`s.
fn is_base64_shaped(b64: &[u8], padding: usize) -> bool {
    b64[..b64.len() - padding]
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn strip_data_url(s: &str) -> &str {
    let Some(rest) = s.strip_prefix("data:image/") else {
        return s;
    };
    let Some(end) = rest.find(";base64,") else {
        return s;
    };
    let subtype = &rest[..end];
    if !subtype.is_empty()
        && subtype
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-'))
    {
        &rest[end + ";base64,".len()..]
    } else {
        s
    }
}

/// Derives the storage object path of an image URL, if it is one of ours.
///
/// The URL must start with the bucket's public prefix; the rest, once
/// percent-decoded, must lie inside `{owner}/` with no `.`/`..`/empty segment
/// and no backslash. Anything else is foreign and must not be removed.
pub fn object_path_of(url: &str, public_prefix: &str, owner: &UserId) -> Option<String> {
    let rest = url.strip_prefix(public_prefix)?;
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let path = percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .ok()?
        .into_owned();
    let mut segments = path.split('/');
    if segments.next() != Some(owner.as_str()) {
        return None;
    }
    let mut any = false;
    for segment in segments {
        if segment.is_empty() || segment == "." || segment == ".." || segment.contains('\\') {
            return None;
        }
        if segment.chars().any(char::is_control) {
            return None;
        }
        any = true;
    }
    any.then_some(path)
}

/// A validated `POST /api/images` body.
#[derive(Debug, Clone)]
pub struct NewImage {
    /// The prompt, 1..=1000 characters.
    pub prompt: String,
    /// The decoded image.
    pub image: DecodedImage,
    /// Caller's metadata object, `{}` when absent.
    pub metadata: Value,
}

/// Why a create body was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum NewImageError {
    /// Not JSON at all.
    InvalidJson(String),
    /// One entry per failed check, in the contract's order.
    Invalid(Vec<FieldError>),
    /// The decoded image is over the limit.
    TooLarge,
}

/// The create body's fields as raw JSON text borrowed from the request bytes:
/// the base64 image (megabytes) is decoded from where it lies, never copied.
///
/// A present `null` is `Some`. A key given twice counts by its last value,
/// as `JSON.parse` in the old service (serde's derive would refuse it).
#[derive(Default)]
struct RawCreate<'a> {
    prompt: Option<&'a RawValue>,
    image_data: Option<&'a RawValue>,
    metadata: Option<&'a RawValue>,
}

impl<'de> serde::Deserialize<'de> for RawCreate<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = RawCreate<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut fields = RawCreate::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let slot = match key.as_ref() {
                        "prompt" => &mut fields.prompt,
                        "imageData" => &mut fields.image_data,
                        "metadata" => &mut fields.metadata,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<&'de RawValue>()?);
                }
                Ok(fields)
            }
        }
        d.deserialize_map(Fields)
    }
}

/// A JSON string's content, borrowed when it has no escapes; `None` if not a string.
pub fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// A JSON string's content as written (escapes and all), or `None` if not a string.
fn json_string_content(raw: &RawValue) -> Option<&str> {
    raw.get().strip_prefix('"')?.strip_suffix('"')
}

/// Decodes the content of a JSON string holding base64. Base64 never needs
/// an escape, so the content is decoded as written; only if that fails and
/// it holds an escape (`\/` from some encoders) is it unescaped and retried.
fn decode_json_string(written: &str, max_bytes: usize) -> Result<DecodedImage, ImageDataError> {
    match DecodedImage::decode(written, max_bytes) {
        Err(ImageDataError::NotBase64) if written.contains('\\') => {
            let unescaped: String = serde_json::from_str(&format!("\"{written}\""))
                .map_err(|_| ImageDataError::NotBase64)?;
            DecodedImage::decode(&unescaped, max_bytes)
        }
        other => other,
    }
}

impl NewImage {
    /// Parses and checks a create body; an absent or mistyped field fails
    /// only its first check, and checks are reported in the contract's order.
    pub fn from_json(body: &[u8], max_image_bytes: usize) -> Result<Self, NewImageError> {
        let root: &RawValue =
            serde_json::from_slice(body).map_err(|e| NewImageError::InvalidJson(e.to_string()))?;
        // Any JSON that is not an object has none of the fields.
        let fields: RawCreate<'_> = if root.get().starts_with('{') {
            serde_json::from_str(root.get())
                .map_err(|e| NewImageError::InvalidJson(e.to_string()))?
        } else {
            RawCreate::default()
        };
        let small =
            |raw: Option<&RawValue>| raw.and_then(|r| serde_json::from_str::<Value>(r.get()).ok());
        let mut errors = Vec::new();

        let prompt_value = small(fields.prompt);
        let prompt = match &prompt_value {
            Some(Value::String(p)) if !p.is_empty() => {
                if p.chars().count() > 1000 {
                    errors.push(FieldError::new(
                        Location::Body,
                        "prompt",
                        prompt_value.clone(),
                        msg::PROMPT_TOO_LONG,
                    ));
                }
                Some(p.clone())
            }
            _ => {
                errors.push(FieldError::new(
                    Location::Body,
                    "prompt",
                    prompt_value.clone(),
                    msg::PROMPT_REQUIRED,
                ));
                None
            }
        };

        // imageData is never echoed back: it can be megabytes.
        let mut too_large = false;
        let image = match fields.image_data.and_then(json_string_content) {
            Some(data) if !data.is_empty() => match decode_json_string(data, max_image_bytes) {
                Ok(image) => Some(image),
                Err(ImageDataError::NotBase64) => {
                    errors.push(FieldError::new(
                        Location::Body,
                        "imageData",
                        None,
                        msg::IMAGE_NOT_BASE64,
                    ));
                    None
                }
                Err(ImageDataError::UnsupportedFormat) => {
                    errors.push(FieldError::new(
                        Location::Body,
                        "imageData",
                        None,
                        msg::IMAGE_FORMAT,
                    ));
                    None
                }
                Err(ImageDataError::TooLarge) => {
                    too_large = true;
                    None
                }
            },
            _ => {
                errors.push(FieldError::new(
                    Location::Body,
                    "imageData",
                    None,
                    msg::IMAGE_REQUIRED,
                ));
                None
            }
        };

        let metadata = match fields.metadata {
            None => Some(Value::Object(Default::default())),
            Some(raw) => match small(Some(raw)) {
                Some(Value::Object(m)) => Some(Value::Object(m)),
                other => {
                    errors.push(FieldError::new(
                        Location::Body,
                        "metadata",
                        other,
                        msg::METADATA_OBJECT,
                    ));
                    None
                }
            },
        };

        match (prompt, image, metadata) {
            _ if !errors.is_empty() => Err(NewImageError::Invalid(errors)),
            _ if too_large => Err(NewImageError::TooLarge),
            (Some(prompt), Some(image), Some(metadata)) => Ok(Self {
                prompt,
                image,
                metadata,
            }),
            _ => Err(NewImageError::Invalid(errors)),
        }
    }
}

/// The `status` of a `PATCH /api/images/:id/status` body.
pub fn parse_status_body(body: &Value) -> Result<ImageStatus, FieldError> {
    let value = body.get("status");
    value
        .and_then(Value::as_str)
        .and_then(ImageStatus::parse)
        .ok_or_else(|| FieldError::new(Location::Body, "status", value.cloned(), msg::STATUS))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

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

    #[test]
    fn list_query_defaults_and_first_value_wins() {
        assert_eq!(
            ListQuery::parse(None).unwrap(),
            ListQuery {
                page: 1,
                limit: 10,
                status: None
            }
        );
        let q = ListQuery::parse(Some("page=%2B2&limit=5&limit=500&status=printed")).unwrap();
        assert_eq!(
            (q.page, q.limit, q.status),
            (2, 5, Some(ImageStatus::Printed))
        );
    }

    #[test]
    fn a_literal_plus_is_a_plus_and_is_echoed_as_sent() {
        let q = ListQuery::parse(Some("page=+2&limit=+7")).unwrap();
        assert_eq!((q.page, q.limit), (2, 7));
        let errors = ListQuery::parse(Some("page=+0")).unwrap_err();
        assert_eq!(
            errors[0].value.as_deref(),
            Some(&Value::String("+0".into()))
        );
    }

    #[test]
    fn list_query_reports_each_bad_parameter_in_order() {
        let errors = ListQuery::parse(Some("status=x&limit=0&page=-1")).unwrap_err();
        let msgs: Vec<_> = errors.iter().map(FieldError::msg).collect();
        assert_eq!(msgs, vec![msg::PAGE, msg::LIMIT, msg::STATUS]);
        for bad in [
            "page=1.5",
            "page=",
            "page=abc",
            "limit=101",
            "page=99999999999999999999999",
        ] {
            assert!(ListQuery::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn images_decode_with_or_without_a_data_url_prefix() {
        let plain = DecodedImage::decode(&b64(PNG), 1024).unwrap();
        assert_eq!(plain.kind, ImageKind::Png);
        assert_eq!(&plain.bytes[..], PNG);
        let prefixed = format!("data:image/png;base64,{}", b64(PNG));
        assert_eq!(
            DecodedImage::decode(&prefixed, 1024).unwrap().bytes,
            plain.bytes
        );
        let jpeg = DecodedImage::decode(&b64(&[0xFF, 0xD8, 0xFF, 0xE0]), 1024).unwrap();
        assert_eq!(jpeg.kind.extension(), "jpg");
        let webp = DecodedImage::decode(&b64(b"RIFF\0\0\0\0WEBPVP8 "), 1024).unwrap();
        assert_eq!(webp.kind.content_type(), "image/webp");
    }

    #[test]
    fn non_zero_trailing_bits_are_accepted_as_the_contract_defines_base64() {
        // "QR==" has trailing bits set: SIMD refuses it, the fallback does not.
        let png_then_r = format!("{}QR==", &b64(b"\x89PNG\r\n\x1a\n\0")[..12]);
        assert!(
            DecodedImage::decode(&png_then_r, 1024).is_ok(),
            "{png_then_r}"
        );
    }

    #[test]
    fn image_data_errors_are_classified() {
        use ImageDataError::*;
        for bad in [
            "abc",
            "ab=c",
            "a===",
            "ab c",
            "Zm9v\n",
            "Zm9v-_==",
            "data:text/plain;base64,Zm9v",
        ] {
            assert_eq!(
                DecodedImage::decode(bad, 1024).unwrap_err(),
                NotBase64,
                "{bad}"
            );
        }
        assert_eq!(
            DecodedImage::decode(&b64(b"GIF89a"), 1024).unwrap_err(),
            UnsupportedFormat
        );
        assert_eq!(DecodedImage::decode(&b64(PNG), 4).unwrap_err(), TooLarge);
        assert_eq!(
            DecodedImage::decode(&b64(PNG), PNG.len())
                .unwrap()
                .bytes
                .len(),
            PNG.len()
        );
    }

    fn body(v: Value) -> Result<NewImage, NewImageError> {
        NewImage::from_json(v.to_string().as_bytes(), 1024)
    }

    fn msgs(r: Result<NewImage, NewImageError>) -> Vec<&'static str> {
        match r {
            Err(NewImageError::Invalid(e)) => e.iter().map(FieldError::msg).collect(),
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    #[test]
    fn create_body_checks_run_in_contract_order() {
        use serde_json::json;
        assert_eq!(
            msgs(body(json!({}))),
            vec![msg::PROMPT_REQUIRED, msg::IMAGE_REQUIRED]
        );
        assert_eq!(
            msgs(body(
                json!({"prompt": "é".repeat(1001), "imageData": "!!", "metadata": []})
            )),
            vec![
                msg::PROMPT_TOO_LONG,
                msg::IMAGE_NOT_BASE64,
                msg::METADATA_OBJECT
            ]
        );
        assert_eq!(
            msgs(body(
                json!({"prompt": 3, "imageData": b64(b"GIF89a"), "metadata": null})
            )),
            vec![
                msg::PROMPT_REQUIRED,
                msg::IMAGE_FORMAT,
                msg::METADATA_OBJECT
            ]
        );
        let ok = body(json!({"prompt": "é".repeat(1000), "imageData": b64(PNG)})).unwrap();
        assert_eq!(ok.metadata, json!({}));
        assert_eq!(
            body(json!({"prompt": "p", "imageData": b64(&[PNG, &[0u8; 2000][..]].concat())}))
                .unwrap_err(),
            NewImageError::TooLarge
        );
    }

    #[test]
    fn an_oversized_string_that_is_not_base64_is_a_validation_error() {
        let good = b64(&[PNG, &[0u8; 2000][..]].concat());
        let doubled = format!("{}{}", b64(PNG), b64(&[0u8; 2001]));
        assert_eq!(doubled.len() % 4, 0);
        assert!(
            doubled[..doubled.len() - 2].contains('='),
            "padding mid-string"
        );
        for (data, expected) in [
            (good.replace('A', "*"), msg::IMAGE_NOT_BASE64),
            (doubled, msg::IMAGE_NOT_BASE64),
        ] {
            assert_eq!(
                msgs(body(serde_json::json!({"prompt": "p", "imageData": data}))),
                vec![expected]
            );
        }
    }

    #[test]
    fn a_key_given_twice_counts_by_its_last_value() {
        let twice = format!(
            r#"{{"prompt":"first","imageData":"!!","prompt":"last","imageData":"{}"}}"#,
            b64(PNG)
        );
        assert_eq!(
            NewImage::from_json(twice.as_bytes(), 1024).unwrap().prompt,
            "last"
        );
    }

    #[test]
    fn escaped_base64_and_non_objects_are_handled() {
        let escaped = format!(
            r#"{{"prompt":"p","imageData":"{}"}}"#,
            b64(PNG).replace('/', "\\/")
        );
        assert!(NewImage::from_json(escaped.as_bytes(), 1024).is_ok());
        assert_eq!(
            msgs(NewImage::from_json(b"[1]", 1024)),
            vec![msg::PROMPT_REQUIRED, msg::IMAGE_REQUIRED]
        );
        assert!(matches!(
            NewImage::from_json(b"{nope", 1024),
            Err(NewImageError::InvalidJson(_))
        ));
        let null_metadata = br#"{"prompt":"p","imageData":"iVBORw0KGgo=","metadata":null}"#;
        assert_eq!(
            msgs(NewImage::from_json(null_metadata, 1024)),
            vec![msg::METADATA_OBJECT]
        );
    }

    #[test]
    fn image_data_is_never_echoed() {
        let e = body(serde_json::json!({"prompt": "p", "imageData": "not base64"})).unwrap_err();
        let NewImageError::Invalid(e) = e else {
            panic!()
        };
        assert!(!serde_json::to_string(&e).unwrap().contains("not base64"));
    }

    #[test]
    fn object_paths_never_leave_the_owner_folder() {
        let owner = UserId::parse("user_1").unwrap();
        let prefix = "https://x.supabase.co/storage/v1/object/public/images/";
        let ok = format!("{prefix}user_1/123_generated_abc.png");
        assert_eq!(
            object_path_of(&ok, prefix, &owner).as_deref(),
            Some("user_1/123_generated_abc.png")
        );
        for bad in [
            format!("{prefix}user_2/a.png"),
            format!("{prefix}user_1/../user_2/a.png"),
            format!("{prefix}user_1/%2E%2E/user_2/a.png"),
            format!("{prefix}user_1%2F..%2Fuser_2/a.png"),
            format!("{prefix}user_1//a.png"),
            format!("{prefix}user_1/"),
            format!("{prefix}user_1"),
            "https://evil.test/storage/v1/object/public/images/user_1/a.png".to_string(),
        ] {
            assert_eq!(object_path_of(&bad, prefix, &owner), None, "{bad}");
        }
    }
}
