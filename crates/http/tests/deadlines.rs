//! The first-byte and idle-body deadlines of a `Conn` and the deadline of
//! a whole request, which share one re-armed timer per connection. Every test runs on tokio's paused clock:
//! the scripted server's pauses and the client's deadlines are all virtual
//! time, so the outcomes are exact and no test waits in real time.
//!
//! Every test runs twice (`against_both!`): on hyper's `Conn` and on the
//! pipelining reader `PipeConn`, one request at a time, which must keep the
//! same rules.

mod common;
use bulkget_http::{Endpoint, FetchError, Limits};
use common::HttpConn;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One step of what the scripted server does on a connection.
#[derive(Clone, Copy)]
enum Step {
    /// Read one request head.
    Head,
    /// Write these bytes.
    Send(&'static str),
    /// Wait this long (virtual time).
    Pause(Duration),
    /// Keep the connection open and say nothing more.
    Hang,
}

/// Serves one connection with `script`, then closes it.
async fn server(script: Vec<Step>) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        for step in script {
            match step {
                Step::Head => {
                    if !read_head(&mut sock, &mut buf).await {
                        return;
                    }
                }
                Step::Send(bytes) => {
                    if sock.write_all(bytes.as_bytes()).await.is_err() {
                        return;
                    }
                }
                Step::Pause(d) => tokio::time::sleep(d).await,
                Step::Hang => std::future::pending::<()>().await,
            }
        }
    });
    Endpoint::parse(&format!("http://{addr}")).unwrap()
}

/// Reads up to the end of one request head, keeping any bytes after it.
async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..i + 4);
            return true;
        }
        let mut chunk = [0u8; 1024];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Limits with a request deadline far beyond every script here, so that
/// only the tests of the deadline meet it.
fn limits(first_byte_ms: u64, idle_ms: u64) -> Limits {
    with_deadline(first_byte_ms, idle_ms, 3_600_000)
}

fn with_deadline(first_byte_ms: u64, idle_ms: u64, deadline_ms: u64) -> Limits {
    Limits {
        first_byte: Duration::from_millis(first_byte_ms),
        idle: Duration::from_millis(idle_ms),
        max_body: 1000,
        max_redirects: 3,
        deadline: Duration::from_millis(deadline_ms),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A connection to a scripted server, and the buffer its bodies go into.
struct Client<C> {
    endpoint: Endpoint,
    conn: C,
    body: Vec<u8>,
}

impl<C: HttpConn> Client<C> {
    async fn start(script: Vec<Step>) -> Client<C> {
        let endpoint = server(script).await;
        let conn = C::connect(&endpoint, ms(1000)).await.unwrap();
        Client {
            endpoint,
            conn,
            body: Vec::new(),
        }
    }

    /// A GET whose success must be a 200 (the only success these scripts
    /// send); the body is in `self.body`.
    async fn get(&mut self, path: &str, limits: &Limits) -> Result<(), FetchError> {
        let response = self
            .conn
            .get(&self.endpoint, path, limits, &mut self.body)
            .await?;
        assert_eq!(response.status, 200);
        Ok(())
    }
}

const OK_HELLO: &str = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

/// Asserts that `d` is `want` give or take the timer's one-millisecond
/// resolution (a deadline fires at the first tick at or after it).
fn assert_about(d: Duration, want: Duration) {
    assert!(
        d >= want && d <= want + ms(5),
        "took {d:?}, expected about {want:?}"
    );
}

async fn a_slow_but_steady_body_rearms_the_idle_deadline_per_frame<C: HttpConn>() {
    // Five pieces 600 ms apart: 3 s in all, three times the idle limit, but
    // never a pause as long as it.
    let mut script = vec![
        Step::Head,
        Step::Send("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
    ];
    for piece in ["h", "e", "l", "l", "o"] {
        script.push(Step::Pause(ms(600)));
        script.push(Step::Send(piece));
    }
    script.push(Step::Hang);
    let mut c = Client::<C>::start(script).await;
    c.get("/get/a", &limits(1000, 1000)).await.unwrap();
    assert_eq!(c.body, b"hello");
    assert!(c.conn.is_usable());
    assert_about(c.conn.last_latency(), ms(3000));
}

async fn a_pause_longer_than_idle_after_some_frames_is_an_idle_timeout<C: HttpConn>() {
    let mut c = Client::<C>::start(vec![
        Step::Head,
        Step::Send("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nh"),
        Step::Pause(ms(600)),
        Step::Send("e"),
        Step::Hang,
    ])
    .await;
    let err = c.get("/get/a", &limits(10_000, 1000)).await.unwrap_err();
    assert_eq!(err, FetchError::Timeout("idle-body"));
    assert!(!c.conn.is_usable());
    // The idle limit counts from the last frame ("e" at 600 ms), not from
    // the request, and the far first-byte deadline set before it does not
    // delay it.
    assert_about(c.conn.last_latency(), ms(1600));
}

async fn headers_slower_than_idle_but_within_first_byte_are_fine<C: HttpConn>() {
    let mut c = Client::<C>::start(vec![
        Step::Head,
        Step::Pause(ms(3000)),
        Step::Send(OK_HELLO),
        Step::Hang,
    ])
    .await;
    c.get("/get/a", &limits(5000, 1000)).await.unwrap();
    assert_eq!(c.body, b"hello");
    assert_about(c.conn.last_latency(), ms(3000));
}

async fn the_first_byte_timeout_still_fires_after_a_request_succeeded_on_the_same_conn<
    C: HttpConn,
>() {
    let mut c = Client::<C>::start(vec![
        Step::Head,
        Step::Pause(ms(400)),
        Step::Send(OK_HELLO),
        Step::Head,
        Step::Hang,
    ])
    .await;
    let l = limits(1000, 1000);
    c.get("/get/a", &l).await.unwrap();
    assert_eq!(c.body, b"hello");
    assert_about(c.conn.last_latency(), ms(400));

    let err = c.get("/get/b", &l).await.unwrap_err();
    assert_eq!(err, FetchError::Timeout("first-byte"));
    assert!(err.is_transient());
    assert!(!c.conn.is_usable(), "a timed-out connection is not reused");
    // The deadline counts from this request's start (from the first one's
    // it would have fired 600 ms in), and the latency of a failed request
    // is reported too.
    assert_about(c.conn.last_latency(), ms(1000));
}

async fn a_conn_left_idle_past_every_deadline_serves_the_next_request<C: HttpConn>() {
    // The shared timer's last deadline passes (and fires) while no request
    // is running; the next request must re-arm it, not see it as expired.
    let mut c = Client::<C>::start(vec![
        Step::Head,
        Step::Send(OK_HELLO),
        Step::Head,
        Step::Pause(ms(500)),
        Step::Send(OK_HELLO),
        Step::Hang,
    ])
    .await;
    let l = limits(1000, 1000);
    c.get("/get/a", &l).await.unwrap();
    // The scenario is the connection idling past its deadlines; on the
    // paused clock this advances virtual time at once.
    tokio::time::sleep(ms(5000)).await;
    c.get("/get/b", &l).await.unwrap();
    assert_eq!(c.body, b"hello");
    assert_about(c.conn.last_latency(), ms(500));
}

async fn each_redirect_gets_its_own_first_byte_deadline<C: HttpConn>() {
    // Two hops of 700 ms each: 1.4 s in all, over the 1 s first-byte
    // limit, but each hop within it, as before the timer was shared.
    let mut c = Client::<C>::start(vec![
        Step::Head,
        Step::Pause(ms(700)),
        Step::Send("HTTP/1.1 302 Found\r\nlocation: /elsewhere/a\r\ncontent-length: 0\r\n\r\n"),
        Step::Head,
        Step::Pause(ms(700)),
        Step::Send(OK_HELLO),
        Step::Hang,
    ])
    .await;
    c.get("/get/a", &limits(1000, 1000)).await.unwrap();
    assert_eq!(c.body, b"hello");
    assert_about(c.conn.last_latency(), ms(1400));
}

async fn before_any_request_the_latency_is_zero<C: HttpConn>() {
    let c = Client::<C>::start(vec![Step::Hang]).await;
    assert_eq!(c.conn.last_latency(), Duration::ZERO);
}

/// A script that sends `text` one byte every `gap` and then hangs.
fn trickle(script: &mut Vec<Step>, text: &'static str, gap: Duration) {
    for i in 0..text.len() {
        script.push(Step::Send(&text[i..i + 1]));
        script.push(Step::Pause(gap));
    }
}

async fn a_body_trickled_within_the_idle_limit_ends_at_the_request_deadline<C: HttpConn>() {
    // One byte every 2 s of a 100-byte body: 200 s, each gap well inside
    // the 30 s idle limit, which re-arms on every byte. Only the deadline
    // of the whole request ends it.
    let mut script = vec![
        Step::Head,
        Step::Send("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"),
    ];
    trickle(&mut script, "x".repeat(100).leak(), ms(2000));
    script.push(Step::Hang);
    let mut c = Client::<C>::start(script).await;
    let err = c
        .get("/get/a", &with_deadline(30_000, 30_000, 10_000))
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Timeout("request"));
    assert!(err.is_transient(), "a missed deadline is retried");
    assert_eq!(err.to_string(), "request timeout");
    assert!(
        !c.conn.is_usable(),
        "a connection cut mid-body is not reused"
    );
    assert_about(c.conn.last_latency(), ms(10_000));
}

async fn headers_trickled_within_the_first_byte_limit_end_at_the_request_deadline<C: HttpConn>() {
    let mut script = vec![Step::Head];
    trickle(
        &mut script,
        "HTTP/1.1 200 OK\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        ms(500),
    );
    script.push(Step::Hang);
    let mut c = Client::<C>::start(script).await;
    let err = c
        .get("/get/a", &with_deadline(30_000, 30_000, 4_000))
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Timeout("request"));
    assert!(!c.conn.is_usable());
    assert_about(c.conn.last_latency(), ms(4_000));
}

async fn the_earlier_of_a_wait_limit_and_the_deadline_names_the_timeout<C: HttpConn>() {
    // Headers never come: the first-byte limit (1 s) is before the
    // deadline (5 s), so it is the first-byte timeout, as before.
    let mut c = Client::<C>::start(vec![Step::Head, Step::Hang]).await;
    let err = c
        .get("/get/a", &with_deadline(1_000, 1_000, 5_000))
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Timeout("first-byte"));
    assert_about(c.conn.last_latency(), ms(1_000));

    // A body stalls at 4.5 s with an idle limit of 1 s: the idle limit
    // would end it at 5.5 s, the deadline ends it at 5 s.
    let mut c = Client::<C>::start(vec![
        Step::Head,
        Step::Pause(ms(4_000)),
        Step::Send("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nh"),
        Step::Pause(ms(500)),
        Step::Send("e"),
        Step::Hang,
    ])
    .await;
    let err = c
        .get("/get/a", &with_deadline(10_000, 1_000, 5_000))
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Timeout("request"));
    assert_about(c.conn.last_latency(), ms(5_000));
}

async fn the_deadline_covers_redirects_and_counts_from_each_request<C: HttpConn>() {
    // Two hops of 700 ms: each within the first-byte limit, together over
    // the 1.2 s deadline of the request.
    let mut c = Client::<C>::start(vec![
        Step::Head,
        Step::Pause(ms(700)),
        Step::Send("HTTP/1.1 302 Found\r\nlocation: /elsewhere/a\r\ncontent-length: 0\r\n\r\n"),
        Step::Head,
        Step::Pause(ms(700)),
        Step::Send(OK_HELLO),
        Step::Hang,
    ])
    .await;
    let err = c
        .get("/get/a", &with_deadline(1_000, 1_000, 1_200))
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Timeout("request"));
    assert_about(c.conn.last_latency(), ms(1_200));

    // Requests one after another on one connection, each taking 800 ms of
    // a 1 s deadline: 2.4 s in all, and every one succeeds, because each
    // request's deadline counts from its own start.
    let mut c = Client::<C>::start(vec![
        Step::Head,
        Step::Pause(ms(800)),
        Step::Send(OK_HELLO),
        Step::Head,
        Step::Pause(ms(800)),
        Step::Send(OK_HELLO),
        Step::Head,
        Step::Pause(ms(800)),
        Step::Send(OK_HELLO),
        Step::Hang,
    ])
    .await;
    let l = with_deadline(1_000, 1_000, 1_000);
    for path in ["/get/a", "/get/b", "/get/c"] {
        c.get(path, &l).await.unwrap();
        assert_eq!(c.body, b"hello");
        assert_about(c.conn.last_latency(), ms(800));
    }
}

against_both! {
    #[tokio::test(start_paused = true)]
    a_slow_but_steady_body_rearms_the_idle_deadline_per_frame,
    #[tokio::test(start_paused = true)]
    a_pause_longer_than_idle_after_some_frames_is_an_idle_timeout,
    #[tokio::test(start_paused = true)]
    headers_slower_than_idle_but_within_first_byte_are_fine,
    #[tokio::test(start_paused = true)]
    the_first_byte_timeout_still_fires_after_a_request_succeeded_on_the_same_conn,
    #[tokio::test(start_paused = true)]
    a_conn_left_idle_past_every_deadline_serves_the_next_request,
    #[tokio::test(start_paused = true)]
    each_redirect_gets_its_own_first_byte_deadline,
    #[tokio::test(start_paused = true)]
    before_any_request_the_latency_is_zero,
    #[tokio::test(start_paused = true)]
    a_body_trickled_within_the_idle_limit_ends_at_the_request_deadline,
    #[tokio::test(start_paused = true)]
    headers_trickled_within_the_first_byte_limit_end_at_the_request_deadline,
    #[tokio::test(start_paused = true)]
    the_earlier_of_a_wait_limit_and_the_deadline_names_the_timeout,
    #[tokio::test(start_paused = true)]
    the_deadline_covers_redirects_and_counts_from_each_request,
}
