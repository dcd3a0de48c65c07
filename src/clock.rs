//! Wall-clock timestamps as the service writes them (ISO 8601, UTC), fast:
//! the date and time of day are formatted once a second per thread, the
//! fraction every time. Health answers and log lines ask for one each.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    /// The second the cached text is for, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends now as `YYYY-MM-DDTHH:MM:SS` and returns the microseconds past it.
fn push_second(out: &mut String) -> u32 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let text = chrono::DateTime::from_timestamp(secs as i64, 0)
                .map(|d| d.format("%Y-%m-%dT%H:%M:%S").to_string())
                .unwrap_or_default();
            *cached = (secs, text);
        }
        out.push_str(&cached.1);
    });
    now.subsec_micros()
}

/// Appends now with milliseconds, as JavaScript's `toISOString()`:
/// `2025-06-18T00:39:32.148Z`.
pub fn push_iso_millis(out: &mut String) {
    let micros = push_second(out);
    push_fraction(out, micros / 1000, 3);
}

/// Appends now with microseconds: `2025-06-18T00:39:32.148123Z`.
pub fn push_iso_micros(out: &mut String) {
    let micros = push_second(out);
    push_fraction(out, micros, 6);
}

/// Appends `.` `value` in `digits` zero-padded digits, then `Z`; by hand,
/// as every log line pays for it.
fn push_fraction(out: &mut String, value: u32, digits: u32) {
    out.push('.');
    let mut place = 10u32.pow(digits);
    while place > 1 {
        place /= 10;
        out.push(char::from(b'0' + (value / place % 10) as u8));
    }
    out.push('Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_are_zero_padded() {
        let mut out = String::new();
        push_fraction(&mut out, 7, 3);
        push_fraction(&mut out, 40_321, 6);
        push_fraction(&mut out, 999_999, 6);
        assert_eq!(out, ".007Z.040321Z.999999Z");
    }

    #[test]
    fn timestamps_are_rfc_3339_utc_at_the_right_precision() {
        let (mut millis, mut micros) = (String::new(), String::new());
        push_iso_millis(&mut millis);
        push_iso_micros(&mut micros);
        assert_eq!(millis.len(), "2025-06-18T00:39:32.148Z".len(), "{millis}");
        assert_eq!(
            micros.len(),
            "2025-06-18T00:39:32.148123Z".len(),
            "{micros}"
        );
        for stamp in [&millis, &micros] {
            let parsed = chrono::DateTime::parse_from_rfc3339(stamp).unwrap();
            let drift = (chrono::Utc::now() - parsed.with_timezone(&chrono::Utc)).num_seconds();
            assert!(drift.abs() <= 1, "{stamp}");
        }
    }
}
