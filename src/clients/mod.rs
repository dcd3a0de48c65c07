//! Clients of the services behind this one, over one pooled HTTP client.
//!
//! Each client owns its base URL, its secret and its timeout, classifies
//! failures into its own error enum, counts its calls in the metrics and
//! sends the request id upstream. Clients never log a failure: the caller
//! decides whether it is the answer's (logged once, on the request line) or
//! a background task's.

pub mod bdd;
pub mod storage;

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

/// An upstream's base URL, parsed once: a call's URL is the base with its
/// path and query set, so scheme, host and port (IDNA included) are not
/// parsed again on every call, as building a string for reqwest did.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The base as given (no trailing slash), for the rare base that does not parse.
    text: String,
    parsed: Option<(url::Url, String)>,
}

impl Endpoint {
    /// `base`: scheme, host, port and an optional path prefix, no trailing slash.
    pub fn new(base: &str) -> Self {
        let parsed = url::Url::parse(base)
            .ok()
            .filter(|u| u.query().is_none() && u.fragment().is_none() && !u.cannot_be_a_base())
            .map(|u| {
                let prefix = u.path().trim_end_matches('/').to_owned();
                (u, prefix)
            });
        Self {
            text: base.to_owned(),
            parsed,
        }
    }

    /// A request to the base followed by `path_and_query` (which starts with `/`).
    pub fn request(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path_and_query: &str,
    ) -> reqwest::RequestBuilder {
        match self.url(path_and_query) {
            Some(url) => http.request(method, url),
            // reqwest reports what is wrong with it when the request is sent.
            None => http.request(method, format!("{}{path_and_query}", self.text)),
        }
    }

    fn url(&self, path_and_query: &str) -> Option<url::Url> {
        let (base, prefix) = self.parsed.as_ref()?;
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        let mut url = base.clone();
        if prefix.is_empty() {
            url.set_path(path);
        } else {
            url.set_path(&format!("{prefix}{path}"));
        }
        url.set_query(query);
        Some(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_builds_the_url_a_string_would_have_parsed_to() {
        for (base, path) in [
            (
                "http://127.0.0.1:9002",
                "/api/images?userId=user_1&page=2&limit=10",
            ),
            ("http://localhost:9002", "/api/images/abc"),
            (
                "https://xyz.supabase.co/storage/v1",
                "/object/images/user_1/1_generated_x.png",
            ),
            (
                "http://bdd.internal:9002/prefix",
                "/api/images?userId=u%2B1",
            ),
            ("http://[::1]:9002", "/api/images"),
        ] {
            let endpoint = Endpoint::new(base);
            let expected = url::Url::parse(&format!("{base}{path}")).unwrap();
            assert_eq!(endpoint.url(path).unwrap(), expected, "{base} {path}");
        }
        assert!(Endpoint::new("not a url").url("/x").is_none());
    }
}

/// Builds the one HTTP client shared by every upstream call.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("image-service/", env!("CARGO_PKG_VERSION")))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        // Upstreams are named by configuration, never by what they answer.
        .redirect(reqwest::redirect::Policy::none())
        // Retries are the callers' to decide (a create must not be sent
        // twice behind their back, contract §7); reqwest's default policy
        // also charged a retry budget on every request. No retry allowed
        // at all, so no copy of each request is kept for one either.
        .retry(reqwest::retry::never().max_retries_per_request(0))
        .build()
}

/// What went wrong with an upstream, in the words `/api/ready` shows
/// (the detail goes to the log only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFault {
    /// No connection could be made.
    Unreachable,
    /// No answer in time.
    Timeout,
    /// A 4xx refusal.
    Refused(u16),
    /// A 5xx answer.
    Failed(u16),
    /// An answer that could not be used, or a connection closed mid-answer.
    BadAnswer,
}

impl fmt::Display for UpstreamFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable => f.write_str("unreachable"),
            Self::Timeout => f.write_str("timeout"),
            Self::Refused(status) => write!(f, "refused ({status})"),
            Self::Failed(status) => write!(f, "failed ({status})"),
            Self::BadAnswer => f.write_str("bad answer"),
        }
    }
}

/// How a call failed below HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// No answer within the timeout.
    Timeout,
    /// Could not connect (refused, DNS failure).
    Connect(String),
    /// Connected, but the connection closed or broke before a full answer.
    Closed(String),
}

impl Transport {
    /// Classifies a reqwest error.
    pub fn classify(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            Self::Timeout
        } else if e.is_connect() {
            Self::Connect(error_chain(e))
        } else {
            Self::Closed(error_chain(e))
        }
    }

    /// Whether a retry of an idempotent call may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Closed(_))
    }

    /// The word for `/api/ready`.
    pub fn fault(&self) -> UpstreamFault {
        match self {
            Self::Timeout => UpstreamFault::Timeout,
            Self::Connect(_) => UpstreamFault::Unreachable,
            Self::Closed(_) => UpstreamFault::BadAnswer,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out"),
            Self::Connect(detail) => write!(f, "cannot connect: {detail}"),
            Self::Closed(detail) => write!(f, "connection closed: {detail}"),
        }
    }
}

/// The error and its sources on one line; reqwest hides the useful part in sources.
/// The URL is left out: it may carry user ids in its query.
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" for url ({url})"), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads a response body, refusing more than `limit` bytes.
pub async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, ReadError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Over the limit.
    TooLarge,
    /// The connection failed while reading.
    Transport(reqwest::Error),
}
