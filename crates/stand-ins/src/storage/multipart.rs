//! Just enough `multipart/form-data` for Storage uploads: browsers and
//! storage-js send a `File`/`Blob` as a form (`cacheControl`, `metadata`,
//! then the file), not as a raw body.

use bytes::Bytes;

/// One part of a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    /// The `name` of its `Content-Disposition`.
    pub name: String,
    /// Set for a file part (`filename=` present, even empty).
    pub filename: Option<String>,
    /// Its own `Content-Type`, if given.
    pub content_type: Option<String>,
    /// Its bytes.
    pub body: Bytes,
}

/// The boundary of a `multipart/form-data` content type.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// The parts of `body`, or `None` when it is not a well-formed form.
pub(crate) fn parse(body: &Bytes, boundary: &str) -> Option<Vec<Part>> {
    let open = format!("--{boundary}");
    let between = format!("\r\n--{boundary}");
    let mut at = find(body, open.as_bytes(), 0)? + open.len();
    let mut parts = Vec::new();
    loop {
        if body.get(at..at + 2) == Some(b"--") {
            return Some(parts);
        }
        at = find(body, b"\r\n", at)? + 2;
        let head_end = find(body, b"\r\n\r\n", at)?;
        let head = std::str::from_utf8(&body[at..head_end]).ok()?;
        let start = head_end + 4;
        let end = find(body, between.as_bytes(), start)?;
        let mut part = Part {
            name: String::new(),
            filename: None,
            content_type: None,
            body: body.slice(start..end),
        };
        for line in head.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("content-type") {
                part.content_type = Some(value.trim().to_owned());
            } else if name.trim().eq_ignore_ascii_case("content-disposition") {
                for param in value.split(';').skip(1) {
                    let Some((k, v)) = param.split_once('=') else {
                        continue;
                    };
                    let v = v.trim().trim_matches('"').to_owned();
                    match k.trim() {
                        "name" => part.name = v,
                        "filename" => part.filename = Some(v),
                        _ => {}
                    }
                }
            }
        }
        parts.push(part);
        at = end + between.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_js_form_yields_its_fields_and_file() {
        let ct = "multipart/form-data; boundary=----x1";
        let body = Bytes::from_static(
            b"------x1\r\nContent-Disposition: form-data; name=\"cacheControl\"\r\n\r\n3600\r\n\
------x1\r\nContent-Disposition: form-data; name=\"\"; filename=\"blob\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--\r\n------x1--\r\n",
        );
        let parts = parse(&body, &boundary(ct).unwrap()).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "cacheControl");
        assert_eq!(&parts[0].body[..], b"3600");
        assert_eq!(parts[1].filename.as_deref(), Some("blob"));
        assert_eq!(parts[1].content_type.as_deref(), Some("image/png"));
        assert_eq!(&parts[1].body[..], b"\x89PNG\r\n--");
    }

    #[test]
    fn a_body_that_is_not_a_form_is_refused() {
        assert_eq!(boundary("image/png"), None);
        assert_eq!(parse(&Bytes::from_static(b"hello"), "x"), None);
    }
}
