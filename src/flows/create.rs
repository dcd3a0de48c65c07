//! `POST /api/images` (contract §3 and §7): upload the image, record it in
//! the BDD, and make sure that whatever fails, the image exists once or not
//! at all.
//!
//! - An upload whose answer was lost or came too late may land anyway: the
//!   cleaner removes it (again, until it could no longer land).
//! - A record create whose outcome is unknown (timeout, connection closed
//!   after sending, 5xx) is settled by reading the user's newest records
//!   back: found, it is a success; absent, the object is removed; the read
//!   failing too, the object is kept and the cleaner settles it later.
//! - With an `Idempotency-Key`, a retry replays the first `201`, waits for
//!   a running first request (`409`), settles an undecided one first.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::json;

use crate::clients::bdd::{BddError, CreatedRecord};
use crate::clients::storage::ObjectPath;
use crate::domain::{NewImage, UserId};
use crate::error::{ApiError, StorageOp};
use crate::idempotency::{Claim, Fingerprint, IdempotencyKey, Undecided, IDEMPOTENT_REPLAYED};
use crate::request_id::RequestId;
use crate::response::json_response;
use crate::state::{AppState, UploadSlot};

/// A create's `Idempotency-Key` and the fingerprint of its body.
pub struct Keyed {
    /// The key.
    pub key: IdempotencyKey,
    /// SHA-256 of the body.
    pub fingerprint: Fingerprint,
}

/// A failed attempt: the answer, and the attempt if its record may exist.
struct Failure {
    error: ApiError,
    undecided: Option<Undecided>,
}

impl Failure {
    fn known(error: impl Into<ApiError>) -> Self {
        Self {
            error: error.into(),
            undecided: None,
        }
    }
}

/// Creates `image` for `user`, once, whatever fails.
pub async fn create(
    state: AppState,
    user: UserId,
    image: NewImage,
    keyed: Option<Keyed>,
    request_id: RequestId,
    slot: UploadSlot,
) -> Result<Response, ApiError> {
    let Some(Keyed { key, fingerprint }) = keyed else {
        let body = attempt(&state, &user, &image, &request_id, slot)
            .await
            .map_err(|f| f.error)?;
        return Ok(created(body));
    };
    let claim = state
        .idempotency
        .claim(&user, &key, fingerprint, lease(&state))
        .await
        .map_err(|e| ApiError::CoordinationUnavailable(e.to_string()))?;
    match claim {
        Claim::Replay(body) => {
            drop(slot);
            tracing::info!(key = key.as_str(), "replayed the first answer");
            Ok(replayed(body))
        }
        Claim::InFlight => Err(ApiError::IdempotencyInFlight),
        Claim::Mismatch => Err(ApiError::IdempotencyKeyReused),
        Claim::Settle(earlier) => match settle(&state, &user, &earlier, &request_id).await {
            Ok(Some(record)) => {
                drop(slot);
                let body = created_body(&record, &user, &image, &earlier.url);
                remember(&state, &user, &key, Ok(body)).await
            }
            Ok(None) => {
                let outcome = attempt(&state, &user, &image, &request_id, slot).await;
                remember(&state, &user, &key, outcome).await
            }
            Err(error) => {
                drop(slot);
                let failure = Failure {
                    error: error.into(),
                    undecided: Some(earlier),
                };
                remember(&state, &user, &key, Err(failure)).await
            }
        },
        Claim::Fresh => {
            let outcome = attempt(&state, &user, &image, &request_id, slot).await;
            remember(&state, &user, &key, outcome).await
        }
    }
}

/// How long a claimed key stays in flight at most: the longest a create can
/// take (a slot, the upload, the record, a read-back), with room to spare.
fn lease(state: &AppState) -> Duration {
    let config = &state.config;
    config.upload_slot_wait
        + config.body_read_timeout
        + config.upload_timeout
        + 3 * config.upstream_timeout
        + Duration::from_secs(10)
}

/// Stores what a keyed create came to, and answers it.
async fn remember(
    state: &AppState,
    user: &UserId,
    key: &IdempotencyKey,
    outcome: Result<Bytes, Failure>,
) -> Result<Response, ApiError> {
    let store = &state.idempotency;
    let stored = match &outcome {
        Ok(body) => store.complete(user, key, body.clone()).await,
        Err(Failure {
            undecided: Some(attempt),
            ..
        }) => store.leave_undecided(user, key, attempt.clone()).await,
        Err(Failure {
            undecided: None, ..
        }) => store.release(user, key).await,
    };
    if let Err(e) = stored {
        // The create itself is settled; only its key's state is lost: a
        // retry meets a running key until its lease ends.
        tracing::error!(key = key.as_str(), error = %e, "idempotency outcome not stored");
    }
    outcome.map(created).map_err(|f| f.error)
}

/// One try: upload, record, and on failure leave nothing behind.
async fn attempt(
    state: &AppState,
    user: &UserId,
    image: &NewImage,
    request_id: &RequestId,
    slot: UploadSlot,
) -> Result<Bytes, Failure> {
    let path = ObjectPath::new_image(user, image.image.kind);
    let size = image.image.bytes.len() as u64;
    state.metrics.uploads_in_flight(1.0);
    let uploaded = state
        .storage
        .upload(
            &path,
            image.image.bytes.clone(),
            image.image.kind.content_type(),
            request_id,
        )
        .await;
    state.metrics.uploads_in_flight(-1.0);
    drop(slot);
    if let Err(e) = uploaded {
        if e.outcome_unknown() {
            // It may land after this answer: removed until it could not.
            state
                .cleaner
                .remove_late_upload(&path, state.config.upload_timeout)
                .await;
        }
        return Err(Failure::known(ApiError::Storage(StorageOp::Upload, e)));
    }
    let url = state.storage.public_url(&path);
    let record = match state
        .bdd
        .create_image(user, &image.prompt, &url, &image.metadata, request_id)
        .await
    {
        Ok(record) => record,
        Err(e) if e.outcome_unknown() => read_back(state, user, &path, &url, e, request_id).await?,
        Err(e) => {
            // The record does not exist: the object must not outlive it.
            discard(state, &path, request_id).await;
            return Err(Failure::known(e));
        }
    };
    state.metrics.bytes_stored(size);
    tracing::info!(image_id = %record.id, %path, "image stored");
    Ok(created_body(&record, user, image, &url))
}

/// Settles a record create whose outcome is unknown by reading back.
async fn read_back(
    state: &AppState,
    user: &UserId,
    path: &ObjectPath,
    url: &str,
    create_error: BddError,
    request_id: &RequestId,
) -> Result<CreatedRecord, Failure> {
    let attempt = Undecided {
        path: path.as_str().to_owned(),
        url: url.to_owned(),
    };
    match settle(state, user, &attempt, request_id).await {
        Ok(Some(record)) => {
            tracing::info!(error = %create_error, "record create answered badly but the record exists");
            Ok(record)
        }
        Ok(None) => Err(Failure::known(create_error)),
        Err(read_error) => {
            // The record may exist: keep the object (a dangling record is
            // worse than a late removal) and let the cleaner decide.
            tracing::warn!(%path, error = %read_error, "record outcome unknown; the cleaner will settle it");
            state.cleaner.settle(user, path, url).await;
            Err(Failure {
                error: create_error.into(),
                undecided: Some(attempt),
            })
        }
    }
}

/// Reads back whether a record points at an attempt's URL: `Some` when
/// found; `None` when the BDD says it does not exist (the object is then
/// removed); an error when that cannot be told.
async fn settle(
    state: &AppState,
    user: &UserId,
    attempt: &Undecided,
    request_id: &RequestId,
) -> Result<Option<CreatedRecord>, BddError> {
    match state
        .bdd
        .find_by_url(user, &attempt.url, request_id)
        .await?
    {
        Some(record) => Ok(Some(record)),
        None => {
            let path = ObjectPath::from_stored(attempt.path.clone());
            discard(state, &path, request_id).await;
            Ok(None)
        }
    }
}

/// Removes an object no record points at, or hands it to the cleaner.
async fn discard(state: &AppState, path: &ObjectPath, request_id: &RequestId) {
    if let Err(error) = state.storage.remove(path, request_id).await {
        tracing::warn!(%path, %error, "removal failed; the cleaner will retry");
        state.cleaner.remove(path).await;
    }
}

/// The `201` body of a create, built once: a replay sends these very bytes.
fn created_body(record: &CreatedRecord, user: &UserId, image: &NewImage, url: &str) -> Bytes {
    let body = json!({"success": true, "data": {
        "image_id": record.id,
        "user_id": user.as_str(),
        "prompt": image.prompt,
        "image_url": url,
        "created_at": record.created_at,
        "status": "generated",
        "metadata": image.metadata,
    }});
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

fn created(body: Bytes) -> Response {
    json_response(StatusCode::CREATED, body)
}

fn replayed(body: Bytes) -> Response {
    let mut response = created(body);
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}
