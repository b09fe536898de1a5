//! Request handling: routing, `/list`, `/get`, `/_stats`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};

use crate::args::{ListFault, RequiredHeader, ServerArgs};
use crate::body::{Ending, ServerBody};
use crate::content::fill_content_at;
use crate::dataset::{Dataset, Served};
use crate::faults::{Attempt, Attempts, FaultKind, Transient};
use crate::listing::ListFaults;
use crate::stats::{PathKind, Stats};

/// The header that tells a client run with its test hook to abort: the
/// client's own constant, so the two cannot drift apart.
pub use bulkget_http::TEST_ABORT_HEADER as CRASH_HEADER;

/// Where `--offhost-redirect-name` points: another host, on the discard
/// port, that a correct client never contacts.
pub const OFFHOST_BASE: &str = "http://127.0.0.2:9/get/";

/// Everything a request needs, shared by all connections.
pub(crate) struct App {
    pub(crate) dataset: Dataset,
    pub(crate) stats: Stats,
    attempts: Attempts,
    list_faults: ListFaults,
    fail_once_pending: AtomicBool,
    /// `--list-fault trickle` has not yet trickled its page.
    trickle_page_pending: AtomicBool,
    prefix: String,
    latency: Duration,
    /// `--rate-limit`: GETs over it are answered 429 at once.
    rate_limit: Option<crate::rate_limit::RateLimit>,
    list_delay: Duration,
    slow: Duration,
    slow_pieces: u64,
    trickle: Duration,
    required_headers: Vec<RequiredHeader>,
    location_bytes: usize,
    /// `--keepalive-requests`: responses per connection, 0 for no limit.
    keepalive_requests: u64,
}

/// Normalises `--prefix`: empty or `/x/y`, never a trailing slash.
pub(crate) fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

impl App {
    pub(crate) fn new(args: &ServerArgs) -> App {
        App {
            dataset: Dataset::from_args(args),
            stats: Stats::default(),
            attempts: Attempts::new(args.fault_attempts),
            list_faults: ListFaults::new(args),
            fail_once_pending: AtomicBool::new(args.list_fault.contains(&ListFault::FailOnce)),
            trickle_page_pending: AtomicBool::new(args.list_fault.contains(&ListFault::Trickle)),
            prefix: normalize_prefix(&args.prefix),
            latency: Duration::from_millis(args.latency_ms),
            rate_limit: (args.rate_limit > 0)
                .then(|| crate::rate_limit::RateLimit::new(args.rate_limit, Instant::now())),
            list_delay: Duration::from_millis(args.list_delay_ms),
            slow: Duration::from_millis(args.slow_ms),
            slow_pieces: args.slow_pieces,
            trickle: Duration::from_millis(args.trickle_ms),
            required_headers: args.require_header.clone(),
            location_bytes: args.location_bytes,
            keepalive_requests: args.keepalive_requests,
        }
    }

    /// The first `--require-header` that the request lacks (or carries with
    /// another value), if any.
    fn missing_header(&self, headers: &HeaderMap) -> Option<&RequiredHeader> {
        self.required_headers.iter().find(|required| {
            !headers
                .get_all(&required.name)
                .iter()
                .any(|value| value == required.value)
        })
    }
}

enum Route {
    List,
    Get { raw: String, redirected: bool },
    Stats,
    Other,
}

fn route(prefix: &str, path: &str) -> Route {
    // The stats live at the root too, so that a test need not know the
    // prefix to read them.
    if path == "/_stats" {
        return Route::Stats;
    }
    let Some(rest) = path.strip_prefix(prefix) else {
        return Route::Other;
    };
    if rest == "/list" {
        Route::List
    } else if rest == "/_stats" {
        Route::Stats
    } else if let Some(raw) = rest.strip_prefix("/get/") {
        Route::Get {
            raw: raw.to_owned(),
            redirected: false,
        }
    } else if let Some(raw) = rest.strip_prefix("/get-redirected/") {
        Route::Get {
            raw: raw.to_owned(),
            redirected: true,
        }
    } else {
        Route::Other
    }
}

fn json_error(status: StatusCode, message: &str) -> Response<ServerBody> {
    let body = serde_json::to_vec(&serde_json::json!({ "error": message }))
        .expect("serialising a JSON value cannot fail");
    let mut resp = Response::new(ServerBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The `next-marker` parameter of a query string, percent-decoded.
fn next_marker(query: Option<&str>) -> Option<Option<String>> {
    let Some(query) = query else {
        return Some(None);
    };
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("next-marker=") {
            // An undecodable marker is as unknown as a forged one.
            return bulkget_names::url_decode(value).map(Some);
        }
    }
    Some(None)
}

/// What the requests of one connection share.
pub(crate) struct Connection {
    pub(crate) app: Arc<App>,
    /// Raised by an injected reset on an HTTP/1 connection; the socket then
    /// closes with a TCP RST.
    pub(crate) reset_on_close: Arc<AtomicBool>,
    /// Set by `--trickle-head-rate`: from then on the socket writes a byte
    /// every this many milliseconds.
    pub(crate) trickle_ms: Arc<AtomicU64>,
    /// Responses answered on this connection, for `--keepalive-requests`.
    pub(crate) responses: AtomicU64,
}

/// The connection a request came on, as fault injection sees it.
#[derive(Clone, Copy)]
pub(crate) struct Via<'a> {
    conn: &'a Connection,
    /// An HTTP/2 connection carries other streams, which an injected reset
    /// must not take down with its own.
    http2: bool,
}

impl Via<'_> {
    /// The flag that makes the socket close with a TCP RST, for an
    /// HTTP/1 connection only.
    fn reset_flag(&self) -> Option<Arc<AtomicBool>> {
        (!self.http2).then(|| Arc::clone(&self.conn.reset_on_close))
    }
}

/// Answers one request. Never fails: every problem is an HTTP answer.
pub(crate) async fn handle<B>(
    conn: Arc<Connection>,
    req: Request<B>,
) -> Result<Response<ServerBody>, Infallible> {
    let app = &*conn.app;
    let route = route(&app.prefix, req.uri().path());
    let kind = match route {
        Route::List => PathKind::List,
        Route::Get {
            redirected: false, ..
        } => PathKind::Get,
        Route::Get {
            redirected: true, ..
        } => PathKind::GetRedirected,
        Route::Stats => PathKind::Stats,
        Route::Other => PathKind::Other,
    };
    app.stats.request(kind);
    app.stats.version(req.version());
    let version = req.version();
    // Over HTTP/2 an injected reset ends only its stream (hyper answers a
    // failing body with RST_STREAM) and the connection, which carries other
    // streams, goes on; so the socket is not told to reset.
    let via = Via {
        conn: &conn,
        http2: req.version() == Version::HTTP_2,
    };
    // The stats stay readable without credentials, for tests.
    let needs_headers = matches!(route, Route::List | Route::Get { .. });
    let missing = needs_headers
        .then(|| app.missing_header(req.headers()))
        .flatten();
    let mut resp = if let Some(missing) = missing {
        // The answer names the header, never the value it should have.
        let message = format!("missing or wrong {} header", missing.name);
        json_error(StatusCode::UNAUTHORIZED, &message)
    } else if !matches!(*req.method(), Method::GET | Method::HEAD) {
        json_error(StatusCode::METHOD_NOT_ALLOWED, "only GET is served")
    } else {
        match route {
            Route::List => list(app, req.uri().query()).await,
            Route::Get { raw, redirected } => get(app, &raw, redirected, via).await,
            Route::Stats => {
                let json = serde_json::to_vec_pretty(&app.stats.snapshot())
                    .expect("stats serialise to JSON");
                let mut resp = Response::new(ServerBody::full(json));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp
            }
            Route::Other => json_error(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    };
    app.stats.response(resp.status().as_u16());
    // HTTP/2 has no `Connection` header (a connection's streams end
    // otherwise), so the limit is HTTP/1's alone.
    if app.keepalive_requests > 0
        && version < Version::HTTP_2
        && conn.responses.fetch_add(1, Ordering::Relaxed) + 1 >= app.keepalive_requests
    {
        // hyper closes the connection after a response that says so, and
        // drops the requests read behind it.
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

async fn list(app: &App, query: Option<&str>) -> Response<ServerBody> {
    let page = match next_marker(query) {
        Some(None) => 0,
        Some(Some(marker)) => match app.dataset.markers.decode(&marker) {
            Some(page) => page,
            None => return json_error(StatusCode::NOT_FOUND, "unknown marker"),
        },
        None => return json_error(StatusCode::NOT_FOUND, "unknown marker"),
    };
    if page > 0 && !app.list_delay.is_zero() {
        tokio::time::sleep(app.list_delay).await;
    }
    if app.list_faults.hits(page, ListFault::FailOnce)
        && app.fail_once_pending.swap(false, Ordering::Relaxed)
    {
        app.stats.fault(FaultKind::ListFailOnce);
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "listing temporarily unavailable",
        );
    }
    let trickle = app.list_faults.hits(page, ListFault::Trickle)
        && app.trickle_page_pending.swap(false, Ordering::Relaxed);
    let mut page = app.list_faults.render(&app.dataset, page);
    if trickle {
        page.faults.push(FaultKind::ListTrickle);
        page.body = page.body.trickled(app.trickle);
    }
    for fault in &page.faults {
        app.stats.fault(*fault);
    }
    app.stats.list_page_served();
    let mut resp = Response::new(page.body);
    *resp.status_mut() = StatusCode::from_u16(page.status).expect("a valid status");
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(page.content_type));
    resp
}

async fn get(app: &App, raw: &str, redirected: bool, via: Via<'_>) -> Response<ServerBody> {
    if let Some(limit) = &app.rate_limit {
        if !limit.admit(Instant::now()) {
            let mut resp = json_error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return resp;
        }
    }
    if !app.latency.is_zero() {
        tokio::time::sleep(app.latency).await;
    }
    // The whole path segment is decoded exactly once: `%2F` is a `/` in the
    // name, `%252F` a literal `%2F`.
    let Some(name) = bulkget_names::url_decode(raw) else {
        return json_error(StatusCode::BAD_REQUEST, "malformed percent-encoding");
    };
    let Some(served) = app.dataset.lookup(&name) else {
        return json_error(StatusCode::NOT_FOUND, "no such file");
    };
    let hash = bulkget_names::stable_hash(&name);
    let faults = app.dataset.faults_of(&name, served, hash);
    let mut resp = answer(app, &name, served, hash, faults, redirected, via);
    if faults.crash {
        app.stats.fault(FaultKind::Crash);
        resp.headers_mut()
            .insert(CRASH_HEADER, HeaderValue::from_static("1"));
    }
    resp
}

fn with_length(mut resp: Response<ServerBody>, len: u64) -> Response<ServerBody> {
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn octets(body: ServerBody) -> Response<ServerBody> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// `location`, padded to `--location-bytes` with a `?pad=` query.
fn padded(app: &App, mut location: String) -> String {
    if location.len() < app.location_bytes {
        location.push_str("?pad=");
        let missing = app.location_bytes.saturating_sub(location.len());
        location.extend(std::iter::repeat_n('x', missing));
    }
    location
}

fn redirect(status: StatusCode, location: String) -> Response<ServerBody> {
    let mut resp = Response::new(ServerBody::empty());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        LOCATION,
        HeaderValue::try_from(location).expect("percent-encoded locations are valid headers"),
    );
    resp
}

fn answer(
    app: &App,
    name: &str,
    served: Served,
    hash: u64,
    faults: crate::faults::NameFaults,
    redirected: bool,
    via: Via<'_>,
) -> Response<ServerBody> {
    let stats = &app.stats;
    let size = match served {
        Served::OffhostRedirect => {
            stats.fault(FaultKind::OffhostRedirect);
            return redirect(
                StatusCode::FOUND,
                padded(
                    app,
                    format!("{OFFHOST_BASE}{}", bulkget_names::url_encode(name)),
                ),
            );
        }
        Served::Liar => {
            stats.fault(FaultKind::Liar);
            return with_length(octets(ServerBody::liar()), 1_000_000_000_000);
        }
        Served::Oversize(bytes) => {
            stats.fault(FaultKind::Oversize);
            let body = ServerBody::content(hash, bytes, 1, Duration::ZERO, Ending::Clean);
            return with_length(octets(body), bytes);
        }
        Served::Indexed(_) | Served::Extra => app.dataset.file_size() as u64,
    };
    if faults.gone {
        stats.fault(FaultKind::Gone);
        return json_error(StatusCode::NOT_FOUND, "no such file");
    }
    if faults.redirect && !redirected {
        stats.fault(FaultKind::Redirect);
        return redirect(
            StatusCode::TEMPORARY_REDIRECT,
            padded(
                app,
                format!(
                    "{}/get-redirected/{}",
                    app.prefix,
                    bulkget_names::url_encode(name)
                ),
            ),
        );
    }
    if faults.offhost_redirect {
        stats.fault(FaultKind::OffhostRedirect);
        return redirect(
            StatusCode::FOUND,
            padded(
                app,
                format!("{OFFHOST_BASE}{}", bulkget_names::url_encode(name)),
            ),
        );
    }
    if let Some(transient) = faults.transient {
        let retry_after = app.dataset.plan.retry_after(transient);
        let attempt = app
            .attempts
            .request(name, hash, Instant::now(), retry_after, stats);
        if attempt == Attempt::Fault {
            return transient_fault(app, transient, hash, size, retry_after, via);
        }
    }
    if faults.slow {
        stats.fault(FaultKind::Slow);
        let body = ServerBody::content(hash, size, app.slow_pieces, app.slow, Ending::Clean);
        return with_length(octets(body), size);
    }
    let mut buf = vec![0; size as usize];
    fill_content_at(hash, 0, &mut buf);
    octets(ServerBody::full(Bytes::from(buf)))
}

fn transient_fault(
    app: &App,
    transient: Transient,
    hash: u64,
    size: u64,
    retry_after: Option<u64>,
    via: Via<'_>,
) -> Response<ServerBody> {
    let stats = &app.stats;
    let mut resp = match transient {
        Transient::Error { status, .. } => {
            stats.fault(FaultKind::Error);
            json_error(
                StatusCode::from_u16(status).expect("a valid status"),
                "injected server error",
            )
        }
        Transient::Throttle => {
            stats.fault(FaultKind::Throttle);
            json_error(StatusCode::TOO_MANY_REQUESTS, "slow down")
        }
        Transient::Reset => {
            stats.fault(FaultKind::Reset);
            let ending = Ending::Abort(via.reset_flag());
            let body = ServerBody::content(hash, size / 2, 1, Duration::ZERO, ending);
            with_length(octets(body), size)
        }
        Transient::Truncate => {
            // A zero-byte file cannot be cut short, so it claims one byte.
            let (declared, sent) = if size == 0 {
                (1, 0)
            } else {
                (size, size - size.div_ceil(4))
            };
            stats.fault(FaultKind::Truncate);
            let body = ServerBody::content(hash, sent, 1, Duration::ZERO, Ending::Clean);
            with_length(octets(body), declared)
        }
        Transient::Trickle => {
            stats.fault(FaultKind::Trickle);
            // One piece per byte, `trickle` apart.
            let over = app.trickle * size.saturating_sub(1) as u32;
            let body = ServerBody::content(hash, size, size, over, Ending::Clean);
            with_length(octets(body), size)
        }
        Transient::TrickleHead => {
            stats.fault(FaultKind::TrickleHead);
            let ms = app.trickle.as_millis().max(1) as u64;
            via.conn.trickle_ms.store(ms, Ordering::Relaxed);
            let mut buf = vec![0; size as usize];
            fill_content_at(hash, 0, &mut buf);
            octets(ServerBody::full(Bytes::from(buf)))
        }
    };
    if let Some(secs) = retry_after {
        stats.retry_after_sent();
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("api"), "/api");
        assert_eq!(normalize_prefix("/api/v1/"), "/api/v1");
    }

    #[test]
    fn routes_respect_the_prefix() {
        assert!(matches!(route("/api", "/api/list"), Route::List));
        assert!(matches!(route("/api", "/list"), Route::Other));
        assert!(matches!(route("/api", "/_stats"), Route::Stats));
        assert!(matches!(route("/api", "/apilist"), Route::Other));
        match route("", "/get/a%2Fb") {
            Route::Get { raw, redirected } => {
                assert_eq!(raw, "a%2Fb");
                assert!(!redirected);
            }
            _ => panic!("not a get"),
        }
        assert!(matches!(
            route("", "/get-redirected/x"),
            Route::Get {
                redirected: true,
                ..
            }
        ));
        // The empty name is a name (a hostile one).
        assert!(matches!(route("", "/get/"), Route::Get { .. }));
    }

    #[test]
    fn markers_come_from_the_query() {
        assert_eq!(next_marker(None), Some(None));
        assert_eq!(next_marker(Some("a=b")), Some(None));
        assert_eq!(
            next_marker(Some("x=1&next-marker=ab%63")),
            Some(Some("abc".into()))
        );
        assert_eq!(next_marker(Some("next-marker=%zz")), None);
    }
}
