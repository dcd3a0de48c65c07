//! `imageData` decoded as it arrives, so a create never holds its image
//! whole (the bytes go on to Storage as they are decoded).
//!
//! It takes the content of the JSON string as written (escapes and all), in
//! pieces of any size, and keeps every rule of the one-shot decoder in
//! [`super::image`]: an optional `data:image/<type>;base64,` prefix,
//! standard padded base64 with trailing bits tolerated, the size limit, the
//! PNG/JPEG/WebP signature, and the same precedence of failures (not base64,
//! then too large, then unsupported). The common case (plain base64, maybe
//! with `\/` escapes) stays on a fast path: runs are copied and decoded with
//! SIMD in blocks; byte-by-byte work only happens once something is wrong.

use base64::engine::{general_purpose::GeneralPurposeConfig, DecodePaddingMode, GeneralPurpose};
use base64::Engine;
use bytes::Bytes;

use super::image::{ImageDataError, ImageKind};

/// Base64 characters gathered from small pieces (runs between escapes)
/// before they are decoded together.
const BLOCK: usize = 8 * 1024;
/// Longest data-URL prefix looked for.
const MAX_PREFIX: usize = 128;
/// Decoded bytes needed to recognise every signature (WebP's is 12).
const SIGNATURE_BYTES: usize = 12;

/// Standard alphabet; padding required, trailing bits tolerated, as the
/// one-shot decoder's fallback.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// What the whole `imageData` string turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOutcome {
    /// A supported image of `size` bytes.
    Image {
        /// Its format.
        kind: ImageKind,
        /// Decoded size.
        size: u64,
    },
    /// The string was empty.
    Empty,
    /// Not an image the contract accepts.
    Refused(ImageDataError),
    /// The string itself is not valid JSON (a bad escape, a control
    /// character, invalid UTF-8): the body is not JSON.
    InvalidJson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Base64 so far.
    Fine,
    /// Over the size limit; still checked for base64.
    TooLarge,
    /// Not base64; only JSON validity is still checked.
    NotBase64,
    /// Not valid JSON; nothing more to check.
    InvalidJson,
}

/// The data-URL prefix stage.
#[derive(Debug)]
enum Prefix {
    /// The first characters, until it is known whether they are a prefix.
    Deciding(Vec<u8>),
    /// Decided; characters go straight to the base64 stage.
    Decided,
}

/// An escape sequence being read (`\` seen, maybe `\uXXXX`).
#[derive(Debug, Default)]
struct Escape {
    /// The bytes after the backslash so far (at most `uXXXX\uXXXX`).
    bytes: Vec<u8>,
    active: bool,
}

/// The incremental decoder of one `imageData` string.
pub struct ImageStream {
    max_bytes: u64,
    verdict: Verdict,
    escape: Escape,
    /// Continuation bytes a UTF-8 sequence still expects (slow path only).
    utf8_left: u8,
    prefix: Prefix,
    /// Base64 characters not decoded yet.
    pending: Vec<u8>,
    /// Whether any content byte arrived at all.
    any: bool,
    /// Base64 characters seen after the prefix.
    chars: u64,
    /// Decoded bytes, counted even when no longer kept.
    decoded: u64,
    /// The first decoded bytes, until the format is known.
    head: Vec<u8>,
    kind: Option<Option<ImageKind>>,
    /// Decoded bytes ready to be taken (handed over whole, so no allocation
    /// outlives the chunk it carries).
    out: Vec<u8>,
}

impl ImageStream {
    /// A decoder refusing images over `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes: max_bytes as u64,
            verdict: Verdict::Fine,
            escape: Escape::default(),
            utf8_left: 0,
            prefix: Prefix::Deciding(Vec::new()),
            pending: Vec::new(),
            any: false,
            chars: 0,
            decoded: 0,
            head: Vec::new(),
            kind: None,
            out: Vec::new(),
        }
    }

    /// The image's format, once its first bytes are decoded: `Some(None)`
    /// for a signature that is not PNG, JPEG or WebP.
    pub fn kind(&self) -> Option<Option<ImageKind>> {
        self.kind
    }

    /// Whether what arrived so far can still be an acceptable image (else an
    /// upload under way should stop).
    pub fn acceptable(&self) -> bool {
        self.verdict == Verdict::Fine && self.kind != Some(None)
    }

    /// How many decoded bytes are ready.
    pub fn ready(&self) -> usize {
        self.out.len()
    }

    /// Decoded bytes ready to send, once at least `min` are (any at all when
    /// `min` is 0).
    pub fn take(&mut self, min: usize) -> Option<Bytes> {
        let ready = !self.out.is_empty() && self.out.len() >= min;
        ready.then(|| Bytes::from(std::mem::take(&mut self.out)))
    }

    /// Takes more of the string's content, as written between its quotes.
    pub fn feed(&mut self, mut raw: &[u8]) {
        if !raw.is_empty() {
            self.any = true;
        }
        while !raw.is_empty() {
            if self.verdict == Verdict::InvalidJson {
                return;
            }
            if self.escape.active {
                let byte = raw[0];
                raw = &raw[1..];
                self.escape_byte(byte);
                continue;
            }
            if self.verdict == Verdict::NotBase64 {
                // Slow path: only JSON validity is left to check.
                let byte = raw[0];
                raw = &raw[1..];
                self.json_byte(byte);
                continue;
            }
            match memchr::memchr(b'\\', raw) {
                Some(at) => {
                    let (run, rest) = raw.split_at(at);
                    self.chars_in(run);
                    self.escape = Escape {
                        bytes: Vec::new(),
                        active: true,
                    };
                    raw = &rest[1..];
                }
                None => {
                    self.chars_in(raw);
                    raw = &[];
                }
            }
        }
    }

    /// The string ended: decodes what is left and says what it was.
    pub fn finish(mut self) -> (StreamOutcome, Option<Bytes>) {
        if self.escape.active || self.utf8_left > 0 {
            // A string cannot end inside an escape or a character.
            self.verdict = Verdict::InvalidJson;
        }
        if let Prefix::Deciding(collected) = std::mem::replace(&mut self.prefix, Prefix::Decided) {
            let rest = strip_prefix_of(&collected).unwrap_or(&collected).to_vec();
            self.base64_in(&rest);
        }
        if matches!(self.verdict, Verdict::Fine | Verdict::TooLarge) {
            self.decode_last();
        }
        let outcome = match self.verdict {
            Verdict::InvalidJson => StreamOutcome::InvalidJson,
            _ if !self.any => StreamOutcome::Empty,
            Verdict::NotBase64 => StreamOutcome::Refused(ImageDataError::NotBase64),
            Verdict::TooLarge => StreamOutcome::Refused(ImageDataError::TooLarge),
            Verdict::Fine => {
                if self.kind.is_none() {
                    self.kind = Some(ImageKind::detect(&self.head));
                }
                match self.kind {
                    Some(Some(kind)) => StreamOutcome::Image {
                        kind,
                        size: self.decoded,
                    },
                    _ => StreamOutcome::Refused(ImageDataError::UnsupportedFormat),
                }
            }
        };
        let rest = match outcome {
            StreamOutcome::Image { .. } => self.take(0),
            _ => None,
        };
        (outcome, rest)
    }

    /// Unescaped characters of the content.
    fn chars_in(&mut self, chars: &[u8]) {
        if chars.is_empty() {
            return;
        }
        match &mut self.prefix {
            Prefix::Decided => self.base64_in(chars),
            Prefix::Deciding(collected) => {
                collected.extend_from_slice(chars);
                let collected = std::mem::take(collected);
                match decide_prefix(&collected) {
                    None => self.prefix = Prefix::Deciding(collected),
                    Some(skip) => {
                        self.prefix = Prefix::Decided;
                        self.base64_in(&collected[skip..]);
                    }
                }
            }
        }
    }

    /// Characters of the base64 text itself. Small pieces (runs between
    /// escapes) gather in `pending`; a large one is decoded where it lies,
    /// straight into `out`, all but its last group (which may carry the
    /// padding): no copy of the text, no second copy of the bytes.
    fn base64_in(&mut self, chars: &[u8]) {
        match self.verdict {
            Verdict::Fine | Verdict::TooLarge => {}
            // Characters reach here only on the fast path: JSON-checked later.
            Verdict::NotBase64 => {
                for &byte in chars {
                    self.json_byte(byte);
                }
                return;
            }
            Verdict::InvalidJson => return,
        }
        if self.pending.len() + chars.len() < BLOCK + 4 {
            self.pending.extend_from_slice(chars);
            return;
        }
        let mut chars = chars;
        if !self.pending.is_empty() {
            // Whole groups first, then more follows: none of them is the last.
            let fill = (4 - self.pending.len() % 4) % 4;
            let (head, rest) = chars.split_at(fill.min(chars.len()));
            self.pending.extend_from_slice(head);
            chars = rest;
            if chars.is_empty() {
                return;
            }
            let mut groups = std::mem::take(&mut self.pending);
            if self.decode_run(&groups).is_err() {
                self.refuse(&groups, chars);
                return;
            }
            groups.clear();
            self.pending = groups;
        }
        let keep = match chars.len() % 4 {
            0 => 4,
            partial => partial,
        }
        .min(chars.len());
        let (run, last) = chars.split_at(chars.len() - keep);
        if self.decode_run(run).is_err() {
            self.refuse(run, last);
            return;
        }
        self.pending.extend_from_slice(last);
    }

    /// Decodes whole groups with no padding, appended to `out` while the
    /// image is kept, else only checked (a later base64 error still wins
    /// over the size or the format).
    fn decode_run(&mut self, run: &[u8]) -> Result<(), base64_simd::Error> {
        self.chars += run.len() as u64;
        let from = self.out.len();
        if self.keeping() {
            // Exact: a chunk handed over holds no spare room, which would
            // stay allocated while it waits to be sent.
            self.out.reserve_exact(run.len() / 4 * 3);
            base64_simd::STANDARD_NO_PAD.decode_append(run, &mut self.out)?;
        } else {
            base64_simd::STANDARD_NO_PAD.check(run)?;
        }
        self.decoded_more(from, run.len() / 4 * 3);
        Ok(())
    }

    /// Decodes what is pending at the string's end, padding allowed.
    fn decode_last(&mut self) {
        let block = std::mem::take(&mut self.pending);
        if !block.len().is_multiple_of(4) {
            self.refuse(&block, &[]);
            return;
        }
        self.chars += block.len() as u64;
        let decoded = base64_simd::STANDARD
            .decode_to_vec(&block)
            .or_else(|_| LENIENT.decode(&block));
        match decoded {
            Ok(bytes) => {
                let from = self.out.len();
                if self.keeping() {
                    self.out.extend_from_slice(&bytes);
                }
                self.decoded_more(from, bytes.len());
            }
            Err(_) => self.refuse(&block, &[]),
        }
    }

    /// Text that did not decode (and what followed it in the same piece):
    /// not base64, unless the body is not even JSON.
    fn refuse(&mut self, text: &[u8], after: &[u8]) {
        self.verdict = Verdict::NotBase64;
        self.out.clear();
        let rest = std::mem::take(&mut self.pending);
        for &byte in text.iter().chain(after).chain(rest.iter()) {
            self.json_byte(byte);
        }
    }

    /// Whether decoded bytes are still worth keeping.
    fn keeping(&self) -> bool {
        self.verdict == Verdict::Fine && self.kind != Some(None)
    }

    /// Counts `n` more decoded bytes, those from `out[from..]` on when kept:
    /// past the limit nothing is kept; the first ones name the format.
    fn decoded_more(&mut self, from: usize, n: usize) {
        self.decoded += n as u64;
        if self.decoded > self.max_bytes {
            self.verdict = Verdict::TooLarge;
            self.out.clear();
            return;
        }
        if self.kind.is_some() || self.out.len() == from {
            return;
        }
        let new = &self.out[from..];
        self.head
            .extend_from_slice(&new[..new.len().min(SIGNATURE_BYTES)]);
        if self.head.len() >= SIGNATURE_BYTES {
            self.kind = Some(ImageKind::detect(&self.head));
            if self.kind == Some(None) {
                self.out.clear();
            }
        }
    }

    /// One byte of the content once it is known not to be base64: it must
    /// still be valid inside a JSON string.
    fn json_byte(&mut self, byte: u8) {
        if self.escape.active {
            self.escape_byte(byte);
            return;
        }
        if self.utf8_left > 0 {
            if byte & 0xC0 != 0x80 {
                self.verdict = Verdict::InvalidJson;
            }
            self.utf8_left -= 1;
            return;
        }
        match byte {
            b'\\' => {
                self.escape = Escape {
                    bytes: Vec::new(),
                    active: true,
                }
            }
            0x00..=0x1F => self.verdict = Verdict::InvalidJson,
            0x20..=0x7F => {}
            0xC2..=0xDF => self.utf8_left = 1,
            0xE0..=0xEF => self.utf8_left = 2,
            0xF0..=0xF4 => self.utf8_left = 3,
            _ => self.verdict = Verdict::InvalidJson,
        }
    }

    /// One more byte of an escape sequence.
    fn escape_byte(&mut self, byte: u8) {
        self.escape.bytes.push(byte);
        let bytes = &self.escape.bytes;
        let decoded: Option<Result<Option<u8>, ()>> = match bytes[0] {
            b'/' => Some(Ok(Some(b'/'))),
            b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => Some(Ok(None)),
            b'u' => unicode_escape(&bytes[1..]),
            _ => Some(Err(())),
        };
        let Some(decoded) = decoded else {
            return;
        };
        self.escape = Escape::default();
        match decoded {
            Err(()) => self.verdict = Verdict::InvalidJson,
            Ok(Some(ascii)) if self.verdict != Verdict::NotBase64 => self.chars_in(&[ascii]),
            Ok(Some(_)) => {}
            // A character no base64 text holds.
            Ok(None) => {
                if matches!(self.verdict, Verdict::Fine | Verdict::TooLarge) {
                    self.verdict = Verdict::NotBase64;
                    self.out.clear();
                    let rest = std::mem::take(&mut self.pending);
                    for byte in rest {
                        self.json_byte(byte);
                    }
                }
            }
        }
    }
}

/// A `\u` escape after its `u`: `None` while incomplete; `Ok(Some(b))` for
/// an ASCII character, `Ok(None)` for any other valid one, `Err` when the
/// JSON is not valid (bad hex digits, a lone surrogate).
fn unicode_escape(after_u: &[u8]) -> Option<Result<Option<u8>, ()>> {
    if after_u.len() < 4 {
        return if after_u.iter().all(u8::is_ascii_hexdigit) {
            None
        } else {
            Some(Err(()))
        };
    }
    let hex = |digits: &[u8]| {
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| u16::from_str_radix(d, 16).ok())
    };
    let Some(unit) = hex(&after_u[..4]) else {
        return Some(Err(()));
    };
    match unit {
        0xD800..=0xDBFF => {
            // A high surrogate: a `\uDC00`-`\uDFFF` must follow.
            let tail = &after_u[4..];
            let expected = b"\\u";
            for (i, &b) in tail.iter().enumerate().take(2) {
                if b != expected[i] {
                    return Some(Err(()));
                }
            }
            if tail.len() < 6 {
                return if tail.len() <= 2 || tail[2..].iter().all(u8::is_ascii_hexdigit) {
                    None
                } else {
                    Some(Err(()))
                };
            }
            match hex(&tail[2..6]) {
                Some(0xDC00..=0xDFFF) => Some(Ok(None)),
                _ => Some(Err(())),
            }
        }
        0xDC00..=0xDFFF => Some(Err(())),
        0..=0x7F => Some(Ok(Some(unit as u8))),
        _ => Some(Ok(None)),
    }
}

/// How many leading characters of `collected` are a data-URL prefix to
/// skip: `Some(n)` once decided (0: none), `None` while it could still be one.
fn decide_prefix(collected: &[u8]) -> Option<usize> {
    match strip_prefix_of(collected) {
        Some(rest) => Some(collected.len() - rest.len()),
        None if could_become_prefix(collected) => None,
        None => Some(0),
    }
}

/// The rest after a complete data-URL prefix, if `collected` starts with one.
fn strip_prefix_of(collected: &[u8]) -> Option<&[u8]> {
    let rest = collected.strip_prefix(b"data:image/")?;
    let marker = b";base64,";
    let end = rest.windows(marker.len()).position(|w| w == marker)?;
    let subtype = &rest[..end];
    let valid = !subtype.is_empty()
        && subtype
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-'));
    valid.then(|| &rest[end + marker.len()..])
}

/// Whether more characters could still make `collected` a data-URL prefix.
fn could_become_prefix(collected: &[u8]) -> bool {
    const START: &[u8] = b"data:image/";
    if collected.len() > MAX_PREFIX {
        return false;
    }
    if collected.len() <= START.len() {
        return START.starts_with(collected);
    }
    let Some(rest) = collected.strip_prefix(START) else {
        return false;
    };
    // A subtype, then maybe the start of the marker.
    let marker = b";base64,";
    let subtype_len = rest
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-'))
        .count();
    let tail = &rest[subtype_len..];
    tail.len() < marker.len() && marker.starts_with(tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::image::DecodedImage;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Feeds `raw` in pieces of `piece` bytes; returns the outcome and every byte decoded.
    fn stream(raw: &str, piece: usize, max: usize) -> (StreamOutcome, Vec<u8>) {
        let mut decoder = ImageStream::new(max);
        let mut bytes = Vec::new();
        for chunk in raw.as_bytes().chunks(piece.max(1)) {
            decoder.feed(chunk);
            if let Some(out) = decoder.take(1) {
                bytes.extend_from_slice(&out);
            }
        }
        let (outcome, rest) = decoder.finish();
        bytes.extend_from_slice(rest.as_deref().unwrap_or_default());
        (outcome, bytes)
    }

    /// What the one-shot decoder says of the same JSON string content.
    fn one_shot(raw: &str, max: usize) -> Result<(ImageKind, Vec<u8>), ImageDataError> {
        let text: String = serde_json::from_str(&format!("\"{raw}\"")).unwrap();
        DecodedImage::decode(&text, max).map(|d| (d.kind, d.bytes.to_vec()))
    }

    fn agree(raw: &str, max: usize) {
        // Pieces over BLOCK are decoded where they lie, the others gathered.
        for piece in [1, 3, 7, 64, 65_537, 65_541, 100_000] {
            let (outcome, bytes) = stream(raw, piece, max);
            match (outcome, one_shot(raw, max)) {
                (StreamOutcome::Image { kind, size }, Ok((k, b))) => {
                    assert_eq!(
                        (kind, size as usize, &bytes),
                        (k, b.len(), &b),
                        "{raw:.60} / {piece}"
                    );
                }
                (StreamOutcome::Refused(e), Err(f)) => assert_eq!(e, f, "{raw:.60} / {piece}"),
                (other, expected) => panic!("{raw:.60} / {piece}: {other:?} vs {expected:?}"),
            }
        }
    }

    #[test]
    fn streamed_decoding_agrees_with_the_one_shot_decoder() {
        let big: Vec<u8> = PNG
            .iter()
            .copied()
            .chain((0..200_000u32).map(|i| (i * 7) as u8))
            .collect();
        agree(&b64(PNG), 1024);
        agree(&b64(&big), 1 << 20);
        agree(&b64(&big), 100_000);
        agree(&format!("data:image/png;base64,{}", b64(&big)), 1 << 20);
        agree(&b64(&big).replace('/', "\\/"), 1 << 20);
        agree(&b64(&[0xFF, 0xD8, 0xFF, 0xE0]), 1024);
        agree(&b64(b"RIFF\0\0\0\0WEBPVP8 "), 1024);
        agree(&b64(b"GIF89a"), 1024);
        agree(&b64(b"GIF89a and more bytes than a signature"), 8);
        agree(&format!("{}QR==", &b64(b"\x89PNG\r\n\x1a\n\0")[..12]), 1024);
        for bad in [
            "abc",
            "ab=c",
            "a===",
            "ab c",
            "Zm9v-_==",
            "data:text/plain;base64,Zm9v",
        ] {
            agree(bad, 1024);
        }
        let mut midway = b64(&big);
        midway.insert(150_000, '*');
        agree(&midway, 100);
        agree(&format!("{}{}", b64(PNG), b64(&[0u8; 2001])), 1 << 20);
        // Padding in the middle of a text too long to be gathered.
        agree(&format!("{}{}", b64(PNG), b64(&big)), 1 << 20);
        agree(&format!("{}{}", b64(&big[..100_001]), b64(&big)), 1 << 20);
    }

    #[test]
    fn escapes_of_base64_characters_are_decoded_and_others_refused() {
        let png = b64(PNG);
        let escaped: String = png
            .chars()
            .map(|c| format!("\\u{:04X}", c as u32))
            .collect();
        agree(&escaped, 1024);
        assert_eq!(
            stream(&format!("{png}\\n"), 5, 1024).0,
            StreamOutcome::Refused(ImageDataError::NotBase64)
        );
        assert_eq!(
            stream("\\uD83D\\uDE00", 1, 1024).0,
            StreamOutcome::Refused(ImageDataError::NotBase64)
        );
    }

    #[test]
    fn content_that_is_not_valid_json_is_told_apart() {
        for bad in [
            "ab\\x",
            "\\uZZZZ",
            "\\uDE00",
            "\\uD83Dx",
            "ab\u{1}cd",
            "abc\\",
        ] {
            assert_eq!(
                stream(bad, 2, 1024).0,
                StreamOutcome::InvalidJson,
                "{bad:?}"
            );
        }
        assert_eq!(stream("", 1, 1024).0, StreamOutcome::Empty);
        assert_eq!(
            stream("data:image/png;base64,", 4, 1024).0,
            StreamOutcome::Refused(ImageDataError::UnsupportedFormat)
        );
    }

    #[test]
    fn an_unsupported_or_oversized_image_emits_nothing() {
        let gif = b64(&[b"GIF89a".as_slice(), &[0u8; 100_000]].concat());
        let mut decoder = ImageStream::new(1 << 20);
        decoder.feed(gif.as_bytes());
        assert_eq!(decoder.kind(), Some(None));
        assert!(!decoder.acceptable());
        assert!(decoder.take(0).is_none());
        let big = b64(&[PNG, &[0u8; 300_000][..]].concat());
        let mut decoder = ImageStream::new(1000);
        decoder.feed(big.as_bytes());
        assert!(!decoder.acceptable());
        assert_eq!(
            decoder.finish().0,
            StreamOutcome::Refused(ImageDataError::TooLarge)
        );
    }
}
