//! Property tests of the parsers that see untrusted input before any network
//! call: the base64 / data-URL image decoder, image-type detection, the
//! token pre-checks, the list query, and the URL -> object-path derivation.
//!
//! `cargo test --test properties` runs 256 cases per property (a few
//! seconds); `PROPTEST_CASES=10000 cargo test --release --test properties`
//! digs deeper. The same parsers have cargo-fuzz targets under `fuzz/`.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use image_service::auth::{precheck, MAX_TOKEN_LEN};
use image_service::clients::storage::ObjectPath;
use image_service::domain::{
    DecodedImage, ImageDataError, ImageKind, ImageStatus, ListQuery, UserId,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use stand_ins::test_key;

const PNG_SIG: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG_SIG: &[u8] = &[0xFF, 0xD8, 0xFF];
const PREFIX: &str = "https://x.supabase.co/storage/v1/object/public/images/";

/// The signature rules of the contract, written independently of the service.
fn expected_kind(bytes: &[u8]) -> Option<ImageKind> {
    if bytes.starts_with(PNG_SIG) {
        Some(ImageKind::Png)
    } else if bytes.starts_with(JPEG_SIG) {
        Some(ImageKind::Jpeg)
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some(ImageKind::Webp)
    } else {
        None
    }
}

/// The contract's optional `data:image/<type>;base64,` prefix, stripped.
fn strip_data_url(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("data:image/") else {
        return text;
    };
    match rest.split_once(";base64,") {
        Some((subtype, body))
            if !subtype.is_empty()
                && subtype
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".+-".contains(&b)) =>
        {
            body
        }
        _ => text,
    }
}

/// Bytes that start with one of the three accepted signatures.
fn signed_image() -> impl Strategy<Value = (ImageKind, Vec<u8>)> {
    let tail = prop::collection::vec(any::<u8>(), 0..2048);
    prop_oneof![
        tail.clone()
            .prop_map(|t| (ImageKind::Png, [PNG_SIG, &t].concat())),
        tail.clone()
            .prop_map(|t| (ImageKind::Jpeg, [JPEG_SIG, &t].concat())),
        (any::<[u8; 4]>(), tail).prop_map(|(size, t)| {
            (
                ImageKind::Webp,
                [b"RIFF".as_slice(), &size, b"WEBP", &t].concat(),
            )
        }),
    ]
}

/// Strings near base64: its alphabet, padding, and a few foreign characters.
fn base64ish() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9+/=]{0,64}",
        "[A-Za-z0-9+/=_ \n-]{0,64}",
        "data:image/[a-z+.-]{0,8};base64,[A-Za-z0-9+/=]{0,48}",
        any::<String>(),
    ]
}

proptest! {
    // ------------------------------------------------------------ decoder

    #[test]
    fn any_signed_image_round_trips_through_base64(
        (kind, bytes) in signed_image(),
        subtype in "[a-z0-9.+-]{1,12}",
        prefixed in any::<bool>(),
    ) {
        let encoded = STANDARD.encode(&bytes);
        let text = if prefixed {
            format!("data:image/{subtype};base64,{encoded}")
        } else {
            encoded
        };
        let image = DecodedImage::decode(&text, bytes.len()).expect("decodes at its exact size");
        prop_assert_eq!(&image.bytes[..], &bytes[..]);
        prop_assert_eq!(image.kind, kind);
    }

    #[test]
    fn the_size_cap_is_exact(bytes in prop::collection::vec(any::<u8>(), 0..512), cap in 0usize..600) {
        let bytes = [PNG_SIG, &bytes].concat();
        let result = DecodedImage::decode(&STANDARD.encode(&bytes), cap);
        if bytes.len() > cap {
            prop_assert_eq!(result.unwrap_err(), ImageDataError::TooLarge);
        } else {
            prop_assert_eq!(result.expect("fits").bytes.len(), bytes.len());
        }
    }

    #[test]
    fn unsigned_bytes_are_classified_as_unsupported(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        prop_assume!(expected_kind(&bytes).is_none());
        prop_assert_eq!(
            DecodedImage::decode(&STANDARD.encode(&bytes), 1024).unwrap_err(),
            ImageDataError::UnsupportedFormat
        );
    }

    #[test]
    fn the_decoder_never_panics_and_its_answers_are_consistent(text in base64ish(), cap in 0usize..128) {
        let body = strip_data_url(&text);
        match DecodedImage::decode(&text, cap) {
            Ok(image) => {
                prop_assert!(image.bytes.len() <= cap);
                prop_assert_eq!(expected_kind(&image.bytes), Some(image.kind));
                // What was accepted is standard base64 (after an optional prefix).
                prop_assert!(body.len().is_multiple_of(4));
                prop_assert!(body.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
            }
            Err(ImageDataError::UnsupportedFormat) => {
                let bytes = STANDARD.decode(body);
                prop_assert!(bytes.is_err() || expected_kind(&bytes.unwrap_or_default()).is_none());
            }
            Err(ImageDataError::TooLarge) => prop_assert!(body.len() / 4 * 3 > cap),
            // Canonical standard base64 is never refused as "not base64".
            Err(ImageDataError::NotBase64) => prop_assert!(STANDARD.decode(body).is_err()),
        }
    }

    #[test]
    fn non_base64_characters_are_refused(
        (_, bytes) in signed_image(),
        at in any::<prop::sample::Index>(),
        bad in prop::sample::select(vec!['-', '_', ' ', '\n', '.', '!', '%', 'é', '\0']),
    ) {
        let mut text: Vec<char> = STANDARD.encode(&bytes).chars().collect();
        let i = at.index(text.len());
        text[i] = bad;
        let text: String = text.into_iter().collect();
        prop_assert_eq!(DecodedImage::decode(&text, 1 << 20).unwrap_err(), ImageDataError::NotBase64);
    }

    // ------------------------------------------------------------ detection

    #[test]
    fn detection_follows_the_signatures(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
        prop_assert_eq!(ImageKind::detect(&bytes), expected_kind(&bytes));
    }

    #[test]
    fn detection_finds_every_signed_image((kind, bytes) in signed_image()) {
        prop_assert_eq!(ImageKind::detect(&bytes), Some(kind));
    }

    // ------------------------------------------------------------ token pre-checks

    #[test]
    fn precheck_never_panics_and_accepts_only_rs256(token in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}",
        "eyJ[A-Za-z0-9_.-]{0,200}",
    ]) {
        if let Ok(kid) = precheck(&token) {
            prop_assert!(token.len() <= MAX_TOKEN_LEN);
            let header = jsonwebtoken::decode_header(&token).expect("accepted header parses");
            prop_assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
            prop_assert!(kid.is_none_or(|k| (1..=256).contains(&k.len())));
        }
    }

    #[test]
    fn precheck_accepts_exactly_rs256_headers_with_a_sane_kid(
        alg in prop::sample::select(vec![
            "RS256", "RS384", "RS512", "PS256", "PS512", "HS256", "HS512",
            "ES256", "ES384", "EdDSA", "none", "None", "NONE", "rs256", "RS256 ", "",
        ]),
        kid in prop::option::of(prop_oneof![
            ".{0,300}",
            "[\\x00-\\x1f'\";%/\\\\.]{1,40}",
            Just("../../etc/passwd".to_owned()),
            Just("' OR 1=1 --".to_owned()),
            "k{250,262}",
            "é{120,135}",
        ]),
        typ in prop::option::of(prop::sample::select(vec!["JWT", "jwt", "at+jwt", ""])),
        jku in prop::option::of("https?://[a-z.]{1,20}/[a-z./]{0,20}"),
        embed_jwk in any::<bool>(),
        extra in prop::option::of((any::<String>(), any::<String>())),
        padding in 0usize..9000,
    ) {
        let mut header = Map::new();
        header.insert("alg".into(), json!(alg));
        if let Some(kid) = &kid {
            header.insert("kid".into(), json!(kid));
        }
        if let Some(typ) = typ {
            header.insert("typ".into(), json!(typ));
        }
        if let Some(jku) = &jku {
            header.insert("jku".into(), json!(jku));
            header.insert("x5u".into(), json!(jku));
        }
        if embed_jwk {
            header.insert("jwk".into(), test_key(2).jwk());
        }
        if let Some((k, v)) = extra {
            header.entry(k).or_insert(json!(v));
        }
        // The session-token header rules: typ JWT (any case), no crit, a
        // session cat if any.
        let header_ok = header.get("typ").is_none_or(|t| t.as_str().is_some_and(|t| t.eq_ignore_ascii_case("JWT")))
            && !header.contains_key("crit")
            && header.get("cat").is_none_or(|c| c == "cl_B7d4PD111AAA" || c == "cl_I7d4PD111III");
        let claims = json!({"sub": "user_1", "iss": "x", "exp": 1, "pad": "p".repeat(padding)});
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode([7u8; 256]),
        );
        let kid_ok = kid
            .as_ref()
            .is_none_or(|k| (1..=256).contains(&k.chars().count()));
        let should_pass = alg == "RS256" && kid_ok && header_ok && token.len() <= MAX_TOKEN_LEN;
        match precheck(&token) {
            Ok(found) => {
                prop_assert!(should_pass, "accepted alg {alg:?}, kid {kid:?}, {} bytes", token.len());
                prop_assert_eq!(found, kid);
            }
            Err(e) => prop_assert!(!should_pass, "refused a sane token: {e}"),
        }
    }

    // ------------------------------------------------------------ list query

    #[test]
    fn list_query_never_panics_and_accepted_values_are_in_range(query in prop_oneof![
        any::<String>(),
        "((page|limit|status|x)=[-+0-9a-z%.]{0,6}&?){0,5}",
    ]) {
        if let Ok(q) = ListQuery::parse(Some(&query)) {
            prop_assert!(q.page >= 1);
            prop_assert!((1..=100).contains(&q.limit));
        }
    }

    #[test]
    fn list_query_matches_its_model(
        page in prop::option::of(prop_oneof!["\\+?[0-9]{1,22}", ".{0,6}"]),
        limit in prop::option::of(prop_oneof!["\\+?[0-9]{1,4}", ".{0,6}"]),
        status in prop::option::of(prop_oneof![
            prop::sample::select(vec!["generated", "printed", "ordered", "deleted"]).prop_map(String::from),
            ".{0,10}",
        ]),
        noise in prop::collection::vec(("[a-z]{1,6}", ".{0,6}"), 0..3),
        repeat in any::<bool>(),
    ) {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &noise {
            if !matches!(k.as_str(), "page" | "limit" | "status") {
                query.append_pair(k, v);
            }
        }
        for (name, value) in [("page", &page), ("limit", &limit), ("status", &status)] {
            if let Some(v) = value {
                query.append_pair(name, v);
                if repeat {
                    query.append_pair(name, "garbage");
                }
            }
        }
        let query = query.finish();

        let number = |raw: &str| {
            let digits = raw.strip_prefix('+').unwrap_or(raw);
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse::<u64>().ok())
                .flatten()
        };
        let want_page = page.as_deref().map_or(Some(1), |p| number(p).filter(|n| *n >= 1));
        let want_limit = limit.as_deref().map_or(Some(10), |l| number(l).filter(|n| (1..=100).contains(n)));
        let want_status = status.as_deref().map_or(Some(None), |s| ImageStatus::parse(s).map(Some));
        let bad = [want_page.is_none(), want_limit.is_none(), want_status.is_none()]
            .iter()
            .filter(|b| **b)
            .count();

        match ListQuery::parse(Some(&query)) {
            Ok(q) => {
                prop_assert_eq!(bad, 0, "{}", query);
                prop_assert_eq!(Some(q.page), want_page);
                prop_assert_eq!(Some(q.limit), want_limit);
                prop_assert_eq!(Some(q.status), want_status);
            }
            Err(errors) => prop_assert_eq!(errors.len(), bad, "{}", query),
        }
    }

    // ------------------------------------------------------------ object paths

    #[test]
    fn object_paths_never_leave_the_owner_folder(
        owner in "[A-Za-z0-9_-]{1,12}",
        lead in prop::sample::select(vec!["", "%2F", "/", "%2E%2E/", "../"]),
        segments in prop::collection::vec(prop_oneof![
            prop::sample::select(vec![
                "..", ".", "", "%2e", "%2E%2E", "%2e%2E", ".%2e", "%2F", "%2f..", "%5C", "\\",
                "a%5C..", "%00", "%0a", "%7f", "%c0%ae%c0%ae", "%252e%252e", "..%2F..", "%2E%2E%2F",
                "?", "#", "%3F", "%23", "a.png", "x", "user_other", "%ff", "é", "%C3%A9",
            ]).prop_map(String::from),
            "[A-Za-z0-9_.%-]{1,8}",
        ], 0..6),
        separators in prop::collection::vec(prop::sample::select(vec!["/", "%2F", "%2f", "//", "\\"]), 6),
        owner_form in prop::sample::select(vec!["plain", "encoded", "other"]),
    ) {
        let user = UserId::parse(&owner).expect("owner strategy is valid");
        let first = match owner_form {
            "plain" => owner.clone(),
            "encoded" => owner.bytes().map(|b| format!("%{b:02X}")).collect(),
            _ => "user_other".to_owned(),
        };
        let mut rest = format!("{lead}{first}");
        for (segment, sep) in segments.iter().zip(&separators) {
            rest.push_str(sep);
            rest.push_str(segment);
        }
        let url = format!("{PREFIX}{rest}");
        if let Some(path) = ObjectPath::from_url(&url, PREFIX, &user).map(|p| p.as_str().to_owned()) {
            let inside = path.strip_prefix(&owner).and_then(|r| r.strip_prefix('/'));
            prop_assert!(inside.is_some(), "{path:?} outside {owner}/ (from {url:?})");
            for segment in inside.unwrap_or_default().split('/') {
                prop_assert!(!segment.is_empty() && segment != "." && segment != "..", "{path:?} from {url:?}");
            }
            prop_assert!(!path.contains('\\'), "{path:?}");
            prop_assert!(!path.chars().any(char::is_control), "{path:?}");
            let before_query = rest.split(['?', '#']).next().unwrap_or_default();
            let decoded = percent_encoding::percent_decode_str(before_query).decode_utf8_lossy();
            prop_assert_eq!(path, decoded.into_owned());
        }
        // The same URL under another prefix is foreign.
        let foreign = format!("https://evil.test/storage/v1/object/public/images/{rest}");
        prop_assert_eq!(ObjectPath::from_url(&foreign, PREFIX, &user).map(|p| p.as_str().to_owned()), None);
    }

    #[test]
    fn the_service_s_own_object_names_are_recognised(
        owner in "[A-Za-z0-9_-]{1,128}",
        ms in any::<u32>(),
        ext in prop::sample::select(vec!["png", "jpg", "webp"]),
        query in prop::option::of("[?#][a-z=&]{0,10}"),
    ) {
        let user = UserId::parse(&owner).expect("valid owner");
        let name = format!("{owner}/{ms}_generated_{}.{ext}", uuid::Uuid::new_v4());
        let url = format!("{PREFIX}{name}{}", query.unwrap_or_default());
        prop_assert_eq!(ObjectPath::from_url(&url, PREFIX, &user).map(|p| p.as_str().to_owned()), Some(name));
    }
}
