//! `fetch`'s decisions, apart from their effects.
//!
//! The run loop (run.rs) turns whatever arrives (a page, a worker's frame
//! or exit, a restart timer, a signal, the deadline, the tick) into an
//! [`Input`] and hands it to [`Core::handle`] with the time. The core
//! updates its data and answers with the [`Action`]s to carry out, in
//! order; the loop carries them out, as nextest's dispatcher acts on the
//! response its `handle_event` returns. An effect that fails comes back as
//! an input ([`Input::SpawnFailed`]), so what to do about it is decided
//! here too.
//!
//! The core holds only data: the [`Scheduler`], the [`Shutdown`], the
//! shards' [`Slots`] (the workers' handles are the loop's), the request
//! [`Budget`], what has been listed and what has been shown of the
//! failures. It starts no process, touches no socket or file and reads no
//! clock: the time comes with each input, and what the loop must measure
//! (free space) comes in the input. So every rule of how a run goes on and
//! ends is tested below by driving `handle` and reading its actions.

use crate::budget::Budget;
use crate::failure_log::FailureLog;
use crate::lister::{ListError, Page};
use crate::scheduler::{Scheduler, Snapshot, Totals};
use crate::shutdown::{OnSignal, Reason, Shutdown, StopSignal};
use crate::supervisor::{
    describe_end, kill_on_disconnect, Event, KillWhen, OnExit, Phase, Slots, WorkerAction,
};
use bulkget_protocol::{Failure, FatalKind, SinkKind, ToCoordinator, ToWorker};
use bulkget_report::format::human_bytes;
use bulkget_sink::Space;
use bulkget_stats::{RateWindow, RunState};
use std::time::{Duration, Instant};

/// One thing that happened, as the run loop received it.
#[derive(Debug)]
pub enum Input {
    /// A page from the lister, its failure, or `None` once it has stopped.
    Page(Option<Result<Page, ListError>>),
    Worker(Event),
    /// The state thread's first failure.
    StateFailed(String),
    /// A shard's backoff is over.
    Restart(usize),
    Signal(StopSignal),
    /// The shutdown deadline ([`Core::deadline`]) may have passed.
    Deadline,
    /// The one-second tick: space check, stats, progress, checkpoint.
    /// `space` is OUT's file system's free space, measured by the loop when
    /// [`Core::wants_free_space`] says so (`None` otherwise, or if it could
    /// not be measured).
    Tick {
        space: Option<Space>,
    },
    /// [`WorkerAction::Spawn`] failed.
    SpawnFailed {
        shard: usize,
        generation: u32,
        error: String,
    },
}

/// One effect for the run loop to carry out.
#[derive(Debug)]
pub enum Action {
    /// Start, restart, send to or stop workers: the same orders as
    /// `cluster work`'s, carried out by [`crate::supervisor::Workers::act`].
    Worker(WorkerAction),
    /// Show a message to the person watching.
    Note(String),
    /// Append permanent failures to `failed.jsonl`.
    RecordFailures(Vec<Failure>),
    /// Write a checkpoint of this snapshot.
    Checkpoint(Snapshot),
    /// Publish the run's numbers (coordinator.json, /metrics, progress)
    /// with this state.
    PublishStats(RunState),
}

/// What the core's rules take from the command line.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `--grace`, in seconds.
    pub grace_secs: u64,
    pub quiet: bool,
    pub sink: SinkKind,
    /// OUT, for messages about its file system.
    pub out_dir: String,
    pub min_free_mb: u64,
    pub min_free_inodes: u64,
    pub checkpoint_every: Duration,
    /// The pending queue may hold this many batches before the lister is
    /// asked for more.
    pub max_pending: usize,
}

/// What this process has listed.
#[derive(Debug, Default)]
pub struct Listing {
    /// Pages listed by this process.
    pub pages: u64,
    /// Where the next page is listed from.
    pub marker: Option<String>,
    /// The last page has been listed.
    pub done: bool,
    /// The listing failed; the run stops once what was listed is done.
    pub failed: Option<String>,
}

/// The run's decisions (see the module documentation).
pub struct Core {
    rules: Rules,
    sched: Scheduler,
    shutdown: Shutdown,
    shards: Slots,
    budget: Budget,
    failure_log: FailureLog,
    rate: RateWindow,
    listing: Listing,
    /// What the checkpoint this run resumed from held.
    resumed_from: Totals,
    last_checkpoint: Instant,
}

impl Core {
    /// A run that has started nothing yet; `now` is its start.
    pub fn new(
        rules: Rules,
        sched: Scheduler,
        shards: Slots,
        budget: Budget,
        failure_log: FailureLog,
        resumed_from: Totals,
        now: Instant,
    ) -> Core {
        Core {
            shutdown: Shutdown::new(Duration::from_secs(rules.grace_secs)),
            rules,
            sched,
            shards,
            budget,
            failure_log,
            rate: RateWindow::new(Duration::from_secs(5)),
            listing: Listing::default(),
            resumed_from,
            last_checkpoint: now,
        }
    }

    /// Nothing is left to list (the run resumed at the listing's end).
    pub fn listing_already_done(&mut self) {
        self.listing.done = true;
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
            Input::Page(Some(Ok(page))) => self.on_page(page, now, out),
            Input::Page(Some(Err(e))) => {
                // The pages already listed are still fetched; the run stops
                // once they are done (see `after_input`), so the checkpoint
                // ends at the failed page.
                note(
                    out,
                    format!("bulkget: {e}; finishing the pages already listed"),
                );
                self.listing.failed = Some(e.to_string());
            }
            Input::Page(None) => {
                if !self.listing.done && self.listing.failed.is_none() {
                    self.listing.failed = Some("the lister stopped unexpectedly".into());
                }
            }
            Input::Worker(ev) => self.on_event(ev, now, out),
            Input::StateFailed(why) => self.on_state_failure(why, out),
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
                    note(
                        out,
                        format!("bulkget: cannot restart worker {shard}: {error}"),
                    );
                    self.park(shard, now, out);
                }
            }
            Input::Signal(signal) => self.on_signal(signal, now, out),
            Input::Deadline => {
                if self.shutdown.deadline_passed(now) {
                    note(out, "bulkget: grace period over; stopping workers with batches still in flight (they will be fetched again on resume)".into());
                    self.stop_all_now(out);
                }
            }
            Input::Tick { space } => self.on_tick(space, now, out),
        }
        self.after_input(now, out);
    }

    /// Whether every worker has exited after the run began to end: the loop
    /// is over.
    pub fn over(&self) -> bool {
        self.shutdown.ending() && self.shards.all_exited()
    }

    /// Whether the loop may take a page from the lister now.
    pub fn accepts_pages(&self) -> bool {
        !self.shutdown.stopping()
            && !self.listing.done
            && self.listing.failed.is_none()
            && self.sched.pending_len() < self.rules.max_pending
    }

    /// When the loop is to send [`Input::Deadline`].
    pub fn deadline(&self) -> Option<Instant> {
        self.shutdown.deadline()
    }

    /// Whether the tick is to carry OUT's free space: not while stopping,
    /// nor with the null sink.
    pub fn wants_free_space(&self) -> bool {
        !self.shutdown.stopping() && self.rules.sink != SinkKind::Null
    }

    pub fn sched(&self) -> &Scheduler {
        &self.sched
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    pub fn shards(&self) -> &Slots {
        &self.shards
    }

    pub fn listing(&self) -> &Listing {
        &self.listing
    }

    pub fn resumed_from(&self) -> Totals {
        self.resumed_from
    }

    /// Files per second over the last few seconds.
    pub fn rate(&self) -> f64 {
        self.rate.rate()
    }

    /// The first failures, for the summary.
    pub fn first_failures(&self) -> &[Failure] {
        self.failure_log.first()
    }

    /// The run's state for the stats: draining once it is stopping or the
    /// listing is over, until the final state (`exit_code` given).
    pub fn stats_state(&self, state: RunState, exit_code: Option<i32>) -> RunState {
        if exit_code.is_none() && (self.shutdown.stopping() || self.listing.done) {
            RunState::Draining
        } else {
            state
        }
    }

    /// The run is over: the rate's last sample, and the line that counts
    /// the failures not shown yet, if any.
    pub fn end(&mut self, now: Instant) -> Option<String> {
        self.sample_rate(now);
        self.failure_log.flush()
    }

    /// What every input leads to: batches go out, workers get their
    /// share, and the rules of the run's end are checked.
    fn after_input(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.dispatch(now, out);
        self.pace_workers(out);
        if !self.shutdown.stopping()
            && self.sched.pending_len() == 0
            && self.sched.nothing_in_flight()
        {
            if let Some(why) = self.listing.failed.clone() {
                self.begin_stop(Reason::ListingFailed(why), now, out);
            }
        }
        if self.sched.is_finished() && self.shutdown.finish(now) {
            // Every file is acknowledged: let the workers write their last
            // stats and exit.
            for shard in self.shards.live() {
                out.push(Action::Worker(WorkerAction::Send {
                    shard,
                    msg: ToWorker::Shutdown { drain: true },
                }));
            }
        }
        if self.shutdown.stopping() {
            self.ask_idle_workers_to_exit(out);
        }
    }

    fn on_tick(&mut self, space: Option<Space>, now: Instant, out: &mut Vec<Action>) {
        if let Some(why) = self.space_problem(space) {
            note(
                out,
                format!("bulkget: {why}; stopping with the checkpoint saved"),
            );
            self.begin_stop(Reason::NoSpace(why), now, out);
        }
        if let Some(line) = self.failure_log.tick(now) {
            note(out, line);
        }
        let working = self.working_shards();
        self.budget.tick(now, working);
        // The rate first: the stats show it.
        self.sample_rate(now);
        out.push(Action::PublishStats(RunState::Listing));
        if now.saturating_duration_since(self.last_checkpoint) >= self.rules.checkpoint_every {
            self.last_checkpoint = now;
            out.push(Action::Checkpoint(self.sched.snapshot()));
        }
    }

    /// Whether OUT's file system is about to run out of space or inodes.
    /// Checked once a second: stopping before the disk is full means no
    /// worker ever hits ENOSPC halfway through a file or a transaction.
    fn space_problem(&self, space: Option<Space>) -> Option<String> {
        if !self.wants_free_space() {
            return None;
        }
        let space = space?;
        let min_bytes = self.rules.min_free_mb.saturating_mul(1 << 20);
        if space.free_bytes < min_bytes {
            return Some(format!(
                "only {} free on the file system of {} (--min-free-mb {})",
                human_bytes(space.free_bytes),
                self.rules.out_dir,
                self.rules.min_free_mb
            ));
        }
        if self.rules.sink == SinkKind::Dir && space.free_inodes < self.rules.min_free_inodes {
            return Some(format!(
                "only {} free inodes on the file system of {} (--min-free-inodes {})",
                space.free_inodes, self.rules.out_dir, self.rules.min_free_inodes
            ));
        }
        None
    }

    fn sample_rate(&mut self, now: Instant) {
        let live = self.sched.live_totals();
        self.rate
            .sample(now, live.files_ok + live.files_failed + live.files_present);
    }

    fn spawn(&mut self, shard: usize, out: &mut Vec<Action>) {
        let generation = self.shards.next_generation(shard);
        self.shards.started(shard, generation);
        out.push(Action::Worker(WorkerAction::Spawn { shard, generation }));
        // Its share before any batch: frames arrive in order.
        self.pace_workers(out);
    }

    /// The number of shards that count in dividing the request budget: a
    /// live worker that has work or may get some. A parked, restarting or
    /// stopped shard, and once the listing is over one with nothing in
    /// flight, leave their share to the others.
    fn working_shards(&self) -> usize {
        let no_more_work = self.listing.done && self.sched.pending_len() == 0;
        (0..self.shards.len())
            .filter(|&i| {
                let s = &self.shards[i];
                s.live
                    && !s.down
                    && matches!(s.phase, Phase::Starting | Phase::Running)
                    && !(no_more_work && self.sched.in_flight(i) == 0)
            })
            .count()
    }

    /// Sends each live worker its share of the request budget, if it
    /// changed. Idle workers get the same share as working ones (they
    /// send nothing with it), so a batch that reaches one is paced at once.
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

    fn on_page(&mut self, page: Page, now: Instant, out: &mut Vec<Action>) {
        self.listing.pages += 1;
        self.listing.marker = page.next.clone();
        if page.next.is_none() {
            self.listing.done = true;
        }
        let changed = self.sched.pages_changed();
        let failures = self.sched.add_page(page.names, page.next);
        self.record_failures(failures, now, out);
        if changed == 0 && self.sched.pages_changed() > 0 {
            note(
                out,
                format!(
                    "bulkget: the server lists page {} differently than before the resume; pages listed differently are fetched whole",
                    self.resumed_from.pages_done + self.listing.pages
                ),
            );
        }
    }

    /// The one way a permanent failure is recorded (unsafe names, poison
    /// names, failed fetches): named on stderr (capped, see
    /// [`crate::failure_log`]) and appended to `failed.jsonl`.
    fn record_failures(&mut self, failures: Vec<Failure>, now: Instant, out: &mut Vec<Action>) {
        if failures.is_empty() {
            return;
        }
        for line in self.failure_log.record(&failures, now) {
            note(out, line);
        }
        out.push(Action::RecordFailures(failures));
    }

    fn dispatch(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.shutdown.stopping() {
            return;
        }
        while let Some((shard, batch)) = self.sched.assign() {
            // Each frame gets its own buffer, handed to the writer as is: no
            // copy of the batch beyond the encoding. The size is a close
            // guess (names plus a few bytes of framing each), so the buffer
            // rarely grows.
            let guess = 32 + batch.names.iter().map(|n| n.len() + 9).sum::<usize>();
            let mut frame = Vec::with_capacity(guess);
            bulkget_protocol::frame::encode_batch(batch.id, &batch.names, &mut frame)
                .expect("a batch of checked names fits a frame");
            let id = batch.id;
            let slot = &mut self.shards[shard];
            if let Some(since) = slot.idle_since.take() {
                slot.idle_total += now.saturating_duration_since(since);
            }
            // A shard without a live worker gets nothing: the batch comes
            // back with the worker's exit.
            if slot.live {
                out.push(Action::Worker(WorkerAction::SendBatch { shard, id, frame }));
            }
        }
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
                    self.shard_down(shard, now, out);
                    if self.shards[shard].live {
                        let (when, why) = kill_on_disconnect(end);
                        out.push(Action::Worker(WorkerAction::Kill { shard, when, why }));
                    }
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
                // The worker exits by itself; nothing was sent to it.
                self.shard_down(shard, now, out);
                if !self.shutdown.stopping() {
                    let why = format!(
                        "worker {shard} is another build of bulkget ({theirs}) than this coordinator ({ours})"
                    );
                    note(
                        out,
                        format!("bulkget: {why}; stopping with the checkpoint saved"),
                    );
                    self.begin_stop(Reason::Incompatible(why), now, out);
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
                // Decided before the shard's batches are put back, which
                // may fail the last names and finish the run.
                let ending = self.shutdown.stopping() || self.sched.is_finished();
                if !self.shards[shard].down {
                    self.shard_down(shard, now, out);
                }
                let what = describe_end(&status, killed.as_deref());
                match self.shards.on_exit(shard, generation, ending, now) {
                    OnExit::Stale => {}
                    OnExit::Expected => {
                        if killed.is_some() {
                            note(out, format!("bulkget: worker {shard} {what}"));
                        }
                    }
                    OnExit::RestartAfter(delay) => {
                        let line =
                            format!("bulkget: worker {shard} {what}; restarting in {delay:?}");
                        out.push(Action::Worker(WorkerAction::RestartAfter {
                            shard,
                            delay,
                            ended: what,
                        }));
                        if !self.rules.quiet {
                            note(out, line);
                        }
                    }
                    OnExit::Park => {
                        let policy = self.shards.policy();
                        note(
                            out,
                            format!(
                                "bulkget: worker {shard} {what}; its workers crashed more than {} times in {:?} without acknowledging anything; shard {shard} is parked, the run goes on without it",
                                policy.burst, policy.interval
                            ),
                        );
                        self.park(shard, now, out);
                    }
                }
            }
        }
    }

    /// A frame from the shard's current worker.
    fn on_message(
        &mut self,
        shard: usize,
        msg: ToCoordinator,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        match msg {
            ToCoordinator::Ready => {
                self.shards[shard].phase = Phase::Running;
                if !self.shutdown.stopping() {
                    self.sched.set_available(shard, true);
                }
            }
            ToCoordinator::BatchDone {
                id,
                ok,
                bytes,
                retries,
                present,
                failures,
            } => match self
                .sched
                .batch_done(shard, id, ok, present, bytes, failures)
            {
                Some(done) => {
                    self.sched.add_retries(retries);
                    self.record_failures(done, now, out);
                    self.shards[shard].life.on_progress();
                    if self.sched.in_flight(shard) == 0 {
                        self.shards[shard].idle_since = Some(now);
                    }
                }
                None => {
                    self.shard_down(shard, now, out);
                    self.kill(shard, format!("it acknowledged unknown batch {id}"), out);
                }
            },
            ToCoordinator::BatchStalled {
                id,
                ok,
                bytes,
                retries,
                present,
                failures,
                waiting,
            } => match self
                .sched
                .batch_stalled(shard, id, ok, present, bytes, failures, &waiting)
            {
                Some(done) => {
                    self.sched.add_retries(retries);
                    self.record_failures(done, now, out);
                    self.shards[shard].life.on_progress();
                }
                None => {
                    self.shard_down(shard, now, out);
                    self.kill(
                        shard,
                        format!("it sent a stall report that does not fit batch {id}"),
                        out,
                    );
                }
            },
            ToCoordinator::Pressure { clean, pushback } => {
                self.budget.report(shard, clean, pushback, now);
            }
            ToCoordinator::Fatal { kind, reason } => {
                note(out, format!("bulkget: worker {shard}: {reason}"));
                if kind == FatalKind::NoSpace && !self.shutdown.stopping() {
                    let why = format!("the file system of {} is full", self.rules.out_dir);
                    note(
                        out,
                        format!("bulkget: {why}; stopping with the checkpoint saved"),
                    );
                    let why = format!("{why} (worker {shard}: {reason})");
                    self.begin_stop(Reason::NoSpace(why), now, out);
                }
            }
        }
    }

    /// Kills the shard's live worker now.
    fn kill(&mut self, shard: usize, why: String, out: &mut Vec<Action>) {
        if self.shards[shard].live {
            out.push(Action::Worker(WorkerAction::Kill {
                shard,
                when: KillWhen::Now,
                why,
            }));
        }
    }

    fn park(&mut self, shard: usize, now: Instant, out: &mut Vec<Action>) {
        self.sched.park(shard);
        if self.shards.park(shard) {
            note(
                out,
                "bulkget: every shard is parked; stopping the run".into(),
            );
            self.begin_stop(Reason::AllParked, now, out);
        }
    }

    /// The shard's worker is gone or must go: put its batches back. A
    /// crash now is blamed on the batch if the worker held one suspect
    /// batch alone (see restart.rs). The restart waits for the exit.
    fn shard_down(&mut self, shard: usize, now: Instant, out: &mut Vec<Action>) {
        let blamed = self.sched.holds_suspect_alone(shard);
        self.shards[shard].life.on_down(blamed);
        let failures = self.sched.shard_down(shard);
        self.record_failures(failures, now, out);
        let slot = &mut self.shards[shard];
        slot.down = true;
        slot.idle_since.get_or_insert(now);
    }

    fn on_signal(&mut self, signal: StopSignal, now: Instant, out: &mut Vec<Action>) {
        match self.shutdown.on_signal(signal, now) {
            OnSignal::Graceful { began } => {
                note(
                    out,
                    format!(
                        "bulkget: {}: stopping; letting in-flight batches finish for up to {}s (press Ctrl-C again to stop at once)",
                        signal.name(),
                        self.rules.grace_secs
                    ),
                );
                if began {
                    self.stop_began(out);
                }
            }
            OnSignal::Now => {
                note(out, "bulkget: second signal: stopping workers now".into());
                self.stop_all_now(out);
            }
        }
    }

    /// The state thread could not make the run durable (see
    /// [`crate::state_thread`]). Nothing acknowledged from now on could be
    /// saved, so the run stops at once: no grace for in-flight batches
    /// (they are fetched again on resume), whatever stop was under way.
    fn on_state_failure(&mut self, why: String, out: &mut Vec<Action>) {
        let message = format!("bulkget: {why}; stopping the run now, without a further checkpoint");
        if !self.shutdown.state_failed(why) {
            return;
        }
        note(out, message);
        for shard in 0..self.shards.len() {
            self.sched.set_available(shard, false);
        }
        self.stop_all_now(out);
    }

    /// Begins a graceful stop for `reason`, unless one is under way.
    fn begin_stop(&mut self, reason: Reason, now: Instant, out: &mut Vec<Action>) {
        if self.shutdown.begin(reason, now) {
            self.stop_began(out);
        }
    }

    /// A graceful stop began: no shard gets new work, and idle workers are
    /// told to exit.
    fn stop_began(&mut self, out: &mut Vec<Action>) {
        for shard in 0..self.shards.len() {
            self.sched.set_available(shard, false);
        }
        self.ask_idle_workers_to_exit(out);
    }

    /// While stopping, a worker with nothing in flight is told to exit.
    fn ask_idle_workers_to_exit(&mut self, out: &mut Vec<Action>) {
        let sched = &self.sched;
        for shard in self.shards.ask_idle_to_exit(|k| sched.in_flight(k)) {
            out.push(Action::Worker(WorkerAction::Send {
                shard,
                msg: ToWorker::Shutdown { drain: false },
            }));
        }
    }

    /// Every worker is stopped now; none is restarted.
    fn stop_all_now(&mut self, out: &mut Vec<Action>) {
        self.shards.stop_all_now();
        out.push(Action::Worker(WorkerAction::StopAllNow));
    }
}

fn note(out: &mut Vec<Action>, line: String) {
    out.push(Action::Note(line));
}

#[cfg(test)]
mod tests {
    //! The rules of a run, driven through [`Core::handle`] without a
    //! process, a socket or a clock: each test feeds inputs at chosen
    //! times and reads the actions.

    use super::*;
    use crate::exit;
    use crate::restart::RestartPolicy;
    use crate::scheduler::ListPosition;
    use crate::supervisor::{SocketEnd, EXIT_AFTER_CLOSE};
    use bulkget_protocol::{BatchId, Names};
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;
    use std::process::ExitStatus;

    const GRACE: Duration = Duration::from_secs(30);

    /// A run of `shards` shards, windows of one batch of two names, whose
    /// workers have all started and said they are ready at `t0`.
    struct Run {
        core: Core,
        t0: Instant,
    }

    impl Run {
        fn new(shards: usize) -> Run {
            Run::with_sink(shards, SinkKind::Null)
        }

        fn with_sink(shards: usize, sink: SinkKind) -> Run {
            let t0 = Instant::now();
            let rules = Rules {
                grace_secs: GRACE.as_secs(),
                quiet: false,
                sink,
                out_dir: "/out".into(),
                min_free_mb: 100,
                min_free_inodes: 1_000,
                checkpoint_every: Duration::from_secs(10),
                max_pending: 16,
            };
            let policy = RestartPolicy {
                burst: 2,
                interval: Duration::from_secs(10),
                ..RestartPolicy::default()
            };
            let mut core = Core::new(
                rules,
                Scheduler::new(shards, 1, 2, ListPosition::Start),
                Slots::new(shards, policy, t0),
                Budget::new(shards, None, false, t0),
                FailureLog::new(Path::new("/state/failed.jsonl")),
                Totals::default(),
                t0,
            );
            let mut out = Vec::new();
            core.start(&mut out);
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
            let mut run = Run { core, t0 };
            for shard in 0..shards {
                run.message(shard, 0, ToCoordinator::Ready, t0);
            }
            run
        }

        fn at(&self, secs: u64) -> Instant {
            self.t0 + Duration::from_secs(secs)
        }

        fn input(&mut self, input: Input, now: Instant) -> Vec<Action> {
            let mut out = Vec::new();
            self.core.handle(input, now, &mut out);
            out
        }

        fn message(
            &mut self,
            shard: usize,
            generation: u32,
            msg: ToCoordinator,
            now: Instant,
        ) -> Vec<Action> {
            self.input(
                Input::Worker(Event::Message {
                    shard,
                    generation,
                    msg,
                }),
                now,
            )
        }

        /// A page of `count` names; `last` ends the listing.
        fn page(&mut self, count: usize, last: bool, now: Instant) -> Vec<Action> {
            let mut names = Names::new();
            for k in 0..count {
                names.push(&format!("file-{k}"));
            }
            let next = (!last).then(|| "next".to_string());
            self.input(Input::Page(Some(Ok(Page { names, next }))), now)
        }

        fn ack(&mut self, shard: usize, id: BatchId, now: Instant) -> Vec<Action> {
            let msg = ToCoordinator::BatchDone {
                id,
                ok: 2,
                bytes: 200,
                retries: 0,
                present: 0,
                failures: Vec::new(),
            };
            self.message(shard, self.core.shards()[shard].generation, msg, now)
        }

        /// The shard's current worker exits, `killed` by the coordinator
        /// or not.
        fn exited(
            &mut self,
            shard: usize,
            status: i32,
            killed: Option<&str>,
            now: Instant,
        ) -> Vec<Action> {
            let generation = self.core.shards()[shard].generation;
            self.input(
                Input::Worker(Event::Exited {
                    shard,
                    generation,
                    status: ExitStatus::from_raw(status),
                    killed: killed.map(str::to_string),
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

    /// The shards told to shut down, with or without draining.
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

    fn restarts(actions: &[Action]) -> Vec<(usize, Duration)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Worker(WorkerAction::RestartAfter { shard, delay, .. }) => {
                    Some((*shard, *delay))
                }
                _ => None,
            })
            .collect()
    }

    fn spawns(actions: &[Action]) -> Vec<(usize, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Worker(WorkerAction::Spawn { shard, generation }) => {
                    Some((*shard, *generation))
                }
                _ => None,
            })
            .collect()
    }

    const SIGKILL: i32 = libc::SIGKILL;

    #[test]
    fn the_first_signal_stops_gracefully_and_the_second_stops_every_worker_now() {
        let mut run = Run::new(2);
        let t0 = run.t0;
        // Three batches: one in each window, one waiting.
        let sent = batches(&run.page(6, false, t0));
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(run.core.accepts_pages());

        let out = run.input(Input::Signal(StopSignal::Interrupt), run.at(1));
        assert_eq!(
            notes(&out),
            ["bulkget: SIGINT: stopping; letting in-flight batches finish for up to 30s (press Ctrl-C again to stop at once)"]
        );
        assert!(!stops_all_now(&out), "the first signal gives grace");
        assert!(
            told_to_exit(&out, false).is_empty(),
            "both workers have a batch in flight"
        );
        assert!(!run.core.accepts_pages(), "no more pages while stopping");
        assert_eq!(run.core.deadline(), Some(run.at(1) + GRACE));

        // A worker that finishes its batch gets no new one: it is told to
        // exit instead.
        let (shard, id) = sent[1];
        let out = run.ack(shard, id, run.at(2));
        assert!(batches(&out).is_empty(), "{out:?}");
        assert_eq!(told_to_exit(&out, false), [shard]);

        let out = run.input(Input::Signal(StopSignal::Terminate), run.at(3));
        assert_eq!(
            notes(&out),
            ["bulkget: second signal: stopping workers now"]
        );
        assert!(stops_all_now(&out));
        assert_eq!(run.core.shutdown().exit_code(0), exit::INTERRUPTED);

        // The run is over once every worker has exited, and nothing restarts.
        assert!(!run.core.over());
        for shard in 0..2 {
            let out = run.exited(shard, libc::SIGTERM, None, run.at(4));
            assert!(restarts(&out).is_empty(), "{out:?}");
        }
        assert!(run.core.over());
    }

    #[test]
    fn the_grace_deadline_stops_every_worker_now_once() {
        let mut run = Run::new(1);
        assert_eq!(batches(&run.page(2, false, run.t0)).len(), 1);
        assert_eq!(run.core.deadline(), None, "no stop, no deadline");
        run.input(Input::Signal(StopSignal::Terminate), run.at(1));
        let before = run.input(Input::Deadline, run.at(30));
        assert!(!stops_all_now(&before), "a second early");
        let out = run.input(Input::Deadline, run.at(31));
        assert!(stops_all_now(&out));
        assert_eq!(
            notes(&out),
            ["bulkget: grace period over; stopping workers with batches still in flight (they will be fetched again on resume)"]
        );
        assert_eq!(run.core.deadline(), None);
        assert!(
            !stops_all_now(&run.input(Input::Deadline, run.at(40))),
            "once"
        );
        assert_eq!(run.core.shutdown().exit_code(0), exit::TERMINATED);
    }

    #[test]
    fn a_crash_restarts_after_a_backoff_and_too_many_park_the_shard() {
        let mut run = Run::new(2);
        let t = run.at(1);
        let out = run.exited(0, SIGKILL, None, t);
        assert_eq!(restarts(&out), [(0, Duration::from_millis(100))]);
        assert_eq!(
            notes(&out),
            ["bulkget: worker 0 died (killed by SIGKILL); restarting in 100ms"]
        );
        assert_eq!(run.core.shards()[0].phase, Phase::Backoff);
        assert!(spawns(&out).is_empty(), "the restart waits for the backoff");

        let out = run.input(Input::Restart(0), t);
        assert_eq!(spawns(&out), [(0, 1)]);
        // The second crash backs off longer; the third without any batch
        // acknowledged is one too many.
        let out = run.exited(0, SIGKILL, None, t);
        assert_eq!(restarts(&out), [(0, Duration::from_millis(200))]);
        assert_eq!(spawns(&run.input(Input::Restart(0), t)), [(0, 2)]);
        let out = run.exited(0, SIGKILL, None, t);
        assert!(restarts(&out).is_empty());
        assert_eq!(
            notes(&out),
            ["bulkget: worker 0 died (killed by SIGKILL); its workers crashed more than 2 times in 10s without acknowledging anything; shard 0 is parked, the run goes on without it"]
        );
        assert_eq!(run.core.shards()[0].phase, Phase::Parked);
        assert!(!run.core.shutdown().stopping(), "shard 1 goes on");

        // A restart timer that fires for a parked shard starts nothing.
        assert!(spawns(&run.input(Input::Restart(0), t)).is_empty());
    }

    #[test]
    fn a_run_whose_every_shard_is_parked_stops_with_its_own_exit_code() {
        let mut run = Run::new(2);
        let t = run.at(1);
        let mut last = Vec::new();
        for shard in 0..2 {
            for _ in 0..2 {
                run.exited(shard, SIGKILL, None, t);
                assert_eq!(spawns(&run.input(Input::Restart(shard), t)).len(), 1);
            }
            last = run.exited(shard, SIGKILL, None, t);
        }
        assert!(notes(&last).contains(&"bulkget: every shard is parked; stopping the run"));
        assert_eq!(run.core.shutdown().reason(), Some(&Reason::AllParked));
        assert_eq!(run.core.shutdown().exit_code(0), exit::ALL_PARKED);
        assert!(run.core.over(), "no worker is left");
    }

    #[test]
    fn a_failed_restart_parks_the_shard() {
        let mut run = Run::new(1);
        let t = run.at(1);
        run.exited(0, SIGKILL, None, t);
        assert_eq!(spawns(&run.input(Input::Restart(0), t)), [(0, 1)]);
        let out = run.input(
            Input::SpawnFailed {
                shard: 0,
                generation: 1,
                error: "Resource temporarily unavailable".into(),
            },
            t,
        );
        assert_eq!(
            notes(&out),
            [
                "bulkget: cannot restart worker 0: Resource temporarily unavailable",
                "bulkget: every shard is parked; stopping the run"
            ]
        );
        assert_eq!(run.core.shards()[0].phase, Phase::Parked);
        assert!(!run.core.shards()[0].live);
        assert!(run.core.over());
    }

    #[test]
    fn every_file_acknowledged_drains_every_worker_and_nothing_restarts() {
        let mut run = Run::new(2);
        let sent = batches(&run.page(2, true, run.t0));
        assert_eq!(sent.len(), 1);
        assert!(!run.core.accepts_pages(), "the listing is done");
        let (shard, id) = sent[0];
        let out = run.ack(shard, id, run.at(1));
        let mut drained = told_to_exit(&out, true);
        drained.sort();
        assert_eq!(drained, [0, 1]);
        assert!(run.core.shutdown().finishing());
        assert_eq!(
            run.core.deadline(),
            Some(run.at(1) + crate::shutdown::FINISH_WITHIN)
        );
        // Told once.
        assert!(told_to_exit(&run.input(Input::Tick { space: None }, run.at(2)), true).is_empty());
        for shard in 0..2 {
            let out = run.exited(shard, 0, None, run.at(2));
            assert!(
                restarts(&out).is_empty() && notes(&out).is_empty(),
                "{out:?}"
            );
        }
        assert!(run.core.over());
        assert!(run.core.shutdown().complete(run.core.sched().is_finished()));
        assert_eq!(run.core.shutdown().exit_code(0), exit::OK);
    }

    #[test]
    fn a_failed_listing_stops_the_run_once_the_pages_listed_are_done() {
        let mut run = Run::new(1);
        let sent = batches(&run.page(2, false, run.t0));
        let error = ListError::Http {
            page: "page 2".into(),
            error: "HTTP 500".into(),
        };
        let out = run.input(Input::Page(Some(Err(error))), run.at(1));
        assert_eq!(
            notes(&out),
            ["bulkget: listing failed at page 2: HTTP 500; finishing the pages already listed"]
        );
        assert!(
            !run.core.shutdown().stopping(),
            "a batch is still in flight"
        );
        assert!(!run.core.accepts_pages());

        let (shard, id) = sent[0];
        let out = run.ack(shard, id, run.at(2));
        assert!(run.core.shutdown().stopping());
        assert_eq!(told_to_exit(&out, false), [0]);
        assert_eq!(run.core.shutdown().exit_code(0), exit::LISTING_FAILED);
    }

    #[test]
    fn a_state_failure_stops_every_worker_at_once_without_a_last_checkpoint() {
        let mut run = Run::new(2);
        batches(&run.page(4, false, run.t0));
        run.input(Input::Signal(StopSignal::Interrupt), run.at(1));
        let out = run.input(Input::StateFailed("syncfs: EIO".into()), run.at(2));
        assert_eq!(
            notes(&out),
            ["bulkget: syncfs: EIO; stopping the run now, without a further checkpoint"]
        );
        assert!(stops_all_now(&out), "no grace, whatever stop was under way");
        assert!(!run.core.shutdown().last_checkpoint_allowed());
        assert_eq!(run.core.shutdown().exit_code(0), exit::ERROR);
        let again = run.input(Input::StateFailed("again".into()), run.at(3));
        assert!(
            !stops_all_now(&again) && notes(&again).is_empty(),
            "the first failure counts"
        );
    }

    #[test]
    fn a_closed_socket_gets_time_to_exit_and_a_broken_protocol_is_killed_now() {
        let mut run = Run::new(2);
        let sent = batches(&run.page(4, false, run.t0));
        let out = run.input(
            Input::Worker(Event::Disconnected {
                shard: 0,
                generation: 0,
                end: SocketEnd::Closed,
            }),
            run.at(1),
        );
        assert!(
            matches!(
                out.as_slice(),
                [Action::Worker(WorkerAction::Kill { shard: 0, when: KillWhen::UnlessExitedWithin(after), .. }), ..]
                    if *after == EXIT_AFTER_CLOSE
            ),
            "{out:?}"
        );
        assert!(run.core.shards()[0].down);
        // Its batch goes back and, with room in shard 1's window only once
        // that one acknowledges, goes there.
        let (_, id1) = sent
            .iter()
            .copied()
            .find(|&(k, _)| k == 1)
            .expect("shard 1 has a batch");
        let out = run.ack(1, id1, run.at(2));
        assert_eq!(batches(&out).len(), 1);
        assert_eq!(batches(&out)[0].0, 1);

        let out = run.ack(1, 99, run.at(3));
        assert!(
            matches!(
                out.as_slice(),
                [Action::Worker(WorkerAction::Kill { shard: 1, when: KillWhen::Now, why }), ..]
                    if why == "it acknowledged unknown batch 99"
            ),
            "{out:?}"
        );
    }

    #[test]
    fn a_tick_with_too_little_space_stops_the_run_and_checkpoints_on_its_interval() {
        let mut run = Run::with_sink(1, SinkKind::Dir);
        assert!(run.core.wants_free_space());
        let plenty = Space {
            free_bytes: 1 << 40,
            free_inodes: 1 << 30,
        };
        let out = run.input(
            Input::Tick {
                space: Some(plenty),
            },
            run.at(1),
        );
        assert!(out
            .iter()
            .any(|a| matches!(a, Action::PublishStats(RunState::Listing))));
        assert!(!out.iter().any(|a| matches!(a, Action::Checkpoint(_))));
        assert!(!run.core.shutdown().stopping());
        let out = run.input(
            Input::Tick {
                space: Some(plenty),
            },
            run.at(10),
        );
        assert!(out.iter().any(|a| matches!(a, Action::Checkpoint(_))));

        let low = Space {
            free_bytes: 1 << 20,
            free_inodes: 1 << 30,
        };
        let out = run.input(Input::Tick { space: Some(low) }, run.at(11));
        let notes = notes(&out);
        assert!(
            notes[0].starts_with("bulkget: only ") && notes[0].ends_with(" free on the file system of /out (--min-free-mb 100); stopping with the checkpoint saved"),
            "{notes:?}"
        );
        assert!(matches!(
            run.core.shutdown().reason(),
            Some(Reason::NoSpace(_))
        ));
        assert_eq!(run.core.shutdown().exit_code(0), exit::NO_SPACE);
        assert!(!run.core.wants_free_space(), "not measured while stopping");
    }
}
