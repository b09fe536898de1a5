//! Every type that crosses the Unix socket between the coordinator and a
//! worker, and the framing that carries them.
//!
//! # Layout
//!
//! - [`ToWorker`] and [`ToCoordinator`]: one enum per direction.
//! - [`WorkerSettings`]: everything a worker needs, sent in [`ToWorker::Hello`],
//!   so that a worker takes no command-line flags of its own beyond its socket.
//! - [`frame`]: length-prefixed bincode frames, with a synchronous decoder
//!   ([`frame::decode`]) that the async reader and the fuzz target share.
//!
//! Architecture invariant: no other crate defines a type that is sent over
//! the socket, and no other crate knows how frames are laid out.

pub mod frame;

use serde::{Deserialize, Serialize};

/// The identifier of a batch, unique within one coordinator run.
pub type BatchId = u64;

/// A message from the coordinator to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// The first message on every socket. `generation` counts the restarts
    /// of this shard, so stats files tell one life of a shard from the next.
    Hello {
        shard: u32,
        generation: u32,
        settings: WorkerSettings,
    },
    /// Names to fetch. The worker answers with exactly one
    /// [`ToCoordinator::BatchDone`] carrying the same `id`.
    Batch { id: BatchId, names: Vec<String> },
    /// Stop. With `drain`, finish the batches already received first;
    /// without, exit at once.
    Shutdown { drain: bool },
}

/// A message from a worker to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCoordinator {
    /// The worker has read its hello, opened its sink and is ready for work.
    Ready { pid: u32 },
    /// Every name of batch `id` is in the sink (`ok` of them, `bytes` in
    /// all) or has failed permanently (`failures`). Sent only after the
    /// sink has made the batch durable (for SQLite: after the commit).
    /// `retries` counts the attempts of the batch's names that were retried
    /// (a name fetched at its third attempt counts 2), so the run's total
    /// survives worker restarts, which reset the worker's own counters.
    BatchDone {
        id: BatchId,
        ok: u32,
        bytes: u64,
        retries: u32,
        failures: Vec<Failure>,
    },
    /// The worker cannot go on and is about to exit. With
    /// [`FatalKind::Crash`] the coordinator treats it like a crash (restart,
    /// back off); with [`FatalKind::NoSpace`] it stops the whole run cleanly,
    /// because every shard writes to the same full file system.
    Fatal { kind: FatalKind, reason: String },
    /// Every name of batch `id` not yet finished is waiting on a retry
    /// timer (a `Retry-After`, or backoff after an error), so the batch no
    /// longer needs a place in the shard's window. The names finished so far
    /// are durable in the sink, exactly as for [`ToCoordinator::BatchDone`],
    /// and `ok`, `bytes`, `retries` and `failures` count them; `waiting`
    /// lists, in increasing order, the positions (in the batch as sent) of
    /// the names still to do. Sent at most once per batch, always before its
    /// `BatchDone`, which then counts only the names in `waiting`.
    BatchStalled {
        id: BatchId,
        ok: u32,
        bytes: u64,
        retries: u32,
        failures: Vec<Failure>,
        waiting: Vec<u32>,
    },
}

/// Why a worker gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FatalKind {
    /// Anything a restart might cure: the sink cannot be opened, a test
    /// hook, an internal error.
    Crash,
    /// The output file system is full (`ENOSPC`, `EDQUOT`). A restart would
    /// only fail again; the run stops with its checkpoint saved.
    NoSpace,
}

/// One name that failed permanently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub name: String,
    /// A human-readable reason, e.g. `"HTTP 404 Not Found"`.
    pub reason: String,
    /// The last HTTP status seen for this name, if any.
    pub status: Option<u16>,
}

/// Where a worker puts the files it fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SinkKind {
    /// One file per name under the output directory.
    Dir,
    /// One SQLite database per shard, `OUT/shard-KK.sqlite`.
    Sqlite,
    /// Keeps nothing: counts and checks lengths. For benchmarks.
    Null,
}

/// How the `dir` sink lays names out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// `OUT/<name>`.
    Flat,
    /// `OUT/ab/cd/<name>`, from a stable hash of the name.
    Fanout,
}

/// How the `dir` sink resolves a path beneath the output directory, chosen
/// once by the coordinator's probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolve {
    /// `openat2(2)` with `RESOLVE_BENEATH` (Linux 5.6 or later): the kernel
    /// refuses any path that leaves the directory; symbolic links that stay
    /// inside are followed.
    Openat2,
    /// For hosts where `openat2` is missing or forbidden: one `openat(2)`
    /// per component with `O_NOFOLLOW` under the held directory descriptor.
    /// No symbolic link is followed at all, and `..` is refused.
    Walk,
}

/// Everything a worker needs to know, chosen by the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSettings {
    /// The service's base URL without a trailing slash, e.g.
    /// `http://127.0.0.1:8080/api`; files are at `{base_url}/get/{name}`.
    pub base_url: String,
    /// The output directory (already created by the coordinator).
    pub out_dir: String,
    /// The state directory; the worker writes `shards/shard-KK.json` in it.
    pub state_dir: String,
    /// The state directory's path relative to `out_dir` (`.bulkget`,
    /// `st`), when it is inside it: no sink writes a name there.
    pub state_dir_in_out: Option<String>,
    pub sink: SinkKind,
    pub layout: Layout,
    /// How the dir sink resolves paths beneath `out_dir`.
    pub resolve: Resolve,
    /// Concurrent keep-alive connections, one task each.
    pub connections: u32,
    /// HTTP/1.1 pipelining: requests in flight per connection; 1 is off.
    /// A worker falls back to 1 when its server mishandles pipelining.
    pub pipeline: u32,
    /// Bodies larger than this are refused without being buffered.
    pub max_file_size: u64,
    pub connect_timeout_ms: u64,
    /// Time from sending a request to receiving the response headers.
    pub first_byte_timeout_ms: u64,
    /// Longest pause between two pieces of a body.
    pub idle_timeout_ms: u64,
    /// The most one attempt at a file may take, redirects included.
    pub request_timeout_ms: u64,
    /// Attempts per name before a transient error becomes permanent.
    pub max_attempts: u32,
    /// First retry delay; doubles up to `backoff_max_ms`, with jitter.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Redirects followed per request, same host only.
    pub max_redirects: u32,
    /// How often the stats file is rewritten.
    pub stats_interval_ms: u64,
    /// Hooks that let tests make a worker misbehave on purpose.
    pub test_hooks: TestHooks,
}

/// Test-only behaviour. All off by default; set through hidden flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestHooks {
    /// Abort the worker process when a response carries the header
    /// `x-bulkget-test-abort` (the test server sends it for chosen names).
    pub abort_on_header: bool,
    /// Fail start-up (send `Fatal` and exit 1) on these shards.
    pub fail_start_shards: Vec<u32>,
}

impl WorkerSettings {
    /// Settings for tests and examples: sensible defaults for everything but
    /// the URL and the directories.
    pub fn for_test(base_url: &str, out_dir: &str, state_dir: &str) -> Self {
        WorkerSettings {
            base_url: base_url.trim_end_matches('/').to_string(),
            out_dir: out_dir.to_string(),
            state_dir: state_dir.to_string(),
            state_dir_in_out: None,
            sink: SinkKind::Dir,
            layout: Layout::Flat,
            resolve: Resolve::Openat2,
            connections: 8,
            pipeline: 1,
            max_file_size: 8 << 20,
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 10_000,
            idle_timeout_ms: 10_000,
            request_timeout_ms: 60_000,
            max_attempts: 8,
            backoff_base_ms: 10,
            backoff_max_ms: 2_000,
            max_redirects: 5,
            stats_interval_ms: 1_000,
            test_hooks: TestHooks::default(),
        }
    }
}
