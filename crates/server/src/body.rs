//! Response bodies: whole ones for the common case, and streams for the
//! faults that must never hold a whole body (oversize, liar, the huge page)
//! or must misbehave part-way (reset, truncate, slow).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::content::fill_content_at;

/// Bytes per frame of a streamed body.
const CHUNK: usize = 64 * 1024;

/// How often the liar sends a chunk: slow enough that a client that hangs
/// up early has received little, fast enough that one that buffers notices.
const LIAR_INTERVAL: Duration = Duration::from_millis(5);

static LIAR_CHUNK: [u8; CHUNK] = [b'L'; CHUNK];

/// The body of every response the server sends.
pub(crate) struct ServerBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Content(ContentStream),
    Liar(Option<Pin<Box<Sleep>>>),
    Huge(HugeList),
    Trickle(Trickle),
}

/// Whole bytes sent one at a time, `gap` apart (`--list-fault trickle`).
struct Trickle {
    bytes: Bytes,
    gap: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

/// How a content stream ends after its last byte.
#[derive(Debug, Clone)]
pub(crate) enum Ending {
    /// Normally (if fewer bytes than Content-Length were sent, hyper then
    /// closes the connection: that is `--truncate-rate`).
    Clean,
    /// With an error, which makes hyper drop an HTTP/1 connection, or reset
    /// the stream of an HTTP/2 one (`--reset-rate`). The flag, shared with
    /// an HTTP/1 connection's socket, is raised first so that the socket is
    /// closed with a TCP RST rather than a FIN: the client sees a reset, not
    /// an early end of file. HTTP/2 passes none.
    Abort(Option<Arc<AtomicBool>>),
}

/// `len` bytes of a name's content, from byte 0, in frames of `piece`
/// bytes, `gap` apart.
struct ContentStream {
    key: u64,
    pos: u64,
    len: u64,
    piece: usize,
    gap: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    ending: Ending,
    /// Whether the stream has yielded once after its last byte. A faulty
    /// ending comes only after that, because hyper flushes what it has
    /// buffered when a body is pending; ending at once would drop the last
    /// bytes (or even the headers) with the connection.
    yielded_before_end: bool,
}

/// A listing page with 2,000,000 extra names, rendered a slice at a time.
struct HugeList {
    head: Option<Bytes>,
    next: u64,
    end: u64,
    /// Whether a name has been written since `head` (which decides the
    /// comma before the next one).
    need_comma: bool,
    tail: Option<Bytes>,
}

impl ServerBody {
    /// A body sent whole; hyper derives Content-Length from it.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> ServerBody {
        ServerBody {
            kind: Kind::Full(Some(bytes.into())),
        }
    }

    pub(crate) fn empty() -> ServerBody {
        ServerBody {
            kind: Kind::Full(None),
        }
    }

    /// The first `len` content bytes of the name with content key `key`, in
    /// `pieces` frames spread evenly over `over` (all at once if `over` is
    /// zero), then `ending`. The caller sets Content-Length.
    pub(crate) fn content(
        key: u64,
        len: u64,
        pieces: u64,
        over: Duration,
        ending: Ending,
    ) -> ServerBody {
        let pieces = pieces.clamp(1, len.max(1));
        let (piece, gap) = if over.is_zero() || pieces == 1 {
            (CHUNK, None)
        } else {
            let piece = len.div_ceil(pieces).min(CHUNK as u64) as usize;
            (piece, Some(over / (pieces - 1) as u32))
        };
        ServerBody {
            kind: Kind::Content(ContentStream {
                key,
                pos: 0,
                len,
                piece: piece.max(1),
                gap,
                sleep: None,
                ending,
                yielded_before_end: false,
            }),
        }
    }

    /// This body, if it is a whole one, sent a byte at a time, `gap` apart;
    /// streamed bodies are returned as they are.
    pub(crate) fn trickled(self, gap: Duration) -> ServerBody {
        match self.kind {
            Kind::Full(Some(bytes)) => ServerBody {
                kind: Kind::Trickle(Trickle {
                    bytes,
                    gap,
                    sleep: None,
                }),
            },
            kind => ServerBody { kind },
        }
    }

    /// Chunks of `L` forever, a few milliseconds apart.
    pub(crate) fn liar() -> ServerBody {
        ServerBody {
            kind: Kind::Liar(None),
        }
    }

    /// `head`, then the names `render(j)` for `j` in `range` as JSON strings
    /// separated by commas, then `tail`. `need_comma` says whether `head`
    /// already holds a name.
    pub(crate) fn huge_list(
        head: Vec<u8>,
        range: std::ops::Range<u64>,
        need_comma: bool,
        tail: Vec<u8>,
    ) -> ServerBody {
        ServerBody {
            kind: Kind::Huge(HugeList {
                head: Some(head.into()),
                next: range.start,
                end: range.end,
                need_comma,
                tail: Some(tail.into()),
            }),
        }
    }
}

fn poll_sleep(sleep: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> Poll<()> {
    if let Some(s) = sleep {
        if s.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        *sleep = None;
    }
    Poll::Ready(())
}

impl ContentStream {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if poll_sleep(&mut self.sleep, cx).is_pending() {
            return Poll::Pending;
        }
        if self.pos >= self.len {
            if matches!(self.ending, Ending::Abort(_)) || self.len > 0 {
                // See `yielded_before_end`. A normal ending of a full body is
                // harmless either way, so only faulty ones need this, but
                // the cost is one wake-up per streamed body.
                if !self.yielded_before_end {
                    self.yielded_before_end = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            return Poll::Ready(match &self.ending {
                Ending::Clean => None,
                Ending::Abort(reset_on_close) => {
                    if let Some(flag) = reset_on_close {
                        flag.store(true, Ordering::Relaxed);
                    }
                    Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "bulkget-server: injected connection reset",
                    )))
                }
            });
        }
        let n = (self.len - self.pos).min(self.piece as u64) as usize;
        let mut buf = vec![0; n];
        fill_content_at(self.key, self.pos, &mut buf);
        self.pos += n as u64;
        if let Some(gap) = self.gap {
            if self.pos < self.len {
                self.sleep = Some(Box::pin(tokio::time::sleep(gap)));
            }
        }
        Poll::Ready(Some(Ok(Bytes::from(buf))))
    }
}

impl HugeList {
    fn poll_next(&mut self) -> Option<Bytes> {
        if let Some(head) = self.head.take() {
            return Some(head);
        }
        if self.next < self.end {
            // About 64 KiB of JSON per frame.
            let stop = (self.next + 4096).min(self.end);
            let mut out = Vec::with_capacity(CHUNK + 1024);
            for j in self.next..stop {
                if self.need_comma {
                    out.push(b',');
                }
                self.need_comma = true;
                // `huge-` names need no JSON escaping.
                out.extend_from_slice(format!("\"huge-{j:07}\"").as_bytes());
            }
            self.next = stop;
            return Some(out.into());
        }
        self.tail.take()
    }
}

impl Body for ServerBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let next = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(Ok)),
            Kind::Content(stream) => stream.poll_next(cx),
            Kind::Liar(sleep) => {
                if poll_sleep(sleep, cx).is_pending() {
                    return Poll::Pending;
                }
                *sleep = Some(Box::pin(tokio::time::sleep(LIAR_INTERVAL)));
                Poll::Ready(Some(Ok(Bytes::from_static(&LIAR_CHUNK))))
            }
            Kind::Huge(list) => Poll::Ready(list.poll_next().map(Ok)),
            Kind::Trickle(t) => {
                if poll_sleep(&mut t.sleep, cx).is_pending() {
                    return Poll::Pending;
                }
                if t.bytes.is_empty() {
                    Poll::Ready(None)
                } else {
                    let byte = t.bytes.split_to(1);
                    if !t.bytes.is_empty() {
                        t.sleep = Some(Box::pin(tokio::time::sleep(t.gap)));
                    }
                    Poll::Ready(Some(Ok(byte)))
                }
            }
        };
        next.map(|item| item.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            // The length of what is left: hyper reads the hint once, before
            // the first frame, and sends it as Content-Length.
            Kind::Trickle(t) => SizeHint::with_exact(t.bytes.len() as u64),
            // Streams leave the length to the Content-Length header, which
            // may deliberately disagree with what is sent.
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{content, content_key};
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_content_stream_sends_exactly_the_content() {
        let len = 3 * CHUNK as u64 + 17;
        let body = ServerBody::content(content_key("n"), len, 1, Duration::ZERO, Ending::Clean);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, content("n", len as usize));
    }

    #[tokio::test]
    async fn a_slow_stream_is_paced_and_complete() {
        let start = std::time::Instant::now();
        let body = ServerBody::content(
            content_key("n"),
            100,
            5,
            Duration::from_millis(200),
            Ending::Clean,
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, content("n", 100));
        // Four gaps of 50 ms between five pieces.
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn an_aborted_stream_errors_after_its_bytes() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut body = ServerBody::content(
            content_key("n"),
            10,
            1,
            Duration::ZERO,
            Ending::Abort(Some(flag.clone())),
        );
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), content("n", 10));
        assert!(!flag.load(Ordering::Relaxed));
        assert!(body.frame().await.unwrap().is_err());
        assert!(flag.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_sends_a_byte_per_gap() {
        let start = tokio::time::Instant::now();
        let mut body = ServerBody::full("abc").trickled(Duration::from_secs(2));
        assert_eq!(body.size_hint().exact(), Some(3));
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert_eq!(data.len(), 1);
            got.extend_from_slice(&data);
        }
        assert_eq!(got, b"abc");
        // Two gaps between three bytes.
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test]
    async fn the_huge_list_is_valid_json() {
        let body = ServerBody::huge_list(
            b"{\"FileNames\":[\"a\"".to_vec(),
            0..10_000,
            true,
            b"]}".to_vec(),
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let names = v["FileNames"].as_array().unwrap();
        assert_eq!(names.len(), 10_001);
        assert_eq!(names[10_000], "huge-0009999");
    }
}
