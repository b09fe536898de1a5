//! The worker process.
//!
//! A worker is started by the coordinator (`bulkget worker`, a hidden
//! subcommand) with one end of a Unix socket pair as file descriptor 3. It
//! runs one tokio `current_thread` runtime, so everything below runs on one
//! thread and shares state through `Rc` and `Cell` with no locks or atomics
//! on the per-file path (the runtime's park hook, on the same thread, reads
//! a thread-local `Cell`: [`park`]).
//!
//! # Theory of operation
//!
//! ```text
//!  socket ──> main loop ──> queue of (batch, index) ──> C connection tasks ──> sink.put
//!                 ^                                              │ last name of a batch
//!                 └── outbox <── committer: sink.commit, BatchDone ┘
//! ```
//!
//! - [`engine`]: the queue, the connection tasks, retries and completion.
//! - [`session`]: the conversation with the coordinator: hello, batches,
//!   shutdown, end of stream; and the process's exit.
//! - [`stats_file`]: `shards/shard-KK.json`, rewritten every interval.
//! - [`park`]: the short wait before the thread sleeps, so that it wakes to
//!   many answers at once.
//!
//! Invariants: a `BatchDone` is sent only after the sink commit that covers
//! every name of the batch; a worker whose socket reaches end-of-stream
//! exits at once (the coordinator is gone, nobody can acknowledge its work);
//! only this shard's worker writes this shard's stats file.

pub mod engine;
pub mod governor;
pub mod park;
pub mod session;
pub mod stats_file;

pub use session::{run_on_fd, WORKER_FD};

use bulkget_protocol::{TestHooks, WorkerSettings};

/// The test hooks this worker acts on: those its settings carry in a build
/// with the `test-hooks` cargo feature (which `cargo test` turns on), none
/// otherwise, so a release binary ignores them whatever a frame says.
pub(crate) fn test_hooks(settings: &WorkerSettings) -> &TestHooks {
    static NONE: TestHooks = TestHooks {
        abort_on_header: false,
        fail_start_shards: Vec::new(),
        linger_shards: Vec::new(),
    };
    if cfg!(feature = "test-hooks") {
        &settings.test_hooks
    } else {
        &NONE
    }
}
