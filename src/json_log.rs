//! One JSON object per log line, written by hand.
//!
//! The service logs a line for every request (contract §6), so the cost of
//! a line is paid on every request. General JSON formatters (tracing's,
//! json-subscriber) build each line through serde and re-render span
//! fields; here a span's fields are rendered to JSON once, when they are
//! recorded, and a line is a few string appends into a reused buffer. The shape is the usual one: `timestamp`
//! (RFC 3339, microseconds, UTC), `level`, `target`, the event's fields
//! (`message` first), then, while a request is served, its `request_id`,
//! `method`, `path` and `user_id` (once known; see
//! [`request_scope`](crate::request_scope)), and `spans` when there are
//! any: every enclosing span, outermost first, as `{"name": …, fields…}`.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::clock;
use crate::request_scope::{self, RequestScope};

/// A span's fields, already JSON: `,"key":value` for each.
struct SpanFields(String);

/// The layer writing JSON lines to `W`.
pub struct JsonLines<W> {
    make_writer: W,
}

impl<W> JsonLines<W> {
    /// Lines go to `make_writer`.
    pub fn new(make_writer: W) -> Self {
        Self { make_writer }
    }
}

thread_local! {
    /// The line being built, reused across lines.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

impl<S, W> Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut fields = String::new();
        attrs.record(&mut Fields(&mut fields));
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() {
            values.record(&mut Fields(fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            let meta = event.metadata();
            line.push_str("{\"timestamp\":\"");
            clock::push_iso_micros(&mut line);
            line.push_str("\",\"level\":\"");
            line.push_str(meta.level().as_str());
            line.push_str("\",\"target\":");
            json_string(&mut line, meta.target());
            event.record(&mut Fields(&mut line));
            request_scope::with_current(|request| push_request(&mut line, request));
            if let Some(scope) = ctx.event_scope(event) {
                line.push_str(",\"spans\":[");
                for (i, span) in scope.from_root().enumerate() {
                    if i > 0 {
                        line.push(',');
                    }
                    line.push_str("{\"name\":");
                    json_string(&mut line, span.name());
                    if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
                        line.push_str(fields);
                    }
                    line.push('}');
                }
                line.push(']');
            }
            line.push_str("}\n");
            // A failed log write has nowhere to be reported.
            let _ = self
                .make_writer
                .make_writer_for(meta)
                .write_all(line.as_bytes());
        });
    }
}

/// Appends the fields naming the request being served.
fn push_request(line: &mut String, request: &RequestScope) {
    line.push_str(",\"request_id\":");
    json_string(line, request.request_id.as_str());
    line.push_str(",\"method\":");
    json_string(line, request.method.as_str());
    line.push_str(",\"path\":");
    json_string(line, request.path());
    if let Some(user_id) = request.user_id() {
        line.push_str(",\"user_id\":");
        json_string(line, user_id);
    }
}

/// Appends `s` as a JSON string.
fn json_string(line: &mut String, s: &str) {
    line.push('"');
    escape_into(line, s);
    line.push('"');
}

/// The bytes JSON strings escape: control characters, `"` and `\\`.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Whether no byte of `s` needs an escape. Eight bytes at a time (the
/// classic has-less-than and has-zero-byte word tricks, which are exact for
/// "any byte"): the strings of a request's line took half the time byte by byte.
fn is_plain(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let mut words = s.chunks_exact(8);
    for chunk in &mut words {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        let control = v.wrapping_sub(ONES * 0x20) & !v & HIGH != 0;
        if control
            || has_zero(v ^ (ONES * u64::from(b'"')))
            || has_zero(v ^ (ONES * u64::from(b'\\')))
        {
            return false;
        }
    }
    !words
        .remainder()
        .iter()
        .any(|&b| NEEDS_ESCAPE[usize::from(b)])
}

/// Appends `s` escaped for the inside of a JSON string.
fn escape_into(line: &mut String, s: &str) {
    // Nearly every string needs no escape: one check, then one copy.
    if is_plain(s.as_bytes()) {
        line.push_str(s);
        return;
    }
    let mut from = 0;
    for (i, byte) in s.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1F => "",
            _ => continue,
        };
        line.push_str(&s[from..i]);
        if escape.is_empty() {
            let _ = write!(line, "\\u{byte:04x}");
        } else {
            line.push_str(escape);
        }
        from = i + 1;
    }
    line.push_str(&s[from..]);
}

/// Appends `value` if it is a whole number of thousandths (a latency in
/// milliseconds, to the microsecond, as every request's line has), as ryu
/// would write it, and says whether it did: two integer formats, where ryu's
/// general algorithm was a tenth of the line's cost.
fn push_millis(line: &mut String, value: f64) -> bool {
    if value.is_sign_negative() || value >= 1e12 {
        return false;
    }
    let thousandths = (value * 1000.0).round();
    if thousandths / 1000.0 != value {
        return false;
    }
    let thousandths = thousandths as u64;
    let fraction = thousandths % 1000;
    line.push_str(itoa::Buffer::new().format(thousandths / 1000));
    line.push('.');
    // As ryu: no trailing zeros, but at least one digit after the point.
    let mut rest = fraction;
    let mut place = 100;
    loop {
        line.push(char::from(b'0' + (rest / place) as u8));
        rest %= place;
        place /= 10;
        if rest == 0 {
            return true;
        }
    }
}

/// Renders fields as `,"key":value` onto a string.
struct Fields<'a>(&'a mut String);

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        self.0.push_str(",\"");
        self.0.push_str(field.name());
        self.0.push_str("\":");
    }
}

/// Escapes what a value's formatting writes, piece by piece.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        json_string(self.0, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.0.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.0.push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if !value.is_finite() {
            self.0.push_str("null");
        } else if !push_millis(self.0, value) {
            self.0.push_str(ryu::Buffer::new().format_finite(value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.0.push_str(if value { "true" } else { "false" });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        self.0.push('"');
        let _ = write!(Escaped(self.0), "{value}");
        self.0.push('"');
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.0.push('"');
        let _ = write!(Escaped(self.0), "{value:?}");
        self.0.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn lines_are_json_with_event_fields_and_the_spans_outermost_first() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(JsonLines::new(captured.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!(
                "request",
                request_id = "r-1",
                user_id = tracing::field::Empty
            );
            outer.record("user_id", "user \"q\"");
            let _outer = outer.enter();
            let inner = tracing::info_span!("call", n = 3_u64);
            let _inner = inner.enter();
            tracing::warn!(status = 502_u64, latency_ms = 1.5, ok = false, error = %"a\nb", "request failed");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "request failed");
        assert_eq!(line["status"], 502);
        assert_eq!(line["latency_ms"], 1.5);
        assert_eq!(line["ok"], false);
        assert_eq!(line["error"], "a\nb");
        assert_eq!(line["spans"][0]["name"], "request");
        assert_eq!(line["spans"][0]["request_id"], "r-1");
        assert_eq!(line["spans"][0]["user_id"], "user \"q\"");
        assert_eq!(line["spans"][1]["n"], 3);
        let stamp = line["timestamp"].as_str().unwrap();
        assert_eq!(stamp.len(), "2026-11-30T15:16:21.540010Z".len(), "{stamp}");
        assert!(
            chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
            "{stamp}"
        );
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
    }

    #[tokio::test]
    async fn lines_logged_while_a_request_is_served_name_it() {
        use crate::request_id::RequestId;
        use axum::http::{HeaderValue, Method, Uri};
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(JsonLines::new(captured.clone()));
        let _default = tracing::subscriber::set_default(subscriber);
        let id = RequestId::from_header(&HeaderValue::from_static("req-9")).unwrap();
        let scope = RequestScope::new(id, Method::POST, Uri::from_static("/api/images?userId=u"));
        scope
            .wrap(async {
                tracing::info!("before");
                request_scope::set_user("user_\"q\"");
                tracing::info!("after");
            })
            .await;
        tracing::info!("outside");
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["request_id"], "req-9");
        assert_eq!(lines[0]["method"], "POST");
        assert_eq!(lines[0]["path"], "/api/images");
        assert!(lines[0].get("user_id").is_none());
        assert_eq!(lines[1]["user_id"], "user_\"q\"");
        assert!(lines[2].get("request_id").is_none());
    }

    #[test]
    fn latencies_are_written_as_ryu_writes_them() {
        let micros = (0..20_000u64).chain([999_999, 1_000_000, 123_456_789, 86_400_000_000]);
        for value in micros
            .map(|us| us as f64 / 1000.0)
            .chain([0.1, 2.5, 1e11 + 0.5])
        {
            let mut fast = String::new();
            assert!(push_millis(&mut fast, value), "{value}");
            assert_eq!(fast, ryu::Buffer::new().format_finite(value), "{value}");
        }
        for other in [-0.0, -1.5, 0.0001, 1.0 / 3.0, 1e12, 1e300] {
            assert!(!push_millis(&mut String::new(), other), "{other}");
        }
    }

    #[test]
    fn plain_strings_are_told_from_those_needing_an_escape_at_every_offset() {
        for len in 0..24 {
            let base = "aé/~ZZZZ-".repeat(3);
            let base: String = base.chars().take(len).collect();
            assert!(is_plain(base.as_bytes()), "{base:?}");
            for at in 0..=base.len() {
                if !base.is_char_boundary(at) {
                    continue;
                }
                for bad in ['"', '\\', '\n', '\u{0}', '\u{1f}'] {
                    let mut s = base.clone();
                    s.insert(at, bad);
                    assert!(!is_plain(s.as_bytes()), "{s:?}");
                }
                let mut s = base.clone();
                s.insert(at, ' ');
                assert!(is_plain(s.as_bytes()), "{s:?}");
            }
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        json_string(&mut out, "a\u{1}\u{1f}\"\\é");
        assert_eq!(out, "\"a\\u0001\\u001f\\\"\\\\é\"");
        assert_eq!(
            serde_json::from_str::<String>(&out).unwrap(),
            "a\u{1}\u{1f}\"\\é"
        );
    }
}
