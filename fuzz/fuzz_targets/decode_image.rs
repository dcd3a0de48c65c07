//! `DecodedImage::decode` (data-URL prefix, base64 shape, size cap, type
//! detection) on arbitrary input: never panics, never returns more than the
//! cap, always agrees with `ImageKind::detect`, and round-trips any bytes
//! encoded as standard base64 (with and without a data-URL prefix).
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use image_service::domain::{DecodedImage, ImageDataError, ImageKind};
use libfuzzer_sys::fuzz_target;

const CAPS: [usize; 3] = [0, 64, 1 << 20];

fuzz_target!(|data: &[u8]| {
    // 1. The input as the `imageData` string itself.
    if let Ok(text) = std::str::from_utf8(data) {
        for cap in CAPS {
            if let Ok(image) = DecodedImage::decode(text, cap) {
                assert!(image.bytes.len() <= cap);
                assert_eq!(ImageKind::detect(&image.bytes), Some(image.kind));
            }
        }
    }

    // 2. The input as image bytes, encoded the way a client would.
    let encoded = STANDARD.encode(data);
    for text in [encoded.clone(), format!("data:image/png;base64,{encoded}")] {
        for cap in CAPS {
            let result = DecodedImage::decode(&text, cap);
            match (ImageKind::detect(data), data.len() <= cap) {
                (_, false) => assert_eq!(result.unwrap_err(), ImageDataError::TooLarge),
                (None, true) => {
                    assert_eq!(result.unwrap_err(), ImageDataError::UnsupportedFormat)
                }
                (Some(kind), true) => {
                    let image = result.expect("a valid image must decode");
                    assert_eq!(&image.bytes[..], data);
                    assert_eq!(image.kind, kind);
                }
            }
        }
    }
});
