//! `cluster work`'s decisions, apart from their effects.
//!
//! The host's loop (work.rs) turns whatever arrives (a JetStream message,
//! the end of a pull request, a worker's frame or exit, a restart timer, a
//! signal, the deadline, the tick) into an [`Input`] and hands it to
//! [`Host::handle`] with the time; the core updates its data and answers
//! with the [`Action`]s to carry out, in order, as `fetch`'s core
//! (`bulkget_coordinator::decide`) does. The worker orders are `fetch`'s
//! own ([`WorkerAction`], carried out by
//! [`bulkget_coordinator::supervisor::Workers::act`]); the others are
//! JetStream's: acknowledge, give back, progress-ack, pull more, publish.
//!
//! The core holds only data: the shards' [`Slots`], the [`Shutdown`], the
//! request [`Budget`], each shard's tallies, and the batches this host
//! holds as plain records named by a [`MsgId`]; the JetStream messages
//! themselves stay with the loop. It reads no clock and touches no socket,
//! process or file, so every rule below is tested by driving `handle` and
//! reading its actions.
//!
//! The rules: one JetStream message is one batch sent to one worker, and
//! it is acknowledged only after the worker's `BatchDone` (which the worker
//! sends after the sink commit), together with the batch's failures.
//! Batches held longer than a third of AckWait get a progress ack. A
//! worker that dies gives its batches back (a nak); the delivery count of
//! the next delivery decides how it runs ([`crate::poison`]).

use crate::job::{BatchMsg, HostRecord};
use crate::poison::{self, Verdict};
use bulkget_coordinator::budget::Budget;
use bulkget_coordinator::failure_log::FailureLog;
use bulkget_coordinator::shutdown::{OnSignal, Reason, Shutdown, StopSignal};
use bulkget_coordinator::supervisor::{
    describe_end, kill_on_disconnect, Event, KillWhen, OnExit, Phase, Slots, WorkerAction,
};
use bulkget_protocol::{BatchId, Failure, FatalKind, ToCoordinator, ToWorker};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How often the host puts its totals in the job's bucket.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(2);

/// How often the request budget decides ([`Budget::tick`]), as in `fetch`.
const BUDGET_EVERY: Duration = Duration::from_secs(1);

/// A JetStream message this host received, by the number the loop gave
/// it. A batch sent to a worker carries the same number as its
/// [`BatchId`].
pub type MsgId = BatchId;

/// A message as the loop read it.
#[derive(Debug)]
pub struct Delivery {
    pub msg: MsgId,
    /// JetStream's delivery count (1 the first time).
    pub delivered: i64,
    /// The stream sequence, for the log and the parts' message ids.
    pub seq: u64,
    /// It is a part of a split batch.
    pub part: bool,
    /// The batch, or why the payload is not one.
    pub batch: Result<BatchMsg, String>,
}

/// One thing that happened, as the host's loop received it.
#[derive(Debug)]
pub enum Input {
    Delivered(Delivery),
    /// The pull request under way ended (full, expired or failed).
    PullEnded,
    Worker(Event),
    /// A shard's backoff is over.
    Restart(usize),
    Signal(StopSignal),
    /// The shutdown deadline ([`Host::deadline`]) may have passed.
    Deadline,
    /// The half-second tick.
    Tick,
    /// The answer to [`Action::CheckFinished`]: whether the job's lister
    /// marked the job finished.
    JobFinished(bool),
    /// [`WorkerAction::Spawn`] failed.
    SpawnFailed {
        shard: usize,
        generation: u32,
        error: String,
    },
}

/// One effect for the host's loop to carry out.
#[derive(Debug)]
pub enum Action {
    /// Start, restart, send to or stop workers, as `fetch` does.
    Worker(WorkerAction),
    /// Show a message (unless `--quiet`).
    Note(String),
    /// Append permanent failures to this host's `failed.jsonl`.
    RecordFailures(Vec<Failure>),
    /// Store `failures` in the job's failure stream, then acknowledge the
    /// message with a confirmed ack; if either fails, it is delivered again.
    Ack { msg: MsgId, failures: Vec<Failure> },
    /// Give the message back for another delivery.
    Nak(MsgId),
    /// Tell JetStream the message is still being worked on.
    Progress(MsgId),
    /// Drop a message that is not a batch, for good.
    Term(MsgId),
    /// Publish `parts` as new messages marked as parts, then acknowledge
    /// the original (see [`crate::poison`]).
    Split {
        msg: MsgId,
        seq: u64,
        page: u64,
        batch: u32,
        parts: Vec<Vec<String>>,
    },
    /// Ask the job's consumer for up to this many messages.
    Pull(usize),
    /// Put this record of the host's totals in the job's bucket (the loop
    /// stamps the time).
    PublishTotals(HostRecord),
    /// Find out whether the job is finished and answer with
    /// [`Input::JobFinished`].
    CheckFinished,
}

/// What the core's rules take from the command line and the consumer.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `--window`: batches a worker holds at once.
    pub window: usize,
    /// The consumer's AckWait.
    pub ack_wait: Duration,
    /// `--grace`, in seconds.
    pub grace_secs: u64,
    /// OUT, for messages about its file system.
    pub out_dir: String,
}

/// A batch this host holds: delivered, not yet acknowledged or given back.
#[derive(Debug)]
struct Held {
    names: Vec<String>,
    alone: bool,
    /// The shard it was sent to; `None` while queued here.
    shard: Option<usize>,
    /// The worker reported every name left waiting on a retry timer.
    stalled: bool,
    ok: u64,
    bytes: u64,
    retries: u64,
    failures: Vec<Failure>,
    last_ack: Instant,
}

/// What a shard holds of this host's batches. Its worker, phase and
/// history are its slot in [`Slots`]; these tallies are the host's own,
/// as the scheduler's are `fetch`'s.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// Batches sent to the current worker and not finished or given back.
    holding: usize,
    /// Of those, the ones in the window (not stalled, not alone).
    in_window: usize,
    /// It holds a batch that runs alone.
    alone: bool,
}

/// The host's decisions (see the module documentation).
pub struct Host {
    rules: Rules,
    shards: Slots,
    tallies: Vec<Tally>,
    held: HashMap<MsgId, Held>,
    queue: VecDeque<MsgId>,
    /// Messages asked for in the pull request under way.
    requested: usize,
    /// Whether and why the host is ending (stopping early, or the job is
    /// finished), and until when its workers may take.
    shutdown: Shutdown,
    /// This host's request budget: its `--max-rps` and the slow-down its
    /// shards share, as in `fetch`.
    budget: Budget,
    failure_log: FailureLog,
    totals: HostRecord,
    last_budget_tick: Instant,
    last_publish: Option<Instant>,
}

impl Host {
    /// A host that has started nothing yet; `now` is its start. `totals`
    /// names the host (its counts start at zero).
    pub fn new(
        rules: Rules,
        shards: Slots,
        budget: Budget,
        failure_log: FailureLog,
        totals: HostRecord,
        now: Instant,
    ) -> Host {
        Host {
            shutdown: Shutdown::new(Duration::from_secs(rules.grace_secs)),
            tallies: vec![Tally::default(); shards.len()],
            rules,
            shards,
            held: HashMap::new(),
            queue: VecDeque::new(),
            requested: 0,
            budget,
            failure_log,
            totals,
            last_budget_tick: now,
            last_publish: None,
        }
    }

    /// Starts every shard's first worker.
    pub fn start(&mut self, out: &mut Vec<Action>) {
        for shard in 0..self.shards.len() {
            self.spawn(shard, out);
        }
    }

    /// Decides what `input` means at `now` and pushes the actions that
    /// carry it out onto `out`, in order.
    pub fn handle(&mut self, input: Input, now: Instant, out: &mut Vec<Action>) {
        match input {
            Input::Delivered(d) => self.on_delivery(d, now, out),
            Input::PullEnded => {
                self.requested = 0;
                if self.shutdown.ending() {
                    // What was kept for the request's end goes back now.
                    let queued: Vec<MsgId> = self.queue.iter().copied().collect();
                    for id in queued {
                        self.give_back(id, out);
                    }
                    let held = &self.held;
                    self.queue.retain(|id| held.contains_key(id));
                }
            }
            Input::Worker(ev) => self.on_event(ev, now, out),
            Input::Restart(shard) => {
                if !self.shutdown.ending() && self.shards[shard].phase == Phase::Backoff {
                    self.spawn(shard, out);
                }
            }
            Input::SpawnFailed {
                shard,
                generation,
                error,
            } => {
                if self.shards[shard].generation == generation {
                    self.shards.start_failed(shard);
                    note(out, format!("cannot restart worker {shard}: {error}"));
                    self.park(shard, now, out);
                }
            }
            Input::Signal(signal) => self.on_signal(signal, now, out),
            Input::Deadline => {
                if self.shutdown.deadline_passed(now) {
                    note(
                        out,
                        "grace period over; giving the unfinished batches back".into(),
                    );
                    self.give_back_all(out);
                    self.stop_all_now(out);
                }
            }
            Input::Tick => self.on_tick(now, out),
            Input::JobFinished(finished) => {
                // A host that is stopping stops: as in `fetch`, a stop wins
                // over finishing.
                if finished && !self.shutdown.ending() && self.shutdown.finish(now) {
                    note(out, "the job is finished".into());
                    self.give_back_all(out);
                    // Each worker writes its last stats and exits, within
                    // `shutdown::FINISH_WITHIN`.
                    for shard in self.shards.live() {
                        out.push(Action::Worker(WorkerAction::Send {
                            shard,
                            msg: ToWorker::Shutdown { drain: true },
                        }));
                    }
                }
            }
        }
        self.after_input(out);
    }

    /// Whether every worker has exited after the host began to end: the
    /// loop is over.
    pub fn over(&self) -> bool {
        self.shutdown.ending() && self.shards.all_exited()
    }

    /// Whether a pull request is under way: the loop waits for its end
    /// before the host leaves (see [`Host::give_back`]).
    pub fn pulling(&self) -> bool {
        self.requested > 0
    }

    /// When the loop is to send [`Input::Deadline`].
    pub fn deadline(&self) -> Option<Instant> {
        self.shutdown.deadline()
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    pub fn totals(&self) -> &HostRecord {
        &self.totals
    }

    /// The host leaves: its last pull request is over or abandoned, what it
    /// still holds goes back, and its last record says how it ended.
    /// Returns the exit code.
    pub fn end(&mut self, out: &mut Vec<Action>) -> i32 {
        self.requested = 0;
        self.give_back_all(out);
        let code = self.shutdown.exit_code(self.totals.files_failed);
        self.totals.state = "exited".into();
        out.push(Action::PublishTotals(self.record(Some(code))));
        if let Some(line) = self.failure_log.flush() {
            note(out, line);
        }
        code
    }

    /// What every input leads to: while the host takes work, batches go
    /// out, workers get their share and more is asked for; while it stops,
    /// idle workers are told to exit.
    fn after_input(&mut self, out: &mut Vec<Action>) {
        if !self.shutdown.ending() {
            self.dispatch(out);
            self.pace_workers(out);
            self.request_more(out);
        } else if self.shutdown.stopping() {
            self.ask_idle_workers_to_exit(out);
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.progress_acks(now, out);
        // The budget judges a second of reports at a time, as in `fetch`:
        // on every half-second tick, two shards' reports would fall into
        // different ticks.
        if now.saturating_duration_since(self.last_budget_tick) >= BUDGET_EVERY {
            self.last_budget_tick = now;
            let working = self.working_shards();
            self.budget.tick(now, working);
        }
        if let Some(line) = self.failure_log.tick(now) {
            note(out, line);
        }
        let due = self
            .last_publish
            .is_none_or(|t| now.saturating_duration_since(t) >= PUBLISH_EVERY);
        if due {
            self.last_publish = Some(now);
            out.push(Action::PublishTotals(self.record(None)));
            if !self.shutdown.ending() {
                out.push(Action::CheckFinished);
            }
        }
    }

    /// The host's record as it is published now; `exit_code` once it has
    /// ended.
    fn record(&mut self, exit_code: Option<i32>) -> HostRecord {
        self.totals.exit_code = exit_code;
        self.totals.batches_in_flight = self.held.len() as u64;
        self.totals.worker_restarts = self.shards.iter().map(|s| s.life.restarts).sum();
        if exit_code.is_none() && self.shutdown.ending() {
            self.totals.state = "draining".into();
        }
        self.totals.clone()
    }

    fn on_delivery(&mut self, d: Delivery, now: Instant, out: &mut Vec<Action>) {
        let batch = match d.batch {
            Ok(b) => b,
            Err(e) => {
                note(
                    out,
                    format!("a message of the job is not a batch ({e}); dropping it"),
                );
                out.push(Action::Term(d.msg));
                return;
            }
        };
        if d.delivered > 1 {
            self.totals.batches_redelivered += 1;
        }
        let verdict = poison::verdict(&batch.names, d.delivered, d.part);
        match verdict {
            Verdict::Normal | Verdict::Alone => {
                self.held.insert(
                    d.msg,
                    Held {
                        names: batch.names,
                        alone: verdict == Verdict::Alone,
                        shard: None,
                        stalled: false,
                        ok: 0,
                        bytes: 0,
                        retries: 0,
                        failures: Vec::new(),
                        last_ack: now,
                    },
                );
                self.queue.push_back(d.msg);
            }
            Verdict::Split(parts) => {
                self.totals.batches_split += 1;
                tracing::info!(
                    seq = d.seq,
                    parts = parts.len(),
                    "splitting a batch delivered {} times",
                    d.delivered
                );
                out.push(Action::Split {
                    msg: d.msg,
                    seq: d.seq,
                    page: batch.page,
                    batch: batch.batch,
                    parts,
                });
            }
            Verdict::Fail => {
                let failure = Failure::new(&batch.names[0], poison::POISON_REASON, None);
                self.totals.files_failed += 1;
                self.record_failures(vec![failure.clone()], now, out);
                out.push(Action::Ack {
                    msg: d.msg,
                    failures: vec![failure],
                });
            }
        }
    }

    /// Shows failures (capped) and has them appended to `failed.jsonl`.
    fn record_failures(&mut self, failures: Vec<Failure>, now: Instant, out: &mut Vec<Action>) {
        if failures.is_empty() {
            return;
        }
        for line in self.failure_log.record(&failures, now) {
            note(out, line);
        }
        out.push(Action::RecordFailures(failures));
    }

    fn on_signal(&mut self, signal: StopSignal, now: Instant, out: &mut Vec<Action>) {
        match self.shutdown.on_signal(signal, now) {
            OnSignal::Graceful { began: true } => {
                note(
                    out,
                    format!(
                        "{}: stopping; letting in-flight batches finish for up to {}s",
                        signal.name(),
                        self.rules.grace_secs
                    ),
                );
                self.stop_began(out);
            }
            // Another stop is under way, with its own deadline.
            OnSignal::Graceful { began: false } => {}
            OnSignal::Now => {
                note(
                    out,
                    "second signal: giving the batches back and stopping the workers now".into(),
                );
                self.give_back_all(out);
                self.stop_all_now(out);
            }
        }
    }

    /// A graceful stop began: what no worker has started goes back at once
    /// (or as soon as the pull request under way has ended, see
    /// `give_back`), and idle workers are told to exit.
    fn stop_began(&mut self, out: &mut Vec<Action>) {
        let queued: Vec<MsgId> = self.queue.drain(..).collect();
        for id in queued {
            self.give_back(id, out);
        }
        self.ask_idle_workers_to_exit(out);
    }

    /// While stopping, a worker that holds no batch is told to exit.
    fn ask_idle_workers_to_exit(&mut self, out: &mut Vec<Action>) {
        let tallies = &self.tallies;
        for shard in self.shards.ask_idle_to_exit(|k| tallies[k].holding) {
            out.push(Action::Worker(WorkerAction::Send {
                shard,
                msg: ToWorker::Shutdown { drain: false },
            }));
        }
    }

    /// SIGTERM to every worker, SIGKILL to any still there a second later;
    /// none is restarted.
    fn stop_all_now(&mut self, out: &mut Vec<Action>) {
        self.shards.stop_all_now();
        out.push(Action::Worker(WorkerAction::StopAllNow));
    }

    fn park(&mut self, shard: usize, now: Instant, out: &mut Vec<Action>) {
        if self.shards.park(shard) && self.shutdown.begin(Reason::AllParked, now) {
            note(out, "every shard is parked; stopping".into());
            self.give_back_all(out);
        }
    }

    fn spawn(&mut self, shard: usize, out: &mut Vec<Action>) {
        let generation = self.shards.next_generation(shard);
        self.shards.started(shard, generation);
        out.push(Action::Worker(WorkerAction::Spawn { shard, generation }));
        // Its share before any batch: frames arrive in order.
        self.pace_workers(out);
    }

    /// The shards that count in dividing the request budget, as in
    /// `fetch`: a live worker that holds a batch or may get one.
    fn working_shards(&self) -> usize {
        let no_more_work = self.shutdown.ending();
        self.shards
            .iter()
            .zip(&self.tallies)
            .filter(|(s, t)| {
                let has_or_may_get_work = t.holding > 0 || !no_more_work;
                s.live && !s.down && s.phase != Phase::Parked && has_or_may_get_work
            })
            .count()
    }

    /// Sends each live worker its share of this host's request budget, if
    /// it changed ([`bulkget_coordinator::budget::Pace::differs_from`]).
    fn pace_workers(&mut self, out: &mut Vec<Action>) {
        let pace = self.budget.pace(self.working_shards());
        for (shard, slot) in self.shards.iter_mut().enumerate() {
            if !slot.live || slot.down || !pace.differs_from(slot.paced) {
                continue;
            }
            out.push(Action::Worker(WorkerAction::Send {
                shard,
                msg: pace.frame(),
            }));
            slot.paced = Some(pace);
        }
    }

    /// Whether the shard's worker is ready for batches: it said so, is
    /// still up, and was not told to stop (stopping or parked).
    fn takes_batches(&self, shard: usize) -> bool {
        let s = &self.shards[shard];
        s.phase == Phase::Running && !s.down
    }

    /// Batches a shard may take now: none while it holds one alone.
    fn room(&self, shard: usize) -> usize {
        let t = &self.tallies[shard];
        if !self.takes_batches(shard) || t.alone {
            return 0;
        }
        self.rules.window.saturating_sub(t.in_window)
    }

    /// Whether the shard holds nothing at all (for a batch that runs alone).
    fn empty(&self, shard: usize) -> bool {
        self.takes_batches(shard) && self.tallies[shard].holding == 0
    }

    /// Counts a batch sent to `shard` in the shard's tallies.
    fn attach(&mut self, id: MsgId, shard: usize) {
        let h = self.held.get_mut(&id).expect("attached batches are held");
        h.shard = Some(shard);
        let s = &mut self.tallies[shard];
        s.holding += 1;
        if h.alone {
            s.alone = true;
        } else {
            s.in_window += 1;
        }
    }

    /// Takes a batch out of the host's hands, and out of its shard's
    /// tallies if it was sent to one.
    fn detach(&mut self, id: MsgId) -> Option<Held> {
        let h = self.held.remove(&id)?;
        if let Some(k) = h.shard {
            let s = &mut self.tallies[k];
            s.holding -= 1;
            if h.alone {
                s.alone = false;
            } else if !h.stalled {
                s.in_window -= 1;
            }
        }
        Some(h)
    }

    /// Sends queued batches to workers with room: a batch that runs alone
    /// to a worker holding nothing, the others to the window with the most
    /// room.
    fn dispatch(&mut self, out: &mut Vec<Action>) {
        let mut left = VecDeque::new();
        while let Some(id) = self.queue.pop_front() {
            let alone = self.held[&id].alone;
            // The shard with the most room, so that a handful of batches
            // is spread over the workers instead of filling the first
            // one's window (the first such shard on a tie).
            let target = if alone {
                (0..self.shards.len()).find(|&k| self.empty(k))
            } else {
                (0..self.shards.len())
                    .filter(|&k| self.room(k) > 0)
                    .min_by_key(|&k| (std::cmp::Reverse(self.room(k)), k))
            };
            match target {
                Some(shard) => {
                    self.attach(id, shard);
                    let batch = ToWorker::Batch {
                        id,
                        names: self.held[&id].names.clone(),
                    };
                    let mut frame = Vec::new();
                    bulkget_protocol::frame::encode(&batch, &mut frame)
                        .expect("a published batch fits a frame");
                    out.push(Action::Worker(WorkerAction::SendBatch { shard, id, frame }));
                }
                None => left.push_back(id),
            }
        }
        self.queue = left;
    }

    /// Asks JetStream for as many batches as the windows have room for,
    /// less those queued here, if no request is under way.
    fn request_more(&mut self, out: &mut Vec<Action>) {
        if self.requested > 0 {
            return;
        }
        let room: usize = (0..self.shards.len()).map(|k| self.room(k)).sum();
        let want = room.saturating_sub(self.queue.len());
        if want == 0 {
            return;
        }
        self.requested = want;
        out.push(Action::Pull(want));
    }

    /// A batch is done: its totals count, its failures are recorded, and
    /// it is acknowledged with them.
    fn complete(&mut self, id: MsgId, now: Instant, out: &mut Vec<Action>) {
        let Some(h) = self.detach(id) else {
            return;
        };
        self.totals.files_ok += h.ok;
        self.totals.bytes += h.bytes;
        self.totals.retries += h.retries;
        self.totals.files_failed += h.failures.len() as u64;
        self.totals.batches_acked += 1;
        self.record_failures(h.failures.clone(), now, out);
        out.push(Action::Ack {
            msg: id,
            failures: h.failures,
        });
    }

    /// Gives a batch back to JetStream for another delivery.
    ///
    /// While the host stops with a pull request of its own still open, a
    /// nak would hand the batch straight back to that request, and so to
    /// this host, which no longer fetches: the batch is kept (queued,
    /// progress-acked) until the request has ended, then given back.
    fn give_back(&mut self, id: MsgId, out: &mut Vec<Action>) {
        let Some(mut h) = self.detach(id) else {
            return;
        };
        if self.shutdown.ending() && self.requested > 0 {
            h.shard = None;
            h.stalled = false;
            self.held.insert(id, h);
            if !self.queue.contains(&id) {
                self.queue.push_back(id);
            }
            return;
        }
        out.push(Action::Nak(id));
    }

    fn give_back_all(&mut self, out: &mut Vec<Action>) {
        let mut ids: Vec<MsgId> = self.held.keys().copied().collect();
        // In the order they came, so that the actions do not depend on the
        // map's order.
        ids.sort_unstable();
        for id in ids {
            self.give_back(id, out);
        }
        let held = &self.held;
        self.queue.retain(|id| held.contains_key(id));
    }

    /// Tells JetStream that batches held for a while are still being worked
    /// on, so AckWait does not run out on them while this host lives.
    fn progress_acks(&mut self, now: Instant, out: &mut Vec<Action>) {
        let every = self.rules.ack_wait / 3;
        let mut due: Vec<MsgId> = Vec::new();
        for (id, h) in &mut self.held {
            if now.saturating_duration_since(h.last_ack) >= every {
                h.last_ack = now;
                due.push(*id);
            }
        }
        due.sort_unstable();
        out.extend(due.into_iter().map(Action::Progress));
    }

    /// The shard's worker is gone or must go: its batches go back to
    /// JetStream. A death while it held a batch alone is that batch's.
    fn shard_down(&mut self, shard: usize, out: &mut Vec<Action>) {
        let mut held: Vec<MsgId> = self
            .held
            .iter()
            .filter(|(_, h)| h.shard == Some(shard))
            .map(|(id, _)| *id)
            .collect();
        held.sort_unstable();
        let blamed = held.len() == 1 && self.held[&held[0]].alone;
        self.shards[shard].life.on_down(blamed);
        for id in held {
            self.give_back(id, out);
        }
        self.shards[shard].down = true;
    }

    /// The shard's worker broke the rules: its batches go back and it is
    /// killed now.
    fn kill_broken(&mut self, shard: usize, why: String, out: &mut Vec<Action>) {
        self.shard_down(shard, out);
        out.push(Action::Worker(WorkerAction::Kill {
            shard,
            when: KillWhen::Now,
            why,
        }));
    }

    fn on_event(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        match ev {
            Event::Message {
                shard,
                generation,
                msg,
            } => {
                if self.shards.is_current(shard, generation) {
                    self.on_message(shard, msg, now, out);
                }
            }
            Event::Disconnected {
                shard,
                generation,
                end,
            } => {
                if self.shards.is_current(shard, generation) {
                    self.shard_down(shard, out);
                    let (when, why) = kill_on_disconnect(end);
                    out.push(Action::Worker(WorkerAction::Kill { shard, when, why }));
                }
            }
            Event::Incompatible {
                shard,
                generation,
                ours,
                theirs,
            } => {
                if !self.shards.is_current(shard, generation) {
                    return;
                }
                self.shard_down(shard, out);
                let why = format!(
                    "worker {shard} is another build of bulkget ({theirs}) than this host ({ours})"
                );
                // Unlike `fetch`, which lets the other workers finish their
                // batches with a checkpoint to come back to, a host gives
                // every batch back at once: another host of the right build
                // takes them.
                if self.shutdown.begin(Reason::Incompatible(why.clone()), now) {
                    note(out, why);
                    self.give_back_all(out);
                    self.stop_all_now(out);
                }
            }
            Event::Exited {
                shard,
                generation,
                status,
                killed,
            } => {
                if generation != self.shards[shard].generation {
                    return;
                }
                if !self.shards[shard].down {
                    self.shard_down(shard, out);
                }
                let what = describe_end(&status, killed.as_deref());
                let ending = self.shutdown.ending();
                match self.shards.on_exit(shard, generation, ending, now) {
                    OnExit::Stale => {}
                    OnExit::Expected => {
                        if killed.is_some() {
                            note(out, format!("worker {shard} {what}"));
                        }
                    }
                    OnExit::RestartAfter(delay) => {
                        note(
                            out,
                            format!("worker {shard} {what}; restarting in {delay:?}"),
                        );
                        out.push(Action::Worker(WorkerAction::RestartAfter {
                            shard,
                            delay,
                            ended: what,
                        }));
                    }
                    OnExit::Park => {
                        let policy = self.shards.policy();
                        note(out, format!(
                            "worker {shard} {what}; its workers crashed more than {} times in {:?} without acknowledging anything; shard {shard} is parked",
                            policy.burst, policy.interval
                        ));
                        self.park(shard, now, out);
                    }
                }
            }
        }
    }

    fn on_message(
        &mut self,
        shard: usize,
        msg: ToCoordinator,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        match msg {
            ToCoordinator::Ready => self.shards[shard].phase = Phase::Running,
            ToCoordinator::BatchDone {
                id,
                ok,
                bytes,
                retries,
                failures,
                ..
            } => match self.held.get_mut(&id) {
                Some(h) if h.shard == Some(shard) => {
                    h.ok += u64::from(ok);
                    h.bytes += bytes;
                    h.retries += u64::from(retries);
                    h.failures.extend(failures);
                    self.shards[shard].life.on_progress();
                    self.complete(id, now, out);
                }
                _ => self.kill_broken(shard, format!("it acknowledged unknown batch {id}"), out),
            },
            ToCoordinator::BatchStalled {
                id,
                ok,
                bytes,
                retries,
                failures,
                ..
            } => match self.held.get_mut(&id) {
                Some(h) if h.shard == Some(shard) && !h.stalled => {
                    h.stalled = true;
                    if !h.alone {
                        self.tallies[shard].in_window -= 1;
                    }
                    h.ok += u64::from(ok);
                    h.bytes += bytes;
                    h.retries += u64::from(retries);
                    h.failures.extend(failures);
                    self.shards[shard].life.on_progress();
                }
                _ => self.kill_broken(
                    shard,
                    format!("it sent a stall report that does not fit batch {id}"),
                    out,
                ),
            },
            ToCoordinator::Pressure { clean, pushback } => {
                self.budget.report(shard, clean, pushback, now);
            }
            ToCoordinator::Fatal { kind, reason } => {
                note(out, format!("worker {shard}: {reason}"));
                if kind == FatalKind::NoSpace && !self.shutdown.stopping() {
                    let why = format!("the file system of {} is full", self.rules.out_dir);
                    note(out, format!("{why}; stopping"));
                    if self.shutdown.begin(Reason::NoSpace(why), now) {
                        self.stop_began(out);
                    }
                }
            }
        }
    }
}

fn note(out: &mut Vec<Action>, line: String) {
    out.push(Action::Note(line));
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkget_coordinator::restart::RestartPolicy;
    use bulkget_coordinator::shutdown::FINISH_WITHIN;
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;
    use std::process::ExitStatus;

    const ACK_WAIT: Duration = Duration::from_secs(30);
    const GRACE: u64 = 5;

    /// A host of `shards` shards whose workers have all said they are
    /// ready, and the number of its next message.
    struct Run {
        host: Host,
        next_msg: MsgId,
    }

    impl Run {
        fn new(shards: usize, window: usize) -> Run {
            let t0 = Instant::now();
            let rules = Rules {
                window,
                ack_wait: ACK_WAIT,
                grace_secs: GRACE,
                out_dir: "/out".into(),
            };
            let policy = RestartPolicy {
                burst: 2,
                interval: Duration::from_secs(10),
                ..RestartPolicy::default()
            };
            let mut host = Host::new(
                rules,
                Slots::new(shards, policy, t0),
                Budget::new(shards, None, false, t0),
                FailureLog::new(Path::new("/state/failed.jsonl")),
                HostRecord {
                    host: "h".into(),
                    state: "running".into(),
                    ..HostRecord::default()
                },
                t0,
            );
            let mut out = Vec::new();
            host.start(&mut out);
            let spawned: Vec<_> = out
                .iter()
                .filter_map(|a| match a {
                    Action::Worker(WorkerAction::Spawn { shard, generation }) => {
                        Some((*shard, *generation))
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(spawned, (0..shards).map(|k| (k, 0)).collect::<Vec<_>>());
            let mut run = Run { host, next_msg: 1 };
            for shard in 0..shards {
                run.message(shard, ToCoordinator::Ready, t0);
            }
            run
        }

        fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
            let mut out = Vec::new();
            self.host.handle(input, now, &mut out);
            out
        }

        fn message(&mut self, shard: usize, msg: ToCoordinator, now: Instant) -> Vec<Action> {
            let generation = self.host.shards[shard].generation;
            self.handle(
                Input::Worker(Event::Message {
                    shard,
                    generation,
                    msg,
                }),
                now,
            )
        }

        /// Delivers a batch of `names` for the `delivered`-th time and
        /// returns its number and the actions.
        fn deliver(
            &mut self,
            names: &[&str],
            delivered: i64,
            now: Instant,
        ) -> (MsgId, Vec<Action>) {
            let msg = self.next_msg;
            self.next_msg += 1;
            let batch = BatchMsg {
                page: 0,
                batch: msg as u32,
                names: names.iter().map(|n| n.to_string()).collect(),
            };
            let out = self.handle(
                Input::Delivered(Delivery {
                    msg,
                    delivered,
                    seq: msg,
                    part: false,
                    batch: Ok(batch),
                }),
                now,
            );
            (msg, out)
        }

        fn done(&mut self, shard: usize, id: MsgId, ok: u32, now: Instant) -> Vec<Action> {
            self.message(
                shard,
                ToCoordinator::BatchDone {
                    id,
                    ok,
                    bytes: 100 * u64::from(ok),
                    retries: 0,
                    present: 0,
                    failures: Vec::new(),
                },
                now,
            )
        }

        /// The shard's worker dies (killed by SIGKILL, not by the host).
        fn dies(&mut self, shard: usize, now: Instant) -> Vec<Action> {
            let generation = self.host.shards[shard].generation;
            self.handle(
                Input::Worker(Event::Exited {
                    shard,
                    generation,
                    status: ExitStatus::from_raw(libc::SIGKILL),
                    killed: None,
                }),
                now,
            )
        }

        fn exits(&mut self, shard: usize, now: Instant) -> Vec<Action> {
            let generation = self.host.shards[shard].generation;
            self.handle(
                Input::Worker(Event::Exited {
                    shard,
                    generation,
                    status: ExitStatus::from_raw(0),
                    killed: None,
                }),
                now,
            )
        }
    }

    fn batches(actions: &[Action]) -> Vec<(usize, BatchId)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Worker(WorkerAction::SendBatch { shard, id, .. }) => Some((*shard, *id)),
                _ => None,
            })
            .collect()
    }

    fn acks(actions: &[Action]) -> Vec<(MsgId, Vec<Failure>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Ack { msg, failures } => Some((*msg, failures.clone())),
                _ => None,
            })
            .collect()
    }

    fn naks(actions: &[Action]) -> Vec<MsgId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Nak(msg) => Some(*msg),
                _ => None,
            })
            .collect()
    }

    fn progress(actions: &[Action]) -> Vec<MsgId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Progress(msg) => Some(*msg),
                _ => None,
            })
            .collect()
    }

    fn pulls(actions: &[Action]) -> Vec<usize> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Pull(want) => Some(*want),
                _ => None,
            })
            .collect()
    }

    fn told_to_exit(actions: &[Action], drain: bool) -> Vec<usize> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Worker(WorkerAction::Send {
                    shard,
                    msg: ToWorker::Shutdown { drain: d },
                }) if *d == drain => Some(*shard),
                _ => None,
            })
            .collect()
    }

    fn stops_all_now(actions: &[Action]) -> bool {
        actions
            .iter()
            .any(|a| matches!(a, Action::Worker(WorkerAction::StopAllNow)))
    }

    fn notes(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Note(line) => Some(line.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ready_workers_ask_for_as_many_batches_as_their_windows_hold() {
        let t0 = Instant::now();
        let mut run = Run::new(2, 3);
        // Run::new's first Ready asked for shard 0's window; no more is
        // asked for while that request is under way.
        let out = run.handle(Input::Tick, t0);
        assert_eq!(pulls(&out), Vec::<usize>::new(), "{out:?}");
        let out = run.handle(Input::PullEnded, t0);
        assert_eq!(pulls(&out), vec![6]);
        // Delivered batches go to the window with the most room.
        let (a, out) = run.deliver(&["a"], 1, t0);
        assert_eq!(batches(&out), vec![(0, a)]);
        let (b, out) = run.deliver(&["b"], 1, t0);
        assert_eq!(batches(&out), vec![(1, b)]);
    }

    #[test]
    fn a_batch_is_acknowledged_only_after_its_batch_done() {
        let t0 = Instant::now();
        let mut run = Run::new(1, 4);
        let (id, out) = run.deliver(&["a", "b"], 1, t0);
        assert_eq!(batches(&out), vec![(0, id)]);
        assert!(acks(&out).is_empty(), "{out:?}");
        // Ticks, stall reports and other traffic acknowledge nothing.
        let out = run.handle(Input::Tick, t0 + Duration::from_secs(1));
        assert!(acks(&out).is_empty(), "{out:?}");
        let out = run.message(
            0,
            ToCoordinator::BatchStalled {
                id,
                ok: 1,
                bytes: 100,
                retries: 0,
                present: 0,
                failures: Vec::new(),
                waiting: vec![1],
            },
            t0,
        );
        assert!(acks(&out).is_empty(), "{out:?}");
        // BatchDone comes after the sink commit: now it is acknowledged,
        // with the batch's failures, and counted.
        let failure = Failure::new("b", "404", Some(404));
        let out = run.message(
            0,
            ToCoordinator::BatchDone {
                id,
                ok: 0,
                bytes: 0,
                retries: 0,
                present: 0,
                failures: vec![failure.clone()],
            },
            t0,
        );
        assert_eq!(acks(&out), vec![(id, vec![failure.clone()])]);
        assert!(out
            .iter()
            .any(|a| matches!(a, Action::RecordFailures(f) if *f == vec![failure.clone()])));
        let t = run.host.totals();
        assert_eq!((t.files_ok, t.files_failed, t.batches_acked), (1, 1, 1));
        // A second BatchDone for it is a broken worker, not a second ack.
        let out = run.done(0, id, 1, t0);
        assert!(acks(&out).is_empty(), "{out:?}");
        assert!(
            matches!(
                out.as_slice(),
                [
                    Action::Worker(WorkerAction::Kill {
                        shard: 0,
                        when: KillWhen::Now,
                        ..
                    }),
                    ..
                ]
            ),
            "{out:?}"
        );
    }

    #[test]
    fn a_dead_worker_gives_its_batches_back_and_is_restarted() {
        let t0 = Instant::now();
        let mut run = Run::new(1, 4);
        let (a, _) = run.deliver(&["a"], 1, t0);
        let (b, _) = run.deliver(&["b"], 1, t0);
        let out = run.dies(0, t0);
        assert_eq!(naks(&out), vec![a, b]);
        assert!(acks(&out).is_empty());
        assert!(
            out.iter().any(|a| matches!(
                a,
                Action::Worker(WorkerAction::RestartAfter { shard: 0, .. })
            )),
            "{out:?}"
        );
        assert!(notes(&out)[0].starts_with("worker 0 died (killed by SIGKILL); restarting in"));
    }

    #[test]
    fn sigterm_drains_for_the_grace_then_gives_back_what_is_left() {
        let t0 = Instant::now();
        let mut run = Run::new(2, 4);
        // Shard 0 holds a batch; one more waits here for room.
        let (a, _) = run.deliver(&["a"], 1, t0);
        let (b, out) = run.deliver(&["b"], 1, t0);
        assert_eq!(batches(&out), vec![(1, b)]);
        run.handle(Input::PullEnded, t0);
        let (c, out) = run.deliver(&["c"], 2, t0);
        assert!(batches(&out).is_empty(), "a batch that runs alone waits");
        let out = run.handle(Input::Signal(StopSignal::Terminate), t0);
        assert_eq!(
            notes(&out),
            vec!["SIGTERM: stopping; letting in-flight batches finish for up to 5s"]
        );
        // What no worker started goes back as soon as the pull request
        // under way has ended; no worker is stopped while it holds a batch.
        assert!(naks(&out).is_empty(), "{out:?}");
        assert!(told_to_exit(&out, false).is_empty(), "{out:?}");
        let out = run.handle(Input::PullEnded, t0);
        assert_eq!(naks(&out), vec![c]);
        assert!(pulls(&out).is_empty(), "a stopping host asks for nothing");
        assert_eq!(run.host.deadline(), Some(t0 + Duration::from_secs(GRACE)));
        // Shard 1 finishes within the grace: acknowledged, and told to exit.
        let out = run.done(1, b, 1, t0 + Duration::from_secs(1));
        assert_eq!(acks(&out), vec![(b, vec![])]);
        assert_eq!(told_to_exit(&out, false), vec![1]);
        assert!(pulls(&out).is_empty(), "a stopping host asks for nothing");
        // The grace runs out with shard 0's batch unfinished.
        let out = run.handle(Input::Deadline, t0 + Duration::from_secs(GRACE));
        assert_eq!(naks(&out), vec![a]);
        assert!(stops_all_now(&out));
        run.exits(0, t0 + Duration::from_secs(GRACE));
        assert!(!run.host.over(), "shard 1's worker has not exited");
        run.exits(1, t0 + Duration::from_secs(GRACE));
        assert!(run.host.over());
        let mut out = Vec::new();
        assert_eq!(run.host.end(&mut out), StopSignal::Terminate.exit_code());
    }

    #[test]
    fn a_second_signal_gives_everything_back_and_stops_at_once() {
        let t0 = Instant::now();
        let mut run = Run::new(1, 4);
        let (a, _) = run.deliver(&["a"], 1, t0);
        run.handle(Input::PullEnded, t0);
        let out = run.handle(Input::Signal(StopSignal::Interrupt), t0);
        assert!(naks(&out).is_empty() && !stops_all_now(&out), "{out:?}");
        run.handle(Input::PullEnded, t0);
        let out = run.handle(Input::Signal(StopSignal::Interrupt), t0);
        assert_eq!(
            notes(&out),
            vec!["second signal: giving the batches back and stopping the workers now"]
        );
        assert_eq!(naks(&out), vec![a]);
        assert!(stops_all_now(&out));
        // The worker's exit is expected: no restart.
        let out = run.exits(0, t0);
        assert!(out.is_empty(), "{out:?}");
        assert!(run.host.over());
    }

    #[test]
    fn a_stop_with_a_pull_open_keeps_its_batches_until_the_pull_ends() {
        let t0 = Instant::now();
        let mut run = Run::new(1, 1);
        // The pull Run::new asked for is still open; a fills the window and
        // b waits here.
        assert!(run.host.pulling());
        let (a, _) = run.deliver(&["a"], 1, t0);
        let (b, out) = run.deliver(&["b"], 1, t0);
        assert!(batches(&out).is_empty(), "{out:?}");
        // A nak now would hand b straight back to the open pull: it is
        // kept, and so is a message that arrives now.
        let out = run.handle(Input::Signal(StopSignal::Terminate), t0);
        assert!(naks(&out).is_empty(), "{out:?}");
        let (c, out) = run.deliver(&["c"], 1, t0);
        assert!(naks(&out).is_empty() && batches(&out).is_empty(), "{out:?}");
        // Both go back once the pull has ended; a stays with its worker.
        let out = run.handle(Input::PullEnded, t0);
        assert_eq!(naks(&out), vec![b, c]);
        assert!(!run.host.pulling());
        let out = run.done(0, a, 1, t0);
        assert_eq!(acks(&out), vec![(a, vec![])]);
    }

    #[test]
    fn held_batches_get_progress_acks_every_third_of_ack_wait() {
        let t0 = Instant::now();
        let mut run = Run::new(1, 1);
        let (a, _) = run.deliver(&["a"], 1, t0);
        run.message(
            0,
            ToCoordinator::BatchStalled {
                id: a,
                ok: 0,
                bytes: 0,
                retries: 1,
                present: 0,
                failures: Vec::new(),
                waiting: vec![0],
            },
            t0,
        );
        let third = ACK_WAIT / 3;
        let out = run.handle(Input::Tick, t0 + third - Duration::from_millis(1));
        assert!(progress(&out).is_empty(), "{out:?}");
        let out = run.handle(Input::Tick, t0 + third);
        assert_eq!(progress(&out), vec![a]);
        let out = run.handle(Input::Tick, t0 + third + Duration::from_secs(1));
        assert!(progress(&out).is_empty(), "once per third: {out:?}");
        let out = run.handle(Input::Tick, t0 + third * 2);
        assert_eq!(progress(&out), vec![a]);
        // A stalled batch leaves its place in the window to another.
        let (b, out) = run.deliver(&["b"], 1, t0 + third * 2);
        assert_eq!(batches(&out), vec![(0, b)]);
    }

    #[test]
    fn a_redelivered_batch_runs_alone() {
        let t0 = Instant::now();
        let mut run = Run::new(2, 4);
        let (a, out) = run.deliver(&["a"], 1, t0);
        assert_eq!(batches(&out), vec![(0, a)]);
        // Delivered a second time: only a worker that holds nothing takes it.
        let (b, out) = run.deliver(&["b1", "b2"], 2, t0);
        assert_eq!(batches(&out), vec![(1, b)]);
        assert_eq!(run.host.totals().batches_redelivered, 1);
        // And that worker takes nothing else while it holds it.
        let (c, out) = run.deliver(&["c"], 1, t0);
        assert_eq!(batches(&out), vec![(0, c)]);
        let (d, out) = run.deliver(&["d"], 2, t0);
        assert!(batches(&out).is_empty(), "no worker is empty: {out:?}");
        // Its death is the batch's: a death of a shard holding one batch
        // alone is blamed on it, and it goes back.
        let out = run.dies(1, t0);
        assert_eq!(naks(&out), vec![b]);
        run.done(0, a, 1, t0);
        let out = run.done(0, c, 1, t0);
        assert_eq!(batches(&out), vec![(0, d)]);
    }

    #[test]
    fn a_batch_delivered_a_fourth_time_is_split_into_parts() {
        let t0 = Instant::now();
        let mut run = Run::new(1, 4);
        let names: Vec<String> = (0..40).map(|k| format!("n{k}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (id, out) = run.deliver(&refs, 4, t0);
        assert!(batches(&out).is_empty(), "{out:?}");
        let parts = out
            .iter()
            .find_map(|a| match a {
                Action::Split { msg, parts, .. } if *msg == id => Some(parts.clone()),
                _ => None,
            })
            .expect("a split");
        assert!(parts.len() > 1 && parts.len() <= poison::SPLIT_PARTS);
        assert_eq!(parts.concat(), names);
        assert_eq!(run.host.totals().batches_split, 1);
    }

    #[test]
    fn a_single_name_that_took_a_host_down_four_times_is_failed() {
        let t0 = Instant::now();
        let mut run = Run::new(1, 4);
        let (id, out) = run.deliver(&["poison"], 5, t0);
        assert!(batches(&out).is_empty(), "{out:?}");
        let failure = Failure::new("poison", poison::POISON_REASON, None);
        assert_eq!(acks(&out), vec![(id, vec![failure])]);
        assert_eq!(run.host.totals().files_failed, 1);
        // Four times alone is not enough.
        let (id, out) = run.deliver(&["poison"], 4, t0);
        assert_eq!(batches(&out), vec![(0, id)]);
    }

    #[test]
    fn a_message_that_is_not_a_batch_is_dropped_for_good() {
        let t0 = Instant::now();
        let mut run = Run::new(1, 4);
        let out = run.handle(
            Input::Delivered(Delivery {
                msg: 7,
                delivered: 1,
                seq: 7,
                part: false,
                batch: Err("expected value".into()),
            }),
            t0,
        );
        assert!(matches!(out.first(), Some(Action::Note(_))), "{out:?}");
        assert!(out.iter().any(|a| matches!(a, Action::Term(7))));
    }

    #[test]
    fn a_finished_job_drains_the_workers_and_ends_the_host() {
        let t0 = Instant::now();
        let mut run = Run::new(2, 4);
        // The first tick publishes and asks whether the job is finished.
        let out = run.handle(Input::Tick, t0);
        assert!(
            matches!(
                out.as_slice(),
                [Action::PublishTotals(r), Action::CheckFinished, ..] if r.state == "running"
            ),
            "{out:?}"
        );
        let out = run.handle(Input::JobFinished(false), t0);
        assert!(told_to_exit(&out, true).is_empty());
        // Not again before PUBLISH_EVERY.
        let out = run.handle(Input::Tick, t0 + Duration::from_millis(500));
        assert!(!out.iter().any(|a| matches!(a, Action::CheckFinished)));
        let later = t0 + PUBLISH_EVERY;
        let out = run.handle(Input::Tick, later);
        assert!(out.iter().any(|a| matches!(a, Action::CheckFinished)));
        let out = run.handle(Input::JobFinished(true), later);
        assert_eq!(notes(&out), vec!["the job is finished"]);
        assert_eq!(told_to_exit(&out, true), vec![0, 1]);
        assert!(pulls(&out).is_empty());
        assert_eq!(run.host.deadline(), Some(later + FINISH_WITHIN));
        // A finishing host asks no more.
        let out = run.handle(Input::Tick, later + PUBLISH_EVERY);
        assert!(matches!(
            out.as_slice(),
            [Action::PublishTotals(r)] if r.state == "draining"
        ));
        run.exits(0, later);
        run.exits(1, later);
        assert!(run.host.over());
        let mut out = Vec::new();
        assert_eq!(run.host.end(&mut out), 0);
        assert!(matches!(
            out.as_slice(),
            [Action::PublishTotals(r)] if r.state == "exited" && r.exit_code == Some(0)
        ));
    }

    #[test]
    fn a_stop_wins_over_a_finished_job() {
        let t0 = Instant::now();
        let mut run = Run::new(1, 4);
        run.handle(Input::Signal(StopSignal::Terminate), t0);
        let out = run.handle(Input::JobFinished(true), t0);
        assert!(notes(&out).is_empty() && told_to_exit(&out, true).is_empty());
        assert!(!run.host.shutdown().finishing());
    }
}
