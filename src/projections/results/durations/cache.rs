//! The durations of whole hours, kept in memory between requests.
//!
//! An hour's runs only change when a committed batch adds runs that finished in it: the
//! results projection reports those hours ([`DurationCache::changed`]) after each commit and
//! before its checkpoint is published, so a reader that waited for a sequence
//! (`Orrery-Min-Seq`) never sees an hour from before it. A reader notes the change counter
//! before it reads the database and keeps what it read only if nothing it covers changed
//! since; otherwise the answer is still exact, it is just not kept.
//!
//! An hour's blocks are different: the hours still receiving runs (the open one above all)
//! would otherwise be read again after every batch, and a busy hour holds hundreds of
//! thousands of runs. What is kept of them says through which stream sequence it is
//! complete, and a committed batch adds its runs to it ([`DurationCache::committed`]):
//! a batch already in what was read is skipped, a later one is merged in.
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
#[derive(Debug, Default, Clone)]
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

    /// Adds runs to a [`Form::Blocks`] entry: durations merged into their sorted place.
    fn add(&mut self, mut runs: Vec<(i64, &str)>) {
        runs.sort_unstable();
        let old = self.ms.len();
        self.ms.reserve(runs.len());
        for &(ms, id) in &runs {
            self.ms.push(ms);
            self.sum_ms += ms;
            self.offer_max(ms, id);
        }
        // Merge from the back, in place: the old values are sorted, and so are the new.
        let (mut i, mut j, mut k) = (old, runs.len(), self.ms.len());
        while j > 0 {
            k -= 1;
            if i > 0 && self.ms[i - 1] > runs[j - 1].0 {
                self.ms[k] = self.ms[i - 1];
                i -= 1;
            } else {
                self.ms[k] = runs[j - 1].0;
                j -= 1;
            }
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

/// Per job, the (ms, result id) runs a batch added to one hour.
type HourRuns<'a> = HashMap<&'a str, Vec<(i64, &'a str)>>;

/// One run a committed batch added: its block's hour, job, duration (ms) and result id.
pub type AddedRun<'a> = (i64, &'a str, i64, &'a str);

/// What a committed batch of results did to the durations.
#[derive(Debug)]
pub struct Committed<'a> {
    /// Stream sequence of its first event.
    pub first: u64,
    /// Stream sequence of its last event.
    pub last: u64,
    /// Its runs.
    pub runs: Vec<AddedRun<'a>>,
    /// The hours its runs finished in as windows cut them (they may differ from the
    /// blocks' before 1970): window-start hours and merged ranges among them are dropped.
    pub hours: Vec<i64>,
}

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
    /// Per hour of blocks, the last stream sequence of a committed batch with runs in it:
    /// blocks read before it are not kept.
    touched: HashMap<i64, u64>,
    /// Touches forgotten to bound `touched` count as being at this sequence.
    touched_floor: u64,
    /// Batches up to this sequence repeated known result ids: their events do not tell
    /// which runs were inserted.
    inexact_through: u64,
    /// The blocks of hours before this one were pruned.
    pruned_before: i64,
}

#[derive(Debug)]
struct Entry {
    runs: Arc<Runs>,
    bytes: usize,
    used: u64,
    /// [`Form::Blocks`]: the runs of every result up to this stream sequence.
    through: u64,
}

impl Inner {
    fn last_touch(&self, hour: i64) -> u64 {
        self.touched
            .get(&hour)
            .copied()
            .unwrap_or(self.touched_floor)
    }

    /// Drops what is kept of `hour` as windows cut it (its start hour, merged ranges over
    /// it), and its blocks too if `blocks`.
    fn drop_changed(&mut self, hour: i64, blocks: bool) {
        self.counter += 1;
        let counter = self.counter;
        self.changes.insert(hour, counter);
        let mut freed = self.drop_hour((hour, Form::Rows));
        if blocks {
            freed += self.drop_hour((hour, Form::Blocks));
        }
        self.merged.retain(|((first, last), e)| {
            let keep = !(*first..=*last).contains(&hour);
            if !keep {
                freed += e.bytes;
            }
            keep
        });
        self.bytes -= freed;
    }

    fn bound_changes(&mut self) {
        if self.changes.len() > CHANGES_KEPT {
            self.changes.clear();
            self.floor = self.counter;
        }
        if self.touched.len() > CHANGES_KEPT {
            self.touched_floor = self.touched.values().copied().max().unwrap_or(0);
            self.touched.clear();
        }
    }

    /// Adds a batch's runs of `hour` to its kept blocks, or drops them when they cannot be
    /// brought up to date.
    fn add_to_blocks(&mut self, hour: i64, c: &Committed<'_>, runs: HourRuns<'_>) {
        let seen = self.touched.entry(hour).or_insert(0);
        *seen = (*seen).max(c.last);
        let Some(mut e) = self.hours.remove(&(hour, Form::Blocks)) else {
            return;
        };
        if e.through >= c.last {
            // Read after this batch was committed: its runs are in already.
            self.hours.insert((hour, Form::Blocks), e);
            return;
        }
        self.bytes -= e.bytes;
        if self.inexact_through >= c.first || e.through >= c.first {
            return;
        }
        let kept = Arc::make_mut(&mut e.runs);
        for (job, added) in runs {
            kept.entry(job.to_owned()).or_default().add(added);
        }
        e.bytes = runs_bytes(&e.runs);
        e.through = c.last;
        if self.make_room(e.bytes) {
            self.bytes += e.bytes;
            self.hours.insert((hour, Form::Blocks), e);
        }
    }

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

    fn keep(&mut self, hour: i64, form: Form, through: u64, runs: Arc<Runs>) {
        if self.hours.contains_key(&(hour, form)) {
            return;
        }
        let bytes = runs_bytes(&runs);
        if !self.make_room(bytes) {
            return;
        }
        let used = self.tick();
        self.bytes += bytes;
        self.hours.insert(
            (hour, form),
            Entry {
                runs,
                bytes,
                used,
                through,
            },
        );
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

    /// Forgets what is kept of `hours`, their blocks included.
    pub fn changed(&self, hours: impl IntoIterator<Item = i64>) {
        let mut inner = lock(&self.inner);
        for hour in hours {
            inner.drop_changed(hour, true);
        }
        inner.bound_changes();
    }

    /// Records that a batch up to `last` may have repeated known result ids: its runs are
    /// not all new, so they cannot be added to kept blocks from its events. Called before
    /// the batch commits.
    pub fn inexact(&self, last: u64) {
        let mut inner = lock(&self.inner);
        inner.inexact_through = inner.inexact_through.max(last);
    }

    /// Records a committed batch, in stream order: kept blocks of its hours gain its runs
    /// (or are dropped if it was [`Self::inexact`]); what windows cut at its hours is
    /// dropped.
    pub fn committed(&self, c: &Committed<'_>) {
        let mut by_hour: HashMap<i64, HourRuns<'_>> = HashMap::new();
        for &(hour, job, ms, id) in &c.runs {
            by_hour
                .entry(hour)
                .or_default()
                .entry(job)
                .or_default()
                .push((ms, id));
        }
        let mut inner = lock(&self.inner);
        for &hour in &c.hours {
            inner.drop_changed(hour, false);
        }
        for (hour, runs) in by_hour {
            inner.add_to_blocks(hour, c, runs);
        }
        inner.bound_changes();
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
        {
            let mut inner = lock(&self.inner);
            inner.pruned_before = inner.pruned_before.max(hour);
        }
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

    /// Keeps the runs of the window-start `hour` ([`Form::Rows`]), read after `ticket` was
    /// taken, unless the hour changed since.
    pub fn keep_rows(&self, hour: i64, ticket: Ticket, runs: Arc<Runs>) {
        let mut inner = lock(&self.inner);
        if inner.last_change(hour) > ticket.0 {
            return;
        }
        inner.keep(hour, Form::Rows, 0, runs);
    }

    /// Keeps the blocks of `hour` ([`Form::Blocks`]), read when the results were committed
    /// up to stream sequence `through`, unless a batch with runs in that hour was recorded
    /// after it or the hour was pruned.
    pub fn keep_blocks(&self, hour: i64, through: u64, runs: Arc<Runs>) {
        let mut inner = lock(&self.inner);
        if through < inner.last_touch(hour) || hour < inner.pruned_before {
            return;
        }
        inner.keep(hour, Form::Blocks, through, runs);
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
        inner.merged.push((
            (first, last),
            Entry {
                runs,
                bytes,
                used,
                through: 0,
            },
        ));
    }

    /// Bytes of durations kept now.
    pub fn bytes(&self) -> usize {
        lock(&self.inner).bytes
    }

    /// The bytes of the entries kept, counted afresh.
    #[cfg(test)]
    fn recount(&self) -> usize {
        let inner = lock(&self.inner);
        inner
            .hours
            .values()
            .map(|e| runs_bytes(&e.runs))
            .sum::<usize>()
            + inner
                .merged
                .iter()
                .map(|(_, e)| runs_bytes(&e.runs))
                .sum::<usize>()
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
    fn a_start_hour_read_before_a_change_of_it_is_not_kept() {
        let cache = DurationCache::new();
        let t = cache.ticket();
        cache.changed([7]);
        cache.keep_rows(7, t, runs(&[1]));
        assert!(
            cache.hour(7, Form::Rows).is_none(),
            "read before the change"
        );
        cache.keep_rows(8, t, runs(&[1]));
        assert!(
            cache.hour(8, Form::Rows).is_some(),
            "another hour's change does not matter"
        );
        let t = cache.ticket();
        cache.keep_rows(7, t, runs(&[1, 2]));
        assert_eq!(cache.hour(7, Form::Rows).unwrap()["job"].ms, [1, 2]);
        cache.committed(&batch(10, 12, &[(7, "job", 5, "r")], &[7]));
        assert!(
            cache.hour(7, Form::Rows).is_none(),
            "a batch with runs in it drops the hour"
        );
        assert!(cache.hour(8, Form::Rows).is_some());
    }

    fn batch<'a>(first: u64, last: u64, runs: &[AddedRun<'a>], hours: &[i64]) -> Committed<'a> {
        Committed {
            first,
            last,
            runs: runs.to_vec(),
            hours: hours.to_vec(),
        }
    }

    /// A job's kept blocks as the tests compare them: job, durations, sum, longest's id.
    type Job = (String, Vec<i64>, i64, String);

    fn blocks(cache: &DurationCache, hour: i64) -> Option<Vec<Job>> {
        let runs = cache.hour(hour, Form::Blocks)?;
        let mut jobs: Vec<_> = runs
            .iter()
            .map(|(job, r)| {
                let (max_ms, max_id) = r.max.clone().unwrap_or_default();
                assert_eq!(r.ms.iter().max().copied().unwrap_or(0), max_ms);
                (job.clone(), r.ms.clone(), r.sum_ms, max_id)
            })
            .collect();
        jobs.sort();
        Some(jobs)
    }

    fn job(name: &str, ms: &[i64], max_id: &str) -> Job {
        (
            name.to_owned(),
            ms.to_vec(),
            ms.iter().sum(),
            max_id.to_owned(),
        )
    }

    fn read(values: &[i64], max_id: &str) -> Arc<Runs> {
        let mut r = runs(values);
        let max = values.iter().max().copied().unwrap_or(0);
        Arc::make_mut(&mut r)
            .get_mut("job")
            .unwrap()
            .offer_max(max, max_id);
        r
    }

    #[test]
    fn kept_blocks_gain_the_runs_of_later_batches_and_skip_those_they_hold() {
        let cache = DurationCache::new();
        cache.keep_blocks(7, 10, read(&[2, 5, 8], "a"));
        // Committed before the read (it holds them): nothing is added twice.
        cache.committed(&batch(9, 10, &[(7, "job", 4, "z")], &[7]));
        assert_eq!(blocks(&cache, 7).unwrap(), [job("job", &[2, 5, 8], "a")]);
        let before = cache.hour(7, Form::Blocks).unwrap();
        cache.committed(&batch(
            11,
            20,
            &[
                (7, "job", 9, "b"),
                (7, "job", 1, "c"),
                (7, "job", 5, "d"),
                (7, "other", 3, "e"),
                (8, "job", 100, "f"),
            ],
            &[7, 8],
        ));
        assert_eq!(
            blocks(&cache, 7).unwrap(),
            [
                job("job", &[1, 2, 5, 5, 8, 9], "b"),
                job("other", &[3], "e")
            ]
        );
        assert_eq!(
            before["job"].ms,
            [2, 5, 8],
            "a reader's copy stays as it read it"
        );
        assert!(
            blocks(&cache, 8).is_none(),
            "nothing kept of hour 8 to add to"
        );
        cache.committed(&batch(21, 22, &[(7, "job", 9, "x")], &[7]));
        assert_eq!(
            blocks(&cache, 7).unwrap()[0],
            job("job", &[1, 2, 5, 5, 8, 9, 9], "x"),
            "ties go to the larger id"
        );
    }

    #[test]
    fn blocks_read_before_a_batch_in_their_hour_are_not_kept() {
        let cache = DurationCache::new();
        cache.committed(&batch(11, 20, &[(7, "job", 3, "a")], &[7]));
        cache.keep_blocks(7, 10, read(&[1], "x"));
        assert!(blocks(&cache, 7).is_none(), "read before batch 11..20");
        cache.keep_blocks(8, 10, read(&[1], "x"));
        assert!(
            blocks(&cache, 8).is_some(),
            "that batch had no run in hour 8"
        );
        cache.keep_blocks(7, 20, read(&[1, 3], "a"));
        assert_eq!(blocks(&cache, 7).unwrap(), [job("job", &[1, 3], "a")]);
    }

    #[test]
    fn a_batch_that_repeated_result_ids_drops_the_blocks_it_touches() {
        let cache = DurationCache::new();
        cache.keep_blocks(7, 10, read(&[1], "x"));
        cache.keep_blocks(8, 10, read(&[1], "x"));
        cache.inexact(20);
        cache.committed(&batch(11, 20, &[(7, "job", 3, "a")], &[7]));
        assert!(
            blocks(&cache, 7).is_none(),
            "its events do not tell what it added"
        );
        assert!(blocks(&cache, 8).is_some());
        cache.keep_blocks(7, 20, read(&[1, 3], "a"));
        cache.committed(&batch(21, 30, &[(7, "job", 2, "b")], &[7]));
        assert_eq!(
            blocks(&cache, 7).unwrap(),
            [job("job", &[1, 2, 3], "a")],
            "a later batch of new results is added again"
        );
        assert_eq!(cache.bytes(), cache.recount(), "bytes follow the entries");
    }

    #[test]
    fn pruned_blocks_are_not_kept_again() {
        let cache = DurationCache::new();
        cache.keep_blocks(7, 10, read(&[1], "x"));
        cache.forget_before(8);
        assert!(blocks(&cache, 7).is_none());
        cache.keep_blocks(7, 10, read(&[1], "x"));
        assert!(blocks(&cache, 7).is_none(), "read before the pruning");
        cache.keep_blocks(8, 10, read(&[1], "x"));
        assert!(blocks(&cache, 8).is_some());
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
        cache.keep_blocks(3, 0, runs(&[1]));
        cache.keep_rows(9, t, runs(&[1]));
        cache.keep_merged(4, 6, t, runs(&[1]));
        cache.keep_merged(8, 12, t, runs(&[1]));
        cache.forget_before(8);
        assert!(cache.hour(3, Form::Blocks).is_none() && cache.merged(4, 6).is_none());
        assert!(cache.hour(9, Form::Rows).is_some() && cache.merged(8, 12).is_some());
        // A read that started before the pruning is not kept either.
        cache.keep_rows(3, t, runs(&[1]));
        cache.keep_blocks(3, 0, runs(&[1]));
        assert!(cache.hour(3, Form::Rows).is_none() && cache.hour(3, Form::Blocks).is_none());
    }

    #[test]
    fn forgotten_changes_still_refuse_older_reads() {
        let cache = DurationCache::new();
        let t = cache.ticket();
        cache.changed(0..=CHANGES_KEPT as i64);
        let later = cache.ticket();
        cache.keep_rows(5, t, runs(&[1]));
        cache.keep_merged(1, 2, t, runs(&[1]));
        assert!(cache.hour(5, Form::Rows).is_none() && cache.merged(1, 2).is_none());
        cache.keep_rows(5, later, runs(&[1]));
        cache.keep_merged(1, 2, later, runs(&[1]));
        assert!(cache.hour(5, Form::Rows).is_some() && cache.merged(1, 2).is_some());

        // Batches recorded past the bound still refuse blocks read before them.
        let many: Vec<AddedRun<'_>> = (0..=CHANGES_KEPT as i64)
            .map(|h| (h, "job", 1, "r"))
            .collect();
        cache.committed(&batch(11, 20, &many, &[]));
        cache.keep_blocks(5, 10, runs(&[1]));
        assert!(cache.hour(5, Form::Blocks).is_none());
        cache.keep_blocks(5, 20, runs(&[1]));
        assert!(cache.hour(5, Form::Blocks).is_some());
    }

    #[test]
    fn memory_stays_within_the_budget_dropping_the_least_recently_used() {
        let cache = DurationCache::new();
        let values: Vec<i64> = (0..1_000_000).collect();
        for hour in 0..20 {
            cache.keep_blocks(hour, 0, runs(&values));
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
        cache.keep_blocks(100, 0, runs(&too_big));
        assert!(cache.hour(100, Form::Blocks).is_none());
        assert!(cache.bytes() <= CACHE_BYTES);
    }
}
