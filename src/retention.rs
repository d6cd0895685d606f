//! How long each read model keeps its rows, judged by event time against the bus, never by
//! a replica's own clock.
//!
//! Each projection records in its checkpoint row the newest JetStream publish time it has
//! committed (`high_water_ms`). A row of a read model with retention `R` is *expired* once its
//! event time is before `high_water_ms - R`: replicas at the same checkpoint agree on which
//! rows those are, so `orrery digest` hashes only the rows still kept and two replicas agree
//! however far each one's pruner has got. The pruner (`projector::prune`) deletes expired
//! rows in small chunks between the projectors' commits.
//!
//! Where a projection reads back a row it wrote earlier (a dedupe key, a recurrence group),
//! it treats a row that was expired when the new event was published as absent, so that an
//! expired row that one replica has pruned and another not yet gives both the same result.

use std::time::Duration;

use anyhow::{bail, Context};

/// The read models that have a retention of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Execution results and what is counted from them (RESULTS).
    Results,
    /// Alert events, their dedupe keys and recurrence groups (ALERTS).
    Alerts,
    /// Finished topology mutations (TOPOLOGY); a topology itself is never pruned.
    Mutations,
    /// Dead letters of every stream.
    DeadLetters,
    /// The work-item dry-run and handoff history (WORKITEMS).
    WorkItems,
}

impl Class {
    /// Every class, in the order settings and reports list them.
    pub const ALL: [Class; 5] = [
        Class::Results,
        Class::Alerts,
        Class::Mutations,
        Class::DeadLetters,
        Class::WorkItems,
    ];

    /// Its name in settings, metrics and `/ready`.
    pub const fn name(self) -> &'static str {
        match self {
            Class::Results => "results",
            Class::Alerts => "alerts",
            Class::Mutations => "mutations",
            Class::DeadLetters => "dead_letters",
            Class::WorkItems => "work_items",
        }
    }
}

/// The retention of every read model. [`Duration::ZERO`] keeps rows for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Execution results.
    pub results: Duration,
    /// Alert events and recurrence groups.
    pub alerts: Duration,
    /// Finished topology mutations.
    pub mutations: Duration,
    /// Dead letters.
    pub dead_letters: Duration,
    /// Work-item history.
    pub work_items: Duration,
    /// Stats samples (kept within this of the newest sample; see `projections::heartbeats`).
    pub samples: Duration,
}

const DAY: u64 = 86_400;

impl Default for Retention {
    fn default() -> Self {
        Self {
            results: Duration::from_secs(30 * DAY),
            alerts: Duration::from_secs(90 * DAY),
            mutations: Duration::from_secs(30 * DAY),
            dead_letters: Duration::from_secs(30 * DAY),
            work_items: Duration::from_secs(365 * DAY),
            samples: Duration::from_secs(DAY),
        }
    }
}

impl Retention {
    /// Keeps everything for ever but samples (for `samples`): what a database made before
    /// retention existed holds, and how its snapshots and backups are verified.
    pub fn keep_all(samples: Duration) -> Self {
        Self {
            results: Duration::ZERO,
            alerts: Duration::ZERO,
            mutations: Duration::ZERO,
            dead_letters: Duration::ZERO,
            work_items: Duration::ZERO,
            samples,
        }
    }

    /// The retention of `class`; `None` keeps for ever.
    pub fn of(&self, class: Class) -> Option<Duration> {
        let d = match class {
            Class::Results => self.results,
            Class::Alerts => self.alerts,
            Class::Mutations => self.mutations,
            Class::DeadLetters => self.dead_letters,
            Class::WorkItems => self.work_items,
        };
        (!d.is_zero()).then_some(d)
    }

    /// The retention of `class` in ms; `None` keeps for ever.
    pub fn ms(&self, class: Class) -> Option<i64> {
        self.of(class).map(millis)
    }

    /// Event times before this (Unix ms) are expired in `class` once the bus has reached
    /// `high_water_ms`; `None` when `class` keeps for ever.
    pub fn cutoff(&self, class: Class, high_water_ms: i64) -> Option<i64> {
        self.ms(class).map(|r| high_water_ms.saturating_sub(r))
    }

    /// A line that [`Retention::decode`] reads back: recorded beside snapshots and backups,
    /// whose digests depend on it.
    pub fn encode(&self) -> String {
        let mut parts: Vec<String> = Class::ALL
            .iter()
            .map(|&c| format!("{}={}", c.name(), self.of(c).map_or(0, |d| d.as_millis())))
            .collect();
        parts.push(format!("samples={}", self.samples.as_millis()));
        parts.join(",")
    }

    /// Reads [`Retention::encode`]'s line; a class it does not name keeps for ever (a
    /// snapshot made before that class had a retention).
    pub fn decode(line: &str) -> anyhow::Result<Self> {
        let mut r = Self::keep_all(Duration::ZERO);
        for part in line.split(',').filter(|p| !p.is_empty()) {
            let (name, ms) = part
                .split_once('=')
                .with_context(|| format!("`{part}` is not name=milliseconds"))?;
            let ms: u64 = ms
                .parse()
                .with_context(|| format!("`{ms}` is not a number of milliseconds"))?;
            let d = Duration::from_millis(ms);
            match name {
                "results" => r.results = d,
                "alerts" => r.alerts = d,
                "mutations" => r.mutations = d,
                "dead_letters" => r.dead_letters = d,
                "work_items" => r.work_items = d,
                "samples" => r.samples = d,
                other => bail!("unknown read model `{other}` in a retention line"),
            }
        }
        Ok(r)
    }
}

/// `d` in ms, saturating.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Whether a row last touched at `at` had expired, under `retention_ms` (`None`: for ever),
/// when an event published at `published_ms` arrived: the rule the projections that read
/// back their own rows apply, so that pruned and unpruned replicas answer alike.
pub fn expired_at(at: i64, published_ms: i64, retention_ms: Option<i64>) -> bool {
    retention_ms.is_some_and(|r| at < published_ms.saturating_sub(r))
}

/// Which rows of a table `orrery digest` hashes, and how the pruner removes the others.
#[derive(Debug, Clone, Copy)]
pub enum Window {
    /// Stats samples: the rows within `?1` ms of the table's newest, as this condition.
    Samples(&'static str),
    /// Rows of a read model with a retention.
    Kept {
        /// Whose retention applies.
        class: Class,
        /// The rows kept, as a condition where `?1` is the cutoff (Unix ms).
        keep: &'static str,
        /// Deletes at most `?2` rows that `keep` does not hold at cutoff `?1`, using an index.
        prune: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_every_class() {
        let r = Retention {
            results: Duration::from_secs(1),
            alerts: Duration::ZERO,
            mutations: Duration::from_millis(3),
            dead_letters: Duration::from_secs(4),
            work_items: Duration::from_secs(5),
            samples: Duration::from_secs(6),
        };
        assert_eq!(Retention::decode(&r.encode()).unwrap(), r);
        // What a snapshot from before retention recorded: samples only.
        let old = Retention::decode("samples=60000").unwrap();
        assert_eq!(old, Retention::keep_all(Duration::from_secs(60)));
        for bad in [
            "results",
            "results=x",
            "results=-1",
            "weather=1",
            "results=1=2",
        ] {
            assert!(Retention::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cutoffs_follow_the_high_water_mark() {
        let r = Retention::default();
        assert_eq!(r.cutoff(Class::Results, 31 * 86_400_000), Some(86_400_000));
        assert_eq!(r.cutoff(Class::Results, 0), Some(-30 * 86_400_000));
        let forever = Retention::keep_all(Duration::ZERO);
        assert!(Class::ALL
            .iter()
            .all(|&c| forever.cutoff(c, i64::MAX).is_none()));
    }
}
