//! `bulkget fetch`: the run loop, the effectful side of a run.
//!
//! One task owns every decision, as nextest's dispatcher does, and the
//! decisions are made in one place, apart from their effects: the loop
//! `select!`s over list pages, worker events, restart timers, stop
//! signals, the shutdown deadline and a one-second tick, and turns what
//! arrived into an [`Input`]; [`Core::handle`] (decide.rs) decides, with the
//! rules of how the run ends in [`crate::shutdown::Shutdown`] and those of
//! a shard's life in [`crate::supervisor::Slots`], and answers with
//! [`Action`]s; [`Run::act`] carries each one out. The loop holds what has
//! effects: the workers' handles ([`Workers`]), the state thread, the
//! progress display, the metrics endpoint. What the run reports is
//! rendered in [`crate::report`]. Blocking work on the state directory
//! (appending failures, syncing, writing checkpoints) runs on a separate
//! thread fed in order through a channel, so a slow disk never stalls
//! dispatch ([`crate::state_thread`]); its first failure stops the run at
//! once.

use crate::args::{FetchArgs, Toggle};
use crate::budget::Budget;
use crate::config::{self, HostConfig, Paths};
use crate::decide::{Action, Core, Input, Rules};
use crate::exit;
use crate::failure_log::FailureLog;
use crate::lister::{ListError, ListerThread, ListerWait, Page};
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::report;
use crate::restart::RestartPolicy;
use crate::scheduler::{DoneAfter, ListPosition, Scheduler, Totals};
use crate::shutdown::{self, StopSignal, StopSignals};
use crate::state::{RunInfo, Start, StateDir, StateError};
use crate::state_thread::StateHandle;
use crate::supervisor::{Event, Phase, Slots, WorkerAction, WorkerContext, Workers};
use bulkget_console::{outln, MESSAGES};
use bulkget_http::{Endpoint, Transport};
use bulkget_protocol::{SinkKind, Version, WorkerSettings};
use bulkget_stats::{CoordinatorStats, RunState, ShardSummary, SummaryState};
use std::collections::VecDeque;
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
    start_position: ListPosition,
    /// A refresh: names already in the sink are counted, not fetched.
    refresh: bool,
    /// Every decision of the run, and the data they are made on.
    core: Core,
    /// The workers' handles: the only way to their processes.
    workers: Workers,
    /// The state directory, written in order on a thread of its own.
    state: StateHandle,
    /// The state thread's first failure, taken by the run loop.
    state_failed: Option<mpsc::UnboundedReceiver<String>>,
    started: Instant,
    started_at: String,
    lister_wait: Arc<ListerWait>,
    progress: Progress,
    /// `GET /metrics`, with `--metrics-addr`.
    metrics: Option<Metrics>,
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
        let shards = Slots::new(workers, policy, Instant::now());
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
        let rules = Rules {
            grace_secs: args.grace,
            quiet: args.quiet,
            sink,
            out_dir: settings.out_dir.clone(),
            min_free_mb: args.min_free_mb,
            min_free_inodes: args.min_free_inodes,
            checkpoint_every: Duration::from_secs(args.checkpoint_interval.max(1)),
            // The pending queue only needs to refill windows between two
            // pages, so it is not as deep as the windows; twice that,
            // because with affinity a restarting shard's batches wait in it
            // while the others work.
            max_pending: 2 * workers * args.window.min(8),
        };
        let mut core = Core::new(
            rules,
            sched,
            shards,
            budget,
            failure_log,
            totals,
            Instant::now(),
        );
        if start_position == ListPosition::Done {
            core.listing_already_done();
        }
        Ok(Setup::Go(Box::new(Run {
            args,
            endpoint,
            transport: connection.transport,
            state_dir,
            settings,
            start_position,
            refresh,
            core,
            workers: Workers::new(workers),
            state,
            state_failed: Some(state_failed),
            started: Instant::now(),
            started_at: bulkget_stats::now_rfc3339(),
            lister_wait: Arc::new(ListerWait::default()),
            progress,
            metrics,
        })))
    }

    async fn main(mut self: Box<Self>) -> i32 {
        let (events_tx, events) = mpsc::unbounded_channel::<Event>();
        let (restart_tx, restarts) = mpsc::unbounded_channel::<usize>();
        let cx = LoopContext {
            events: events_tx,
            restarts: restart_tx,
        };
        let mut actions = Vec::new();
        self.core.start(&mut actions);
        for action in actions {
            // The first workers are part of setting up: if one cannot be
            // started, no worker can, and the run never begins.
            if let Some(Input::SpawnFailed { error, .. }) = self.act(action, &cx) {
                tracing::error!(target: MESSAGES, "bulkget: cannot start worker: {error}");
                return exit::ERROR;
            }
        }

        // The page channel holds one page, and the lister asks for a page
        // only once it has room: with the one being cut into batches, at
        // most two parsed pages are in memory (ARCHITECTURE.md, "Memory").
        let (page_tx, pages) = mpsc::channel::<Result<Page, ListError>>(1);
        let lister = if self.start_position == ListPosition::Done {
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

        let signals = StopSignals::install().expect("signal handler").forward();
        let state_failed = self.state_failed.take().expect("taken once");
        let inputs = Inputs {
            pages,
            events,
            state_failed,
            restarts,
            signals,
        };
        self.run_loop(inputs, &cx).await;
        drop(lister);
        self.finish().await
    }

    /// The loop: waits for the next input, has the core decide, carries out
    /// its actions, until the core says the run is over. The stop signals
    /// come in `inputs` like everything else, so a test can send them.
    async fn run_loop(&mut self, mut inputs: Inputs, cx: &LoopContext) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut actions = Vec::new();
        loop {
            let accepting = self.core.accepts_pages();
            // `select!` only turns what arrived into an input; the core
            // decides what it means.
            let input = tokio::select! {
                page = inputs.pages.recv(), if accepting => Input::Page(page),
                Some(ev) = inputs.events.recv() => self.worker_event(ev),
                Some(why) = inputs.state_failed.recv() => Input::StateFailed(why),
                Some(shard) = inputs.restarts.recv() => Input::Restart(shard),
                Some(signal) = inputs.signals.recv() => Input::Signal(signal),
                () = shutdown::sleep_until(self.core.deadline()) => Input::Deadline,
                _ = tick.tick() => Input::Tick { space: self.free_space() },
            };
            // An action that fails comes back as an input, decided at once;
            // every one of them, however many one input's actions give.
            let mut pending = VecDeque::from([input]);
            while let Some(input) = pending.pop_front() {
                self.core.handle(input, Instant::now(), &mut actions);
                for action in actions.drain(..) {
                    if let Some(failed) = self.act(action, cx) {
                        pending.push_back(failed);
                    }
                }
            }
            if self.core.over() {
                return;
            }
        }
    }

    /// A worker's event as an input. A worker that exited gives up its
    /// handle first: nothing is sent or signalled to it from now on.
    fn worker_event(&mut self, ev: Event) -> Input {
        match &ev {
            Event::Disconnected {
                shard,
                generation,
                end,
            } => tracing::debug!(shard, generation, ?end, "disconnected"),
            Event::Exited {
                shard,
                generation,
                status,
                killed,
            } => {
                tracing::debug!(shard, generation, ?status, ?killed, "exited");
                self.workers.exited(*shard, *generation);
            }
            Event::Message { .. } | Event::Incompatible { .. } => {}
        }
        Input::Worker(ev)
    }

    /// OUT's free space for the tick, when the core wants it.
    fn free_space(&self) -> Option<bulkget_sink::Space> {
        if !self.core.wants_free_space() {
            return None;
        }
        bulkget_sink::free_space(Path::new(&self.settings.out_dir)).ok()
    }

    /// Carries out one action. One that fails comes back as the input that
    /// says so.
    fn act(&mut self, action: Action, cx: &LoopContext) -> Option<Input> {
        match action {
            Action::Worker(action) => {
                if let WorkerAction::RestartAfter {
                    shard,
                    delay,
                    ended,
                } = &action
                {
                    tracing::warn!(shard, what = %ended, ?delay, "worker ended; restarting");
                }
                let version = self.announced_version();
                let workers_cx = WorkerContext {
                    version: &version,
                    settings: &self.settings,
                    events: &cx.events,
                    restarts: &cx.restarts,
                };
                if let Err(failed) = self.workers.act(action, &workers_cx) {
                    return Some(Input::SpawnFailed {
                        shard: failed.shard,
                        generation: failed.generation,
                        error: failed.error,
                    });
                }
            }
            Action::Note(line) => self.progress.note(&line),
            Action::RecordFailures(failures) => self.state.record_failures(failures),
            Action::Checkpoint(snapshot) => self.state.checkpoint(snapshot),
            Action::PublishStats(state) => self.write_stats(state, None),
        }
        None
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

    async fn finish(mut self: Box<Self>) -> i32 {
        let shutdown = self.core.shutdown().clone();
        let complete = shutdown.complete(self.core.sched().is_finished());
        let snapshot = self.core.sched().snapshot();
        let totals = snapshot.totals;
        // After a failure of the state thread there is no last checkpoint:
        // the one saved before the failure is the one to resume from.
        let last = shutdown
            .last_checkpoint_allowed()
            .then_some((snapshot, complete));
        let checkpoint_result = self.state.finish(last).await;
        let mut code = shutdown.exit_code(totals.files_failed);
        if let Some(Err(e)) = &checkpoint_result {
            tracing::error!(target: MESSAGES, "bulkget: cannot save the checkpoint: {e}");
            code = exit::ERROR;
        }
        let state = shutdown.final_state(complete);
        // The final numbers, for a plain log's last line and the stats file.
        let unshown = self.core.end(Instant::now());
        self.write_stats(state, Some(code));
        if let Some(line) = unshown {
            self.progress.note(&line);
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
            live: self.core.sched().live_totals(),
            durable,
            resumed_from: self.core.resumed_from(),
            elapsed_secs: self.started.elapsed().as_secs_f64(),
            restarts: self.core.shards().iter().map(|s| s.life.restarts).sum(),
            parked: self
                .core
                .shards()
                .iter()
                .filter(|s| s.phase == Phase::Parked)
                .count(),
            filtered: !self.args.filter.include.is_empty() || !self.args.filter.exclude.is_empty(),
            pages_changed: self.core.sched().pages_changed(),
            first_failures: self.core.first_failures(),
            state_dir: &self.state_dir,
            reason: self.core.shutdown().reason(),
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
        let core = &self.core;
        let sched = core.sched();
        let listing = core.listing();
        let live = sched.live_totals();
        let state = core.stats_state(state, exit_code);
        let (eta_seconds, eta_method) = bulkget_report::eta::eta(bulkget_report::eta::EtaInput {
            over: exit_code.is_some(),
            listing_done: listing.done,
            listed: live.names_listed,
            done: live.files_ok + live.files_failed + live.files_present,
            expected: self.args.expected_files,
            files_per_sec: core.rate(),
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
            pages_listed: core.resumed_from().pages_done + listing.pages,
            names_listed: live.names_listed,
            names_excluded: live.names_excluded,
            expected_files: self.args.expected_files,
            current_marker: listing.marker.clone(),
            listing_done: listing.done,
            batches_queued: sched.pending_len() as u64,
            files_ok: live.files_ok,
            files_failed: live.files_failed,
            files_present: live.files_present,
            refresh: self.refresh,
            bytes: live.bytes,
            retries: live.retries,
            files_per_sec: core.rate(),
            eta_seconds,
            eta_method,
            lister_wait_ms: self.lister_wait.total_ms(),
            pages_changed: sched.pages_changed(),
            names_repeated: sched.repeated(),
            peak_rss_bytes: bulkget_stats::peak_rss_bytes().unwrap_or(0),
            workers_peak_rss_bytes: bulkget_stats::children_peak_rss_bytes().unwrap_or(0),
            batches_requeued: sched.requeued(),
            exit_code,
            metrics_addr: self.metrics.as_ref().map(|m| m.addr.to_string()),
            shards: core
                .shards()
                .iter()
                .enumerate()
                .map(|(k, s)| ShardSummary {
                    shard: k as u32,
                    pid: self.workers.pid(k),
                    state: match s.phase {
                        Phase::Starting | Phase::Running => SummaryState::Running,
                        Phase::Backoff => SummaryState::Backoff,
                        Phase::Parked => SummaryState::Parked,
                        Phase::Stopped => SummaryState::Stopped,
                    },
                    batches_in_flight: sched.in_flight(k) as u64,
                    batches_stalled: sched.stalled(k) as u64,
                    restarts: s.life.restarts,
                    idle_ms: (s.idle_total + s.idle_since.map(|t| t.elapsed()).unwrap_or_default())
                        .as_millis() as u64,
                })
                .collect(),
        }
    }
}

/// Where the loop's inputs come from. The stop signals are a channel like
/// the others: production fills it from [`StopSignals`], a test may send
/// its own.
struct Inputs {
    pages: mpsc::Receiver<Result<Page, ListError>>,
    events: mpsc::UnboundedReceiver<Event>,
    state_failed: mpsc::UnboundedReceiver<String>,
    restarts: mpsc::UnboundedReceiver<usize>,
    signals: mpsc::UnboundedReceiver<StopSignal>,
}

/// Where the effects' own reports go.
struct LoopContext {
    /// Where a started worker reports.
    events: mpsc::UnboundedSender<Event>,
    /// Where a shard's backoff timer says it is over.
    restarts: mpsc::UnboundedSender<usize>,
}
