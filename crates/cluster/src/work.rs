//! `bulkget cluster work`: one host of a job, the effectful side.
//!
//! The host runs `bulkget fetch`'s workers with the same settings and sinks
//! ([`bulkget_coordinator::config::HostConfig`]); its batches come from the
//! job's durable pull consumer instead of a lister. Its decisions are in
//! [`crate::host`], a pure core in `fetch`'s shape: this loop `select!`s
//! over worker events, pulled messages, restart timers, stop signals, the
//! shutdown deadline and a tick, turns what arrived into an [`Input`], and
//! carries out the core's [`Action`]s in [`HostLoop::act`]. It owns what
//! the core must not: the JetStream client and the messages it delivered
//! (the core knows them by a [`MsgId`]), the workers' handles
//! ([`Workers`], which carry out the worker orders as they do for
//! `fetch`), the clock, and the tasks that acknowledge, give back and
//! publish.

use crate::args::WorkArgs;
use crate::host::{Action, Delivery, Host, Input, MsgId, Rules};
use crate::job::{now_ms, BatchMsg, FailedRecord, HostRecord, Job, HOST_PREFIX, PART_HEADER};
use crate::store::{self, JobStore};
use async_nats::jetstream::{self, AckKind};
use bulkget_console::errln;
use bulkget_coordinator::budget::Budget;
use bulkget_coordinator::config::{ConfigError, HostConfig};
use bulkget_coordinator::exit;
use bulkget_coordinator::failure_log::FailureLog;
use bulkget_coordinator::restart::RestartPolicy;
use bulkget_coordinator::shutdown::{self, StopSignals};
use bulkget_coordinator::supervisor::{Event, Slots, WorkerContext, Workers};
use bulkget_protocol::{Failure, Version};
use futures_util::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the pull task sends back.
enum Fetched {
    Msg(Box<jetstream::Message>),
    /// The pull request ended (full, expired or failed).
    End,
}

/// Where the loop's tasks send what they have to say.
struct LoopContext {
    events: mpsc::UnboundedSender<Event>,
    restarts: mpsc::UnboundedSender<usize>,
    fetched: mpsc::UnboundedSender<Fetched>,
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
        match HostLoop::setup(args).await {
            Ok(host) => host.main().await,
            Err((code, msg)) => {
                errln!("bulkget cluster work: {msg}");
                code
            }
        }
    })
}

/// The host's loop and everything it holds that is not a decision.
struct HostLoop {
    /// The decisions.
    core: Host,
    /// The workers' handles: the only code that reaches their processes.
    workers: Workers,
    quiet: bool,
    store: JobStore,
    host_id: String,
    settings: bulkget_protocol::WorkerSettings,
    /// The messages the core holds, by the number it knows them by.
    msgs: HashMap<MsgId, jetstream::Message>,
    next_msg: MsgId,
    failed_path: PathBuf,
    /// Acks, naks and publishes under way; the host waits for them before
    /// it exits, so that what it finished is acknowledged.
    tasks: tokio::task::JoinSet<()>,
}

impl HostLoop {
    async fn setup(args: WorkArgs) -> Result<HostLoop, (i32, String)> {
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
        let now = Instant::now();
        let shards = Slots::new(setup.workers, policy, now);
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
            now,
        );
        let rules = Rules {
            window: args.fetch.window,
            ack_wait,
            grace_secs: args.fetch.grace,
            out_dir: setup.settings.out_dir.clone(),
        };
        let core = Host::new(
            rules,
            shards,
            budget,
            FailureLog::new(&failed_path),
            totals,
            now,
        );
        Ok(HostLoop {
            core,
            workers: Workers::new(setup.workers),
            quiet: args.fetch.quiet,
            store,
            host_id,
            settings: setup.settings,
            msgs: HashMap::new(),
            next_msg: 1,
            failed_path,
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
        let cx = LoopContext {
            events: events_tx,
            restarts: restart_tx,
            fetched: fetched_tx,
        };
        let mut actions = Vec::new();
        self.core.start(&mut actions);
        for action in actions {
            // The first workers are part of setting up: if one cannot be
            // started, no worker can, and the host never begins.
            if let Some(Input::SpawnFailed { error, .. }) = self.act(action, &cx).await {
                errln!("bulkget cluster work: cannot start worker: {error}");
                return exit::ERROR;
            }
        }
        let mut signals = StopSignals::install().expect("signal handler");
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            // `select!` only turns what arrived into an input; the core
            // decides what it means.
            let input = tokio::select! {
                Some(ev) = events.recv() => self.worker_event(ev),
                Some(f) = fetched.recv() => self.fetched(f),
                Some(shard) = restarts.recv() => Input::Restart(shard),
                signal = signals.recv() => Input::Signal(signal),
                () = shutdown::sleep_until(self.core.deadline()) => Input::Deadline,
                _ = tick.tick() => {
                    // Finished tasks are dropped here, so the set stays small.
                    while self.tasks.try_join_next().is_some() {}
                    Input::Tick
                }
            };
            self.decide(input, &cx).await;
            if self.core.over() {
                break;
            }
        }
        // Whatever is still held goes back before the host leaves, once its
        // last pull request has ended (see `Host::give_back`); the request
        // expires within 2 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.core.pulling() {
            match tokio::time::timeout_at(deadline, fetched.recv()).await {
                Ok(Some(f)) => {
                    let input = self.fetched(f);
                    self.decide(input, &cx).await;
                }
                _ => break,
            }
        }
        let mut actions = Vec::new();
        let code = self.core.end(&mut actions);
        for action in actions {
            self.act(action, &cx).await;
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
            let t = self.core.totals();
            errln!(
                "bulkget cluster work: host {}: {} files ok, {} failed, {} bytes, {} batches acknowledged, {} redelivered to it; exit {code}{}",
                self.host_id,
                t.files_ok,
                t.files_failed,
                t.bytes,
                t.batches_acked,
                t.batches_redelivered,
                match self.core.shutdown().reason() {
                    Some(reason) => format!(" ({})", reason.describe()),
                    None => String::new(),
                }
            );
        }
        code
    }

    /// Has the core decide `input` and carries out its actions; an action
    /// that answers (a failed spawn, whether the job is finished) is
    /// decided at once, in turn.
    async fn decide(&mut self, input: Input, cx: &LoopContext) {
        let mut inputs = VecDeque::from([input]);
        let mut actions = Vec::new();
        while let Some(input) = inputs.pop_front() {
            self.core.handle(input, Instant::now(), &mut actions);
            for action in std::mem::take(&mut actions) {
                if let Some(answer) = self.act(action, cx).await {
                    inputs.push_back(answer);
                }
            }
        }
    }

    /// A worker's event as an input. A worker that exited gives up its
    /// handle first: nothing is sent or signalled to it from now on.
    fn worker_event(&mut self, ev: Event) -> Input {
        if let Event::Exited {
            shard, generation, ..
        } = &ev
        {
            self.workers.exited(*shard, *generation);
        }
        Input::Worker(ev)
    }

    /// What the pull task sent, as an input. A message is kept here under
    /// a new number; the core gets the number and what the message says.
    fn fetched(&mut self, f: Fetched) -> Input {
        let msg = match f {
            Fetched::Msg(m) => *m,
            Fetched::End => return Input::PullEnded,
        };
        let (delivered, seq) = match msg.info() {
            Ok(info) => (info.delivered, info.stream_sequence),
            Err(_) => (1, 0),
        };
        tracing::debug!(seq, delivered, "batch received");
        let batch = serde_json::from_slice::<BatchMsg>(&msg.payload).map_err(|e| e.to_string());
        let part = msg
            .headers
            .as_ref()
            .is_some_and(|h| h.get(PART_HEADER).is_some());
        let id = self.next_msg;
        self.next_msg += 1;
        self.msgs.insert(id, msg);
        Input::Delivered(Delivery {
            msg: id,
            delivered,
            seq,
            part,
            batch,
        })
    }

    /// Carries out one action. Returns the input it answers with, if any.
    async fn act(&mut self, action: Action, cx: &LoopContext) -> Option<Input> {
        match action {
            Action::Worker(action) => {
                let version = Version::current();
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
            Action::Note(line) => self.note(&line),
            Action::RecordFailures(failures) => self.append_failures(&failures),
            Action::Ack { msg, failures } => {
                if let Some(msg) = self.msgs.remove(&msg) {
                    self.ack(msg, failures);
                }
            }
            Action::Nak(msg) => {
                if let Some(msg) = self.msgs.remove(&msg) {
                    self.tasks.spawn(async move {
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                    });
                }
            }
            Action::Progress(msg) => {
                if let Some(msg) = self.msgs.get(&msg).cloned() {
                    self.tasks.spawn(async move {
                        let _ = msg.ack_with(AckKind::Progress).await;
                    });
                }
            }
            Action::Term(msg) => {
                if let Some(msg) = self.msgs.remove(&msg) {
                    self.tasks.spawn(async move {
                        let _ = msg.ack_with(AckKind::Term).await;
                    });
                }
            }
            Action::Split {
                msg,
                seq,
                page,
                batch,
                parts,
            } => {
                if let Some(msg) = self.msgs.remove(&msg) {
                    self.split(msg, seq, page, batch, parts);
                }
            }
            Action::Pull(want) => self.pull(want, &cx.fetched),
            Action::PublishTotals(mut record) => {
                record.updated_ms = now_ms();
                let body = serde_json::to_vec(&record).expect("a record serialises");
                let key = format!("{HOST_PREFIX}{}", self.host_id);
                if let Err(e) = self.store.kv.put(key, body.into()).await {
                    tracing::warn!("publishing this host's totals: {e}");
                }
            }
            Action::CheckFinished => {
                let finished =
                    matches!(self.store.lister().await, Ok(Some((rec, _))) if rec.finished);
                return Some(Input::JobFinished(finished));
            }
        }
        None
    }

    /// Stores `failures` in the job's failure stream, then acknowledges
    /// the message with a confirmed ack. If either fails, the batch is
    /// delivered again (at least once).
    fn ack(&mut self, msg: jetstream::Message, failures: Vec<Failure>) {
        let js = self.store.js.clone();
        let subject = self.store.job.failed_subject();
        let host = self.host_id.clone();
        self.tasks.spawn(async move {
            if publish_failures(&js, &subject, &host, &failures)
                .await
                .is_err()
            {
                return;
            }
            match msg.double_ack().await {
                Ok(()) => tracing::debug!("acknowledged"),
                Err(e) => tracing::warn!("acknowledging a batch: {e}"),
            }
        });
    }

    /// Appends failures to this host's `failed.jsonl`.
    fn append_failures(&self, failures: &[Failure]) {
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

    /// Publishes the parts of a poison batch as new messages, then
    /// acknowledges the original.
    fn split(
        &mut self,
        msg: jetstream::Message,
        seq: u64,
        page: u64,
        batch: u32,
        parts: Vec<Vec<String>>,
    ) {
        let js = self.store.js.clone();
        let subject = self.store.job.subject();
        let job = self.store.job.name().to_string();
        self.tasks.spawn(async move {
            let mut acks = Vec::new();
            for (k, names) in parts.into_iter().enumerate() {
                let body = BatchMsg { page, batch, names };
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

    /// Asks the job's consumer for up to `want` messages; they come back
    /// on `tx`, and then the request's end.
    fn pull(&self, want: usize, tx: &mpsc::UnboundedSender<Fetched>) {
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
