//! `--metrics-addr ADDR`: the coordinator serves `GET /metrics` in the
//! Prometheus text format (OpenMetrics, as `prometheus-client` encodes it).
//!
//! The numbers are the run's: the coordinator's own counters (files, bytes,
//! retries, pages and names listed, restarts, shards parked), from the
//! snapshot the run loop builds for `coordinator.json` each second, and the
//! shards' (HTTP statuses, requests in flight, connections, the latency
//! histogram, and the in-flight limit, request budget and back-off when a
//! worker reports them), read from their stats files. Everything runs on a
//! thread of its own, which reads the files and answers scrapes, so a scrape
//! costs the run loop nothing; the run loop only hands it each snapshot.
//!
//! Counters never go down. A shard file counts from the start of its worker
//! process, so when a worker is replaced (a restart), the last numbers read
//! from the one before are kept as a base under the new one's. The thread
//! reads the files every second, scraped or not, so a crashed worker's
//! last second at most is missing from the shard counters (never from the
//! coordinator's, which count acknowledgements).

use bulkget_stats::schema::{
    shard_path, Backoff, CoordinatorStats, RunState, ShardState, ShardStats, SummaryState,
    LATENCY_BOUNDS_SECONDS,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the thread reads the shard files between scrapes.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long the thread sleeps when no scrape is waiting.
const IDLE_SLEEP: Duration = Duration::from_millis(25);
/// The most of a request read; a scrape's request is a few hundred bytes.
const MAX_REQUEST: usize = 16 << 10;

/// The content type of the OpenMetrics text format, which Prometheus reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One shard's counters across its worker processes.
#[derive(Debug, Default, Clone)]
struct ShardTotals {
    /// What the worker processes before the current one counted last.
    base_status: BTreeMap<String, u64>,
    base_buckets: Vec<u64>,
    base_count: u64,
    base_sum: f64,
    base_connections_opened: u64,
    /// The current process's last snapshot.
    current: Option<ShardStats>,
}

impl ShardTotals {
    /// Takes a newer snapshot of the shard's file. A snapshot of another
    /// process (pid or start time differ) retires the current one's
    /// numbers into the base.
    fn update(&mut self, next: ShardStats) {
        if let Some(cur) = &self.current {
            let same = cur.pid == next.pid && cur.started_at == next.started_at;
            if !same {
                let cur = self.current.take().expect("checked");
                for (status, n) in cur.http_status {
                    *self.base_status.entry(status).or_default() += n;
                }
                let b = &cur.latency_buckets;
                if self.base_buckets.len() < b.counts.len() {
                    self.base_buckets.resize(b.counts.len(), 0);
                }
                for (base, n) in self.base_buckets.iter_mut().zip(&b.counts) {
                    *base += n;
                }
                self.base_count += b.count;
                self.base_sum += b.sum_seconds;
                self.base_connections_opened += cur.connections_opened;
            }
        }
        self.current = Some(next);
    }

    /// Whether the current process is running (its numbers of the moment,
    /// such as requests in flight, mean something).
    fn live(&self) -> Option<&ShardStats> {
        self.current
            .as_ref()
            .filter(|s| s.state != ShardState::Exited)
    }
}

/// What the thread knows, shared with the run loop.
#[derive(Debug, Default)]
struct Shared {
    coordinator: Option<CoordinatorStats>,
    shards: Vec<ShardTotals>,
    /// A scrape was answered with the run's final numbers.
    final_scraped: bool,
}

/// The `/metrics` server of a run.
pub struct Metrics {
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The address as bound (the port chosen, for `:0`).
    pub addr: SocketAddr,
}

impl Metrics {
    /// Binds `addr` and starts the thread that serves it and reads the
    /// stats files of `shards` shards in `state_dir`.
    pub fn start(addr: SocketAddr, state_dir: PathBuf, shards: usize) -> std::io::Result<Metrics> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared {
            shards: vec![ShardTotals::default(); shards],
            ..Shared::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name("bulkget-metrics".into())
                .spawn(move || serve(listener, &shared, &stop, &state_dir))?
        };
        Ok(Metrics {
            shared,
            stop,
            thread: Some(thread),
            addr,
        })
    }

    /// Hands over the run loop's latest snapshot.
    pub fn publish(&self, stats: &CoordinatorStats) {
        lock(&self.shared).coordinator = Some(stats.clone());
    }

    /// Once the final snapshot is published: waits until a scrape has
    /// answered with it, or `linger` has passed, then stops serving.
    pub fn finish(mut self, linger: Duration) {
        let deadline = Instant::now() + linger;
        while Instant::now() < deadline && !lock(&self.shared).final_scraped {
            std::thread::sleep(IDLE_SLEEP);
        }
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The lock, even if a panic poisoned it (the data is plain numbers).
fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

fn serve(
    listener: TcpListener,
    shared: &Mutex<Shared>,
    stop: &AtomicBool,
    state_dir: &std::path::Path,
) {
    let mut last_poll: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if last_poll.is_none_or(|t| t.elapsed() >= POLL_EVERY) {
            poll_shards(shared, state_dir);
            last_poll = Some(Instant::now());
        }
        match listener.accept() {
            Ok((stream, _)) => {
                poll_shards(shared, state_dir);
                last_poll = Some(Instant::now());
                // A client that misbehaves loses its scrape, nothing more.
                let _ = answer(stream, shared);
            }
            Err(_) => std::thread::sleep(IDLE_SLEEP),
        }
    }
}

/// Reads every shard file (a missing or unreadable one is skipped: it may
/// be being replaced, or not written yet).
fn poll_shards(shared: &Mutex<Shared>, state_dir: &std::path::Path) {
    let n = lock(shared).shards.len();
    let mut read = Vec::with_capacity(n);
    for k in 0..n {
        let path = shard_path(state_dir, k as u32);
        read.push(bulkget_stats::read_json::<ShardStats>(&path).ok().flatten());
    }
    let mut s = lock(shared);
    for (totals, snapshot) in s.shards.iter_mut().zip(read) {
        if let Some(snapshot) = snapshot {
            totals.update(snapshot);
        }
    }
}

/// Reads one request and answers it: `GET /metrics` with the metrics,
/// anything else with 404 or 405. One request per connection.
fn answer(mut stream: TcpStream, shared: &Mutex<Shared>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => {
            let mut s = lock(shared);
            let body = render(&s);
            if s.coordinator
                .as_ref()
                .is_some_and(|c| c.exit_code.is_some())
            {
                s.final_scraped = true;
            }
            ("200 OK", CONTENT_TYPE, body)
        }
        (_, b"/metrics") => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "bulkget serves /metrics\n".to_string(),
        ),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// The exposition of everything known now.
fn render(s: &Shared) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot::of(s)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// The numbers of one scrape, summed over the shards.
#[derive(Debug, Default)]
struct Snapshot {
    coordinator: Option<CoordinatorStats>,
    http_status: BTreeMap<String, u64>,
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
    connections_opened: u64,
    in_flight: u64,
    open_connections: u64,
    in_flight_limit: Option<u64>,
    rps_limit: Option<f64>,
    backing_off_own: u64,
    backing_off_run_wide: u64,
}

impl Snapshot {
    fn of(s: &Shared) -> Snapshot {
        let mut snap = Snapshot {
            coordinator: s.coordinator.clone(),
            buckets: vec![0; LATENCY_BOUNDS_SECONDS.len()],
            ..Snapshot::default()
        };
        for t in &s.shards {
            for (status, n) in &t.base_status {
                *snap.http_status.entry(status.clone()).or_default() += n;
            }
            for (sum, n) in snap.buckets.iter_mut().zip(&t.base_buckets) {
                *sum += n;
            }
            snap.count += t.base_count;
            snap.sum += t.base_sum;
            snap.connections_opened += t.base_connections_opened;
            if let Some(cur) = &t.current {
                for (status, n) in &cur.http_status {
                    *snap.http_status.entry(status.clone()).or_default() += n;
                }
                // Only buckets of the bounds this build knows add up.
                if cur.latency_buckets.le_seconds == LATENCY_BOUNDS_SECONDS {
                    for (sum, n) in snap.buckets.iter_mut().zip(&cur.latency_buckets.counts) {
                        *sum += n;
                    }
                }
                snap.count += cur.latency_buckets.count;
                snap.sum += cur.latency_buckets.sum_seconds;
                snap.connections_opened += cur.connections_opened;
            }
            if let Some(live) = t.live() {
                snap.in_flight += live.in_flight;
                snap.open_connections += live.open_connections;
                // A worker that has not yet written its pace (a limit of
                // 0) is left out rather than shown as stopped.
                if live.pace.in_flight_limit > 0 {
                    *snap.in_flight_limit.get_or_insert(0) += live.pace.in_flight_limit;
                }
                if let Some(r) = live.pace.rps_limit {
                    *snap.rps_limit.get_or_insert(0.0) += r;
                }
                match live.pace.backoff {
                    Backoff::Own => snap.backing_off_own += 1,
                    Backoff::RunWide => snap.backing_off_run_wide += 1,
                    Backoff::None | Backoff::Unknown => {}
                }
            }
        }
        snap
    }
}

/// Writes one metric without labels.
fn one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Writes one metric with one label, a value per label value.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    label: &str,
    values: impl IntoIterator<Item = (String, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (value, metric) in values {
        metric.encode(family.encode_family(&[(label, value.as_str())])?)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new;
        let gauge = |v: i64| ConstGauge::new(v);
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if let Some(c) = &self.coordinator {
            family(
                &mut e,
                "bulkget_files",
                "Listed names done: fetched into the sink (ok), failed for good, or found in the sink already by a refresh (present).",
                MetricType::Counter,
                "result",
                [
                    ("ok".to_string(), counter(c.files_ok)),
                    ("failed".to_string(), counter(c.files_failed)),
                    ("present".to_string(), counter(c.files_present)),
                ],
            )?;
            one(
                &mut e,
                "bulkget_bytes",
                "Payload bytes of the files fetched into the sink.",
                &counter(c.bytes),
            )?;
            one(
                &mut e,
                "bulkget_retries",
                "Request attempts retried, for the files acknowledged.",
                &counter(c.retries),
            )?;
            one(
                &mut e,
                "bulkget_list_pages",
                "List pages received.",
                &counter(c.pages_listed),
            )?;
            one(
                &mut e,
                "bulkget_listed_names",
                "Names received from the listing.",
                &counter(c.names_listed),
            )?;
            let restarts: u64 = c.shards.iter().map(|s| u64::from(s.restarts)).sum();
            one(
                &mut e,
                "bulkget_worker_restarts",
                "Worker processes restarted after a crash.",
                &counter(restarts),
            )?;
            one(
                &mut e,
                "bulkget_shards",
                "Shards (worker processes) of the run.",
                &gauge(c.shards.len() as i64),
            )?;
            let parked = c
                .shards
                .iter()
                .filter(|s| s.state == SummaryState::Parked)
                .count();
            one(
                &mut e,
                "bulkget_shards_parked",
                "Shards parked after crashing too often; the run goes on without them.",
                &gauge(parked as i64),
            )?;
            one(
                &mut e,
                "bulkget_batches_queued",
                "Batches waiting for room in a shard's window.",
                &gauge(int(c.batches_queued)),
            )?;
            one(
                &mut e,
                "bulkget_listing_done",
                "1 once the last list page has been received.",
                &gauge(i64::from(c.listing_done)),
            )?;
            let state = match c.state {
                RunState::Listing => "listing",
                RunState::Draining => "draining",
                RunState::Finished => "finished",
                RunState::Failed => "failed",
                RunState::Interrupted => "interrupted",
                _ => "unknown",
            };
            family(
                &mut e,
                "bulkget_run_state",
                "The run's state, as in coordinator.json: 1 for the current one.",
                MetricType::Gauge,
                "state",
                [(state.to_string(), gauge(1))],
            )?;
        }
        family(
            &mut e,
            "bulkget_http_responses",
            "Responses to file requests by HTTP status (error: no response), every attempt counted.",
            MetricType::Counter,
            "status",
            self.http_status.iter().map(|(s, n)| (s.clone(), counter(*n))),
        )?;
        one(
            &mut e,
            "bulkget_connections_opened",
            "HTTP connections opened by the workers.",
            &counter(self.connections_opened),
        )?;
        one(
            &mut e,
            "bulkget_requests_in_flight",
            "File requests started and not finished.",
            &gauge(int(self.in_flight)),
        )?;
        one(
            &mut e,
            "bulkget_open_connections",
            "HTTP connections open now.",
            &gauge(int(self.open_connections)),
        )?;
        if let Some(limit) = self.in_flight_limit {
            one(
                &mut e,
                "bulkget_requests_in_flight_limit",
                "The limit on file requests in flight now, summed over the shards.",
                &gauge(int(limit)),
            )?;
        }
        if let Some(budget) = self.rps_limit {
            one(
                &mut e,
                "bulkget_request_budget_per_second",
                "File requests per second the shards may send now (--max-rps and back-off), summed.",
                &ConstGauge::new(budget),
            )?;
        }
        // Always shown: 0 is the news that nothing is backing off.
        family(
            &mut e,
            "bulkget_shards_backing_off",
            "Shards slowed by pushback from the server (429, 503) now: on their own, or by the run-wide slow-down.",
            MetricType::Gauge,
            "by",
            [
                ("own".to_string(), gauge(int(self.backing_off_own))),
                ("run_wide".to_string(), gauge(int(self.backing_off_run_wide))),
            ],
        )?;
        // Per-bucket (not cumulative) counts, as the encoder wants them,
        // ending with +Inf for the attempts slower than the last bound.
        let mut buckets = Vec::with_capacity(self.buckets.len() + 1);
        let mut below = 0;
        for (&le, &cumulative) in LATENCY_BOUNDS_SECONDS.iter().zip(&self.buckets) {
            buckets.push((le, cumulative.saturating_sub(below)));
            below = below.max(cumulative);
        }
        buckets.push((f64::INFINITY, self.count.saturating_sub(below)));
        let mut histogram = e.encode_descriptor(
            "bulkget_request_duration_seconds",
            "File request attempts, from sending the request to the last byte of the body.",
            None,
            MetricType::Histogram,
        )?;
        histogram.encode_histogram::<NoLabelSet>(self.sum, self.count, &buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkget_stats::schema::LatencyBuckets;

    fn shard(pid: u32, ok_200: u64, le_counts: Vec<u64>) -> ShardStats {
        let count = le_counts.last().copied().unwrap_or(0);
        ShardStats {
            pid,
            started_at: format!("t{pid}"),
            state: ShardState::Running,
            http_status: BTreeMap::from([("200".to_string(), ok_200)]),
            in_flight: 3,
            latency_buckets: LatencyBuckets {
                le_seconds: LATENCY_BOUNDS_SECONDS.to_vec(),
                counts: le_counts,
                count,
                sum_seconds: count as f64 * 0.001,
            },
            ..ShardStats::default()
        }
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    /// A restarted worker counts from zero; the sums do not go down, and
    /// the histogram is cumulative and ends with +Inf.
    #[test]
    fn counters_survive_a_worker_restart() {
        let mut s = Shared {
            shards: vec![ShardTotals::default(); 1],
            ..Shared::default()
        };
        let mut counts = vec![0; 16];
        counts[2..].fill(10);
        s.shards[0].update(shard(7, 10, counts.clone()));
        let before = render(&s);
        assert_eq!(
            value(&before, "bulkget_http_responses_total{status=\"200\"}"),
            10.0
        );
        assert_eq!(value(&before, "bulkget_requests_in_flight"), 3.0);
        let mut counts = vec![0; 16];
        counts[3..].fill(4);
        s.shards[0].update(shard(8, 4, counts));
        let after = render(&s);
        assert_eq!(
            value(&after, "bulkget_http_responses_total{status=\"200\"}"),
            14.0
        );
        assert_eq!(
            value(&after, "bulkget_request_duration_seconds_count"),
            14.0
        );
        assert_eq!(
            value(
                &after,
                "bulkget_request_duration_seconds_bucket{le=\"0.001\"}"
            ),
            10.0
        );
        assert_eq!(
            value(
                &after,
                "bulkget_request_duration_seconds_bucket{le=\"0.0025\"}"
            ),
            14.0
        );
        assert_eq!(
            value(
                &after,
                "bulkget_request_duration_seconds_bucket{le=\"+Inf\"}"
            ),
            14.0
        );
        assert!(after.ends_with("# EOF\n"), "{after}");
        // Options that no shard reports are not shown.
        assert!(
            !after.contains("bulkget_requests_in_flight_limit"),
            "{after}"
        );
    }
}
