//! `ListQuery::parse` on arbitrary query strings: never panics; whatever it
//! accepts is in range (page >= 1, limit 1..=100); refusals name a field.
#![no_main]

use image_service::domain::ListQuery;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    match ListQuery::parse(Some(query)) {
        Ok(q) => {
            assert!(q.page >= 1);
            assert!((1..=100).contains(&q.limit));
        }
        Err(errors) => {
            assert!(!errors.is_empty() && errors.len() <= 3);
        }
    }
});
