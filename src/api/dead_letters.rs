//! Dead letters: messages that could not be projected, kept whole for inspection.

use axum::extract::State;
use axum::Json;
use base64::Engine;
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{AsAdmin, Params};
use crate::api::AppState;
use crate::bus::streams;
use crate::window::format_unix_ms;

/// A stored dead letter.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    /// Row id.
    pub id: i64,
    /// Stream.
    pub stream: String,
    /// Stream sequence.
    pub seq: i64,
    /// Subject.
    pub subject: String,
    /// Why it could not be projected.
    pub reason: String,
    /// The message as received (redacted for ALERTS), base64.
    pub payload_base64: String,
    /// Publish time.
    pub received_at: String,
}

/// `/api/v1/dead-letters`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetters {
    /// Newest first.
    pub items: Vec<DeadLetter>,
    /// All matching.
    pub total: i64,
}

/// `GET /api/v1/dead-letters?stream=&limit=`: newest first, with the total for the filter.
#[utoipa::path(get, path = "/dead-letters", operation_id = "get_dead_letters", tag = "admin", security(("bearer" = ["admin"])), params(("stream" = Option<String>, Query, description = "one stream's letters (TOPOLOGY, HEARTBEATS, ALERTS, RESULTS, COMMANDS, WORKITEMS)", pattern = "^(TOPOLOGY|HEARTBEATS|ALERTS|RESULTS|COMMANDS|WORKITEMS)$"), ("limit" = Option<i64>, Query, description = "rows, 1–500 (default 50)", minimum = 1, maximum = 500), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "OK", body = DeadLetters), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low, or the token is scoped to some projects or topologies (admin routes span the whole fleet)", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn list(
    _: AsAdmin,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<Json<DeadLetters>> {
    let stream = params.get("stream")?;
    if stream.is_some_and(|s| streams::by_name(s).is_none()) {
        let names: Vec<&str> = streams::ALL.iter().map(|s| s.name).collect();
        return Err(ApiError::invalid(
            "stream",
            format!("one of {}", names.join(", ")),
        ));
    }
    let limit = params.int("limit", 1, 500, 50)?;
    let rows = sqlx::query(
        "SELECT id, stream, seq, subject, reason, payload, received_at FROM dead_letters \
         WHERE ?1 IS NULL OR stream = ?1 ORDER BY id DESC LIMIT ?2",
    )
    .bind(stream)
    .bind(limit)
    .fetch_all(&state.db.readers)
    .await?;
    let total: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE ?1 IS NULL OR stream = ?1")
            .bind(stream)
            .fetch_one(&state.db.readers)
            .await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let items = rows
        .iter()
        .map(|r| DeadLetter {
            id: r.get("id"),
            stream: r.get("stream"),
            seq: r.get("seq"),
            subject: r.get("subject"),
            reason: r.get("reason"),
            payload_base64: b64.encode(r.get::<Vec<u8>, _>("payload")),
            received_at: format_unix_ms(r.get("received_at")),
        })
        .collect();
    Ok(Json(DeadLetters { items, total }))
}
