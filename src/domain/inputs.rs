//! What clients send: the create body, the list query, the status change.

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::Value;

use super::image::{DecodedImage, ImageDataError};
use super::validation::{msg, FieldError, Location};

/// Largest `metadata`, as compact JSON text.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Deepest `metadata` nesting (the object itself is level 1).
pub const MAX_METADATA_DEPTH: usize = 16;

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

/// Compact length and nesting depth of valid JSON text, counted without
/// building it: whitespace outside strings is not counted.
fn compact_shape(text: &str) -> (usize, usize) {
    let (mut length, mut depth, mut deepest) = (0usize, 0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            length += 1;
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => continue,
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        length += 1;
    }
    (length, deepest)
}

/// What became of `imageData`, decided by whoever decoded it.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageCheck<T> {
    /// An image the contract accepts.
    Accepted(T),
    /// Absent, empty, or not a string.
    Required,
    /// Refused.
    Refused(ImageDataError),
    /// The string itself is not valid JSON: the body is not JSON.
    InvalidJson,
}

/// A create body's fields but the image, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateText {
    /// The prompt, 1..=1000 characters.
    pub prompt: String,
    /// Caller's metadata object, `{}` when absent.
    pub metadata: Value,
}

impl NewImage {
    /// Parses and checks a whole create body, its image decoded at once.
    pub fn from_json(body: &[u8], max_image_bytes: usize) -> Result<Self, NewImageError> {
        let (text, image) = check_create(body, |raw| match raw.and_then(json_string_content) {
            Some(data) if !data.is_empty() => match decode_json_string(data, max_image_bytes) {
                Ok(image) => ImageCheck::Accepted(image),
                Err(e) => ImageCheck::Refused(e),
            },
            _ => ImageCheck::Required,
        })?;
        Ok(Self {
            prompt: text.prompt,
            image,
            metadata: text.metadata,
        })
    }
}

/// Parses and checks a create body; an absent or mistyped field fails only
/// its first check, and checks are reported in the contract's order.
/// `image` decides `imageData` from its raw JSON value (when present).
///
/// Nothing is built from a field before its size is known to be sane: a
/// rejected value is echoed only up to 4 KiB, and `metadata` is built only
/// once it is known to be at most 16 KiB and 16 levels deep.
pub fn check_create<T>(
    body: &[u8],
    image: impl FnOnce(Option<&RawValue>) -> ImageCheck<T>,
) -> Result<(CreateText, T), NewImageError> {
    let root: &RawValue =
        serde_json::from_slice(body).map_err(|e| NewImageError::InvalidJson(e.to_string()))?;
    // Any JSON that is not an object has none of the fields.
    let fields: RawCreate<'_> = if root.get().starts_with('{') {
        serde_json::from_str(root.get()).map_err(|e| NewImageError::InvalidJson(e.to_string()))?
    } else {
        RawCreate::default()
    };
    let mut errors = Vec::new();
    let body_field = |raw, msg| FieldError::raw(Location::Body, "prompt", raw, msg);

    let prompt = match fields.prompt.and_then(raw_string) {
        Some(p) if !p.is_empty() => {
            if p.chars().count() > 1000 {
                errors.push(body_field(fields.prompt, msg::PROMPT_TOO_LONG));
            }
            Some(p.into_owned())
        }
        _ => {
            errors.push(body_field(fields.prompt, msg::PROMPT_REQUIRED));
            None
        }
    };

    // imageData is never echoed back: it can be megabytes.
    let image_error = |msg| FieldError::unechoed(Location::Body, "imageData", msg);
    let mut too_large = false;
    let image = match image(fields.image_data) {
        ImageCheck::Accepted(image) => Some(image),
        ImageCheck::InvalidJson => {
            return Err(NewImageError::InvalidJson(
                "imageData is not a valid JSON string".into(),
            ))
        }
        ImageCheck::Required => {
            errors.push(image_error(msg::IMAGE_REQUIRED));
            None
        }
        ImageCheck::Refused(ImageDataError::NotBase64) => {
            errors.push(image_error(msg::IMAGE_NOT_BASE64));
            None
        }
        ImageCheck::Refused(ImageDataError::UnsupportedFormat) => {
            errors.push(image_error(msg::IMAGE_FORMAT));
            None
        }
        ImageCheck::Refused(ImageDataError::TooLarge) => {
            too_large = true;
            None
        }
    };

    let metadata_error = |msg| FieldError::raw(Location::Body, "metadata", fields.metadata, msg);
    let metadata = match fields.metadata {
        None => Some(Value::Object(Default::default())),
        Some(raw) if raw.get().starts_with('{') => {
            let (length, depth) = compact_shape(raw.get());
            if length > MAX_METADATA_BYTES || depth > MAX_METADATA_DEPTH {
                errors.push(metadata_error(msg::METADATA_TOO_LARGE));
                None
            } else {
                serde_json::from_str(raw.get()).ok()
            }
        }
        Some(_) => {
            errors.push(metadata_error(msg::METADATA_OBJECT));
            None
        }
    };

    match (prompt, image, metadata) {
        _ if !errors.is_empty() => Err(NewImageError::Invalid(errors)),
        _ if too_large => Err(NewImageError::TooLarge),
        (Some(prompt), Some(image), Some(metadata)) => Ok((CreateText { prompt, metadata }, image)),
        _ => Err(NewImageError::Invalid(errors)),
    }
}

/// Whether the fields a create body holds before its `imageData` (the
/// skeleton so far) pass their checks, so the image may be uploaded while
/// it arrives. Absent fields may still come later; `false` also when what
/// came is not the start of a JSON object (the body is then refused anyway).
pub fn leading_fields_valid(prefix: &[u8], placeholder: &str) -> bool {
    let mut text = Vec::with_capacity(prefix.len() + placeholder.len() + 1);
    text.extend_from_slice(prefix);
    text.extend_from_slice(placeholder.as_bytes());
    text.push(b'}');
    let Ok(fields) = serde_json::from_slice::<RawCreate<'_>>(&text) else {
        return false;
    };
    let prompt_ok = fields.prompt.is_none_or(|raw| {
        raw_string(raw).is_some_and(|p| !p.is_empty() && p.chars().count() <= 1000)
    });
    let metadata_ok = fields.metadata.is_none_or(|raw| {
        let (length, depth) = compact_shape(raw.get());
        raw.get().starts_with('{') && length <= MAX_METADATA_BYTES && depth <= MAX_METADATA_DEPTH
    });
    prompt_ok && metadata_ok
}

/// A JSON string's content, borrowed when it has no escapes; `None` if not a string.
fn raw_string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
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
    use base64::Engine;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
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
        assert_eq!(errors[0].value(), Some(&Value::String("+0".into())));
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
}
