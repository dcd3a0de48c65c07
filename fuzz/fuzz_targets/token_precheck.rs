//! `auth::precheck` (the network-free token checks: size, shape, header,
//! `alg`, `kid`) on arbitrary strings, and on well-shaped tokens whose header
//! JSON is the fuzz input: never panics, never accepts a token over 8 KiB,
//! an `alg` other than RS256, or a `kid` that is empty or over 256 bytes.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use image_service::auth::{precheck, MAX_TOKEN_LEN};
use libfuzzer_sys::fuzz_target;

fn check(token: &str) {
    let Ok(kid) = precheck(token) else {
        return;
    };
    assert!(token.len() <= MAX_TOKEN_LEN);
    assert_eq!(token.split('.').count(), 3);
    let header = jsonwebtoken::decode_header(token).expect("accepted header must parse");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(kid, header.kid);
    if let Some(kid) = kid {
        assert!(
            !kid.is_empty() && kid.len() <= 256,
            "kid of {} bytes",
            kid.len()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    // The input as the header JSON of an otherwise well-formed token.
    let header = URL_SAFE_NO_PAD.encode(data);
    let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"user_1","iss":"x","exp":1}"#);
    check(&format!("{header}.{claims}.c2ln"));
});
