//! The state directory: what makes a run resumable.
//!
//! ```text
//! STATE/lock              flock'ed while a run owns the directory; holds its pid
//! STATE/run.json          URL and settings; a resume with another URL is refused
//! STATE/checkpoint.json   where to resume listing, and the counters up to there
//! STATE/failed.jsonl      one line per permanently failed name
//! STATE/coordinator.json  live stats (bulkget-stats)
//! STATE/shards/           per-shard live stats, written by the workers
//! STATE/reserve           1 MiB set aside for the last checkpoint (see below)
//! ```
//!
//! Durability order at each checkpoint: `failed.jsonl` is flushed and
//! synced, the output file system is synced (`syncfs`), then the checkpoint
//! is written to a temporary file, synced and renamed. So a checkpoint never
//! claims a file the disk does not hold, and `failed.jsonl` is truncated on
//! resume to the length the checkpoint recorded, dropping the lines of pages
//! that will be listed again.
//!
//! A full disk must not cost the checkpoint: the free-space guard stops a
//! run before the disk fills, but a fast run can fill a small file system
//! between two checks, and then even a one-page checkpoint cannot be
//! written (tmpfs and ext4 alike need a new block and a new inode for the
//! temporary file). So the state directory holds `reserve`, [`RESERVE_BYTES`]
//! allocated when the run starts (like CockroachDB's emergency ballast). The
//! last checkpoint of a run, written after every worker has exited, deletes
//! it and tries again if the disk is full; a resume allocates it anew, and a
//! complete run removes it.

use crate::scheduler::{DoneAfter, ListPosition, Snapshot, Totals};
use bulkget_console::errln;
use bulkget_protocol::Failure;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub use bulkget_stats::checkpoint::{Checkpoint, CHECKPOINT_VERSION};

/// The size of `STATE/reserve`: far more than a checkpoint and the
/// `failed.jsonl` lines of the batches in flight need.
pub const RESERVE_BYTES: u64 = 1 << 20;

/// `run.json`: what was asked for. Written once, when a run starts fresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    pub version: String,
    pub url: String,
    pub out_dir: String,
    pub sink: String,
    pub layout: String,
    /// Worker processes. A sqlite run keeps each name in the database of the
    /// shard its hash picks, so it must resume with the same number.
    #[serde(default)]
    pub shards: usize,
    pub created_at: String,
    /// The names of the headers given with `-H` (never their values), so
    /// that a resume without them can say which it needs.
    #[serde(default)]
    pub header_names: Vec<String>,
    /// The `--include` and `--exclude` globs, in order. A resume must give
    /// the same: the checkpoint calls the names they left out done.
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl RunInfo {
    /// The filters as a command line says them: `--include 'a*' --exclude
    /// 'b'`, or `no --include or --exclude`.
    pub fn filters(&self) -> String {
        let flags: Vec<String> = (self.include.iter().map(|g| ("--include", g)))
            .chain(self.exclude.iter().map(|g| ("--exclude", g)))
            .map(|(flag, glob)| format!("{flag} {glob:?}"))
            .collect();
        if flags.is_empty() {
            "no --include or --exclude".into()
        } else {
            flags.join(" ")
        }
    }
}

/// Why the state directory cannot be used.
#[derive(Debug)]
pub enum StateError {
    /// Another run holds the lock.
    Locked {
        dir: PathBuf,
        pid: Option<u32>,
    },
    /// The directory holds a run for another URL or output.
    Mismatch(String),
    /// An unfinished run is there and `--resume` was not given.
    Unfinished {
        dir: PathBuf,
        done: u64,
    },
    /// `--resume` was given and there is nothing to resume.
    NothingToResume(PathBuf),
    /// `--refresh` was given and there is no run to refresh.
    NothingToRefresh(PathBuf),
    /// `--refresh` without `--resume` on a run that has not finished (a
    /// first run, or a refresh, interrupted): it must be resumed first.
    RefreshUnfinished {
        dir: PathBuf,
        done: u64,
        /// The unfinished run is itself a refresh.
        refresh: bool,
    },
    Io(String),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Locked { dir, pid: Some(pid) } => write!(
                f,
                "{} is in use by another bulkget run (pid {pid}); wait for it or use another --state-dir",
                dir.display()
            ),
            StateError::Locked { dir, pid: None } => write!(
                f,
                "{} is in use by another bulkget run; wait for it or use another --state-dir",
                dir.display()
            ),
            StateError::Mismatch(why) => f.write_str(why),
            StateError::Unfinished { dir, done } => write!(
                f,
                "{} holds an unfinished run ({done} files done); pass --resume to continue it, or use another --state-dir",
                dir.display()
            ),
            StateError::NothingToResume(dir) => {
                write!(f, "--resume: {} holds no run to resume", dir.display())
            }
            StateError::NothingToRefresh(dir) => write!(
                f,
                "--refresh: {} holds no finished run to refresh; run without --refresh first",
                dir.display()
            ),
            StateError::RefreshUnfinished { dir, done, refresh } => write!(
                f,
                "--refresh: {} holds an unfinished {} ({done} files done); a refresh starts \
                 only from a finished run: continue this one with --resume{}",
                dir.display(),
                if *refresh { "refresh" } else { "run" },
                if *refresh {
                    " (it goes on as a refresh)"
                } else {
                    ", then refresh"
                }
            ),
            StateError::Io(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for StateError {}

fn io_err(what: &str, path: &Path, e: io::Error) -> StateError {
    StateError::Io(format!("{what} {}: {e}", path.display()))
}

/// An open, locked state directory.
pub struct StateDir {
    pub dir: PathBuf,
    /// Held for the life of the run; the lock is released when it closes.
    _lock: File,
    failed: BufWriter<File>,
    failed_len: u64,
    out_fd: File,
    /// OUT, for messages.
    out_dir: PathBuf,
    /// `STATE/reserve`, while it is allocated.
    reserve: Option<PathBuf>,
    /// Calls of `syncfs` so far, and the test hook that fails one of them.
    syncs: u64,
    fail_sync_after: Option<u64>,
    /// This run is a refresh: every checkpoint says so, so that its resume
    /// is a refresh too.
    refresh: bool,
}

/// A step that makes the run durable failed: appending to or syncing
/// `failed.jsonl`, syncing the output file system, writing the checkpoint.
/// The message names the step and the file.
#[derive(Debug)]
pub struct DurabilityError {
    /// What was being done, e.g. "cannot sync the file system of /out (syncfs)".
    pub what: String,
    pub source: io::Error,
}

impl std::fmt::Display for DurabilityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for DurabilityError {}

fn durability(what: impl Into<String>) -> impl FnOnce(io::Error) -> DurabilityError {
    let what = what.into();
    move |source| DurabilityError { what, source }
}

/// How the run starts.
pub enum Start {
    Fresh,
    Resume(Checkpoint),
    /// The directory holds a complete run: nothing to do.
    AlreadyComplete(Checkpoint),
    /// `--refresh` on a complete run (the checkpoint given): list
    /// everything again from the first page, fetching only the names not in
    /// the sink.
    Refresh(Checkpoint),
}

impl Start {
    /// Whether the run that starts is a refresh: a new one, or the resume
    /// of one.
    pub fn is_refresh(&self) -> bool {
        match self {
            Start::Refresh(_) => true,
            Start::Resume(cp) => cp.refresh,
            Start::Fresh | Start::AlreadyComplete(_) => false,
        }
    }
}

impl StateDir {
    /// Locks `dir` (creating it) and decides between a fresh start, a
    /// resume and a refresh.
    pub fn open(
        dir: &Path,
        out_dir: &Path,
        info: &RunInfo,
        resume: bool,
        refresh: bool,
    ) -> Result<(StateDir, Start), StateError> {
        std::fs::create_dir_all(dir.join("shards")).map_err(|e| io_err("cannot create", dir, e))?;
        let lock_path = dir.join("lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io_err("cannot open", &lock_path, e))?;
        // SAFETY: flock on a descriptor we own; the lock lives as long as it.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = lock.read_to_string(&mut text);
                return Err(StateError::Locked {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            return Err(io_err("cannot lock", &lock_path, e));
        }
        lock.set_len(0)
            .map_err(|e| io_err("cannot write", &lock_path, e))?;
        write!(lock, "{}", std::process::id())
            .map_err(|e| io_err("cannot write", &lock_path, e))?;

        let run_path = dir.join("run.json");
        let checkpoint_path = bulkget_stats::schema::checkpoint_path(dir);
        let previous: Option<RunInfo> = read_json_opt(&run_path)?;
        let checkpoint = read_checkpoint(&checkpoint_path)?;

        let start = match (previous, checkpoint) {
            (Some(prev), Some(cp)) => {
                if prev.url != info.url {
                    return Err(StateError::Mismatch(format!(
                        "{} belongs to a run of {}, not {}; use another --state-dir",
                        dir.display(),
                        prev.url,
                        info.url
                    )));
                }
                if prev.sink != info.sink
                    || prev.layout != info.layout
                    || prev.out_dir != info.out_dir
                {
                    return Err(StateError::Mismatch(format!(
                        "{} belongs to a run into {} (sink {}, layout {}); resume with the same output and settings",
                        dir.display(),
                        prev.out_dir,
                        prev.sink,
                        prev.layout
                    )));
                }
                if prev.sink == "sqlite" && prev.shards != info.shards {
                    return Err(StateError::Mismatch(format!(
                        "{} belongs to a sqlite run with {} workers; each name lives in the database of its shard, so resume with --workers {}",
                        dir.display(),
                        prev.shards,
                        prev.shards
                    )));
                }
                if !same_globs(&prev.include, &info.include)
                    || !same_globs(&prev.exclude, &info.exclude)
                {
                    return Err(StateError::Mismatch(format!(
                        "{} belongs to a run with {}, and this one has {}; the checkpoint \
                         calls the names those filters left out done, so give the same \
                         filters, or use another --state-dir",
                        dir.display(),
                        prev.filters(),
                        info.filters()
                    )));
                }
                let missing: Vec<&str> = prev
                    .header_names
                    .iter()
                    .filter(|n| !info.header_names.contains(n))
                    .map(String::as_str)
                    .collect();
                if cp.complete && !refresh {
                    Start::AlreadyComplete(cp)
                } else if !cp.complete && !resume {
                    let (dir, done) = (
                        dir.to_path_buf(),
                        cp.totals.files_ok + cp.totals.files_failed,
                    );
                    return Err(if refresh {
                        StateError::RefreshUnfinished {
                            dir,
                            done,
                            refresh: cp.refresh,
                        }
                    } else {
                        StateError::Unfinished { dir, done }
                    });
                } else if !missing.is_empty() {
                    return Err(StateError::Mismatch(format!(
                        "the run in {} sent the header(s) {} on every request; give them again \
                         with -H (their values are never stored)",
                        dir.display(),
                        missing.join(", ")
                    )));
                } else if cp.complete {
                    Start::Refresh(cp)
                } else {
                    Start::Resume(cp)
                }
            }
            _ if resume => return Err(StateError::NothingToResume(dir.to_path_buf())),
            _ if refresh => return Err(StateError::NothingToRefresh(dir.to_path_buf())),
            _ => {
                bulkget_stats::write_json_durable(&run_path, info)
                    .map_err(|e| io_err("cannot write", &run_path, e))?;
                Start::Fresh
            }
        };

        let failed_path = dir.join("failed.jsonl");
        let failed = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&failed_path)
            .map_err(|e| io_err("cannot open", &failed_path, e))?;
        // A fresh run starts an empty list; a resume keeps the lines of the
        // pages before its checkpoint and drops the rest, which will be
        // listed and recorded again.
        let keep = match &start {
            // A refresh lists its own failures: the names that failed
            // before are not in the sink, so it tries them again.
            Start::Fresh | Start::Refresh(_) => 0,
            Start::Resume(cp) | Start::AlreadyComplete(cp) => cp.failed_len,
        };
        failed
            .set_len(keep)
            .map_err(|e| io_err("cannot truncate", &failed_path, e))?;
        let out_fd = File::open(out_dir).map_err(|e| io_err("cannot open", out_dir, e))?;
        let mut failed = BufWriter::new(failed);
        failed
            .seek(SeekFrom::End(0))
            .map_err(|e| io_err("cannot seek", &failed_path, e))?;
        let reserve_path = dir.join("reserve");
        let reserve = match allocate_reserve(&reserve_path) {
            Ok(()) => Some(reserve_path),
            Err(e) => {
                let _ = std::fs::remove_file(&reserve_path);
                errln!(
                    "bulkget: cannot set aside {} KiB in {} ({e}); if the disk fills up, the last checkpoint may not be saved",
                    RESERVE_BYTES >> 10,
                    reserve_path.display()
                );
                None
            }
        };
        let mut state = StateDir {
            dir: dir.to_path_buf(),
            _lock: lock,
            failed,
            failed_len: keep,
            out_fd,
            out_dir: out_dir.to_path_buf(),
            reserve,
            syncs: 0,
            fail_sync_after: None,
            refresh: start.is_refresh(),
        };
        if let Start::Refresh(_) = start {
            // The complete checkpoint of the run before gives way to the
            // refresh's at once, so that a refresh stopped before its
            // first periodic checkpoint is resumed as a refresh, not taken
            // for the finished run.
            let empty = Snapshot {
                position: ListPosition::Start,
                totals: Totals::default(),
                done_after: DoneAfter::default(),
            };
            state
                .write_checkpoint(empty, false)
                .map_err(|e| StateError::Io(e.to_string()))?;
        }
        Ok((state, start))
    }

    /// Test hook: the `syncfs` after `n` successful ones fails, once, with
    /// `EIO`, as the kernel reports a lost write-back once.
    pub fn fail_sync_after(&mut self, n: u64) {
        self.fail_sync_after = Some(n);
    }

    /// Appends failures to `failed.jsonl` (buffered; synced at the next
    /// checkpoint).
    pub fn record_failures(&mut self, failures: &[Failure]) -> Result<(), DurabilityError> {
        let path = self.failed_path();
        let cannot = || durability(format!("cannot append to {}", path.display()));
        for f in failures {
            let line = serde_json::to_string(&FailedLine {
                name: &f.name,
                reason: &f.reason,
                status: f.status,
            })
            .expect("strings always serialise");
            self.failed.write_all(line.as_bytes()).map_err(cannot())?;
            self.failed.write_all(b"\n").map_err(cannot())?;
            self.failed_len += line.len() as u64 + 1;
        }
        Ok(())
    }

    /// Makes every later append to `failed.jsonl` fail, as a broken disk
    /// would: the file is swapped for a read-only handle, unbuffered.
    #[cfg(test)]
    pub fn break_failed_jsonl_for_test(&mut self) {
        let read_only = File::open(self.failed_path()).unwrap();
        self.failed = BufWriter::with_capacity(0, read_only);
    }

    pub fn failed_path(&self) -> PathBuf {
        self.dir.join("failed.jsonl")
    }

    /// Makes everything durable and writes the checkpoint. Blocking: syncs
    /// the output file system, which can take a while on a busy disk.
    pub fn write_checkpoint(
        &mut self,
        snapshot: Snapshot,
        complete: bool,
    ) -> Result<(), DurabilityError> {
        let failed_path = self.failed_path();
        self.failed.flush().map_err(durability(format!(
            "cannot append to {}",
            failed_path.display()
        )))?;
        self.failed
            .get_ref()
            .sync_data()
            .map_err(durability(format!("cannot sync {}", failed_path.display())))?;
        self.sync_output().map_err(durability(format!(
            "cannot sync the file system of {} (syncfs)",
            self.out_dir.display()
        )))?;
        let cp = Checkpoint {
            schema_version: CHECKPOINT_VERSION,
            position: snapshot.position,
            totals: snapshot.totals,
            done_after: snapshot.done_after,
            failed_len: self.failed_len,
            complete,
            refresh: self.refresh,
            updated_at: bulkget_stats::now_rfc3339(),
        };
        let path = bulkget_stats::schema::checkpoint_path(&self.dir);
        bulkget_stats::write_json_durable(&path, &cp)
            .map_err(durability(format!("cannot write {}", path.display())))
    }

    /// `syncfs` on the output file system: every file the workers wrote is
    /// on disk when it returns. Linux reports a failed write-back to each
    /// file system sync once, so an error here means files may be lost even
    /// if the next call succeeds.
    fn sync_output(&mut self) -> io::Result<()> {
        let call = self.syncs;
        self.syncs += 1;
        if self.fail_sync_after == Some(call) {
            return Err(io::Error::other(
                "Input/output error (from the test hook --test-fail-sync-after)",
            ));
        }
        // SAFETY: syncfs takes a valid open descriptor, which out_fd is.
        let rc = unsafe { libc::syncfs(self.out_fd.as_raw_fd()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The last checkpoint of a run, written when no worker is left. If the
    /// disk is full, the reserve is given up and the write tried again; a
    /// complete run also removes the reserve, which it no longer needs.
    pub fn write_last_checkpoint(
        &mut self,
        snapshot: Snapshot,
        complete: bool,
    ) -> Result<(), DurabilityError> {
        let result = match self.write_checkpoint(snapshot.clone(), complete) {
            Err(e) if is_no_space(&e.source) && self.release_reserve() => {
                errln!(
                    "bulkget: the disk is full; using the space set aside in {} for the checkpoint",
                    self.dir.join("reserve").display()
                );
                self.write_checkpoint(snapshot, complete)
            }
            other => other,
        };
        if result.is_ok() && complete {
            self.release_reserve();
        }
        result
    }

    /// Deletes the reserve; whether there was one.
    fn release_reserve(&mut self) -> bool {
        match self.reserve.take() {
            Some(path) => std::fs::remove_file(path).is_ok(),
            None => false,
        }
    }
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Creates `path` with [`RESERVE_BYTES`] really allocated (not a sparse
/// file, which would free nothing when deleted).
fn allocate_reserve(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // SAFETY: posix_fallocate on a descriptor we own; it returns an error
    // number instead of setting errno. glibc falls back to writing blocks
    // on file systems without fallocate.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, RESERVE_BYTES as libc::off_t) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

#[derive(Serialize)]
struct FailedLine<'a> {
    name: &'a str,
    reason: &'a str,
    status: Option<u16>,
}

/// Reads `checkpoint.json`, of this version or an older one.
///
/// Reads `checkpoint.json` through the one parser of its versions
/// ([`bulkget_stats::checkpoint::parse`]); says on stderr when an older
/// checkpoint's pages after its position are fetched again, and refuses a
/// newer one.
fn read_checkpoint(path: &Path) -> Result<Option<Checkpoint>, StateError> {
    use bulkget_stats::checkpoint::{parse, ParseError};
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot read", path, e)),
    };
    match parse(&bytes) {
        Ok(parsed) => {
            let pages = parsed.pages_dropped;
            if pages > 0 {
                bulkget_console::errln!(
                    "bulkget: {} was written by an older bulkget (checkpoint version {}) that did not record what the {pages} pages done after its position listed; they are fetched again (their files may be counted twice)",
                    path.display(),
                    parsed.checkpoint.schema_version
                );
            }
            Ok(Some(parsed.checkpoint))
        }
        Err(ParseError::Damaged(e)) => Err(StateError::Io(format!(
            "{} is damaged: {e}",
            path.display()
        ))),
        Err(newer @ ParseError::Newer(_)) => Err(StateError::Mismatch(format!(
            "{} has {newer}; resume with the bulkget that wrote it",
            path.display()
        ))),
    }
}

/// Whether two lists of globs are the same filter: the order of the flags
/// and repeats do not matter.
fn same_globs(a: &[String], b: &[String]) -> bool {
    use std::collections::BTreeSet;
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

fn read_json_opt<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Io(format!("{} is damaged: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("cannot read", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{DoneAfter, ListPosition, Totals};

    fn info(url: &str) -> RunInfo {
        RunInfo {
            version: "t".into(),
            url: url.into(),
            out_dir: "/out".into(),
            sink: "dir".into(),
            layout: "flat".into(),
            shards: 2,
            created_at: "now".into(),
            header_names: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }

    #[test]
    fn a_second_open_is_refused_with_the_holders_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let (_held, _) =
            StateDir::open(&state, tmp.path(), &info("http://a"), false, false).unwrap();
        match StateDir::open(&state, tmp.path(), &info("http://a"), false, false) {
            Err(StateError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn resume_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        assert!(matches!(
            StateDir::open(&state, tmp.path(), &info("http://a"), true, false).map(|_| ()),
            Err(StateError::NothingToResume(_))
        ));
        let (mut s, start) =
            StateDir::open(&state, tmp.path(), &info("http://a"), false, false).unwrap();
        assert!(matches!(start, Start::Fresh));
        s.record_failures(&[Failure::new("x", "r", Some(404))])
            .unwrap();
        let snapshot = Snapshot {
            position: ListPosition::Marker("m".into()),
            totals: Totals {
                files_ok: 5,
                ..Totals::default()
            },
            done_after: DoneAfter::default(),
        };
        s.write_checkpoint(snapshot, false).unwrap();
        // A failure recorded after the checkpoint belongs to a name the
        // checkpoint does not call done, which will be fetched and recorded
        // again, so a resume drops it.
        s.record_failures(&[Failure::new("y", "r", None)]).unwrap();
        s.failed.flush().unwrap();
        drop(s);

        assert!(matches!(
            StateDir::open(&state, tmp.path(), &info("http://a"), false, false).map(|_| ()),
            Err(StateError::Unfinished { done: 5, .. })
        ));
        assert!(matches!(
            StateDir::open(&state, tmp.path(), &info("http://b"), true, false).map(|_| ()),
            Err(StateError::Mismatch(_))
        ));
        let filtered = RunInfo {
            exclude: vec!["*.tmp".into()],
            ..info("http://a")
        };
        match StateDir::open(&state, tmp.path(), &filtered, true, false).map(|_| ()) {
            Err(StateError::Mismatch(why)) => assert!(
                why.contains(
                    "with no --include or --exclude, and this one has --exclude \"*.tmp\""
                ),
                "{why}"
            ),
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert!(same_globs(
            &["a".into(), "b".into(), "a".into()],
            &["b".into(), "a".into()]
        ));
        assert!(!same_globs(&["a".into()], &["a".into(), "b".into()]));
        let (s, start) =
            StateDir::open(&state, tmp.path(), &info("http://a"), true, false).unwrap();
        match start {
            Start::Resume(cp) => assert_eq!(cp.position, ListPosition::Marker("m".into())),
            _ => panic!("expected resume"),
        }
        let failed = std::fs::read_to_string(s.failed_path()).unwrap();
        assert_eq!(failed.lines().count(), 1);
        assert!(failed.contains("\"x\""));
    }

    /// `--refresh` starts only from a complete run; an unfinished one (a
    /// first run or a refresh) must be resumed, and the resume of a refresh
    /// is a refresh, with or without `--refresh`; each refresh checkpoint
    /// says so; a refresh starts `failed.jsonl` anew.
    #[test]
    fn refresh_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let open = |resume, refresh| {
            StateDir::open(&state, tmp.path(), &info("http://a"), resume, refresh)
        };
        assert!(matches!(
            open(false, true).map(|_| ()),
            Err(StateError::NothingToRefresh(_))
        ));
        let (mut s, start) = open(false, false).unwrap();
        assert!(!start.is_refresh());
        let snapshot = |files_ok| Snapshot {
            position: ListPosition::Marker("m".into()),
            totals: Totals {
                files_ok,
                ..Totals::default()
            },
            done_after: DoneAfter::default(),
        };
        s.write_checkpoint(snapshot(5), false).unwrap();
        drop(s);
        match open(false, true).map(|_| ()) {
            Err(e @ StateError::RefreshUnfinished { refresh: false, .. }) => {
                assert!(e.to_string().contains("--resume"), "{e}")
            }
            other => panic!("expected RefreshUnfinished, got {other:?}"),
        }
        let (mut s, start) = open(true, true).unwrap();
        assert!(matches!(start, Start::Resume(_)) && !start.is_refresh());
        s.record_failures(&[Failure::new("x", "r", Some(404))])
            .unwrap();
        s.write_checkpoint(snapshot(9), true).unwrap();
        drop(s);
        // Complete: a plain run has nothing to do, a refresh starts.
        assert!(matches!(
            open(false, false).map(|(_, st)| st),
            Ok(Start::AlreadyComplete(_))
        ));
        let (s, start) = open(false, true).unwrap();
        assert!(matches!(start, Start::Refresh(_)) && start.is_refresh());
        assert_eq!(std::fs::read_to_string(s.failed_path()).unwrap(), "");
        // Stopped before its first checkpoint, it is still a refresh.
        drop(s);
        match open(false, true).map(|_| ()) {
            Err(e @ StateError::RefreshUnfinished { refresh: true, .. }) => {
                assert!(e.to_string().contains("--resume"), "{e}")
            }
            other => panic!("expected RefreshUnfinished, got {other:?}"),
        }
        let (_s, start) = open(true, false).unwrap();
        assert!(matches!(start, Start::Resume(_)) && start.is_refresh());
    }

    /// A checkpoint with fingerprints reads back as written; one of version
    /// 1, which has none, is read without its pages after the position (so
    /// a resume fetches them again instead of skipping them blind); one of
    /// a newer version is refused.
    #[test]
    fn checkpoint_versions() {
        use crate::scheduler::{CompleteRun, PageFingerprint, PartialPage};
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let (mut s, _) =
            StateDir::open(&state, tmp.path(), &info("http://a"), false, false).unwrap();
        let done_after = DoneAfter {
            complete: vec![CompleteRun {
                first: 1,
                fingerprints: vec![PageFingerprint(1), PageFingerprint(u64::MAX)],
            }],
            partial: vec![PartialPage {
                offset: 0,
                len: 3,
                fingerprint: PageFingerprint(7),
                done: vec![5],
            }],
        };
        let snapshot = Snapshot {
            position: ListPosition::Marker("m".into()),
            totals: Totals::default(),
            done_after: done_after.clone(),
        };
        s.write_checkpoint(snapshot, false).unwrap();
        drop(s);
        let path = state.join("checkpoint.json");
        let cp = read_checkpoint(&path).unwrap().unwrap();
        assert_eq!(cp.schema_version, CHECKPOINT_VERSION);
        assert_eq!(cp.done_after, done_after);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"ffffffffffffffff\""), "{text}");

        std::fs::write(
            &path,
            r#"{"schema_version":1,"position":{"Marker":"m"},
                "totals":{"files_ok":5,"files_failed":0,"bytes":5,"names_listed":0,"pages_done":0},
                "done_after":{"complete":[[1,3]],"partial":[{"offset":0,"len":3,"done":[5]}]},
                "failed_len":0,"complete":false,"updated_at":"t"}"#,
        )
        .unwrap();
        let cp = read_checkpoint(&path).unwrap().unwrap();
        assert_eq!(cp.position, ListPosition::Marker("m".into()));
        assert_eq!(cp.totals.files_ok, 5);
        assert_eq!(cp.done_after, DoneAfter::default());

        std::fs::write(&path, r#"{"schema_version":3}"#).unwrap();
        match read_checkpoint(&path) {
            Err(StateError::Mismatch(why)) => {
                assert!(why.contains("checkpoint version 3, newer"), "{why}")
            }
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn the_reserve_is_allocated_and_a_complete_run_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let (mut s, _) =
            StateDir::open(&state, tmp.path(), &info("http://a"), false, false).unwrap();
        let reserve = state.join("reserve");
        let meta = std::fs::metadata(&reserve).unwrap();
        assert_eq!(meta.len(), RESERVE_BYTES);
        // Allocated, not sparse: deleting it frees the space.
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 >= RESERVE_BYTES,
            "{} blocks",
            meta.blocks()
        );
        let snapshot = Snapshot {
            position: ListPosition::Done,
            totals: Totals::default(),
            done_after: DoneAfter::default(),
        };
        s.write_last_checkpoint(snapshot.clone(), false).unwrap();
        assert!(reserve.exists(), "a stopped run keeps its reserve");
        s.write_last_checkpoint(snapshot, true).unwrap();
        assert!(!reserve.exists(), "a complete run needs no reserve");
    }
}
