//! Topologies: the read model, and enqueueing mutations onto the bus.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use utoipa::ToSchema;

use crate::api::consistency::{written, Written};
use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{
    body_bytes, idempotency_key, parse_json, AsOperator, AsViewer, Authorized, Params, RawBody,
};
use crate::api::AppState;
use crate::bus::publish::Outgoing;
use crate::bus::{envelope, streams, subjects};
use crate::projections::topology::STATES;
use crate::token::Claims;
use crate::window::{format_unix_ms, now_ms};

/// Largest mutation request body.
pub const MAX_MUTATION_BYTES: usize = 64 * 1024;
/// Namespace of mutation ids derived from idempotency keys.
const IDEMPOTENCY_NS: uuid::Uuid = uuid::uuid!("3a0e5c4e-6a57-4f4e-9a43-5b8f2d1c7e90");

const MUTATION_COLUMNS: &str = "topology_id, mutation_id, op, spec, actor, state, error, \
                                enqueued_at, updated_at, seq";

/// A mutation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mutation {
    /// Its topology.
    pub topology_id: String,
    /// Id, unique within the topology.
    pub mutation_id: String,
    /// Operation; null when the mutator reported a mutation it was never sent.
    pub op: Option<String>,
    /// Specification as it was sent (any JSON object); null as `op`.
    #[schema(value_type = Option<Object>)]
    pub spec: Option<Box<RawValue>>,
    /// Who asked; null as `op`.
    pub actor: Option<String>,
    /// `enqueued`, `applying`, `applied` or `failed`.
    pub state: String,
    /// Why it failed; null unless `failed`.
    pub error: Option<String>,
    /// When enqueued; null as `op`.
    pub enqueued_at: Option<String>,
    /// Last change.
    pub updated_at: String,
    /// Last TOPOLOGY sequence applied to it.
    pub seq: i64,
}

impl Mutation {
    /// A mutation from its row (`MUTATION_COLUMNS`).
    pub fn from_row(r: &SqliteRow) -> Self {
        Self {
            topology_id: r.get("topology_id"),
            mutation_id: r.get("mutation_id"),
            op: r.get("op"),
            spec: r
                .get::<Option<String>, _>("spec")
                .and_then(|s| RawValue::from_string(s).ok()),
            actor: r.get("actor"),
            state: r.get("state"),
            error: r.get("error"),
            enqueued_at: r.get::<Option<i64>, _>("enqueued_at").map(format_unix_ms),
            updated_at: format_unix_ms(r.get("updated_at")),
            seq: r.get("seq"),
        }
    }
}

/// A topology's own row.
#[derive(Debug)]
pub struct TopologyHead {
    /// Topology id.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// Latest status.
    pub status: Option<String>,
    /// Last event time, Unix ms.
    pub updated_at: i64,
    /// Last TOPOLOGY sequence applied to it.
    pub last_seq: i64,
}

/// A topology in the list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopologyRow {
    /// Topology id.
    pub id: String,
    /// Display name; null until an event names it.
    pub name: Option<String>,
    /// Latest status; null until an event reports one.
    pub status: Option<String>,
    /// Last event time.
    pub updated_at: String,
    /// Last TOPOLOGY sequence applied to it.
    pub last_seq: i64,
    /// Mutations enqueued or applying.
    pub in_flight: i64,
}

/// `/api/v1/topologies`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Topologies {
    /// By id.
    pub items: Vec<TopologyRow>,
}

/// `/api/v1/topologies/{tid}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Topology id.
    pub id: String,
    /// Display name; null until an event names it.
    pub name: Option<String>,
    /// Latest status; null until an event reports one.
    pub status: Option<String>,
    /// Last event time.
    pub updated_at: String,
    /// Last TOPOLOGY sequence applied to it.
    pub last_seq: i64,
    /// Mutations enqueued or applying, oldest first.
    pub in_flight: Vec<Mutation>,
}

/// `/api/v1/topologies/{tid}/mutations`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mutations {
    /// Newest first.
    pub items: Vec<Mutation>,
}

/// Body of `POST …/mutations`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest<'a> {
    /// Operation (a subject token).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub op: String,
    /// Any JSON object.
    #[serde(borrow)]
    #[schema(value_type = Object)]
    pub spec: &'a RawValue,
}

/// Answer of `POST …/mutations` (202).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Enqueued {
    /// The new (or, for a repeated Idempotency-Key, the original) mutation's id.
    pub mutation_id: String,
    /// Its TOPOLOGY sequence.
    pub seq: u64,
    /// True when the Idempotency-Key (or the bus's duplicate window) had seen it; absent
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub duplicate: Option<bool>,
    /// With `?wait=true`: whether this replica projected it within --mutation-wait-ms;
    /// absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub projected: Option<bool>,
}

/// A topology's own row; `None` when it does not exist.
pub async fn topology_head(
    conn: &mut SqliteConnection,
    tid: &str,
) -> sqlx::Result<Option<TopologyHead>> {
    let row =
        sqlx::query("SELECT id, name, status, updated_at, last_seq FROM topologies WHERE id = ?")
            .bind(tid)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|r| TopologyHead {
        id: r.get("id"),
        name: r.get("name"),
        status: r.get("status"),
        updated_at: r.get("updated_at"),
        last_seq: r.get("last_seq"),
    }))
}

/// In-flight (enqueued or applying) mutations of a topology, oldest first.
pub async fn in_flight(conn: &mut SqliteConnection, tid: &str) -> sqlx::Result<Vec<Mutation>> {
    let rows = sqlx::query(&format!(
        "SELECT {MUTATION_COLUMNS} FROM topology_mutations \
         WHERE topology_id = ? AND state IN ('enqueued', 'applying') ORDER BY seq"
    ))
    .bind(tid)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(Mutation::from_row).collect())
}

fn topology_id(tid: &str) -> ApiResult<()> {
    if subjects::is_token(tid) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "topology (ids are {})",
            subjects::TOKEN_FORM
        )))
    }
}

/// A valid topology id the caller's token may see; else the same 404 as an unknown one,
/// so that what the token may not see does not show that it exists.
pub fn visible(claims: &Claims, tid: &str) -> ApiResult<()> {
    topology_id(tid)?;
    if claims.sees_topology(tid) {
        Ok(())
    } else {
        Err(ApiError::NotFound("topology".into()))
    }
}

/// `GET /api/v1/topologies?limit=`: every topology with its status and in-flight count.
#[utoipa::path(get, path = "/topologies", operation_id = "get_topologies", tag = "topologies", security(("bearer" = ["viewer"])), params(("limit" = Option<i64>, Query, description = "rows, 1–1000 (default 100)", minimum = 1, maximum = 1000), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "OK", body = Topologies), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn list(
    Authorized(claims): AsViewer,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<Json<Topologies>> {
    let limit = params.int("limit", 1, 1000, 100)?;
    let rows = sqlx::query(
        "SELECT t.id, t.name, t.status, t.updated_at, t.last_seq, \
         (SELECT COUNT(*) FROM topology_mutations m WHERE m.topology_id = t.id \
          AND m.state IN ('enqueued', 'applying')) AS in_flight \
         FROM topologies t \
         WHERE ?2 IS NULL OR t.id IN (SELECT value FROM json_each(?2)) \
         ORDER BY t.id LIMIT ?1",
    )
    .bind(limit)
    .bind(claims.topologies_json())
    .fetch_all(&state.db.readers)
    .await?;
    let items = rows
        .iter()
        .map(|r| TopologyRow {
            id: r.get("id"),
            name: r.get("name"),
            status: r.get("status"),
            updated_at: format_unix_ms(r.get("updated_at")),
            last_seq: r.get("last_seq"),
            in_flight: r.get("in_flight"),
        })
        .collect();
    Ok(Json(Topologies { items }))
}

/// `GET /api/v1/topologies/<tid>`: the topology with its in-flight mutations.
#[utoipa::path(get, path = "/topologies/{tid}", operation_id = "get_topologies_tid", tag = "topologies", security(("bearer" = ["viewer"])), params(("tid" = String, Path, description = "topology id", pattern = "^[A-Za-z0-9_-]{1,128}$"), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "OK", body = Topology), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 404, description = "not found", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn get(
    Authorized(claims): AsViewer,
    State(state): State<AppState>,
    Path(tid): Path<String>,
) -> ApiResult<Json<Topology>> {
    visible(&claims, &tid)?;
    let mut tx = state.db.readers.begin().await?;
    let Some(head) = topology_head(&mut tx, &tid).await? else {
        return Err(ApiError::NotFound("topology".into()));
    };
    let in_flight = in_flight(&mut tx, &tid).await?;
    tx.commit().await?;
    Ok(Json(Topology {
        id: head.id,
        name: head.name,
        status: head.status,
        updated_at: format_unix_ms(head.updated_at),
        last_seq: head.last_seq,
        in_flight,
    }))
}

/// `GET /api/v1/topologies/<tid>/mutations?state=&limit=`: newest first.
#[utoipa::path(get, path = "/topologies/{tid}/mutations", operation_id = "get_topologies_tid_mutations", tag = "topologies", security(("bearer" = ["viewer"])), params(("tid" = String, Path, description = "topology id", pattern = "^[A-Za-z0-9_-]{1,128}$"), ("state" = Option<String>, Query, description = "enqueued, applying, applied or failed", pattern = "^(enqueued|applying|applied|failed)$"), ("limit" = Option<i64>, Query, description = "rows, 1–500 (default 100)", minimum = 1, maximum = 500), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "OK", body = Mutations), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 404, description = "not found", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn mutations(
    Authorized(claims): AsViewer,
    State(state): State<AppState>,
    Path(tid): Path<String>,
    params: Params,
) -> ApiResult<Json<Mutations>> {
    let wanted = params.get("state")?;
    if wanted.is_some_and(|s| !STATES.contains(&s)) {
        return Err(ApiError::invalid(
            "state",
            format!("one of {}", STATES.join(", ")),
        ));
    }
    let limit = params.int("limit", 1, 500, 100)?;
    visible(&claims, &tid)?;
    let mut tx = state.db.readers.begin().await?;
    if topology_head(&mut tx, &tid).await?.is_none() {
        return Err(ApiError::NotFound("topology".into()));
    }
    let rows = sqlx::query(&format!(
        "SELECT {MUTATION_COLUMNS} FROM topology_mutations \
         WHERE topology_id = ?1 AND (?2 IS NULL OR state = ?2) ORDER BY seq DESC LIMIT ?3"
    ))
    .bind(&tid)
    .bind(wanted)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let items = rows.iter().map(Mutation::from_row).collect();
    Ok(Json(Mutations { items }))
}

/// `POST /api/v1/topologies/<tid>/mutations` `{"op","spec"}`: publishes
/// `topology.<tid>.mutation.enqueued` and answers 202 `{"mutation_id","seq"}` after the
/// publish ack. `Idempotency-Key` makes retries return the same mutation; `?wait=true`
/// answers once the local projection has reached the event (bounded by a timeout).
#[utoipa::path(post, path = "/topologies/{tid}/mutations", operation_id = "post_topologies_tid_mutations", tag = "topologies", security(("bearer" = ["operator"])), request_body = EnqueueRequest, params(("tid" = String, Path, description = "topology id (a subject token)", pattern = "^[A-Za-z0-9_-]{1,128}$"), ("wait" = Option<bool>, Query, description = "answer once the mutation is projected (at most --mutation-wait-ms)"), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]([ -~]{0,126}[!-~])?$", description = "retries with the same key return the same mutation")), responses((status = 202, description = "published on the bus", body = Enqueued), (status = 400, description = "malformed body", body = crate::api::error::ErrorBody), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 404, description = "the topology or project is outside the token's scope", body = crate::api::error::ErrorBody), (status = 413, description = "body too large", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn enqueue(
    Authorized(claims): AsOperator,
    State(state): State<AppState>,
    Path(tid): Path<String>,
    params: Params,
    headers: HeaderMap,
    body: RawBody,
) -> ApiResult<(StatusCode, Written, Json<Enqueued>)> {
    let body = body_bytes(&body, MAX_MUTATION_BYTES)?;
    if !subjects::is_token(&tid) {
        return Err(ApiError::invalid("topology_id", subjects::TOKEN_FORM));
    }
    if !claims.sees_topology(&tid) {
        return Err(ApiError::NotFound("topology".into()));
    }
    let wait = params.bool("wait")?.unwrap_or(false);
    let request: EnqueueRequest = parse_json(body, r#"{"op": string, "spec": object}"#)?;
    if !subjects::is_token(&request.op) {
        return Err(ApiError::BadRequest(format!(
            "op must be {}",
            subjects::TOKEN_FORM
        )));
    }
    if !request.spec.get().trim_start().starts_with('{') {
        return Err(ApiError::BadRequest("spec must be a JSON object".into()));
    }
    let key = idempotency_key(&headers)?;
    // The same caller, topology and key always name the same mutation, on any replica.
    let mutation_id = match key {
        Some(k) => uuid::Uuid::new_v5(
            &IDEMPOTENCY_NS,
            format!("{}\n{tid}\n{k}", claims.sub).as_bytes(),
        ),
        None => uuid::Uuid::new_v4(),
    }
    .to_string();
    if key.is_some() {
        // Past JetStream's duplicate window, the read model remembers the first enqueue.
        let seq: Option<i64> = sqlx::query_scalar(
            "SELECT enqueued_seq FROM topology_mutations \
             WHERE topology_id = ? AND mutation_id = ? AND enqueued_seq IS NOT NULL",
        )
        .bind(&tid)
        .bind(&mutation_id)
        .fetch_optional(&state.db.readers)
        .await?;
        if let Some(seq) = seq {
            return Ok((
                StatusCode::ACCEPTED,
                written(streams::TOPOLOGY, seq as u64),
                Json(Enqueued {
                    mutation_id,
                    seq: seq as u64,
                    duplicate: Some(true),
                    projected: None,
                }),
            ));
        }
    }
    let data = json!({
        "mutation_id": mutation_id,
        "op": request.op,
        "spec": request.spec,
        "actor": claims.sub,
    });
    let body = envelope::encode(
        &mutation_id,
        "mutation.enqueued",
        "orrery/api",
        &format_unix_ms(now_ms()),
        &data,
    );
    let ack = state
        .publish_one(Outgoing {
            subject: format!("topology.{tid}.mutation.enqueued"),
            msg_id: mutation_id.clone(),
            body: body.into(),
            expected_last_subject_seq: None,
        })
        .await?;
    let answer = Enqueued {
        mutation_id,
        seq: ack.sequence,
        duplicate: ack.duplicate.then_some(true),
        projected: if wait {
            Some(wait_for(&state, ack.sequence).await)
        } else {
            None
        },
    };
    Ok((
        StatusCode::ACCEPTED,
        written(streams::TOPOLOGY, ack.sequence),
        Json(answer),
    ))
}

/// Waits until the TOPOLOGY projection has committed `seq`; `false` on timeout.
async fn wait_for(state: &AppState, seq: u64) -> bool {
    let Some(progress) = state
        .projections
        .iter()
        .find(|p| p.stream == streams::TOPOLOGY)
    else {
        return false;
    };
    let mut checkpoint = progress.checkpoint.clone();
    tokio::time::timeout(state.mutation_wait, checkpoint.wait_for(|c| *c >= seq))
        .await
        .is_ok_and(|r| r.is_ok())
}
