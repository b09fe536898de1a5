//! The state thread: the run's blocking work on the state directory
//! (appending to `failed.jsonl`, syncing, writing checkpoints), done in
//! order on a thread of its own so that a slow disk never stalls dispatch.
//!
//! A failure here is never ignored. The first one is sent to the run loop,
//! which stops the run at once (exit 1), and from then on the thread writes
//! nothing: no failure line, no checkpoint. The reason is the kernel: Linux
//! reports a failed write-back to `syncfs` once, so the next sync succeeds
//! although files were lost, and a checkpoint written after it would call
//! them done. Likewise a checkpoint after a failed append to `failed.jsonl`
//! would record a length of lines that are not all there. The last
//! checkpoint written before the failure stays, and is exact.

use crate::scheduler::Snapshot;
use crate::state::StateDir;
use bulkget_protocol::Failure;
use std::sync::mpsc as std_mpsc;
use tokio::sync::mpsc;

/// What the state thread does, in order.
pub enum StateOp {
    Failures(Vec<Failure>),
    Checkpoint {
        snapshot: Snapshot,
        complete: bool,
        /// The run's last checkpoint, written once every worker is gone: it
        /// may use the state directory's reserve if the disk is full.
        last: bool,
        done: std_mpsc::Sender<Result<(), String>>,
    },
}

/// Starts the thread. It runs until every sender of ops is dropped; the
/// first failure is sent on `failed`.
pub fn spawn(
    state: StateDir,
    failed: mpsc::UnboundedSender<String>,
) -> std::io::Result<(std_mpsc::Sender<StateOp>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std_mpsc::channel::<StateOp>();
    let mut writer = StateWriter::new(state, failed);
    let handle = std::thread::Builder::new()
        .name("bulkget-state".into())
        .spawn(move || {
            for op in rx {
                writer.handle(op);
            }
        })?;
    Ok((tx, handle))
}

/// The state directory and whether writing it has failed.
struct StateWriter {
    state: StateDir,
    /// The first failure; once set, nothing more is written.
    failure: Option<String>,
    report: mpsc::UnboundedSender<String>,
}

impl StateWriter {
    fn new(state: StateDir, report: mpsc::UnboundedSender<String>) -> StateWriter {
        StateWriter {
            state,
            failure: None,
            report,
        }
    }

    fn handle(&mut self, op: StateOp) {
        match op {
            StateOp::Failures(f) => {
                if self.failure.is_none() {
                    if let Err(e) = self.state.record_failures(&f) {
                        self.fail(e.to_string());
                    }
                }
            }
            StateOp::Checkpoint {
                snapshot,
                complete,
                last,
                done,
            } => {
                let result = match &self.failure {
                    Some(why) => Err(format!("not written after an earlier failure ({why})")),
                    None => {
                        let r = if last {
                            self.state.write_last_checkpoint(snapshot, complete)
                        } else {
                            self.state.write_checkpoint(snapshot, complete)
                        };
                        r.map_err(|e| {
                            let why = e.to_string();
                            self.fail(why.clone());
                            why
                        })
                    }
                };
                // A periodic checkpoint's sender does not wait for the answer;
                // its failure reaches the run loop through `report`.
                let _ = done.send(result);
            }
        }
    }

    fn fail(&mut self, why: String) {
        self.failure = Some(why.clone());
        // The run loop may be gone already (the last checkpoint); its
        // caller then has the answer on `done`.
        let _ = self.report.send(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{DoneAfter, ListPosition, Totals};
    use crate::state::{RunInfo, Start};

    fn open(dir: &std::path::Path) -> StateDir {
        let info = RunInfo {
            version: "test".into(),
            url: "http://a".into(),
            out_dir: dir.display().to_string(),
            sink: "dir".into(),
            layout: "flat".into(),
            shards: 1,
            created_at: "now".into(),
            header_names: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
        };
        let (state, start) = StateDir::open(&dir.join("state"), dir, &info, false, false).unwrap();
        assert!(matches!(start, Start::Fresh));
        state
    }

    fn snapshot(files_ok: u64) -> Snapshot {
        Snapshot {
            position: ListPosition::Marker(format!("m{files_ok}")),
            totals: Totals {
                files_ok,
                ..Totals::default()
            },
            done_after: DoneAfter::default(),
        }
    }

    fn checkpoint(w: &mut StateWriter, files_ok: u64, last: bool) -> Result<(), String> {
        let (done, answer) = std_mpsc::channel();
        w.handle(StateOp::Checkpoint {
            snapshot: snapshot(files_ok),
            complete: false,
            last,
            done,
        });
        answer.recv().unwrap()
    }

    fn failures(name: &str) -> StateOp {
        StateOp::Failures(vec![Failure::new(name, "HTTP 404", Some(404))])
    }

    #[test]
    fn after_a_failed_sync_nothing_more_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let mut state = open(tmp.path());
        state.fail_sync_after(1);
        let checkpoint_path = bulkget_stats::schema::checkpoint_path(&tmp.path().join("state"));
        let failed_path = state.failed_path();
        let (report, mut reported) = mpsc::unbounded_channel();
        let mut w = StateWriter::new(state, report);

        w.handle(failures("before"));
        checkpoint(&mut w, 10, false).unwrap();
        let saved = std::fs::read(&checkpoint_path).unwrap();
        assert!(reported.try_recv().is_err(), "nothing failed yet");

        // The second sync fails: reported once, naming the cause.
        w.handle(failures("during"));
        let err = checkpoint(&mut w, 20, false).unwrap_err();
        assert!(err.contains("syncfs"), "{err}");
        assert_eq!(reported.try_recv().unwrap(), err);

        // The kernel would let the next sync succeed; the writer must not
        // try it: no later checkpoint, not even the last, and no failures.
        w.handle(failures("after"));
        let err = checkpoint(&mut w, 30, false).unwrap_err();
        assert!(err.contains("earlier failure"), "{err}");
        assert!(checkpoint(&mut w, 40, true).is_err());
        assert!(reported.try_recv().is_err(), "only the first is reported");
        drop(w);
        assert_eq!(std::fs::read(&checkpoint_path).unwrap(), saved);
        let failed = std::fs::read_to_string(failed_path).unwrap();
        assert!(failed.contains("\"before\""), "{failed}");
        assert!(!failed.contains("\"after\""), "{failed}");
    }

    #[test]
    fn a_failed_append_to_failed_jsonl_stops_every_later_write() {
        let tmp = tempfile::tempdir().unwrap();
        let mut state = open(tmp.path());
        state.break_failed_jsonl_for_test();
        let checkpoint_path = bulkget_stats::schema::checkpoint_path(&tmp.path().join("state"));
        let (report, mut reported) = mpsc::unbounded_channel();
        let mut w = StateWriter::new(state, report);

        w.handle(failures("lost"));
        let err = reported.try_recv().unwrap();
        assert!(err.contains("failed.jsonl"), "{err}");
        assert!(checkpoint(&mut w, 10, true).is_err());
        assert!(!checkpoint_path.exists(), "no checkpoint after the failure");
    }
}
