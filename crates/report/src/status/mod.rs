//! `bulkget status`: read a state directory's stats files and show them.
//!
//! * [`load`] (`load.rs`) gathers `coordinator.json`, `shards/shard-*.json`
//!   and `checkpoint.json` into a [`StatusReport`] with [`Totals`]. Reading
//!   is tolerant by design: the files change under the reader every second,
//!   a shard file may vanish between the directory listing and the open, and
//!   a file that does not parse becomes a warning in the report rather than
//!   a failure of the command, so that one bad file never hides the rest of
//!   a run.
//! * [`render_table`] (`render.rs`) turns a report into the human table.
//! * [`run_status`] (`watch.rs`) is the whole subcommand: once, `--json`,
//!   `--watch`.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::{Add, AddAssign};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use bulkget_stats::schema::{CoordinatorStats, ShardStats, COORDINATOR_FILE, SHARDS_DIR};

mod load;
mod render;
#[cfg(test)]
mod tests;
mod watch;

pub use load::{load, load_at, resolve_state_dir, shard_is_stale};
pub use render::render_table;
pub use watch::run_status;

/// A shard or coordinator file older than this, while the run is not over,
/// is flagged STALE: its writer updates it every second, so five missed
/// updates mean a hung or killed process rather than a slow disk.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// The exit code when no run is found in the directory.
pub const EXIT_NO_RUN: i32 = 1;
/// The exit code when the directory cannot be read or the report cannot be
/// written.
pub const EXIT_ERROR: i32 = 2;

/// `bulkget status [STATE_DIR] [--json] [--watch] [--interval-ms MS]`.
///
/// Usable directly as a clap subcommand's arguments (`#[command(flatten)]`
/// or `Status(StatusArgs)`).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct StatusArgs {
    /// The run's state directory. An output directory is accepted too (its
    /// `.bulkget` is used). Default: `./.bulkget`, or `.` if it holds the
    /// stats files itself.
    #[arg(value_name = "STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print the report as one JSON object; with --watch, one compact object
    /// per line at each interval.
    #[arg(long)]
    pub json: bool,
    /// Redraw at each interval until the run finishes, fails or is
    /// interrupted (or Ctrl-C).
    #[arg(long)]
    pub watch: bool,
    /// Time between redraws with --watch, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(50..)
    )]
    pub interval_ms: u64,
    /// Whether standard output is a terminal (redraw in place with ANSI
    /// codes). `None` detects it; tests set it. Not a command-line flag.
    #[arg(skip)]
    pub tty: Option<bool>,
}

impl Default for StatusArgs {
    fn default() -> Self {
        StatusArgs {
            state_dir: None,
            json: false,
            watch: false,
            interval_ms: 1000,
            tty: None,
        }
    }
}

/// Why `bulkget status` could not show a run.
#[derive(Debug)]
pub enum StatusError {
    /// The directory does not exist or holds neither `coordinator.json` nor
    /// any `shards/shard-*.json`. Exit code [`EXIT_NO_RUN`].
    NoRun { dir: PathBuf },
    /// The directory (not one file in it) could not be read. Exit code
    /// [`EXIT_ERROR`].
    Io { path: PathBuf, source: io::Error },
    /// The report could not be written to the output. Exit code
    /// [`EXIT_ERROR`].
    Output(io::Error),
}

impl StatusError {
    /// The process exit code this error maps to.
    pub fn exit_code(&self) -> i32 {
        match self {
            StatusError::NoRun { .. } => EXIT_NO_RUN,
            StatusError::Io { .. } | StatusError::Output(_) => EXIT_ERROR,
        }
    }
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusError::NoRun { dir } => {
                let d = dir.display();
                write!(
                    f,
                    "no bulkget run found in {d} (expected {d}/{COORDINATOR_FILE} or \
                     {d}/{SHARDS_DIR}/); pass the run's state directory, by default OUT/.bulkget"
                )
            }
            StatusError::Io { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            StatusError::Output(e) => write!(f, "cannot write the status: {e}"),
        }
    }
}

impl std::error::Error for StatusError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StatusError::NoRun { .. } => None,
            StatusError::Io { source, .. } => Some(source),
            StatusError::Output(e) => Some(e),
        }
    }
}

/// Sums over the shard files, as shown in the TOTAL row.
///
/// Shard counters restart from zero when a worker restarts, so these sums
/// cover the current worker processes only; the coordinator's counters (which
/// count acknowledgements) are the run's real totals.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct Totals {
    /// Shard files summed.
    pub shards: u64,
    pub files_ok: u64,
    pub files_failed: u64,
    pub bytes: u64,
    pub retries: u64,
    pub in_flight: u64,
    pub open_connections: u64,
    pub connections_opened: u64,
    pub batches_done: u64,
    /// Sum of the shards' `generation`: restarts behind the current workers.
    pub restarts: u64,
    pub files_per_sec: f64,
    pub http_status: BTreeMap<String, u64>,
    /// Percentiles cannot be added up; the worst shard's are the useful
    /// summary (a single slow shard holds back the end of the run).
    pub worst_p50_ms: f64,
    pub worst_p99_ms: f64,
    pub worst_max_ms: f64,
}

impl AddAssign<&ShardStats> for Totals {
    fn add_assign(&mut self, s: &ShardStats) {
        self.shards += 1;
        self.files_ok += s.files_ok;
        self.files_failed += s.files_failed;
        self.bytes += s.bytes;
        self.retries += s.retries;
        self.in_flight += s.in_flight;
        self.open_connections += s.open_connections;
        self.connections_opened += s.connections_opened;
        self.batches_done += s.batches_done;
        self.restarts += u64::from(s.generation);
        self.files_per_sec += s.files_per_sec;
        for (code, n) in &s.http_status {
            *self.http_status.entry(code.clone()).or_insert(0) += n;
        }
        self.worst_p50_ms = self.worst_p50_ms.max(s.latency_ms.p50);
        self.worst_p99_ms = self.worst_p99_ms.max(s.latency_ms.p99);
        self.worst_max_ms = self.worst_max_ms.max(s.latency_ms.max);
    }
}

impl AddAssign for Totals {
    fn add_assign(&mut self, o: Totals) {
        self.shards += o.shards;
        self.files_ok += o.files_ok;
        self.files_failed += o.files_failed;
        self.bytes += o.bytes;
        self.retries += o.retries;
        self.in_flight += o.in_flight;
        self.open_connections += o.open_connections;
        self.connections_opened += o.connections_opened;
        self.batches_done += o.batches_done;
        self.restarts += o.restarts;
        self.files_per_sec += o.files_per_sec;
        for (code, n) in o.http_status {
            *self.http_status.entry(code).or_insert(0) += n;
        }
        self.worst_p50_ms = self.worst_p50_ms.max(o.worst_p50_ms);
        self.worst_p99_ms = self.worst_p99_ms.max(o.worst_p99_ms);
        self.worst_max_ms = self.worst_max_ms.max(o.worst_max_ms);
    }
}

impl Add for Totals {
    type Output = Totals;
    fn add(mut self, o: Totals) -> Totals {
        self += o;
        self
    }
}

impl<'a> FromIterator<&'a ShardStats> for Totals {
    fn from_iter<I: IntoIterator<Item = &'a ShardStats>>(iter: I) -> Self {
        let mut t = Totals::default();
        for s in iter {
            t += s;
        }
        t
    }
}

/// Everything `bulkget status` knows about a run; `--json` prints it as is.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct StatusReport {
    /// The schema version of this report, the same as the files'.
    pub schema_version: u32,
    /// The directory read (lossy UTF-8).
    pub state_dir: String,
    /// When the files were read, RFC 3339 UTC with milliseconds.
    pub generated_at: String,
    /// `coordinator.json`; `None` if absent or unreadable (see `warnings`).
    pub coordinator: Option<CoordinatorStats>,
    /// Every readable `shards/shard-*.json`, in shard order.
    pub shards: Vec<ShardStats>,
    /// `checkpoint.json` as written (its types are
    /// [`bulkget_stats::checkpoint`], documented in `docs/STATS.md`); `None`
    /// if absent or unreadable.
    pub checkpoint: Option<serde_json::Value>,
    /// When `checkpoint.json` was last replaced (its modification time).
    pub checkpoint_saved_at: Option<String>,
    /// Sums over `shards`.
    pub totals: Totals,
    /// Shards whose file is older than [`STALE_AFTER`] although they should
    /// be writing it (see [`shard_is_stale`]), as of `generated_at`.
    pub stale_shards: Vec<u32>,
    /// Whether `coordinator.json` is older than [`STALE_AFTER`] while its
    /// state is not final: the coordinator is hung or was killed.
    pub coordinator_stale: bool,
    /// Files that could not be read or parsed, and files from a newer schema.
    pub warnings: Vec<String>,
}
