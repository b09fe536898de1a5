//! Exit codes of `bulkget fetch`. Documented in the README; scripts rely on
//! them, so a code never changes meaning.

/// Every listed file is in the sink.
pub const OK: i32 = 0;
/// An unexpected error (I/O on the state directory, cannot spawn workers),
/// a worker of another build than the coordinator (the checkpoint is then
/// saved), or a failed write or sync of what makes the run durable
/// (`failed.jsonl`, the output file system, the checkpoint): then the run
/// stops at once and the last checkpoint saved before the failure is the
/// one to resume from.
pub const ERROR: i32 = 1;
/// Bad command line (clap also uses 2).
pub const USAGE: i32 = 2;
/// The run finished, but some files failed permanently; see `failed.jsonl`.
pub const FILES_FAILED: i32 = 3;
/// The listing failed (invalid page, loop, permanent HTTP error); the
/// checkpoint is saved and `--resume` retries from the failed page.
pub const LISTING_FAILED: i32 = 4;
/// Every shard's workers crashed too often without acknowledging anything,
/// and every shard was parked; the checkpoint is saved.
pub const ALL_PARKED: i32 = 5;
/// The state directory is in use, belongs to another run, or holds an
/// unfinished run and `--resume` was not given.
pub const STATE_CONFLICT: i32 = 6;
/// The output file system is full; the checkpoint is saved. Free space and
/// run again with `--resume`.
pub const NO_SPACE: i32 = 7;
/// The terminal hung up (SIGHUP); handled like SIGTERM, resumable.
pub const HANGUP: i32 = 129;
/// Interrupted by SIGINT (Ctrl-C); resumable.
pub const INTERRUPTED: i32 = 130;
/// Terminated by SIGTERM; resumable.
pub const TERMINATED: i32 = 143;
