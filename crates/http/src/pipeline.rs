//! HTTP/1.1 pipelining: several GETs in flight on one connection, their
//! responses read back in order.
//!
//! hyper's client sends a request only once the previous response is
//! complete, so each file costs a write and a read system call and a round
//! trip. [`PipeConn`] writes up to DEPTH requests before reading, and reads
//! as many responses as one `read` returns, with a response reader of its
//! own on `httparse`. It keeps every rule of [`crate::Conn`]: the
//! first-byte and idle-body deadlines on one timer per connection, the body
//! limit checked before buffering, the `Content-Length` check, error bodies
//! drained up to a limit, `Retry-After`, and same-origin redirects only.
//!
//! # Matching and breaks
//!
//! Responses come back in the order the requests were written, so each
//! answers the oldest request still waiting. A caller tags each request with
//! a token and gets it back with its [`Answer`]. When the connection ends
//! with requests still waiting (the server closed it, a response was broken,
//! a deadline passed), those requests are *unanswered*: the server may never
//! have seen them, and GETs are idempotent, so the caller sends them again
//! on another connection ([`PipeConn::take_unanswered`]) without counting an
//! attempt. Only the request whose response was being read when the
//! connection broke gets the error; and a connection that ends before
//! answering anything charges its oldest request a transport error, so a
//! server that never answers cannot make a caller loop for ever.
//!
//! # Servers that do not pipeline
//!
//! Some servers do not serve pipelined requests correctly. A connection
//! records a [`PipelineFault`] when its server
//!
//! - closes it (`Connection: close`, HTTP/1.0, or a plain end of stream)
//!   while pipelined requests wait, after fewer than
//!   [`MIN_ANSWERS_PER_DEPTH`] × DEPTH answers (closing after many answers
//!   is a keep-alive limit, such as nginx's `keepalive_requests`, and only
//!   costs the unanswered requests);
//! - answers one request and then stays silent past the first-byte deadline
//!   on a pipelined one (a stall);
//! - sends bytes that do not parse as the next response (misframing: a
//!   `Content-Length` that lies puts the next response out of step). The
//!   bytes after each body are checked before its answer is delivered, and
//!   so is a body with requests behind it for a status line it should not
//!   hold, so a length that is wrong shows on the response that carries it,
//!   as an error, whenever the next response has begun to arrive. Without
//!   the second check a length too long by exactly the size of the next
//!   response would swallow it whole and give every later answer to the
//!   request before its own. The price: a file that contains `HTTP/1.`
//!   ends pipelining for its worker (it is fetched again one request at a
//!   time, and arrives).
//!
//! The caller then stops pipelining for that service (the worker falls back
//! to one request per connection at a time).
//!
//! # Deadlines
//!
//! A pipelined response cannot start before the one ahead of it has ended,
//! so it is timed from when its request was written or when the previous
//! response ended, whichever is later: its first-byte limit from there, and
//! the whole request's deadline ([`Limits::deadline`], redirects included)
//! from there for its first hop. The idle-body limit is the same as
//! [`crate::Conn`]'s, and the same `race` arms the connection's one timer at
//! whichever comes first. Latency ([`Answer::latency`]) counts from writing
//! the request (its first hop) to the end of its response, so it includes
//! the wait behind earlier responses.
//!
//! # Cost per file
//!
//! Requests are appended to one write buffer and written together, only
//! when the reader has to wait for the socket; responses are parsed in
//! place in one read buffer. Neither buffer is reallocated in steady state,
//! request paths are kept in recycled strings, and the clock is read once
//! per write and once per response (the caller reuses that reading,
//! [`Answer::at`]). The only allocation per file is the
//! caller's body buffer growing, which it reuses.

use crate::conn::{deadline_after, race, resolve_redirect, Expired, Limit, MAX_ERROR_BODY, UA};
use crate::transport::Io;
use crate::{
    Endpoint, FetchError, Limits, Response, Transport, MAX_RETRY_AFTER, TEST_ABORT_HEADER,
};
use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// A server that closes a connection after fewer than this many answers per
/// request of pipeline depth, while pipelined requests wait, does not keep
/// connections open long enough for pipelining to pay: each close wastes up
/// to DEPTH - 1 requests. Above it (nginx closes after 1,000 by default),
/// resending the few unanswered requests costs less than pipelining saves.
pub const MIN_ANSWERS_PER_DEPTH: u64 = 4;

/// The deepest pipeline a caller may ask for. Requests are written before
/// their answers are read, so a server that reads nothing until it has
/// answered could leave both sides blocked on full socket buffers; 64 short
/// requests (a few kilobytes) fit in any socket buffer.
pub const MAX_PIPELINE_DEPTH: u32 = 64;

/// The largest response head accepted: hyper's client's default buffer
/// limit, so that `Conn` and `PipeConn` accept the same heads (a 300 KB
/// `Location` is a refused redirect on both, not a transport error on one).
/// A server that sends endless headers is an error, not memory.
const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// Headers per response, as hyper's default.
const MAX_HEADERS: usize = 100;

/// The read buffer's size when the connection opens. Sixteen responses of a
/// 100-byte file and their heads fit in it several times over; it grows (up
/// to [`MAX_HEAD_BYTES`]) only for a head that does not fit.
const READ_BUFFER: usize = 16 << 10;

/// A chunk-size line (with its extensions) longer than this is an error.
const MAX_CHUNK_LINE: usize = 1024;

/// What answered a request.
#[derive(Debug)]
pub struct Answer {
    /// The token the request was pushed with.
    pub token: u32,
    /// As [`crate::Conn::get`] would return it; a success's body is in the
    /// caller's buffer.
    pub result: Result<Response, FetchError>,
    /// From writing the request (its first hop, when redirected) to the end
    /// of its response, whatever the outcome.
    pub latency: Duration,
    /// When the response ended (or broke): the clock reading `latency` was
    /// taken from, for a caller that needs the time now, without reading
    /// the clock again.
    pub at: Instant,
}

/// Why a connection says its server does not pipeline correctly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineFault {
    /// The server ended the connection after `answered` responses with
    /// `waiting` pipelined requests unanswered.
    EarlyClose { answered: u64, waiting: usize },
    /// After answering `answered` responses, the server sent nothing for a
    /// pipelined request within the first-byte deadline.
    Stall { answered: u64 },
    /// After `answered` responses, the next bytes were not a valid response.
    Misframed { answered: u64, error: String },
}

impl fmt::Display for PipelineFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipelineFault::EarlyClose { answered, waiting } => write!(
                f,
                "the server closed a connection after {answered} responses \
                 with {waiting} pipelined requests unanswered"
            ),
            PipelineFault::Stall { answered } => write!(
                f,
                "the server stopped answering pipelined requests after {answered} responses"
            ),
            PipelineFault::Misframed { answered, error } => write!(
                f,
                "the server's response after {answered} responses was out of step: {error}"
            ),
        }
    }
}

/// One request written (or about to be) and not yet answered.
struct Pending {
    token: u32,
    /// The path of this hop, for resolving a relative redirect.
    path: String,
    /// Redirects followed to get here.
    redirects: u32,
    /// When this hop's request was written; `None` while it waits in the
    /// write buffer.
    sent_at: Option<Instant>,
    /// When the first hop's request was written: latency counts from here.
    first_sent: Option<Instant>,
    /// When the first hop's response could begin (written, and the response
    /// ahead of it ended): the request's deadline counts from here. Set when
    /// its response is first read.
    started: Option<Instant>,
    /// Written while earlier requests on this connection were unanswered.
    pipelined: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// No further response will come: the server said so, or the stream
    /// ended, or a response broke. Requests still pending are unanswered.
    Closed,
}

/// How a response was framed.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked,
    /// No length: the body runs to the end of the stream (HTTP/1.0 style).
    UntilClose,
}

/// What the reader keeps of a response head.
struct Head {
    status: u16,
    keep_alive: bool,
    framing: Framing,
    retry_after: Option<Duration>,
    /// Only read for redirects.
    location: Option<String>,
    test_abort: bool,
}

/// Why reading a response failed.
enum Broke {
    /// The stream ended (or was reset) before any byte of the response.
    Ended(String),
    /// Nothing arrived within the first-byte deadline.
    Silent(FetchError),
    /// Bytes arrived that are not a valid response.
    Misframed(FetchError),
    /// Anything else: a short body, a body over its limit, an idle body.
    Other(FetchError),
}

/// What a wait on the socket gives up at.
#[derive(Clone, Copy)]
enum Wait {
    /// The oldest pending request's first-byte deadline.
    Head,
    /// The idle-body limit, from the moment the wait begins.
    Body,
}

enum FillError {
    Timeout(Expired),
    Io(io::Error),
    /// A head (or chunk line) does not fit in the largest read buffer.
    TooLong,
}

/// One HTTP/1.1 connection that keeps several requests in flight.
pub struct PipeConn {
    stream: TcpStream,
    /// ` HTTP/1.1\r\nHost: ...\r\nUser-Agent: ...\r\n\r\n`: everything of a
    /// request after its path, built once.
    request_tail: Vec<u8>,
    /// Requests not yet written.
    wbuf: Vec<u8>,
    /// Bytes read: `rbuf[rpos..rend]` is not yet consumed.
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    /// Requests written or waiting in `wbuf`, oldest first.
    pending: VecDeque<Pending>,
    /// How many of the newest `pending` are only in `wbuf`.
    unsent: usize,
    /// Path strings of answered requests, reused for new ones.
    spare: Vec<String>,
    /// A write failed: the server is gone or going. Reading goes on, so
    /// responses it sent before are still delivered.
    write_failed: bool,
    state: State,
    /// Responses read in full on this connection.
    answered: u64,
    /// The most requests ever written and unanswered at once.
    deepest: usize,
    /// When the last response ended: the earliest the next can start.
    last_done: Instant,
    fault: Option<PipelineFault>,
    last_latency: Duration,
    /// The first-byte limit and the request deadline of the response being
    /// read, set when reading it begins.
    first_byte_at: Instant,
    request_deadline: Instant,
    /// The one timer behind every deadline, re-armed only when a wait has
    /// to wait, as in [`crate::Conn`].
    timer: Pin<Box<Sleep>>,
}

impl PipeConn {
    /// Connects as `transport` says (TCP, or a proxy's `CONNECT` tunnel,
    /// within its connect timeout). Pipelining is plain HTTP/1.1 only: an
    /// `https://` endpoint is refused (the caller uses [`crate::Conn`],
    /// whose TLS connection may also turn out to be HTTP/2). The
    /// transport's headers (`-H`) go on every request.
    pub async fn connect(
        endpoint: &Endpoint,
        transport: &Transport,
    ) -> Result<PipeConn, FetchError> {
        if transport.tls.is_some() {
            return Err(FetchError::Connect(
                "HTTP/1.1 pipelining is for plain http:// only".into(),
            ));
        }
        let stream = match crate::transport::connect(endpoint, transport).await?.io {
            Io::Plain(stream) => stream,
            Io::Tls(..) => {
                return Err(FetchError::Connect(
                    "HTTP/1.1 pipelining is for plain http:// only".into(),
                ))
            }
        };
        if !endpoint.authority.bytes().all(is_visible) {
            return Err(FetchError::Connect(format!(
                "invalid host header: {:?}",
                endpoint.authority
            )));
        }
        let mut request_tail = Vec::with_capacity(64 + endpoint.authority.len());
        request_tail.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        request_tail.extend_from_slice(endpoint.authority.as_bytes());
        request_tail.extend_from_slice(b"\r\nUser-Agent: ");
        request_tail.extend_from_slice(UA.as_bytes());
        // `HeaderName` and `HeaderValue` admit no CR or LF, so these cannot
        // end a header early.
        for (name, value) in transport.headers.iter() {
            request_tail.extend_from_slice(b"\r\n");
            request_tail.extend_from_slice(name.as_str().as_bytes());
            request_tail.extend_from_slice(b": ");
            request_tail.extend_from_slice(value.as_bytes());
        }
        request_tail.extend_from_slice(b"\r\n\r\n");
        let now = Instant::now();
        Ok(PipeConn {
            stream,
            request_tail,
            wbuf: Vec::with_capacity(4096),
            rbuf: vec![0; READ_BUFFER],
            rpos: 0,
            rend: 0,
            pending: VecDeque::new(),
            unsent: 0,
            spare: Vec::new(),
            write_failed: false,
            state: State::Open,
            answered: 0,
            deepest: 0,
            last_done: now,
            fault: None,
            last_latency: Duration::ZERO,
            first_byte_at: now,
            request_deadline: now,
            // A placeholder: every wait re-arms it before polling it.
            timer: Box::pin(tokio::time::sleep_until(now)),
        })
    }

    /// Whether this connection may carry more requests.
    pub fn is_usable(&self) -> bool {
        self.state == State::Open
    }

    /// Requests pushed and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Responses read in full on this connection.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// Set when the server showed that it does not pipeline correctly.
    pub fn fault(&self) -> Option<&PipelineFault> {
        self.fault.as_ref()
    }

    /// The latency of the last [`Answer`] (or [`PipeConn::get`]); zero before
    /// the first.
    pub fn last_latency(&self) -> Duration {
        self.last_latency
    }

    /// Queues a GET of `path` (origin form, already percent-encoded), to be
    /// written with the others before the next wait for a response.
    pub fn push(&mut self, token: u32, path: &str) -> Result<(), FetchError> {
        self.push_hop(token, path, 0, None, None)
    }

    fn push_hop(
        &mut self,
        token: u32,
        path: &str,
        redirects: u32,
        first_sent: Option<Instant>,
        started: Option<Instant>,
    ) -> Result<(), FetchError> {
        if self.state != State::Open {
            return Err(FetchError::Transport("connection closed by server".into()));
        }
        // The path goes onto the wire as it is: anything but visible ASCII
        // could end the request line early or smuggle a header.
        if path.is_empty() || !path.starts_with('/') || !path.bytes().all(is_visible) {
            return Err(FetchError::BadRedirect(format!(
                "invalid request path {path:?}"
            )));
        }
        self.wbuf.extend_from_slice(b"GET ");
        self.wbuf.extend_from_slice(path.as_bytes());
        self.wbuf.extend_from_slice(&self.request_tail);
        let mut owned = self.spare.pop().unwrap_or_default();
        owned.clear();
        owned.push_str(path);
        self.pending.push_back(Pending {
            token,
            path: owned,
            redirects,
            sent_at: None,
            first_sent,
            started,
            pipelined: false,
        });
        self.unsent += 1;
        Ok(())
    }

    /// Hands back the tokens of every request not answered, oldest first,
    /// and gives the connection up. For a connection that is no longer
    /// usable; the caller sends them again elsewhere.
    pub fn take_unanswered(&mut self, mut each: impl FnMut(u32)) {
        self.state = State::Closed;
        self.wbuf.clear();
        self.unsent = 0;
        while let Some(p) = self.pending.pop_front() {
            each(p.token);
            self.spare.push(p.path);
        }
    }

    /// One GET at a time, as [`crate::Conn::get`]: for callers (and tests)
    /// that do not pipeline.
    pub async fn get(
        &mut self,
        endpoint: &Endpoint,
        path: &str,
        limits: &Limits,
        body: &mut Vec<u8>,
    ) -> Result<Response, FetchError> {
        body.clear();
        self.push(0, path)?;
        match self.next(endpoint, limits, body).await {
            Some(answer) => answer.result,
            None => {
                self.take_unanswered(|_| {});
                Err(FetchError::Transport(
                    "connection closed by server before the response".into(),
                ))
            }
        }
    }

    /// Reads the answer to the oldest pending request, following its
    /// redirects on this connection (they are pushed behind the others).
    ///
    /// `None` means there is no answer to give: nothing is pending, or the
    /// connection ended between responses, in which case every pending
    /// request is unanswered ([`PipeConn::take_unanswered`]). After an
    /// answer, [`PipeConn::is_usable`] says whether the connection may go
    /// on; if not, the requests behind it are unanswered too.
    pub async fn next(
        &mut self,
        endpoint: &Endpoint,
        limits: &Limits,
        body: &mut Vec<u8>,
    ) -> Option<Answer> {
        loop {
            if self.state != State::Open || self.pending.is_empty() {
                return None;
            }
            let read = self.read_response(limits, body).await;
            let now = Instant::now();
            let head = match read {
                Ok(head) => head,
                Err(broke) => return self.broke(broke, now),
            };
            self.answered += 1;
            self.last_done = now;
            let p = self
                .pending
                .pop_front()
                .expect("a response answers a request");
            if !head.keep_alive {
                self.server_closed();
            }
            let latency = now.saturating_duration_since(p.first_sent.unwrap_or(now));
            self.last_latency = latency;
            let result = match head.status {
                301 | 302 | 303 | 307 | 308 => match self.follow(endpoint, limits, &head, &p) {
                    Ok(()) => {
                        self.spare.push(p.path);
                        continue;
                    }
                    Err(e) => Err(e),
                },
                200..=299 => Ok(Response {
                    status: head.status,
                    test_abort: head.test_abort,
                }),
                code => Err(FetchError::Status {
                    code,
                    retry_after: head.retry_after,
                }),
            };
            let token = p.token;
            self.spare.push(p.path);
            return Some(Answer {
                token,
                result,
                latency,
                at: now,
            });
        }
    }

    /// Pushes the next hop of a redirect, with the same rules as
    /// [`crate::Conn`]: a same-origin `Location` only, at most
    /// `max_redirects` of them.
    fn follow(
        &mut self,
        endpoint: &Endpoint,
        limits: &Limits,
        head: &Head,
        from: &Pending,
    ) -> Result<(), FetchError> {
        let Some(location) = head.location.as_deref() else {
            return Err(FetchError::BadRedirect(format!(
                "{} without Location",
                head.status
            )));
        };
        let next = resolve_redirect(endpoint, &from.path, location)?;
        if from.redirects >= limits.max_redirects {
            return Err(FetchError::BadRedirect(format!(
                "more than {} redirects",
                limits.max_redirects
            )));
        }
        self.push_hop(
            from.token,
            &next,
            from.redirects + 1,
            from.first_sent,
            from.started,
        )
    }

    /// The server will send nothing more on this connection, although it
    /// answered the last response in full.
    fn server_closed(&mut self) {
        self.state = State::Closed;
        let waiting = self.pending.iter().filter(|p| p.sent_at.is_some()).count();
        if waiting > 0
            && self.answered > 0
            && self.deepest > 1
            && self.answered < MIN_ANSWERS_PER_DEPTH * self.deepest as u64
            && self.fault.is_none()
        {
            self.fault = Some(PipelineFault::EarlyClose {
                answered: self.answered,
                waiting,
            });
        }
    }

    /// The connection broke while reading the oldest request's response.
    fn broke(&mut self, broke: Broke, now: Instant) -> Option<Answer> {
        self.state = State::Closed;
        let answered = self.answered;
        let pipelined = self.pending.front().is_some_and(|p| p.pipelined);
        let error = match broke {
            // Between two responses, after at least one: the server closed
            // the connection, and every pending request is unanswered.
            Broke::Ended(_) if answered > 0 => {
                self.server_closed();
                return None;
            }
            Broke::Ended(why) => FetchError::Transport(why),
            Broke::Silent(e) => {
                if pipelined && answered > 0 && self.fault.is_none() {
                    self.fault = Some(PipelineFault::Stall { answered });
                }
                e
            }
            Broke::Misframed(e) => {
                if answered > 0 && self.deepest > 1 && self.fault.is_none() {
                    self.fault = Some(PipelineFault::Misframed {
                        answered,
                        error: e.to_string(),
                    });
                }
                e
            }
            Broke::Other(e) => e,
        };
        let p = self
            .pending
            .pop_front()
            .expect("a broken response had a request");
        let latency = now.saturating_duration_since(p.first_sent.unwrap_or(now));
        self.last_latency = latency;
        let token = p.token;
        self.spare.push(p.path);
        Some(Answer {
            token,
            result: Err(error),
            latency,
            at: now,
        })
    }

    /// Reads one whole response to the oldest pending request: its head
    /// (skipping interim 1xx responses) and its body into `body`.
    async fn read_response(&mut self, limits: &Limits, body: &mut Vec<u8>) -> Result<Head, Broke> {
        body.clear();
        // A request is written before its answer is waited for; this one
        // may still be queued behind others taken from the buffer.
        if self.pending.front().is_some_and(|p| p.sent_at.is_none()) {
            self.flush(limits).await.map_err(|e| match e {
                FillError::Timeout(e) => Broke::Silent(e.error("first-byte")),
                // Unreachable: a failed write is noted and reading goes on.
                _ => Broke::Other(FetchError::Transport("write failed".into())),
            })?;
        }
        let last_done = self.last_done;
        let p = self
            .pending
            .front_mut()
            .expect("a response answers a request");
        let ready = p.sent_at.expect("written above").max(last_done);
        let started = *p.started.get_or_insert(ready);
        self.first_byte_at = deadline_after(ready, limits.first_byte);
        self.request_deadline = deadline_after(started, limits.deadline);
        let mut seen = self.rpos < self.rend;
        let head = loop {
            let head = self.read_head(limits, &mut seen).await?;
            match head.status {
                101 => {
                    return Err(Broke::Other(FetchError::Transport(
                        "101 Switching Protocols was not asked for".into(),
                    )))
                }
                100..=199 => continue,
                _ => break head,
            }
        };
        let success = (200..300).contains(&head.status);
        let limit = if success {
            limits.max_body
        } else {
            MAX_ERROR_BODY
        };
        let too_large = |declared: Option<u64>| {
            if success {
                Broke::Other(FetchError::TooLarge { limit, declared })
            } else {
                // An error page too big to drain: report the status, but the
                // connection cannot be reused.
                Broke::Other(FetchError::Status {
                    code: head.status,
                    retry_after: head.retry_after,
                })
            }
        };
        match head.framing {
            Framing::Length(declared) => {
                if declared > limit {
                    return Err(too_large(Some(declared)));
                }
                // Only a response with requests behind it can swallow the
                // next response; checked before reading, while they are.
                let followed = self.pending.len() > 1;
                self.read_length(declared, limits, body).await?;
                if followed && contains(body, b"HTTP/1.") {
                    return Err(self.misframed(
                        "a response's body holds a status line: its length took in the next response",
                    ));
                }
            }
            Framing::Chunked => {
                self.read_chunked(limit, limits, body)
                    .await
                    .map_err(|e| match e {
                        ChunkError::TooLarge => too_large(None),
                        ChunkError::Broke(b) => b,
                    })?
            }
            Framing::UntilClose => {
                if !self.read_until_close(limit, limits, body).await? {
                    return Err(too_large(None));
                }
            }
        }
        // Whatever already follows this response must be the start of the
        // next one. A `Content-Length` that lies shows here, before this
        // answer is delivered: a body declared short leaves its tail in
        // front of the next status line, and one declared long swallows the
        // start of the next response (in a pipeline, the bytes it wrongly
        // takes are usually there already).
        if !self.next_is_a_response() {
            return Err(self
                .misframed("the bytes after a response are not a response: its length was wrong"));
        }
        Ok(head)
    }

    /// A response whose framing was wrong, found before its answer was
    /// delivered. On a pipelined connection that is a fault of pipelining
    /// whatever was answered before: the lie put other responses at risk.
    fn misframed(&mut self, why: &str) -> Broke {
        let error = FetchError::Transport(why.into());
        if self.deepest > 1 && self.fault.is_none() {
            self.fault = Some(PipelineFault::Misframed {
                answered: self.answered,
                error: error.to_string(),
            });
        }
        Broke::Misframed(error)
    }

    /// Whether the unread bytes, if any, could begin a response: a prefix
    /// of `HTTP/1.` after the empty lines a reader skips.
    fn next_is_a_response(&self) -> bool {
        let rest = &self.rbuf[self.rpos..self.rend];
        let start = rest
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(rest.len());
        let rest = &rest[start..];
        let n = rest.len().min(7);
        rest[..n] == b"HTTP/1."[..n]
    }

    /// Reads and parses one response head.
    async fn read_head(&mut self, limits: &Limits, seen: &mut bool) -> Result<Head, Broke> {
        // How much of the buffer was looked at without finding a whole
        // head; `None` before the first look. A head is parsed at once the
        // first time (usually it is all there), and after that only once a
        // blank line has arrived, so a head trickled in byte by byte is
        // scanned once, not parsed once a byte.
        let mut scanned: Option<usize> = None;
        loop {
            let buf = &self.rbuf[self.rpos..self.rend];
            let complete = match scanned {
                None => !buf.is_empty(),
                Some(from) => head_end(buf, from).is_some(),
            };
            if complete {
                // Uninitialised slots: nothing to fill per response.
                let mut slots =
                    [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
                let mut parsed = httparse::Response::new(&mut []);
                match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                    &mut parsed,
                    buf,
                    &mut slots,
                ) {
                    Ok(httparse::Status::Complete(n)) => {
                        let head = interpret(&parsed)?;
                        self.rpos += n;
                        return Ok(head);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => {
                        return Err(Broke::Misframed(FetchError::Transport(format!(
                            "invalid response head: {e}"
                        ))))
                    }
                }
            }
            scanned = Some(buf.len());
            match self.fill(Wait::Head, limits).await {
                Ok(0) if *seen => {
                    return Err(Broke::Other(FetchError::Transport(
                        "connection closed in the middle of a response head".into(),
                    )))
                }
                Ok(0) => return Err(Broke::Ended("connection closed by server".into())),
                Ok(_) => *seen = true,
                Err(FillError::Timeout(e)) => return Err(Broke::Silent(e.error("first-byte"))),
                Err(FillError::TooLong) => {
                    return Err(Broke::Misframed(FetchError::Transport(format!(
                        "response head over {MAX_HEAD_BYTES} bytes"
                    ))))
                }
                Err(FillError::Io(e)) if !*seen => return Err(Broke::Ended(e.to_string())),
                Err(FillError::Io(e)) => {
                    return Err(Broke::Other(FetchError::Transport(e.to_string())))
                }
            }
        }
    }

    async fn read_length(
        &mut self,
        declared: u64,
        limits: &Limits,
        body: &mut Vec<u8>,
    ) -> Result<(), Broke> {
        let mut left = declared;
        loop {
            let take = left.min((self.rend - self.rpos) as u64) as usize;
            body.extend_from_slice(&self.rbuf[self.rpos..self.rpos + take]);
            self.rpos += take;
            left -= take as u64;
            if left == 0 {
                return Ok(());
            }
            let short = FetchError::ShortBody {
                expected: declared,
                got: declared - left,
            };
            match self.fill(Wait::Body, limits).await {
                Ok(0) | Err(FillError::Io(_)) => return Err(Broke::Other(short)),
                Ok(_) => {}
                Err(FillError::Timeout(e)) => return Err(Broke::Other(e.error("idle-body"))),
                Err(FillError::TooLong) => return Err(Broke::Other(full_buffer())),
            }
        }
    }

    /// A chunked body, bounded by `limit` in total, each chunk's size
    /// checked against what is left of it before any of it is read.
    async fn read_chunked(
        &mut self,
        limit: u64,
        limits: &Limits,
        body: &mut Vec<u8>,
    ) -> Result<(), ChunkError> {
        let mut got: u64 = 0;
        loop {
            let size = self.read_chunk_size(limits).await?;
            if size == 0 {
                return self.skip_trailers(limits).await;
            }
            if size > limit - got {
                return Err(ChunkError::TooLarge);
            }
            got += size;
            let mut left = size;
            while left > 0 {
                let take = left.min((self.rend - self.rpos) as u64) as usize;
                body.extend_from_slice(&self.rbuf[self.rpos..self.rpos + take]);
                self.rpos += take;
                left -= take as u64;
                if left > 0 {
                    self.fill_body(limits).await?;
                }
            }
            while self.rend - self.rpos < 2 {
                self.fill_body(limits).await?;
            }
            if &self.rbuf[self.rpos..self.rpos + 2] != b"\r\n" {
                return Err(chunk_misframed("a chunk does not end with CRLF"));
            }
            self.rpos += 2;
        }
    }

    async fn read_chunk_size(&mut self, limits: &Limits) -> Result<u64, ChunkError> {
        loop {
            let buf = &self.rbuf[self.rpos..self.rend];
            if let Some(&first) = buf.first() {
                if !first.is_ascii_hexdigit() {
                    return Err(chunk_misframed("invalid chunk size"));
                }
                match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((n, size))) => {
                        self.rpos += n;
                        return Ok(size);
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err(chunk_misframed("chunk size line too long"))
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(chunk_misframed("invalid chunk size")),
                }
            }
            self.fill_body(limits).await?;
        }
    }

    /// Skips the trailer section after the last chunk, up to the blank line.
    async fn skip_trailers(&mut self, limits: &Limits) -> Result<(), ChunkError> {
        let mut skipped = 0;
        loop {
            let buf = &self.rbuf[self.rpos..self.rend];
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line = &buf[..i];
                self.rpos += i + 1;
                skipped += i + 1;
                if line.is_empty() || line == b"\r" {
                    return Ok(());
                }
            } else if skipped + buf.len() > MAX_HEAD_BYTES {
                return Err(chunk_misframed("trailers too long"));
            } else {
                self.fill_body(limits).await?;
            }
        }
    }

    /// Reads more of a chunked body; the end of the stream is an error.
    async fn fill_body(&mut self, limits: &Limits) -> Result<(), ChunkError> {
        match self.fill(Wait::Body, limits).await {
            Ok(0) => Err(ChunkError::Broke(Broke::Other(FetchError::Transport(
                "connection closed in a chunked body".into(),
            )))),
            Ok(_) => Ok(()),
            Err(FillError::Timeout(e)) => {
                Err(ChunkError::Broke(Broke::Other(e.error("idle-body"))))
            }
            Err(FillError::TooLong) => Err(chunk_misframed("chunk line too long")),
            Err(FillError::Io(e)) => Err(ChunkError::Broke(Broke::Other(FetchError::Transport(
                e.to_string(),
            )))),
        }
    }

    /// A body without a length, up to the end of the stream. `false` when it
    /// went over `limit`.
    async fn read_until_close(
        &mut self,
        limit: u64,
        limits: &Limits,
        body: &mut Vec<u8>,
    ) -> Result<bool, Broke> {
        loop {
            let take = self.rend - self.rpos;
            if (body.len() + take) as u64 > limit {
                return Ok(false);
            }
            body.extend_from_slice(&self.rbuf[self.rpos..self.rend]);
            self.rpos = self.rend;
            match self.fill(Wait::Body, limits).await {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(FillError::Timeout(e)) => return Err(Broke::Other(e.error("idle-body"))),
                Err(FillError::Io(e)) => {
                    return Err(Broke::Other(FetchError::Transport(e.to_string())))
                }
                Err(FillError::TooLong) => return Err(Broke::Other(full_buffer())),
            }
        }
    }

    /// Writes the queued requests, then reads more bytes into the read
    /// buffer; `Ok(0)` at the end of the stream.
    async fn fill(&mut self, wait: Wait, limits: &Limits) -> Result<usize, FillError> {
        if self.unsent > 0 {
            self.flush(limits).await?;
        }
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
        } else if self.rend == self.rbuf.len() {
            if self.rpos > 0 {
                self.rbuf.copy_within(self.rpos..self.rend, 0);
                self.rend -= self.rpos;
                self.rpos = 0;
            } else if self.rbuf.len() < MAX_HEAD_BYTES {
                let grown = (self.rbuf.len() * 2).min(MAX_HEAD_BYTES);
                self.rbuf.resize(grown, 0);
            } else {
                return Err(FillError::TooLong);
            }
        }
        let limit = match wait {
            Wait::Head => Limit::At(self.first_byte_at),
            // The clock is read only if the wait has to wait, as in `Conn`.
            Wait::Body => Limit::After(limits.idle),
        };
        let Self {
            stream,
            rbuf,
            rend,
            timer,
            request_deadline,
            ..
        } = self;
        let read = poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut rbuf[*rend..]);
            Pin::new(&mut *stream)
                .poll_read(cx, &mut rb)
                .map_ok(|()| rb.filled().len())
        });
        let n = match race(read, timer.as_mut(), limit, *request_deadline).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(FillError::Io(e)),
            Err(expired) => return Err(FillError::Timeout(expired)),
        };
        self.rend += n;
        Ok(n)
    }

    /// Writes every queued request in one go (usually one system call),
    /// within the first-byte limit.
    async fn flush(&mut self, limits: &Limits) -> Result<(), FillError> {
        let now = Instant::now();
        let first = self.pending.len() - self.unsent;
        for (i, p) in self.pending.iter_mut().enumerate().skip(first) {
            p.sent_at = Some(now);
            p.first_sent.get_or_insert(now);
            p.pipelined = i > 0;
        }
        self.unsent = 0;
        self.deepest = self.deepest.max(self.pending.len());
        if !self.write_failed {
            let Self {
                stream,
                wbuf,
                timer,
                ..
            } = self;
            let mut written = 0;
            let write = poll_fn(|cx| loop {
                if written == wbuf.len() {
                    return Poll::Ready(Ok(()));
                }
                match Pin::new(&mut *stream).poll_write(cx, &wbuf[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            });
            let limit = Limit::At(deadline_after(now, limits.first_byte));
            match race(
                write,
                timer.as_mut(),
                limit,
                deadline_after(now, limits.deadline),
            )
            .await
            {
                Ok(Ok(())) => {}
                // A server that closed its end may still have sent answers
                // to earlier requests: read on, and let the read end it.
                Ok(Err(_)) => self.write_failed = true,
                Err(expired) => return Err(FillError::Timeout(expired)),
            }
        }
        self.wbuf.clear();
        Ok(())
    }
}

enum ChunkError {
    TooLarge,
    Broke(Broke),
}

impl From<Broke> for ChunkError {
    fn from(b: Broke) -> ChunkError {
        ChunkError::Broke(b)
    }
}

/// A body is copied out of the read buffer before it is refilled, so this
/// cannot happen; it is an error rather than a panic all the same.
fn full_buffer() -> FetchError {
    FetchError::Transport("read buffer full in a body".into())
}

fn chunk_misframed(why: &str) -> ChunkError {
    ChunkError::Broke(Broke::Misframed(FetchError::Transport(why.into())))
}

/// Whether `needle` (not empty) occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let mut from = 0;
    while let Some(i) = hay[from..].iter().position(|&b| b == needle[0]) {
        let at = from + i;
        if hay[at..].starts_with(needle) {
            return true;
        }
        from = at + 1;
    }
    false
}

/// Printable ASCII without space: what may go into a request line or the
/// Host header unescaped.
fn is_visible(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

/// The end of a response head in `buf` (just past its blank line), looking
/// from about `from` on.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    // The blank line is "\n\r\n" or "\n\n"; it may straddle `from`.
    let mut i = from.saturating_sub(2);
    while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let at = i + off;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            None => return None,
            _ => {}
        }
        i = at + 1;
    }
    None
}

/// The framing, keep-alive and the headers the client acts on, from a
/// parsed head. Framing that could be read two ways is an error: in a
/// pipeline a wrong guess would put every later response out of step.
fn interpret(parsed: &httparse::Response<'_, '_>) -> Result<Head, Broke> {
    let bad = |why: String| Broke::Misframed(FetchError::Transport(why));
    let status = parsed.code.expect("a complete head has a status");
    let http11 = parsed.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut retry_after = None;
    let mut location = None;
    let mut test_abort = false;
    for h in parsed.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            for v in h.value.split(|&b| b == b',') {
                let v = trim(v);
                if v.is_empty() || !v.iter().all(u8::is_ascii_digit) || v.len() > 19 {
                    return Err(bad(format!(
                        "invalid Content-Length {:?}",
                        String::from_utf8_lossy(h.value)
                    )));
                }
                let n: u64 = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad("invalid Content-Length".into()))?;
                if length.is_some_and(|l| l != n) {
                    return Err(bad("conflicting Content-Length values".into()));
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            // Only the last coding says whether the body is chunked.
            chunked = h
                .value
                .split(|&b| b == b',')
                .map(trim)
                .rfind(|t| !t.is_empty())
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(trim) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = std::str::from_utf8(h.value).ok().and_then(|v| {
                crate::parse_retry_after(v, std::time::SystemTime::now(), MAX_RETRY_AFTER)
            });
        } else if name.eq_ignore_ascii_case("location") && (300..400).contains(&status) {
            if location.is_none() {
                location = Some(String::from_utf8_lossy(h.value).into_owned());
            }
        } else if name.eq_ignore_ascii_case(TEST_ABORT_HEADER) {
            test_abort = true;
        }
    }
    if transfer_encoding && length.is_some() {
        return Err(bad(
            "both Transfer-Encoding and Content-Length: the framing is ambiguous".into(),
        ));
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Length(0)
    } else if transfer_encoding {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let keep_alive = !close && (http11 || keep_alive) && !matches!(framing, Framing::UntilClose);
    Ok(Head {
        status,
        keep_alive,
        framing,
        retry_after,
        location,
        test_abort,
    })
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_head_is_found_wherever_the_buffer_was_cut() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let end = head.len() - 2;
        for cut in 0..=head.len() {
            // Scanned up to `cut` first, then the rest arrives.
            let first = head_end(&head[..cut], 0);
            if cut < end {
                assert_eq!(first, None, "cut at {cut}");
                assert_eq!(head_end(head, cut), Some(end), "resumed at {cut}");
            } else {
                assert_eq!(first, Some(end), "cut at {cut}");
            }
        }
        assert_eq!(head_end(b"HTTP/1.0 200 OK\n\nbody", 0), Some(17));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nx: y\r\n", 0), None);
    }

    fn parse(head: &str) -> Result<Head, String> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(head.as_bytes()) {
            Ok(httparse::Status::Complete(_)) => {}
            other => panic!("{head:?}: {other:?}"),
        }
        interpret(&parsed).map_err(|b| match b {
            Broke::Misframed(e) => e.to_string(),
            _ => panic!("only misframing is reported here"),
        })
    }

    #[test]
    fn framing_and_keep_alive_follow_rfc_9112() {
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert!(matches!(h.framing, Framing::Length(5)) && h.keep_alive);
        let h = parse("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n").unwrap();
        assert!(matches!(h.framing, Framing::Length(5)));
        let h = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n").unwrap();
        assert!(matches!(h.framing, Framing::Chunked) && h.keep_alive);
        let h = parse("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n").unwrap();
        assert!(matches!(h.framing, Framing::UntilClose) && !h.keep_alive);
        let h = parse("HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert!(matches!(h.framing, Framing::UntilClose) && !h.keep_alive);
        let h = parse("HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n").unwrap();
        assert!(matches!(h.framing, Framing::Length(0)) && h.keep_alive);
        let h =
            parse("HTTP/1.1 200 OK\r\nconnection: Keep-Alive, CLOSE\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        assert!(!h.keep_alive);
        let h = parse("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let h = parse("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        assert!(h.keep_alive);
        let h = parse("HTTP/1.1 302 Found\r\nlocation: /b\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!(h.location.as_deref(), Some("/b"));
        let h = parse("HTTP/1.1 200 OK\r\nlocation: /b\r\nretry-after: 3\r\nx-bulkget-test-abort: 1\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!(h.location, None, "only redirects keep their Location");
        assert_eq!(h.retry_after, Some(Duration::from_secs(3)));
        assert!(h.test_abort);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for head in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
        ] {
            assert!(parse(head).is_err(), "{head:?}");
        }
    }
}
