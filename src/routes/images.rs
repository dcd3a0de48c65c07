//! `/api/images*` handlers: authenticate, validate, then orchestrate Storage and the BDD.
//!
//! Creates and deletes run as tracked tasks: a client hanging up mid-way must
//! not leave an uploaded object without its record, or half a delete.

use std::future::Future;

use axum::extract::{RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};
use tracing::Instrument;

use crate::clients::storage::{ObjectPath, StorageError};
use crate::domain::{parse_status_body, ImageId, ListQuery, NewImage, NewImageError, UserId};
use crate::error::{ApiError, StorageOp};
use crate::extract::{ApiJson, Caller, IdParam, UploadBody};
use crate::request_id::RequestId;
use crate::response::json_response;
use crate::state::{AppState, UploadSlot};

/// `POST /api/images`: upload to Storage, then record in the BDD.
///
/// An upload slot is taken before the body is read and held until the
/// upload is done: that bounds the memory of concurrent creates.
pub async fn create(
    State(state): State<AppState>,
    Caller(user): Caller,
    request_id: RequestId,
    request: Request,
) -> Result<Response, ApiError> {
    let UploadBody { slot, bytes: body } = UploadBody::admit(&state, &user, request).await?;
    let image = NewImage::from_json(&body, state.config.max_image_bytes).map_err(|e| match e {
        NewImageError::InvalidJson(detail) => ApiError::InvalidJson(detail),
        NewImageError::Invalid(details) => ApiError::Validation(details),
        NewImageError::TooLarge => ApiError::PayloadTooLarge,
    })?;
    // The decoded image is all that is needed from here on.
    drop(body);
    run_to_completion(
        &state,
        create_flow(state.clone(), user, image, request_id, slot),
    )
    .await
}

async fn create_flow(
    state: AppState,
    user: UserId,
    image: NewImage,
    request_id: RequestId,
    slot: UploadSlot,
) -> Result<Response, ApiError> {
    let path = ObjectPath::new_image(&user, image.image.kind);
    let size = image.image.bytes.len() as u64;
    state.metrics.uploads_in_flight(1.0);
    let uploaded = state
        .storage
        .upload(
            &path,
            image.image.bytes,
            image.image.kind.content_type(),
            &request_id,
        )
        .await;
    state.metrics.uploads_in_flight(-1.0);
    drop(slot);
    if let Err(e) = uploaded {
        // Timed out or cut off: the object may have landed anyway. Its name
        // is ours alone, so removing it is safe; do it without delaying the answer.
        if matches!(e, StorageError::Timeout | StorageError::Failed(_)) {
            let (storage, path, request_id) =
                (state.storage.clone(), path.clone(), request_id.clone());
            state.tasks.spawn(
                async move {
                    if let Err(error) = storage.remove(&path, &request_id).await {
                        tracing::warn!(%path, %error, "possible orphan object after a failed upload");
                    }
                }
                .instrument(tracing::Span::current()),
            );
        }
        return Err(ApiError::Storage(StorageOp::Upload, e));
    }
    let url = state.storage.public_url(&path);

    let created = state
        .bdd
        .create_image(&user, &image.prompt, &url, &image.metadata, &request_id)
        .await;
    let record = match created {
        Ok(record) => record,
        Err(e) => {
            // The record does not exist: the object must not outlive it.
            if let Err(remove) = state.storage.remove(&path, &request_id).await {
                tracing::error!(%path, error = %remove, "orphan object left in Storage after a failed create");
            }
            return Err(e.into());
        }
    };
    state.metrics.bytes_stored(size);
    tracing::info!(image_id = %record.id, %path, "image stored");
    Ok(json_response(
        StatusCode::CREATED,
        json!({"success": true, "data": {
            "image_id": record.id,
            "user_id": user.as_str(),
            "prompt": image.prompt,
            "image_url": url,
            "created_at": record.created_at,
            "status": "generated",
            "metadata": image.metadata,
        }}),
    ))
}

/// `GET /api/images`: one page of the caller's images.
pub async fn list(
    State(state): State<AppState>,
    Caller(user): Caller,
    request_id: RequestId,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref()).map_err(ApiError::Validation)?;
    let page = state.bdd.list_images(&user, &query, &request_id).await?;
    if page.dropped > 0 {
        tracing::error!(
            dropped = page.dropped,
            "BDD listed records that are not provably the caller's: dropped"
        );
    }
    let mut body = Vec::with_capacity(page.data.len() + 24);
    body.extend_from_slice(br#"{"success":true,"data":"#);
    body.extend_from_slice(&page.data);
    body.push(b'}');
    Ok(json_response(StatusCode::OK, Bytes::from(body)))
}

/// `GET /api/images/:id`: the BDD's answer as it is, if the caller owns it.
pub async fn get_one(
    State(state): State<AppState>,
    Caller(user): Caller,
    request_id: RequestId,
    IdParam(id): IdParam,
) -> Result<Response, ApiError> {
    let id = id.map_err(|e| ApiError::Validation(vec![e]))?;
    let record = state.bdd.get_image(&id, &user, &request_id).await?;
    Ok(json_response(StatusCode::OK, record.body()))
}

/// `DELETE /api/images/:id`: remove the object, then the record.
pub async fn delete(
    State(state): State<AppState>,
    Caller(user): Caller,
    request_id: RequestId,
    IdParam(id): IdParam,
) -> Result<Response, ApiError> {
    let id = id.map_err(|e| ApiError::Validation(vec![e]))?;
    run_to_completion(&state, delete_flow(state.clone(), id, user, request_id)).await
}

async fn delete_flow(
    state: AppState,
    id: ImageId,
    user: UserId,
    request_id: RequestId,
) -> Result<Response, ApiError> {
    let record = state.bdd.get_image(&id, &user, &request_id).await?;
    match record.image_url() {
        Some(url) => match state.storage.object_of_url(&url, &user) {
            Some(path) => state
                .storage
                .remove(&path, &request_id)
                .await
                .map_err(|e| ApiError::Storage(StorageOp::Removal, e))?,
            None => tracing::warn!(
                url,
                "image URL is not one of ours: nothing removed from Storage"
            ),
        },
        None => tracing::warn!("record has no image URL: nothing removed from Storage"),
    }
    state.bdd.delete_image(&id, &user, &request_id).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({"success": true, "message": "Image supprimée avec succès"}),
    ))
}

/// `PATCH /api/images/:id/status`: the BDD's answer as it is.
///
/// The contract names one upstream call, the PATCH, which carries the owner
/// for the BDD to enforce; its answer passes the owner check before it is shown.
pub async fn update_status(
    State(state): State<AppState>,
    Caller(user): Caller,
    request_id: RequestId,
    IdParam(id): IdParam,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let status = parse_status_body(&body);
    let (id, status) = match (id, status) {
        (Ok(id), Ok(status)) => (id, status),
        (id, status) => {
            return Err(ApiError::Validation(
                [id.err(), status.err()].into_iter().flatten().collect(),
            ))
        }
    };
    let record = state
        .bdd
        .update_status(&id, &user, status, &request_id)
        .await?;
    Ok(json_response(StatusCode::OK, record.body()))
}

/// Runs a multi-step operation as a tracked task that finishes even if the client leaves.
async fn run_to_completion(
    state: &AppState,
    flow: impl Future<Output = Result<Response, ApiError>> + Send + 'static,
) -> Result<Response, ApiError> {
    let task = state.tasks.spawn(flow.instrument(tracing::Span::current()));
    task.await
        .map_err(|e| ApiError::Internal(format!("task failed: {e}")))?
}
