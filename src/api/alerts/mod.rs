//! `/api/v1/alerts/…`: the alert dossier. [`queries`] reads what the ALERTS projection
//! stored; [`plan`] classifies each recurring group by the runs linked to it and says what
//! it still needs, which [`work_items`] previews; [`handoff`] records what an operator does with it (dry-runs, handoffs);
//! [`intake`] turns provider heartbeats and Alertmanager webhooks into alert events on the
//! bus.

pub mod answers;
pub mod entry;
pub mod handoff;
pub mod intake;
pub mod pages;
pub mod plan;
pub mod queries;
pub mod work_items;
