//! The worker's counters and its stats file, `STATE/shards/shard-KK.json`.
//!
//! The per-file path only touches [`Counters`]: `Cell` adds and stores, an
//! array slot for the status code and a histogram bucket for the latency.
//! No lock, no atomic, no allocation. Once a second (and once more at exit)
//! [`StatsFile::write`] turns them into a [`ShardStats`] and replaces the file
//! by temporary file and rename, so a reader never sees half of it.

use bulkget_console::MESSAGES;
use bulkget_stats::{LatencyHistogram, Pace, RateWindow, ShardState, ShardStats, StatusCounts};
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Counters updated on the per-file path. Plain `Cell`s: the worker is one
/// thread, so counting costs an add and a store, with no lock or atomic.
#[derive(Default)]
pub struct Counters {
    /// What the worker is doing, as the stats file says: `starting` until
    /// the first batch, `running`, `draining` once told to finish up, and
    /// `exited` in the last snapshot.
    pub state: Cell<ShardState>,
    pub files_ok: Cell<u64>,
    pub files_failed: Cell<u64>,
    /// Names a refresh found in the sink already and did not fetch.
    pub files_present: Cell<u64>,
    pub bytes: Cell<u64>,
    pub retries: Cell<u64>,
    /// Requests sent again after a pipelined connection ended without
    /// answering them.
    pub pipeline_retries: Cell<u64>,
    /// Requests in flight per connection: `--pipeline`, or 1 after the
    /// fallback.
    pub pipeline_depth: Cell<u32>,
    pub in_flight: Cell<u64>,
    pub open_connections: Cell<u64>,
    pub connections_opened: Cell<u64>,
    pub batches_done: Cell<u64>,
    pub batches_stalled: Cell<u64>,
    pub status: RefCell<StatusCounts>,
    pub latency: RefCell<LatencyHistogram>,
}

impl Counters {
    /// A batch arrived: a starting worker is now running. A draining or
    /// exited one stays as it is.
    pub fn batch_received(&self) {
        if self.state.get() == ShardState::Starting {
            self.state.set(ShardState::Running);
        }
    }
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
        let mut rate = RateWindow::new(Duration::from_secs(5));
        // The rate counts from the start of the process, not from the first
        // snapshot, so the first snapshot already shows one.
        rate.sample(Instant::now(), 0);
        StatsFile {
            path,
            shard,
            generation,
            pid: std::process::id(),
            started_at: bulkget_stats::now_rfc3339(),
            rate: RefCell::new(rate),
            warned: Cell::new(false),
        }
    }

    /// The snapshot of `c` as of now. Feeds the rate window, so it is taken
    /// once per write, not to peek.
    pub fn snapshot(&self, c: &Counters, pace: Pace) -> ShardStats {
        let done = c.files_ok.get() + c.files_failed.get() + c.files_present.get();
        let mut rate = self.rate.borrow_mut();
        rate.sample(Instant::now(), done);
        ShardStats {
            schema_version: bulkget_stats::SCHEMA_VERSION,
            shard: self.shard,
            pid: self.pid,
            generation: self.generation,
            state: c.state.get(),
            started_at: self.started_at.clone(),
            updated_at: bulkget_stats::now_rfc3339(),
            files_ok: c.files_ok.get(),
            files_failed: c.files_failed.get(),
            files_present: c.files_present.get(),
            bytes: c.bytes.get(),
            retries: c.retries.get(),
            pipeline_retries: c.pipeline_retries.get(),
            pipeline_depth: c.pipeline_depth.get(),
            parks_held: crate::park::holds(),
            http_status: c.status.borrow().to_map(),
            in_flight: c.in_flight.get(),
            open_connections: c.open_connections.get(),
            connections_opened: c.connections_opened.get(),
            batches_done: c.batches_done.get(),
            batches_stalled: c.batches_stalled.get(),
            latency_ms: c.latency.borrow().latency(),
            latency_buckets: c
                .latency
                .borrow()
                .buckets(&bulkget_stats::schema::LATENCY_BOUNDS_SECONDS),
            files_per_sec: rate.rate(),
            pace,
        }
    }

    /// Takes a snapshot of `c` and replaces the file atomically (temporary
    /// file and rename). Called once a second and at exit, so the JSON
    /// formatting here is off the per-file path.
    pub fn write(&self, c: &Counters, pace: Pace) {
        let snapshot = self.snapshot(c, pace);
        if let Err(e) = bulkget_stats::write_json_atomic(&self.path, &snapshot) {
            // Stats are advisory: a full disk or a removed state directory
            // must not stop the downloads. Say so once.
            if !self.warned.replace(true) {
                tracing::warn!(
                    target: MESSAGES,
                    "bulkget worker {}: cannot write {}: {e}",
                    self.shard,
                    self.path.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_follows_the_counters_and_the_state() {
        // A directory of its own (the crate has no tempfile dependency).
        let root = std::env::temp_dir().join(format!(
            "bulkget-worker-stats-file-test-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("shards")).unwrap();
        struct Cleanup<'a>(&'a std::path::Path);
        impl Drop for Cleanup<'_> {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(self.0);
            }
        }
        let _cleanup = Cleanup(&root);
        let stats = StatsFile::new(root.to_str().unwrap(), 3, 2);
        let c = Counters::default();
        let read = || -> ShardStats {
            bulkget_stats::read_json(&root.join("shards/shard-03.json"))
                .unwrap()
                .unwrap()
        };
        stats.write(&c, Pace::default());
        let s = read();
        assert_eq!((s.shard, s.generation, s.pid), (3, 2, std::process::id()));
        assert_eq!(s.state, ShardState::Starting);
        assert_eq!(s.schema_version, bulkget_stats::SCHEMA_VERSION);

        c.batch_received();
        c.files_ok.set(7);
        c.bytes.set(700);
        c.retries.set(2);
        c.status.borrow_mut().record(200);
        c.status.borrow_mut().record_error();
        c.latency.borrow_mut().record(1_500);
        stats.write(&c, Pace::default());
        let s = read();
        assert_eq!(s.state, ShardState::Running);
        assert_eq!((s.files_ok, s.bytes, s.retries), (7, 700, 2));
        assert_eq!(s.http_status["200"], 1);
        assert_eq!(s.http_status["error"], 1);
        assert!(s.latency_ms.max >= 1.4, "{:?}", s.latency_ms);
        assert_eq!(s.latency_buckets.count, 1);
        assert_eq!(s.latency_buckets.counts.last(), Some(&1));
        assert!(s.files_per_sec > 0.0);
        assert_eq!(s.started_at, read().started_at);

        c.state.set(ShardState::Draining);
        c.batch_received();
        assert_eq!(c.state.get(), ShardState::Draining);
        c.state.set(ShardState::Exited);
        stats.write(&c, Pace::default());
        assert_eq!(read().state, ShardState::Exited);
        // Only the file itself: the temporary file was renamed over it.
        let names: Vec<_> = std::fs::read_dir(root.join("shards"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["shard-03.json"]);
    }
}
