//! Every read model the daemon keeps, listed once. The daemon ([`crate::Application`]),
//! `orrery rebuild` and the bench all take this list: a new read model is a module under
//! `projections/` and one line here.

use std::sync::Arc;

use crate::config::Config;
use crate::live::Hub;
use crate::projector::AnyProjection;
use crate::projector::ReadModel;

use super::results::durations::DurationCache;

use super::alerts::AlertsProjection;
use super::heartbeats::HeartbeatsProjection;
use super::results::ResultsProjection;
use super::topology::TopologyProjection;
use super::work_items::WorkItemsProjection;

/// What the read models tell, in memory, about the batches they commit.
#[derive(Clone)]
pub struct Listeners {
    /// Receives committed topology events for the live stream.
    pub hub: Arc<Hub>,
    /// Forgets the hours of committed results.
    pub durations: Arc<DurationCache>,
}

impl Listeners {
    /// Listeners nobody asks (rebuild, digest, benchmarks).
    pub fn unheard() -> Self {
        Self {
            hub: Arc::new(Hub::new(1, 1, 0)),
            durations: Arc::default(),
        }
    }
}

/// The read models, one per stream, in the order `/ready` and `/metrics` list them.
pub fn roster(config: &Config, listeners: &Listeners) -> Vec<Box<dyn AnyProjection>> {
    vec![
        Box::new(ResultsProjection {
            deploy_keep: config.fleet.deploy_history_keep,
            durations: Arc::clone(&listeners.durations),
            retention_ms: config.retention.ms(crate::retention::Class::Results),
        }),
        Box::new(
            TopologyProjection::new(Arc::clone(&listeners.hub))
                .with_retention(config.retention.ms(crate::retention::Class::Mutations)),
        ),
        Box::new(AlertsProjection {
            retention_ms: config.retention.ms(crate::retention::Class::Alerts),
            results_retention_ms: config.retention.ms(crate::retention::Class::Results),
        }),
        Box::new(HeartbeatsProjection),
        Box::new(WorkItemsProjection),
    ]
}

/// The read models' streams and tables, for commands that only read them (`orrery digest`,
/// snapshots): the roster with nobody listening.
pub fn read_models(config: &Config) -> Vec<ReadModel> {
    roster(config, &Listeners::unheard())
        .iter()
        .map(|p| (p.stream(), p.tables()))
        .collect()
}
