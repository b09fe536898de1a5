//! The dispatcher's state machine: which batch goes to which shard, what a
//! crash puts back, and what a checkpoint may claim.
//!
//! It does no I/O, so every rule here is unit-tested without processes.
//!
//! # Rules
//!
//! - Pages are cut into batches that never span two pages. Each batch
//!   remembers the index of every name in its page, so an acknowledgement
//!   marks exactly those names done in the page's bitmap.
//! - Each shard holds at most `window` unacknowledged batches that still
//!   have names to fetch now. The next batch goes to the available shard
//!   with the most free room. A batch whose every remaining name waits on a
//!   retry timer is *stalled* (the worker says so with the names done so
//!   far, which count at once): it leaves the window, so throttled names do
//!   not throttle the shard, but stays unacknowledged until its
//!   `BatchDone`. At most [`MAX_STALLED`] batches per shard are stalled;
//!   beyond that a stalled batch keeps its window place, which bounds the
//!   memory a server that throttles everything can cost.
//! - When a shard goes down, its batches go back to the front of the queue,
//!   each marked with one more crash. A batch that has crashed once is
//!   *suspect*: it is sent only to a shard that holds nothing else, so a
//!   second crash is attributed to it alone. A suspect batch that crashes
//!   again is split into up to [`SPLIT_WAYS`] parts; a single name that
//!   crashes its worker twice while held alone is recorded as failed.
//! - Batches are cut by cost as well as by count: a batch's names cost at
//!   most [`MAX_BATCH_COST`] ([`batch_cost`]: each name's bytes plus room for
//!   the longest failure reason), so no frame about a batch can exceed the
//!   frame limit, whatever `--batch-size` and the names' lengths.
//! - A checkpoint ([`Snapshot`]) holds the position of the earliest page not
//!   fully done, and for the pages after it which are complete (as runs of
//!   offsets) and which names of partly done pages are done (as bitmaps),
//!   each with a [`PageFingerprint`] of the names the page listed. A resume
//!   lists again from the position and skips exactly those names, so only
//!   work that was in flight is fetched twice, however far one straggling
//!   batch falls behind the others. A page whose names on resume do not
//!   match its fingerprint (names replaced, added, removed or reordered) is
//!   not done: it is fetched whole and counted in
//!   [`Scheduler::pages_changed`]. So a resume never skips a name the
//!   resumed listing contains. Counters count every acknowledgement once: a
//!   skipped name is never counted again (the names of a changed page that
//!   were done before the resume may be counted twice).
//! - With *affinity* (the SQLite sink), a name belongs to shard
//!   `hash(name) % shards`: pages are cut into batches per home shard, and a
//!   batch goes only to its home shard, also after a crash or a resume. So a
//!   name is written to exactly one database, and fetching it again only
//!   replaces its row. Only when a shard is parked do its batches lose their
//!   home and go anywhere (a name may then be in two databases).
//! - Repeated names are dropped within a bounded memory: a name listed
//!   earlier on the same page, or on the page just before, is neither
//!   fetched nor counted again (a server that repeats the previous page, or
//!   a page boundary that moved, is harmless). Only 128-bit fingerprints of
//!   those two pages are kept, so the check allocates nothing per name. A
//!   name repeated further apart is fetched twice, which is harmless
//!   because every write is idempotent, and counted twice.

use crate::filter::NameFilter;
use bulkget_protocol::frame::{batch_cost, MAX_BATCH_COST};
use bulkget_protocol::{BatchId, Failure, Names};
use std::collections::{HashMap, HashSet, VecDeque};

/// How many parts a suspect batch is split into when it crashes again.
/// Sixteen isolates one poison name in a batch of 256 in four crashes.
pub const SPLIT_WAYS: usize = 16;

/// Stalled batches a shard may hold outside its window. With batches of
/// 1,024 names (the default) this lets a worker keep about a million names
/// waiting on retry timers (tens of MB at most) while it goes on with new
/// work.
pub const MAX_STALLED: usize = 1024;

/// The reason recorded for a name that crashed its worker twice.
pub const CRASH_REASON: &str = "worker crashed twice while fetching this name alone";

// The checkpoint's types are the file contract's (`bulkget-stats`): the
// scheduler records into the very types `checkpoint.json` is read into.
pub use bulkget_stats::checkpoint::{
    CompleteRun, DoneAfter, ListPosition, PageFingerprint, PartialPage, Totals,
};

/// Folds the fingerprints of a page's names, in order, into the page's.
struct PageHasher(u64);

impl PageHasher {
    fn new() -> PageHasher {
        PageHasher(0x6a09_e667_f3bc_c908)
    }

    /// Adds the next name's fingerprint. The finaliser between steps makes
    /// the result depend on the order.
    fn add(&mut self, name: u128) {
        self.0 = mix64(self.0 ^ name as u64) ^ (name >> 64) as u64;
    }

    fn finish(self, len: usize) -> PageFingerprint {
        PageFingerprint(mix64(self.0 ^ len as u64))
    }
}

/// The fingerprint of a page of `names`.
pub fn page_fingerprint(names: &Names) -> PageFingerprint {
    let mut h = PageHasher::new();
    for name in names.iter() {
        h.add(fingerprint(name));
    }
    h.finish(names.len())
}

/// splitmix64's finaliser: a bijection that mixes every bit into every other.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a checkpoint records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub position: ListPosition,
    pub totals: Totals,
    pub done_after: DoneAfter,
}

/// A batch as the coordinator keeps it until it is acknowledged.
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: BatchId,
    page_seq: u64,
    pub names: Names,
    /// The index of each name in its page.
    idx: Vec<u32>,
    /// Worker deaths while this batch was in flight.
    pub crashes: u32,
    /// The only shard this batch may go to (affinity), if any.
    home: Option<usize>,
    /// Reported stalled and moved out of its shard's window.
    stalled: bool,
}

#[derive(Debug)]
struct PageTrack {
    seq: u64,
    /// The position this page was listed from, for the checkpoint.
    position: ListPosition,
    len: u32,
    /// The fingerprint of the names listed, for the checkpoint.
    fingerprint: PageFingerprint,
    unacked: u32,
    /// Bit `i` is set when name `i` is done (ok, failed, repeated, or done
    /// before a resume).
    done: Vec<u64>,
    /// Names this page adds to `names_listed` when it completes.
    names_listed: u64,
    /// Names this page adds to `names_excluded` when it completes.
    names_excluded: u64,
}

#[derive(Debug, Default)]
struct Shard {
    outstanding: HashMap<BatchId, Batch>,
    /// How many of `outstanding` are stalled (outside the window).
    stalled: usize,
    /// Holds a suspect batch, so it must get nothing else.
    isolated: bool,
    available: bool,
}

/// What a resumed checkpoint says of a page after its position.
#[derive(Debug)]
enum Recorded {
    Complete(PageFingerprint),
    Partial(PartialPage),
}

/// A batch being filled while a page is cut.
struct OpenBatch {
    names: Names,
    idx: Vec<u32>,
    /// The [`batch_cost`] of its names.
    cost: usize,
}

/// The dispatcher's state. See the module documentation for its rules.
#[derive(Debug)]
pub struct Scheduler {
    window: usize,
    batch_size: usize,
    next_batch_id: BatchId,
    next_page_seq: u64,
    pending: VecDeque<Batch>,
    shards: Vec<Shard>,
    pages: VecDeque<PageTrack>,
    /// Where the page after the last one added would be listed from.
    after_last: ListPosition,
    /// `names_listed` and `pages_done` over completed pages.
    durable: Totals,
    /// Every acknowledgement, and every name listed: what progress shows.
    live: Totals,
    requeued: u64,
    /// What a resumed checkpoint says of the pages after its position, by
    /// offset; each entry is taken when its page is listed again.
    skip: HashMap<u64, Recorded>,
    /// Pages listed on resume with other names than the checkpoint's
    /// fingerprint, so fetched whole.
    pages_changed: u64,
    /// Fingerprints of the previous page's names, to drop its repeats.
    recent: FingerprintSet,
    /// The set the next page's fingerprints go into: the one before
    /// `recent`, emptied and kept, so no page allocates a set of its own.
    spare: FingerprintSet,
    /// Names dropped as repeats.
    repeated: u64,
    /// Route each name to the shard its hash picks (see the module docs).
    affinity: bool,
    parked: Vec<bool>,
    /// `--include` and `--exclude`, if any were given.
    filter: Option<NameFilter>,
}

impl Scheduler {
    pub fn new(shards: usize, window: usize, batch_size: usize, start: ListPosition) -> Scheduler {
        Scheduler {
            window: window.max(1),
            batch_size: batch_size.max(1),
            next_batch_id: 1,
            next_page_seq: 0,
            pending: VecDeque::new(),
            shards: (0..shards).map(|_| Shard::default()).collect(),
            pages: VecDeque::new(),
            after_last: start,
            durable: Totals::default(),
            live: Totals::default(),
            requeued: 0,
            skip: HashMap::new(),
            pages_changed: 0,
            recent: FingerprintSet::default(),
            spare: FingerprintSet::default(),
            repeated: 0,
            affinity: false,
            parked: vec![false; shards],
            filter: None,
        }
    }

    /// Routes every name to the shard its hash picks, for sinks that keep
    /// one store per shard.
    pub fn with_affinity(mut self, affinity: bool) -> Scheduler {
        self.affinity = affinity;
        self
    }

    /// Fetches only the names `filter` keeps; the others are done as soon
    /// as they are listed and counted in `names_excluded`.
    pub fn with_filter(mut self, filter: Option<NameFilter>) -> Scheduler {
        self.filter = filter;
        self
    }

    /// The shard a name belongs to under affinity. Stable across runs and
    /// versions (it derives from `bulkget_names::stable_hash`).
    pub fn home_of(&self, name: &str) -> usize {
        (bulkget_names::stable_hash(name) % self.shards.len() as u64) as usize
    }

    /// A shard was parked: its batches may go anywhere from now on.
    pub fn park(&mut self, shard: usize) {
        self.parked[shard] = true;
        for b in self.pending.iter_mut() {
            if b.home == Some(shard) {
                b.home = None;
            }
        }
    }

    /// Continues from a checkpoint: its counters, and the names after its
    /// position that are already done.
    pub fn resume(mut self, totals: Totals, done_after: DoneAfter) -> Scheduler {
        self.durable = totals;
        self.live = totals;
        self.skip.clear();
        for run in done_after.complete {
            for (k, fp) in run.fingerprints.into_iter().enumerate() {
                self.skip
                    .insert(run.first + k as u64, Recorded::Complete(fp));
            }
        }
        for p in done_after.partial {
            self.skip.insert(p.offset, Recorded::Partial(p));
        }
        self
    }

    /// Adds a listed page. Unsafe names fail here and never reach a worker;
    /// repeats of a name on this page or the previous one are dropped;
    /// names the filter leaves out are counted as excluded and done;
    /// names a resumed checkpoint says are done are skipped, if the page
    /// lists the same names as it did then. Returns the failures to record.
    pub fn add_page(&mut self, names: Names, next: Option<String>) -> Vec<Failure> {
        let seq = self.next_page_seq;
        self.next_page_seq += 1;
        let position = std::mem::replace(
            &mut self.after_last,
            match next {
                Some(m) => ListPosition::Marker(m),
                None => ListPosition::Done,
            },
        );
        let len = names.len();
        let mut done = vec![0u64; len.div_ceil(64)];
        if let Some(recorded) = self.skip.remove(&seq) {
            let listed = page_fingerprint(&names);
            match recorded {
                Recorded::Complete(fp) if fp == listed => {
                    done.iter_mut().for_each(|w| *w = u64::MAX);
                }
                Recorded::Partial(p)
                    if p.fingerprint == listed
                        && p.len as usize == len
                        && p.done.len() == done.len() =>
                {
                    done = p.done;
                }
                // The server lists this page differently than before the
                // resume: none of its names is known to be done, so all of
                // them are fetched (writes are idempotent; the names done
                // before may be counted twice).
                _ => self.pages_changed += 1,
            }
        }
        let mut failures = Vec::new();
        let mut repeats = 0u64;
        let mut excluded = 0u64;
        let mut seen = std::mem::take(&mut self.spare);
        seen.clear();
        if seen.capacity() > 4 * len.max(1024) {
            // One huge page must not pin its set's memory for the rest of
            // the run.
            seen.shrink_to(len);
        }
        seen.reserve(len);
        let mut page_hash = PageHasher::new();
        let mut page_batches = 0u32;
        // One open batch per home shard (just one without affinity).
        let groups = if self.affinity { self.shards.len() } else { 1 };
        // Room for a full batch, or for this group's share of the page.
        let cap = self.batch_size.min(len.div_ceil(groups) + 8);
        let cap_bytes = cap * (names.text_len() / len.max(1) + 1);
        let new_batch = || OpenBatch {
            names: Names::with_capacity(cap, cap_bytes),
            idx: Vec::with_capacity(cap),
            cost: 0,
        };
        let mut open: Vec<OpenBatch> = (0..groups).map(|_| new_batch()).collect();
        for (i, name) in names.iter().enumerate() {
            let fp = fingerprint(name);
            page_hash.add(fp);
            if self.recent.contains(&fp) || !seen.insert(fp) {
                repeats += 1;
                set(&mut done, i);
                continue;
            }
            // Before the resume's done bits, so that a page counts its
            // excluded names the same every time it is listed, as it counts
            // `names_listed`.
            if self.filter.as_ref().is_some_and(|f| !f.keeps(name)) {
                excluded += 1;
                set(&mut done, i);
                continue;
            }
            if is_set(&done, i) {
                continue;
            }
            if let Err(why) = bulkget_names::check(name) {
                set(&mut done, i);
                self.live.files_failed += 1;
                failures.push(Failure::new(name, why.to_string(), None));
                continue;
            }
            let g = if self.affinity { self.home_of(name) } else { 0 };
            let cost = batch_cost(name);
            if !open[g].names.is_empty() && open[g].cost + cost > MAX_BATCH_COST {
                let full = std::mem::replace(&mut open[g], new_batch());
                self.push_batch(seq, full, self.home(g));
                page_batches += 1;
            }
            let batch = &mut open[g];
            batch.names.push(name);
            batch.idx.push(i as u32);
            batch.cost += cost;
            if batch.names.len() == self.batch_size {
                let full = std::mem::replace(&mut open[g], new_batch());
                self.push_batch(seq, full, self.home(g));
                page_batches += 1;
            }
        }
        for (g, batch) in open.into_iter().enumerate() {
            if !batch.names.is_empty() {
                self.push_batch(seq, batch, self.home(g));
                page_batches += 1;
            }
        }
        self.spare = std::mem::replace(&mut self.recent, seen);
        self.repeated += repeats;
        let listed = len as u64 - repeats - excluded;
        self.live.names_listed += listed;
        self.live.names_excluded += excluded;
        self.pages.push_back(PageTrack {
            seq,
            position,
            len: len as u32,
            fingerprint: page_hash.finish(len),
            unacked: page_batches,
            done,
            names_listed: listed,
            names_excluded: excluded,
        });
        self.complete_pages();
        failures
    }

    /// The home for batches of group `g`: none without affinity, and none
    /// for a parked shard.
    fn home(&self, g: usize) -> Option<usize> {
        (self.affinity && !self.parked[g]).then_some(g)
    }

    fn push_batch(&mut self, page_seq: u64, batch: OpenBatch, home: Option<usize>) {
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        self.pending.push_back(Batch {
            id,
            page_seq,
            names: batch.names,
            idx: batch.idx,
            crashes: 0,
            home,
            stalled: false,
        });
    }

    /// Batches waiting for room in some shard's window.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Batches sent and not acknowledged, per shard (stalled ones too).
    pub fn in_flight(&self, shard: usize) -> usize {
        self.shards[shard].outstanding.len()
    }

    /// Batches of a shard that are stalled on retry timers.
    pub fn stalled(&self, shard: usize) -> usize {
        self.shards[shard].stalled
    }

    pub fn requeued(&self) -> u64 {
        self.requeued
    }

    /// Names dropped because the same or the previous page listed them.
    pub fn repeated(&self) -> u64 {
        self.repeated
    }

    /// Pages listed on resume with other names than the checkpoint
    /// recorded, and so fetched whole.
    pub fn pages_changed(&self) -> u64 {
        self.pages_changed
    }

    /// Marks a shard as able (its worker said ready) or unable to take work.
    pub fn set_available(&mut self, shard: usize, available: bool) {
        self.shards[shard].available = available;
    }

    /// Picks the next batch to send and moves it into its shard's window.
    /// Returns the shard and the batch to encode.
    ///
    /// The earliest batch that some shard can take goes first, so a batch
    /// waiting for its home shard does not hold back the others. A suspect
    /// batch that cannot be placed yet reserves the shards it may go to
    /// (its home, or every shard), so that they drain and it is not starved
    /// by the work behind it.
    pub fn assign(&mut self) -> Option<(usize, &Batch)> {
        let window = self.window;
        let n = self.shards.len();
        let mut reserved = vec![false; n];
        let mut found = None;
        for (pos, b) in self.pending.iter().enumerate() {
            let suspect = b.crashes > 0;
            let fits = |i: usize| {
                let s = &self.shards[i];
                !reserved[i]
                    && s.available
                    && !s.isolated
                    && if suspect {
                        s.outstanding.is_empty()
                    } else {
                        s.outstanding.len() - s.stalled < window
                    }
            };
            let shard = match b.home {
                Some(h) => fits(h).then_some(h),
                None => (0..n).filter(|&i| fits(i)).max_by_key(|&i| {
                    let s = &self.shards[i];
                    (
                        window - (s.outstanding.len() - s.stalled),
                        std::cmp::Reverse(i),
                    )
                }),
            };
            if let Some(shard) = shard {
                found = Some((pos, shard));
                break;
            }
            if suspect {
                match b.home {
                    Some(h) => reserved[h] = true,
                    None => return None,
                }
            }
        }
        let (pos, shard) = found?;
        let batch = self.pending.remove(pos).expect("found above");
        let id = batch.id;
        let s = &mut self.shards[shard];
        s.isolated = batch.crashes > 0;
        s.outstanding.insert(id, batch);
        Some((shard, &s.outstanding[&id]))
    }

    /// Records an acknowledgement. Returns `None` if the batch is not
    /// outstanding on that shard (a protocol error by the worker), else the
    /// failures to record.
    pub fn batch_done(
        &mut self,
        shard: usize,
        id: BatchId,
        ok: u32,
        present: u32,
        bytes: u64,
        failures: Vec<Failure>,
    ) -> Option<Vec<Failure>> {
        let s = &mut self.shards[shard];
        let batch = s.outstanding.remove(&id)?;
        if batch.stalled {
            s.stalled -= 1;
        }
        if s.outstanding.is_empty() {
            s.isolated = false;
        }
        self.count_acknowledged(ok, present, bytes, &failures);
        let page = self.page_mut(batch.page_seq);
        page.unacked -= 1;
        for &i in &batch.idx {
            set(&mut page.done, i as usize);
        }
        self.complete_pages();
        Some(failures)
    }

    /// Records a stall report: the names of batch `id` outside `waiting`
    /// are done (`ok` of them, `bytes` in all, `present` found in the sink by
    /// a refresh, and `failures`), and the
    /// batch shrinks to the names in `waiting`, which is all a crash would
    /// now put back. The batch leaves the window unless [`MAX_STALLED`] are
    /// stalled already. Returns `None` if the report does not fit the batch
    /// (unknown, already stalled, or `waiting` not increasing positions of
    /// it): a protocol error by the worker.
    // The fields of the worker's `BatchStalled`, one argument each, as
    // `batch_done` takes those of `BatchDone`.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_stalled(
        &mut self,
        shard: usize,
        id: BatchId,
        ok: u32,
        present: u32,
        bytes: u64,
        failures: Vec<Failure>,
        waiting: &[u32],
    ) -> Option<Vec<Failure>> {
        let s = &mut self.shards[shard];
        let batch = s.outstanding.get_mut(&id)?;
        let increasing = waiting.windows(2).all(|w| w[0] < w[1]);
        let in_range = waiting
            .last()
            .is_some_and(|&last| (last as usize) < batch.names.len());
        if batch.stalled || !increasing || !in_range {
            return None;
        }
        // Increasing positions in range: `waiting` is no longer than the batch.
        let finished = batch.names.len() - waiting.len();
        if ok as usize + present as usize + failures.len() != finished {
            return None;
        }
        let mut keep = waiting.iter().peekable();
        let mut done_idx = Vec::with_capacity(finished);
        let names = std::mem::take(&mut batch.names);
        let idx = std::mem::take(&mut batch.idx);
        batch.names = Names::with_capacity(waiting.len(), 0);
        batch.idx = Vec::with_capacity(waiting.len());
        for (pos, (name, i)) in names.iter().zip(idx).enumerate() {
            if keep.next_if(|&&w| w as usize == pos).is_some() {
                batch.names.push(name);
                batch.idx.push(i);
            } else {
                done_idx.push(i);
            }
        }
        if s.stalled < MAX_STALLED {
            batch.stalled = true;
            s.stalled += 1;
        }
        let page_seq = batch.page_seq;
        self.count_acknowledged(ok, present, bytes, &failures);
        let page = self.page_mut(page_seq);
        for i in done_idx {
            set(&mut page.done, i as usize);
        }
        Some(failures)
    }

    /// Counts what a `BatchDone` or a stall report says is done.
    fn count_acknowledged(&mut self, ok: u32, present: u32, bytes: u64, failures: &[Failure]) {
        self.live.files_ok += u64::from(ok);
        self.live.files_present += u64::from(present);
        self.live.files_failed += failures.len() as u64;
        self.live.bytes += bytes;
    }

    /// Whether the shard holds one suspect batch and nothing else. A crash
    /// of its worker now is blamed on that batch ([`Scheduler::shard_down`]
    /// splits it or fails its name), so it says nothing about the shard.
    pub fn holds_suspect_alone(&self, shard: usize) -> bool {
        self.shards[shard].isolated
    }

    /// A shard's worker died: its batches go back to the front of the queue
    /// with one more crash each; suspects that crashed again are split, and
    /// single names that crashed twice fail. Returns the failures to record.
    pub fn shard_down(&mut self, shard: usize) -> Vec<Failure> {
        let s = &mut self.shards[shard];
        s.available = false;
        s.isolated = false;
        s.stalled = 0;
        let mut batches: Vec<Batch> = s.outstanding.drain().map(|(_, b)| b).collect();
        // Keep the original order so requeued work stays in listing order.
        batches.sort_by_key(|b| b.id);
        let mut requeue = Vec::new();
        let mut failures = Vec::new();
        for mut b in batches {
            b.crashes += 1;
            b.stalled = false;
            self.requeued += 1;
            // A name alone is failed only once it has crashed its worker
            // twice while held alone (its parts start suspect, at one
            // crash), so an outside killer that happens to land on an
            // isolated name once does not fail an innocent one.
            let verdict_at = if b.names.len() == 1 { 3 } else { 2 };
            if b.crashes < verdict_at {
                requeue.push(b);
            } else if b.names.len() == 1 {
                let page = self.page_mut(b.page_seq);
                page.unacked -= 1;
                set(&mut page.done, b.idx[0] as usize);
                self.live.files_failed += 1;
                failures.push(Failure::new(&b.names[0], CRASH_REASON, None));
            } else {
                let parts = split(b.names, b.idx, SPLIT_WAYS);
                self.page_mut(b.page_seq).unacked += parts.len() as u32 - 1;
                for (names, idx) in parts {
                    let id = self.next_batch_id;
                    self.next_batch_id += 1;
                    // A part is still suspect: one more crash splits it again.
                    requeue.push(Batch {
                        id,
                        page_seq: b.page_seq,
                        names,
                        idx,
                        crashes: 1,
                        home: b.home,
                        stalled: false,
                    });
                }
            }
        }
        for b in requeue.into_iter().rev() {
            self.pending.push_front(b);
        }
        self.complete_pages();
        failures
    }

    fn page_mut(&mut self, seq: u64) -> &mut PageTrack {
        let first = self
            .pages
            .front()
            .expect("an outstanding batch has its page")
            .seq;
        &mut self.pages[(seq - first) as usize]
    }

    fn complete_pages(&mut self) {
        while self.pages.front().is_some_and(|p| p.unacked == 0) {
            let p = self.pages.pop_front().expect("checked");
            self.durable.names_listed += p.names_listed;
            self.durable.names_excluded += p.names_excluded;
            self.durable.pages_done += 1;
        }
    }

    /// What a checkpoint may claim now.
    pub fn snapshot(&self) -> Snapshot {
        let position = match self.pages.front() {
            Some(p) => p.position.clone(),
            None => self.after_last.clone(),
        };
        let mut done_after = DoneAfter::default();
        if let Some(front) = self.pages.front() {
            for p in &self.pages {
                let offset = p.seq - front.seq;
                if p.unacked == 0 {
                    match done_after.complete.last_mut() {
                        Some(run) if run.first + run.fingerprints.len() as u64 == offset => {
                            run.fingerprints.push(p.fingerprint)
                        }
                        _ => done_after.complete.push(CompleteRun {
                            first: offset,
                            fingerprints: vec![p.fingerprint],
                        }),
                    }
                } else if p.done.iter().any(|w| *w != 0) {
                    done_after.partial.push(PartialPage {
                        offset,
                        len: p.len,
                        fingerprint: p.fingerprint,
                        done: p.done.clone(),
                    });
                }
            }
        }
        Snapshot {
            position,
            totals: Totals {
                files_ok: self.live.files_ok,
                files_failed: self.live.files_failed,
                bytes: self.live.bytes,
                names_listed: self.durable.names_listed,
                names_excluded: self.durable.names_excluded,
                pages_done: self.durable.pages_done,
                retries: self.live.retries,
                files_present: self.live.files_present,
            },
            done_after,
        }
    }

    pub fn live_totals(&self) -> Totals {
        self.live
    }

    /// Counts the retried attempts a worker reported with an
    /// acknowledgement that [`Scheduler::batch_done`] accepted. The workers'
    /// own counters restart with each process; this total does not.
    pub fn add_retries(&mut self, retries: u32) {
        self.live.retries += u64::from(retries);
    }

    /// Nothing is queued or in flight and the listing has ended.
    pub fn is_finished(&self) -> bool {
        self.after_last == ListPosition::Done && self.pages.is_empty() && self.pending.is_empty()
    }

    /// Nothing is in flight on any shard.
    pub fn nothing_in_flight(&self) -> bool {
        self.shards.iter().all(|s| s.outstanding.is_empty())
    }
}

fn set(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn is_set(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

/// A set of fingerprints. They are hashes already, so the set uses their low
/// 64 bits as they are instead of hashing them again with SipHash, which
/// cost 5% of the coordinator's CPU in the profile (docs/BENCHMARKS.md).
type FingerprintSet = HashSet<u128, std::hash::BuildHasherDefault<Identity>>;

#[derive(Default)]
struct Identity(u64);

impl std::hash::Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u128 keys are hashed; keep whatever bytes come, folded.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// A 128-bit fingerprint of a name from two independent 64-bit hashes. Two
/// different names match with probability about 2^-128 per pair: over a
/// billion-file run, no real name is ever mistaken for a repeat.
fn fingerprint(name: &str) -> u128 {
    let a = bulkget_names::stable_hash(name);
    let mut h: u64 = 0x84222325cbf29ce4;
    for &b in name.as_bytes() {
        h = (h ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 29;
    }
    ((a as u128) << 64) | (h ^ (name.len() as u64)) as u128
}

/// Splits names (with their page indices) into at most `ways` parts of
/// nearly equal size.
fn split(names: Names, idx: Vec<u32>, ways: usize) -> Vec<(Names, Vec<u32>)> {
    let n = names.len();
    let ways = ways.min(n).max(1);
    let mut parts = Vec::with_capacity(ways);
    let mut names = names.iter();
    let mut idx = idx.into_iter();
    for i in 0..ways {
        let size = n / ways + usize::from(i < n % ways);
        parts.push((
            names.by_ref().take(size).collect(),
            idx.by_ref().take(size).collect(),
        ));
    }
    parts
}

#[cfg(test)]
mod tests;
