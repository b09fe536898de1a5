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
//! All events go to the run loop on one channel; the run loop is the single
//! owner of every decision.
//!
//! Workers never outlive the coordinator: every socket end the coordinator
//! holds is close-on-exec and private to it, so when the coordinator dies
//! (even by SIGKILL) the kernel closes them, each worker reads end-of-stream
//! and exits.

use bulkget_protocol::frame::{self, FrameError, FrameReader};
use bulkget_protocol::{ToCoordinator, ToWorker, Version, WorkerSettings};
use nix::sys::signal::Signal;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
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
}
