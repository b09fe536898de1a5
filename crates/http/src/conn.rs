use crate::transport::{self, Transport};
use crate::{uri, Endpoint, FetchError, TEST_ABORT_HEADER};
use bytes::{Buf, Bytes};
use http::header::{CONTENT_LENGTH, HOST, LOCATION, RETRY_AFTER, USER_AGENT};
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{timeout, Instant, Sleep};

/// The limits every request runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From sending the request to having the response headers.
    pub first_byte: Duration,
    /// Longest silence between two pieces of a body.
    pub idle: Duration,
    /// Largest body accepted; larger ones are refused, never buffered.
    pub max_body: u64,
    /// Same-host redirects followed per request.
    pub max_redirects: u32,
    /// The most a whole [`Conn::get`] may take, from its call to the last
    /// byte of the body, redirects included. The first-byte and idle limits
    /// bound each wait; this bounds their sum, so a server that trickles a
    /// byte just inside the idle limit cannot hold a request for hours.
    /// Missing it is [`FetchError::Timeout`]`("request")`, which is
    /// transient.
    pub deadline: Duration,
}

/// A successful response; its body is in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The response carried [`TEST_ABORT_HEADER`]. Only a worker with its
    /// test hook on acts on this.
    pub test_abort: bool,
}

/// Error bodies are read (so the connection can be reused) up to this size.
pub(crate) const MAX_ERROR_BODY: u64 = 64 << 10;

/// A server's `Retry-After` is honoured up to this long. A hostile or
/// confused server asking for a day must not park a worker for a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

pub(crate) static UA: HeaderValue =
    HeaderValue::from_static(concat!("bulkget/", env!("CARGO_PKG_VERSION")));

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1: one request at a time per connection.
    Http1,
    /// HTTP/2: many concurrent streams on one connection. Over plain TCP
    /// this is h2c with prior knowledge (RFC 9113 section 3.3); over TLS it
    /// is what ALPN chose.
    Http2,
}

/// How a request reaches the connection's driver task.
enum Sender {
    Http1(http1::SendRequest<Empty<Bytes>>),
    /// An HTTP/2 sender is a cheap handle: [`Conn::share`] clones it so
    /// many request tasks multiplex streams over one connection.
    Http2(http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(s) => s.is_closed(),
        }
    }
}

/// One keep-alive connection, HTTP/1.1 or HTTP/2, or (for HTTP/2) one
/// request task's handle on a connection shared through [`Conn::share`].
pub struct Conn {
    sender: Sender,
    host: HeaderValue,
    /// The user's headers (`-H`), sent on every request.
    headers: Arc<[(HeaderName, HeaderValue)]>,
    /// `http://authority`, the scheme and authority of HTTP/2 requests,
    /// which carry them as pseudo-headers instead of a `Host` header.
    origin: String,
    /// Set when a request failed in a way that leaves the connection in an
    /// unknown state (mid-body, timed out, refused by GOAWAY). Such a
    /// connection is dropped; for HTTP/2 the engine replaces the shared
    /// connection, not only this handle.
    broken: bool,
    /// The one timer behind every first-byte and idle-body deadline of this
    /// connection. A fresh `timeout()` per await costs a clock reading and a
    /// timer-wheel insert and removal each time; re-arming one `Sleep` to a
    /// later deadline only updates its expiry in place (tokio moves it in the
    /// wheel lazily, when the old slot comes up), and it is only re-armed at
    /// all when an await actually has to wait.
    timer: Pin<Box<Sleep>>,
    /// How long the last call to [`Conn::get`] took, whatever its outcome,
    /// so a caller can record latencies without reading the clock itself.
    last_latency: Duration,
    /// A TLS error that will repeat, as the transport saw it (see
    /// [`transport::Connected::tls_failure`]): a request whose connection
    /// dies may only learn "canceled" (hyper's HTTP/1.1 dispatcher and h2
    /// alike), and h2 keeps only the text of the IO error that carried the
    /// alert.
    tls_failure: Arc<OnceLock<FetchError>>,
}

impl Conn {
    /// Connects as `transport` says (TCP, proxy tunnel, TLS; all within
    /// its connect timeout) and speaks HTTP/1.1, or HTTP/2 where TLS's ALPN
    /// chose it. The connection's driver runs as a tokio task and ends when
    /// this `Conn` is dropped.
    pub async fn connect(endpoint: &Endpoint, transport: &Transport) -> Result<Conn, FetchError> {
        Conn::connect_with(endpoint, transport, Proto::Http1).await
    }

    /// Connects as `transport` says and speaks `proto` on a plain
    /// connection (HTTP/2 there is h2c with prior knowledge); over TLS the
    /// protocol ALPN chose wins.
    pub async fn connect_with(
        endpoint: &Endpoint,
        transport: &Transport,
        proto: Proto,
    ) -> Result<Conn, FetchError> {
        let connected = transport::connect(endpoint, transport).await?;
        let proto = match (endpoint.tls, connected.h2) {
            (true, true) => Proto::Http2,
            (true, false) => Proto::Http1,
            (false, _) => proto,
        };
        timeout(
            transport.connect_timeout,
            Conn::handshake(
                connected.io,
                endpoint,
                transport,
                proto,
                connected.tls_failure,
            ),
        )
        .await
        .map_err(|_| FetchError::Timeout("connect"))?
    }

    /// Speaks `proto` over an established stream: plain TCP here, and any
    /// other transport (TLS, a proxy tunnel) whose IO type reads and writes.
    /// A caller that negotiated TLS passes [`Proto::Http2`] when ALPN chose
    /// `h2` and [`Proto::Http1`] otherwise, and the slot in which its
    /// transport records a TLS error that will repeat.
    ///
    /// The connection's driver runs as a tokio task; it ends when every
    /// handle on the connection (this `Conn` and its [`Conn::share`]s) is
    /// dropped, or when the server closes it.
    pub async fn handshake<IO>(
        io: IO,
        endpoint: &Endpoint,
        transport: &Transport,
        proto: Proto,
        tls_failure: Arc<OnceLock<FetchError>>,
    ) -> Result<Conn, FetchError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let sender = match proto {
            Proto::Http1 => {
                let (sender, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(|e| transport::tls_or(&e, FetchError::Connect(e.to_string())))?;
                tokio::spawn(async move {
                    // Errors surface on the request that was in flight; the
                    // driver itself has no one else to tell.
                    let _ = conn.await;
                });
                Sender::Http1(sender)
            }
            Proto::Http2 => {
                // hyper queues a request beyond the server's
                // SETTINGS_MAX_CONCURRENT_STREAMS until a stream frees up
                // (its driver only takes the next request when h2 has room),
                // so the engine may share a connection among more tasks than
                // the server allows streams without errors.
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await
                    .map_err(|e| transport::tls_or(&e, FetchError::Connect(e.to_string())))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::Http2(sender)
            }
        };
        let host = HeaderValue::from_str(&endpoint.authority)
            .map_err(|e| FetchError::Connect(format!("invalid host header: {e}")))?;
        // The deadline is a placeholder: an unpolled `Sleep` is not in the
        // timer wheel, and every wait re-arms it before polling it.
        let timer = Box::pin(tokio::time::sleep_until(Instant::now()));
        Ok(Conn {
            sender,
            host,
            headers: Arc::clone(&transport.headers),
            origin: format!(
                "{}://{}",
                if endpoint.tls { "https" } else { "http" },
                endpoint.authority
            ),
            broken: false,
            timer,
            last_latency: Duration::ZERO,
            tls_failure,
        })
    }

    /// Whether this connection may carry another request.
    pub fn is_usable(&self) -> bool {
        !self.broken && !self.sender.is_closed()
    }

    /// The protocol this connection speaks.
    pub fn proto(&self) -> Proto {
        match self.sender {
            Sender::Http1(_) => Proto::Http1,
            Sender::Http2(_) => Proto::Http2,
        }
    }

    /// Another handle on the same HTTP/2 connection, for another request
    /// task: its requests are further streams on the same socket. `None`
    /// for HTTP/1.1, which carries one request at a time.
    pub fn share(&self) -> Option<Conn> {
        let Sender::Http2(sender) = &self.sender else {
            return None;
        };
        Some(Conn {
            sender: Sender::Http2(sender.clone()),
            host: self.host.clone(),
            headers: Arc::clone(&self.headers),
            origin: self.origin.clone(),
            broken: false,
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            last_latency: Duration::ZERO,
            tls_failure: Arc::clone(&self.tls_failure),
        })
    }

    /// GETs `path` (origin form, already percent-encoded) into `body`,
    /// following same-host redirects.
    ///
    /// On success `body` holds exactly the response body, whose length was
    /// checked against `Content-Length`. On error, [`Conn::is_usable`] says
    /// whether the connection may be kept.
    ///
    /// The call reads the clock twice (when it starts and when it ends),
    /// plus once more for each redirect followed and once for each time the
    /// body has to be waited for; [`Conn::last_latency`] gives the time it
    /// took. Its [`Limits::deadline`] is computed once, from the first
    /// reading, and every wait's timer is armed at whichever comes first,
    /// the wait's own limit or the deadline, so the deadline costs no
    /// clock reading and no timer of its own.
    pub async fn get(
        &mut self,
        endpoint: &Endpoint,
        path: &str,
        limits: &Limits,
        body: &mut Vec<u8>,
    ) -> Result<Response, FetchError> {
        let started = Instant::now();
        let deadline = deadline_after(started, limits.deadline);
        let result = self
            .get_following(endpoint, path, limits, body, started, deadline)
            .await;
        if let Err(e) = &result {
            if !e.connection_reusable() {
                self.broken = true;
            }
        }
        self.last_latency = started.elapsed();
        result
    }

    /// How long the last [`Conn::get`] on this connection took, from its
    /// call to its return, whether it succeeded or failed (redirects
    /// included). Zero before the first request.
    pub fn last_latency(&self) -> Duration {
        self.last_latency
    }

    async fn get_following(
        &mut self,
        endpoint: &Endpoint,
        path: &str,
        limits: &Limits,
        body: &mut Vec<u8>,
        started: Instant,
        deadline: Instant,
    ) -> Result<Response, FetchError> {
        let mut owned_path: Option<String> = None;
        // The first request's first-byte deadline counts from the instant
        // `get` already read; each redirect's from its own start.
        let mut sent_at = Some(started);
        for _ in 0..=limits.max_redirects {
            let current = owned_path.as_deref().unwrap_or(path);
            let sent_at = sent_at.take().unwrap_or_else(Instant::now);
            match self
                .get_once(current, limits, body, sent_at, deadline)
                .await?
            {
                Step::Done(r) => return Ok(r),
                Step::Redirect(location) => {
                    owned_path = Some(resolve_redirect(endpoint, current, &location)?);
                }
            }
        }
        Err(FetchError::BadRedirect(format!(
            "more than {} redirects",
            limits.max_redirects
        )))
    }

    async fn get_once(
        &mut self,
        path: &str,
        limits: &Limits,
        body: &mut Vec<u8>,
        sent_at: Instant,
        deadline: Instant,
    ) -> Result<Step, FetchError> {
        body.clear();
        if self.sender.is_closed() {
            return Err(FetchError::Transport("connection closed by server".into()));
        }
        let invalid =
            |e: http::Error| FetchError::BadRedirect(format!("invalid request path {path:?}: {e}"));
        let mut req = match self.sender {
            Sender::Http1(_) => {
                let mut req = Request::get(path)
                    .body(Empty::<Bytes>::new())
                    .map_err(invalid)?;
                req.headers_mut().insert(HOST, self.host.clone());
                req
            }
            // HTTP/2 carries the scheme and authority as pseudo-headers,
            // which hyper takes from an absolute URI, and no `Host`.
            Sender::Http2(_) => {
                let mut uri = String::with_capacity(self.origin.len() + path.len());
                uri.push_str(&self.origin);
                uri.push_str(path);
                Request::get(uri)
                    .version(http::Version::HTTP_2)
                    .body(Empty::<Bytes>::new())
                    .map_err(invalid)?
            }
        };
        req.headers_mut().insert(USER_AGENT, UA.clone());
        for (name, value) in self.headers.iter() {
            req.headers_mut().append(name.clone(), value.clone());
        }

        let sender = &mut self.sender;
        // Over either protocol, a request whose connection died of a TLS
        // error may only learn "canceled": hyper's HTTP/1.1 dispatcher
        // cancels the pending request when its connection task fails, as
        // h2 does. The transport recorded the error first.
        let failed = |e: hyper::Error| request_error(&e, &self.tls_failure);
        let response = match race(
            async {
                match sender {
                    Sender::Http1(s) => {
                        s.ready().await.map_err(failed)?;
                        s.send_request(req).await.map_err(failed)
                    }
                    Sender::Http2(s) => {
                        s.ready().await.map_err(failed)?;
                        s.send_request(req).await.map_err(failed)
                    }
                }
            },
            self.timer.as_mut(),
            Limit::At(deadline_after(sent_at, limits.first_byte)),
            deadline,
        )
        .await
        {
            Err(expired) => return Err(expired.error("first-byte")),
            Ok(r) => r?,
        };

        let status = response.status().as_u16();
        let headers = response.headers();
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let test_abort = headers.contains_key(TEST_ABORT_HEADER);
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                crate::backoff::parse_retry_after(v, std::time::SystemTime::now(), MAX_RETRY_AFTER)
            });
        let location = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);

        let success = (200..300).contains(&status);
        let limit = if success {
            limits.max_body
        } else {
            MAX_ERROR_BODY
        };
        if let Some(d) = declared {
            if d > limit {
                if success {
                    return Err(FetchError::TooLarge {
                        limit,
                        declared: Some(d),
                    });
                }
                // An error page too big to drain: report the status, but the
                // connection cannot be reused.
                self.broken = true;
                return Err(FetchError::Status {
                    code: status,
                    retry_after,
                });
            }
        }

        let mut incoming = response.into_body();
        let mut got: u64 = 0;
        loop {
            // The idle clock starts when a frame is not already there: a
            // frame that is ready at once needs neither a clock reading nor
            // a timer, which is the usual case for small files.
            let frame = match race(
                incoming.frame(),
                self.timer.as_mut(),
                Limit::After(limits.idle),
                deadline,
            )
            .await
            {
                Err(expired) => return Err(expired.error("idle-body")),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(match (transport_error(&e), declared) {
                        // A stream refused mid-body was still not processed.
                        (e @ FetchError::NotProcessed(_), _) => e,
                        (_, Some(expected)) if got < expected => {
                            FetchError::ShortBody { expected, got }
                        }
                        (e, _) => e,
                    });
                }
                Ok(Some(Ok(f))) => f,
            };
            if let Ok(mut data) = frame.into_data() {
                got += data.remaining() as u64;
                if got > limit {
                    if success {
                        return Err(FetchError::TooLarge { limit, declared });
                    }
                    self.broken = true;
                    return Err(FetchError::Status {
                        code: status,
                        retry_after,
                    });
                }
                while data.has_remaining() {
                    let chunk = data.chunk();
                    body.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
            }
        }
        if let Some(expected) = declared {
            if got != expected {
                return Err(FetchError::ShortBody { expected, got });
            }
        }

        if matches!(status, 301 | 302 | 303 | 307 | 308) {
            return match location {
                Some(l) => Ok(Step::Redirect(l)),
                None => Err(FetchError::BadRedirect(format!(
                    "{status} without Location"
                ))),
            };
        }
        if !success {
            return Err(FetchError::Status {
                code: status,
                retry_after,
            });
        }
        Ok(Step::Done(Response { status, test_abort }))
    }
}

/// Names a failed exchange: a permanent TLS problem (a client certificate
/// that a TLS 1.3 server refuses after the handshake); the HTTP/2 errors
/// that prove the server did not process the request, a `GOAWAY` whose last
/// stream is below ours (RFC 9113 section 6.8) and `RST_STREAM` with
/// `REFUSED_STREAM` (section 8.7), which may be sent again at once; or a
/// transport error.
fn transport_error(e: &hyper::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            let refused = h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            if refused || (h2.is_go_away() && h2.is_remote()) {
                return FetchError::NotProcessed(h2.to_string());
            }
        }
        source = err.source();
    }
    transport::tls_or(e, FetchError::Transport(e.to_string()))
}

/// The error of a request that failed: the TLS error its
/// connection's transport saw, when there was one (the request itself only
/// saw "canceled"), else what the request saw. The transport records it
/// in the read or write that failed, before hyper or h2 hears of it.
fn request_error(e: &hyper::Error, tls_failure: &OnceLock<FetchError>) -> FetchError {
    match tls_failure.get() {
        Some(failure) => failure.clone(),
        None => transport_error(e),
    }
}

enum Step {
    Done(Response),
    Redirect(String),
}

/// The limit of one wait, besides the request's deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit {
    /// At a fixed instant, known before the work starts.
    At(Instant),
    /// This long after the work is first found not ready. The clock is read
    /// only then, so work that is ready at once costs no clock reading.
    After(Duration),
}

/// Which deadline a [`race`] gave up at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// The wait's own limit (first byte, idle body).
    Limit,
    /// The whole request's [`Limits::deadline`].
    Request,
}

impl Expired {
    /// The timeout error, named after the wait (`limit`) or the request.
    pub(crate) fn error(self, limit: &'static str) -> FetchError {
        match self {
            Expired::Limit => FetchError::Timeout(limit),
            Expired::Request => FetchError::Timeout("request"),
        }
    }
}

/// `now + d`, or a deadline that never comes if that would overflow, as
/// `tokio::time::timeout` does, so an absurd limit cannot panic.
pub(crate) fn deadline_after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// Runs `work` until it finishes (`Ok`), or until `limit` or the request's
/// `deadline` passes, whichever is first (`Err` says which), re-arming the
/// connection's one `timer` instead of creating a timer per call.
///
/// The work is polled first on every wake-up, so a result that is ready
/// wins over a deadline that passed at the same time, exactly as with
/// `tokio::time::timeout`. The timer is re-armed only the first time the
/// work is pending, so a ready result never touches it. Until then it may
/// still hold an earlier request's deadline; if that passes while nobody
/// waits on it, it only wakes the connection's task once for nothing.
///
/// Re-arming to a later deadline (the usual case: each request starts after
/// the last) updates the timer in place; an earlier one (an idle limit
/// shorter than what is left of the first-byte limit, when a body stalls)
/// moves it in the wheel, once per stall.
///
/// Both polls go through tokio's co-operative budget. If it is spent, both
/// return `Pending` and the task is woken at once, so the deadline is
/// checked again on the next poll with a fresh budget; the work futures
/// here cannot spend a whole budget in one poll, which is the case
/// `timeout` guards against with its unconstrained poll of the delay.
pub(crate) async fn race<F: Future>(
    work: F,
    mut timer: Pin<&mut Sleep>,
    limit: Limit,
    deadline: Instant,
) -> Result<F::Output, Expired> {
    let mut work = pin!(work);
    let mut armed: Option<Expired> = None;
    poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let which = match armed {
            Some(which) => which,
            None => {
                let at = match limit {
                    Limit::At(at) => at,
                    Limit::After(d) => deadline_after(Instant::now(), d),
                };
                let (at, which) = if deadline < at {
                    (deadline, Expired::Request)
                } else {
                    (at, Expired::Limit)
                };
                timer.as_mut().reset(at);
                armed = Some(which);
                which
            }
        };
        timer.as_mut().poll(cx).map(|()| Err(which))
    })
    .await
}

/// Turns a `Location` into a path on the same server, or refuses it.
///
/// The `Location` is resolved against the URL just requested as RFC 3986
/// section 5.2 says (dot segments removed, a query-only reference keeping
/// the path), so `../blob/x` from `/get/a` is `/blob/x`, never requested
/// literally. The result must have this endpoint's scheme, host and port;
/// its fragment is dropped, as a fragment is never sent.
pub(crate) fn resolve_redirect(
    endpoint: &Endpoint,
    current: &str,
    location: &str,
) -> Result<String, FetchError> {
    let location = location.trim();
    if location.is_empty() {
        return Err(FetchError::BadRedirect("empty Location".into()));
    }
    let base = format!("{}://{}{}", endpoint.scheme(), endpoint.authority, current);
    let target = uri::resolve(&base, location);
    let parts = uri::parse(&target);
    let same_origin = parts
        .scheme
        .is_some_and(|s| s.eq_ignore_ascii_case(endpoint.scheme()))
        && parts.authority.is_some_and(|a| endpoint.is_authority(a));
    if !same_origin {
        return Err(FetchError::OffHostRedirect(location.to_string()));
    }
    let mut path = if parts.path.is_empty() {
        "/".to_string()
    } else {
        parts.path.to_string()
    };
    if let Some(q) = parts.query {
        path.push('?');
        path.push_str(q);
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(FetchError::BadRedirect(format!(
            "invalid Location {location:?}"
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_on_the_same_host_only() {
        let e = Endpoint::parse("http://127.0.0.1:8080/api").unwrap();
        let r = |loc: &str| resolve_redirect(&e, "/api/get/a", loc);
        assert_eq!(r("/other/a").unwrap(), "/other/a");
        assert_eq!(r("b").unwrap(), "/api/get/b");
        assert_eq!(r("http://127.0.0.1:8080/x?y").unwrap(), "/x?y");
        assert!(matches!(
            r("http://127.0.0.2:9/get/a"),
            Err(FetchError::OffHostRedirect(_))
        ));
        assert!(matches!(
            r("//evil.example/x"),
            Err(FetchError::OffHostRedirect(_))
        ));
        assert!(matches!(r(""), Err(FetchError::BadRedirect(_))));
        assert!(matches!(r("/a\r\nb"), Err(FetchError::BadRedirect(_))));
    }

    #[test]
    fn relative_locations_resolve_as_rfc_3986_says() {
        let e = Endpoint::parse("http://127.0.0.1:8080/api").unwrap();
        let r = |loc: &str| resolve_redirect(&e, "/api/get/a?x=1", loc).unwrap();
        assert_eq!(r("../blob/x"), "/api/blob/x");
        assert_eq!(r("../../../../blob/x"), "/blob/x");
        assert_eq!(r("./b/./c/../d"), "/api/get/b/d");
        assert_eq!(r("/get/../blob/x"), "/blob/x");
        assert_eq!(r("?y=2"), "/api/get/a?y=2");
        assert_eq!(r("#frag"), "/api/get/a?x=1");
        assert_eq!(r("b#frag"), "/api/get/b");
        assert_eq!(r("HTTP://127.0.0.1:8080/a/../b"), "/b");
        assert_eq!(r("//127.0.0.1:8080/c/./d"), "/c/d");
        assert_eq!(r("http://127.0.0.1:8080"), "/");
        // A reference with a scheme is absolute (RFC 3986, strict), and
        // only http to this host and port is followed.
        for off in [
            "http:b",
            "g:h",
            "https://127.0.0.1:8080/x",
            "http://127.0.0.1/x",
        ] {
            assert!(
                matches!(
                    resolve_redirect(&e, "/api/get/a", off),
                    Err(FetchError::OffHostRedirect(_))
                ),
                "{off}"
            );
        }
    }
}
