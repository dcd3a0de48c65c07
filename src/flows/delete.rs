//! `DELETE /api/images/:id`: the object, then the record (contract §3).
//!
//! If the removal fails the record is kept and the answer is an error, so
//! the client can retry; if the record delete fails, a retry converges (the
//! removal then finds nothing).

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use crate::domain::{ImageId, UserId};
use crate::error::{ApiError, StorageOp};
use crate::request_id::RequestId;
use crate::response::json_response;
use crate::state::AppState;

/// Removes the caller's image `id`: its object (if one of ours), then its record.
pub async fn delete(
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
