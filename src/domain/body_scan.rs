//! A create's body split as it arrives: the content of every top-level
//! `imageData` string goes out piece by piece (to be decoded and uploaded),
//! everything else is kept as the body's "skeleton", with a placeholder
//! string where each `imageData` string stood. The skeleton, small whatever
//! the image, is then parsed and checked like any body: JSON validity, the
//! other fields, and which `imageData` counts (a key given twice counts by
//! its last value).
//!
//! Only the structure needed to find those strings is tracked (nesting,
//! strings, escapes, keys of the top-level object); validating the JSON is
//! left to the skeleton's parser.

use std::ops::Range;

/// What stands in the skeleton where an `imageData` string was streamed:
/// a string no client sends as base64 (a NUL character).
pub const PLACEHOLDER: &str = r#""\u0000""#;

/// What `feed` found in a chunk, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A top-level `imageData` string starts; the skeleton's first `before`
    /// bytes are everything that came before it.
    ImageStart {
        /// Skeleton bytes before the string.
        before: usize,
    },
    /// More of its content, as written (escapes and all), at this range of the chunk.
    ImageContent(Range<usize>),
    /// It ended.
    ImageEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    ImageData,
    Other,
}

/// The splitter's state between chunks.
#[derive(Debug, Default)]
pub struct BodyScan {
    skeleton: Vec<u8>,
    /// Arrays and objects open; 1 inside the top-level object.
    depth: usize,
    /// Whether the top-level value is an object (else nothing is streamed).
    object: bool,
    /// Whether any non-blank byte was seen.
    started: bool,
    in_string: bool,
    escaped: bool,
    /// Inside the top-level object: the next string is a key.
    expect_key: bool,
    /// The raw bytes of the key being read (at depth 1), when short enough to be ours.
    key: Option<Vec<u8>>,
    /// The key whose value comes next.
    value_of: Option<Key>,
    /// Inside an `imageData` string: its content goes out.
    in_image: bool,
}

/// Longest key read: ours are short; a longer one is someone else's.
const MAX_KEY: usize = 64;

impl BodyScan {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next chunk of the body; what it holds of `imageData` strings.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        let mut at = 0;
        while at < chunk.len() {
            if self.in_image {
                at = self.image_run(chunk, at, &mut events);
                continue;
            }
            let byte = chunk[at];
            at += 1;
            self.structure(byte, &mut events);
        }
        events
    }

    /// The skeleton so far (its first `before` bytes at an
    /// [`Event::ImageStart`]: everything before that `imageData` string).
    pub fn skeleton(&self) -> &[u8] {
        &self.skeleton
    }

    /// The skeleton, once the body has ended; `None` when it ended inside
    /// an `imageData` string (the body is not JSON).
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.in_image).then_some(self.skeleton)
    }

    /// Content of an `imageData` string from `at`: up to its closing quote
    /// (found with SIMD, base64 holds no quote or backslash).
    fn image_run(&mut self, chunk: &[u8], at: usize, events: &mut Vec<Event>) -> usize {
        let from = at;
        let mut i = at;
        loop {
            if self.escaped {
                // The byte after a backslash is content, whatever it is.
                self.escaped = false;
                i += 1;
                if i >= chunk.len() {
                    break;
                }
                continue;
            }
            match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                None => {
                    i = chunk.len();
                    break;
                }
                Some(offset) if chunk[i + offset] == b'\\' => {
                    self.escaped = true;
                    i += offset + 1;
                    if i >= chunk.len() {
                        break;
                    }
                }
                Some(offset) => {
                    let end = i + offset;
                    if end > from {
                        events.push(Event::ImageContent(from..end));
                    }
                    events.push(Event::ImageEnd);
                    self.in_image = false;
                    self.in_string = false;
                    self.skeleton.extend_from_slice(PLACEHOLDER.as_bytes());
                    return end + 1;
                }
            }
        }
        if i > from {
            events.push(Event::ImageContent(from..i));
        }
        i
    }

    /// One byte outside an `imageData` string.
    fn structure(&mut self, byte: u8, events: &mut Vec<Event>) {
        if self.in_string {
            self.skeleton.push(byte);
            if self.escaped {
                self.escaped = false;
                self.key_byte(byte);
            } else if byte == b'\\' {
                self.escaped = true;
                self.key_byte(byte);
            } else if byte == b'"' {
                self.in_string = false;
                self.end_key();
            } else {
                self.key_byte(byte);
            }
            return;
        }
        if !self.started && !byte.is_ascii_whitespace() {
            self.started = true;
            self.object = byte == b'{';
        }
        let top = self.object && self.depth == 1;
        match byte {
            b'"' if top && self.value_of == Some(Key::ImageData) => {
                // The value of `imageData`: streamed, not kept.
                self.value_of = None;
                self.in_string = true;
                self.in_image = true;
                events.push(Event::ImageStart {
                    before: self.skeleton.len(),
                });
                return;
            }
            b'"' => {
                self.in_string = true;
                if top && self.expect_key {
                    self.key = Some(Vec::new());
                    self.expect_key = false;
                }
            }
            b':' if top => {}
            b',' if top => {
                self.expect_key = true;
                self.value_of = None;
            }
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth == 1 {
                    self.expect_key = byte == b'{';
                }
                if top {
                    self.value_of = None;
                }
            }
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            _ if top && !byte.is_ascii_whitespace() => self.value_of = None,
            _ => {}
        }
        self.skeleton.push(byte);
    }

    fn key_byte(&mut self, byte: u8) {
        if let Some(key) = &mut self.key {
            if key.len() < MAX_KEY {
                key.push(byte);
            } else {
                self.key = None;
                self.value_of = Some(Key::Other);
            }
        }
    }

    /// A string at the top level closed: if it was a key, whose value comes next.
    fn end_key(&mut self) {
        let Some(raw) = self.key.take() else {
            return;
        };
        let is_image = if raw.contains(&b'\\') {
            let mut quoted = Vec::with_capacity(raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(&raw);
            quoted.push(b'"');
            serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k == "imageData")
        } else {
            raw == b"imageData"
        };
        self.value_of = Some(if is_image { Key::ImageData } else { Key::Other });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `body` fed in pieces of `piece` bytes: the skeleton and each
    /// streamed string's content.
    fn split(body: &str, piece: usize) -> (Option<String>, Vec<String>) {
        let mut scan = BodyScan::new();
        let mut images: Vec<String> = Vec::new();
        for chunk in body.as_bytes().chunks(piece) {
            for event in scan.feed(chunk) {
                match event {
                    Event::ImageStart { .. } => images.push(String::new()),
                    Event::ImageContent(range) => images
                        .last_mut()
                        .unwrap()
                        .push_str(std::str::from_utf8(&chunk[range]).unwrap()),
                    Event::ImageEnd => {}
                }
            }
        }
        let skeleton = scan.finish().map(|s| String::from_utf8(s).unwrap());
        (skeleton, images)
    }

    fn same_at_every_piece_size(body: &str) -> (Option<String>, Vec<String>) {
        let whole = split(body, body.len().max(1));
        for piece in [1, 2, 3, 5, 8, 13] {
            assert_eq!(split(body, piece), whole, "{body} in pieces of {piece}");
        }
        whole
    }

    #[test]
    fn the_image_string_is_streamed_and_replaced_by_a_placeholder() {
        let (skeleton, images) = same_at_every_piece_size(
            r#"{"prompt":"p","imageData":"QUJD\/RA==","metadata":{"a":[1,"x"]}}"#,
        );
        assert_eq!(
            skeleton.unwrap(),
            format!(r#"{{"prompt":"p","imageData":{PLACEHOLDER},"metadata":{{"a":[1,"x"]}}}}"#)
        );
        assert_eq!(images, vec![r"QUJD\/RA==".to_owned()]);
    }

    #[test]
    fn only_top_level_image_strings_are_streamed() {
        for body in [
            r#"{"metadata":{"imageData":"x"},"p":["imageData","y"]}"#,
            r#"["imageData","x"]"#,
            r#"{"imageData":5,"other":"imageData"}"#,
            r#"{"prompt":"imageData","x":"imageData:"}"#,
            r#""imageData""#,
        ] {
            let (skeleton, images) = same_at_every_piece_size(body);
            assert!(images.is_empty(), "{body}");
            assert_eq!(skeleton.as_deref(), Some(body));
        }
    }

    #[test]
    fn escaped_keys_and_quotes_are_read_as_json_reads_them() {
        let (skeleton, images) =
            same_at_every_piece_size(r#"{ "image\u0044ata" : "ab\"c" , "k\"ey":"imageData"}"#);
        assert_eq!(images, vec![r#"ab\"c"#.to_owned()]);
        assert_eq!(
            skeleton.unwrap(),
            format!(r#"{{ "image\u0044ata" : {PLACEHOLDER} , "k\"ey":"imageData"}}"#)
        );
    }

    #[test]
    fn every_image_string_of_a_key_given_twice_is_streamed_in_order() {
        let (skeleton, images) =
            same_at_every_piece_size(r#"{"imageData":"first","imageData":"second"}"#);
        assert_eq!(images, vec!["first".to_owned(), "second".to_owned()]);
        assert_eq!(
            skeleton.unwrap(),
            format!(r#"{{"imageData":{PLACEHOLDER},"imageData":{PLACEHOLDER}}}"#)
        );
    }

    #[test]
    fn a_body_ending_inside_the_image_string_is_not_json() {
        assert_eq!(split(r#"{"imageData":"QUJD"#, 3).0, None);
    }
}
