//! The durations of whole hours, kept in memory between requests.
//!
//! An hour's runs only change when a committed batch adds runs that finished in it: the
//! results projection reports those hours ([`DurationCache::changed`]) after each commit and
//! before its checkpoint is published, so a reader that waited for a sequence
//! (`Orrery-Min-Seq`) never sees an hour from before it. A reader notes the change counter
//! before it reads the database and keeps what it read only if nothing it covers changed
//! since; otherwise the answer is still exact, it is just not kept.
//!
//! Two kinds of entries share one memory budget, evicted least recently used first: one
//! hour's runs per job (sorted by duration, with their finish times, so that the hour a
//! window starts in can be cut at any instant), and per job the sorted durations of a range
//! of whole hours, so that a day's window is a few sorted blocks per job, not one per hour.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// Bytes of durations kept at most: a day of 714,000 runs takes about 17 MiB.
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Ranges of merged hours kept at once (windows of different lengths in use).
const MERGED_KEEP: usize = 2;

/// Hours remembered as changed before the memory of them is folded into one mark.
const CHANGES_KEPT: usize = 4096;

/// How an hour is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Form {
    /// Durations per job, read from the duration blocks: an hour wholly inside a window.
    Blocks,
    /// Every run with its finish time and result id, read from the results: the hour a
    /// window starts in, which is cut at `since`.
    Rows,
}

/// The runs of one job in one hour (or in a range of hours).
#[derive(Debug, Default)]
pub struct JobRuns {
    /// Durations, ascending.
    pub ms: Vec<i64>,
    /// Finish times in the order of `ms` ([`Form::Rows`] only).
    pub finished: Vec<i64>,
    /// Result ids in the order of `ms` ([`Form::Rows`] only).
    pub ids: Vec<Box<str>>,
    /// Sum of `ms`.
    pub sum_ms: i64,
    /// The longest run (ties: the larger result id), from the blocks' `max_key`.
    pub max: Option<(i64, String)>,
}

impl JobRuns {
    /// Keeps the longest run, ties going to the larger result id.
    pub fn offer_max(&mut self, ms: i64, id: &str) {
        let better = match &self.max {
            None => true,
            Some((m, i)) => ms > *m || (ms == *m && id > i.as_str()),
        };
        if better {
            self.max = Some((ms, id.to_owned()));
        }
    }

    fn bytes(&self) -> usize {
        let ids: usize = self.ids.iter().map(|id| id.len() + 16).sum();
        (self.ms.len() + self.finished.len()) * 8 + ids + 64
    }
}

/// Per job, the runs of one hour or of a range of whole hours.
pub type Runs = HashMap<String, JobRuns>;

/// A snapshot of the change counter, taken before reading the database.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// The cache of durations per hour; see the module documentation.
#[derive(Debug, Default)]
pub struct DurationCache {
    inner: Mutex<Inner>,
    /// Held by the one request that reads a missing part from the database; the others
    /// wait for it and then find that part kept, instead of each reading it again.
    building: tokio::sync::Mutex<()>,
    /// Merged ranges and window-start hours read from the database (a herd reads each once).
    reads: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    hours: HashMap<(i64, Form), Entry>,
    /// Merged ranges of whole hours, `(first, last)` inclusive.
    merged: Vec<((i64, i64), Entry)>,
    bytes: usize,
    /// Bumped by every change; entries read before a change of theirs are not kept.
    counter: u64,
    /// The counter value of each hour's last change.
    changes: HashMap<i64, u64>,
    /// Changes forgotten to bound `changes` count as having happened at this value.
    floor: u64,
    /// Use clock for the LRU.
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    runs: Arc<Runs>,
    bytes: usize,
    used: u64,
}

impl Inner {
    fn last_change(&self, hour: i64) -> u64 {
        self.changes.get(&hour).copied().unwrap_or(self.floor)
    }

    fn changed_in(&self, first: i64, last: i64, since: Ticket) -> bool {
        self.floor > since.0
            || self
                .changes
                .iter()
                .any(|(h, c)| (first..=last).contains(h) && *c > since.0)
    }

    /// Forgets an hour, returning the bytes it held.
    fn drop_hour(&mut self, key: (i64, Form)) -> usize {
        self.hours.remove(&key).map_or(0, |e| e.bytes)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Evicts least recently used entries until `extra` more bytes fit; false if they never
    /// can.
    fn make_room(&mut self, extra: usize) -> bool {
        if extra > CACHE_BYTES {
            return false;
        }
        while self.bytes + extra > CACHE_BYTES {
            let hour = self.hours.iter().map(|(k, e)| (e.used, *k)).min();
            let merged = self
                .merged
                .iter()
                .enumerate()
                .map(|(i, m)| (m.1.used, i))
                .min();
            let freed = match (hour, merged) {
                (Some((h_used, h)), Some((m_used, _))) if h_used < m_used => self.drop_hour(h),
                (Some((_, h)), None) => self.drop_hour(h),
                (_, Some((_, i))) => self.merged.swap_remove(i).1.bytes,
                (None, None) => return false,
            };
            self.bytes -= freed;
        }
        true
    }
}

fn runs_bytes(runs: &Runs) -> usize {
    runs.iter().map(|(j, r)| j.len() + r.bytes()).sum()
}

impl DurationCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that runs finishing in `hours` were committed: what is kept of them is dropped.
    pub fn changed(&self, hours: impl IntoIterator<Item = i64>) {
        let mut inner = lock(&self.inner);
        for hour in hours {
            inner.counter += 1;
            let counter = inner.counter;
            inner.changes.insert(hour, counter);
            let freed = inner.drop_hour((hour, Form::Blocks)) + inner.drop_hour((hour, Form::Rows));
            inner.bytes -= freed;
            let mut freed = 0;
            inner.merged.retain(|((first, last), e)| {
                let keep = !(*first..=*last).contains(&hour);
                if !keep {
                    freed += e.bytes;
                }
                keep
            });
            inner.bytes -= freed;
        }
        if inner.changes.len() > CHANGES_KEPT {
            inner.changes.clear();
            inner.floor = inner.counter;
        }
    }

    /// Forgets what is kept of every hour before `hour`: the pruner removed their runs.
    pub fn forget_before(&self, hour: i64) {
        let old: Vec<i64> = {
            let inner = lock(&self.inner);
            let mut old: Vec<i64> = inner
                .hours
                .keys()
                .map(|(h, _)| *h)
                .chain(inner.merged.iter().map(|((first, _), _)| *first))
                .filter(|h| *h < hour)
                .collect();
            old.sort_unstable();
            old.dedup();
            old
        };
        self.changed(old);
    }

    /// Waits for the right to read what is missing from the database (single flight): a
    /// request that found its window's merged range or start hour missing holds it while
    /// it reads, and the requests behind it look again once it is done.
    pub async fn build(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.building.lock().await
    }

    /// Counts one read of a merged range or a window's start hour from the database.
    pub fn count_read(&self) {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Merged ranges and start hours read from the database so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The change counter now: take it before reading what [`Self::keep_hour`] will be given.
    pub fn ticket(&self) -> Ticket {
        Ticket(lock(&self.inner).counter)
    }

    /// The kept runs of `hour` in `form`, if any.
    pub fn hour(&self, hour: i64, form: Form) -> Option<Arc<Runs>> {
        let mut inner = lock(&self.inner);
        let used = inner.tick();
        let e = inner.hours.get_mut(&(hour, form))?;
        e.used = used;
        Some(e.runs.clone())
    }

    /// Keeps `runs` of `hour` in `form`, read after `ticket` was taken, unless the hour
    /// changed since.
    pub fn keep_hour(&self, hour: i64, form: Form, ticket: Ticket, runs: Arc<Runs>) {
        let mut inner = lock(&self.inner);
        if inner.last_change(hour) > ticket.0 || inner.hours.contains_key(&(hour, form)) {
            return;
        }
        let bytes = runs_bytes(&runs);
        if !inner.make_room(bytes) {
            return;
        }
        let used = inner.tick();
        inner.bytes += bytes;
        inner
            .hours
            .insert((hour, form), Entry { runs, bytes, used });
    }

    /// The kept merge of the whole hours `first..=last`, if any.
    pub fn merged(&self, first: i64, last: i64) -> Option<Arc<Runs>> {
        let mut inner = lock(&self.inner);
        let used = inner.tick();
        let (_, e) = inner.merged.iter_mut().find(|(r, _)| *r == (first, last))?;
        e.used = used;
        Some(e.runs.clone())
    }

    /// Keeps the merge of `first..=last`, built from reads after `ticket`, unless an hour in
    /// the range changed since.
    pub fn keep_merged(&self, first: i64, last: i64, ticket: Ticket, runs: Arc<Runs>) {
        let mut inner = lock(&self.inner);
        if inner.changed_in(first, last, ticket)
            || inner.merged.iter().any(|(r, _)| *r == (first, last))
        {
            return;
        }
        let bytes = runs_bytes(&runs);
        if inner.merged.len() >= MERGED_KEEP {
            let oldest = (0..inner.merged.len()).min_by_key(|&i| inner.merged[i].1.used);
            if let Some(i) = oldest {
                let (_, e) = inner.merged.swap_remove(i);
                inner.bytes -= e.bytes;
            }
        }
        if !inner.make_room(bytes) {
            return;
        }
        let used = inner.tick();
        inner.bytes += bytes;
        inner
            .merged
            .push(((first, last), Entry { runs, bytes, used }));
    }

    /// Bytes of durations kept now.
    pub fn bytes(&self) -> usize {
        lock(&self.inner).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(values: &[i64]) -> Arc<Runs> {
        let mut r = JobRuns {
            ms: values.to_vec(),
            ..JobRuns::default()
        };
        r.sum_ms = values.iter().sum();
        Arc::new(HashMap::from([("job".to_owned(), r)]))
    }

    #[test]
    fn an_hour_read_before_a_change_of_it_is_not_kept() {
        let cache = DurationCache::new();
        let t = cache.ticket();
        cache.changed([7]);
        cache.keep_hour(7, Form::Blocks, t, runs(&[1]));
        assert!(
            cache.hour(7, Form::Blocks).is_none(),
            "read before the change"
        );
        cache.keep_hour(8, Form::Blocks, t, runs(&[1]));
        assert!(
            cache.hour(8, Form::Blocks).is_some(),
            "another hour's change does not matter"
        );
        let t = cache.ticket();
        cache.keep_hour(7, Form::Blocks, t, runs(&[1, 2]));
        assert_eq!(cache.hour(7, Form::Blocks).unwrap()["job"].ms, [1, 2]);
        cache.changed([7]);
        assert!(
            cache.hour(7, Form::Blocks).is_none(),
            "a change drops the hour"
        );
        assert!(cache.hour(8, Form::Blocks).is_some());
    }

    #[test]
    fn a_merge_is_dropped_by_a_change_inside_its_range_only() {
        let cache = DurationCache::new();
        let t = cache.ticket();
        cache.keep_merged(10, 20, t, runs(&[1]));
        cache.changed([21, 9]);
        assert!(cache.merged(10, 20).is_some());
        cache.changed([15]);
        assert!(cache.merged(10, 20).is_none());
        cache.keep_merged(10, 20, t, runs(&[1]));
        assert!(cache.merged(10, 20).is_none(), "built before the change");
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn pruned_hours_are_forgotten_and_later_ones_kept() {
        let cache = DurationCache::new();
        let t = cache.ticket();
        cache.keep_hour(3, Form::Blocks, t, runs(&[1]));
        cache.keep_hour(9, Form::Rows, t, runs(&[1]));
        cache.keep_merged(4, 6, t, runs(&[1]));
        cache.keep_merged(8, 12, t, runs(&[1]));
        cache.forget_before(8);
        assert!(cache.hour(3, Form::Blocks).is_none() && cache.merged(4, 6).is_none());
        assert!(cache.hour(9, Form::Rows).is_some() && cache.merged(8, 12).is_some());
        // A read that started before the pruning is not kept either.
        cache.keep_hour(3, Form::Blocks, t, runs(&[1]));
        assert!(cache.hour(3, Form::Blocks).is_none());
    }

    #[test]
    fn forgotten_changes_still_refuse_older_reads() {
        let cache = DurationCache::new();
        let t = cache.ticket();
        cache.changed(0..=CHANGES_KEPT as i64);
        let later = cache.ticket();
        cache.keep_hour(5, Form::Blocks, t, runs(&[1]));
        cache.keep_merged(1, 2, t, runs(&[1]));
        assert!(cache.hour(5, Form::Blocks).is_none() && cache.merged(1, 2).is_none());
        cache.keep_hour(5, Form::Blocks, later, runs(&[1]));
        cache.keep_merged(1, 2, later, runs(&[1]));
        assert!(cache.hour(5, Form::Blocks).is_some() && cache.merged(1, 2).is_some());
    }

    #[test]
    fn memory_stays_within_the_budget_dropping_the_least_recently_used() {
        let cache = DurationCache::new();
        let values: Vec<i64> = (0..1_000_000).collect();
        let t = cache.ticket();
        for hour in 0..20 {
            cache.keep_hour(hour, Form::Blocks, t, runs(&values));
            assert!(cache.bytes() <= CACHE_BYTES);
            if hour > 0 {
                // Hour 0 stays in use; the others age.
                assert!(cache.hour(0, Form::Blocks).is_some(), "hour {hour}");
            }
        }
        assert!(cache.hour(19, Form::Blocks).is_some());
        assert!(
            cache.hour(1, Form::Blocks).is_none(),
            "the least recently used went first"
        );
        let too_big: Vec<i64> = (0..(CACHE_BYTES / 8 + 1) as i64).collect();
        cache.keep_hour(100, Form::Blocks, t, runs(&too_big));
        assert!(cache.hour(100, Form::Blocks).is_none());
        assert!(cache.bytes() <= CACHE_BYTES);
    }
}
