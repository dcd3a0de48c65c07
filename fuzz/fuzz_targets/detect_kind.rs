//! `ImageKind::detect` on arbitrary bytes: never panics, and answers exactly
//! by the PNG / JPEG / WebP signatures.
#![no_main]

use image_service::domain::ImageKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let expected = if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageKind::Png)
    } else if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageKind::Jpeg)
    } else if data.len() >= 12 && data.starts_with(b"RIFF") && &data[8..12] == b"WEBP" {
        Some(ImageKind::Webp)
    } else {
        None
    };
    let kind = ImageKind::detect(data);
    assert_eq!(kind, expected);
    if let Some(kind) = kind {
        assert!(matches!(kind.extension(), "png" | "jpg" | "webp"));
        assert!(kind.content_type().starts_with("image/"));
    }
});
