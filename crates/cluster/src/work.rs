//! `bulkget cluster work`: one host of a job.
//!
//! The host runs `bulkget fetch`'s workers, started, watched and restarted
//! by the coordinator's own supervisor ([`Shards`], which says what a
//! worker's exit means, with [`bulkget_coordinator::restart`]'s policy),
//! with the same settings and sinks
//! ([`bulkget_coordinator::config::HostConfig`]), and it ends by `fetch`'s
//! rules ([`Shutdown`]: stop signals, the grace and finishing deadlines,
//! the exit code). Its batches come from the
//! job's durable pull consumer instead of a lister: it asks for as many as
//! its workers' windows have room for. One JetStream message is one batch
//! sent to one worker, and it is acknowledged (a confirmed ack) only after
//! the worker's `BatchDone`, which the worker sends after the sink commit,
//! and after the batch's failures are stored in the job's failure stream.
//! Batches held longer than a third of AckWait (queued here, in flight, or
//! stalled on a server's `Retry-After`) get a progress ack, so JetStream
//! gives them to another host only when this one is gone.
//!
//! A worker that dies gives its batches back (a nak): JetStream delivers
//! them again, to this host or another, and the delivery count decides how
//! (see [`crate::poison`]).

use crate::args::WorkArgs;
use crate::job::{now_ms, BatchMsg, FailedRecord, HostRecord, Job, HOST_PREFIX, PART_HEADER};
use crate::poison::{self, Verdict};
use crate::store::{self, JobStore};
use async_nats::jetstream::{self, AckKind};
use bulkget_console::errln;
use bulkget_coordinator::budget::Budget;
use bulkget_coordinator::config::{ConfigError, HostConfig};
use bulkget_coordinator::exit;
use bulkget_coordinator::failure_log::FailureLog;
use bulkget_coordinator::restart::RestartPolicy;
use bulkget_coordinator::shutdown::{self, OnSignal, Reason, Shutdown, StopSignal, StopSignals};
use bulkget_coordinator::supervisor::{self, describe_end, Event, OnExit, Phase, Shards};
use bulkget_protocol::{BatchId, Failure, FatalKind, ToCoordinator, ToWorker, Version};
use futures_util::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often the host puts its totals in the job's bucket.
const PUBLISH_EVERY: Duration = Duration::from_secs(2);

/// How often the request budget decides ([`Budget::tick`]), as in `fetch`.
const BUDGET_EVERY: Duration = Duration::from_secs(1);

/// A batch this host holds: delivered, not yet acknowledged.
struct Held {
    msg: jetstream::Message,
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
/// history are its slot in [`Shards`]; these tallies are the host's own,
/// as the scheduler's are `fetch`'s.
#[derive(Default)]
struct Tally {
    /// Batches sent to the current worker and not finished or given back.
    holding: usize,
    /// Of those, the ones in the window (not stalled, not alone).
    in_window: usize,
    /// It holds a batch that runs alone.
    alone: bool,
}

/// What the fetch task sends back.
enum Fetched {
    Msg(Box<jetstream::Message>),
    /// The pull request ended (full, expired or failed).
    End,
}

/// Refuses the `fetch` flags that mean nothing on a host, rather than
/// ignore them: the job's lister decides which names are fetched, and the
/// job's stream, not a state directory, says what is done.
fn only_host_flags(args: &bulkget_coordinator::args::FetchArgs) -> Result<(), ConfigError> {
    if !args.filter.include.is_empty() || !args.filter.exclude.is_empty() {
        return Err(ConfigError::NotHere(
            "--include and --exclude belong to `cluster list`, which decides what the job fetches"
                .into(),
        ));
    }
    if args.resume || args.refresh {
        return Err(ConfigError::NotHere(
            "--resume and --refresh do not apply to a host: the job's stream holds what is left \
             to do, and a host started again simply takes its share"
                .into(),
        ));
    }
    Ok(())
}

/// Runs a host and returns the exit code.
pub fn run(args: WorkArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("bulkget cluster work: cannot start runtime: {e}");
            return exit::ERROR;
        }
    };
    runtime.block_on(async move {
        match Host::setup(args).await {
            Ok(host) => host.main().await,
            Err((code, msg)) => {
                errln!("bulkget cluster work: {msg}");
                code
            }
        }
    })
}

struct Host {
    args: WorkArgs,
    store: JobStore,
    host_id: String,
    settings: bulkget_protocol::WorkerSettings,
    window: usize,
    ack_wait: Duration,
    /// The shards' slots, which own the workers' handles.
    shards: Shards,
    /// What each shard holds, by shard.
    tallies: Vec<Tally>,
    held: HashMap<BatchId, Held>,
    queue: VecDeque<BatchId>,
    next_id: BatchId,
    /// Messages asked for in the pull request under way.
    requested: usize,
    failure_log: FailureLog,
    failed_path: PathBuf,
    totals: HostRecord,
    /// Whether and why the host is ending (stopping early, or the job is
    /// finished), and until when its workers may take.
    shutdown: Shutdown,
    quiet: bool,
    /// This host's request budget: its `--max-rps` and the slow-down its
    /// shards share, as in `fetch`.
    budget: Budget,
    /// Acks, naks and publishes under way; the host waits for them before
    /// it exits, so that what it finished is acknowledged.
    tasks: tokio::task::JoinSet<()>,
}

impl Host {
    async fn setup(args: WorkArgs) -> Result<Host, (i32, String)> {
        let job = Job::parse(&args.job.job).map_err(|e| (exit::USAGE, e))?;
        only_host_flags(&args.fetch)?;
        // The same checks and worker settings as `fetch`.
        let setup = HostConfig::from_args(&args.fetch)?;
        // Where the workers write their stats files, as `fetch` makes it.
        bulkget_stats::schema::fresh_shards_dir(&setup.paths.state_dir).map_err(|e| {
            (
                exit::ERROR,
                format!(
                    "cannot prepare {}/shards: {e}",
                    setup.paths.state_dir.display()
                ),
            )
        })?;
        let client = store::connect(&args.job.nats)
            .await
            .map_err(|e| (exit::ERROR, e))?;
        let js = store::context(client);
        // The lister creates the job; a host started first waits for it.
        let mut said = false;
        let store = loop {
            match store::open(&js, &job).await.map_err(|e| (exit::ERROR, e))? {
                Some(s) => break s,
                None => {
                    if !said && !args.fetch.quiet {
                        errln!(
                            "bulkget cluster work: job {} does not exist yet; waiting for its lister",
                            job.name()
                        );
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let mut consumer = store.consumer.clone();
        let info = consumer
            .info()
            .await
            .map_err(|e| (exit::ERROR, format!("cannot read the consumer: {e}")))?;
        let ack_wait = info.config.ack_wait;
        let host_id = args
            .host_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", crate::job::hostname(), std::process::id()));
        if crate::job::Job::parse(&host_id).is_err() {
            return Err((
                exit::USAGE,
                format!("--host-id {host_id:?}: use letters, digits, '-' and '_'"),
            ));
        }
        let failed_path = setup.paths.state_dir.join("failed.jsonl");
        let policy = RestartPolicy {
            burst: args.fetch.restart_burst,
            interval: Duration::from_secs(args.fetch.restart_interval),
            ..RestartPolicy::default()
        };
        let shards = Shards::new(setup.workers, policy, Instant::now());
        let tallies = (0..setup.workers).map(|_| Tally::default()).collect();
        let totals = HostRecord {
            host: host_id.clone(),
            pid: std::process::id(),
            workers: setup.workers,
            state: "running".into(),
            ..HostRecord::default()
        };
        let budget = Budget::new(
            setup.workers,
            args.fetch.max_rps,
            setup.settings.adaptive,
            Instant::now(),
        );
        let grace = Duration::from_secs(args.fetch.grace);
        Ok(Host {
            budget,
            window: args.fetch.window,
            quiet: args.fetch.quiet,
            failure_log: FailureLog::new(&failed_path),
            args,
            store,
            host_id,
            settings: setup.settings,
            ack_wait,
            shards,
            tallies,
            held: HashMap::new(),
            queue: VecDeque::new(),
            next_id: 1,
            requested: 0,
            failed_path,
            totals,
            shutdown: Shutdown::new(grace),
            tasks: tokio::task::JoinSet::new(),
        })
    }

    fn note(&self, msg: &str) {
        if !self.quiet {
            errln!("bulkget cluster work: {msg}");
        }
    }

    async fn main(mut self) -> i32 {
        let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
        let (restart_tx, mut restarts) = mpsc::unbounded_channel::<usize>();
        let (fetched_tx, mut fetched) = mpsc::unbounded_channel::<Fetched>();
        for shard in 0..self.shards.len() {
            if let Err(e) = self.spawn(shard, &events_tx) {
                errln!("bulkget cluster work: cannot start worker: {e}");
                return exit::ERROR;
            }
        }
        let mut signals = StopSignals::install().expect("signal handler");
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_publish = Instant::now() - PUBLISH_EVERY;
        let mut last_budget_tick = Instant::now();
        loop {
            tokio::select! {
                Some(ev) = events.recv() => self.on_event(ev, &restart_tx),
                Some(f) = fetched.recv() => match f {
                    Fetched::Msg(m) => self.on_message(*m).await,
                    Fetched::End => {
                        self.requested = 0;
                        if self.shutdown.ending() {
                            // What was kept for the request's end goes back now.
                            let queued: Vec<BatchId> = self.queue.iter().copied().collect();
                            for id in queued {
                                self.give_back(id);
                            }
                            let held = &self.held;
                            self.queue.retain(|id| held.contains_key(id));
                        }
                    }
                },
                Some(shard) = restarts.recv() => {
                    if !self.shutdown.ending() && self.shards[shard].phase == Phase::Backoff {
                        if let Err(e) = self.spawn(shard, &events_tx) {
                            self.note(&format!("cannot restart worker {shard}: {e}"));
                            self.park(shard);
                        }
                    }
                }
                signal = signals.recv() => self.on_signal(signal),
                () = shutdown::sleep_until(self.shutdown.deadline()) => {
                    if self.shutdown.deadline_passed(Instant::now()) {
                        self.note("grace period over; giving the unfinished batches back");
                        self.give_back_all();
                        self.stop_workers_now();
                    }
                }
                _ = tick.tick() => {
                    // Finished tasks are dropped here, so the set stays small.
                    while self.tasks.try_join_next().is_some() {}
                    self.progress_acks();
                    // The budget judges a second of reports at a time, as
                    // in `fetch`: on every half-second tick, two shards'
                    // reports would fall into different ticks.
                    if last_budget_tick.elapsed() >= BUDGET_EVERY {
                        last_budget_tick = Instant::now();
                        let working = self.working_shards();
                        self.budget.tick(last_budget_tick, working);
                    }
                    if let Some(line) = self.failure_log.tick(Instant::now()) {
                        self.note(&line);
                    }
                    if last_publish.elapsed() >= PUBLISH_EVERY {
                        last_publish = Instant::now();
                        self.publish_totals(None).await;
                        // A host that is stopping stops: as in `fetch`, a
                        // stop wins over finishing.
                        if !self.shutdown.ending()
                            && self.job_finished().await
                            && self.shutdown.finish(Instant::now())
                        {
                            self.note("the job is finished");
                            self.give_back_all();
                            // Each worker writes its last stats and exits,
                            // within `shutdown::FINISH_WITHIN`.
                            self.shards.drain_all();
                        }
                    }
                }
            }
            if !self.shutdown.ending() {
                self.dispatch();
                self.pace_workers();
                self.request_more(&fetched_tx);
            } else if self.shutdown.stopping() {
                self.ask_idle_workers_to_exit();
            }
            if self.shutdown.ending() && self.shards.all_exited() {
                break;
            }
        }
        // Whatever is still held goes back before the host leaves, once its
        // last pull request has ended (see `give_back`); the request expires
        // within 2 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.requested > 0 {
            match tokio::time::timeout_at(deadline, fetched.recv()).await {
                Ok(Some(Fetched::Msg(m))) => self.on_message(*m).await,
                Ok(Some(Fetched::End)) => self.requested = 0,
                _ => break,
            }
        }
        self.requested = 0;
        self.give_back_all();
        let code = self.shutdown.exit_code(self.totals.files_failed);
        self.totals.state = "exited".into();
        self.publish_totals(Some(code)).await;
        if let Some(line) = self.failure_log.flush() {
            self.note(&line);
        }
        // Acks and naks are sent by tasks: let them finish before exiting.
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.note("some acknowledgements were not confirmed within 10s; JetStream will deliver those batches again");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.store.js.client().flush()).await;
        if !self.quiet {
            let t = &self.totals;
            errln!(
                "bulkget cluster work: host {}: {} files ok, {} failed, {} bytes, {} batches acknowledged, {} redelivered to it; exit {code}{}",
                self.host_id,
                t.files_ok,
                t.files_failed,
                t.bytes,
                t.batches_acked,
                t.batches_redelivered,
                match self.shutdown.reason() {
                    Some(reason) => format!(" ({})", reason.describe()),
                    None => String::new(),
                }
            );
        }
        code
    }

    fn spawn(
        &mut self,
        shard: usize,
        events: &mpsc::UnboundedSender<Event>,
    ) -> std::io::Result<()> {
        self.shards
            .spawn(shard, &Version::current(), &self.settings, events)?;
        // Its share before any batch: frames arrive in order.
        self.pace_workers();
        Ok(())
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
    fn pace_workers(&mut self) {
        let pace = self.budget.pace(self.working_shards());
        for shard in 0..self.shards.len() {
            let slot = &self.shards[shard];
            let Some(worker) = self.shards.worker(shard) else {
                continue;
            };
            if slot.down || !pace.differs_from(slot.paced) {
                continue;
            }
            worker.send(&pace.frame());
            self.shards[shard].paced = Some(pace);
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
        self.window.saturating_sub(t.in_window)
    }

    /// Whether the shard holds nothing at all (for a batch that runs alone).
    fn empty(&self, shard: usize) -> bool {
        self.takes_batches(shard) && self.tallies[shard].holding == 0
    }

    /// Counts a batch sent to `shard` in the shard's tallies.
    fn attach(&mut self, id: BatchId, shard: usize) {
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
    fn detach(&mut self, id: BatchId) -> Option<Held> {
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
    fn dispatch(&mut self) {
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
                    let h = &self.held[&id];
                    let mut buf = Vec::new();
                    let batch = ToWorker::Batch {
                        id,
                        names: h.names.clone(),
                    };
                    bulkget_protocol::frame::encode(&batch, &mut buf)
                        .expect("a published batch fits a frame");
                    if let Some(w) = self.shards.worker(shard) {
                        w.send_frame(buf);
                    }
                }
                None => left.push_back(id),
            }
        }
        self.queue = left;
    }

    /// Asks JetStream for as many batches as the windows have room for,
    /// less those queued here, if no request is under way.
    fn request_more(&mut self, tx: &mpsc::UnboundedSender<Fetched>) {
        if self.requested > 0 {
            return;
        }
        let room: usize = (0..self.shards.len()).map(|k| self.room(k)).sum();
        let want = room.saturating_sub(self.queue.len());
        if want == 0 {
            return;
        }
        self.requested = want;
        let consumer = self.store.consumer.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let batch = consumer
                .batch()
                .max_messages(want)
                .expires(Duration::from_secs(2))
                .messages()
                .await;
            match batch {
                Ok(mut messages) => {
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(m) => {
                                let _ = tx.send(Fetched::Msg(Box::new(m)));
                            }
                            Err(e) => {
                                tracing::warn!("pulling batches: {e}");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("pulling batches: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            let _ = tx.send(Fetched::End);
        });
    }

    async fn on_message(&mut self, msg: jetstream::Message) {
        let (delivered, seq) = match msg.info() {
            Ok(info) => (info.delivered, info.stream_sequence),
            Err(_) => (1, 0),
        };
        tracing::debug!(seq, delivered, "batch received");
        let batch: BatchMsg = match serde_json::from_slice(&msg.payload) {
            Ok(b) => b,
            Err(e) => {
                self.note(&format!(
                    "a message of the job is not a batch ({e}); dropping it"
                ));
                self.tasks.spawn(async move {
                    let _ = msg.ack_with(AckKind::Term).await;
                });
                return;
            }
        };
        if delivered > 1 {
            self.totals.batches_redelivered += 1;
        }
        let part = msg
            .headers
            .as_ref()
            .is_some_and(|h| h.get(PART_HEADER).is_some());
        let verdict = poison::verdict(&batch.names, delivered, part);
        match verdict {
            Verdict::Normal | Verdict::Alone => {
                let alone = verdict == Verdict::Alone;
                let id = self.next_id;
                self.next_id += 1;
                self.held.insert(
                    id,
                    Held {
                        msg,
                        names: batch.names,
                        alone,
                        shard: None,
                        stalled: false,
                        ok: 0,
                        bytes: 0,
                        retries: 0,
                        failures: Vec::new(),
                        last_ack: Instant::now(),
                    },
                );
                self.queue.push_back(id);
            }
            Verdict::Split(parts) => {
                self.totals.batches_split += 1;
                tracing::info!(
                    seq,
                    parts = parts.len(),
                    "splitting a batch delivered {delivered} times"
                );
                let js = self.store.js.clone();
                let subject = self.store.job.subject();
                let job = self.store.job.name().to_string();
                self.tasks.spawn(async move {
                    let mut acks = Vec::new();
                    for (k, names) in parts.into_iter().enumerate() {
                        let body = BatchMsg {
                            page: batch.page,
                            batch: batch.batch,
                            names,
                        };
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert(PART_HEADER, "1");
                        let publish = jetstream::message::PublishMessage::build()
                            .message_id(format!("{job}.split{seq}.{k}"))
                            .headers(headers)
                            .payload(
                                serde_json::to_vec(&body)
                                    .expect("a batch serialises")
                                    .into(),
                            );
                        match js.send_publish(subject.clone(), publish).await {
                            Ok(ack) => acks.push(ack),
                            Err(e) => {
                                tracing::warn!("publishing a part: {e}");
                                return;
                            }
                        }
                    }
                    for ack in acks {
                        if let Err(e) = ack.await {
                            tracing::warn!("publishing a part: {e}");
                            return;
                        }
                    }
                    // Only once every part is stored: a crash before this
                    // redelivers the original, and the parts' ids repeat.
                    let _ = msg.double_ack().await;
                });
            }
            Verdict::Fail => {
                let failure = Failure::new(&batch.names[0], poison::POISON_REASON, None);
                self.totals.files_failed += 1;
                self.record_failures(std::slice::from_ref(&failure));
                let store_js = self.store.js.clone();
                let subject = self.store.job.failed_subject();
                let host = self.host_id.clone();
                self.tasks.spawn(async move {
                    if publish_failures(&store_js, &subject, &host, &[failure])
                        .await
                        .is_ok()
                    {
                        let _ = msg.double_ack().await;
                    }
                });
            }
        }
    }

    /// Shows failures (capped) and appends them to this host's
    /// `failed.jsonl`.
    fn record_failures(&mut self, failures: &[Failure]) {
        if failures.is_empty() {
            return;
        }
        for line in self.failure_log.record(failures, Instant::now()) {
            self.note(&line);
        }
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.failed_path)
            .and_then(|mut f| {
                let mut text = String::new();
                for failure in failures {
                    text.push_str(&serde_json::to_string(failure).expect("a failure serialises"));
                    text.push('\n');
                }
                f.write_all(text.as_bytes())
            });
        if let Err(e) = appended {
            tracing::warn!("cannot append to {}: {e}", self.failed_path.display());
        }
    }

    /// A batch is done: its failures go to the failure stream, then the
    /// message is acknowledged with a confirmed ack. If either fails, the
    /// batch is delivered again (at least once).
    fn complete(&mut self, id: BatchId) {
        let Some(h) = self.detach(id) else {
            return;
        };
        self.totals.files_ok += h.ok;
        self.totals.bytes += h.bytes;
        self.totals.retries += h.retries;
        self.totals.files_failed += h.failures.len() as u64;
        self.totals.batches_acked += 1;
        self.record_failures(&h.failures);
        let js = self.store.js.clone();
        let subject = self.store.job.failed_subject();
        let host = self.host_id.clone();
        self.tasks.spawn(async move {
            if publish_failures(&js, &subject, &host, &h.failures)
                .await
                .is_err()
            {
                return;
            }
            match h.msg.double_ack().await {
                Ok(()) => tracing::debug!("acknowledged"),
                Err(e) => tracing::warn!("acknowledging a batch: {e}"),
            }
        });
    }

    /// Gives a batch back to JetStream for another delivery.
    ///
    /// While the host stops with a pull request of its own still open, a
    /// nak would hand the batch straight back to that request, and so to
    /// this host, which no longer fetches: the batch is kept (queued,
    /// progress-acked) until the request has ended, then given back.
    fn give_back(&mut self, id: BatchId) {
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
        self.tasks.spawn(async move {
            let _ = h.msg.ack_with(AckKind::Nak(None)).await;
        });
    }

    fn give_back_all(&mut self) {
        let ids: Vec<BatchId> = self.held.keys().copied().collect();
        for id in ids {
            self.give_back(id);
        }
        let held = &self.held;
        self.queue.retain(|id| held.contains_key(id));
    }

    /// Tells JetStream that batches held for a while are still being worked
    /// on, so AckWait does not run out on them while this host lives.
    fn progress_acks(&mut self) {
        let every = self.ack_wait / 3;
        for h in self.held.values_mut() {
            if h.last_ack.elapsed() >= every {
                h.last_ack = Instant::now();
                let msg = h.msg.clone();
                self.tasks.spawn(async move {
                    let _ = msg.ack_with(AckKind::Progress).await;
                });
            }
        }
    }

    async fn job_finished(&self) -> bool {
        matches!(self.store.lister().await, Ok(Some((rec, _))) if rec.finished)
    }

    async fn publish_totals(&mut self, exit_code: Option<i32>) {
        self.totals.updated_ms = now_ms();
        self.totals.exit_code = exit_code;
        self.totals.batches_in_flight = self.held.len() as u64;
        self.totals.worker_restarts = self.shards.iter().map(|s| s.life.restarts).sum();
        if exit_code.is_none() && self.shutdown.ending() {
            self.totals.state = "draining".into();
        }
        let body = serde_json::to_vec(&self.totals).expect("a record serialises");
        let key = format!("{HOST_PREFIX}{}", self.host_id);
        if let Err(e) = self.store.kv.put(key, body.into()).await {
            tracing::warn!("publishing this host's totals: {e}");
        }
    }

    fn on_signal(&mut self, signal: StopSignal) {
        match self.shutdown.on_signal(signal, Instant::now()) {
            OnSignal::Graceful { began: true } => {
                self.note(&format!(
                    "{}: stopping; letting in-flight batches finish for up to {}s",
                    signal.name(),
                    self.args.fetch.grace
                ));
                self.stop_began();
            }
            // Another stop is under way, with its own deadline.
            OnSignal::Graceful { began: false } => {}
            OnSignal::Now => {
                self.note("second signal: giving the batches back and stopping the workers now");
                self.give_back_all();
                self.stop_workers_now();
            }
        }
    }

    /// Begins a graceful stop for `reason`, unless one is under way.
    fn begin_stop(&mut self, reason: Reason) {
        if self.shutdown.begin(reason, Instant::now()) {
            self.stop_began();
        }
    }

    /// A graceful stop began: what no worker has started goes back at once
    /// (or as soon as the pull request under way has ended, see
    /// `give_back`), and idle workers are told to exit.
    fn stop_began(&mut self) {
        let queued: Vec<BatchId> = self.queue.drain(..).collect();
        for id in queued {
            self.give_back(id);
        }
        self.ask_idle_workers_to_exit();
    }

    /// While stopping, a worker that holds no batch is told to exit.
    fn ask_idle_workers_to_exit(&mut self) {
        let tallies = &self.tallies;
        self.shards.ask_idle_to_exit(|shard| tallies[shard].holding);
    }

    /// SIGTERM to every worker, SIGKILL to any still there a second later.
    fn stop_workers_now(&mut self) {
        self.shards.stop_all_now();
    }

    fn park(&mut self, shard: usize) {
        if self.shards.park(shard) && self.shutdown.begin(Reason::AllParked, Instant::now()) {
            self.note("every shard is parked; stopping");
            self.give_back_all();
        }
    }

    /// The shard's worker is gone or must go: its batches go back to
    /// JetStream. A death while it held a batch alone is that batch's.
    fn shard_down(&mut self, shard: usize) {
        let held: Vec<BatchId> = self
            .held
            .iter()
            .filter(|(_, h)| h.shard == Some(shard))
            .map(|(id, _)| *id)
            .collect();
        let blamed = held.len() == 1 && self.held[&held[0]].alone;
        self.shards[shard].life.on_down(blamed);
        for id in held {
            self.give_back(id);
        }
        self.shards[shard].down = true;
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
                            self.complete(id);
                        }
                        _ => self.kill_broken(shard, format!("it acknowledged unknown batch {id}")),
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
                        ),
                    },
                    ToCoordinator::Pressure { clean, pushback } => {
                        self.budget.report(shard, clean, pushback, Instant::now());
                    }
                    ToCoordinator::Fatal { kind, reason } => {
                        self.note(&format!("worker {shard}: {reason}"));
                        if kind == FatalKind::NoSpace && !self.shutdown.stopping() {
                            let why =
                                format!("the file system of {} is full", self.settings.out_dir);
                            self.note(&format!("{why}; stopping"));
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
                self.shard_down(shard);
                let why = format!(
                    "worker {shard} is another build of bulkget ({theirs}) than this host ({ours})"
                );
                // Unlike `fetch`, which lets the other workers finish their
                // batches with a checkpoint to come back to, a host gives
                // every batch back at once: another host of the right build
                // takes them.
                if self
                    .shutdown
                    .begin(Reason::Incompatible(why.clone()), Instant::now())
                {
                    self.note(&why);
                    self.give_back_all();
                    self.stop_workers_now();
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
                    self.shard_down(shard);
                }
                let what = describe_end(&status, killed.as_deref());
                let ending = self.shutdown.ending();
                match self
                    .shards
                    .on_exit(shard, generation, ending, Instant::now())
                {
                    OnExit::Stale => {}
                    OnExit::Expected => {
                        if killed.is_some() {
                            self.note(&format!("worker {shard} {what}"));
                        }
                    }
                    OnExit::RestartAfter(delay) => {
                        self.note(&format!("worker {shard} {what}; restarting in {delay:?}"));
                        supervisor::restart_after(shard, delay, restart_tx);
                    }
                    OnExit::Park => {
                        let policy = self.shards.policy();
                        self.note(&format!(
                            "worker {shard} {what}; its workers crashed more than {} times in {:?} without acknowledging anything; shard {shard} is parked",
                            policy.burst, policy.interval
                        ));
                        self.park(shard);
                    }
                }
            }
        }
    }

    fn kill_broken(&mut self, shard: usize, why: String) {
        self.shard_down(shard);
        self.shards.kill(shard, why);
    }
}

/// Stores failures in the job's failure stream and waits for JetStream to
/// confirm them.
async fn publish_failures(
    js: &jetstream::Context,
    subject: &str,
    host: &str,
    failures: &[Failure],
) -> Result<(), ()> {
    let mut acks = Vec::with_capacity(failures.len());
    for f in failures {
        let rec = FailedRecord {
            name: f.name.clone(),
            reason: f.reason.clone(),
            status: f.status,
            host: host.to_string(),
        };
        let body = serde_json::to_vec(&rec).expect("a record serialises");
        match js.publish(subject.to_string(), body.into()).await {
            Ok(ack) => acks.push(ack),
            Err(e) => {
                tracing::warn!("storing a failure: {e}");
                return Err(());
            }
        }
    }
    for ack in acks {
        if let Err(e) = ack.await {
            tracing::warn!("storing a failure: {e}");
            return Err(());
        }
    }
    Ok(())
}
