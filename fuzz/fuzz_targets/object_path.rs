//! `ObjectPath::from_url` (image URL -> Storage object path, used by deletes): any
//! path it accepts lies inside `{owner}/`, has no empty, `.` or `..` segment,
//! no backslash and no control character, and is the percent-decoded rest of
//! the URL after the public prefix.
#![no_main]

use image_service::clients::storage::ObjectPath;
use image_service::domain::UserId;
use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "http://127.0.0.1:54321/storage/v1/object/public/images/";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // First line: the owner (falls back to a fixed one); the rest: the URL tail.
    let (owner, tail) = text.split_once('\n').unwrap_or(("user_1", text));
    let Some(owner) = UserId::parse(owner).or_else(|| UserId::parse("user_1")) else {
        return;
    };
    for url in [format!("{PREFIX}{tail}"), tail.to_owned()] {
        let Some(path) = ObjectPath::from_url(&url, PREFIX, &owner) else {
            continue;
        };
        let path = path.as_str();
        let inside = path
            .strip_prefix(owner.as_str())
            .and_then(|rest| rest.strip_prefix('/'));
        let rest = inside.expect("path outside {owner}/");
        for segment in rest.split('/') {
            assert!(!segment.is_empty(), "empty segment in {path:?}");
            assert!(segment != "." && segment != "..", "dot segment in {path:?}");
        }
        assert!(!path.contains('\\'), "backslash in {path:?}");
        assert!(!path.chars().any(char::is_control), "control in {path:?}");
        assert!(url.starts_with(PREFIX));
    }
});
