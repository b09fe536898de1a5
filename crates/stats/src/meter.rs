//! Everything a worker counts, in one place, and its snapshot.
//!
//! [`ShardMeter`] gathers the counters, the latency histogram, the status
//! counts and the rate window that make up a [`ShardStats`]. The worker is
//! single-threaded, so the counters are plain `u64` fields it increments
//! directly (shared between tasks through an `Rc<RefCell<_>>` or a `Cell` if
//! need be: no lock, no atomic). Once a second, [`ShardMeter::write`] builds
//! the snapshot and replaces the shard's stats file.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::atomic::write_json_atomic;
use crate::histogram::LatencyHistogram;
use crate::http_status::StatusCounts;
use crate::rate::RateWindow;
use crate::schema::{shard_path, ShardState, ShardStats, SCHEMA_VERSION};
use crate::time::format_rfc3339;

/// A worker's counters since its process started.
#[derive(Debug, Clone)]
pub struct ShardMeter {
    pub state: ShardState,
    pub files_ok: u64,
    pub files_failed: u64,
    pub bytes: u64,
    pub retries: u64,
    pub in_flight: u64,
    pub open_connections: u64,
    pub connections_opened: u64,
    pub batches_done: u64,
    /// Per attempt, request sent to last body byte, failed attempts included.
    pub latency: LatencyHistogram,
    pub http_status: StatusCounts,
    shard: u32,
    pid: u32,
    generation: u32,
    started_at: String,
    rate: RateWindow,
}

impl ShardMeter {
    /// A meter for this process, which started at wall time `started` and
    /// monotonic time `now`.
    pub fn new(shard: u32, generation: u32, started: SystemTime, now: Instant) -> Self {
        let mut rate = RateWindow::default();
        rate.sample(now, 0);
        ShardMeter {
            state: ShardState::Starting,
            files_ok: 0,
            files_failed: 0,
            bytes: 0,
            retries: 0,
            in_flight: 0,
            open_connections: 0,
            connections_opened: 0,
            batches_done: 0,
            latency: LatencyHistogram::new(),
            http_status: StatusCounts::new(),
            shard,
            pid: std::process::id(),
            generation,
            started_at: format_rfc3339(started),
            rate,
        }
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// A file's bytes are in the sink.
    #[inline]
    pub fn file_ok(&mut self, bytes: u64) {
        self.files_ok += 1;
        self.bytes += bytes;
    }

    /// A file failed for good.
    #[inline]
    pub fn file_failed(&mut self) {
        self.files_failed += 1;
    }

    /// An attempt got a response with this status, after `latency`.
    #[inline]
    pub fn response(&mut self, status: u16, latency: Duration) {
        self.http_status.record(status);
        self.latency.record_duration(latency);
    }

    /// An attempt ended without a status (connect error, reset, timeout)
    /// after `latency`. Its time counts in the latency too: a timeout is
    /// exactly what the `max` should show.
    #[inline]
    pub fn transport_error(&mut self, latency: Duration) {
        self.http_status.record_error();
        self.latency.record_duration(latency);
    }

    /// The stats file's content as of `now` (monotonic, for the rate) and
    /// `wall` (for `updated_at`). Feeds the rate window, so call it once per
    /// period, not to peek.
    pub fn snapshot(&mut self, now: Instant, wall: SystemTime) -> ShardStats {
        self.rate.sample(now, self.files_ok + self.files_failed);
        ShardStats {
            schema_version: SCHEMA_VERSION,
            shard: self.shard,
            pid: self.pid,
            generation: self.generation,
            state: self.state,
            started_at: self.started_at.clone(),
            updated_at: format_rfc3339(wall),
            files_ok: self.files_ok,
            files_failed: self.files_failed,
            bytes: self.bytes,
            retries: self.retries,
            http_status: self.http_status.to_map(),
            in_flight: self.in_flight,
            open_connections: self.open_connections,
            connections_opened: self.connections_opened,
            batches_done: self.batches_done,
            batches_stalled: 0,
            latency_ms: self.latency.latency(),
            files_per_sec: self.rate.rate(),
        }
    }

    /// Takes a snapshot and replaces `STATE/shards/shard-KK.json` with it.
    /// Creates `STATE/shards` if it is missing, so a worker started by hand
    /// (or before the coordinator made the directory) still reports.
    pub fn write(&mut self, state_dir: &Path, now: Instant, wall: SystemTime) -> io::Result<()> {
        let stats = self.snapshot(now, wall);
        let path = shard_path(state_dir, self.shard);
        match write_json_atomic(&path, &stats) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                write_json_atomic(&path, &stats)
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atomic::read_json;

    #[test]
    fn snapshot_reflects_counters_and_rate() {
        let t0 = Instant::now();
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut m = ShardMeter::new(4, 2, wall0, t0);
        m.state = ShardState::Running;
        for _ in 0..500 {
            m.file_ok(100);
            m.response(200, Duration::from_millis(2));
        }
        m.response(503, Duration::from_millis(40));
        m.retries += 1;
        m.transport_error(Duration::from_secs(10));
        m.file_failed();
        let s = m.snapshot(t0 + Duration::from_secs(1), wall0 + Duration::from_secs(1));
        assert_eq!(s.schema_version, SCHEMA_VERSION);
        assert_eq!((s.shard, s.generation, s.pid), (4, 2, std::process::id()));
        assert_eq!(s.state, ShardState::Running);
        assert_eq!(s.started_at, "2023-11-14T22:13:20.000Z");
        assert_eq!(s.updated_at, "2023-11-14T22:13:21.000Z");
        assert_eq!((s.files_ok, s.files_failed, s.bytes), (500, 1, 50_000));
        assert_eq!(s.http_status["200"], 500);
        assert_eq!(s.http_status["503"], 1);
        assert_eq!(s.http_status["error"], 1);
        assert!((s.latency_ms.p50 - 2.0).abs() < 0.01, "{:?}", s.latency_ms);
        assert_eq!(s.latency_ms.max, 10_000.0);
        assert!((s.files_per_sec - 501.0).abs() < 1e-9);
    }

    #[test]
    fn write_creates_the_shards_directory() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut m = ShardMeter::new(7, 0, SystemTime::now(), t0);
        m.file_ok(10);
        m.write(dir.path(), t0, SystemTime::now()).unwrap();
        m.file_ok(10);
        m.write(dir.path(), t0, SystemTime::now()).unwrap();
        let s: ShardStats = read_json(&dir.path().join("shards/shard-07.json"))
            .unwrap()
            .unwrap();
        assert_eq!(s.files_ok, 2);
    }
}
