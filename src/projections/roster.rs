//! Every read model the daemon keeps, listed once. The daemon ([`crate::Application`]),
//! `orrery rebuild` and the bench all take this list: a new read model is a module under
//! `projections/` and one line here.

use std::sync::Arc;

use crate::config::Config;
use crate::digest::ReadModel;
use crate::live::Hub;
use crate::projector::AnyProjection;

use super::alerts::AlertsProjection;
use super::heartbeats::HeartbeatsProjection;
use super::results::ResultsProjection;
use super::topology::TopologyProjection;

/// The read models, one per stream, in the order `/ready` and `/metrics` list them. `hub`
/// receives committed topology events for the live stream.
pub fn roster(config: &Config, hub: Arc<Hub>) -> Vec<Box<dyn AnyProjection>> {
    vec![
        Box::new(ResultsProjection {
            deploy_keep: config.fleet.deploy_history_keep,
        }),
        Box::new(TopologyProjection::new(hub)),
        Box::new(AlertsProjection),
        Box::new(HeartbeatsProjection),
    ]
}

/// The read models' streams and tables, for commands that only read them (`orrery digest`,
/// snapshots): the roster with a hub nobody listens to.
pub fn read_models(config: &Config) -> Vec<ReadModel> {
    roster(config, Arc::new(Hub::new(1, 1, 0)))
        .iter()
        .map(|p| (p.stream(), p.tables()))
        .collect()
}
