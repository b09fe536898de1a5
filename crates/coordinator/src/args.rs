//! The command lines of `bulkget fetch` and `bulkget list`.

use bulkget_http::{HeaderName, HeaderValue};
use bulkget_protocol::TestHooks;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkArg {
    /// One file per name under OUT.
    Dir,
    /// One SQLite database per shard: OUT/shard-KK.sqlite.
    Sqlite,
    /// Keep nothing; count and check lengths (for benchmarks).
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// OUT/<name>.
    Flat,
    /// OUT/ab/cd/<name>, from a hash of the name (recommended above ~1M files).
    Fanout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressArg {
    /// A bar on a terminal; plain lines otherwise, and always with --log-format json.
    Auto,
    Bar,
    Plain,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HttpVersionArg {
    Auto,
    #[value(name = "1.1")]
    Http1,
    #[value(name = "2")]
    Http2,
}

impl From<HttpVersionArg> for bulkget_protocol::HttpVersion {
    fn from(v: HttpVersionArg) -> Self {
        match v {
            HttpVersionArg::Auto => bulkget_protocol::HttpVersion::Auto,
            HttpVersionArg::Http1 => bulkget_protocol::HttpVersion::Http1,
            HttpVersionArg::Http2 => bulkget_protocol::HttpVersion::Http2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Download every file the service lists into OUT.
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// The service's base URL, e.g. http://127.0.0.1:8080 or http://host/api.
    pub url: String,
    /// The output directory (created if missing).
    pub out: PathBuf,
    /// Worker processes (shards). Default: the number of CPUs.
    #[arg(long, short = 'w')]
    pub workers: Option<usize>,
    /// Request tasks per worker, the upper bound on its sockets: keep-alive
    /// connections over HTTP/1.1 (each carrying up to --pipeline requests
    /// on plain http); over HTTP/2, streams multiplexed on a few
    /// connections. With --adaptive on, connections are opened only as the
    /// in-flight limit grows into them, so this is a ceiling, not a count
    /// (high enough for a service tens of milliseconds away); with
    /// --adaptive off, every one of them is used.
    #[arg(long, short = 'c', default_value_t = 256)]
    pub connections: u32,
    /// A cap on GET requests a second across all workers together, retries
    /// included; each working shard gets an equal share. Default: no cap.
    #[arg(long, value_name = "N", value_parser = parse_rps, help_heading = "Politeness")]
    pub max_rps: Option<f64>,
    /// on: each worker's requests in flight adapt (AIMD: grow while answers
    /// are clean, up to --connections × the pipeline depth, halve on 429 or
    /// 503; the latency floor decides how they spread over connections) and
    /// its send rate is cut to what the service serves when it pushes back;
    /// several shards refused in one second slow the whole run. off: every
    /// request task sends as fast as answers come, as before adaptation.
    #[arg(long, value_enum, default_value_t = Toggle::On, help_heading = "Politeness")]
    pub adaptive: Toggle,
    /// HTTP/1.1 pipelining: requests in flight on each connection (1: off),
    /// on plain http:// over HTTP/1.1 (over TLS or HTTP/2 it does not
    /// apply). A server that mishandles pipelining (closes connections
    /// early, stalls or misframes a response) makes each worker fall back to
    /// 1, logged once. 16 measured 1.43 × wrk's unpipelined rate and 0.25 ×
    /// the CPU per file of depth 1 against a server that writes each answer
    /// on its own. Depths above 25 fall back against a server that closes
    /// each connection after 100 requests, as Apache does by default
    /// (docs/BENCHMARKS.md).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=bulkget_http::MAX_PIPELINE_DEPTH as i64))]
    pub pipeline: u32,
    /// Where files go.
    #[arg(long, value_enum, default_value_t = SinkArg::Dir)]
    pub sink: SinkArg,
    /// Directory layout for the dir sink.
    #[arg(long, value_enum, default_value_t = LayoutArg::Flat)]
    pub layout: LayoutArg,
    /// State directory (lock, checkpoint, failed.jsonl, stats). Default: OUT/.bulkget.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Continue the unfinished run in the state directory from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// On a finished run: list the whole service again and fetch only the
    /// names not in the sink yet (dir: no file of that name; sqlite: no
    /// row). Checkpointed like any run: an interrupted refresh continues
    /// with --resume, as a refresh.
    #[arg(long)]
    pub refresh: bool,
    /// Names per batch sent to a worker. Each batch costs a frame each way
    /// and wake-ups of both processes: with pipelining, 1,024 measured 0.77
    /// to 0.80 × the CPU per file of 256 (a window of 32 batches of 256 did
    /// not help: the cost is per batch). A worker holds at most --window ×
    /// --batch-size names, so the defaults hold twice the default in-flight
    /// bound (--connections × --pipeline): a batch leaves the window only
    /// when its last name is done.
    #[arg(long, default_value_t = 1024)]
    pub batch_size: usize,
    /// Unacknowledged batches per worker that still have names to fetch
    /// (back-pressure window). A batch whose remaining names all wait on a
    /// retry timer (Retry-After) steps out of the window, so the window only
    /// has to keep the connections busy: throughput is flat from 4 up, and
    /// 8 leaves a margin (docs/BENCHMARKS.md).
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Largest file accepted, in bytes; larger ones fail without being buffered.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_file_size: u64,
    /// The most one attempt at a file may take, redirects included, however
    /// steadily the server trickles (e.g. 60s, 1500ms). A miss is retried.
    /// Enough for a file of a few MB on a slow link; raise it with
    /// --max-file-size for larger files.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Seconds to let in-flight batches finish after Ctrl-C or SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub grace: u64,
    /// Park a shard whose workers crash more than this many times without
    /// acknowledging anything (crashes blamed on a suspect batch excepted) ...
    #[arg(long, default_value_t = 5)]
    pub restart_burst: u32,
    /// ... within this many seconds.
    #[arg(long, default_value_t = 10)]
    pub restart_interval: u64,
    /// Seconds between checkpoints.
    #[arg(long, default_value_t = 5)]
    pub checkpoint_interval: u64,
    /// Stop cleanly (checkpoint saved, exit 7) when OUT's file system has less
    /// free space than this, in MiB, so no file or database is left torn by a
    /// full disk.
    #[arg(long, default_value_t = 64)]
    pub min_free_mb: u64,
    /// Stop cleanly when OUT's file system has fewer free inodes than this
    /// (dir sink only; each file takes one).
    #[arg(long, default_value_t = 10_000)]
    pub min_free_inodes: u64,
    /// Progress display on stderr.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,
    /// No progress and no summary; errors only (each failed file is one:
    /// named on stderr, capped as without --quiet).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Serve GET /metrics in the Prometheus text format on this address
    /// (e.g. 127.0.0.1:9100; port 0 picks one, written to coordinator.json
    /// as metrics_addr). See docs/STATS.md for the metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// With --metrics-addr: after the run ends, keep serving until a scrape
    /// has seen the final numbers, at most this long (e.g. 30s; a scraper
    /// that polls every 15 s needs 15s).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub metrics_linger: Duration,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// The number of files the service is expected to list, if known: the
    /// progress shows a percentage and an ETA from the start instead of
    /// only once the listing ends (the count listed wins once it is larger).
    #[arg(long, value_name = "N")]
    pub expected_files: Option<u64>,
    #[command(flatten)]
    pub test: TestArgs,
}

/// The hidden `--test-*` flags the end-to-end tests use to make a run fail
/// in chosen ways. They exist only in a build with the `test-hooks` cargo
/// feature, which `cargo test` turns on (the root package's dev-dependencies)
/// and a release build does not: a binary people run has none of them, and
/// its workers ignore any hook a settings frame might carry.
#[derive(Args, Debug, Clone, Default)]
pub struct TestArgs {
    /// Test hook: a worker aborts when a response carries x-bulkget-test-abort.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    pub test_abort_on_header: bool,
    /// Test hook: workers of this shard fail at start-up.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    pub test_fail_start_shard: Vec<u32>,
    /// Test hook: the sync of the output file system after N successful
    /// ones fails once (EIO), as the kernel reports a lost write-back once.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, value_name = "N")]
    pub test_fail_sync_after: Option<u64>,
    /// Test hook: the first worker of this shard closes its socket after the
    /// hello and does not exit.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    pub test_linger_shard: Vec<u32>,
    /// Test hook: the coordinator announces this build id to its workers
    /// instead of its own, as a coordinator of another build would.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    pub test_announce_build: Option<String>,
}

#[cfg(feature = "test-hooks")]
impl TestArgs {
    /// The hooks the workers act on.
    pub fn worker_hooks(&self) -> TestHooks {
        TestHooks {
            abort_on_header: self.test_abort_on_header,
            fail_start_shards: self.test_fail_start_shard.clone(),
            linger_shards: self.test_linger_shard.clone(),
        }
    }

    /// After how many successful syncs of OUT one fails.
    pub fn fail_sync_after(&self) -> Option<u64> {
        self.test_fail_sync_after
    }

    /// The build id to announce to the workers instead of this one's.
    pub fn announced_build(&self) -> Option<&str> {
        self.test_announce_build.as_deref()
    }
}

/// Without the feature every hook is off.
#[cfg(not(feature = "test-hooks"))]
impl TestArgs {
    pub fn worker_hooks(&self) -> TestHooks {
        TestHooks::default()
    }

    pub fn fail_sync_after(&self) -> Option<u64> {
        None
    }

    pub fn announced_build(&self) -> Option<&str> {
        None
    }
}

/// How the service is reached and listed: the flags `fetch` and `list`
/// share (flattened into both), so that a listing behaves the same in
/// either command.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// HTTP version: `auto` speaks HTTP/2 when TLS's ALPN offers it on
    /// https and HTTP/1.1 otherwise; `2` on an http:// URL is h2c with
    /// prior knowledge.
    #[arg(long, value_enum, default_value_t = HttpVersionArg::Auto)]
    pub http_version: HttpVersionArg,
    /// Largest list page accepted, in bytes. It bounds the coordinator's
    /// memory: at most about 5 x this plus 95 bytes a name (ARCHITECTURE.md,
    /// "Memory"); a page of 2,000,000 names of 15 bytes is 36 MB.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_page_size: u64,
    /// TCP connect timeout, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub connect_timeout_ms: u64,
    /// Time allowed from request to response headers, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub first_byte_timeout_ms: u64,
    /// Longest silence allowed inside a body, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub idle_timeout_ms: u64,
    /// The most one attempt at a list page may take (e.g. 120s). A miss is
    /// retried. Enough for a server that takes its first-byte timeout to
    /// start a page of a few hundred KB and then sends it slowly.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub list_timeout: Duration,
    /// Attempts per file (and per list page) before a transient error is permanent.
    #[arg(long, default_value_t = 10)]
    pub max_attempts: u32,
    /// First retry delay in milliseconds; doubles per attempt, with jitter.
    #[arg(long, default_value_t = 50)]
    pub retry_base_ms: u64,
    /// Longest retry delay in milliseconds (a server's Retry-After may ask for more, up to 120 s).
    #[arg(long, default_value_t = 10_000)]
    pub retry_max_ms: u64,
    /// A header sent on every request, list and get: 'Name: value'
    /// (repeatable). '@FILE' reads 'Name: value' lines from FILE (blank lines
    /// and lines starting with # are skipped), so a secret stays out of the
    /// process list. Values are never written anywhere; run.json records
    /// the names, and --resume needs the same headers again.
    #[arg(
        long,
        short = 'H',
        value_name = "'NAME: VALUE' | @FILE",
        help_heading = "Real services"
    )]
    pub header: Vec<String>,
    /// Trust only the CA certificates in this PEM file for an https:// URL,
    /// instead of the system's trusted roots.
    #[arg(long, value_name = "FILE", help_heading = "Real services")]
    pub cacert: Option<PathBuf>,
    /// A PEM client certificate (chain) for mutual TLS; needs --client-key.
    #[arg(long, value_name = "FILE", help_heading = "Real services")]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(long, value_name = "FILE", help_heading = "Real services")]
    pub client_key: Option<PathBuf>,
    /// Do not verify the server's certificate (a warning is printed on every
    /// run that uses this).
    #[arg(long, short = 'k', help_heading = "Real services")]
    pub insecure: bool,
    /// Tunnel every connection through this http:// proxy with CONNECT:
    /// [http://][user:password@]host[:port] (port 1080 by default). Overrides
    /// https_proxy, http_proxy and all_proxy; "" uses no proxy.
    #[arg(long, value_name = "URL", help_heading = "Real services")]
    pub proxy: Option<String>,
    /// Hosts reached without the proxy, comma-separated ("*" for all);
    /// overrides no_proxy / NO_PROXY.
    #[arg(long, value_name = "LIST", help_heading = "Real services")]
    pub noproxy: Option<String>,
}

/// Which listed names are fetched (or printed by `list`): the flags `fetch`
/// and `list` share. See [`crate::filter`].
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Fetch only names that match this glob (repeatable; a name matching
    /// any --include is kept). `*` and `?` match `/` too; `**`, `{a,b}`
    /// and `[a-z]` work as in globset. Default: every name.
    #[arg(long, value_name = "GLOB", help_heading = "Filters")]
    pub include: Vec<String>,
    /// Skip names that match this glob (repeatable), even if an --include
    /// matches. Skipped names are counted as excluded; a resume must give
    /// the same --include and --exclude.
    #[arg(long, value_name = "GLOB", help_heading = "Filters")]
    pub exclude: Vec<String>,
}

/// How `bulkget list` writes names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// One name a line, escaped so that a name is always one line and sends
    /// nothing to a terminal: a backslash is written \\, and every character
    /// Rust's {:?} escapes but quotes (control characters such as newline,
    /// tab and ESC, and invisible ones such as U+202E) as it escapes them:
    /// \n, \t, \u{1b}, \u{202e}.
    Text,
    /// One JSON string a line.
    Jsonl,
    /// Each name followed by a NUL byte, as is (for xargs -0).
    Nul,
}

/// Print the names the service lists, without fetching anything.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// The service's base URL, e.g. http://127.0.0.1:8080 or http://host/api.
    pub url: String,
    /// How names are written.
    #[arg(long, value_enum, default_value_t = ListFormat::Text)]
    pub format: ListFormat,
    /// Write the names to FILE instead of stdout (replaced only when the
    /// listing is complete).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// No progress on stderr; errors only.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// The headers of `-H`, in order, with `@FILE` read: `(name, value)`. An
/// error names the argument or the file and line, never a value.
pub fn read_headers(args: &[String]) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut headers = Vec::new();
    for arg in args {
        match arg.strip_prefix('@') {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the header file {path}: {e}"))?;
                for (i, line) in text.lines().enumerate() {
                    let trimmed = line.trim();
                    if trimmed.is_empty() || trimmed.starts_with('#') {
                        continue;
                    }
                    let header = bulkget_http::transport::parse_header(trimmed)
                        .map_err(|e| format!("{path} line {}: {e}", i + 1))?;
                    headers.push(header);
                }
            }
            None => headers
                .push(bulkget_http::transport::parse_header(arg).map_err(|e| format!("-H: {e}"))?),
        }
    }
    Ok(headers)
}

/// `--max-rps`: a positive, finite number of requests a second.
fn parse_rps(s: &str) -> Result<f64, String> {
    let rps: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if rps.is_finite() && rps > 0.0 {
        Ok(rps)
    } else {
        Err(format!("{s} is not a positive number of requests a second"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fetch: FetchArgs,
    }

    /// A worker cannot keep more requests in flight than it holds names, so
    /// with the defaults the names it may hold (window × batch) must reach
    /// its in-flight bound (connections × pipeline depth), with room for
    /// the batches whose last names are still out.
    #[test]
    fn default_names_held_cover_twice_the_in_flight_bound() {
        let args = Cli::try_parse_from(["bulkget", "http://127.0.0.1:1", "out"])
            .unwrap()
            .fetch;
        let held = args.window * args.batch_size;
        let in_flight = args.connections as usize * args.pipeline as usize;
        assert!(
            held >= 2 * in_flight,
            "window {} × batch {} = {held} names held, under twice {in_flight} in flight",
            args.window,
            args.batch_size
        );
    }
}
