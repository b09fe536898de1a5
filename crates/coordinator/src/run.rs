//! `bulkget fetch`: the run loop.
//!
//! One task owns every decision, as nextest's dispatcher does: it
//! `select!`s over list pages, worker events, restart timers, signals, the
//! shutdown deadline and a one-second tick, and turns what arrived into an
//! `Input`; `Run::handle` then decides, with the rules of how the run
//! ends in [`Shutdown`] and those of a shard's life in
//! [`Shards`], and updates the [`Scheduler`], the workers and
//! the state directory. What the run reports is rendered in
//! [`crate::report`]. Blocking work on the state directory (appending
//! failures, syncing, writing checkpoints) runs on a separate thread fed in
//! order through a channel, so a slow disk never stalls dispatch
//! ([`crate::state_thread`]); its first failure stops the run at once.

use crate::args::{FetchArgs, Toggle};
use crate::budget::Budget;
use crate::config::{self, HostConfig, Paths};
use crate::exit;
use crate::failure_log::FailureLog;
use crate::lister::{ListError, ListerThread, ListerWait, Page};
use crate::metrics::Metrics;
use crate::progress::{note, Progress};
use crate::report;
use crate::restart::RestartPolicy;
use crate::scheduler::{DoneAfter, ListPosition, Scheduler, Totals};
use crate::shutdown::{self, OnSignal, Reason, Shutdown, StopSignal, StopSignals};
use crate::state::{RunInfo, Start, StateDir, StateError};
use crate::state_thread::StateHandle;
use crate::supervisor::{self, describe_end, Event, OnExit, Phase, Shards};
use bulkget_console::{outln, MESSAGES};
use bulkget_http::{Endpoint, Transport};
use bulkget_protocol::{Failure, FatalKind, SinkKind, ToCoordinator, Version, WorkerSettings};
use bulkget_report::format::human_bytes;
use bulkget_stats::{CoordinatorStats, RateWindow, RunState, ShardSummary, SummaryState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Runs `bulkget fetch` and returns the process exit code.
pub fn fetch(args: FetchArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(target: MESSAGES, "bulkget: cannot start runtime: {e}");
            return exit::ERROR;
        }
    };
    runtime.block_on(async move {
        match Run::setup(args) {
            Ok(Setup::Go(run)) => run.main().await,
            Ok(Setup::Done(code)) => code,
            Err((code, msg)) => {
                tracing::error!(target: MESSAGES, "bulkget: {msg}");
                code
            }
        }
    })
}

enum Setup {
    Go(Box<Run>),
    Done(i32),
}

struct Run {
    args: FetchArgs,
    endpoint: Endpoint,
    /// The lister's connect path (TLS, proxy, headers).
    transport: Transport,
    state_dir: PathBuf,
    settings: WorkerSettings,
    sched: Scheduler,
    start_position: ListPosition,
    resumed_from: Totals,
    /// A refresh: names already in the sink are counted, not fetched.
    refresh: bool,
    /// The state directory, written in order on a thread of its own.
    state: StateHandle,
    /// The state thread's first failure, taken by the run loop.
    state_failed: Option<mpsc::UnboundedReceiver<String>>,
    /// What has been shown of the failed files.
    failure_log: FailureLog,
    /// The shards' slots, which own the workers' handles.
    shards: Shards,
    started: Instant,
    started_at: String,
    pages_listed: u64,
    current_marker: Option<String>,
    listing_done: bool,
    lister_wait: Arc<ListerWait>,
    rate: RateWindow,
    /// Whether and why the run is ending, and until when workers may take.
    shutdown: Shutdown,
    /// The listing failed; the run stops once what was listed is done.
    listing_failed: Option<String>,
    progress: Progress,
    /// `GET /metrics`, with `--metrics-addr`.
    metrics: Option<Metrics>,
    /// The request budget: `--max-rps` and the run-wide slow-down.
    budget: Budget,
}

impl Run {
    fn setup(args: FetchArgs) -> Result<Setup, (i32, String)> {
        let HostConfig {
            endpoint,
            connection,
            filter,
            paths,
            workers,
            mut settings,
        } = HostConfig::from_args(&args)?;
        let Paths { out, state_dir, .. } = paths;
        let sink = settings.sink;
        let info = RunInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            url: endpoint.url(),
            out_dir: out.display().to_string(),
            sink: config::sink_name(sink).into(),
            layout: config::layout_name(settings.layout).into(),
            shards: workers,
            created_at: bulkget_stats::now_rfc3339(),
            header_names: connection.header_names(),
            include: args.filter.include.clone(),
            exclude: args.filter.exclude.clone(),
        };
        let (mut state, start) = StateDir::open(&state_dir, &out, &info, args.resume, args.refresh)
            .map_err(|e| {
                let code = match e {
                    StateError::Io(_) => exit::ERROR,
                    _ => exit::STATE_CONFLICT,
                };
                (code, e.to_string())
            })?;
        let refresh = start.is_refresh();
        let (start_position, totals, done_after) = match start {
            Start::Fresh => (ListPosition::Start, Totals::default(), DoneAfter::default()),
            Start::Resume(cp) => {
                if !args.quiet {
                    tracing::info!(
                        target: MESSAGES,
                        "bulkget: resuming from the checkpoint: {} files done before it, listing from {}",
                        cp.totals.files_ok + cp.totals.files_failed,
                        match &cp.position {
                            ListPosition::Start => "the first page".to_string(),
                            ListPosition::Marker(m) => format!("marker {m:?}"),
                            ListPosition::Done => "the end".to_string(),
                        }
                    );
                }
                (cp.position, cp.totals, cp.done_after)
            }
            Start::Refresh(cp) => {
                if !args.quiet {
                    tracing::info!(
                        target: MESSAGES,
                        "bulkget: refreshing the finished run ({} files ok, {} failed): listing \
                         every page again and fetching the names not in the sink yet",
                        cp.totals.files_ok + cp.totals.files_present,
                        cp.totals.files_failed
                    );
                }
                (ListPosition::Start, Totals::default(), DoneAfter::default())
            }
            Start::AlreadyComplete(cp) => {
                let t = cp.totals;
                outln!(
                    "bulkget: the run in {} is already complete: {} files ok, {} failed; nothing to do \
                     (--refresh fetches the names listed since)",
                    state_dir.display(),
                    t.files_ok + t.files_present,
                    t.files_failed
                );
                return Ok(Setup::Done(if t.files_failed > 0 {
                    exit::FILES_FAILED
                } else {
                    exit::OK
                }));
            }
        };
        settings.refresh = refresh;
        bulkget_stats::schema::fresh_shards_dir(&state_dir).map_err(|e| {
            (
                exit::ERROR,
                format!("cannot prepare {}/shards: {e}", state_dir.display()),
            )
        })?;

        if let Some(n) = args.test.fail_sync_after() {
            state.fail_sync_after(n);
        }
        let failure_log = FailureLog::new(&state.failed_path());
        let (state, state_failed) = StateHandle::spawn(state)
            .map_err(|e| (exit::ERROR, format!("cannot start state thread: {e}")))?;

        let policy = RestartPolicy {
            burst: args.restart_burst,
            interval: Duration::from_secs(args.restart_interval),
            ..RestartPolicy::default()
        };
        let sched = Scheduler::new(
            workers,
            args.window,
            args.batch_size,
            start_position.clone(),
        )
        .resume(totals, done_after)
        .with_affinity(sink == SinkKind::Sqlite)
        // No glob, no filter: the scheduler then tests nothing per name.
        .with_filter((!filter.is_empty()).then_some(filter));
        let shards = Shards::new(workers, policy, Instant::now());
        let progress = Progress::new(args.progress, args.quiet);
        let metrics = match args.metrics_addr {
            None => None,
            Some(addr) => Some(
                Metrics::start(addr, state_dir.clone(), workers).map_err(|e| {
                    (
                        exit::ERROR,
                        format!("--metrics-addr: cannot serve metrics on {addr}: {e}"),
                    )
                })?,
            ),
        };
        if let Some(m) = &metrics {
            tracing::info!("serving metrics on http://{}/metrics", m.addr);
        }
        let budget = Budget::new(
            workers,
            args.max_rps,
            args.adaptive == Toggle::On,
            Instant::now(),
        );
        Ok(Setup::Go(Box::new(Run {
            shutdown: Shutdown::new(Duration::from_secs(args.grace)),
            args,
            endpoint,
            transport: connection.transport,
            state_dir,
            settings,
            sched,
            start_position,
            resumed_from: totals,
            refresh,
            state,
            state_failed: Some(state_failed),
            failure_log,
            shards,
            started: Instant::now(),
            started_at: bulkget_stats::now_rfc3339(),
            pages_listed: 0,
            current_marker: None,
            listing_done: false,
            lister_wait: Arc::new(ListerWait::default()),
            rate: RateWindow::new(Duration::from_secs(5)),
            listing_failed: None,
            progress,
            metrics,
            budget,
        })))
    }

    async fn main(mut self: Box<Self>) -> i32 {
        let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
        let (restart_tx, mut restarts) = mpsc::unbounded_channel::<usize>();
        for shard in 0..self.shards.len() {
            if let Err(e) = self.spawn(shard, &events_tx) {
                tracing::error!(target: MESSAGES, "bulkget: cannot start worker: {e}");
                return exit::ERROR;
            }
        }

        // The page channel holds one page, and the lister asks for a page
        // only once it has room: with the one being cut into batches, at
        // most two parsed pages are in memory (ARCHITECTURE.md, "Memory").
        let (page_tx, mut pages) = mpsc::channel::<Result<Page, ListError>>(1);
        let lister = if self.start_position == ListPosition::Done {
            self.listing_done = true;
            None
        } else {
            let config = crate::service::lister_config(&self.args.service, self.transport.clone());
            match ListerThread::spawn(
                self.endpoint.clone(),
                self.start_position.clone(),
                config,
                page_tx,
                self.lister_wait.clone(),
            ) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::error!(target: MESSAGES, "bulkget: cannot start the lister: {e}");
                    return exit::ERROR;
                }
            }
        };

        let mut signals = StopSignals::install().expect("signal handler");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut cx = LoopContext {
            events: events_tx,
            restarts: restart_tx,
            last_checkpoint: Instant::now(),
            checkpoint_every: Duration::from_secs(self.args.checkpoint_interval.max(1)),
        };
        let mut state_failed = self.state_failed.take().expect("taken once");
        // The pending queue may hold this many batches before the lister is
        // asked for more. It only needs to refill windows between two pages, so it
        // is not as deep as the windows; twice that, because with affinity
        // a restarting shard's batches wait in it while the others work.
        let max_pending = 2 * self.shards.len() * self.args.window.min(8);

        loop {
            let accepting = !self.shutdown.stopping()
                && !self.listing_done
                && self.listing_failed.is_none()
                && self.sched.pending_len() < max_pending;
            // `select!` only turns what arrived into an input; `handle`
            // decides what it means.
            let input = tokio::select! {
                page = pages.recv(), if accepting => Input::Page(page),
                Some(ev) = events.recv() => Input::Worker(ev),
                Some(why) = state_failed.recv() => Input::StateFailed(why),
                Some(shard) = restarts.recv() => Input::Restart(shard),
                signal = signals.recv() => Input::Signal(signal),
                () = shutdown::sleep_until(self.shutdown.deadline()) => Input::Deadline,
                _ = tick.tick() => Input::Tick,
            };
            self.handle(input, &mut cx);

            self.dispatch();
            self.pace_workers();

            if !self.shutdown.stopping()
                && self.sched.pending_len() == 0
                && self.sched.nothing_in_flight()
            {
                if let Some(why) = self.listing_failed.clone() {
                    self.begin_stop(Reason::ListingFailed(why));
                }
            }
            if self.sched.is_finished() && self.shutdown.finish(Instant::now()) {
                // Every file is acknowledged: let the workers write their
                // last stats and exit.
                self.shards.drain_all();
            }
            if self.shutdown.ending() && self.stop_ready() {
                break;
            }
        }
        drop(lister);
        self.finish().await
    }

    /// Acts on one input of the run loop.
    fn handle(&mut self, input: Input, cx: &mut LoopContext) {
        match input {
            Input::Page(Some(Ok(page))) => self.on_page(page),
            Input::Page(Some(Err(e))) => {
                // The pages already listed are still fetched; the run stops
                // once they are done (see the loop), so the checkpoint ends
                // at the failed page.
                note!(
                    self.progress,
                    "bulkget: {e}; finishing the pages already listed"
                );
                self.listing_failed = Some(e.to_string());
            }
            Input::Page(None) => {
                if !self.listing_done && self.listing_failed.is_none() {
                    self.listing_failed = Some("the lister stopped unexpectedly".into());
                }
            }
            Input::Worker(ev) => self.on_event(ev, &cx.restarts),
            Input::StateFailed(why) => self.on_state_failure(why),
            Input::Restart(shard) => {
                if !self.shutdown.ending() && self.shards[shard].phase == Phase::Backoff {
                    if let Err(e) = self.spawn(shard, &cx.events) {
                        note!(self.progress, "bulkget: cannot restart worker {shard}: {e}");
                        self.park(shard);
                    }
                }
            }
            Input::Signal(signal) => self.on_signal(signal),
            Input::Deadline => {
                if self.shutdown.deadline_passed(Instant::now()) {
                    note!(self.progress, "bulkget: grace period over; stopping workers with batches still in flight (they will be fetched again on resume)");
                    self.stop_workers_now();
                }
            }
            Input::Tick => {
                if let Some(why) = self.space_problem() {
                    note!(
                        self.progress,
                        "bulkget: {why}; stopping with the checkpoint saved"
                    );
                    self.begin_stop(Reason::NoSpace(why));
                }
                if let Some(line) = self.failure_log.tick(Instant::now()) {
                    note!(self.progress, "{line}");
                }
                let working = self.working_shards().len();
                self.budget.tick(Instant::now(), working);
                // Progress first: it samples the rate the stats file shows.
                self.update_progress();
                self.write_stats(RunState::Listing, None);
                if cx.last_checkpoint.elapsed() >= cx.checkpoint_every {
                    cx.last_checkpoint = Instant::now();
                    self.checkpoint_async();
                }
            }
        }
    }

    /// Whether OUT's file system is about to run out of space or inodes.
    /// Checked once a second: stopping before the disk is full means no
    /// worker ever hits ENOSPC halfway through a file or a transaction.
    fn space_problem(&self) -> Option<String> {
        if self.shutdown.stopping() || self.settings.sink == SinkKind::Null {
            return None;
        }
        let space = bulkget_sink::free_space(Path::new(&self.settings.out_dir)).ok()?;
        let min_bytes = self.args.min_free_mb.saturating_mul(1 << 20);
        if space.free_bytes < min_bytes {
            return Some(format!(
                "only {} free on the file system of {} (--min-free-mb {})",
                human_bytes(space.free_bytes),
                self.settings.out_dir,
                self.args.min_free_mb
            ));
        }
        if self.settings.sink == SinkKind::Dir && space.free_inodes < self.args.min_free_inodes {
            return Some(format!(
                "only {} free inodes on the file system of {} (--min-free-inodes {})",
                space.free_inodes, self.settings.out_dir, self.args.min_free_inodes
            ));
        }
        None
    }

    fn spawn(
        &mut self,
        shard: usize,
        events: &mpsc::UnboundedSender<Event>,
    ) -> std::io::Result<()> {
        let version = self.announced_version();
        self.shards.spawn(shard, &version, &self.settings, events)?;
        // Its share before any batch: frames arrive in order.
        self.pace_workers();
        Ok(())
    }

    /// The shards that count in dividing the request budget: a live worker
    /// that has work or may get some. A parked, restarting or stopped
    /// shard, and once the listing is over one with nothing in flight,
    /// leave their share to the others.
    fn working_shards(&self) -> Vec<usize> {
        let no_more_work = self.listing_done && self.sched.pending_len() == 0;
        (0..self.shards.len())
            .filter(|&i| {
                let s = &self.shards[i];
                s.worker.is_some()
                    && !s.down
                    && matches!(s.phase, Phase::Starting | Phase::Running)
                    && !(no_more_work && self.sched.in_flight(i) == 0)
            })
            .collect()
    }

    /// Sends each live worker its share of the request budget, if it
    /// changed. Idle workers get the same share as working ones (they
    /// send nothing with it), so a batch that reaches one is paced at once.
    fn pace_workers(&mut self) {
        let working = self.working_shards().len();
        let pace = self.budget.pace(working);
        for slot in self.shards.iter_mut() {
            let Some(worker) = &slot.worker else { continue };
            if slot.down || !pace.differs_from(slot.paced) {
                continue;
            }
            worker.send(&pace.frame());
            slot.paced = Some(pace);
        }
    }

    /// The version the coordinator announces to its workers: its own, or
    /// another build under the `--test-announce-build` hook.
    fn announced_version(&self) -> Version {
        let mut version = Version::current();
        if let Some(build) = self.args.test.announced_build() {
            version.build = build.to_string();
        }
        version
    }

    fn on_page(&mut self, page: Page) {
        self.pages_listed += 1;
        self.current_marker = page.next.clone();
        if page.next.is_none() {
            self.listing_done = true;
        }
        let changed = self.sched.pages_changed();
        let failures = self.sched.add_page(page.names, page.next);
        self.record_failures(failures);
        if changed == 0 && self.sched.pages_changed() > 0 {
            note!(
                self.progress,
                "bulkget: the server lists page {} differently than before the resume; pages listed differently are fetched whole",
                self.resumed_from.pages_done + self.pages_listed
            );
        }
    }

    /// The one way a permanent failure is recorded (unsafe names, poison
    /// names, failed fetches): named on stderr (capped, see
    /// [`crate::failure_log`]) and appended to `failed.jsonl`.
    fn record_failures(&mut self, failures: Vec<Failure>) {
        if failures.is_empty() {
            return;
        }
        for line in self.failure_log.record(&failures, Instant::now()) {
            note!(self.progress, "{line}");
        }
        self.state.record_failures(failures);
    }

    fn dispatch(&mut self) {
        if self.shutdown.stopping() {
            return;
        }
        while let Some((shard, batch)) = self.sched.assign() {
            // Each frame gets its own buffer, handed to the writer as is: no
            // copy of the batch beyond the encoding. The size is a close
            // guess (names plus a few bytes of framing each), so the buffer
            // rarely grows.
            let guess = 32 + batch.names.iter().map(|n| n.len() + 9).sum::<usize>();
            let mut buf = Vec::with_capacity(guess);
            bulkget_protocol::frame::encode_batch(batch.id, &batch.names, &mut buf)
                .expect("a batch of checked names fits a frame");
            let slot = &mut self.shards[shard];
            if let Some(since) = slot.idle_since.take() {
                slot.idle_total += since.elapsed();
            }
            if let Some(w) = &slot.worker {
                // A failed send means the worker is going away; its batches
                // come back with the exit event.
                w.send_frame(buf);
            }
        }
    }

    fn on_event(&mut self, ev: Event, restart_tx: &mpsc::UnboundedSender<usize>) {
        match ev {
            Event::Message {
                shard,
                generation,
                msg,
            } => {
                if !self.shards.is_current(shard, generation) {
                    return;
                }
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
                            self.record_failures(done);
                            self.shards[shard].life.on_progress();
                            if self.sched.in_flight(shard) == 0 {
                                self.shards[shard].idle_since = Some(Instant::now());
                            }
                        }
                        None => {
                            self.shard_down(shard);
                            self.kill_worker(shard, format!("it acknowledged unknown batch {id}"));
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
                            self.record_failures(done);
                            self.shards[shard].life.on_progress();
                        }
                        None => {
                            self.shard_down(shard);
                            self.kill_worker(
                                shard,
                                format!("it sent a stall report that does not fit batch {id}"),
                            );
                        }
                    },
                    ToCoordinator::Pressure { clean, pushback } => {
                        self.budget.report(shard, clean, pushback, Instant::now());
                    }
                    ToCoordinator::Fatal { kind, reason } => {
                        note!(self.progress, "bulkget: worker {shard}: {reason}");
                        if kind == FatalKind::NoSpace && !self.shutdown.stopping() {
                            let why =
                                format!("the file system of {} is full", self.settings.out_dir);
                            note!(
                                self.progress,
                                "bulkget: {why}; stopping with the checkpoint saved"
                            );
                            let why = format!("{why} (worker {shard}: {reason})");
                            self.begin_stop(Reason::NoSpace(why));
                        }
                    }
                }
            }
            Event::Disconnected {
                shard,
                generation,
                end,
            } => {
                tracing::debug!(shard, generation, ?end, "disconnected");
                if self.shards.is_current(shard, generation) {
                    self.shard_down(shard);
                    self.shards.on_disconnected(shard, end);
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
                self.shard_down(shard);
                if !self.shutdown.stopping() {
                    let why = format!(
                        "worker {shard} is another build of bulkget ({theirs}) than this coordinator ({ours})"
                    );
                    note!(
                        self.progress,
                        "bulkget: {why}; stopping with the checkpoint saved"
                    );
                    self.begin_stop(Reason::Incompatible(why));
                }
            }
            Event::Exited {
                shard,
                generation,
                status,
                killed,
            } => {
                tracing::debug!(shard, generation, ?status, ?killed, "exited");
                if generation != self.shards[shard].generation {
                    return;
                }
                // Decided before the shard's batches are put back, which
                // may fail the last names and finish the run.
                let ending = self.shutdown.stopping() || self.sched.is_finished();
                if !self.shards[shard].down {
                    self.shard_down(shard);
                }
                let what = describe_end(&status, killed.as_deref());
                match self
                    .shards
                    .on_exit(shard, generation, ending, Instant::now())
                {
                    OnExit::Stale => {}
                    OnExit::Expected => {
                        if killed.is_some() {
                            note!(self.progress, "bulkget: worker {shard} {what}");
                        }
                    }
                    OnExit::RestartAfter(delay) => {
                        tracing::warn!(shard, %what, ?delay, "worker ended; restarting");
                        if !self.args.quiet {
                            note!(
                                self.progress,
                                "bulkget: worker {shard} {what}; restarting in {delay:?}"
                            );
                        }
                        supervisor::restart_after(shard, delay, restart_tx);
                    }
                    OnExit::Park => {
                        let policy = self.shards.policy();
                        note!(
                            self.progress,
                            "bulkget: worker {shard} {what}; its workers crashed more than {} times in {:?} without acknowledging anything; shard {shard} is parked, the run goes on without it",
                            policy.burst, policy.interval
                        );
                        self.park(shard);
                    }
                }
            }
        }
    }

    fn park(&mut self, shard: usize) {
        self.sched.park(shard);
        if self.shards.park(shard) {
            note!(
                self.progress,
                "bulkget: every shard is parked; stopping the run"
            );
            self.begin_stop(Reason::AllParked);
        }
    }

    /// The shard's worker is gone or must go: put its batches back. A
    /// crash now is blamed on the batch if the worker held one suspect
    /// batch alone (see restart.rs). The restart waits for the exit.
    fn shard_down(&mut self, shard: usize) {
        let blamed = self.sched.holds_suspect_alone(shard);
        tracing::debug!(shard, blamed, "shard down");
        self.shards[shard].life.on_down(blamed);
        let failures = self.sched.shard_down(shard);
        self.record_failures(failures);
        let slot = &mut self.shards[shard];
        slot.down = true;
        slot.idle_since.get_or_insert_with(Instant::now);
    }

    /// Kills the shard's worker; `why` completes "the coordinator killed it
    /// because ..." in the exit message.
    fn kill_worker(&mut self, shard: usize, why: String) {
        self.shards.kill(shard, why);
    }

    fn on_signal(&mut self, signal: StopSignal) {
        match self.shutdown.on_signal(signal, Instant::now()) {
            OnSignal::Graceful { began } => {
                note!(
                    self.progress,
                    "bulkget: {}: stopping; letting in-flight batches finish for up to {}s (press Ctrl-C again to stop at once)",
                    signal.name(),
                    self.args.grace
                );
                if began {
                    self.stop_began();
                }
            }
            OnSignal::Now => {
                note!(
                    self.progress,
                    "bulkget: second signal: stopping workers now"
                );
                self.stop_workers_now();
            }
        }
    }

    /// The state thread could not make the run durable (see
    /// [`crate::state_thread`]). Nothing acknowledged from now on could be
    /// saved, so the run stops at once: no grace for in-flight batches
    /// (they are fetched again on resume), whatever stop was under way.
    fn on_state_failure(&mut self, why: String) {
        let message = format!("bulkget: {why}; stopping the run now, without a further checkpoint");
        if !self.shutdown.state_failed(why) {
            return;
        }
        note!(self.progress, "{message}");
        for shard in 0..self.shards.len() {
            self.sched.set_available(shard, false);
        }
        self.stop_workers_now();
    }

    /// Begins a graceful stop for `reason`, unless one is under way.
    fn begin_stop(&mut self, reason: Reason) {
        if self.shutdown.begin(reason, Instant::now()) {
            self.stop_began();
        }
    }

    /// A graceful stop began: no shard gets new work, and idle workers are
    /// told to exit.
    fn stop_began(&mut self) {
        for shard in 0..self.shards.len() {
            self.sched.set_available(shard, false);
        }
        self.ask_idle_workers_to_exit();
    }

    /// While stopping, a worker with nothing in flight is told to exit.
    fn ask_idle_workers_to_exit(&mut self) {
        let sched = &self.sched;
        self.shards.ask_idle_to_exit(|shard| sched.in_flight(shard));
    }

    /// SIGTERM to every worker, SIGKILL to any still there a second later.
    fn stop_workers_now(&mut self) {
        self.shards.stop_all_now();
    }

    /// Whether every worker process has exited (after a stop or the end).
    fn stop_ready(&mut self) -> bool {
        if self.shutdown.stopping() {
            self.ask_idle_workers_to_exit();
        }
        self.shards.all_exited()
    }

    fn checkpoint_async(&mut self) {
        self.state.checkpoint(self.sched.snapshot());
    }

    async fn finish(mut self: Box<Self>) -> i32 {
        let complete = self.shutdown.complete(self.sched.is_finished());
        let snapshot = self.sched.snapshot();
        let totals = snapshot.totals;
        // After a failure of the state thread there is no last checkpoint:
        // the one saved before the failure is the one to resume from.
        let last = self
            .shutdown
            .last_checkpoint_allowed()
            .then_some((snapshot, complete));
        let checkpoint_result = self.state.finish(last).await;
        let mut code = self.shutdown.exit_code(totals.files_failed);
        if let Some(Err(e)) = &checkpoint_result {
            tracing::error!(target: MESSAGES, "bulkget: cannot save the checkpoint: {e}");
            code = exit::ERROR;
        }
        let state = self.shutdown.final_state(complete);
        // The final numbers, for a plain log's last line and the stats file.
        self.update_progress();
        self.write_stats(state, Some(code));
        if let Some(line) = self.failure_log.flush() {
            note!(self.progress, "{line}");
        }
        self.progress.finish();
        if !self.args.quiet {
            self.print_summary(code, totals);
        }
        if let Some(metrics) = self.metrics.take() {
            let linger = self.args.metrics_linger;
            let _ = tokio::task::spawn_blocking(move || metrics.finish(linger)).await;
        }
        code
    }

    fn print_summary(&self, code: i32, durable: Totals) {
        let summary = report::Summary {
            refresh: self.refresh,
            live: self.sched.live_totals(),
            durable,
            resumed_from: self.resumed_from,
            elapsed_secs: self.started.elapsed().as_secs_f64(),
            restarts: self.shards.iter().map(|s| s.life.restarts).sum(),
            parked: self
                .shards
                .iter()
                .filter(|s| s.phase == Phase::Parked)
                .count(),
            filtered: !self.args.filter.include.is_empty() || !self.args.filter.exclude.is_empty(),
            pages_changed: self.sched.pages_changed(),
            first_failures: self.failure_log.first(),
            state_dir: &self.state_dir,
            reason: self.shutdown.reason(),
            code,
            resume_command: format!(
                "bulkget fetch {} {} --resume{}",
                self.args.url,
                self.args.out.display(),
                match &self.args.state_dir {
                    Some(d) => format!(" --state-dir {}", d.display()),
                    None => String::new(),
                }
            ),
            checkpoint_saved: bulkget_stats::schema::checkpoint_path(&self.state_dir).exists(),
        };
        // One write: the summary is the run's last word on stdout.
        let text = report::render_summary(&summary);
        outln!("{}", text.trim_end_matches('\n'));
    }

    fn update_progress(&mut self) {
        let live = self.sched.live_totals();
        self.rate.sample(
            Instant::now(),
            live.files_ok + live.files_failed + live.files_present,
        );
    }

    /// Builds this tick's snapshot once, writes it to `coordinator.json`
    /// and shows it as progress: the file and the display never disagree.
    fn write_stats(&mut self, state: RunState, exit_code: Option<i32>) {
        let stats = self.coordinator_stats(state, exit_code);
        report::publish(
            &stats,
            &self.state_dir,
            self.metrics.as_ref(),
            &mut self.progress,
        );
    }

    fn coordinator_stats(&self, state: RunState, exit_code: Option<i32>) -> CoordinatorStats {
        let live = self.sched.live_totals();
        let state = if exit_code.is_none() && (self.shutdown.stopping() || self.listing_done) {
            RunState::Draining
        } else {
            state
        };
        let (eta_seconds, eta_method) = bulkget_report::eta::eta(bulkget_report::eta::EtaInput {
            over: exit_code.is_some(),
            listing_done: self.listing_done,
            listed: live.names_listed,
            done: live.files_ok + live.files_failed + live.files_present,
            expected: self.args.expected_files,
            files_per_sec: self.rate.rate(),
        });
        CoordinatorStats {
            schema_version: bulkget_stats::SCHEMA_VERSION,
            pid: std::process::id(),
            state,
            url: self.endpoint.url(),
            started_at: self.started_at.clone(),
            updated_at: bulkget_stats::now_rfc3339(),
            // The whole run's, like the other counters: the pages a resumed
            // checkpoint covered, then this process's.
            pages_listed: self.resumed_from.pages_done + self.pages_listed,
            names_listed: live.names_listed,
            names_excluded: live.names_excluded,
            expected_files: self.args.expected_files,
            current_marker: self.current_marker.clone(),
            listing_done: self.listing_done,
            batches_queued: self.sched.pending_len() as u64,
            files_ok: live.files_ok,
            files_failed: live.files_failed,
            files_present: live.files_present,
            refresh: self.refresh,
            bytes: live.bytes,
            retries: live.retries,
            files_per_sec: self.rate.rate(),
            eta_seconds,
            eta_method,
            lister_wait_ms: self.lister_wait.total_ms(),
            pages_changed: self.sched.pages_changed(),
            names_repeated: self.sched.repeated(),
            peak_rss_bytes: bulkget_stats::peak_rss_bytes().unwrap_or(0),
            workers_peak_rss_bytes: bulkget_stats::children_peak_rss_bytes().unwrap_or(0),
            batches_requeued: self.sched.requeued(),
            exit_code,
            metrics_addr: self.metrics.as_ref().map(|m| m.addr.to_string()),
            shards: self
                .shards
                .iter()
                .enumerate()
                .map(|(k, s)| ShardSummary {
                    shard: k as u32,
                    pid: s.worker.as_ref().map(|w| w.pid),
                    state: match s.phase {
                        Phase::Starting | Phase::Running => SummaryState::Running,
                        Phase::Backoff => SummaryState::Backoff,
                        Phase::Parked => SummaryState::Parked,
                        Phase::Stopped => SummaryState::Stopped,
                    },
                    batches_in_flight: self.sched.in_flight(k) as u64,
                    batches_stalled: self.sched.stalled(k) as u64,
                    restarts: s.life.restarts,
                    idle_ms: (s.idle_total + s.idle_since.map(|t| t.elapsed()).unwrap_or_default())
                        .as_millis() as u64,
                })
                .collect(),
        }
    }
}

/// One thing the run loop waits for, as `select!` received it.
enum Input {
    /// A page from the lister, its failure, or `None` once it has stopped.
    Page(Option<Result<Page, ListError>>),
    Worker(Event),
    /// The state thread's first failure.
    StateFailed(String),
    /// A shard's backoff is over.
    Restart(usize),
    Signal(StopSignal),
    /// The shutdown deadline ([`Shutdown::deadline`]) may have passed.
    Deadline,
    /// The one-second tick: space check, stats, progress, checkpoint.
    Tick,
}

/// What the loop's inputs need beyond the run itself.
struct LoopContext {
    /// Where a restarted worker reports.
    events: mpsc::UnboundedSender<Event>,
    /// Where a shard's backoff timer says it is over.
    restarts: mpsc::UnboundedSender<usize>,
    last_checkpoint: Instant,
    checkpoint_every: Duration,
}
