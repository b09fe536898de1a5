//! A trial of two client designs on the worker's runtime: the engine's one
//! task per keep-alive connection against hyper-util's pooled `Client`.
//!
//! ```text
//! cargo run --release -p bulkget-worker --example client_trial -- BASE_URL N C MODE
//! ```
//!
//! BASE_URL is a running `bulkget-server` with at least N files (names are
//! `file-{i:010}`, `i < N`, so nothing is listed and the listing is never
//! measured). C request loops run on one `current_thread` runtime inside a
//! `LocalSet`, as in the worker, and pull indices from one shared counter.
//! MODE is one of:
//!
//! * `tasks`: each loop owns a `bulkget_http::Conn` and calls `Conn::get`
//!   with the worker's default `Limits`, exactly as `engine.rs` does.
//! * `pool`: each loop calls `Client::request` on one shared
//!   `hyper_util::client::legacy::Client` (`HttpConnector` with
//!   `set_nodelay(true)`, `pool_max_idle_per_host(C)`) and reads the body
//!   frame by frame into a reused buffer, under the same first-byte and
//!   idle-body timeouts and the same `Content-Length` check as `Conn`. This
//!   is the like-for-like design, because the engine may not send a request
//!   without a timeout (ARCHITECTURE.md, `crates/http`).
//! * `pool-bare`: the same pooled client with no timeouts and no length
//!   check: the pool's own cost, as a lower bound for any pooled design.
//!
//! Every response must be 200 with a non-empty body; any failure ends the
//! run with exit status 1, because a run with errors measures something else.
//! The program prints one line of `key=value` fields: the mode, N, C, wall
//! seconds, user+system CPU seconds of the process (getrusage), files per
//! second, CPU microseconds per file, bytes, and how many TCP connections
//! the server accepted during the timed part (from `GET /_stats`).

// A measuring tool run by hand: printing with the std macros is fine here.
#![allow(clippy::disallowed_macros)]

use std::cell::Cell;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bulkget_http::{Conn, Endpoint, Limits, Transport};
use bytes::{Buf, Bytes};
use http::header::{CONTENT_LENGTH, USER_AGENT};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::timeout;

/// The worker's defaults (`WorkerSettings::for_test` and the `fetch`
/// defaults), so that `tasks` runs `Conn::get` under the limits it runs
/// under in production, and `pool` gets the same timeouts.
const LIMITS: Limits = Limits {
    first_byte: Duration::from_secs(10),
    idle: Duration::from_secs(10),
    max_body: 8 << 20,
    max_redirects: 5,
    deadline: Duration::from_secs(60),
};
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `Conn` sends a User-Agent; the pooled modes send the same one, so that
/// both designs put the same bytes on the wire.
static UA: HeaderValue = HeaderValue::from_static(concat!("bulkget/", env!("CARGO_PKG_VERSION")));

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tasks,
    Pool,
    PoolBare,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        match s {
            "tasks" => Some(Mode::Tasks),
            "pool" => Some(Mode::Pool),
            "pool-bare" => Some(Mode::PoolBare),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Tasks => "tasks",
            Mode::Pool => "pool",
            Mode::PoolBare => "pool-bare",
        }
    }
}

/// What the request loops share. Single-threaded, like the engine's state:
/// `Cell`s only, never borrowed across an `.await`.
struct Shared {
    endpoint: Endpoint,
    n: u64,
    next: Cell<u64>,
    files: Cell<u64>,
    bytes: Cell<u64>,
    /// Connections the `tasks` loops opened (the pool opens its own, which
    /// only the server's count shows).
    connects: Cell<u64>,
}

impl Shared {
    /// The next index to fetch, or `None` when all N are taken.
    fn take(&self) -> Option<u64> {
        let i = self.next.get();
        if i >= self.n {
            return None;
        }
        self.next.set(i + 1);
        Some(i)
    }

    fn done(&self, len: usize) {
        self.files.set(self.files.get() + 1);
        self.bytes.set(self.bytes.get() + len as u64);
    }

    /// Appends `{prefix}/get/{encoded name}` for index `i`, formatting the
    /// name into `name` first; both buffers are reused across requests.
    fn push_path(&self, out: &mut String, name: &mut String, i: u64) {
        name.clear();
        let _ = write!(name, "file-{i:010}");
        out.push_str(&self.endpoint.prefix);
        out.push_str("/get/");
        bulkget_names::push_url_encoded(out, name);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: client_trial BASE_URL N C tasks|pool|pool-bare";
    let [url, n, c, mode] = args.as_slice() else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let (Ok(endpoint), Ok(n), Ok(c), Some(mode)) = (
        Endpoint::parse(url),
        n.parse::<u64>(),
        c.parse::<usize>(),
        Mode::parse(mode),
    ) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    if c == 0 {
        eprintln!("{usage} (C must be at least 1)");
        return ExitCode::from(2);
    }

    // The worker's runtime: one thread, and the connection tasks on a
    // LocalSet (crates/worker/src/session.rs).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, trial(endpoint, n, c, mode)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("client_trial: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn trial(endpoint: Endpoint, n: u64, c: usize, mode: Mode) -> Result<(), String> {
    // The stats connection is opened before the first count, so it is in
    // both counts and the difference is exactly the timed part's connections.
    let mut stats = StatsConn::open(&endpoint).await?;
    let accepted_before = stats.connections_accepted(&endpoint).await?;

    let shared = Rc::new(Shared {
        endpoint: endpoint.clone(),
        n,
        next: Cell::new(0),
        files: Cell::new(0),
        bytes: Cell::new(0),
        connects: Cell::new(0),
    });

    // Built outside the timed part, as the engine would build it once per
    // worker; connecting is inside, for both modes.
    let client = (mode != Mode::Tasks).then(|| {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(c)
            .build::<_, Empty<Bytes>>(connector)
    });

    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut loops = Vec::with_capacity(c);
    for _ in 0..c {
        let shared = shared.clone();
        let client = client.clone();
        loops.push(tokio::task::spawn_local(async move {
            match (mode, client) {
                (Mode::Tasks, _) => tasks_loop(&shared).await,
                (_, Some(client)) => pool_loop(&shared, &client, mode == Mode::Pool).await,
                (_, None) => unreachable!("the pooled modes build a client"),
            }
        }));
    }
    let mut first_error = None;
    for l in loops {
        let result = l.await.map_err(|e| format!("request loop panicked: {e}"))?;
        if let Err(e) = result {
            first_error.get_or_insert(e);
            // Stop the other loops from taking more work; they finish the
            // request they are on.
            shared.next.set(n);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    if let Some(e) = first_error {
        return Err(e);
    }
    // Dropping the client closes its idle connections; it is not timed,
    // like dropping the `Conn`s, which happened when the loops returned.
    drop(client);

    let accepted = stats.connections_accepted(&endpoint).await? - accepted_before;
    let files = shared.files.get();
    if files != n {
        return Err(format!("fetched {files} files of {n}"));
    }
    println!(
        "mode={} n={n} c={c} wall_s={wall:.3} cpu_s={cpu:.3} files_per_s={:.0} \
         us_cpu_per_file={:.3} bytes={} conns_accepted={accepted} client_connects={}",
        mode.name(),
        n as f64 / wall,
        cpu * 1e6 / n as f64,
        shared.bytes.get(),
        if mode == Mode::Tasks {
            shared.connects.get().to_string()
        } else {
            "-".to_string()
        },
    );
    Ok(())
}

/// One connection task of the engine, minus the sink and the retries: a
/// trial with errors is void anyway.
async fn tasks_loop(shared: &Shared) -> Result<(), String> {
    let mut conn: Option<Conn> = None;
    let mut path = String::with_capacity(256);
    let mut name = String::with_capacity(64);
    let mut body = Vec::with_capacity(4096);
    while let Some(i) = shared.take() {
        if conn.as_ref().is_none_or(|c| !c.is_usable()) {
            // The engine reconnects the same way when the server closes a
            // connection; counted, so churn would show.
            conn = Some(
                Conn::connect(&shared.endpoint, &Transport::plain(CONNECT_TIMEOUT))
                    .await
                    .map_err(|e| format!("connect: {e}"))?,
            );
            shared.connects.set(shared.connects.get() + 1);
        }
        let live = conn.as_mut().expect("connected above");
        path.clear();
        shared.push_path(&mut path, &mut name, i);
        let response = live
            .get(&shared.endpoint, &path, &LIMITS, &mut body)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        check(&path, response.status, body.len())?;
        shared.done(body.len());
    }
    Ok(())
}

/// One request loop over the shared pool. With `guarded`, the request and
/// every body frame run under `Conn`'s timeouts and the body is checked
/// against `Content-Length`, as `Conn::get_once` does.
async fn pool_loop(
    shared: &Shared,
    client: &Client<HttpConnector, Empty<Bytes>>,
    guarded: bool,
) -> Result<(), String> {
    let base = format!("http://{}", shared.endpoint.authority);
    let mut name = String::with_capacity(64);
    let mut body = Vec::with_capacity(4096);
    while let Some(i) = shared.take() {
        // The request owns its URI, so this String is moved into it (no
        // copy) and a new one is allocated per request: a cost the pooled
        // API imposes, where `Conn::get` parses a borrowed path instead.
        let mut url = String::with_capacity(base.len() + 64);
        url.push_str(&base);
        shared.push_path(&mut url, &mut name, i);
        let uri = Uri::try_from(url).map_err(|e| format!("uri: {e}"))?;
        let mut req = Request::get(uri)
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        req.headers_mut().insert(USER_AGENT, UA.clone());

        let response = if guarded {
            timeout(LIMITS.first_byte, client.request(req))
                .await
                .map_err(|_| format!("file {i}: first-byte timeout"))?
        } else {
            client.request(req).await
        }
        .map_err(|e| format!("file {i}: {e}"))?;

        let status = response.status().as_u16();
        let declared = if guarded {
            response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        } else {
            None
        };
        if declared.is_some_and(|d| d > LIMITS.max_body) {
            return Err(format!("file {i}: body of {declared:?} bytes is too large"));
        }
        let mut incoming = response.into_body();
        body.clear();
        loop {
            let frame = if guarded {
                timeout(LIMITS.idle, incoming.frame())
                    .await
                    .map_err(|_| format!("file {i}: idle-body timeout"))?
            } else {
                incoming.frame().await
            };
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| format!("file {i}: body: {e}"))?;
            if let Ok(mut data) = frame.into_data() {
                while data.has_remaining() {
                    let chunk = data.chunk();
                    body.extend_from_slice(chunk);
                    let len = chunk.len();
                    data.advance(len);
                }
            }
        }
        if let Some(d) = declared {
            if body.len() as u64 != d {
                return Err(format!("file {i}: {} bytes of {d}", body.len()));
            }
        }
        check(&format!("file {i}"), status, body.len())?;
        shared.done(body.len());
    }
    Ok(())
}

fn check(what: &str, status: u16, len: usize) -> Result<(), String> {
    if status != 200 {
        return Err(format!("{what}: status {status}"));
    }
    if len == 0 {
        return Err(format!("{what}: empty body"));
    }
    Ok(())
}

/// User plus system CPU seconds of this process, all threads.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given, which is a
    // plain C struct for which all zeros is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_SELF) cannot fail");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A keep-alive connection for `GET /_stats`, outside the measured loops.
struct StatsConn {
    conn: Conn,
    /// Connections this reader itself opened after the first one, which the
    /// server counts too and which must not be blamed on the trial.
    reopened: u64,
}

impl StatsConn {
    async fn open(endpoint: &Endpoint) -> Result<StatsConn, String> {
        let conn = Conn::connect(endpoint, &Transport::plain(CONNECT_TIMEOUT))
            .await
            .map_err(|e| format!("connect for /_stats: {e}"))?;
        Ok(StatsConn { conn, reopened: 0 })
    }

    /// The server's `connections_accepted`, less the reconnections of this
    /// reader. The test server has no idle timeout today, but a reconnect
    /// must not silently inflate the trial's count if it gets one.
    async fn connections_accepted(&mut self, endpoint: &Endpoint) -> Result<u64, String> {
        if !self.conn.is_usable() {
            self.conn = Conn::connect(endpoint, &Transport::plain(CONNECT_TIMEOUT))
                .await
                .map_err(|e| format!("connect for /_stats: {e}"))?;
            self.reopened += 1;
        }
        let mut body = Vec::new();
        self.conn
            .get(endpoint, "/_stats", &LIMITS, &mut body)
            .await
            .map_err(|e| format!("GET /_stats: {e}"))?;
        // One number from a flat JSON object; a JSON parser would be a
        // dependency for a single field.
        let text = String::from_utf8_lossy(&body);
        let key = "\"connections_accepted\":";
        let at = text
            .find(key)
            .ok_or_else(|| format!("/_stats has no {key} field: {text}"))?;
        let digits: String = text[at + key.len()..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("/_stats: bad connections_accepted in {text}"))?;
        Ok(n - self.reopened)
    }
}
