//! `bulkget status`: read a state directory's stats files and show them.
//!
//! [`load`] gathers `coordinator.json`, `shards/shard-*.json` and
//! `checkpoint.json` into a [`StatusReport`] with [`Totals`];
//! [`render_table`] turns a report into the human table; [`run_status`] is
//! the whole subcommand (`--json`, `--watch`). Reading is tolerant by design:
//! the files change under the reader every second, a shard file may vanish
//! between the directory listing and the open, and a file that does not parse
//! becomes a warning in the report rather than a failure of the command, so
//! that one bad file never hides the rest of a run.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::fs;
use std::io::{self, IsTerminal, Write};
use std::ops::{Add, AddAssign};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::atomic::read_json;
use crate::schema::{
    checkpoint_path, coordinator_path, shards_dir, summary_state, CheckpointFile, CoordinatorStats,
    ResumePosition, ShardState, ShardStats, ShardSummary, COORDINATOR_FILE, SCHEMA_VERSION,
    SHARDS_DIR,
};
use crate::time::{age, format_rfc3339};

/// A shard or coordinator file older than this, while the run is not over,
/// is flagged STALE: its writer updates it every second, so five missed
/// updates mean a hung or killed process rather than a slow disk.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// The exit code when no run is found in the directory.
pub const EXIT_NO_RUN: i32 = 1;
/// The exit code when the directory cannot be read or the report cannot be
/// written.
pub const EXIT_ERROR: i32 = 2;

/// The widest line the table aims for, so it reads at a glance in an
/// ordinary terminal.
const WIDTH: usize = 100;

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
    /// `checkpoint.json` as written (the coordinator's schema, documented in
    /// `docs/STATS.md` and read by [`CheckpointFile`]); `None` if absent or
    /// unreadable.
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

fn looks_like_state_dir(dir: &Path) -> bool {
    dir.join(COORDINATOR_FILE).is_file() || dir.join(SHARDS_DIR).is_dir()
}

/// The directory `bulkget status` reads.
///
/// * `Some(dir)`: `dir`, unless it holds no stats files and `dir/.bulkget`
///   does (the user named the output directory): then `dir/.bulkget`.
/// * `None`: `./.bulkget` if it holds stats files, else `.` if it does, else
///   `./.bulkget` if it exists, else `.` (and the error names it).
pub fn resolve_state_dir(arg: Option<&Path>) -> PathBuf {
    match arg {
        Some(dir) => {
            let inner = dir.join(".bulkget");
            if !looks_like_state_dir(dir) && looks_like_state_dir(&inner) {
                inner
            } else {
                dir.to_path_buf()
            }
        }
        None => {
            let default = PathBuf::from(".bulkget");
            let here = PathBuf::from(".");
            if looks_like_state_dir(&default) {
                default
            } else if looks_like_state_dir(&here) {
                here
            } else if default.is_dir() {
                default
            } else {
                here
            }
        }
    }
}

/// Whether a shard's file is stale: older than [`STALE_AFTER`] at `now`
/// although the shard should be writing it. A shard is not expected to write
/// when the run is over, when its file says it exited, or when the
/// coordinator says no worker runs for it (backoff, parked, stopped). A file
/// whose `updated_at` does not parse counts as stale.
pub fn shard_is_stale(
    shard: &ShardStats,
    summary: Option<&ShardSummary>,
    coordinator: Option<&CoordinatorStats>,
    now: SystemTime,
) -> bool {
    if coordinator.is_some_and(|c| c.state.is_final()) || shard.state == ShardState::Exited {
        return false;
    }
    if summary.is_some_and(|s| s.state != summary_state::RUNNING) {
        return false;
    }
    age(&shard.updated_at, now).is_none_or(|a| a > STALE_AFTER)
}

fn coordinator_is_stale(c: &CoordinatorStats, now: SystemTime) -> bool {
    !c.state.is_final() && age(&c.updated_at, now).is_none_or(|a| a > STALE_AFTER)
}

/// Reads the run in `state_dir` as of now. See [`load_at`].
pub fn load(state_dir: &Path) -> Result<StatusReport, StatusError> {
    load_at(state_dir, SystemTime::now())
}

/// Reads the run in `state_dir`, judging staleness as of `now`.
///
/// Fails with [`StatusError::NoRun`] if the directory does not exist or has
/// neither `coordinator.json` nor a `shards/shard-*.json`, and with
/// [`StatusError::Io`] if a directory cannot be listed. A single file that
/// cannot be read or parsed becomes a warning; a shard file removed between
/// the listing and the open is skipped silently.
pub fn load_at(state_dir: &Path, now: SystemTime) -> Result<StatusReport, StatusError> {
    let io_err = |path: &Path, source| StatusError::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::metadata(state_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(StatusError::NoRun {
                dir: state_dir.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StatusError::NoRun {
                dir: state_dir.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err(state_dir, e)),
    }

    let mut warnings = Vec::new();
    let mut found_any = false;

    let coordinator_file = coordinator_path(state_dir);
    let coordinator: Option<CoordinatorStats> = match read_json(&coordinator_file) {
        Ok(c) => {
            found_any |= c.is_some();
            c
        }
        Err(e) => {
            found_any = true;
            warnings.push(describe(&coordinator_file, &e));
            None
        }
    };

    let mut shards: Vec<(ShardStats, String)> = Vec::new();
    let dir = shards_dir(state_dir);
    match fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|e| io_err(&dir, e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                // `shard-03.json` only: not the `shard-03.json.tmp.PID` a
                // writer is filling or a killed writer left behind.
                if !(name.starts_with("shard-") && name.ends_with(".json")) {
                    continue;
                }
                let path = entry.path();
                found_any = true;
                match read_json::<ShardStats>(&path) {
                    Ok(Some(s)) => shards.push((s, name.to_string())),
                    Ok(None) => {} // removed since the listing
                    Err(e) => warnings.push(describe(&path, &e)),
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&dir, e)),
    }
    if !found_any {
        return Err(StatusError::NoRun {
            dir: state_dir.to_path_buf(),
        });
    }
    shards.sort_by(|a, b| (a.0.shard, &a.1).cmp(&(b.0.shard, &b.1)));
    let shards: Vec<ShardStats> = shards.into_iter().map(|(s, _)| s).collect();

    let checkpoint_file = checkpoint_path(state_dir);
    let checkpoint: Option<serde_json::Value> = read_json(&checkpoint_file).unwrap_or_else(|e| {
        warnings.push(describe(&checkpoint_file, &e));
        None
    });
    let checkpoint_saved_at = checkpoint
        .as_ref()
        .and_then(|_| fs::metadata(&checkpoint_file).ok())
        .and_then(|m| m.modified().ok())
        .map(format_rfc3339);

    if let Some(c) = &coordinator {
        if c.schema_version > SCHEMA_VERSION {
            warnings.push(newer_schema(&coordinator_file, c.schema_version));
        }
    }
    for s in &shards {
        if s.schema_version > SCHEMA_VERSION {
            warnings.push(newer_schema(
                &crate::schema::shard_path(state_dir, s.shard),
                s.schema_version,
            ));
        }
    }

    let totals: Totals = shards.iter().collect();
    let stale_shards = shards
        .iter()
        .filter(|s| {
            shard_is_stale(
                s,
                summary_for(&coordinator, s.shard),
                coordinator.as_ref(),
                now,
            )
        })
        .map(|s| s.shard)
        .collect();
    let coordinator_stale = coordinator
        .as_ref()
        .is_some_and(|c| coordinator_is_stale(c, now));

    Ok(StatusReport {
        schema_version: SCHEMA_VERSION,
        state_dir: state_dir.to_string_lossy().into_owned(),
        generated_at: format_rfc3339(now),
        coordinator,
        shards,
        checkpoint,
        checkpoint_saved_at,
        totals,
        stale_shards,
        coordinator_stale,
        warnings,
    })
}

fn describe(path: &Path, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::InvalidData {
        // The message already names the file.
        format!("cannot parse {e}")
    } else {
        format!("cannot read {}: {e}", path.display())
    }
}

fn newer_schema(path: &Path, version: u32) -> String {
    format!(
        "{} has schema version {version}, newer than this bulkget's {SCHEMA_VERSION}: \
         fields may be missing or mean something else",
        path.display()
    )
}

fn summary_for(coordinator: &Option<CoordinatorStats>, shard: u32) -> Option<&ShardSummary> {
    coordinator
        .as_ref()
        .and_then(|c| c.shards.iter().find(|s| s.shard == shard))
}

// ---------------------------------------------------------------------------
// Rendering

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count for a table cell, at most 7 characters: exact with separators
/// below a million, then with an M or G suffix. The header has the exact
/// numbers; the table is for seeing at a glance which shard lags.
fn compact(n: u64) -> String {
    if n < 1_000_000 {
        grouped(n)
    } else if n < 1_000_000_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else {
        format!("{:.3}G", n as f64 / 1e9)
    }
}

/// Bytes in decimal units (the design counts 10^9 × 100 B as 100 GB).
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    if b < 1000 {
        return format!("{b} B");
    }
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 999.95 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A duration in seconds, short: `4.2s`, `42s`, `7m05s`, `3h04m`, `2d05h`.
fn human_secs(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".to_string();
    }
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// An age in whole seconds (a redraw a second should not flicker tenths).
fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        human_secs(s as f64)
    }
}

/// `42s ago`, or words for a timestamp that does not parse.
fn written_ago(timestamp: &str, now: SystemTime) -> String {
    age(timestamp, now).map_or("at an unknown time".to_string(), |a| {
        format!("{} ago", human_age(a))
    })
}

/// Milliseconds with about two significant digits; `-` for no data.
fn human_ms(ms: f64) -> String {
    if ms.is_nan() || ms <= 0.0 {
        "-".to_string()
    } else if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// At most `max` characters of `s`, with `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", grouped(n), if n == 1 { one } else { many })
}

#[derive(Clone, Copy, PartialEq)]
enum Align {
    Left,
    Right,
}

const COLUMNS: [(&str, Align); 14] = [
    ("shard", Align::Right),
    ("pid", Align::Right),
    ("gen", Align::Right),
    ("state", Align::Left),
    ("ok", Align::Right),
    ("failed", Align::Right),
    ("bytes", Align::Right),
    ("retries", Align::Right),
    ("files/s", Align::Right),
    ("in-fl", Align::Right),
    ("conns", Align::Right),
    ("p50ms", Align::Right),
    ("p99ms", Align::Right),
    ("age", Align::Left),
];

fn table(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = COLUMNS.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = COLUMNS.iter().map(|(h, _)| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push(' ');
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            match COLUMNS[i].1 {
                Align::Right => {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
                Align::Left => {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The row's state: what the coordinator knows beats what a dead worker's
/// last file says, and a stale file is flagged instead of believed.
fn row_state(s: &ShardStats, summary: Option<&ShardSummary>, stale: bool) -> String {
    if stale {
        return "STALE".to_string();
    }
    match summary {
        Some(sum) if sum.state == summary_state::BACKOFF || sum.state == summary_state::PARKED => {
            sum.state.clone()
        }
        _ => s.state.as_str().to_string(),
    }
}

fn shard_row(
    s: &ShardStats,
    summary: Option<&ShardSummary>,
    stale: bool,
    now: SystemTime,
) -> Vec<String> {
    vec![
        format!("{:02}", s.shard),
        s.pid.to_string(),
        s.generation.to_string(),
        row_state(s, summary, stale),
        compact(s.files_ok),
        compact(s.files_failed),
        human_bytes(s.bytes),
        compact(s.retries),
        compact(s.files_per_sec.round() as u64),
        compact(s.in_flight),
        format!("{}/{}", s.open_connections, s.connections_opened),
        human_ms(s.latency_ms.p50),
        human_ms(s.latency_ms.p99),
        age(&s.updated_at, now).map_or("?".to_string(), human_age),
    ]
}

/// A shard the coordinator knows but that has written no file yet.
fn summary_row(sum: &ShardSummary) -> Vec<String> {
    let mut row = vec![
        format!("{:02}", sum.shard),
        sum.pid.map_or("-".to_string(), |p| p.to_string()),
        sum.restarts.to_string(),
        sum.state.clone(),
    ];
    row.resize(COLUMNS.len(), "-".to_string());
    row
}

fn totals_row(t: &Totals) -> Vec<String> {
    vec![
        "TOTAL".to_string(),
        String::new(),
        t.restarts.to_string(),
        String::new(),
        compact(t.files_ok),
        compact(t.files_failed),
        human_bytes(t.bytes),
        compact(t.retries),
        compact(t.files_per_sec.round() as u64),
        compact(t.in_flight),
        format!("{}/{}", t.open_connections, t.connections_opened),
        human_ms(t.worst_p50_ms),
        human_ms(t.worst_p99_ms),
        String::new(),
    ]
}

/// One header line: a fixed-width label, then the text, cut to [`WIDTH`].
fn header_line(out: &mut String, label: &str, text: &str) {
    let line = format!("{label:<11}{text}");
    out.push_str(&truncate(&line, WIDTH));
    out.push('\n');
}

/// A marker for display: quoted, cut short, or a word when there is none.
fn show_marker(m: Option<&str>) -> String {
    match m {
        Some(m) => format!("\"{}\"", truncate(m, 32)),
        None => "none".to_string(),
    }
}

fn render_header(out: &mut String, report: &StatusReport, now: SystemTime) {
    let Some(c) = &report.coordinator else {
        header_line(
            out,
            "run",
            &format!(
                "state unknown: no readable {COORDINATOR_FILE} in {}",
                report.state_dir
            ),
        );
        let t = &report.totals;
        header_line(
            out,
            "files",
            &format!(
                "{} ok + {} failed (sum of the shard files)",
                grouped(t.files_ok),
                grouped(t.files_failed)
            ),
        );
        return;
    };

    // Run: state, pid, uptime, URL last so that a long one is what gets cut.
    let mut state = c.state.as_str().to_string();
    if let Some(code) = c.exit_code {
        let _ = write!(state, " (exit {code})");
    }
    if report.coordinator_stale {
        state.push_str(" STALE");
    }
    let up = match (
        crate::time::parse_rfc3339(&c.started_at),
        crate::time::parse_rfc3339(&c.updated_at),
    ) {
        // A finished run's duration is up to its last update, not to now.
        (Some(s), Some(u)) if c.state.is_final() => u.duration_since(s).ok(),
        (Some(s), _) => Some(now.duration_since(s).unwrap_or_default()),
        _ => None,
    };
    let up = up.map_or("?".to_string(), |d| human_secs(d.as_secs_f64()));
    let updated = age(&c.updated_at, now).map_or("?".to_string(), human_age);
    header_line(
        out,
        "run",
        &format!(
            "{state}, pid {}, {} {up}, updated {updated} ago, {}",
            c.pid,
            if c.state.is_final() { "ran" } else { "up" },
            c.url
        ),
    );

    let mut listing = if c.listing_done {
        "done".to_string()
    } else {
        format!(
            "in progress, marker {}",
            show_marker(c.current_marker.as_deref())
        )
    };
    if c.pages_changed > 0 {
        let _ = write!(
            listing,
            "; {} listed differently on resume",
            plural(c.pages_changed, "page", "pages")
        );
    }
    header_line(
        out,
        "listing",
        &format!(
            "{}, {}, {listing}",
            plural(c.pages_listed, "page", "pages"),
            plural(c.names_listed, "name", "names"),
        ),
    );

    let done = c.files_ok + c.files_failed;
    let percent = if c.names_listed > 0 {
        format!(" ({:.1} %)", done as f64 * 100.0 / c.names_listed as f64)
    } else {
        String::new()
    };
    header_line(
        out,
        "files",
        &format!(
            "{} ok + {} failed of {}{percent}, {}, {}",
            grouped(c.files_ok),
            grouped(c.files_failed),
            grouped(c.names_listed),
            human_bytes(c.bytes),
            plural(c.retries, "retry", "retries"),
        ),
    );

    // The method says how the ETA was made, or why there is none.
    let eta = match (c.eta_seconds, c.eta_method.as_str()) {
        (Some(s), "") => format!("eta {}", human_secs(s.max(0.0))),
        (Some(s), method) => format!("eta {} ({method})", human_secs(s.max(0.0))),
        (None, "") => "eta unknown".to_string(),
        (None, method) => format!(
            "no eta: {}",
            method.strip_prefix("none: ").unwrap_or(method)
        ),
    };
    header_line(
        out,
        "rate",
        &format!("{} files/s, {eta}", grouped(c.files_per_sec.round() as u64)),
    );

    // Shards as the coordinator sees them.
    let mut by_state: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for s in &c.shards {
        by_state.entry(s.state.as_str()).or_default().push(s.shard);
    }
    let mut parts: Vec<String> = Vec::new();
    for (state, ids) in &by_state {
        if *state == summary_state::PARKED || *state == summary_state::BACKOFF {
            let list: Vec<String> = ids.iter().map(|i| format!("{i:02}")).collect();
            parts.push(format!("{} {state} ({})", ids.len(), list.join(" ")));
        } else {
            parts.push(format!("{} {state}", ids.len()));
        }
    }
    let restarts: u64 = c.shards.iter().map(|s| u64::from(s.restarts)).sum();
    let in_flight: u64 = c.shards.iter().map(|s| s.batches_in_flight).sum();
    header_line(
        out,
        "shards",
        &format!(
            "{}: {}; {}",
            c.shards.len(),
            if parts.is_empty() {
                "none reported".to_string()
            } else {
                parts.join(", ")
            },
            plural(restarts, "restart", "restarts"),
        ),
    );
    header_line(
        out,
        "batches",
        &format!(
            "{} queued, {} in flight, {} requeued after a worker died",
            grouped(c.batches_queued),
            grouped(in_flight),
            grouped(c.batches_requeued),
        ),
    );

    // Which side waits tells where the bottleneck is.
    let idle_avg = if c.shards.is_empty() {
        0.0
    } else {
        c.shards.iter().map(|s| s.idle_ms).sum::<u64>() as f64 / c.shards.len() as f64
    };
    header_line(
        out,
        "waits",
        &format!(
            "lister {} on full windows; shards idle {} on average",
            human_secs(c.lister_wait_ms as f64 / 1000.0),
            human_secs(idle_avg / 1000.0),
        ),
    );
}

fn render_checkpoint(out: &mut String, report: &StatusReport, now: SystemTime) {
    let Some(raw) = &report.checkpoint else {
        return;
    };
    let saved = match report
        .checkpoint_saved_at
        .as_deref()
        .and_then(|t| age(t, now))
    {
        Some(a) => format!("saved {} ago", human_age(a)),
        None => "present".to_string(),
    };
    let Ok(cp) = serde_json::from_value::<CheckpointFile>(raw.clone()) else {
        header_line(
            out,
            "checkpoint",
            &format!("{saved}, but its content is not understood (see --json)"),
        );
        return;
    };
    let position = match (&cp.position, cp.complete) {
        (_, true) => "the run is complete, nothing to resume".to_string(),
        (ResumePosition::Start, _) => "a resume lists from the first page".to_string(),
        (ResumePosition::Marker(m), _) => {
            format!("a resume lists from marker {}", show_marker(Some(m)))
        }
        (ResumePosition::Done, _) => {
            "the listing is done; a resume only fetches what is unacknowledged".to_string()
        }
        (ResumePosition::Unknown, _) => format!(
            "resume position not understood (schema version {})",
            cp.schema_version
        ),
    };
    header_line(out, "checkpoint", &format!("{saved}; {position}"));
    let t = &cp.totals;
    let mut counts = format!(
        "{} ok + {} failed, {}; ",
        grouped(t.files_ok),
        grouped(t.files_failed),
        human_bytes(t.bytes),
    );
    if cp.complete {
        counts.push_str(&plural(t.pages_done, "page", "pages"));
    } else {
        let _ = write!(
            counts,
            "{} done before it",
            plural(t.pages_done, "page", "pages")
        );
        let after = cp.done_after.complete_pages();
        let partial = cp.done_after.partial.len() as u64;
        if after + partial > 0 {
            let _ = write!(counts, ", {} after", grouped(after + partial));
            if partial > 0 {
                let _ = write!(counts, " ({} partly)", grouped(partial));
            }
        }
    }
    header_line(out, "", &counts);
}

/// The human table: a header about the run, one row per shard, a TOTAL row,
/// then HTTP status counts, staleness and warnings, in at most 100 columns
/// for a 16-shard billion-file run. Ages are judged at `now`.
///
/// ```text
/// run        listing, pid 4242, up 2m05s, updated 0s ago, http://127.0.0.1:8080/
/// ...
/// shard   pid gen state        ok failed    bytes retries files/s in-fl   conns p50ms p99ms age
///    00 40000   0 running 250,000      0  25.0 MB       3   1,000    64   64/64  0.50  10.0 1s
///    02 40002   0 STALE   250,002      2  25.0 MB       3   1,000    64   64/66  2.50  12.0 42s
/// TOTAL         2           1.00M      6 100.0 MB      12   4,000   256 256/262  3.50  13.0
/// ```
///
/// `docs/STATS.md` explains every part.
pub fn render_table(report: &StatusReport, now: SystemTime) -> String {
    let mut out = String::new();
    render_header(&mut out, report, now);
    render_checkpoint(&mut out, report, now);
    out.push('\n');

    let coordinator = report.coordinator.as_ref();
    let mut rows: Vec<(u32, Vec<String>)> = Vec::new();
    let mut stale_notes: Vec<String> = Vec::new();
    for s in &report.shards {
        let summary = summary_for(&report.coordinator, s.shard);
        let stale = shard_is_stale(s, summary, coordinator, now);
        if stale {
            stale_notes.push(format!(
                "shard {:02}, pid {}, said {}, last wrote {}",
                s.shard,
                s.pid,
                s.state.as_str(),
                written_ago(&s.updated_at, now)
            ));
        }
        rows.push((s.shard, shard_row(s, summary, stale, now)));
    }
    if let Some(c) = coordinator {
        for sum in &c.shards {
            if !report.shards.iter().any(|s| s.shard == sum.shard) {
                rows.push((sum.shard, summary_row(sum)));
            }
        }
    }
    // Stable: two files claiming one shard keep their load order.
    rows.sort_by_key(|(shard, _)| *shard);
    let mut cells: Vec<Vec<String>> = rows.into_iter().map(|(_, r)| r).collect();
    cells.push(totals_row(&report.totals));
    out.push_str(&table(&cells));

    if !report.totals.http_status.is_empty() {
        let parts: Vec<String> = report
            .totals
            .http_status
            .iter()
            .map(|(code, n)| format!("{code}: {}", grouped(*n)))
            .collect();
        header_line(&mut out, "http", &parts.join("   "));
    }
    if report.totals.worst_max_ms > 0.0 {
        header_line(
            &mut out,
            "latency",
            &format!(
                "slowest request {} ms; the TOTAL row's p50 and p99 are the worst shard's",
                human_ms(report.totals.worst_max_ms)
            ),
        );
    }
    if !stale_notes.is_empty() {
        header_line(
            &mut out,
            "STALE",
            &format!(
                "no update for over {}s while the run goes on (hung or killed worker?):",
                STALE_AFTER.as_secs()
            ),
        );
        for note in &stale_notes {
            header_line(&mut out, "", note);
        }
    }
    if report.coordinator_stale {
        if let Some(c) = coordinator {
            let when = written_ago(&c.updated_at, now);
            header_line(
                &mut out,
                "STALE",
                &format!(
                    "{COORDINATOR_FILE} says {} but was last written {when} (coordinator hung \
                     or killed?)",
                    c.state.as_str(),
                ),
            );
        }
    }
    for w in &report.warnings {
        // Not cut to the width: a warning names a path and a parse error,
        // and both matter whole.
        out.push_str(&format!("warning    {w}\n"));
    }
    out
}

// ---------------------------------------------------------------------------
// The subcommand

/// Runs `bulkget status`, writing to `out`. Returns the exit code: 0 once a
/// report was printed (with `--watch`, once the run reached a final state).
/// Errors carry their own exit code ([`StatusError::exit_code`]): 1 when no
/// run is found, 2 when the directory cannot be read or `out` cannot be
/// written. A closed pipe (`bulkget status | head`) ends quietly with 0.
pub fn run_status(args: &StatusArgs, out: &mut dyn Write) -> Result<i32, StatusError> {
    let tty = args.tty.unwrap_or_else(|| io::stdout().is_terminal());
    run_status_with(
        args,
        out,
        tty,
        &mut SystemTime::now,
        &mut std::thread::sleep,
    )
}

/// [`run_status`] with the clock and the sleep supplied, so that tests run
/// `--watch` without waiting on real time.
fn run_status_with(
    args: &StatusArgs,
    out: &mut dyn Write,
    tty: bool,
    clock: &mut dyn FnMut() -> SystemTime,
    sleep: &mut dyn FnMut(Duration),
) -> Result<i32, StatusError> {
    let result = if args.watch {
        watch(args, out, tty, clock, sleep)
    } else {
        let dir = resolve_state_dir(args.state_dir.as_deref());
        once(args, &dir, out, clock())
    };
    match result {
        Err(StatusError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(0),
        other => other,
    }
}

fn once(
    args: &StatusArgs,
    dir: &Path,
    out: &mut dyn Write,
    now: SystemTime,
) -> Result<i32, StatusError> {
    let report = load_at(dir, now)?;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&report).expect("a report always serialises");
        s.push('\n');
        s
    } else {
        render_table(&report, now)
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(StatusError::Output)?;
    Ok(0)
}

fn watch(
    args: &StatusArgs,
    out: &mut dyn Write,
    tty: bool,
    clock: &mut dyn FnMut() -> SystemTime,
    sleep: &mut dyn FnMut(Duration),
) -> Result<i32, StatusError> {
    let interval = Duration::from_millis(args.interval_ms);
    // In place on a terminal (unless the output is JSON lines for a
    // program); otherwise successive frames, so a log keeps the history.
    let redraw = tty && !args.json;
    let mut frames = 0u64;
    loop {
        // Resolved afresh each time: `bulkget status OUT --watch` started
        // before the run has created `OUT/.bulkget` must find it later.
        let dir = resolve_state_dir(args.state_dir.as_deref());
        let dir = dir.as_path();
        let now = clock();
        let (mut text, finished) = match load_at(dir, now) {
            Ok(report) => {
                // Over when the coordinator says so; without a coordinator
                // file (workers run by hand), when every worker has exited.
                let finished = match &report.coordinator {
                    Some(c) => c.state.is_final(),
                    None => {
                        !report.shards.is_empty()
                            && report.shards.iter().all(|s| s.state == ShardState::Exited)
                    }
                };
                let text = if args.json {
                    let mut s = serde_json::to_string(&report).expect("a report always serialises");
                    s.push('\n');
                    s
                } else {
                    let mut s = format!(
                        "bulkget status {}   every {}   Ctrl-C to stop\n\n",
                        dir.display(),
                        human_secs(interval.as_secs_f64())
                    );
                    s.push_str(&render_table(&report, now));
                    s
                };
                (text, finished)
            }
            // Watching may start before the run has written anything: wait
            // for it, as long as the directory itself is there. A program
            // reading JSON lines gets no line until there is a report.
            Err(StatusError::NoRun { .. }) if dir.is_dir() => {
                let text = if args.json {
                    String::new()
                } else {
                    format!(
                        "waiting for a bulkget run in {} (no {COORDINATOR_FILE} or \
                         {SHARDS_DIR}/ yet)   Ctrl-C to stop\n",
                        dir.display()
                    )
                };
                (text, false)
            }
            Err(e) => return Err(e),
        };
        if redraw {
            // Home, each line cleared to its end, then the rest of the screen
            // cleared: no blank flash between frames as a full clear gives.
            let mut framed = String::from(if frames == 0 {
                "\x1b[H\x1b[2J"
            } else {
                "\x1b[H"
            });
            for line in text.lines() {
                framed.push_str(line);
                framed.push_str("\x1b[K\n");
            }
            framed.push_str("\x1b[J");
            text = framed;
        } else if frames > 0 && !args.json {
            text.insert(0, '\n');
        }
        if !text.is_empty() {
            frames += 1;
        }
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(StatusError::Output)?;
        if finished {
            break;
        }
        sleep(interval);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atomic::write_json_atomic;
    use crate::schema::{shard_path, Latency, RunState};
    use crate::time::format_rfc3339;
    use clap::Parser;

    /// A fixed "now" for every test: 2023-11-14T22:13:20Z.
    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn ago(secs: u64) -> String {
        format_rfc3339(t0() - Duration::from_secs(secs))
    }

    fn shard(n: u32, files_ok: u64, updated_secs_ago: u64) -> ShardStats {
        ShardStats {
            schema_version: SCHEMA_VERSION,
            shard: n,
            pid: 40_000 + n,
            generation: n % 2,
            state: ShardState::Running,
            started_at: ago(125),
            updated_at: ago(updated_secs_ago),
            files_ok,
            files_failed: u64::from(n),
            bytes: files_ok * 100,
            retries: 3,
            pipeline_retries: 0,
            pipeline_depth: 1,
            http_status: BTreeMap::from([("200".to_string(), files_ok), ("503".to_string(), 3)]),
            in_flight: 64,
            open_connections: 64,
            connections_opened: 64 + u64::from(n),
            batches_done: files_ok / 1000,
            batches_stalled: 0,
            latency_ms: Latency {
                p50: 0.5 + f64::from(n),
                p90: 2.0,
                p99: 10.0 + f64::from(n),
                max: 120.0,
            },
            files_per_sec: 1000.0,
        }
    }

    fn coordinator(state: RunState, shards: u32) -> CoordinatorStats {
        CoordinatorStats {
            schema_version: SCHEMA_VERSION,
            pid: 4242,
            state,
            url: "http://127.0.0.1:8080/".to_string(),
            started_at: ago(125),
            updated_at: ago(0),
            pages_listed: 1_234,
            names_listed: 1_234_000,
            current_marker: Some("m-1234".to_string()),
            listing_done: false,
            batches_queued: 12,
            files_ok: 1_000_000,
            files_failed: 12,
            bytes: 100_000_000,
            retries: 1_234,
            files_per_sec: 12_345.6,
            eta_seconds: None,
            eta_method: crate::schema::eta_method::NONE_LISTING.to_string(),
            lister_wait_ms: 1_200,
            batches_requeued: 2,
            pages_changed: 0,
            peak_rss_bytes: 50_000_000,
            exit_code: None,
            shards: (0..shards)
                .map(|i| ShardSummary {
                    shard: i,
                    pid: Some(40_000 + i),
                    state: summary_state::RUNNING.to_string(),
                    batches_in_flight: 4,
                    batches_stalled: 0,
                    restarts: i % 2,
                    idle_ms: 300,
                })
                .collect(),
        }
    }

    /// `checkpoint.json` as the coordinator writes it.
    fn checkpoint(position: serde_json::Value, files_ok: u64, complete: bool) -> serde_json::Value {
        serde_json::json!({
            "schema_version": 2,
            "position": position,
            "totals": {
                "files_ok": files_ok,
                "files_failed": 12,
                "bytes": files_ok * 100,
                "names_listed": files_ok + 12,
                "pages_done": files_ok / 1000,
            },
            "failed_len": 1_234,
            "complete": complete,
            "updated_at": ago(0),
        })
    }

    /// Writes a run: a coordinator and `shards` shard files, shard 2 stale.
    fn fixture(state: RunState, shards: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(SHARDS_DIR)).unwrap();
        write_json_atomic(&coordinator_path(dir.path()), &coordinator(state, shards)).unwrap();
        for n in 0..shards {
            let updated = if n == 2 { 42 } else { 1 };
            let s = shard(n, 250_000 + u64::from(n), updated);
            write_json_atomic(&shard_path(dir.path(), n), &s).unwrap();
        }
        dir
    }

    fn args(dir: &Path) -> StatusArgs {
        StatusArgs {
            state_dir: Some(dir.to_path_buf()),
            tty: Some(false),
            ..StatusArgs::default()
        }
    }

    fn total_row(text: &str) -> Vec<String> {
        text.lines()
            .find(|l| l.starts_with("TOTAL"))
            .expect("a TOTAL row")
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn load_sums_and_flags_stale_shards() {
        let dir = fixture(RunState::Listing, 4);
        // Debris a reader must ignore: a writer's temporary file, a stranger.
        fs::write(dir.path().join("shards/shard-01.json.tmp.999"), b"{\"sha").unwrap();
        fs::write(dir.path().join("shards/notes.txt"), b"hello").unwrap();
        let r = load_at(dir.path(), t0()).unwrap();
        assert_eq!(
            r.shards.iter().map(|s| s.shard).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(r.totals.shards, 4);
        assert_eq!(r.totals.files_ok, 1_000_006);
        assert_eq!(r.totals.files_failed, 6);
        assert_eq!(r.totals.bytes, 100_000_600);
        assert_eq!(r.totals.retries, 12);
        assert_eq!(r.totals.in_flight, 256);
        assert_eq!(r.totals.connections_opened, 262);
        assert_eq!(r.totals.restarts, 2);
        assert_eq!(r.totals.files_per_sec, 4000.0);
        assert_eq!(r.totals.http_status["200"], 1_000_006);
        assert_eq!(r.totals.http_status["503"], 12);
        assert_eq!(r.totals.worst_p99_ms, 13.0);
        assert_eq!(r.stale_shards, [2]);
        assert!(!r.coordinator_stale);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.checkpoint, None);
    }

    #[test]
    fn render_shows_totals_row_and_stale_flag() {
        let dir = fixture(RunState::Listing, 4);
        let r = load_at(dir.path(), t0()).unwrap();
        let text = render_table(&r, t0());
        println!("{text}");
        assert_eq!(
            total_row(&text),
            [
                "TOTAL", "2", "1.00M", "6", "100.0", "MB", "12", "4,000", "256", "256/262", "3.50",
                "13.0"
            ]
        );
        let stale_row = text
            .lines()
            .find(|l| l.trim_start().starts_with("02 "))
            .unwrap();
        assert!(
            stale_row.contains("STALE") && stale_row.contains("42s"),
            "{stale_row}"
        );
        assert!(text.contains("STALE      no update for over 5s"));
        assert!(
            text.contains("\n           shard 02, pid 40002, said running, last wrote 42s ago\n")
        );
        let fresh_row = text
            .lines()
            .find(|l| l.trim_start().starts_with("01 "))
            .unwrap();
        assert!(fresh_row.contains("running") && !fresh_row.contains("STALE"));
        assert!(text.contains("in progress, marker \"m-1234\""));
        assert!(text
            .contains("rate       12,346 files/s, no eta: total unknown until the listing ends\n"));
        assert!(text
            .contains("1,000,000 ok + 12 failed of 1,234,000 (81.0 %), 100.0 MB, 1,234 retries\n"));
        assert!(text.contains("200: 1,000,006   503: 12"));
        for line in text.lines() {
            assert!(line.chars().count() <= WIDTH, "too wide: {line}");
        }
    }

    /// The shape of the billion-file run: 16 shards, large counters, 7-digit
    /// pids, a long URL and marker. Every line must still fit the width.
    #[test]
    fn a_billion_file_run_fits_in_100_columns() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(SHARDS_DIR)).unwrap();
        let mut c = coordinator(RunState::Draining, 16);
        c.url = format!(
            "http://files.example.internal:8080/{}",
            "very/long/".repeat(12)
        );
        c.pages_listed = 1_000_000;
        c.names_listed = 1_000_000_000;
        c.listing_done = true;
        c.current_marker = Some("x".repeat(200));
        c.files_ok = 987_654_321;
        c.files_failed = 12_345;
        c.bytes = 98_765_432_100;
        c.retries = 2_119_876;
        c.files_per_sec = 1_654_321.0;
        c.eta_seconds = Some(7.5);
        c.eta_method = crate::schema::eta_method::REMAINING_OVER_RATE.to_string();
        c.shards[4].state = summary_state::PARKED.to_string();
        c.shards[4].restarts = 5;
        write_json_atomic(&coordinator_path(dir.path()), &c).unwrap();
        for n in 0..16 {
            let k = u64::from(n);
            let mut s = shard(n, 61_728_395 - k * 37_411, if n == 9 { 17 } else { k % 2 });
            s.pid = 4_194_000 + n * 7;
            s.bytes = s.files_ok * 100;
            s.files_failed = 771 - k * 3;
            s.retries = 123_456 + k * 1_234;
            s.files_per_sec = 103_395.0 - (k * 211) as f64;
            s.connections_opened = 64 + k * 3;
            s.latency_ms.p50 = 0.412 + f64::from(n) * 0.003;
            s.latency_ms.p99 = 9.87 + f64::from(n) * 0.31;
            write_json_atomic(&shard_path(dir.path(), n), &s).unwrap();
        }
        write_json_atomic(&dir.path().join("checkpoint.json"), &{
            let mut cp = checkpoint(
                serde_json::json!({"Marker": "m-00999872"}),
                987_000_000,
                false,
            );
            cp["totals"]["files_failed"] = 12_000.into();
            cp["done_after"] = serde_json::json!({
                "complete": [
                    {"first": 1, "fingerprints": ["0123456789abcdef", "fedcba9876543210"]},
                    {"first": 4, "fingerprints": ["00000000000000aa"]},
                ],
                "partial": [
                    {"offset": 0, "len": 1000, "fingerprint": "00000000000000bb", "done": [u64::MAX, 7]},
                    {"offset": 3, "len": 1000, "fingerprint": "00000000000000cc", "done": [1]},
                ],
            });
            cp
        })
        .unwrap();
        let text = render_table(&load_at(dir.path(), t0()).unwrap(), t0());
        println!("{text}");
        for line in text.lines() {
            assert!(line.chars().count() <= WIDTH, "too wide: {line}");
        }
        assert_eq!(total_row(&text)[..2], ["TOTAL", "8"]);
        assert_eq!(total_row(&text)[3], "11,976");
        assert!(
            text.contains("checkpoint saved 0s ago; a resume lists from marker \"m-00999872\"\n")
        );
        assert!(text.contains(
            "\n           987,000,000 ok + 12,000 failed, 98.7 GB; 987,000 pages done before it, \
             5 after (2 partly)\n"
        ));
    }

    #[test]
    fn finished_run_flags_nothing_stale() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(SHARDS_DIR)).unwrap();
        let mut c = coordinator(RunState::Finished, 3);
        c.listing_done = true;
        c.current_marker = None;
        c.exit_code = Some(0);
        c.names_listed = 1_000_012;
        c.eta_seconds = None;
        c.eta_method = crate::schema::eta_method::DONE.to_string();
        c.started_at = ago(725);
        c.updated_at = ago(600); // long over
        c.pages_changed = 2;
        for s in &mut c.shards {
            s.state = summary_state::STOPPED.to_string();
            s.pid = None;
        }
        write_json_atomic(&coordinator_path(dir.path()), &c).unwrap();
        for n in 0..3 {
            let mut s = shard(n, 100, 600);
            s.state = ShardState::Exited;
            s.files_per_sec = 0.0;
            write_json_atomic(&shard_path(dir.path(), n), &s).unwrap();
        }
        // Even a shard file that never said "exited" is not stale once the
        // run is over.
        let mut s = shard(3, 100, 900);
        s.state = ShardState::Running;
        write_json_atomic(&shard_path(dir.path(), 3), &s).unwrap();
        write_json_atomic(
            &dir.path().join("checkpoint.json"),
            &checkpoint(serde_json::json!("Done"), 1_000_000, true),
        )
        .unwrap();

        let r = load_at(dir.path(), t0()).unwrap();
        assert!(r.stale_shards.is_empty());
        assert!(!r.coordinator_stale);
        assert_eq!(
            r.checkpoint.as_ref().unwrap()["totals"]["files_ok"],
            1_000_000
        );
        let text = render_table(&r, t0());
        println!("{text}");
        assert!(!text.contains("STALE"), "{text}");
        assert!(text.starts_with("run        finished (exit 0), pid 4242, ran 2m05s"));
        assert!(text.contains(
            "listing    1,234 pages, 1,000,012 names, done; 2 pages listed differently on resume\n"
        ));
        assert!(text.contains("(100.0 %)"));
        assert!(text.contains("rate       12,346 files/s, no eta: run over\n"));
        assert!(text.contains("3 stopped"));
        assert!(text.contains("checkpoint saved 0s ago; the run is complete, nothing to resume\n"));
        assert!(text.contains("\n           1,000,000 ok + 12 failed, 100.0 MB; 1,000 pages\n"));
        assert_eq!(
            total_row(&text),
            [
                "TOTAL", "2", "400", "6", "40.0", "kB", "12", "1,000", "256", "256/262", "3.50",
                "13.0"
            ]
        );
        assert_eq!(text.matches(" exited ").count(), 3);
    }

    #[test]
    fn checkpoint_positions_and_a_checkpoint_not_understood() {
        let dir = fixture(RunState::Listing, 1);
        let path = dir.path().join("checkpoint.json");
        let line = |cp: serde_json::Value| {
            write_json_atomic(&path, &cp).unwrap();
            let text = render_table(&load_at(dir.path(), t0()).unwrap(), t0());
            text.lines()
                .find(|l| l.starts_with("checkpoint"))
                .expect("a checkpoint line")
                .to_string()
        };
        assert!(line(checkpoint(serde_json::json!("Start"), 0, false))
            .ends_with("; a resume lists from the first page"));
        assert!(line(checkpoint(serde_json::json!("Done"), 0, false))
            .ends_with("; the listing is done; a resume only fetches what is unacknowledged"));
        assert!(line(checkpoint(serde_json::json!("Sideways"), 0, false))
            .ends_with("; resume position not understood (schema version 2)"));
        assert!(line(serde_json::json!({"totals": "many"}))
            .ends_with(", but its content is not understood (see --json)"));
    }

    #[test]
    fn coordinator_view_overrides_a_dead_workers_file() {
        let dir = fixture(RunState::Listing, 3);
        let mut c = coordinator(RunState::Listing, 4);
        c.shards[1].state = summary_state::PARKED.to_string();
        c.shards[1].pid = None;
        c.shards[2].state = summary_state::BACKOFF.to_string();
        c.updated_at = ago(30);
        write_json_atomic(&coordinator_path(dir.path()), &c).unwrap();
        let r = load_at(dir.path(), t0()).unwrap();
        // Shard 2's file is old, but the coordinator knows it is backing off.
        assert!(r.stale_shards.is_empty());
        assert!(r.coordinator_stale);
        let text = render_table(&r, t0());
        println!("{text}");
        assert!(text.contains("1 parked (01)") && text.contains("1 backoff (02)"));
        let row = |n: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(n))
                .unwrap()
                .to_string()
        };
        assert!(row("01 ").contains("parked"));
        assert!(row("02 ").contains("backoff"));
        // Shard 3 has written nothing yet: a row from the coordinator.
        assert!(row("03 ").contains("running"), "{}", row("03 "));
        assert!(text.contains("listing STALE"));
        assert!(
            text.contains("STALE      coordinator.json says listing but was last written 30s ago")
        );
    }

    #[test]
    fn empty_or_missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        let e = run_status(&args(dir.path()), &mut out).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "no bulkget run found in {0} (expected {0}/coordinator.json or {0}/shards/)",
                dir.path().display()
            )),
            "{msg}"
        );
        assert!(out.is_empty());
        // An empty shards/ directory is no run either.
        fs::create_dir(dir.path().join("shards")).unwrap();
        assert!(matches!(
            run_status(&args(dir.path()), &mut out),
            Err(StatusError::NoRun { .. })
        ));
        let gone = dir.path().join("nope");
        let e = run_status(&args(&gone), &mut out).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_NO_RUN);
        assert!(e.to_string().contains("nope"));
    }

    #[test]
    fn shards_only_and_broken_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("shards")).unwrap();
        write_json_atomic(&shard_path(dir.path(), 5), &shard(5, 10, 1)).unwrap();
        fs::write(dir.path().join("shards/shard-06.json"), b"{\"shard\": ").unwrap();
        let mut newer = shard(7, 10, 1);
        newer.schema_version = SCHEMA_VERSION + 1;
        write_json_atomic(&shard_path(dir.path(), 7), &newer).unwrap();
        let r = load_at(dir.path(), t0()).unwrap();
        assert!(r.coordinator.is_none());
        assert_eq!(r.shards.len(), 2);
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("shard-06.json"));
        assert!(r.warnings[1].contains("schema version 2"));
        let text = render_table(&r, t0());
        assert!(text.contains("state unknown: no readable coordinator.json"));
        assert!(text.contains("warning    cannot parse"));
        // Unparseable files alone still count as a run, with warnings.
        fs::remove_file(shard_path(dir.path(), 5)).unwrap();
        fs::remove_file(shard_path(dir.path(), 7)).unwrap();
        let r = load_at(dir.path(), t0()).unwrap();
        assert!(r.shards.is_empty());
        assert_eq!(r.warnings.len(), 1);
    }

    #[test]
    fn json_output_round_trips() {
        let dir = fixture(RunState::Listing, 3);
        write_json_atomic(
            &dir.path().join("checkpoint.json"),
            &checkpoint(serde_json::json!({"Marker": "m-1200"}), 999, false),
        )
        .unwrap();
        let a = StatusArgs {
            json: true,
            ..args(dir.path())
        };
        let mut out = Vec::new();
        let code = run_status_with(&a, &mut out, false, &mut t0, &mut |_| {
            panic!("no sleep without --watch")
        })
        .unwrap();
        assert_eq!(code, 0);
        let parsed: StatusReport = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed, load_at(dir.path(), t0()).unwrap());
        assert_eq!(parsed.totals.files_ok, 750_003);
        assert_eq!(parsed.stale_shards, [2]);
        assert_eq!(parsed.checkpoint.unwrap()["position"]["Marker"], "m-1200");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["coordinator"]["state"], "listing");
        assert_eq!(v["shards"][0]["http_status"]["200"], 250_000);
    }

    #[test]
    fn table_output_through_run_status() {
        let dir = fixture(RunState::Draining, 2);
        let mut out = Vec::new();
        let code = run_status_with(&args(dir.path()), &mut out, false, &mut t0, &mut |_| {
            panic!("no sleep without --watch")
        })
        .unwrap();
        assert_eq!(code, 0);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("run        draining"));
        assert!(text.contains("TOTAL"));
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn watch_redraws_until_the_run_is_final() {
        let dir = fixture(RunState::Listing, 2);
        let a = StatusArgs {
            watch: true,
            interval_ms: 250,
            ..args(dir.path())
        };
        // The "sleep" advances the run instead of waiting: the second frame
        // sees draining, the third finished, and the loop must stop there.
        let mut sleeps = 0;
        let path = coordinator_path(dir.path());
        let mut sleep = |d: Duration| {
            assert_eq!(d, Duration::from_millis(250));
            sleeps += 1;
            let state = if sleeps == 1 {
                RunState::Draining
            } else {
                RunState::Finished
            };
            write_json_atomic(&path, &coordinator(state, 2)).unwrap();
        };
        let mut out = Vec::new();
        let code = run_status_with(&a, &mut out, false, &mut t0, &mut sleep).unwrap();
        assert_eq!(code, 0);
        assert_eq!(sleeps, 2);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().filter(|l| l.starts_with("TOTAL")).count(), 3);
        assert_eq!(
            text.matches("\n\nbulkget status ").count(),
            2,
            "frames apart"
        );
        assert!(text.contains("run        listing"));
        assert!(text.contains("run        draining"));
        assert!(text.contains("run        finished"));
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn watch_on_a_terminal_redraws_in_place_and_json_lines() {
        let dir = fixture(RunState::Interrupted, 2);
        let mut out = Vec::new();
        let a = StatusArgs {
            watch: true,
            ..args(dir.path())
        };
        run_status_with(&a, &mut out, true, &mut t0, &mut |_| unreachable!()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("\x1b[H\x1b[2J"));
        assert!(text.ends_with("\x1b[J"));
        assert!(text.contains("interrupted"));

        let mut out = Vec::new();
        let a = StatusArgs {
            watch: true,
            json: true,
            ..args(dir.path())
        };
        run_status_with(&a, &mut out, true, &mut t0, &mut |_| unreachable!()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1);
        let r: StatusReport = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(r.coordinator.unwrap().state, RunState::Interrupted);
    }

    #[test]
    fn watch_waits_for_a_run_to_appear() {
        let dir = tempfile::tempdir().unwrap();
        let a = StatusArgs {
            watch: true,
            ..args(dir.path())
        };
        let root = dir.path().to_path_buf();
        let mut sleep = |_| {
            let c = coordinator(RunState::Failed, 0);
            write_json_atomic(&coordinator_path(&root), &c).unwrap();
        };
        let mut out = Vec::new();
        run_status_with(&a, &mut out, false, &mut t0, &mut sleep).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("waiting for a bulkget run in "));
        assert!(text.contains("run        failed"));
        // A directory that does not exist is an error at once, not a wait.
        let a = StatusArgs {
            watch: true,
            ..args(&dir.path().join("missing"))
        };
        let e = run_status_with(&a, &mut Vec::new(), false, &mut t0, &mut |_| unreachable!());
        assert_eq!(e.unwrap_err().exit_code(), 1);
    }

    #[test]
    fn json_watch_of_an_output_directory_waits_silently_then_ends_with_the_workers() {
        // `bulkget status OUT --watch --json` started before the run made
        // OUT/.bulkget; the run has no coordinator file (workers by hand).
        let out_dir = tempfile::tempdir().unwrap();
        let state = out_dir.path().join(".bulkget");
        let a = StatusArgs {
            watch: true,
            json: true,
            ..args(out_dir.path())
        };
        let mut sleeps = 0;
        let mut sleep = |_| {
            sleeps += 1;
            let mut s = shard(0, 10, 0);
            if sleeps == 2 {
                s.state = ShardState::Exited;
            }
            write_json_atomic(&shard_path(&state, 0), &s).unwrap_or_else(|_| {
                fs::create_dir_all(state.join(SHARDS_DIR)).unwrap();
                write_json_atomic(&shard_path(&state, 0), &s).unwrap();
            });
        };
        let mut out = Vec::new();
        run_status_with(&a, &mut out, false, &mut t0, &mut sleep).unwrap();
        assert_eq!(sleeps, 2);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<StatusReport> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0].shards[0].state, ShardState::Running);
        assert_eq!(lines[1].shards[0].state, ShardState::Exited);
    }

    #[test]
    fn a_closed_pipe_ends_quietly() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let dir = fixture(RunState::Listing, 1);
        assert_eq!(run_status(&args(dir.path()), &mut Closed).unwrap(), 0);
    }

    #[test]
    fn output_directory_is_accepted_for_the_state_directory() {
        let out_dir = tempfile::tempdir().unwrap();
        let state = out_dir.path().join(".bulkget");
        fs::create_dir_all(state.join("shards")).unwrap();
        assert_eq!(resolve_state_dir(Some(out_dir.path())), state);
        assert_eq!(resolve_state_dir(Some(&state)), state);
        let other = tempfile::tempdir().unwrap();
        assert_eq!(resolve_state_dir(Some(other.path())), other.path());
    }

    #[test]
    fn clap_parses_the_documented_command_line() {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            status: StatusArgs,
        }
        let c = Cli::try_parse_from(["status", "/tmp/s", "--json", "--watch"]).unwrap();
        assert_eq!(
            c.status,
            StatusArgs {
                state_dir: Some(PathBuf::from("/tmp/s")),
                json: true,
                watch: true,
                interval_ms: 1000,
                tty: None,
            }
        );
        let c = Cli::try_parse_from(["status", "--interval-ms", "200"]).unwrap();
        assert_eq!(c.status.state_dir, None);
        assert_eq!(c.status.interval_ms, 200);
        assert!(Cli::try_parse_from(["status", "--interval-ms", "0"]).is_err());
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(compact(999_999), "999,999");
        assert_eq!(compact(62_500_000), "62.50M");
        assert_eq!(compact(1_000_000_000), "1.000G");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_000), "1.0 kB");
        assert_eq!(human_bytes(999_960), "1.0 MB");
        assert_eq!(human_bytes(100_000_000_000), "100.0 GB");
        assert_eq!(human_secs(4.21), "4.2s");
        assert_eq!(human_secs(42.0), "42s");
        assert_eq!(human_secs(425.0), "7m05s");
        assert_eq!(human_secs(11_040.0), "3h04m");
        assert_eq!(human_secs(190_800.0), "2d05h");
        assert_eq!(human_ms(0.0), "-");
        assert_eq!(human_ms(0.523), "0.52");
        assert_eq!(human_ms(12.34), "12.3");
        assert_eq!(human_ms(1234.6), "1235");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
