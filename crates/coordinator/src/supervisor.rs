//! Worker processes: spawning, talking to and watching them.
//!
//! A worker is the coordinator's own executable image, run with the hidden
//! `worker` subcommand, with one end of a Unix socket pair on file
//! descriptor 3. It is started from `/proc/self/exe`, not from the path the
//! coordinator was started from: that link names the image this process
//! runs even after the file on disk has been replaced (an upgrade during a
//! run) or deleted, so every worker, restarts included, runs the
//! coordinator's own code. Each side's first frame is its
//! [`Version`]; a worker of another build is reported as
//! [`Event::Incompatible`], never as a crash. A worker gets its own process
//! group, so a Ctrl-C at the terminal reaches only the coordinator, which
//! then decides how the workers stop.
//!
//! Each worker has three tasks here: a writer that sends frames, a reader
//! that turns frames into [`Event::Message`], and a waiter that owns the
//! child process. The waiter alone signals the process ([`Worker::signal`],
//! [`Worker::kill`]): it knows whether the process has been reaped, so a
//! signal never reaches another process that reuses the pid. It reports
//! the exit with the reason the coordinator killed the worker, if it did.
//! All events go to the run loop on one channel; the run loop's one task
//! owns every decision (a decision core: `fetch`'s in [`crate::decide`],
//! `cluster work`'s in `bulkget_cluster::host`).
//!
//! A shard's life is in two parts. [`Slots`] is data and rules: each
//! shard's phase, generation and crash history, what an exit means
//! ([`OnExit`]), parking, which workers a stop asks to exit, and how a
//! worker whose socket ended is killed ([`kill_on_disconnect`]); it holds
//! no handle, so its rules are tested without processes. [`Workers`] holds
//! the [`Worker`] handles and is the only code that reaches a worker's
//! process: it spawns, sends to, signals and kills workers as it is told,
//! each order a [`WorkerAction`] carried out by [`Workers::act`]. A
//! decision core owns the slots and its loop the handles: `fetch`'s
//! ([`crate::decide`]) and `cluster work`'s (`bulkget_cluster::host`)
//! alike. No code signals a
//! worker by its pid: the pid of a handle is for display only, since once
//! the waiter has reaped the process the kernel may give that pid to
//! another process; a signal or kill sent after the reap goes to a closed
//! channel and is dropped, and the handle itself is dropped with the
//! worker's exit event ([`Workers::exited`]).
//!
//! Workers never outlive the coordinator: every socket end the coordinator
//! holds is close-on-exec and private to it, so when the coordinator dies
//! (even by SIGKILL) the kernel closes them, each worker reads end-of-stream
//! and exits.

use crate::restart::{Decision, RestartPolicy, ShardLife};
use bulkget_protocol::frame::{self, FrameError, FrameReader};
use bulkget_protocol::{ToCoordinator, ToWorker, Version, WorkerSettings};
use nix::sys::signal::Signal;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// The executable image of this process (see the module documentation).
const OWN_IMAGE: &str = "/proc/self/exe";

/// How long a worker whose socket closed may take to exit before the
/// coordinator kills it. A worker closes its socket as it exits, and a
/// crashed one as the kernel tears it down, so a worker still there after
/// this is stuck.
pub const EXIT_AFTER_CLOSE: Duration = Duration::from_secs(2);

/// Something that happened to a worker.
#[derive(Debug)]
pub enum Event {
    Message {
        shard: usize,
        generation: u32,
        msg: ToCoordinator,
    },
    /// The socket reached end-of-stream, failed, or carried something that
    /// is not a frame.
    Disconnected {
        shard: usize,
        generation: u32,
        end: SocketEnd,
    },
    /// The worker's first frame says it is another build, or speaks another
    /// protocol, than the coordinator announced (`ours`). Nothing else is
    /// read from it; it exits by itself.
    Incompatible {
        shard: usize,
        generation: u32,
        ours: Version,
        theirs: Version,
    },
    /// The process exited. `killed` is why the coordinator killed it
    /// ([`Worker::kill`]), if it did.
    Exited {
        shard: usize,
        generation: u32,
        status: ExitStatus,
        killed: Option<String>,
    },
}

/// How a worker's socket ended.
#[derive(Debug)]
pub enum SocketEnd {
    /// End of stream between frames: the worker closed its socket, as it
    /// does when it exits.
    Closed,
    /// An I/O error (a reset: the worker died with frames unread) or a
    /// frame cut short (it died while writing): the worker is going away.
    Broken(String),
    /// Bytes that are not a valid frame: the worker is alive and broken.
    Invalid(String),
}

impl SocketEnd {
    fn of(error: FrameError) -> SocketEnd {
        match error {
            FrameError::Io(_) | FrameError::Truncated => SocketEnd::Broken(error.to_string()),
            FrameError::TooLarge(_) | FrameError::Decode(_) | FrameError::Encode(_) => {
                SocketEnd::Invalid(error.to_string())
            }
        }
    }
}

/// What the run loop asks of a worker's process, carried out by its waiter.
enum Order {
    Signal(Signal),
    Kill { why: String },
}

/// A running worker process.
pub struct Worker {
    pub pid: u32,
    frames: mpsc::UnboundedSender<Vec<u8>>,
    orders: mpsc::UnboundedSender<Order>,
}

impl Worker {
    /// Queues an encoded frame for the worker. Returns false if the writer
    /// has stopped (the worker is going away; its exit event will follow).
    pub fn send_frame(&self, frame: Vec<u8>) -> bool {
        self.frames.send(frame).is_ok()
    }

    pub fn send(&self, msg: &ToWorker) -> bool {
        let mut buf = Vec::new();
        frame::encode(msg, &mut buf).expect("control messages are small");
        self.send_frame(buf)
    }

    /// Sends a signal to the worker process, unless it has exited.
    pub fn signal(&self, sig: Signal) {
        let _ = self.orders.send(Order::Signal(sig));
    }

    /// Kills the worker process (SIGKILL), unless it has exited. `why`
    /// completes "the coordinator killed it because ...", and comes back
    /// with the exit in [`Event::Exited`].
    pub fn kill(&self, why: String) {
        let _ = self.orders.send(Order::Kill { why });
    }

    /// Kills the worker process as [`Worker::kill`] does if it has not
    /// exited `after` from now.
    pub fn kill_unless_exited_within(&self, after: Duration, why: String) {
        let orders = self.orders.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = orders.send(Order::Kill { why });
        });
    }
}

/// Starts a worker for `shard` and sends it `version`, then its hello.
pub fn spawn(
    shard: usize,
    generation: u32,
    version: &Version,
    settings: &WorkerSettings,
    events: mpsc::UnboundedSender<Event>,
) -> io::Result<Worker> {
    // Both ends are created close-on-exec; only the child's end is moved to
    // fd 3 (dup2 clears close-on-exec on the copy) so no worker inherits
    // another worker's socket.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let theirs: OwnedFd = theirs.into();
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new(OWN_IMAGE);
    // The name `ps` shows: the coordinator's own.
    cmd.arg0(
        std::env::args_os()
            .next()
            .unwrap_or_else(|| "bulkget".into()),
    )
    .arg(bulkget_protocol::WORKER_SUBCOMMAND)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::inherit())
    .process_group(0);
    // A worker logs in the coordinator's format: they share stderr, which
    // with `--log-format json` must hold nothing but JSON lines.
    if bulkget_console::json_logs() {
        cmd.args(["--log-format", "json"]);
    }
    // The proxy, with its credentials, reaches the worker in its settings;
    // the environment that carried them is not passed on.
    for name in bulkget_http::proxy::ENV_VARS {
        cmd.env_remove(name);
    }
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (dup2, fcntl), on descriptors that exist in the child.
    unsafe {
        cmd.pre_exec(move || {
            if theirs_fd == bulkget_protocol::WORKER_FD {
                let flags = libc::fcntl(theirs_fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(theirs_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_fd, bulkget_protocol::WORKER_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(false)
        .spawn()?;
    drop(theirs);
    let pid = child.id().unwrap_or(0);

    ours.set_nonblocking(true)?;
    let stream = UnixStream::from_std(ours)?;
    let (read_half, mut write_half) = stream.into_split();
    let (frames_tx, mut frames_rx) = mpsc::unbounded_channel::<Vec<u8>>();

    tokio::spawn(async move {
        while let Some(buf) = frames_rx.recv().await {
            if write_half.write_all(&buf).await.is_err() {
                return;
            }
        }
        // Dropping the write half here closes our sending side; the worker
        // sees end-of-stream and exits.
    });

    let ev = events.clone();
    let announced = version.clone();
    tokio::spawn(async move {
        let disconnected = |end: SocketEnd| {
            let _ = ev.send(Event::Disconnected {
                shard,
                generation,
                end,
            });
        };
        let mut reader = FrameReader::new(read_half);
        // The worker's first frame is its version.
        match reader.next::<Version>().await {
            Ok(Some(theirs)) if theirs == announced => {}
            Ok(Some(theirs)) => {
                let _ = ev.send(Event::Incompatible {
                    shard,
                    generation,
                    ours: announced,
                    theirs,
                });
                return;
            }
            Ok(None) => return disconnected(SocketEnd::Closed),
            Err(e) => return disconnected(SocketEnd::of(e)),
        }
        loop {
            match reader.next::<ToCoordinator>().await {
                Ok(Some(msg)) => {
                    if ev
                        .send(Event::Message {
                            shard,
                            generation,
                            msg,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => return disconnected(SocketEnd::Closed),
                Err(e) => return disconnected(SocketEnd::of(e)),
            }
        }
    });

    let (orders_tx, mut orders) = mpsc::unbounded_channel::<Order>();
    tokio::spawn(async move {
        let mut killed = None;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                Some(order) = orders.recv() => match order {
                    // Not yet reaped (this task reaps it), so the pid is
                    // still this worker's.
                    Order::Signal(sig) => {
                        if let Some(pid) = child.id() {
                            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
                        }
                    }
                    Order::Kill { why } => {
                        if child.start_kill().is_ok() {
                            killed.get_or_insert(why);
                        }
                    }
                },
            }
        };
        if let Ok(status) = status {
            let _ = events.send(Event::Exited {
                shard,
                generation,
                status,
                killed,
            });
        }
    });

    let worker = Worker {
        pid,
        frames: frames_tx,
        orders: orders_tx,
    };
    let mut buf = Vec::new();
    frame::encode(version, &mut buf).expect("a version is small");
    worker.send_frame(buf);
    worker.send(&ToWorker::Hello {
        shard: shard as u32,
        generation,
        settings: Box::new(settings.clone()),
    });
    Ok(worker)
}

/// Sends `shard` on `restarts` once `delay` has passed: the end of its
/// backoff after [`OnExit::RestartAfter`]. The loop that receives it
/// restarts the shard if it is still in backoff and the run is not ending.
pub fn restart_after(shard: usize, delay: Duration, restarts: &mpsc::UnboundedSender<usize>) {
    let restarts = restarts.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = restarts.send(shard);
    });
}

/// Describes an exit status for messages: "exit code 1", "killed by SIGKILL".
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(sig) = status.signal() {
        match Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        }
    } else {
        "unknown exit".to_string()
    }
}

/// Describes how a worker ended, for messages that follow "worker N": who
/// ended it, and its own exit status. `killed` is why the coordinator
/// killed it, if it did ([`Event::Exited`]).
///
/// - "died (killed by SIGKILL)": the coordinator did not kill it, so
///   something else did (the OOM killer, an operator) or it crashed;
/// - "was killed by the coordinator because WHY (killed by SIGKILL)";
/// - "died (killed by SIGABRT) as the coordinator was killing it because
///   WHY": it ended by itself before the coordinator's SIGKILL took effect.
pub fn describe_end(status: &ExitStatus, killed: Option<&str>) -> String {
    use std::os::unix::process::ExitStatusExt;
    let what = describe_exit(status);
    match killed {
        None => format!("died ({what})"),
        Some(why) if status.signal() == Some(Signal::SIGKILL as i32) => {
            format!("was killed by the coordinator because {why} ({what})")
        }
        Some(why) => format!("died ({what}) as the coordinator was killing it because {why}"),
    }
}

/// A shard's place in the run, as the coordinator tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Running,
    Backoff,
    Parked,
    Stopped,
}

/// One shard: whether it has a worker, and its history. Data only: the
/// worker's handle is in [`Workers`].
#[derive(Debug)]
pub struct ShardSlot {
    /// The current worker was started and its exit has not been seen yet.
    pub live: bool,
    pub generation: u32,
    pub phase: Phase,
    /// The current worker's socket or process has gone; its batches were
    /// put back. The slot waits for the exit before a restart.
    pub down: bool,
    pub life: ShardLife,
    pub idle_since: Option<Instant>,
    pub idle_total: Duration,
    /// The share of the request budget last sent to the current worker;
    /// `None` until one is sent.
    pub paced: Option<crate::budget::Pace>,
}

/// What to do about a worker's exit ([`Slots::on_exit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExit {
    /// The exit of an earlier generation, already dealt with.
    Stale,
    /// The run was stopping the worker, or is ending: nothing to restart.
    Expected,
    /// A crash: restart the shard after this delay (it is in backoff).
    RestartAfter(Duration),
    /// A crash too many: park the shard ([`Slots::park`]).
    Park,
}

/// When a worker whose socket ended is killed ([`kill_on_disconnect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillWhen {
    Now,
    /// Unless it exits by itself within this time.
    UnlessExitedWithin(Duration),
}

/// The shard's worker's socket ended (the caller has put its work back):
/// when to kill it, and why ("the coordinator killed it because ...").
/// A worker that broke the protocol is killed now. One whose socket
/// closed or failed is exiting, or has died: it gets [`EXIT_AFTER_CLOSE`]
/// to exit by itself before it is killed, so that a worker killed by
/// someone else is not reported as killed by us.
pub fn kill_on_disconnect(end: SocketEnd) -> (KillWhen, String) {
    let closed = match end {
        SocketEnd::Invalid(e) => return (KillWhen::Now, format!("it broke the protocol ({e})")),
        SocketEnd::Closed => "it closed its socket".to_string(),
        SocketEnd::Broken(e) => format!("its socket failed ({e})"),
    };
    (
        KillWhen::UnlessExitedWithin(EXIT_AFTER_CLOSE),
        format!("{closed} and it had not exited {EXIT_AFTER_CLOSE:?} later"),
    )
}

/// Every shard's slot, and the rules of a shard's life: which generation
/// starts next, what an exit means, parking, which workers a stop asks to
/// exit. Plain data, no handles, so every rule is tested without
/// processes; whoever holds the [`Workers`] carries out what it says.
#[derive(Debug)]
pub struct Slots {
    slots: Vec<ShardSlot>,
    policy: RestartPolicy,
}

impl std::ops::Index<usize> for Slots {
    type Output = ShardSlot;
    fn index(&self, shard: usize) -> &ShardSlot {
        &self.slots[shard]
    }
}

impl std::ops::IndexMut<usize> for Slots {
    fn index_mut(&mut self, shard: usize) -> &mut ShardSlot {
        &mut self.slots[shard]
    }
}

impl Slots {
    /// `count` shards, none started yet, all idle from `now`.
    pub fn new(count: usize, policy: RestartPolicy, now: Instant) -> Slots {
        let slots = (0..count)
            .map(|_| ShardSlot {
                live: false,
                generation: 0,
                phase: Phase::Starting,
                down: false,
                life: ShardLife::default(),
                idle_since: Some(now),
                idle_total: Duration::ZERO,
                paced: None,
            })
            .collect();
        Slots { slots, policy }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ShardSlot> {
        self.slots.iter()
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, ShardSlot> {
        self.slots.iter_mut()
    }

    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    /// The generation the shard's next worker is started as: its restarts
    /// so far.
    pub fn next_generation(&self, shard: usize) -> u32 {
        self.slots[shard].life.restarts
    }

    /// The shard's worker of `generation` was started.
    pub fn started(&mut self, shard: usize, generation: u32) {
        let slot = &mut self.slots[shard];
        slot.life.on_start();
        slot.live = true;
        slot.generation = generation;
        slot.phase = Phase::Starting;
        slot.down = false;
        slot.paced = None;
    }

    /// Starting the shard's worker failed after [`Slots::started`]: there
    /// is no worker.
    pub fn start_failed(&mut self, shard: usize) {
        let slot = &mut self.slots[shard];
        slot.live = false;
        slot.down = true;
    }

    /// Whether an event of `generation` is about the shard's current worker
    /// and that worker is still up.
    pub fn is_current(&self, shard: usize, generation: u32) -> bool {
        generation == self.slots[shard].generation && !self.slots[shard].down
    }

    /// The shard's worker exited. `ending` says whether the run is stopping
    /// or every file is done, so that no exit is a crash. The slot has no
    /// worker afterwards; a crash moves it to backoff or says to park it.
    pub fn on_exit(&mut self, shard: usize, generation: u32, ending: bool, now: Instant) -> OnExit {
        let slot = &mut self.slots[shard];
        if generation != slot.generation {
            return OnExit::Stale;
        }
        slot.live = false;
        if ending || slot.phase == Phase::Stopped {
            if slot.phase != Phase::Parked {
                slot.phase = Phase::Stopped;
            }
            return OnExit::Expected;
        }
        match slot.life.on_crash(now, &self.policy) {
            Decision::RestartAfter(delay) => {
                slot.phase = Phase::Backoff;
                OnExit::RestartAfter(delay)
            }
            Decision::Park => OnExit::Park,
        }
    }

    /// Parks the shard. Returns whether every shard is now parked.
    pub fn park(&mut self, shard: usize) -> bool {
        self.slots[shard].phase = Phase::Parked;
        self.slots.iter().all(|s| s.phase == Phase::Parked)
    }

    /// While stopping, each shard whose worker has nothing in flight is
    /// told to exit: returns the shards whose live workers are to be told
    /// (`Shutdown` without drain).
    pub fn ask_idle_to_exit(&mut self, in_flight: impl Fn(usize) -> usize) -> Vec<usize> {
        let mut asked = Vec::new();
        for (shard, slot) in self.slots.iter_mut().enumerate() {
            if in_flight(shard) == 0 && slot.phase != Phase::Stopped {
                if slot.live {
                    asked.push(shard);
                }
                if slot.phase != Phase::Parked {
                    slot.phase = Phase::Stopped;
                }
            }
        }
        asked
    }

    /// The shards whose workers are to be stopped now (the caller signals
    /// them, see [`Workers::stop_all_now`]): none of them is restarted.
    pub fn stop_all_now(&mut self) {
        for slot in &mut self.slots {
            if slot.phase != Phase::Parked {
                slot.phase = Phase::Stopped;
            }
        }
    }

    /// The shards with a live worker.
    pub fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.slots.len()).filter(|&k| self.slots[k].live)
    }

    /// Whether every worker process has exited.
    pub fn all_exited(&self) -> bool {
        self.slots.iter().all(|s| !s.live)
    }
}

/// What a decision core asks of the workers' processes. `fetch`'s core
/// ([`crate::decide`]) and `cluster work`'s both answer with these, and
/// [`Workers::act`] is the one way they are carried out.
#[derive(Debug)]
pub enum WorkerAction {
    /// Start the shard's worker of `generation` (its hello goes with it).
    Spawn { shard: usize, generation: u32 },
    /// Send `shard` back to the loop once `delay` has passed (see
    /// [`restart_after`]); `ended` says how its worker ended, for the log.
    RestartAfter {
        shard: usize,
        delay: Duration,
        ended: String,
    },
    /// Send batch `id`, encoded as `frame`, to the shard's worker.
    SendBatch {
        shard: usize,
        id: bulkget_protocol::BatchId,
        frame: Vec<u8>,
    },
    /// Send a control message (`Pace`, `Shutdown`) to the shard's worker.
    Send { shard: usize, msg: ToWorker },
    /// Kill the shard's worker `when` said; `why` completes "the
    /// coordinator killed it because ...".
    Kill {
        shard: usize,
        when: KillWhen,
        why: String,
    },
    /// SIGTERM to every worker, SIGKILL to any still there a second later.
    StopAllNow,
}

/// A [`WorkerAction::Spawn`] that failed: no worker was started.
#[derive(Debug)]
pub struct SpawnFailed {
    pub shard: usize,
    pub generation: u32,
    pub error: String,
}

/// What the loop that carries out [`WorkerAction`]s hands to
/// [`Workers::act`]: what a new worker is started with, and where its
/// events and the end of a backoff go.
pub struct WorkerContext<'a> {
    pub version: &'a Version,
    pub settings: &'a WorkerSettings,
    pub events: &'a mpsc::UnboundedSender<Event>,
    pub restarts: &'a mpsc::UnboundedSender<usize>,
}

/// The workers' handles, one place per shard: the only code that reaches
/// a worker's process. It does what it is told; it decides nothing.
#[derive(Default)]
pub struct Workers {
    /// Each shard's current worker and its generation.
    handles: Vec<Option<(u32, Worker)>>,
}

impl Workers {
    pub fn new(count: usize) -> Workers {
        Workers {
            handles: (0..count).map(|_| None).collect(),
        }
    }

    /// Carries out `action`. A spawn that fails says so: the caller hands
    /// it back to its core, which decides what it means.
    pub fn act(&mut self, action: WorkerAction, cx: &WorkerContext) -> Result<(), SpawnFailed> {
        match action {
            WorkerAction::Spawn { shard, generation } => {
                self.spawn(shard, generation, cx.version, cx.settings, cx.events)
                    .map_err(|e| SpawnFailed {
                        shard,
                        generation,
                        error: e.to_string(),
                    })?;
            }
            WorkerAction::RestartAfter { shard, delay, .. } => {
                restart_after(shard, delay, cx.restarts);
            }
            WorkerAction::SendBatch { shard, frame, .. } => self.send_frame(shard, frame),
            WorkerAction::Send { shard, msg } => self.send(shard, &msg),
            WorkerAction::Kill { shard, when, why } => self.kill(shard, when, why),
            WorkerAction::StopAllNow => self.stop_all_now(),
        }
        Ok(())
    }

    /// Starts the shard's worker of `generation`.
    pub fn spawn(
        &mut self,
        shard: usize,
        generation: u32,
        version: &Version,
        settings: &WorkerSettings,
        events: &mpsc::UnboundedSender<Event>,
    ) -> io::Result<()> {
        let worker = spawn(shard, generation, version, settings, events.clone())?;
        self.handles[shard] = Some((generation, worker));
        Ok(())
    }

    /// The shard's worker of `generation` exited: its handle is dropped, so
    /// nothing more is sent or signalled to it.
    pub fn exited(&mut self, shard: usize, generation: u32) {
        if matches!(&self.handles[shard], Some((g, _)) if *g == generation) {
            self.handles[shard] = None;
        }
    }

    pub fn get(&self, shard: usize) -> Option<&Worker> {
        self.handles[shard].as_ref().map(|(_, w)| w)
    }

    /// The pid of the shard's worker, for display only.
    pub fn pid(&self, shard: usize) -> Option<u32> {
        self.get(shard).map(|w| w.pid)
    }

    /// Sends `msg` to the shard's worker, if it has one.
    pub fn send(&self, shard: usize, msg: &ToWorker) {
        if let Some(w) = self.get(shard) {
            w.send(msg);
        }
    }

    /// Queues an encoded frame for the shard's worker, if it has one. A
    /// failed send means the worker is going away; its batches come back
    /// with the exit event.
    pub fn send_frame(&self, shard: usize, frame: Vec<u8>) {
        if let Some(w) = self.get(shard) {
            w.send_frame(frame);
        }
    }

    /// Kills the shard's worker, if it has one, `when` it is told; `why`
    /// completes "the coordinator killed it because ..." in the exit
    /// message.
    pub fn kill(&self, shard: usize, when: KillWhen, why: String) {
        let Some(w) = self.get(shard) else { return };
        match when {
            KillWhen::Now => w.kill(why),
            KillWhen::UnlessExitedWithin(after) => w.kill_unless_exited_within(after, why),
        }
    }

    /// SIGTERM to every worker, SIGKILL to any still there a second later.
    pub fn stop_all_now(&self) {
        for (_, w) in self.handles.iter().flatten() {
            w.signal(Signal::SIGTERM);
            w.kill_unless_exited_within(
                Duration::from_secs(1),
                "it had not stopped 1s after SIGTERM".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn an_exit_says_who_ended_the_worker_and_keeps_its_own_status() {
        let sigkill = ExitStatus::from_raw(libc::SIGKILL);
        let sigabrt = ExitStatus::from_raw(libc::SIGABRT);
        let code1 = ExitStatus::from_raw(1 << 8);
        assert_eq!(describe_end(&sigkill, None), "died (killed by SIGKILL)");
        assert_eq!(describe_end(&code1, None), "died (exit code 1)");
        assert_eq!(
            describe_end(&sigkill, Some("its socket closed")),
            "was killed by the coordinator because its socket closed (killed by SIGKILL)"
        );
        assert_eq!(
            describe_end(&sigabrt, Some("it acknowledged unknown batch 7")),
            "died (killed by SIGABRT) as the coordinator was killing it because it acknowledged unknown batch 7"
        );
    }

    fn slots(count: usize) -> Slots {
        let policy = RestartPolicy {
            burst: 2,
            interval: Duration::from_secs(10),
            ..RestartPolicy::default()
        };
        Slots::new(count, policy, Instant::now())
    }

    #[test]
    fn a_crash_backs_off_and_too_many_without_progress_park_the_shard() {
        let t0 = Instant::now();
        let mut s = slots(2);
        s[0].phase = Phase::Running;
        let first = s.on_exit(0, 0, false, t0);
        assert!(matches!(first, OnExit::RestartAfter(_)), "{first:?}");
        assert_eq!(s[0].phase, Phase::Backoff);
        // More than `burst` crashes without progress within the interval.
        let mut last = first;
        for _ in 0..3 {
            last = s.on_exit(0, 0, false, t0);
        }
        assert_eq!(last, OnExit::Park);
        assert!(!s.park(0), "shard 1 still works");
        assert_eq!(s[0].phase, Phase::Parked);
        assert!(s.park(1), "now every shard is parked");
    }

    #[test]
    fn an_exit_while_the_run_ends_or_of_a_stopped_worker_is_no_crash() {
        let t0 = Instant::now();
        let mut s = slots(3);
        s[0].phase = Phase::Running;
        assert_eq!(s.on_exit(0, 0, true, t0), OnExit::Expected);
        assert_eq!(s[0].phase, Phase::Stopped);
        s[1].phase = Phase::Stopped;
        assert_eq!(s.on_exit(1, 0, false, t0), OnExit::Expected);
        // A parked shard stays parked.
        s.park(2);
        assert_eq!(s.on_exit(2, 0, true, t0), OnExit::Expected);
        assert_eq!(s[2].phase, Phase::Parked);
        assert_eq!(s.iter().map(|x| x.life.restarts).sum::<u32>(), 0);
    }

    #[test]
    fn the_exit_of_an_earlier_generation_is_stale() {
        let mut s = slots(1);
        s[0].generation = 3;
        s[0].phase = Phase::Running;
        assert_eq!(s.on_exit(0, 2, false, Instant::now()), OnExit::Stale);
        assert_eq!(s[0].phase, Phase::Running);
        assert!(!s.is_current(0, 2) && s.is_current(0, 3));
        s[0].down = true;
        assert!(!s.is_current(0, 3), "a shard that is down is not current");
    }

    #[test]
    fn stopping_asks_idle_shards_to_exit_and_keeps_parked_ones_parked() {
        let mut s = slots(3);
        for k in 0..3 {
            s[k].phase = Phase::Running;
        }
        s.park(2);
        s.started(0, 0);
        // Shard 1 still has a batch in flight: it may finish it. Only a
        // live worker is told.
        assert_eq!(s.ask_idle_to_exit(|k| usize::from(k == 1)), vec![0]);
        assert_eq!(s[0].phase, Phase::Stopped);
        assert_eq!(
            s.ask_idle_to_exit(|k| usize::from(k == 1)),
            Vec::<usize>::new(),
            "a stopped shard is told once"
        );
        assert_eq!(s[1].phase, Phase::Running);
        assert_eq!(s[2].phase, Phase::Parked);
        s.stop_all_now();
        assert_eq!(s[1].phase, Phase::Stopped);
        assert_eq!(s[2].phase, Phase::Parked);
        assert!(!s.all_exited(), "shard 0's worker has not exited");
        assert_eq!(s.on_exit(0, 0, true, Instant::now()), OnExit::Expected);
        assert!(s.all_exited());
    }

    #[test]
    fn a_start_makes_the_shard_live_until_its_exit_or_a_failed_start() {
        let mut s = slots(2);
        assert!(s.all_exited());
        let generation = s.next_generation(0);
        s.started(0, generation);
        assert!(s[0].live && s.is_current(0, generation));
        assert_eq!(s.live().collect::<Vec<_>>(), vec![0]);
        s.started(1, 0);
        s.start_failed(1);
        assert!(!s[1].live && !s.is_current(1, 0));
        assert_eq!(s.live().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn a_broken_protocol_is_killed_now_a_closed_socket_after_a_while() {
        let (when, why) = kill_on_disconnect(SocketEnd::Invalid("bad tag".into()));
        assert_eq!(when, KillWhen::Now);
        assert_eq!(why, "it broke the protocol (bad tag)");
        let (when, why) = kill_on_disconnect(SocketEnd::Closed);
        assert_eq!(when, KillWhen::UnlessExitedWithin(EXIT_AFTER_CLOSE));
        assert_eq!(why, "it closed its socket and it had not exited 2s later");
        let (when, _) = kill_on_disconnect(SocketEnd::Broken("reset".into()));
        assert_eq!(when, KillWhen::UnlessExitedWithin(EXIT_AFTER_CLOSE));
    }
}
