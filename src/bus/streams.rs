//! The streams Orrery reads and writes, and their provisioning at start-up.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

/// One JetStream stream of the event contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name.
    pub name: &'static str,
    /// Subject filter it captures.
    pub subject: &'static str,
}

/// Topology mutations and status.
pub const TOPOLOGY: StreamSpec = StreamSpec {
    name: "TOPOLOGY",
    subject: "topology.>",
};
/// Agent heartbeats.
pub const HEARTBEATS: StreamSpec = StreamSpec {
    name: "HEARTBEATS",
    subject: "heartbeat.>",
};
/// Alerts from the bridges.
pub const ALERTS: StreamSpec = StreamSpec {
    name: "ALERTS",
    subject: "alert.>",
};
/// Execution results.
pub const RESULTS: StreamSpec = StreamSpec {
    name: "RESULTS",
    subject: "result.>",
};
/// Commands Orrery publishes (rollbacks).
pub const COMMANDS: StreamSpec = StreamSpec {
    name: "COMMANDS",
    subject: "command.>",
};

/// Work item dry-runs and handoffs Orrery records.
pub const WORKITEMS: StreamSpec = StreamSpec {
    name: "WORKITEMS",
    subject: "workitem.>",
};

/// Every stream of the contract, in provisioning order.
pub const ALL: [StreamSpec; 6] = [TOPOLOGY, HEARTBEATS, ALERTS, RESULTS, COMMANDS, WORKITEMS];

/// Looks a stream up by name.
pub fn by_name(name: &str) -> Option<StreamSpec> {
    ALL.into_iter().find(|s| s.name == name)
}

/// Retention and placement of provisioned streams.
#[derive(Debug, Clone, Copy)]
pub struct Provisioning {
    /// Replicas (R3 on a cluster).
    pub replicas: usize,
    /// Oldest message kept.
    pub max_age: Duration,
}

impl Provisioning {
    /// The configuration of the stream `spec` under these settings.
    pub fn config(&self, spec: StreamSpec) -> stream::Config {
        stream::Config {
            name: spec.name.to_owned(),
            subjects: vec![spec.subject.to_owned()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: self.max_age,
            num_replicas: self.replicas,
            // The window in which a re-published Nats-Msg-Id is dropped by the server.
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        }
    }
}

/// Differences between a stream's live config and what Orrery would create.
pub fn drift(want: &stream::Config, have: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    if want.subjects != have.subjects {
        out.push(format!(
            "subjects {:?} (expected {:?})",
            have.subjects, want.subjects
        ));
    }
    if want.storage != have.storage {
        out.push(format!(
            "storage {:?} (expected {:?})",
            have.storage, want.storage
        ));
    }
    if want.num_replicas != have.num_replicas {
        out.push(format!(
            "replicas {} (expected {})",
            have.num_replicas, want.num_replicas
        ));
    }
    if want.max_age != have.max_age {
        out.push(format!(
            "max_age {:?} (expected {:?})",
            have.max_age, want.max_age
        ));
    }
    if want.retention != have.retention {
        out.push(format!(
            "retention {:?} (expected {:?})",
            have.retention, want.retention
        ));
    }
    out
}

/// Whether looking a stream up failed because it does not exist (not a timeout).
pub fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Creates each missing stream; a stream that exists with another config is reported and left
/// as it is, because rewriting an operator's stream could drop data.
pub async fn provision(
    js: &jetstream::Context,
    settings: Provisioning,
) -> Result<(), async_nats::Error> {
    check(js, settings, true).await
}

/// Checks every stream: each missing one is created when `create`, and is an error naming
/// it otherwise (its creation is someone else's: `--provision-streams=false`). Drift from
/// `settings` is reported either way.
#[tracing::instrument(skip_all, fields(create))]
pub async fn check(
    js: &jetstream::Context,
    settings: Provisioning,
    create: bool,
) -> Result<(), async_nats::Error> {
    for spec in ALL {
        let want = settings.config(spec);
        match js.get_stream(spec.name).await {
            Ok(mut existing) => {
                let have = &existing.info().await?.config;
                let diffs = drift(&want, have);
                if !diffs.is_empty() {
                    tracing::warn!(
                        stream = spec.name,
                        drift = %diffs.join("; "),
                        "stream config differs from Orrery's defaults; leaving it unchanged"
                    );
                }
            }
            Err(e) if is_not_found(&e) && !create => {
                return Err(format!(
                    "stream {} ({}) does not exist, and --provision-streams is false: \
                     create it, or let Orrery's NATS user create streams",
                    spec.name, spec.subject
                )
                .into());
            }
            Err(e) if is_not_found(&e) => {
                js.create_stream(want).await?;
                tracing::info!(stream = spec.name, subject = spec.subject, "created stream");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
