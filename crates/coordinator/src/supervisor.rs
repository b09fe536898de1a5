//! Worker processes: spawning, talking to and watching them.
//!
//! A worker is this same executable run with the hidden `worker`
//! subcommand, with one end of a Unix socket pair on file descriptor 3. It
//! gets its own process group, so a Ctrl-C at the terminal reaches only the
//! coordinator, which then decides how the workers stop.
//!
//! Each worker has three tasks here: a writer that sends frames, a reader
//! that turns frames into [`Event::Message`], and a waiter that reports the
//! exit. All events go to the run loop on one channel; the run loop is the
//! single owner of every decision.
//!
//! Workers never outlive the coordinator: every socket end the coordinator
//! holds is close-on-exec and private to it, so when the coordinator dies
//! (even by SIGKILL) the kernel closes them, each worker reads end-of-stream
//! and exits.

use bulkget_protocol::frame::{self, FrameReader};
use bulkget_protocol::{ToCoordinator, ToWorker, WorkerSettings};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Something that happened to a worker.
#[derive(Debug)]
pub enum Event {
    Message {
        shard: usize,
        generation: u32,
        msg: ToCoordinator,
    },
    /// The socket reached end-of-stream or failed.
    Disconnected {
        shard: usize,
        generation: u32,
        error: Option<String>,
    },
    /// The process exited.
    Exited {
        shard: usize,
        generation: u32,
        status: ExitStatus,
    },
}

/// A running worker process.
pub struct Worker {
    pub shard: usize,
    pub generation: u32,
    pub pid: u32,
    frames: mpsc::UnboundedSender<Vec<u8>>,
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

    /// Sends a signal to the worker process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), sig);
    }
}

/// Starts a worker for `shard` and sends it its hello.
pub fn spawn(
    exe: &Path,
    shard: usize,
    generation: u32,
    settings: &WorkerSettings,
    events: mpsc::UnboundedSender<Event>,
) -> io::Result<Worker> {
    // Both ends are created close-on-exec; only the child's end is moved to
    // fd 3 (dup2 clears close-on-exec on the copy) so no worker inherits
    // another worker's socket.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let theirs: OwnedFd = theirs.into();
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("worker")
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
            if theirs_fd == bulkget_worker_fd() {
                let flags = libc::fcntl(theirs_fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(theirs_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_fd, bulkget_worker_fd()) < 0 {
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
    tokio::spawn(async move {
        let mut reader = FrameReader::new(read_half);
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
                Ok(None) => {
                    let _ = ev.send(Event::Disconnected {
                        shard,
                        generation,
                        error: None,
                    });
                    return;
                }
                Err(e) => {
                    let _ = ev.send(Event::Disconnected {
                        shard,
                        generation,
                        error: Some(e.to_string()),
                    });
                    return;
                }
            }
        }
    });

    tokio::spawn(async move {
        if let Ok(status) = child.wait().await {
            let _ = events.send(Event::Exited {
                shard,
                generation,
                status,
            });
        }
    });

    let worker = Worker {
        shard,
        generation,
        pid,
        frames: frames_tx,
    };
    worker.send(&ToWorker::Hello {
        shard: shard as u32,
        generation,
        settings: settings.clone(),
    });
    Ok(worker)
}

fn bulkget_worker_fd() -> i32 {
    3
}

/// Describes an exit status for messages: "exit code 1", "killed by SIGKILL".
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(sig) = status.signal() {
        match nix::sys::signal::Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        }
    } else {
        "unknown exit".to_string()
    }
}
