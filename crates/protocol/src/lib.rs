//! Every type that crosses the Unix socket between the coordinator and a
//! worker, and the framing that carries them.
//!
//! # Layout
//!
//! - [`Version`]: the first frame each way on a worker's socket, so that a
//!   coordinator and a worker of different builds say so instead of
//!   misreading each other (see [`PROTOCOL_VERSION`] and [`build_id`]).
//! - [`ToWorker`] and [`ToCoordinator`]: one enum per direction.
//! - [`WorkerSettings`]: everything a worker needs, sent in [`ToWorker::Hello`],
//!   so that a worker takes no command-line flags of its own beyond its socket.
//! - [`frame`]: length-prefixed bincode frames, with a synchronous decoder
//!   ([`frame::decode`]) that the async reader and the fuzz target share.
//!
//! Architecture invariant: no other crate defines a type that is sent over
//! the socket, and no other crate knows how frames are laid out.

pub mod build_id;
pub mod frame;
mod names;

pub use names::Names;

pub use build_id::build_id;
use serde::{Deserialize, Serialize};
use std::fmt;

// The process contract: what the coordinator and a worker (or a reader of
// the output directory) must agree on besides the frames. One constant
// each, used by both sides.

/// The hidden subcommand of the `bulkget` binary that runs a worker.
pub const WORKER_SUBCOMMAND: &str = "worker";

/// The file descriptor on which a worker finds its socket. The coordinator
/// puts it there with `dup2` between `fork` and `exec`.
pub const WORKER_FD: i32 = 3;

/// The name of the default state directory inside the output directory. No
/// sink writes a name whose first component is this.
pub const STATE_DIR_NAME: &str = ".bulkget";

/// The version of the conversation on the socket. Raise it with every
/// change to the layout of a message (a field added, removed or retyped, a
/// variant added anywhere but last, reordered or removed), so that a peer
/// of the old layout is told apart instead of misreading frames.
pub const PROTOCOL_VERSION: u32 = 4;

/// Who speaks on a worker's socket. It is the first frame each way: the
/// coordinator sends its own before its [`ToWorker::Hello`], and a worker
/// answers with its own before anything else, before it even reads the
/// hello. The coordinator and its workers must be the same build: both
/// fields must be equal, or the coordinator stops the run with one clear
/// error (a worker of another build would otherwise crash on, or worse
/// misread, every frame).
///
/// Its layout never changes (a `u32`, then a string), whatever
/// [`PROTOCOL_VERSION`] says, so every build can read every other's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub protocol: u32,
    /// The executable's build: see [`build_id`].
    pub build: String,
}

impl Version {
    /// This process's version: [`PROTOCOL_VERSION`] and [`build_id`].
    pub fn current() -> Version {
        Version {
            protocol: PROTOCOL_VERSION,
            build: build_id().to_string(),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "protocol {}, build {}", self.protocol, self.build)
    }
}

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
        /// Boxed: the settings outweigh every other message; the wire form
        /// is the same as unboxed.
        settings: Box<WorkerSettings>,
    },
    /// Names to fetch. The worker answers with exactly one
    /// [`ToCoordinator::BatchDone`] carrying the same `id`.
    Batch { id: BatchId, names: Vec<String> },
    /// Stop. With `drain`, finish the batches already received first;
    /// without, exit at once.
    Shutdown { drain: bool },
    /// The worker's share of the run's request budget: at most `rps_milli`
    /// / 1000 GET requests a second, retries included (0: no limit). Sent
    /// after the hello, before any batch, and again whenever the share
    /// changes (`--max-rps` divided among the working shards, a run-wide
    /// slow-down after pushback). `slowdown` says that a run-wide
    /// slow-down is part of the share, for the stats file.
    Pace { rps_milli: u64, slowdown: bool },
}

/// A message from a worker to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCoordinator {
    /// The worker has read its hello, opened its sink and is ready for work.
    /// (The coordinator knows the worker's pid from spawning it.)
    Ready,
    /// Every name of batch `id` is in the sink (`ok` of them, `bytes` in
    /// all) or has failed permanently (`failures`). Sent only after the
    /// sink has made the batch durable (for SQLite: after the commit).
    /// `retries` counts the attempts of the batch's names that were retried
    /// (a name fetched at its third attempt counts 2), so the run's total
    /// survives worker restarts, which reset the worker's own counters.
    /// `present` counts the names a refresh found already in the sink and
    /// did not fetch (always 0 outside a refresh); they are in neither `ok`
    /// nor `failures`.
    BatchDone {
        id: BatchId,
        ok: u32,
        bytes: u64,
        retries: u32,
        present: u32,
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
    /// and `ok`, `bytes`, `retries`, `present` and `failures` count them; `waiting`
    /// lists, in increasing order, the positions (in the batch as sent) of
    /// the names still to do. Sent at most once per batch, always before its
    /// `BatchDone`, which then counts only the names in `waiting`.
    BatchStalled {
        id: BatchId,
        ok: u32,
        bytes: u64,
        retries: u32,
        present: u32,
        failures: Vec<Failure>,
        waiting: Vec<u32>,
    },
    /// What the worker's requests met since its last report, sent once a
    /// stats interval while it works: `clean` answers (anything but
    /// pushback, errors included) and `pushback` answers (429 and 503).
    /// The coordinator decides a run-wide slow-down from these.
    Pressure { clean: u32, pushback: u32 },
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
///
/// Its strings are bounded: [`Failure::new`] cuts an over-long reason to
/// [`MAX_REASON_BYTES`] and an over-long name to [`MAX_FAILURE_NAME_BYTES`],
/// and a failure decoded from a frame goes through it too. A reason often
/// quotes what the server sent (a status line, a `Location`); without the
/// cap one hostile answer became a line of `failed.jsonl` as long as itself
/// for every name, and a `BatchDone` over [`frame::MAX_FRAME`]. Other crates
/// cannot build a `Failure` but through `new` (`non_exhaustive`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "FailureFields")]
#[non_exhaustive]
pub struct Failure {
    pub name: String,
    /// A human-readable reason, e.g. `"HTTP 404 Not Found"`.
    pub reason: String,
    /// The last HTTP status seen for this name, if any.
    pub status: Option<u16>,
}

/// The longest failure reason kept, in bytes; a longer one is cut in the
/// middle and says so (see [`cut_text`]).
pub const MAX_REASON_BYTES: usize = 512;

/// The longest name kept in a failure, in bytes. Above the longest name that
/// may be written (`bulkget_names::MAX_NAME_BYTES`, 3,840), so only names
/// refused as unsafe are ever cut.
pub const MAX_FAILURE_NAME_BYTES: usize = 4096;

impl Failure {
    /// A failure with its name and reason cut to their limits.
    pub fn new(name: impl Into<String>, reason: impl Into<String>, status: Option<u16>) -> Failure {
        Failure {
            name: cut_owned(name.into(), MAX_FAILURE_NAME_BYTES),
            reason: cut_owned(reason.into(), MAX_REASON_BYTES),
            status,
        }
    }
}

/// The wire form of [`Failure`]: decoding goes through [`Failure::new`], so
/// a failure from a frame is bounded like one built here.
#[derive(Deserialize)]
struct FailureFields {
    name: String,
    reason: String,
    status: Option<u16>,
}

impl From<FailureFields> for Failure {
    fn from(f: FailureFields) -> Failure {
        Failure::new(f.name, f.reason, f.status)
    }
}

fn cut_owned(text: String, max: usize) -> String {
    match cut_text(&text, max) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(cut) => cut,
    }
}

/// `text` if it is at most `max` bytes long; otherwise its start and its end
/// around a note of what was cut (`head [... 299,512 bytes cut ...] tail`),
/// at most `max` bytes in all and never splitting a character. The end is
/// kept because that is where messages say what was expected or how often
/// something was tried. This is the one rule for shortening text that a
/// server controls before it is stored or printed.
pub fn cut_text(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    // The note is never longer than with every byte of `text` cut.
    let note = |cut: usize| format!(" [... {cut} bytes cut ...] ");
    let budget = max.saturating_sub(note(text.len()).len());
    if budget == 0 {
        // No room for a note: a plain cut, which still keeps the bound.
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        return std::borrow::Cow::Borrowed(&text[..end]);
    }
    let mut head = budget * 2 / 3;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - (budget - head);
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    let mut out = String::with_capacity(max);
    out.push_str(&text[..head]);
    out.push_str(&note(tail - head));
    out.push_str(&text[tail..]);
    std::borrow::Cow::Owned(out)
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

/// Which HTTP version a worker speaks (`--http-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpVersion {
    /// HTTP/2 when TLS's ALPN offers it on `https://`, HTTP/1.1 otherwise.
    Auto,
    /// HTTP/1.1 always.
    Http1,
    /// HTTP/2 always: on `http://`, h2c with prior knowledge.
    Http2,
}

impl HttpVersion {
    /// Whether a connection may speak HTTP/2: TLS's ALPN offers `h2` then,
    /// and the server's choice decides.
    pub fn allows_http2(self) -> bool {
        self != HttpVersion::Http1
    }
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
    /// Concurrent requests, one task each: over HTTP/1.1 one connection
    /// each; over HTTP/2 streams that share a few connections.
    pub connections: u32,
    pub http_version: HttpVersion,
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
    /// Headers sent on every request (`-H`), as `(name, value)`. They reach
    /// the worker only through this message, never through its arguments or
    /// environment, and their values never leave memory.
    pub headers: Vec<(String, Secret)>,
    /// How to verify an `https://` service and what client certificate to
    /// offer. Paths, not contents: the files are read by each process.
    pub tls: TlsSettings,
    /// The proxy to tunnel through, already chosen by the coordinator from
    /// its flags and environment (`NO_PROXY` applied); the worker's
    /// environment is cleared of the proxy variables.
    pub proxy: Option<ProxySettings>,
    /// A refresh (`--refresh`): a name already in the sink is counted as
    /// present and not fetched.
    pub refresh: bool,
    /// Hooks that let tests make a worker misbehave on purpose.
    pub test_hooks: TestHooks,
    /// `--adaptive on`: the in-flight limit and the rate adapt to the
    /// service (see the worker's governor); off, every request task sends
    /// as fast as answers come, as before.
    pub adaptive: bool,
}

/// A value that must never be written anywhere (a header value, proxy
/// credentials): its `Debug` shows `<redacted>`, so a settings dump in a
/// log cannot leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The TLS options of the command line (`--cacert`, `--client-cert`,
/// `--client-key`, `--insecure`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsSettings {
    pub cacert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub insecure: bool,
}

/// A proxy reached with `CONNECT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxySettings {
    /// Host name or IP address, without brackets.
    pub host: String,
    pub port: u16,
    /// The `Proxy-Authorization` value, from the proxy URL's credentials.
    pub authorization: Option<Secret>,
}

/// Test-only behaviour. All off by default; set through hidden flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestHooks {
    /// Abort the worker process when a response carries the header
    /// `x-bulkget-test-abort` (the test server sends it for chosen names).
    pub abort_on_header: bool,
    /// Fail start-up (send `Fatal` and exit 1) on these shards.
    pub fail_start_shards: Vec<u32>,
    /// On these shards, the first worker (generation 0) closes its socket
    /// right after the hello and stays alive, as a worker stuck on its way
    /// out would, until the coordinator kills it.
    pub linger_shards: Vec<u32>,
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
            http_version: HttpVersion::Auto,
            pipeline: 16,
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
            headers: Vec::new(),
            tls: TlsSettings::default(),
            proxy: None,
            refresh: false,
            test_hooks: TestHooks::default(),
            adaptive: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_in_the_middle_within_the_limit_and_says_so() {
        assert_eq!(cut_text("short", 512), "short");
        let location = format!("bad redirect: Location {} refused", "x".repeat(300_000));
        let cut = cut_text(&location, 512);
        assert!(cut.len() <= 512, "{}", cut.len());
        assert!(cut.starts_with("bad redirect: Location xxx"), "{cut}");
        assert!(cut.ends_with("xxx refused"), "{cut}");
        assert!(cut.contains(" bytes cut ...] "), "{cut}");
        // Characters are never split, whatever the limit.
        let wide = "é".repeat(1000);
        for max in [0, 1, 2, 3, 40, 41, 511, 512] {
            let cut = cut_text(&wide, max);
            assert!(cut.len() <= max, "{max}: {}", cut.len());
        }
    }

    #[test]
    fn failures_are_bounded_when_built_and_when_decoded() {
        let f = Failure::new("n".repeat(100_000), "r".repeat(300_000), Some(301));
        assert!(f.name.len() <= MAX_FAILURE_NAME_BYTES);
        assert!(f.reason.len() <= MAX_REASON_BYTES);
        // A name that may be written is never cut.
        let safe = "d/".repeat(1919) + "ab";
        assert_eq!(safe.len(), 3840);
        assert_eq!(Failure::new(safe.clone(), "r", None).name, safe);
        // A failure decoded from a frame (a worker of another build, a
        // corrupt frame) is cut the same way.
        #[derive(Serialize)]
        struct Raw {
            name: String,
            reason: String,
            status: Option<u16>,
        }
        let config = bincode::config::standard();
        let raw = Raw {
            name: "x".into(),
            reason: "r".repeat(300_000),
            status: None,
        };
        let bytes = bincode::serde::encode_to_vec(&raw, config).unwrap();
        let (f, _): (Failure, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(f.name, "x");
        assert!(f.reason.len() <= MAX_REASON_BYTES);
    }
}
