//! `/api/v1/alerts/…`: the alert dossier. [`queries`] reads what the ALERTS projection
//! stored; [`intake`] turns provider heartbeats and Alertmanager webhooks into alert events
//! on the bus.

pub mod intake;
pub mod queries;
