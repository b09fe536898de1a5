//! The worker's conversation with the coordinator, and its exit.

use crate::engine::Engine;
use crate::stats_file::StatsFile;
use bulkget_console::MESSAGES;
use bulkget_http::proxy::{Proxy, Secret};
use bulkget_http::tls::{Alpn, TlsOptions};
use bulkget_http::{Endpoint, Transport};
use bulkget_protocol::frame::{FrameError, FrameReader, FrameWriter};
use bulkget_protocol::{FatalKind, ToCoordinator, ToWorker, Version};
use std::os::fd::{FromRawFd, RawFd};
use std::rc::Rc;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Notify};

pub use bulkget_protocol::WORKER_FD;

/// Exit codes of a worker process (the coordinator reads them; users never
/// should need to).
pub mod exit {
    /// Drained and finished, or told to stop.
    pub const OK: i32 = 0;
    /// Could not go on; a `Fatal` message said why.
    pub const FATAL: i32 = 1;
    /// Started by hand, or the socket is not usable.
    pub const USAGE: i32 = 2;
}

/// Runs a worker on the socket at `fd` and returns the process exit code.
pub fn run_on_fd(fd: RawFd) -> i32 {
    install_abort_on_panic();
    // Check the descriptor is a socket before taking ownership of it, so
    // that running `bulkget worker` by hand gives a clear error.
    let is_socket = nix::sys::stat::fstat(fd)
        .map(|st| (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK)
        .unwrap_or(false);
    if !is_socket {
        tracing::error!(
            target: MESSAGES,
            "bulkget worker: file descriptor {fd} is not a socket; this subcommand is started by `bulkget fetch`, not by hand"
        );
        return exit::USAGE;
    }
    // SAFETY: fd is an open socket (checked above) that this process owns:
    // the coordinator passed it to us and nothing else in the process uses it.
    let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    if let Err(e) = std_stream.set_nonblocking(true) {
        tracing::error!(target: MESSAGES, "bulkget worker: cannot use socket: {e}");
        return exit::USAGE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(crate::park::before_park)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(target: MESSAGES, "bulkget worker: cannot start runtime: {e}");
            return exit::FATAL;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        match UnixStream::from_std(std_stream) {
            Ok(stream) => serve(stream).await,
            Err(e) => {
                tracing::error!(target: MESSAGES, "bulkget worker: cannot use socket: {e}");
                exit::USAGE
            }
        }
    })
}

/// A panic anywhere in a worker must kill the process: tokio would
/// otherwise catch it in the task and leave a batch that never completes.
/// A dead worker is restarted and its batches are fetched again.
fn install_abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
}

async fn serve(stream: UnixStream) -> i32 {
    let (read_half, write_half) = stream.into_split();
    let mut reader = FrameReader::new(read_half);
    let mut frames = FrameWriter::new(write_half);

    // The first frame each way is a `Version`. This worker answers with its
    // own whatever the coordinator's says, so that the coordinator can name
    // both in one clear error; with another version it stops here, before
    // reading a hello whose layout it may not know. It prints nothing: the
    // coordinator reports the mismatch once for the run.
    let theirs = match reader.next::<Version>().await {
        Ok(Some(v)) => v,
        Ok(None) => return exit::OK,
        Err(e) => {
            tracing::error!(target: MESSAGES, "bulkget worker: {e}");
            return exit::USAGE;
        }
    };
    let ours = Version::current();
    if frames.send(&ours).await.is_err() {
        // The coordinator is gone.
        return exit::OK;
    }
    if theirs != ours {
        return exit::FATAL;
    }

    let (outbox, outbox_rx) = mpsc::unbounded_channel::<ToCoordinator>();
    let cannot_send = Rc::new(Notify::new());
    let writer = tokio::task::spawn_local(write_outbox(frames, outbox_rx, cannot_send.clone()));

    let (shard, generation, settings) = match reader.next::<ToWorker>().await {
        Ok(Some(ToWorker::Hello {
            shard,
            generation,
            settings,
        })) => (shard, generation, *settings),
        Ok(None) => return exit::OK,
        Ok(Some(other)) => {
            tracing::error!(target: MESSAGES, "bulkget worker: expected hello, got {other:?}");
            return exit::USAGE;
        }
        Err(e) => {
            tracing::error!(target: MESSAGES, "bulkget worker: {e}");
            return exit::USAGE;
        }
    };
    if generation == 0 && crate::test_hooks(&settings).linger_shards.contains(&shard) {
        // Test hook: close the socket (both halves) and stay alive until
        // the coordinator kills this process.
        drop(outbox);
        let _ = writer.await;
        drop(reader);
        return std::future::pending().await;
    }
    let fatal = |kind: FatalKind, reason: String| {
        tracing::error!(target: MESSAGES, "bulkget worker {shard}: {reason}");
        let _ = outbox.send(ToCoordinator::Fatal { kind, reason });
    };

    if crate::test_hooks(&settings)
        .fail_start_shards
        .contains(&shard)
    {
        fatal(
            FatalKind::Crash,
            "test hook: start-up fails on this shard".into(),
        );
        drop(outbox);
        let _ = writer.await;
        return exit::FATAL;
    }
    let endpoint = match Endpoint::parse(&settings.base_url) {
        Ok(e) => e,
        Err(e) => {
            fatal(FatalKind::Crash, e.to_string());
            drop(outbox);
            let _ = writer.await;
            return exit::FATAL;
        }
    };
    let transport = match transport_for(&endpoint, &settings) {
        Ok(t) => t,
        Err(e) => {
            fatal(FatalKind::Crash, e);
            drop(outbox);
            let _ = writer.await;
            return exit::FATAL;
        }
    };
    let sink = match bulkget_sink::open(
        settings.sink,
        settings.layout,
        settings.out_dir.as_ref(),
        shard,
        &bulkget_sink::Reserved::new(settings.state_dir_in_out.as_deref()),
        settings.resolve,
        settings.refresh,
    ) {
        Ok(s) => s,
        Err(e) => {
            let kind = match e {
                bulkget_sink::PutError::NoSpace(_) => FatalKind::NoSpace,
                _ => FatalKind::Crash,
            };
            fatal(kind, format!("cannot open the sink: {e}"));
            drop(outbox);
            let _ = writer.await;
            return exit::FATAL;
        }
    };
    let stats = Rc::new(StatsFile::new(&settings.state_dir, shard, generation));
    let interval = std::time::Duration::from_millis(settings.stats_interval_ms.max(100));
    let engine = Engine::new(settings, endpoint, transport, sink);
    let _ = outbox.send(ToCoordinator::Ready);
    engine.start();
    let committer = tokio::task::spawn_local(commit_loop(engine.clone(), outbox.clone()));
    let stats_task = {
        let (engine, stats, outbox) = (engine.clone(), stats.clone(), outbox.clone());
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                stats.write(&engine.counters, engine.governor.snapshot());
                // What the service said since the last tick, for the
                // coordinator's run-wide decision; nothing when idle.
                let (clean, pushback) = engine.governor.take_pressure();
                if clean + pushback > 0 {
                    let _ = outbox.send(ToCoordinator::Pressure { clean, pushback });
                }
            }
        })
    };

    let code = loop {
        tokio::select! {
            msg = reader.next::<ToWorker>() => match msg {
                Ok(Some(ToWorker::Batch { id, names })) => {
                    engine.counters.batch_received();
                    engine.add_batch(id, names);
                }
                Ok(Some(ToWorker::Shutdown { drain: true })) => {
                    engine.counters.state.set(bulkget_stats::ShardState::Draining);
                    engine.start_drain();
                    if engine.outstanding() == 0 {
                        break exit::OK;
                    }
                }
                Ok(Some(ToWorker::Shutdown { drain: false })) => break exit::OK,
                Ok(Some(ToWorker::Pace { rps_milli, slowdown })) => {
                    let share = (rps_milli > 0).then(|| rps_milli as f64 / 1000.0);
                    engine.governor.set_share(share, slowdown);
                }
                Ok(Some(ToWorker::Hello { .. })) => {
                    tracing::error!(target: MESSAGES, "bulkget worker {shard}: unexpected second hello");
                    break exit::USAGE;
                }
                // End of stream: the coordinator is gone (exited or killed).
                // Nobody can acknowledge further work, so stop at once.
                Ok(None) => break exit::OK,
                Err(e) => {
                    tracing::error!(target: MESSAGES, "bulkget worker {shard}: {e}");
                    break exit::USAGE;
                }
            },
            () = drained(&engine) => break exit::OK,
            () = engine.fatal_ready.notified() => {
                if let Some((kind, reason)) = engine.take_fatal() {
                    fatal(kind, reason);
                }
                break exit::FATAL;
            }
            // A report could not be sent; the writer said why.
            () = cannot_send.notified() => break exit::FATAL,
        }
    };
    // Stop the periodic writer first, or it could overwrite the final
    // "exited" snapshot; stop the committer, whose outbox sender would keep
    // the writer (and so this process) alive.
    stats_task.abort();
    committer.abort();
    // Close the database before the socket: once the socket closes the
    // coordinator may kill this process, and only a clean close folds the
    // SQLite write-ahead log back into the database. Nothing uncommitted was
    // acknowledged, so the rollback of an open transaction loses nothing.
    engine.close_sink();
    engine.counters.state.set(bulkget_stats::ShardState::Exited);
    stats.write(&engine.counters, engine.governor.snapshot());
    drop(outbox);
    // Give the outbox a bounded moment to deliver the last frames; the
    // coordinator may already be gone.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    code
}

/// Resolves once a drain has been requested and every batch is acknowledged.
async fn drained(engine: &Rc<Engine>) {
    loop {
        let woken = engine.drain_progress.notified();
        if engine.is_drained() {
            return;
        }
        woken.await;
    }
}

/// Commits the sink, then sends the stall reports and acknowledges every
/// completed batch. Several batches that complete close together share one
/// commit.
async fn commit_loop(engine: Rc<Engine>, outbox: mpsc::UnboundedSender<ToCoordinator>) {
    loop {
        engine.completed_ready.notified().await;
        // Let the other tasks run once first, so batches completing in the
        // same burst share the commit.
        tokio::task::yield_now().await;
        let stalls = engine.take_stall_reports();
        let batches = engine.take_completed();
        if batches.is_empty() && stalls.is_empty() {
            continue;
        }
        if let Err(e) = engine.commit() {
            let kind = match e {
                bulkget_sink::PutError::NoSpace(_) => FatalKind::NoSpace,
                _ => FatalKind::Crash,
            };
            engine.set_fatal(kind, format!("sink commit failed: {e}"));
            return;
        }
        // Stall reports first: a batch that stalled and then completed
        // before this commit must be reported stalled before it is done.
        for report in stalls {
            let _ = outbox.send(report);
        }
        for b in batches {
            let _ = outbox.send(ToCoordinator::BatchDone {
                id: b.id,
                ok: b.ok(),
                bytes: b.bytes(),
                retries: b.retries(),
                present: b.present(),
                failures: b.take_failures(),
            });
            engine.acknowledged();
        }
    }
}

/// Sends the outbox's messages to the coordinator, in order.
///
/// A message that cannot be encoded (over the frame limit) can never be
/// sent, and its batch never acknowledged. Batches are cut so that their
/// reports fit ([`bulkget_protocol::frame::MAX_BATCH_COST`]), so this is a
/// bug somewhere; but rather than fall silent and be taken for a crash, the
/// worker says so: it sends a `Fatal` naming the message and the error,
/// notifies `cannot_send`, and stops. The coordinator then restarts the
/// shard and puts the batch back as suspect, to be split if it fails again.
async fn write_outbox<W: tokio::io::AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    mut rx: mpsc::UnboundedReceiver<ToCoordinator>,
    cannot_send: Rc<Notify>,
) {
    while let Some(msg) = rx.recv().await {
        match writer.send(&msg).await {
            Ok(()) => {}
            Err(e @ (FrameError::TooLarge(_) | FrameError::Encode(_))) => {
                let reason = format!("cannot send {}: {e}", describe(&msg));
                tracing::error!(target: MESSAGES, "bulkget worker: {reason}");
                let fatal = ToCoordinator::Fatal {
                    kind: FatalKind::Crash,
                    reason,
                };
                let _ = writer.send(&fatal).await;
                cannot_send.notify_one();
                return;
            }
            // The coordinator is gone; the main loop sees the end of stream.
            Err(_) => return,
        }
    }
}

/// What a message is, for a message about it.
fn describe(msg: &ToCoordinator) -> String {
    match msg {
        ToCoordinator::Ready => "the ready message".into(),
        ToCoordinator::BatchDone { id, failures, .. } => {
            format!("the report of batch {id} ({} failed names)", failures.len())
        }
        ToCoordinator::BatchStalled {
            id,
            failures,
            waiting,
            ..
        } => format!(
            "the stall report of batch {id} ({} failed names, {} waiting)",
            failures.len(),
            waiting.len()
        ),
        ToCoordinator::Fatal { .. } => "a fatal error report".into(),
        ToCoordinator::Pressure { .. } => "a pressure report".into(),
    }
}

/// The connect path of this worker, built once: every connection shares its
/// TLS configuration, so a reconnect resumes the TLS session.
fn transport_for(
    endpoint: &Endpoint,
    settings: &bulkget_protocol::WorkerSettings,
) -> Result<Transport, String> {
    let headers = settings
        .headers
        .iter()
        .map(|(name, value)| bulkget_http::transport::parse_header(&format!("{name}: {}", value.0)))
        .collect::<Result<Vec<_>, _>>()?;
    let tls = TlsOptions {
        cacert: settings.tls.cacert.as_ref().map(Into::into),
        client_cert: settings.tls.client_cert.as_ref().map(Into::into),
        client_key: settings.tls.client_key.as_ref().map(Into::into),
        insecure: settings.tls.insecure,
        alpn: Alpn::offer(settings.http_version.allows_http2()),
    };
    let proxy = settings.proxy.as_ref().map(|p| Proxy {
        host: p.host.clone(),
        port: p.port,
        authorization: p.authorization.as_ref().map(|a| Secret::new(a.0.clone())),
    });
    Transport::new(
        endpoint,
        std::time::Duration::from_millis(settings.connect_timeout_ms),
        &tls,
        proxy,
        headers,
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkget_protocol::{Failure, MAX_FAILURE_NAME_BYTES};

    /// A report over the frame limit makes the worker say so, not fall
    /// silent.
    #[tokio::test(flavor = "current_thread")]
    async fn a_report_that_cannot_be_sent_is_reported_as_fatal() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let cannot_send = Rc::new(Notify::new());
        let local = tokio::task::LocalSet::new();
        let writer = local.spawn_local(write_outbox(
            FrameWriter::new(ours),
            rx,
            cannot_send.clone(),
        ));
        // Names as long as a failure keeps, and enough of them to pass
        // the frame limit.
        let name = "n".repeat(MAX_FAILURE_NAME_BYTES);
        let count = bulkget_protocol::frame::MAX_FRAME / MAX_FAILURE_NAME_BYTES + 1;
        let failures = vec![Failure::new(name, "r", None); count];
        tx.send(ToCoordinator::BatchDone {
            id: 7,
            ok: 0,
            bytes: 0,
            retries: 0,
            present: 0,
            failures,
        })
        .unwrap();
        local
            .run_until(async {
                cannot_send.notified().await;
                writer.await.unwrap();
            })
            .await;
        let mut reader = FrameReader::new(theirs);
        match reader.next::<ToCoordinator>().await.unwrap() {
            Some(ToCoordinator::Fatal {
                kind: FatalKind::Crash,
                reason,
            }) => {
                assert!(
                    reason.starts_with(&format!(
                        "cannot send the report of batch 7 ({count} failed names): frame of "
                    )),
                    "{reason}"
                );
                assert!(reason.ends_with("-byte limit"), "{reason}");
            }
            other => panic!("expected a fatal report, got {other:?}"),
        }
    }
}
