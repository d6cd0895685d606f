//! One module per read model: events in, SQL out, nothing else.

pub mod alerts;
pub mod heartbeats;
pub mod results;
pub mod topology;
