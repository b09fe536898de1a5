//! The dispatcher's state machine: which batch goes to which shard, what a
//! crash puts back, and what the checkpoint may claim.
//!
//! It does no I/O, so every rule here is unit-tested without processes.
//!
//! # Rules
//!
//! - Pages are cut into batches that never span two pages, so a page is
//!   complete exactly when all its batches are acknowledged.
//! - Each shard holds at most `window` unacknowledged batches. The next batch
//!   goes to the available shard with the most free room.
//! - When a shard goes down, its batches go back to the front of the queue,
//!   each marked with one more crash. A batch that has crashed once is
//!   *suspect*: it is sent only to a shard that holds nothing else, so a
//!   second crash is attributed to it alone. A suspect batch that crashes
//!   again is split into up to [`SPLIT_WAYS`] parts; a single name that
//!   crashes twice is recorded as failed.
//! - The checkpoint position is the marker of the earliest page not fully
//!   acknowledged; its counters cover fully acknowledged pages only, so a
//!   resume that lists that page again counts each file exactly once.

use bulkget_protocol::{BatchId, Failure};
use std::collections::{HashMap, VecDeque};

/// How many parts a suspect batch is split into when it crashes again.
/// Sixteen isolates one poison name in a batch of 256 in four crashes.
pub const SPLIT_WAYS: usize = 16;

/// The reason recorded for a name that crashed its worker twice.
pub const CRASH_REASON: &str = "worker crashed while fetching this name (twice)";

/// Where listing starts or resumes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ListPosition {
    /// At `GET /list`.
    Start,
    /// At `GET /list?next-marker=...`.
    Marker(String),
    /// The listing has ended.
    Done,
}

/// Files counted by acknowledgements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub files_ok: u64,
    pub files_failed: u64,
    pub bytes: u64,
    pub names_listed: u64,
    pub pages_done: u64,
}

/// A batch as the coordinator keeps it until it is acknowledged.
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: BatchId,
    page_seq: u64,
    pub names: Vec<String>,
    /// Worker deaths while this batch was in flight.
    pub crashes: u32,
}

#[derive(Debug)]
struct PageTrack {
    seq: u64,
    /// The position this page was listed from, for the checkpoint.
    position: ListPosition,
    unacked: u32,
    totals: Totals,
    failures: Vec<Failure>,
}

#[derive(Debug, Default)]
struct Shard {
    outstanding: HashMap<BatchId, Batch>,
    /// Holds a suspect batch, so it must get nothing else.
    isolated: bool,
    available: bool,
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
    /// Counters over completed pages only: what a checkpoint may claim.
    durable: Totals,
    /// Counters over every acknowledgement: what progress shows.
    live: Totals,
    requeued: u64,
}

/// The pages completed by an acknowledgement, in order: their failures are
/// ready for `failed.jsonl`.
pub type CompletedFailures = Vec<Failure>;

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
        }
    }

    /// Starts from a checkpoint's counters on resume.
    pub fn with_totals(mut self, totals: Totals) -> Scheduler {
        self.durable = totals;
        self.live = totals;
        self
    }

    /// Adds a listed page. Unsafe names fail here and never reach a worker.
    /// Returns the failures of pages this completed (a page with no safe
    /// names completes at once).
    pub fn add_page(&mut self, names: Vec<String>, next: Option<String>) -> CompletedFailures {
        let seq = self.next_page_seq;
        self.next_page_seq += 1;
        let position = std::mem::replace(
            &mut self.after_last,
            match next {
                Some(m) => ListPosition::Marker(m),
                None => ListPosition::Done,
            },
        );
        let mut page = PageTrack {
            seq,
            position,
            unacked: 0,
            totals: Totals {
                names_listed: names.len() as u64,
                pages_done: 1,
                ..Totals::default()
            },
            failures: Vec::new(),
        };
        self.live.names_listed += names.len() as u64;
        let mut batch: Vec<String> = Vec::with_capacity(self.batch_size.min(names.len()));
        for name in names {
            if let Err(why) = bulkget_names::check(&name) {
                page.totals.files_failed += 1;
                self.live.files_failed += 1;
                page.failures.push(Failure {
                    name,
                    reason: why.to_string(),
                    status: None,
                });
                continue;
            }
            batch.push(name);
            if batch.len() == self.batch_size {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(self.batch_size));
                self.push_batch(seq, full);
                page.unacked += 1;
            }
        }
        if !batch.is_empty() {
            self.push_batch(seq, batch);
            page.unacked += 1;
        }
        self.pages.push_back(page);
        self.complete_pages()
    }

    fn push_batch(&mut self, page_seq: u64, names: Vec<String>) {
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        self.pending.push_back(Batch {
            id,
            page_seq,
            names,
            crashes: 0,
        });
    }

    /// Batches waiting for room in some shard's window.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Batches sent and not acknowledged, per shard.
    pub fn in_flight(&self, shard: usize) -> usize {
        self.shards[shard].outstanding.len()
    }

    pub fn requeued(&self) -> u64 {
        self.requeued
    }

    /// Marks a shard as able (its worker said ready) or unable to take work.
    pub fn set_available(&mut self, shard: usize, available: bool) {
        self.shards[shard].available = available;
    }

    pub fn is_available(&self, shard: usize) -> bool {
        self.shards[shard].available
    }

    /// Picks the next batch to send and moves it into its shard's window.
    /// Returns the shard and the batch to encode.
    pub fn assign(&mut self) -> Option<(usize, &Batch)> {
        let front = self.pending.front()?;
        let suspect = front.crashes > 0;
        let window = self.window;
        let shard = self
            .shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.available && !s.isolated)
            .filter(|(_, s)| {
                if suspect {
                    s.outstanding.is_empty()
                } else {
                    s.outstanding.len() < window
                }
            })
            .max_by_key(|(i, s)| (window - s.outstanding.len(), std::cmp::Reverse(*i)))
            .map(|(i, _)| i)?;
        let batch = self.pending.pop_front().expect("front exists");
        let id = batch.id;
        let s = &mut self.shards[shard];
        s.isolated = suspect;
        s.outstanding.insert(id, batch);
        Some((shard, &s.outstanding[&id]))
    }

    /// Records an acknowledgement. Returns `None` if the batch is not
    /// outstanding on that shard (a protocol error by the worker), else the
    /// failures of the pages it completed.
    pub fn batch_done(
        &mut self,
        shard: usize,
        id: BatchId,
        ok: u32,
        bytes: u64,
        failures: Vec<Failure>,
    ) -> Option<CompletedFailures> {
        let s = &mut self.shards[shard];
        let batch = s.outstanding.remove(&id)?;
        if s.outstanding.is_empty() {
            s.isolated = false;
        }
        let page = self.page_mut(batch.page_seq);
        page.unacked -= 1;
        page.totals.files_ok += ok as u64;
        page.totals.files_failed += failures.len() as u64;
        page.totals.bytes += bytes;
        self.live.files_ok += ok as u64;
        self.live.files_failed += failures.len() as u64;
        self.live.bytes += bytes;
        self.page_mut(batch.page_seq).failures.extend(failures);
        Some(self.complete_pages())
    }

    /// A shard's worker died: its batches go back to the front of the queue
    /// with one more crash each; suspects that crashed again are split, and
    /// single names that crashed twice fail. Returns the failures of pages
    /// this completed.
    pub fn shard_down(&mut self, shard: usize) -> CompletedFailures {
        let s = &mut self.shards[shard];
        s.available = false;
        s.isolated = false;
        let mut batches: Vec<Batch> = s.outstanding.drain().map(|(_, b)| b).collect();
        // Keep the original order so requeued work stays in listing order.
        batches.sort_by_key(|b| b.id);
        let mut requeue = Vec::new();
        for mut b in batches {
            b.crashes += 1;
            self.requeued += 1;
            if b.crashes < 2 {
                requeue.push(b);
            } else if b.names.len() == 1 {
                let name = b.names.pop().expect("one name");
                let page = self.page_mut(b.page_seq);
                page.unacked -= 1;
                page.totals.files_failed += 1;
                page.failures.push(Failure {
                    name,
                    reason: CRASH_REASON.to_string(),
                    status: None,
                });
                self.live.files_failed += 1;
            } else {
                let parts = split(b.names, SPLIT_WAYS);
                self.page_mut(b.page_seq).unacked += parts.len() as u32 - 1;
                for names in parts {
                    let id = self.next_batch_id;
                    self.next_batch_id += 1;
                    // A part is still suspect: one more crash splits it again.
                    requeue.push(Batch {
                        id,
                        page_seq: b.page_seq,
                        names,
                        crashes: 1,
                    });
                }
            }
        }
        for b in requeue.into_iter().rev() {
            self.pending.push_front(b);
        }
        self.complete_pages()
    }

    fn page_mut(&mut self, seq: u64) -> &mut PageTrack {
        let first = self
            .pages
            .front()
            .expect("an outstanding batch has its page")
            .seq;
        &mut self.pages[(seq - first) as usize]
    }

    fn complete_pages(&mut self) -> CompletedFailures {
        let mut failures = Vec::new();
        while self.pages.front().is_some_and(|p| p.unacked == 0) {
            let p = self.pages.pop_front().expect("checked");
            self.durable.files_ok += p.totals.files_ok;
            self.durable.files_failed += p.totals.files_failed;
            self.durable.bytes += p.totals.bytes;
            self.durable.names_listed += p.totals.names_listed;
            self.durable.pages_done += 1;
            failures.extend(p.failures);
        }
        failures
    }

    /// Where a resume would start listing, and the counters it may claim.
    pub fn checkpoint(&self) -> (ListPosition, Totals) {
        let position = match self.pages.front() {
            Some(p) => p.position.clone(),
            None => self.after_last.clone(),
        };
        (position, self.durable)
    }

    pub fn live_totals(&self) -> Totals {
        self.live
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

/// Splits `names` into at most `ways` parts of nearly equal size.
fn split(names: Vec<String>, ways: usize) -> Vec<Vec<String>> {
    let n = names.len();
    let ways = ways.min(n).max(1);
    let mut parts = Vec::with_capacity(ways);
    let mut it = names.into_iter();
    for i in 0..ways {
        let size = n / ways + usize::from(i < n % ways);
        parts.push(it.by_ref().take(size).collect());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    fn ack_all(s: &mut Scheduler, shard: usize) -> CompletedFailures {
        let ids: Vec<(BatchId, usize)> = s.shards[shard]
            .outstanding
            .values()
            .map(|b| (b.id, b.names.len()))
            .collect();
        let mut failures = Vec::new();
        for (id, n) in ids {
            failures.extend(
                s.batch_done(shard, id, n as u32, n as u64 * 100, vec![])
                    .unwrap(),
            );
        }
        failures
    }

    fn sched(shards: usize) -> Scheduler {
        let mut s = Scheduler::new(shards, 2, 10, ListPosition::Start);
        for i in 0..shards {
            s.set_available(i, true);
        }
        s
    }

    #[test]
    fn pages_are_cut_into_batches_that_never_span_pages() {
        let mut s = sched(1);
        s.add_page(names("a", 25), Some("m1".into()));
        s.add_page(names("b", 5), None);
        let sizes: Vec<usize> = s.pending.iter().map(|b| b.names.len()).collect();
        assert_eq!(sizes, vec![10, 10, 5, 5]);
    }

    #[test]
    fn windows_bound_each_shard_and_the_emptiest_shard_goes_first() {
        let mut s = sched(2);
        s.add_page(names("a", 100), None);
        let mut got = Vec::new();
        while let Some((shard, _)) = s.assign() {
            got.push(shard);
        }
        assert_eq!(got, vec![0, 1, 0, 1]);
        assert_eq!(s.in_flight(0), 2);
        assert_eq!(s.pending_len(), 6);
        let id = *s.shards[1].outstanding.keys().next().unwrap();
        s.batch_done(1, id, 10, 1000, vec![]).unwrap();
        assert_eq!(s.assign().map(|(shard, _)| shard), Some(1));
    }

    #[test]
    fn unavailable_shards_get_nothing() {
        let mut s = sched(2);
        s.set_available(0, false);
        s.add_page(names("a", 40), None);
        while let Some((shard, _)) = s.assign() {
            assert_eq!(shard, 1);
        }
        assert_eq!(s.in_flight(1), 2);
    }

    #[test]
    fn checkpoint_is_the_earliest_page_not_fully_acknowledged() {
        let mut s = sched(1);
        assert_eq!(s.checkpoint().0, ListPosition::Start);
        s.add_page(names("a", 10), Some("m1".into()));
        s.add_page(names("b", 10), Some("m2".into()));
        assert_eq!(s.checkpoint().0, ListPosition::Start);
        let (_, first) = s.assign().unwrap();
        let first = first.id;
        let (_, second) = s.assign().unwrap();
        let second = second.id;
        // Acknowledging the second page first does not move the checkpoint.
        s.batch_done(0, second, 10, 1000, vec![]).unwrap();
        assert_eq!(s.checkpoint().0, ListPosition::Start);
        assert_eq!(s.checkpoint().1.files_ok, 0);
        assert_eq!(s.live_totals().files_ok, 10);
        s.batch_done(0, first, 10, 1000, vec![]).unwrap();
        let (pos, totals) = s.checkpoint();
        assert_eq!(pos, ListPosition::Marker("m2".into()));
        assert_eq!(
            (totals.files_ok, totals.pages_done, totals.names_listed),
            (20, 2, 20)
        );
        assert!(!s.is_finished());
    }

    #[test]
    fn unsafe_names_fail_at_once_and_empty_pages_complete() {
        let mut s = sched(1);
        let failures = s.add_page(vec!["../x".into(), "/abs".into(), "".into()], None);
        assert_eq!(failures.len(), 3);
        assert!(failures[0].reason.starts_with("unsafe name"));
        assert!(s.is_finished());
        assert_eq!(
            s.checkpoint(),
            (
                ListPosition::Done,
                Totals {
                    files_failed: 3,
                    names_listed: 3,
                    pages_done: 1,
                    ..Totals::default()
                }
            )
        );
    }

    #[test]
    fn a_crash_requeues_at_the_front_and_counts_each_file_once() {
        let mut s = sched(2);
        s.add_page(names("a", 40), None);
        while s.assign().is_some() {}
        assert_eq!(s.pending_len(), 0);
        s.shard_down(0);
        assert_eq!(s.pending_len(), 2);
        assert!(s.pending.iter().all(|b| b.crashes == 1));
        ack_all(&mut s, 1);
        s.set_available(0, true);
        // Suspects go one at a time to shards holding nothing else.
        let (a, _) = s.assign().unwrap();
        let (b, _) = s.assign().unwrap();
        assert_ne!(a, b);
        assert!(s.assign().is_none());
        ack_all(&mut s, 0);
        ack_all(&mut s, 1);
        assert!(s.is_finished());
        assert_eq!(s.checkpoint().1.files_ok, 40);
        assert_eq!(s.live_totals().files_ok, 40);
    }

    #[test]
    fn a_poison_name_is_isolated_and_failed_and_the_rest_succeed() {
        let poison = "a137";
        let mut s = Scheduler::new(2, 4, 256, ListPosition::Start);
        s.set_available(0, true);
        s.set_available(1, true);
        s.add_page(names("a", 256), None);
        let mut crashes = 0;
        let mut failures = Vec::new();
        let mut ok = 0u64;
        for _ in 0..1000 {
            while s.assign().is_some() {}
            // Each shard: crash if it holds the poison name, else ack all.
            for shard in 0..2 {
                let holds = s.shards[shard]
                    .outstanding
                    .values()
                    .any(|b| b.names.iter().any(|n| n == poison));
                if holds {
                    crashes += 1;
                    failures.extend(s.shard_down(shard));
                    s.set_available(shard, true);
                } else {
                    let n: u64 = s.shards[shard]
                        .outstanding
                        .values()
                        .map(|b| b.names.len() as u64)
                        .sum();
                    ok += n;
                    failures.extend(ack_all(&mut s, shard));
                }
            }
            if s.is_finished() {
                break;
            }
        }
        assert!(s.is_finished());
        assert_eq!(ok, 255);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].name, poison);
        assert_eq!(failures[0].reason, CRASH_REASON);
        assert!(crashes <= 4, "{crashes} crashes to isolate one name");
        let t = s.checkpoint().1;
        assert_eq!((t.files_ok, t.files_failed), (255, 1));
    }

    #[test]
    fn unknown_acknowledgements_are_refused() {
        let mut s = sched(1);
        assert!(s.batch_done(0, 99, 1, 1, vec![]).is_none());
    }

    #[test]
    fn split_is_even_and_complete() {
        let parts = split(names("x", 35), 16);
        assert_eq!(parts.len(), 16);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 35);
        assert!(parts.iter().all(|p| p.len() == 2 || p.len() == 3));
        assert_eq!(split(names("x", 3), 16).len(), 3);
    }
}
