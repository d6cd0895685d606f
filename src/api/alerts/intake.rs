//! The two ways alerts come in through the API: synthetic provider heartbeats, and
//! Alertmanager's webhook translated into alert events. Both validate everything before
//! publishing anything, and both go through the bus like every other event.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::consistency::{written, Written};
use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{
    body_bytes, json_body, parse_json, AsOperator, Authorized, Params, RawBody,
};
use crate::api::{AppState, MAX_BODY_BYTES};
use crate::bus::publish::Outgoing;
use crate::bus::{envelope, streams, subjects};
use crate::projections::alerts::MAX_FIELD_LEN;
use crate::window::{format_unix_ms, now_ms, parse_rfc3339_ms};

/// Providers a synthetic heartbeat may be sent for.
pub const HEARTBEAT_PROVIDERS: [&str; 2] = ["sentry", "signoz"];
/// Longest `reason` / `run_ref` of a provider heartbeat, in characters.
pub const MAX_NOTE_LEN: usize = 200;
/// Most alerts accepted in one Alertmanager webhook call.
pub const MAX_WEBHOOK_ALERTS: usize = 1_000;

/// Body of a provider heartbeat.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Project (a subject token).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub project_id: String,
    /// One or two of `sentry`, `signoz`, each once.
    #[schema(value_type = std::collections::BTreeSet<HeartbeatProvider>, min_items = 1, max_items = 2)]
    pub providers: Vec<String>,
    /// Why, ≤ 200 characters.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub reason: Option<String>,
    /// A run reference, ≤ 200 characters.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub run_ref: Option<String>,
}

/// A provider that takes heartbeats (the document's name for the values of `providers`).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // reason: a schema only; the parser checks the names against HEARTBEAT_PROVIDERS
pub enum HeartbeatProvider {
    /// Sentry.
    Sentry,
    /// SigNoz.
    Signoz,
}

/// One heartbeat published.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatSent {
    /// Its provider.
    pub provider: String,
    /// Its envelope id.
    pub event_id: String,
    /// Its ALERTS sequence.
    pub seq: u64,
}

/// Answer of a provider heartbeat (202).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatsSent {
    /// Envelope ids published.
    pub event_ids: Vec<String>,
    /// What was published, per provider.
    pub items: Vec<HeartbeatSent>,
}

/// Answer of the Alertmanager webhook (202).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookAccepted {
    /// Events published.
    pub published: usize,
    /// Their envelope ids.
    pub event_ids: Vec<String>,
    /// Their ALERTS sequences.
    pub seqs: Vec<u64>,
}

/// `POST /api/v1/alerts/provider-heartbeat`: publishes one synthetic `heartbeat` alert per
/// provider, so freshness can tell a quiet provider from a dead feed.
#[utoipa::path(post, path = "/alerts/provider-heartbeat", operation_id = "post_alerts_provider_heartbeat", tag = "alerts", security(("bearer" = ["operator"])), request_body = HeartbeatRequest, responses((status = 202, description = "published on the bus", body = HeartbeatsSent), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 400, description = "malformed body", body = crate::api::error::ErrorBody), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 404, description = "the topology or project is outside the token's scope", body = crate::api::error::ErrorBody), (status = 413, description = "body too large", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn provider_heartbeat(
    Authorized(claims): AsOperator,
    State(state): State<AppState>,
    body: RawBody,
) -> ApiResult<(StatusCode, Written, Json<HeartbeatsSent>)> {
    let form = r#"{"project_id": token, "providers": ["sentry"|"signoz"], "reason"?: string, "run_ref"?: string}"#;
    let req: HeartbeatRequest = json_body(&body, MAX_BODY_BYTES, form)?;
    if !subjects::is_token(&req.project_id) {
        return Err(ApiError::BadRequest(format!(
            "project_id must be {}",
            subjects::TOKEN_FORM
        )));
    }
    if !claims.sees_project(&req.project_id) {
        return Err(ApiError::NotFound("project".into()));
    }
    let mut providers = req.providers.clone();
    providers.sort();
    providers.dedup();
    if providers.is_empty()
        || providers.len() != req.providers.len()
        || providers
            .iter()
            .any(|p| !HEARTBEAT_PROVIDERS.contains(&p.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "providers must list 1 to 2 distinct providers of {}",
            HEARTBEAT_PROVIDERS.join(", ")
        )));
    }
    for (name, v) in [("reason", &req.reason), ("run_ref", &req.run_ref)] {
        // Characters, as the document's maxLength counts them; 200 of the widest still fit
        // well inside the 16 KiB of labels an alert event may carry.
        if v.as_ref().is_some_and(|s| s.chars().count() > MAX_NOTE_LEN) {
            return Err(ApiError::BadRequest(format!(
                "{name} must be at most {MAX_NOTE_LEN} characters"
            )));
        }
    }
    let now = format_unix_ms(now_ms());
    let mut outgoing = Vec::new();
    for provider in &req.providers {
        let id = uuid::Uuid::new_v4().to_string();
        let mut labels = json!({"synthetic": "true", "requested_by": claims.sub});
        if let Some(r) = &req.reason {
            labels["reason"] = r.clone().into();
        }
        if let Some(r) = &req.run_ref {
            labels["run_ref"] = r.clone().into();
        }
        let data = json!({
            "provider_event_id": format!("heartbeat-{id}"),
            "stage": "heartbeat",
            "alertname": "SourceProviderHeartbeat",
            "severity": "info",
            "labels": labels,
            "provider_ts": now,
        });
        outgoing.push(Outgoing {
            subject: format!("alert.{provider}.{}", req.project_id),
            body: envelope::encode(&id, "alert.heartbeat", "orrery/api", &now, &data).into(),
            msg_id: id,
            expected_last_subject_seq: None,
        });
    }
    let ids: Vec<String> = outgoing.iter().map(|o| o.msg_id.clone()).collect();
    let acks = state.publish(outgoing).await?;
    let items = req
        .providers
        .iter()
        .zip(&ids)
        .zip(&acks)
        .map(|((p, id), ack)| HeartbeatSent {
            provider: p.clone(),
            event_id: id.clone(),
            seq: ack.sequence,
        })
        .collect();
    let last = acks.iter().map(|a| a.sequence).max().unwrap_or(0);
    Ok((
        StatusCode::ACCEPTED,
        written(streams::ALERTS, last),
        Json(HeartbeatsSent {
            event_ids: ids,
            items,
        }),
    ))
}

/// Longest label or annotation name of an Alertmanager alert, in characters.
const MAX_LABEL_NAME_CHARS: usize = 256;
/// Longest label or annotation value of an Alertmanager alert, in characters.
const MAX_LABEL_VALUE_CHARS: usize = 8 * 1024;

/// The schema of an alert's labels or annotations: bounded in characters, as JSON Schema
/// counts them and as [`parse_webhook`] checks them (not in bytes, which no schema states).
fn label_map(description: &str) -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let string = |max: usize| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(max))
    };
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .property_names(Some(string(MAX_LABEL_NAME_CHARS)))
        .additional_properties(Some(string(MAX_LABEL_VALUE_CHARS)))
        .build()
}

fn labels_schema() -> utoipa::openapi::Object {
    label_map(
        "Labels: `alertname`, `severity`, `namespace` and `instance`/`pod`/`service`/`job` \
         name the alert. Names of at most 256 characters, values of at most 8,192.",
    )
}

fn annotations_schema() -> utoipa::openapi::Object {
    label_map(
        "Annotations: `summary`, `description` and `message` are its content. Names of at \
         most 256 characters, values of at most 8,192.",
    )
}

/// One alert of an Alertmanager v4 webhook body (unknown fields are ignored, as Alertmanager
/// adds fields over time). Label and annotation names are at most 256 characters, values
/// 8,192.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AlertmanagerAlert)]
pub struct AmAlert {
    /// `firing` or `resolved`.
    #[schema(pattern = "^(firing|resolved)$")]
    status: String,
    /// Labels: `alertname`, `severity`, `namespace` and `instance`/`pod`/`service`/`job`
    /// name the alert.
    #[schema(schema_with = labels_schema)]
    labels: BTreeMap<String, String>,
    /// Annotations: `summary`, `description` and `message` are its content.
    #[serde(default)]
    #[schema(schema_with = annotations_schema)]
    annotations: BTreeMap<String, String>,
    /// When it started (RFC 3339, at most 64 characters).
    #[schema(format = DateTime, max_length = 64)]
    starts_at: String,
    /// Its source; absent or null when Alertmanager names none.
    #[serde(default, rename = "generatorURL")]
    generator_url: Option<String>,
    /// Alertmanager's fingerprint (required): 1 to 64 visible ASCII characters.
    #[serde(default)]
    #[schema(value_type = String, required = true, pattern = "^[!-~]{1,64}$")]
    fingerprint: Option<String>,
}

/// An Alertmanager webhook body, version 4 (unknown fields are ignored).
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = AlertmanagerWebhook)]
pub struct AmWebhook {
    /// `4`.
    #[schema(pattern = "^4$")]
    version: String,
    /// 1 to 1,000 alerts.
    #[schema(min_items = 1, max_items = 1000)]
    alerts: Vec<AmAlert>,
}

/// Validates an Alertmanager webhook body (version 4, 1 to 1000 alerts) and turns each
/// alert into its provider event id and the `data` of its alert event; any fault is a 400
/// naming the alert, and then nothing is published.
pub fn parse_webhook(body: &[u8]) -> ApiResult<Vec<(String, Value)>> {
    let hook: AmWebhook = parse_json(body, "an Alertmanager webhook payload (version 4)")?;
    if hook.version != "4" {
        return Err(ApiError::BadRequest(format!(
            "webhook version {:?} is not supported; expected \"4\"",
            hook.version
        )));
    }
    if hook.alerts.is_empty() || hook.alerts.len() > MAX_WEBHOOK_ALERTS {
        return Err(ApiError::BadRequest(format!(
            "alerts must hold 1 to {MAX_WEBHOOK_ALERTS} alerts"
        )));
    }
    hook.alerts
        .iter()
        .enumerate()
        .map(|(i, alert)| {
            alertmanager_event(alert).map_err(|e| ApiError::BadRequest(format!("alerts[{i}]: {e}")))
        })
        .collect()
}

/// Turns one Alertmanager alert into the `data` of an alert event.
fn alertmanager_event(a: &AmAlert) -> Result<(String, Value), String> {
    if a.status != "firing" && a.status != "resolved" {
        return Err(format!(
            "alert status must be firing or resolved, not {:?}",
            a.status
        ));
    }
    let starts = Some(&a.starts_at)
        .filter(|s| s.len() <= 64)
        .and_then(|s| parse_rfc3339_ms(s))
        .ok_or_else(|| {
            "alert startsAt must be an RFC 3339 time of at most 64 characters".to_owned()
        })?;
    let fingerprint = match &a.fingerprint {
        Some(f) if (1..=64).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_graphic()) => {
            f.clone()
        }
        Some(_) => return Err("alert fingerprint must be 1 to 64 visible ASCII characters".into()),
        None => return Err("alert fingerprint is missing".into()),
    };
    for (k, v) in a.labels.iter().chain(&a.annotations) {
        if k.chars().count() > MAX_LABEL_NAME_CHARS || v.chars().count() > MAX_LABEL_VALUE_CHARS {
            return Err(format!("label or annotation `{k}` is too long"));
        }
    }
    let label = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| a.labels.get(*n))
            .filter(|v| v.len() <= MAX_FIELD_LEN)
            .cloned()
    };
    // A repeat notification of the same alert instance is a duplicate; its resolution is not.
    let provider_event_id = format!("{fingerprint}:{}:{}", a.starts_at, a.status);
    if provider_event_id.len() > MAX_FIELD_LEN {
        return Err("alert startsAt is too long".into());
    }
    let content: Vec<&str> = ["summary", "description", "message"]
        .iter()
        .filter_map(|k| a.annotations.get(*k).map(String::as_str))
        .collect();
    let data = json!({
        "provider_event_id": provider_event_id,
        "stage": a.status,
        "alertname": label(&["alertname"]),
        "severity": label(&["severity"]),
        "namespace": label(&["namespace"]),
        "target_resource": label(&["instance", "pod", "service", "job"]),
        "fingerprint": fingerprint,
        "labels": a.labels,
        "annotations": a.annotations,
        "content": (!content.is_empty()).then(|| content.join("\n")),
        "source_url": a.generator_url.as_deref().filter(|u| !u.is_empty() && u.len() <= 2_048),
        "provider_ts": format_unix_ms(starts),
        "source_refs": {"alert": [fingerprint]},
    });
    Ok((provider_event_id, data))
}

/// `POST /api/v1/alerts/webhook/alertmanager?project_id=`: Alertmanager's webhook (v4);
/// one alert event per alert on `alert.alertmanager.<project_id>`. Everything is validated
/// before anything is published.
#[utoipa::path(post, path = "/alerts/webhook/alertmanager", operation_id = "post_alerts_webhook_alertmanager", tag = "alerts", security(("bearer" = ["operator"])), request_body(content = AmWebhook, description = "Alertmanager webhook body, version 4, 1–1000 alerts", content_type = "application/json"), params(("project_id" = String, Query, description = "the project the alerts belong to (a subject token)", pattern = "^[A-Za-z0-9_-]{1,128}$")), responses((status = 202, description = "one event per alert published", body = WebhookAccepted), (status = 400, description = "malformed body", body = crate::api::error::ErrorBody), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 404, description = "the topology or project is outside the token's scope", body = crate::api::error::ErrorBody), (status = 413, description = "body too large", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn alertmanager_webhook(
    Authorized(claims): AsOperator,
    State(state): State<AppState>,
    params: Params,
    body: RawBody,
) -> ApiResult<(StatusCode, Written, Json<WebhookAccepted>)> {
    let project = params
        .token("project_id")?
        .ok_or_else(|| ApiError::invalid("project_id", subjects::TOKEN_FORM))?;
    if !claims.sees_project(project) {
        return Err(ApiError::NotFound("project".into()));
    }
    let events = parse_webhook(body_bytes(&body, MAX_BODY_BYTES)?)?;
    let now = format_unix_ms(now_ms());
    let mut outgoing = Vec::with_capacity(events.len());
    for (provider_event_id, data) in events {
        // Alertmanager retries a failed delivery: the same alert instance keeps its id, so
        // JetStream drops the retry within its duplicate window.
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("alertmanager\n{project}\n{provider_event_id}").as_bytes(),
        )
        .to_string();
        outgoing.push(Outgoing {
            subject: format!("alert.alertmanager.{project}"),
            body: envelope::encode(&id, "alert", "alertmanager", &now, &data).into(),
            msg_id: id,
            expected_last_subject_seq: None,
        });
    }
    let ids: Vec<String> = outgoing.iter().map(|o| o.msg_id.clone()).collect();
    let acks = state.publish(outgoing).await?;
    let seqs: Vec<u64> = acks.iter().map(|a| a.sequence).collect();
    let last = seqs.iter().copied().max().unwrap_or(0);
    Ok((
        StatusCode::ACCEPTED,
        written(streams::ALERTS, last),
        Json(WebhookAccepted {
            published: ids.len(),
            event_ids: ids,
            seqs,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str, value: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"version": "4", "alerts": [{
            "status": "firing", "startsAt": "2026-11-22T10:00:00Z", "fingerprint": "fp",
            "labels": {name: value}}]}))
        .unwrap()
    }

    #[test]
    fn label_bounds_count_characters_as_the_document_does() {
        // 256 characters of four bytes each: within the schema's maxLength, so accepted.
        let wide = "𝔸".repeat(MAX_LABEL_NAME_CHARS);
        assert!(parse_webhook(&hook(&wide, "v")).is_ok());
        assert!(parse_webhook(&hook("k", &"é".repeat(MAX_LABEL_VALUE_CHARS))).is_ok());
        // One character more is refused, whatever its width.
        let long = "a".repeat(MAX_LABEL_NAME_CHARS + 1);
        assert!(parse_webhook(&hook(&long, "v")).is_err());
        assert!(parse_webhook(&hook("k", &"a".repeat(MAX_LABEL_VALUE_CHARS + 1))).is_err());
        let schema = serde_json::to_value(labels_schema()).unwrap();
        assert_eq!(schema["propertyNames"]["maxLength"], MAX_LABEL_NAME_CHARS);
        assert_eq!(
            schema["additionalProperties"]["maxLength"],
            MAX_LABEL_VALUE_CHARS
        );
    }
}
