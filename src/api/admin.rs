//! `/api/v1/admin/…`: operating the replica itself.

use axum::extract::State;
use axum::Json;

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::AsAdmin;
use crate::api::AppState;

/// `GET /api/v1/admin/digest`: per read model, the checkpoint and a hash of its rows (see
/// [`crate::digest`]); replicas at the same checkpoints answer the same bytes.
#[utoipa::path(get, path = "/admin/digest", operation_id = "get_admin_digest", tag = "admin", security(("bearer" = ["admin"])), params(("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "OK", body = crate::digest::Digest), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low, or the token is scoped to some projects or topologies (admin routes span the whole fleet)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn digest(
    _: AsAdmin,
    State(state): State<AppState>,
) -> ApiResult<Json<crate::digest::Digest>> {
    let options = state.db.readers.connect_options();
    let digest = crate::digest::digest(options.get_filename(), &state.read_models, state.retention)
        .await
        .map_err(ApiError::Internal)?;
    Ok(Json(digest))
}
