//! Request bodies, read at the pace contract §9 demands: at most a limit
//! (an announced `Content-Length` over it is refused before the body is
//! polled, so no `100 Continue` is sent), on average at least
//! `MIN_BODY_RATE_BYTES_PER_SEC` once a grace has passed, whole within the
//! body timeout. Creates read theirs chunk by chunk (the image streams on to
//! Storage); other routes collect theirs in one buffer.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use crate::domain::UserId;
use crate::error::ApiError;
use crate::state::{AppState, SlotRefusal, UploadSlot};

/// A request body being read at the contract's pace.
pub struct PacedBody {
    body: Body,
    limit: usize,
    min_rate: u64,
    grace: Duration,
    announced: Option<usize>,
    expects_continue: bool,
    started: Option<Instant>,
    hard_stop: Duration,
    received: usize,
}

impl PacedBody {
    /// The body of `req`, at most `limit` bytes (and `MAX_BODY_BYTES`);
    /// `413` at once when its announced length is over that.
    pub fn admit(req: Request, state: &AppState, limit: usize) -> Result<Self, ApiError> {
        let limit = limit.min(state.config.max_body_bytes);
        let headers = req.headers();
        let announced = content_length(headers);
        if announced.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::PayloadTooLarge);
        }
        let expects_continue = expects_continue(headers);
        Ok(Self {
            body: req.into_body(),
            limit,
            min_rate: state.config.min_body_rate,
            grace: state.config.body_grace,
            announced: announced.map(|n| n as usize),
            expects_continue,
            started: None,
            hard_stop: state.config.body_read_timeout,
            received: 0,
        })
    }

    /// The next chunk, `None` at the end: `408` when the body is late or
    /// too slow, `413` past the limit, `400` when the client broke it off.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ApiError> {
        let started = *self.started.get_or_insert_with(Instant::now);
        loop {
            let hard_stop = started + self.hard_stop;
            let deadline = hard_stop.min(started + self.rate_allows());
            let frame = match tokio::time::timeout_at(deadline.into(), self.body.frame()).await {
                Err(_) if deadline == hard_stop => {
                    return Err(ApiError::BodyTimeout("body not received in time"))
                }
                Err(_) => return Err(ApiError::BodyTimeout("body slower than the minimum rate")),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => {
                    return Err(ApiError::InvalidJson(format!("body unreadable: {e}")))
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                self.received += data.len();
                if self.received > self.limit {
                    return Err(ApiError::PayloadTooLarge);
                }
                if !data.is_empty() {
                    return Ok(Some(data));
                }
            }
        }
    }

    /// The whole body in one buffer sized from `Content-Length`: memory is
    /// the body once, never a list of chunks plus their copy.
    pub async fn collect(mut self) -> Result<Bytes, ApiError> {
        let mut buffer = BytesMut::with_capacity(self.announced.unwrap_or(0).min(self.limit));
        while let Some(chunk) = self.next().await? {
            buffer.extend_from_slice(&chunk);
        }
        Ok(buffer.freeze())
    }

    /// Reads and drops what the client still sends (paced like a read), so
    /// it can read the answer instead of a reset connection; not when it
    /// waits for `100 Continue` before sending.
    pub async fn discard(mut self) {
        if !self.expects_continue {
            while let Ok(Some(_)) = self.next().await {}
        }
    }

    /// How long since the start the bytes received keep the average rate
    /// at or above the minimum (never less than the grace).
    fn rate_allows(&self) -> Duration {
        let at_rate = Duration::from_secs_f64(self.received as f64 / self.min_rate.max(1) as f64);
        self.grace.max(at_rate)
    }
}

/// An upload slot for `user`: `429` beyond their share, `503` when none
/// frees in time; a refused body is discarded (paced) first.
pub async fn upload_slot(
    state: &AppState,
    user: &UserId,
    body: PacedBody,
) -> Result<(UploadSlot, PacedBody), ApiError> {
    match state
        .upload_slots
        .acquire(user, state.config.upload_slot_wait)
        .await
    {
        Ok(slot) => Ok((slot, body)),
        Err(refusal) => {
            body.discard().await;
            Err(match refusal {
                SlotRefusal::UserShare => ApiError::TooManyUploads,
                SlotRefusal::Busy => ApiError::Overloaded,
            })
        }
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}
