//! `POST /api/images` (contract §3 and §7): upload the image, record it in
//! the BDD, and make sure that whatever fails, the image exists once or not
//! at all.
//!
//! - The body streams: `imageData` is decoded as it arrives and its bytes go
//!   on to Storage at once (chunked), so a create holds a few blocks of its
//!   image, never all of it, and the upload overlaps the receiving. The
//!   rest of the body is checked when it has all arrived; a failure then
//!   removes the object. Fields that come before `imageData` are checked
//!   before anything is uploaded.
//! - An upload whose answer was lost, came too late, or was cut off may land
//!   anyway: the cleaner removes it (again, until it could no longer land).
//! - A record create whose outcome is unknown (timeout, connection closed
//!   after sending, 5xx) is settled by reading the user's newest records
//!   back: found, it is a success; absent, the object is removed; the read
//!   failing too, the object is kept and the cleaner settles it later.
//! - With an `Idempotency-Key`, a retry replays the first `201` (`422` for
//!   another body), waits for a running first request (`409`), and settles
//!   an undecided one first. The body's fingerprint is computed as it passes.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::body::{upload_slot, PacedBody};
use crate::clients::bdd::{BddError, CreatedRecord};
use crate::clients::storage::{ObjectPath, StorageError};
use crate::domain::body_scan::{BodyScan, Event, PLACEHOLDER};
use crate::domain::image_stream::{ImageStream, StreamOutcome};
use crate::domain::{
    check_create, leading_fields_valid, CreateText, ImageCheck, ImageKind, NewImage, NewImageError,
    UserId,
};
use crate::error::{ApiError, StorageOp};
use crate::extract::CreateRequest;
use crate::idempotency::{
    Claim, Fingerprint, Hasher, IdempotencyKey, Undecided, IDEMPOTENT_REPLAYED,
};
use crate::request_id::RequestId;
use crate::response::json_response;
use crate::state::{AppState, UploadSlot};

/// Decoded bytes sent to Storage at once, at least (a body piece's worth:
/// up to 48 KiB from hyper's 64 KiB reads).
const UPLOAD_CHUNK: usize = 32 * 1024;
/// Decoded bytes held before an upload starts: an image smaller than this
/// is uploaded only once the whole body has passed its checks, so a refused
/// small create never reaches Storage; a larger one streams from here on.
const UPLOAD_START: usize = 64 * 1024;
/// Decoded chunks not yet written to Storage's socket, at most: waiting
/// for the upload, or in its connection's write buffer, which alone takes
/// up to 16 chunks (400 KiB) when Storage reads slowly. Each chunk holds a
/// permit until the connection has written it; the receiving waits beyond
/// (TCP back-pressure on the client), so a create holds four chunks of its
/// image at most (32 to 48 KiB each), whatever its size and Storage's pace.
const UPLOAD_IN_FLIGHT: usize = 4;

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

/// Creates the image of `request` for `user`, once, whatever fails.
pub async fn create(
    state: AppState,
    user: UserId,
    request: CreateRequest,
    request_id: RequestId,
) -> Result<Response, ApiError> {
    let CreateRequest { key, body } = request;
    let Some(key) = key else {
        let (slot, body) = upload_slot(&state, &user, body).await?;
        let created = streamed(&state, &user, body, slot, None, &request_id).await;
        return created.map(created_response).map_err(|f| f.error);
    };
    let store = state.idempotency.clone();
    let claim = store
        .claim(&user, &key, lease(&state))
        .await
        .map_err(|e| ApiError::CoordinationUnavailable(e.to_string()))?;
    match claim {
        Claim::InFlight => {
            body.discard().await;
            Err(ApiError::IdempotencyInFlight)
        }
        Claim::Done {
            fingerprint,
            body: answer,
        } => {
            // No upload, no slot: the body only has to be the same.
            if fingerprint_of(body).await? != fingerprint {
                return Err(ApiError::IdempotencyKeyReused);
            }
            tracing::info!(key = key.as_str(), "replayed the first answer");
            Ok(replayed(answer))
        }
        Claim::Settle {
            fingerprint,
            attempt,
        } => {
            let put_back = |e: ApiError| {
                let (store, user, key, attempt) =
                    (store.clone(), user.clone(), key.clone(), attempt.clone());
                async move {
                    let _ = store
                        .leave_undecided(&user, &key, fingerprint, attempt)
                        .await;
                    e
                }
            };
            let (slot, body) = match upload_slot(&state, &user, body).await {
                Ok(admitted) => admitted,
                Err(e) => return Err(put_back(e).await),
            };
            let bytes = match body.collect().await {
                Ok(bytes) => bytes,
                Err(e) => return Err(put_back(e).await),
            };
            if Fingerprint::of(&bytes) != fingerprint {
                return Err(put_back(ApiError::IdempotencyKeyReused).await);
            }
            let outcome = retry_undecided(&state, &user, &bytes, attempt, slot, &request_id).await;
            remember(&state, &user, &key, fingerprint, outcome).await
        }
        Claim::Fresh => {
            let (slot, body) = match upload_slot(&state, &user, body).await {
                Ok(admitted) => admitted,
                Err(e) => {
                    let _ = store.release(&user, &key).await;
                    return Err(e);
                }
            };
            let mut hasher = Hasher::new();
            let outcome = streamed(&state, &user, body, slot, Some(&mut hasher), &request_id).await;
            remember(&state, &user, &key, hasher.finish(), outcome).await
        }
    }
}

/// How long a claimed key stays in flight at most: the longest a create can
/// take (a slot, the body, the upload, the record, a read-back), with room to spare.
fn lease(state: &AppState) -> Duration {
    let config = &state.config;
    config.upload_slot_wait
        + config.body_read_timeout
        + config.upload_timeout
        + 3 * config.upstream_timeout
        + Duration::from_secs(10)
}

/// Reads a body only to fingerprint it.
async fn fingerprint_of(mut body: PacedBody) -> Result<Fingerprint, ApiError> {
    let mut hasher = Hasher::new();
    while let Some(chunk) = body.next().await? {
        hasher.update(&chunk);
    }
    Ok(hasher.finish())
}

/// Stores what a keyed create came to, and answers it.
async fn remember(
    state: &AppState,
    user: &UserId,
    key: &IdempotencyKey,
    fingerprint: Fingerprint,
    outcome: Result<Bytes, Failure>,
) -> Result<Response, ApiError> {
    let store = &state.idempotency;
    let stored = match &outcome {
        Ok(body) => store.complete(user, key, fingerprint, body.clone()).await,
        Err(Failure {
            undecided: Some(attempt),
            ..
        }) => {
            store
                .leave_undecided(user, key, fingerprint, attempt.clone())
                .await
        }
        Err(Failure {
            undecided: None, ..
        }) => store.release(user, key).await,
    };
    if let Err(e) = stored {
        // The create itself is settled; only its key's state is lost: a
        // retry meets a running key until its lease ends.
        tracing::error!(key = key.as_str(), error = %e, "idempotency outcome not stored");
    }
    outcome.map(created_response).map_err(|f| f.error)
}

/// A retry of an attempt whose outcome was unknown (its body already
/// checked to be the same): its record if it exists, else a fresh create.
async fn retry_undecided(
    state: &AppState,
    user: &UserId,
    body: &[u8],
    earlier: Undecided,
    slot: UploadSlot,
    request_id: &RequestId,
) -> Result<Bytes, Failure> {
    let image = NewImage::from_json(body, state.config.max_image_bytes)
        .map_err(|e| Failure::known(validation_error(e)))?;
    let text = CreateText {
        prompt: image.prompt.clone(),
        metadata: image.metadata.clone(),
    };
    match settle(state, user, &earlier, request_id).await {
        Ok(Some(record)) => Ok(created_body(&record, user, &text, &earlier.url)),
        Ok(None) => {
            let path = ObjectPath::new_image(user, image.image.kind);
            let size = image.image.bytes.len() as u64;
            state.metrics.uploads_in_flight(1.0);
            let uploaded = state
                .storage
                .upload(
                    &path,
                    image.image.bytes,
                    image.image.kind.content_type(),
                    request_id,
                )
                .await;
            state.metrics.uploads_in_flight(-1.0);
            drop(slot);
            if let Err(e) = uploaded {
                return Err(upload_failed(state, &path, e).await);
            }
            record(state, user, &text, &path, size, request_id).await
        }
        Err(error) => Err(Failure {
            error: error.into(),
            undecided: Some(earlier),
        }),
    }
}

/// The answer to an upload that failed; one that may land later is queued
/// for removal.
async fn upload_failed(state: &AppState, path: &ObjectPath, e: StorageError) -> Failure {
    if e.outcome_unknown() {
        // It may land after this answer: removed until it could not.
        state
            .cleaner
            .remove_late_upload(path, state.config.upload_timeout)
            .await;
    }
    Failure::known(ApiError::Storage(StorageOp::Upload, e))
}

/// The `400`, `413` or `400 JSON invalide` of a body that fails its checks.
fn validation_error(e: NewImageError) -> ApiError {
    match e {
        NewImageError::InvalidJson(detail) => ApiError::InvalidJson(detail),
        NewImageError::Invalid(details) => ApiError::Validation(details),
        NewImageError::TooLarge => ApiError::PayloadTooLarge,
    }
}

/// An upload fed as the image is decoded.
struct Upload {
    path: ObjectPath,
    chunks: Option<mpsc::Sender<Result<Bytes, std::io::Error>>>,
    /// [`UPLOAD_IN_FLIGHT`] permits, one per chunk not yet written.
    in_flight: Arc<Semaphore>,
    task: JoinHandle<Result<(), StorageError>>,
}

/// A chunk on its way to Storage, holding its in-flight permit until the
/// upload's connection has written and dropped it.
struct Unwritten {
    chunk: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Unwritten {
    fn as_ref(&self) -> &[u8] {
        &self.chunk
    }
}

impl Upload {
    fn start(state: &AppState, user: &UserId, kind: ImageKind, request_id: &RequestId) -> Self {
        let path = ObjectPath::new_image(user, kind);
        let (sender, receiver) = mpsc::channel(UPLOAD_IN_FLIGHT);
        let (storage, target, request_id) =
            (state.storage.clone(), path.clone(), request_id.clone());
        // The whole call, the body's own time included.
        let timeout = state.config.body_read_timeout + state.config.upload_timeout;
        let metrics = state.metrics.clone();
        let task = tokio::spawn(async move {
            metrics.uploads_in_flight(1.0);
            let result = storage
                .upload_stream(&target, kind.content_type(), receiver, timeout, &request_id)
                .await;
            metrics.uploads_in_flight(-1.0);
            result
        });
        Self {
            path,
            chunks: Some(sender),
            in_flight: Arc::new(Semaphore::new(UPLOAD_IN_FLIGHT)),
            task,
        }
    }

    /// Sends decoded bytes; if Storage already gave up, the rest is dropped
    /// (its answer says why).
    async fn send(&mut self, chunk: Bytes) {
        let Some(chunks) = &self.chunks else {
            return;
        };
        // Never closed. A failed upload drops what it holds, which frees
        // the permits; a stuck one ends at its timeout.
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            return;
        };
        let chunk = Bytes::from_owner(Unwritten {
            chunk,
            _permit: permit,
        });
        if chunks.send(Ok(chunk)).await.is_err() {
            self.chunks = None;
        }
    }

    /// Cuts the upload off; whatever landed is removed.
    async fn abort(mut self, state: &AppState) {
        if let Some(chunks) = self.chunks.take() {
            let cut = std::io::Error::new(std::io::ErrorKind::Interrupted, "create refused");
            let _ = chunks.try_send(Err(cut));
        }
        state
            .cleaner
            .remove_late_upload(&self.path, state.config.upload_timeout)
            .await;
    }

    /// Ends the body and waits for Storage's answer, at most the upload timeout.
    async fn finish(mut self, state: &AppState) -> Result<ObjectPath, Failure> {
        drop(self.chunks.take());
        let result = match tokio::time::timeout(state.config.upload_timeout, &mut self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(joined)) => Err(StorageError::Failed(format!("upload task: {joined}"))),
            Err(_) => {
                self.task.abort();
                Err(StorageError::Timeout)
            }
        };
        match result {
            Ok(()) => Ok(self.path),
            Err(e) => Err(upload_failed(state, &self.path, e).await),
        }
    }
}

/// The image being received, decoded and uploaded.
struct Receiving {
    decoder: ImageStream,
    /// Whether the fields before it passed their checks (else nothing is uploaded).
    may_upload: bool,
    upload: Option<Upload>,
}

/// Reads a create's body as it arrives, uploading its image while it is
/// decoded, then records it: the `201` body.
async fn streamed(
    state: &AppState,
    user: &UserId,
    mut body: PacedBody,
    slot: UploadSlot,
    mut hasher: Option<&mut Hasher>,
    request_id: &RequestId,
) -> Result<Bytes, Failure> {
    let max_image = state.config.max_image_bytes;
    let mut scan = BodyScan::new();
    let mut current: Option<Receiving> = None;
    // The last `imageData` string seen, and its bytes: a key given twice
    // counts by its last value.
    let mut last: Option<(StreamOutcome, Kept)> = None;
    let received = loop {
        let chunk = match body.next().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if let Some(hasher) = hasher.as_deref_mut() {
            hasher.update(&chunk);
        }
        let mut fed = false;
        for event in scan.feed(&chunk) {
            match event {
                Event::ImageStart { before } => {
                    if let Some((_, kept)) = last.take() {
                        kept.drop_it(state).await;
                    }
                    let leading = &scan.skeleton()[..before];
                    current = Some(Receiving {
                        decoder: ImageStream::new(max_image),
                        may_upload: leading_fields_valid(leading, PLACEHOLDER),
                        upload: None,
                    });
                }
                Event::ImageContent(range) => {
                    if let Some(receiving) = current.as_mut() {
                        receiving.decoder.feed(&chunk[range]);
                        fed = true;
                    }
                }
                Event::ImageEnd => {
                    if let Some(receiving) = current.take() {
                        last = Some(end_of_image(state, receiving).await);
                    }
                }
            }
        }
        // Gone before the upload is waited on: hyper then reads the next
        // piece into the same buffer instead of a new one.
        drop(chunk);
        if let (Some(receiving), true) = (current.as_mut(), fed) {
            pump(state, user, receiving, request_id).await;
        }
    };
    let (outcome, kept) = match last {
        Some((outcome, kept)) => (Some(outcome), kept),
        None => (None, Kept::Nothing),
    };
    if let Some(receiving) = current.take() {
        // The body ended inside the string: it is not JSON.
        if let Some(upload) = receiving.upload {
            upload.abort(state).await;
        }
    }
    if let Err(e) = received {
        kept.drop_it(state).await;
        return Err(Failure::known(e));
    }
    let checked = match scan.finish() {
        None => Err(NewImageError::InvalidJson(
            "body ends inside imageData".into(),
        )),
        Some(skeleton) => check_create(&skeleton, |raw| match (raw, outcome) {
            (Some(raw), Some(outcome)) if raw.get() == PLACEHOLDER => match outcome {
                StreamOutcome::Image { kind, size } => ImageCheck::Accepted((kind, size)),
                StreamOutcome::Empty => ImageCheck::Required,
                StreamOutcome::Refused(e) => ImageCheck::Refused(e),
                StreamOutcome::InvalidJson => ImageCheck::InvalidJson,
            },
            // Any string was streamed: what is left is absent or not a string.
            _ => ImageCheck::Required,
        }),
    };
    let (text, (kind, size)) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            kept.drop_it(state).await;
            return Err(Failure::known(validation_error(e)));
        }
    };
    let upload = match kept {
        Kept::Uploading(upload) => upload,
        Kept::Held(bytes) => {
            let mut upload = Upload::start(state, user, kind, request_id);
            upload.send(bytes).await;
            upload
        }
        Kept::Nothing => {
            return Err(Failure::known(ApiError::Internal(
                "an accepted image was not kept".into(),
            )))
        }
    };
    let path = upload.finish(state).await?;
    drop(slot);
    record(state, user, &text, &path, size, request_id).await
}

/// Starts the upload once the image's format is known (and the fields
/// before it are fine), sends what is decoded, stops it when the image
/// turns out unacceptable.
async fn pump(state: &AppState, user: &UserId, receiving: &mut Receiving, request_id: &RequestId) {
    let decoder = &mut receiving.decoder;
    if !decoder.acceptable() || !receiving.may_upload {
        if let Some(upload) = receiving.upload.take() {
            upload.abort(state).await;
        }
        // Nothing decoded is kept.
        let _ = decoder.take(0);
        return;
    }
    if let (None, Some(Some(kind))) = (&receiving.upload, decoder.kind()) {
        if decoder.ready() >= UPLOAD_START {
            receiving.upload = Some(Upload::start(state, user, kind, request_id));
        }
    }
    if let Some(upload) = receiving.upload.as_mut() {
        while let Some(chunk) = decoder.take(UPLOAD_CHUNK) {
            upload.send(chunk).await;
        }
    }
}

/// What became of an `imageData` string's bytes.
enum Kept {
    /// Uploading: the rest was sent.
    Uploading(Upload),
    /// A small image, held until the body has passed its checks.
    Held(Bytes),
    /// Nothing worth keeping.
    Nothing,
}

impl Kept {
    async fn drop_it(self, state: &AppState) {
        if let Self::Uploading(upload) = self {
            upload.abort(state).await;
        }
    }
}

/// The `imageData` string ended: its outcome, and its bytes if it is an
/// image worth keeping so far.
async fn end_of_image(state: &AppState, receiving: Receiving) -> (StreamOutcome, Kept) {
    let Receiving {
        decoder,
        may_upload,
        upload,
    } = receiving;
    let (outcome, rest) = decoder.finish();
    match (outcome, upload) {
        (StreamOutcome::Image { .. }, Some(mut upload)) if may_upload => {
            if let Some(rest) = rest {
                upload.send(rest).await;
            }
            (outcome, Kept::Uploading(upload))
        }
        (StreamOutcome::Image { .. }, None) if may_upload => {
            (outcome, Kept::Held(rest.unwrap_or_default()))
        }
        (_, upload) => {
            if let Some(upload) = upload {
                upload.abort(state).await;
            }
            (outcome, Kept::Nothing)
        }
    }
}

/// Records an uploaded image in the BDD; on failure nothing is left behind.
async fn record(
    state: &AppState,
    user: &UserId,
    text: &CreateText,
    path: &ObjectPath,
    size: u64,
    request_id: &RequestId,
) -> Result<Bytes, Failure> {
    let url = state.storage.public_url(path);
    let record = match state
        .bdd
        .create_image(user, &text.prompt, &url, &text.metadata, request_id)
        .await
    {
        Ok(record) => record,
        Err(e) if e.outcome_unknown() => read_back(state, user, path, &url, e, request_id).await?,
        Err(e) => {
            // The record does not exist: the object must not outlive it.
            discard(state, path, request_id).await;
            return Err(Failure::known(e));
        }
    };
    state.metrics.bytes_stored(size);
    // A string id as its text, not as JSON (no quotes inside the log field).
    let id = record
        .id
        .as_str()
        .map_or_else(|| record.id.to_string(), str::to_owned);
    tracing::info!(image_id = %id, object = %path, "image stored");
    Ok(created_body(&record, user, text, &url))
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
            tracing::warn!(object = %path, error = %read_error, "record outcome unknown; the cleaner will settle it");
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
        tracing::warn!(object = %path, %error, "removal failed; the cleaner will retry");
        state.cleaner.remove(path).await;
    }
}

/// The `201` body of a create, built once: a replay sends these very bytes.
fn created_body(record: &CreatedRecord, user: &UserId, text: &CreateText, url: &str) -> Bytes {
    let body = json!({"success": true, "data": {
        "image_id": record.id,
        "user_id": user.as_str(),
        "prompt": text.prompt,
        "image_url": url,
        "created_at": record.created_at,
        "status": "generated",
        "metadata": text.metadata,
    }});
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

fn created_response(body: Bytes) -> Response {
    json_response(StatusCode::CREATED, body)
}

fn replayed(body: Bytes) -> Response {
    let mut response = created_response(body);
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}
