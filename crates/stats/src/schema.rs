//! The two stats files a run writes, as serde types, and where they live.
//!
//! These types are the contract between the processes that write the files
//! (each worker writes its `shards/shard-KK.json`, the coordinator writes
//! `coordinator.json`) and everything that reads them: `bulkget status`,
//! scripts with `jq`, dashboards. `docs/STATS.md` documents every field; keep
//! the two in step.
//!
//! Compatibility rules, which the attributes below implement:
//!
//! * Every struct is `#[serde(default)]`, so a reader accepts a file written
//!   by an older writer that lacked a field added since (it reads as zero,
//!   empty or `None`).
//! * No struct denies unknown fields, so a reader accepts a file written by a
//!   newer writer that added fields.
//! * Enumerations have an `unknown` catch-all, so a state added later does not
//!   make older readers fail to parse the whole file.
//! * Removing or renaming a field, or changing its type or unit, bumps
//!   [`SCHEMA_VERSION`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The version written in `schema_version` of both files.
///
/// Adding a field keeps the version; removing or renaming one, or changing
/// what a value means, bumps it.
pub const SCHEMA_VERSION: u32 = 1;

/// The coordinator's stats file, relative to the state directory.
pub const COORDINATOR_FILE: &str = "coordinator.json";

/// The directory of per-shard stats files, relative to the state directory.
pub const SHARDS_DIR: &str = "shards";

/// The checkpoint, relative to the state directory. The coordinator writes
/// it; [`CheckpointFile`] is how readers see it.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

/// `STATE/coordinator.json`.
pub fn coordinator_path(state_dir: &Path) -> PathBuf {
    state_dir.join(COORDINATOR_FILE)
}

/// `STATE/checkpoint.json`.
pub fn checkpoint_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CHECKPOINT_FILE)
}

/// `STATE/shards`.
pub fn shards_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(SHARDS_DIR)
}

/// The file name of a shard's stats: `shard-03.json`. Two digits at least, so
/// that `ls` sorts the first hundred shards in order.
pub fn shard_file_name(shard: u32) -> String {
    format!("shard-{shard:02}.json")
}

/// `STATE/shards/shard-KK.json`.
pub fn shard_path(state_dir: &Path, shard: u32) -> PathBuf {
    shards_dir(state_dir).join(shard_file_name(shard))
}

/// What a worker process is doing, as it says itself.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ShardState {
    /// Started, has not yet received its first batch.
    #[default]
    Starting,
    /// Fetching batches.
    Running,
    /// Told to stop: finishes the batches it holds, takes no new ones.
    Draining,
    /// Wrote its last snapshot and exited. A file in this state is not
    /// expected to change again (until a restart of the shard rewrites it).
    Exited,
    /// A state this reader does not know, written by a newer bulkget.
    #[serde(other)]
    Unknown,
}

impl ShardState {
    /// The spelling used in the file and in the status table.
    pub fn as_str(self) -> &'static str {
        match self {
            ShardState::Starting => "starting",
            ShardState::Running => "running",
            ShardState::Draining => "draining",
            ShardState::Exited => "exited",
            ShardState::Unknown => "unknown",
        }
    }
}

/// What the run as a whole is doing, as the coordinator says.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Listing pages and dispatching batches (downloads run meanwhile).
    #[default]
    Listing,
    /// The listing is done (or was stopped); waiting for the last batches.
    Draining,
    /// Stopped by SIGINT/SIGTERM/SIGHUP, checkpoint saved. Final.
    Interrupted,
    /// Every listed name is done or failed. Final.
    Finished,
    /// Stopped by an error (every shard parked, listing error, ...). Final.
    Failed,
    /// A state this reader does not know, written by a newer bulkget.
    #[serde(other)]
    Unknown,
}

impl RunState {
    /// The spelling used in the file and in the status table.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Listing => "listing",
            RunState::Draining => "draining",
            RunState::Interrupted => "interrupted",
            RunState::Finished => "finished",
            RunState::Failed => "failed",
            RunState::Unknown => "unknown",
        }
    }

    /// Whether the coordinator has stopped: its file will not change again,
    /// and shard files that stopped updating are expected, not a symptom.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunState::Interrupted | RunState::Finished | RunState::Failed
        )
    }
}

/// Request latency percentiles, in milliseconds.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq)]
#[serde(default)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// The slowest request seen. Added beside the percentiles because a
    /// request that ran into a timeout shows here long before it moves p99.
    pub max: f64,
}

/// `STATE/shards/shard-KK.json`: one worker's view, rewritten by the worker
/// every second and once more when it exits.
///
/// Counters count from the start of this worker *process* (`started_at`): a
/// restarted shard starts again from zero with `generation` one higher. The
/// coordinator's totals, which count acknowledgements, are the authoritative
/// numbers for the run.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ShardStats {
    pub schema_version: u32,
    /// The shard number, `KK` in the file name.
    pub shard: u32,
    /// The worker process.
    pub pid: u32,
    /// How many times this shard has been restarted before this process: 0
    /// for the first worker.
    pub generation: u32,
    pub state: ShardState,
    /// When this worker process started, RFC 3339 UTC with milliseconds.
    pub started_at: String,
    /// When this snapshot was taken, RFC 3339 UTC with milliseconds.
    pub updated_at: String,
    /// Files whose bytes are in the sink.
    pub files_ok: u64,
    /// Files that failed permanently (also written to `failed.jsonl`).
    pub files_failed: u64,
    /// Payload bytes written to the sink (bodies only, no headers).
    pub bytes: u64,
    /// Request attempts that were retried (each retry counts once).
    pub retries: u64,
    /// Requests sent again because the pipelined connection that carried
    /// them ended before answering them (the server closed it, or a response
    /// ahead of them broke). Not attempts: the server may never have seen
    /// them. Always 0 without `--pipeline`.
    pub pipeline_retries: u64,
    /// Requests in flight per connection now: `--pipeline`, or 1 after this
    /// worker found its server mishandling pipelining.
    pub pipeline_depth: u32,
    /// Responses by HTTP status code (`"200"`, `"503"`, ...) plus `"error"`
    /// for attempts that got no status (connect error, reset, timeout). Only
    /// codes seen appear. Every attempt counts, retried ones included.
    pub http_status: BTreeMap<String, u64>,
    /// Requests started and not yet finished.
    pub in_flight: u64,
    /// HTTP connections open now.
    pub open_connections: u64,
    /// HTTP connections opened since start (a number far above
    /// `open_connections` means connections are not being kept alive).
    pub connections_opened: u64,
    /// Batches acknowledged to the coordinator.
    pub batches_done: u64,
    /// Batches reported stalled: every name they had left was waiting on a
    /// retry timer, so they stepped out of the shard's window.
    pub batches_stalled: u64,
    /// Per attempt, from sending the request to the last byte of the body,
    /// over the life of this process.
    pub latency_ms: Latency,
    /// Files done (ok or failed) per second over the last ~5 s.
    pub files_per_sec: f64,
}

/// The coordinator's view of one shard, inside [`CoordinatorStats`].
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ShardSummary {
    pub shard: u32,
    /// The current worker process; `None` while no worker runs for this shard
    /// (backing off before a restart, parked, stopped).
    pub pid: Option<u32>,
    /// One of [`summary_state`]'s values. A string rather than an enum so that
    /// the coordinator may add states without breaking older readers.
    pub state: String,
    /// Batches sent to this shard and not yet acknowledged.
    pub batches_in_flight: u64,
    /// Of `batches_in_flight`, those stalled on retry timers (outside the
    /// window, so they do not hold back new work).
    pub batches_stalled: u64,
    /// Restarts of this shard since the run started.
    pub restarts: u32,
    /// Total time this shard had no batch to work on, in milliseconds. Growing
    /// idle time on every shard means the listing is the bottleneck.
    pub idle_ms: u64,
}

/// The values of [`ShardSummary::state`].
pub mod summary_state {
    /// A worker runs for this shard.
    pub const RUNNING: &str = "running";
    /// The worker died; waiting before the restart.
    pub const BACKOFF: &str = "backoff";
    /// Crashed too often; no longer restarted. The run goes on without it.
    pub const PARKED: &str = "parked";
    /// Shut down normally.
    pub const STOPPED: &str = "stopped";
}

/// The values of [`CoordinatorStats::eta_method`] the coordinator uses, so
/// that the text is the same wherever it is produced.
pub mod eta_method {
    /// While listing, the number of files is unknown, so no ETA is given.
    pub const NONE_LISTING: &str = "none: total unknown until the listing ends";
    /// After the listing: names listed and not yet done, over the recent rate.
    pub const REMAINING_OVER_RATE: &str = "remaining listed names / recent rate";
    /// After the listing, but no file finished recently.
    pub const NONE_NO_PROGRESS: &str = "none: no recent progress";
    /// The run is over.
    pub const DONE: &str = "none: run over";
}

/// `STATE/coordinator.json`: the run as a whole, rewritten by the coordinator
/// every second and once more when it exits.
///
/// Counters cover the whole run: after `--resume` they start from the
/// checkpoint's counters, so `files_ok` of a finished run is the number of
/// files in the sink however often it was resumed. Rates and ETA are this
/// process's.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct CoordinatorStats {
    pub schema_version: u32,
    pub pid: u32,
    pub state: RunState,
    /// The service's base URL, as given on the command line.
    pub url: String,
    /// RFC 3339 UTC with milliseconds.
    pub started_at: String,
    /// RFC 3339 UTC with milliseconds.
    pub updated_at: String,
    /// List pages received.
    pub pages_listed: u64,
    /// Names received from the listing (before the unsafe-name check).
    pub names_listed: u64,
    /// The marker of the last page asked for; `None` before the second page
    /// (the first page has no marker) and after the last one.
    pub current_marker: Option<String>,
    /// Whether the last page (one without a marker) has been received.
    pub listing_done: bool,
    /// Batches waiting in the dispatcher's queue for room in a shard's window.
    pub batches_queued: u64,
    /// Files acknowledged as in the sink.
    pub files_ok: u64,
    /// Files acknowledged as permanently failed.
    pub files_failed: u64,
    /// Payload bytes acknowledged.
    pub bytes: u64,
    /// Request attempts retried for the files acknowledged (a file fetched
    /// at its third attempt counts 2), as the workers report them with each
    /// acknowledgement. Attempts of a worker that died before acknowledging
    /// are not counted: its batches are fetched again and count then.
    pub retries: u64,
    /// Files acknowledged per second over the last ~5 s.
    pub files_per_sec: f64,
    /// Seconds until every listed name is done; `None` when unknown (see
    /// `eta_method`).
    pub eta_seconds: Option<f64>,
    /// How `eta_seconds` was estimated, or why there is none. One of
    /// [`eta_method`]'s values.
    pub eta_method: String,
    /// Total time the lister waited because every shard's window was full, in
    /// milliseconds. Growing lister wait means the downloads are the
    /// bottleneck.
    pub lister_wait_ms: u64,
    /// Batches put back on the queue because their worker died.
    pub batches_requeued: u64,
    /// Pages after a resumed checkpoint's position that the server listed
    /// with other names than it did before the resume (replaced, added,
    /// removed or reordered), so they were fetched whole instead of skipped.
    pub pages_changed: u64,
    /// The coordinator process's peak resident memory so far (`VmHWM`), in
    /// bytes; 0 where the system does not say.
    pub peak_rss_bytes: u64,
    /// The process exit code, once `state` is final; `None` before.
    pub exit_code: Option<i32>,
    /// One entry per shard, in shard order.
    pub shards: Vec<ShardSummary>,
}

/// Where a resume starts listing, as `checkpoint.json` says it.
///
/// The coordinator writes it as serde's external tagging of its own
/// `ListPosition`: `"Start"`, `{"Marker": "..."}` or `"Done"`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub enum ResumePosition {
    /// At the first page (`GET /list`): nothing was fully acknowledged yet.
    Start,
    /// At `GET /list?next-marker=MARKER`: the earliest page not fully
    /// acknowledged.
    Marker(String),
    /// After the last page: nothing is left to list.
    Done,
    /// A position this reader does not know, or none.
    #[default]
    #[serde(other)]
    Unknown,
}

/// The counters in `checkpoint.json`. The file counts are every
/// acknowledgement up to the checkpoint, wherever its page is; the page and
/// name counts cover the pages before the resume position.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct CheckpointTotals {
    pub files_ok: u64,
    pub files_failed: u64,
    pub bytes: u64,
    pub names_listed: u64,
    pub pages_done: u64,
    pub retries: u64,
}

/// Which names after the resume position are done already, so a resume
/// skips them. Page offsets count from the position's page (offset 0).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct CheckpointDoneAfter {
    /// Pages whose every name is done.
    pub complete: Vec<CheckpointCompleteRun>,
    /// Pages partly done.
    pub partial: Vec<CheckpointPartialPage>,
}

impl CheckpointDoneAfter {
    /// Pages after the position whose every name is done.
    pub fn complete_pages(&self) -> u64 {
        self.complete.iter().map(CheckpointCompleteRun::pages).sum()
    }
}

/// Complete pages after the position.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum CheckpointCompleteRun {
    /// Consecutive pages from offset `first` on, one per fingerprint of the
    /// names it listed (checkpoint version 2).
    Run {
        first: u64,
        fingerprints: Vec<String>,
    },
    /// A half-open `[first, end)` range of offsets (checkpoint version 1).
    Range(u64, u64),
}

impl CheckpointCompleteRun {
    /// How many pages this covers.
    pub fn pages(&self) -> u64 {
        match self {
            CheckpointCompleteRun::Run { fingerprints, .. } => fingerprints.len() as u64,
            CheckpointCompleteRun::Range(a, b) => b.saturating_sub(*a),
        }
    }
}

/// A partly done page in a checkpoint.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct CheckpointPartialPage {
    /// Pages after the position's page (0: that page itself).
    pub offset: u64,
    /// Names on the page when it was listed.
    pub len: u32,
    /// The fingerprint of the names the page listed, in order, as 16 hex
    /// digits; a page listed with other names on resume is fetched whole.
    /// Empty in version 1 checkpoints.
    pub fingerprint: String,
    /// One bit per name, set when done: name `i` is bit `i % 64` of word
    /// `i / 64`.
    pub done: Vec<u64>,
}

/// `STATE/checkpoint.json` as a reader sees it. The coordinator owns the
/// file (`bulkget-coordinator`, `state.rs`) and writes it durably (fsync of
/// the file and its directory) every `--checkpoint-interval` seconds and at
/// exit, after `failed.jsonl` and the output file system are synced; this
/// type is the readers' tolerant view of it, for `bulkget status`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct CheckpointFile {
    pub schema_version: u32,
    /// Where a resume lists from.
    pub position: ResumePosition,
    /// Counters (see [`CheckpointTotals`]).
    pub totals: CheckpointTotals,
    /// Names from `position` on that are done already.
    pub done_after: CheckpointDoneAfter,
    /// The length in bytes of `failed.jsonl` that belongs to the
    /// acknowledgements counted; a resume truncates the file to it.
    pub failed_len: u64,
    /// The listing is done and every file acknowledged: nothing to resume.
    pub complete: bool,
    /// When the checkpoint was taken, RFC 3339 UTC with milliseconds.
    pub updated_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_lowercase_and_unknown_values_parse() {
        assert_eq!(
            serde_json::to_string(&ShardState::Draining).unwrap(),
            "\"draining\""
        );
        assert_eq!(
            serde_json::to_string(&RunState::Interrupted).unwrap(),
            "\"interrupted\""
        );
        let s: ShardState = serde_json::from_str("\"hibernating\"").unwrap();
        assert_eq!(s, ShardState::Unknown);
        let r: RunState = serde_json::from_str("\"paused\"").unwrap();
        assert_eq!(r, RunState::Unknown);
    }

    #[test]
    fn missing_and_extra_fields_are_tolerated() {
        // An older writer without `latency_ms`, a newer one with `gpu_temp`.
        let s: ShardStats = serde_json::from_str(
            r#"{"schema_version":1,"shard":3,"state":"running","files_ok":7,"gpu_temp":40}"#,
        )
        .unwrap();
        assert_eq!(s.shard, 3);
        assert_eq!(s.files_ok, 7);
        assert_eq!(s.latency_ms, Latency::default());
        let c: CoordinatorStats =
            serde_json::from_str(r#"{"state":"finished","shards":[{"shard":1}]}"#).unwrap();
        assert!(c.state.is_final());
        assert_eq!(c.shards[0].pid, None);
        assert_eq!(c.current_marker, None);
    }

    #[test]
    fn checkpoint_positions_parse_as_the_coordinator_writes_them() {
        let p = |json: &str| {
            serde_json::from_str::<CheckpointFile>(json)
                .unwrap()
                .position
        };
        assert_eq!(p(r#"{"position":"Start"}"#), ResumePosition::Start);
        assert_eq!(p(r#"{"position":"Done"}"#), ResumePosition::Done);
        assert_eq!(
            p(r#"{"position":{"Marker":"m-1"}}"#),
            ResumePosition::Marker("m-1".into())
        );
        assert_eq!(p(r#"{"position":"Elsewhere"}"#), ResumePosition::Unknown);
        assert_eq!(p("{}"), ResumePosition::Unknown);
        let c: CheckpointFile = serde_json::from_str(
            r#"{"schema_version":1,"position":{"Marker":"x"},"totals":{"files_ok":5,
                "files_failed":1,"bytes":500,"names_listed":6,"pages_done":2},
                "failed_len":40,"complete":false,"updated_at":"t"}"#,
        )
        .unwrap();
        assert_eq!(
            (c.totals.files_ok, c.totals.pages_done, c.totals.retries),
            (5, 2, 0)
        );
        assert_eq!(c.failed_len, 40);
        // Complete pages as version 1 wrote them (ranges) and as version 2
        // writes them (runs with a fingerprint per page).
        let c: CheckpointFile = serde_json::from_str(
            r#"{"schema_version":1,"done_after":{"complete":[[1,3],[4,6]],
                "partial":[{"offset":0,"len":10,"done":[1]}]}}"#,
        )
        .unwrap();
        assert_eq!(c.done_after.complete_pages(), 4);
        let c: CheckpointFile = serde_json::from_str(
            r#"{"schema_version":2,"done_after":{"complete":[{"first":1,
                "fingerprints":["00000000000000aa","00000000000000bb"]}],
                "partial":[{"offset":0,"len":10,"fingerprint":"00000000000000cc","done":[1]}]}}"#,
        )
        .unwrap();
        assert_eq!(c.done_after.complete_pages(), 2);
        assert_eq!(c.done_after.partial[0].fingerprint, "00000000000000cc");
    }

    #[test]
    fn paths() {
        let d = Path::new("/s");
        assert_eq!(shard_path(d, 3), Path::new("/s/shards/shard-03.json"));
        assert_eq!(shard_file_name(123), "shard-123.json");
        assert_eq!(coordinator_path(d), Path::new("/s/coordinator.json"));
    }
}
