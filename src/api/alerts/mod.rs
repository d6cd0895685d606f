//! `/api/v1/alerts/…`: the alert dossier. [`queries`] reads what the ALERTS projection
//! stored; [`work_items`] adds the runs linked to each recurring group and what it still
//! needs; [`handoff`] records what an operator does with it (dry-runs, handoffs);
//! [`intake`] turns provider heartbeats and Alertmanager webhooks into alert events on the
//! bus.

pub mod handoff;
pub mod intake;
pub mod pages;
pub mod queries;
pub mod work_items;
