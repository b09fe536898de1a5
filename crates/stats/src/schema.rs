//! The two stats files a run writes, as serde types, and where they live.
//!
//! These types are the contract between the processes that write the files
//! (each worker writes its `shards/shard-KK.json`, the coordinator writes
//! `coordinator.json`) and everything that reads them: `bulkget status`,
//! scripts with `jq`, dashboards. `docs/STATS.md` documents every field; keep
//! the two in step.
//!
//! The versioning rule, for these files and `checkpoint.json` alike (one
//! rule, written here and in `docs/STATS.md`):
//!
//! * Adding a field keeps the version. Readers accept a file without it
//!   (stats structs are `#[serde(default)]`; the checkpoint marks such
//!   fields `#[serde(default)]` one by one) and a file with fields they do
//!   not know (no struct denies unknown fields).
//! * Removing or renaming a field, or changing its type, unit or meaning,
//!   bumps the file's version ([`SCHEMA_VERSION`] for the stats files,
//!   [`crate::checkpoint::CHECKPOINT_VERSION`] for the checkpoint).
//! * An enumeration that may grow has an `Unknown` catch-all
//!   (`#[serde(other)]`), so a value added later does not make older
//!   readers fail on the whole file.
//! * A reader given a newer version than its own does not guess: `bulkget
//!   status` shows the stats files with a warning that fields may mean
//!   something else, and a resume refuses a newer checkpoint.

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
/// it; [`crate::checkpoint`] has its types.
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

/// Makes `STATE/shards` ready for a new set of workers: created if
/// missing, and emptied of the stats files of an earlier run or of more
/// shards, which would mislead `bulkget status`; each worker writes its
/// own afresh. Both `fetch` (once it holds the state directory's lock) and
/// a cluster host call it before starting their workers.
pub fn fresh_shards_dir(state_dir: &Path) -> std::io::Result<PathBuf> {
    let dir = shards_dir(state_dir);
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(&dir)?.flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    Ok(dir)
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

/// The upper bounds, in seconds, of the latency buckets every shard file
/// carries ([`LatencyBuckets`]), for Prometheus's histogram: fixed, so the
/// coordinator can add the shards' buckets up.
pub const LATENCY_BOUNDS_SECONDS: [f64; 16] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

/// Request latencies counted in fixed buckets, as a Prometheus histogram
/// wants them: `counts[i]` attempts took at most `le_seconds[i]`
/// (cumulative, like Prometheus's `le`); `count` attempts in all, which took
/// `sum_seconds` together.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct LatencyBuckets {
    pub le_seconds: Vec<f64>,
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
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
    /// Names a refresh found in the sink already and did not fetch; 0
    /// outside a refresh.
    pub files_present: u64,
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
    /// Times the worker held off before sleeping, so as to wake to many
    /// pipelined answers at once (with 512 or more requests in flight).
    /// Absent from files written before it existed.
    #[serde(default)]
    pub parks_held: u64,
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
    /// The same attempts in the fixed buckets of
    /// [`LATENCY_BOUNDS_SECONDS`], which can be added up across shards.
    pub latency_buckets: LatencyBuckets,
    /// Files done (ok or failed) per second over the last ~5 s.
    pub files_per_sec: f64,
    /// How fast this worker may send now: its limits and why.
    pub pace: Pace,
}

/// A worker's limits on how fast it sends, in its stats file
/// ([`ShardStats::pace`]).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct Pace {
    /// Whether the limits adapt to the service (`--adaptive on`).
    pub adaptive: bool,
    /// Requests this worker may have in flight now: the adaptive limit, or
    /// with `--adaptive off` its connections times their pipeline depth.
    pub in_flight_limit: u64,
    /// GET requests a second this worker may send now (the lower of
    /// `rps_share` and its own cap after pushback); `None` for no limit.
    pub rps_limit: Option<f64>,
    /// The coordinator's share for this worker of `--max-rps` and of any
    /// run-wide slow-down; `None` for no limit.
    pub rps_share: Option<f64>,
    /// What holds the worker back: see [`Backoff`].
    pub backoff: Backoff,
    /// Answers that were pushback (429, 503) since the worker started.
    pub pushback_total: u64,
}

/// Whether pushback is slowing a worker down ([`Pace::backoff`]).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Backoff {
    /// No pushback is holding the worker back.
    #[default]
    None,
    /// This worker saw pushback: its own limits were cut and have not yet
    /// grown back.
    Own,
    /// The coordinator ordered a run-wide slow-down (several shards saw
    /// pushback); it may also be cut on its own.
    RunWide,
    /// A value this reader does not know, written by a newer bulkget.
    #[serde(other)]
    Unknown,
}

impl Backoff {
    /// The spelling used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Backoff::None => "none",
            Backoff::Own => "own",
            Backoff::RunWide => "run-wide",
            Backoff::Unknown => "unknown",
        }
    }
}

/// The coordinator's view of one shard, inside [`CoordinatorStats`].
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct ShardSummary {
    pub shard: u32,
    /// The current worker process; `None` while no worker runs for this shard
    /// (backing off before a restart, parked, stopped).
    pub pid: Option<u32>,
    /// What the coordinator knows of the shard; a state added by a newer
    /// bulkget reads as [`SummaryState::Unknown`].
    pub state: SummaryState,
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

/// What the coordinator knows of one shard ([`ShardSummary::state`]).
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum SummaryState {
    /// A worker runs for this shard.
    Running,
    /// The worker died; waiting before the restart.
    Backoff,
    /// Crashed too often; no longer restarted. The run goes on without it.
    Parked,
    /// Shut down normally.
    Stopped,
    /// A state this reader does not know, written by a newer bulkget, or
    /// none.
    #[default]
    #[serde(other)]
    Unknown,
}

impl SummaryState {
    /// The spelling used in the file and in the status table.
    pub fn as_str(self) -> &'static str {
        match self {
            SummaryState::Running => "running",
            SummaryState::Backoff => "backoff",
            SummaryState::Parked => "parked",
            SummaryState::Stopped => "stopped",
            SummaryState::Unknown => "unknown",
        }
    }
}

/// How [`CoordinatorStats::eta_seconds`] was estimated, or why there is
/// none. On the wire it is the sentence each variant documents, so that a
/// person reading the file with `cat` understands it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum EtaMethod {
    /// While listing, the number of files is unknown, so no ETA is given.
    #[serde(rename = "none: total unknown until the listing ends")]
    NoneListing,
    /// After the listing: names listed and not yet done, over the recent rate.
    #[serde(rename = "remaining listed names / recent rate")]
    RemainingOverRate,
    /// Still listing, with `--expected-files`: the expected number of files
    /// (or the number listed, if larger) not yet done, over the recent rate.
    #[serde(rename = "expected files not yet done / recent rate")]
    ExpectedOverRate,
    /// After the listing, but no file finished recently.
    #[serde(rename = "none: no recent progress")]
    NoneNoProgress,
    /// The run is over.
    #[serde(rename = "none: run over")]
    Done,
    /// A method this reader does not know, written by a newer bulkget, or
    /// none.
    #[default]
    #[serde(other)]
    Unknown,
}

impl EtaMethod {
    /// The spelling used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            EtaMethod::NoneListing => "none: total unknown until the listing ends",
            EtaMethod::RemainingOverRate => "remaining listed names / recent rate",
            EtaMethod::ExpectedOverRate => "expected files not yet done / recent rate",
            EtaMethod::NoneNoProgress => "none: no recent progress",
            EtaMethod::Done => "none: run over",
            EtaMethod::Unknown => "unknown",
        }
    }
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
    /// Names received from the listing to be fetched (before the unsafe-name
    /// check); names repeated on consecutive pages and names left out by
    /// `--include` / `--exclude` are not counted.
    pub names_listed: u64,
    /// Names the `--include` and `--exclude` filters left out: listed, not
    /// fetched, not in `names_listed`. 0 without filters.
    pub names_excluded: u64,
    /// `--expected-files`: the number of files the run expects to fetch,
    /// which gives an ETA before the listing ends; `None` when not given.
    pub expected_files: Option<u64>,
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
    /// Names a refresh found in the sink already and did not fetch; 0
    /// outside a refresh. In a refresh, `files_ok` counts the new files.
    pub files_present: u64,
    /// This run is a refresh (`--refresh`, or the resume of one): it
    /// fetches only the names not in the sink yet.
    pub refresh: bool,
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
    /// How `eta_seconds` was estimated, or why there is none.
    pub eta_method: EtaMethod,
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
    /// Names this process dropped because the same or the previous page
    /// listed them already (a server that repeats names across a page
    /// boundary); each is fetched once. Absent in files written before it
    /// existed, which then read as 0.
    pub names_repeated: u64,
    /// The coordinator process's peak resident memory so far (`VmHWM`), in
    /// bytes; 0 where the system does not say.
    pub peak_rss_bytes: u64,
    /// The largest peak resident memory of the workers that have exited so
    /// far, in bytes (`getrusage(RUSAGE_CHILDREN)`); 0 before the first
    /// exits. At the end of a run, every worker's. Absent in files written
    /// before it existed, which then read as 0.
    #[serde(default)]
    pub workers_peak_rss_bytes: u64,
    /// The process exit code, once `state` is final; `None` before.
    pub exit_code: Option<i32>,
    /// Where `GET /metrics` is served (`--metrics-addr`, the port as
    /// bound), or `None` without it.
    pub metrics_addr: Option<String>,
    /// One entry per shard, in shard order.
    pub shards: Vec<ShardSummary>,
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
        let p: SummaryState = serde_json::from_str("\"migrating\"").unwrap();
        assert_eq!(p, SummaryState::Unknown);
    }

    /// The enums are written as the strings the files always had, so that
    /// files written before they were enums read the same.
    #[test]
    fn enums_keep_their_spelling_on_the_wire() {
        for state in [
            SummaryState::Running,
            SummaryState::Backoff,
            SummaryState::Parked,
            SummaryState::Stopped,
        ] {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(serde_json::from_str::<SummaryState>(&json).unwrap(), state);
        }
        for (method, text) in [
            (
                EtaMethod::NoneListing,
                "none: total unknown until the listing ends",
            ),
            (
                EtaMethod::RemainingOverRate,
                "remaining listed names / recent rate",
            ),
            (
                EtaMethod::ExpectedOverRate,
                "expected files not yet done / recent rate",
            ),
            (EtaMethod::NoneNoProgress, "none: no recent progress"),
            (EtaMethod::Done, "none: run over"),
        ] {
            let json = serde_json::to_string(&method).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(method.as_str(), text);
            assert_eq!(serde_json::from_str::<EtaMethod>(&json).unwrap(), method);
        }
        let m: EtaMethod = serde_json::from_str("\"extrapolated from the moon\"").unwrap();
        assert_eq!(m, EtaMethod::Unknown);
        let c: CoordinatorStats = serde_json::from_str("{}").unwrap();
        assert_eq!(c.eta_method, EtaMethod::Unknown);
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
    fn paths() {
        let d = Path::new("/s");
        assert_eq!(shard_path(d, 3), Path::new("/s/shards/shard-03.json"));
        assert_eq!(shard_file_name(123), "shard-123.json");
        assert_eq!(coordinator_path(d), Path::new("/s/coordinator.json"));
    }
}
