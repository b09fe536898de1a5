//! The worker's counters and its stats file, `STATE/shards/shard-KK.json`.

use bulkget_stats::{LatencyHistogram, RateWindow, ShardState, ShardStats, StatusCounts};
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Counters updated on the per-file path. Plain `Cell`s: the worker is one
/// thread, so counting costs an add and a store, with no lock or atomic.
#[derive(Default)]
pub struct Counters {
    pub files_ok: Cell<u64>,
    pub files_failed: Cell<u64>,
    pub bytes: Cell<u64>,
    pub retries: Cell<u64>,
    pub in_flight: Cell<u64>,
    pub open_connections: Cell<u64>,
    pub connections_opened: Cell<u64>,
    pub batches_done: Cell<u64>,
    pub status: RefCell<StatusCounts>,
    pub latency: RefCell<LatencyHistogram>,
}

/// Writes one shard's stats file. Only the shard's own worker writes it.
pub struct StatsFile {
    path: PathBuf,
    shard: u32,
    generation: u32,
    pid: u32,
    started_at: String,
    rate: RefCell<RateWindow>,
    warned: Cell<bool>,
}

impl StatsFile {
    pub fn new(state_dir: &str, shard: u32, generation: u32) -> StatsFile {
        let path = bulkget_stats::schema::shard_path(state_dir.as_ref(), shard);
        StatsFile {
            path,
            shard,
            generation,
            pid: std::process::id(),
            started_at: bulkget_stats::now_rfc3339(),
            rate: RefCell::new(RateWindow::new(Duration::from_secs(5))),
            warned: Cell::new(false),
        }
    }

    /// Takes a snapshot of `c` and replaces the file atomically. Called once
    /// a second, so the JSON formatting here is off the per-file path.
    pub fn write(&self, c: &Counters, state: ShardState) {
        let done = c.files_ok.get() + c.files_failed.get();
        let mut rate = self.rate.borrow_mut();
        rate.sample(Instant::now(), done);
        let snapshot = ShardStats {
            schema_version: bulkget_stats::SCHEMA_VERSION,
            shard: self.shard,
            pid: self.pid,
            generation: self.generation,
            state,
            started_at: self.started_at.clone(),
            updated_at: bulkget_stats::now_rfc3339(),
            files_ok: c.files_ok.get(),
            files_failed: c.files_failed.get(),
            bytes: c.bytes.get(),
            retries: c.retries.get(),
            http_status: c.status.borrow().to_map(),
            in_flight: c.in_flight.get(),
            open_connections: c.open_connections.get(),
            connections_opened: c.connections_opened.get(),
            batches_done: c.batches_done.get(),
            latency_ms: c.latency.borrow().latency(),
            files_per_sec: rate.rate(),
        };
        if let Err(e) = bulkget_stats::write_json_atomic(&self.path, &snapshot) {
            // Stats are advisory: a full disk or a removed state directory
            // must not stop the downloads. Say so once.
            if !self.warned.replace(true) {
                eprintln!(
                    "bulkget worker {}: cannot write {}: {e}",
                    self.shard,
                    self.path.display()
                );
            }
        }
    }
}
