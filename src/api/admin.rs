//! `/api/v1/admin/…`: operating the replica itself.

use axum::extract::State;
use axum::Json;
use serde_json::Value;

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::AsAdmin;
use crate::api::AppState;

/// `GET /api/v1/admin/digest`: per read model, the checkpoint and a hash of its rows (see
/// [`crate::digest`]); replicas at the same checkpoints answer the same bytes.
pub async fn digest(_: AsAdmin, State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let options = state.db.readers.connect_options();
    let digest = crate::digest::digest(
        options.get_filename(),
        &state.read_models,
        state.fleet.sample_retention,
    )
    .await
    .map_err(ApiError::Internal)?;
    Ok(Json(digest))
}
