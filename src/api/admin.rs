//! `/api/v1/admin/…`: operating the replica itself.

use axum::extract::State;
use axum::Json;
use serde_json::Value;

use crate::api::error::ApiResult;
use crate::api::extract::AsAdmin;
use crate::api::AppState;

/// `GET /api/v1/admin/digest`: per read model, the checkpoint and a hash of its rows (see
/// [`crate::digest`]); replicas at the same checkpoints answer the same bytes.
pub async fn digest(_: AsAdmin, State(state): State<AppState>) -> ApiResult<Json<Value>> {
    // One read transaction: the rows and the checkpoints belong together.
    let mut tx = state.db.readers.begin().await?;
    let digest =
        crate::digest::digest(&mut tx, &state.read_models, state.fleet.sample_retention).await?;
    tx.commit().await?;
    Ok(Json(digest))
}
