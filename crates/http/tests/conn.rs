//! `Conn` against a scripted raw TCP server: each accepted connection answers
//! its requests with canned byte strings, so every misbehaviour is exact.
//!
//! Every test runs twice (`against_both!`): on hyper's `Conn` and on the
//! pipelining reader `PipeConn`, one request at a time, which must keep the
//! same rules.

mod common;
use bulkget_http::{Endpoint, FetchError, Limits};
use common::HttpConn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Scripted {
    endpoint: Endpoint,
    accepted: Arc<AtomicUsize>,
}

/// Serves `replies` in order, one per request, over as many connections as
/// the client opens. A reply of `None` means: hold the connection open and
/// say nothing more.
async fn scripted(replies: Vec<Option<&'static str>>) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let replies = Arc::new(tokio::sync::Mutex::new(replies.into_iter()));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let replies = replies.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // Read one request head.
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let reply = replies.lock().await.next();
                    match reply {
                        Some(Some(bytes)) => {
                            if sock.write_all(bytes.as_bytes()).await.is_err() {
                                return;
                            }
                            if bytes.ends_with("CLOSE") {
                                return;
                            }
                        }
                        Some(None) => {
                            std::future::pending::<()>().await;
                        }
                        None => return,
                    }
                }
            });
        }
    });
    Scripted {
        endpoint: Endpoint::parse(&format!("http://{addr}")).unwrap(),
        accepted,
    }
}

fn limits() -> Limits {
    Limits {
        first_byte: Duration::from_secs(5),
        idle: Duration::from_secs(5),
        max_body: 1000,
        max_redirects: 2,
        deadline: Duration::from_secs(60),
    }
}

const OK_HELLO: &str = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

async fn keep_alive_reuses_one_connection<C: HttpConn>() {
    let s = scripted(vec![Some(OK_HELLO), Some(OK_HELLO), Some(OK_HELLO)]).await;
    let mut conn = C::connect(&s.endpoint, Duration::from_secs(1))
        .await
        .unwrap();
    let mut body = Vec::new();
    for _ in 0..3 {
        let r = conn
            .get(&s.endpoint, "/get/a", &limits(), &mut body)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(body, b"hello");
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
    assert!(conn.is_usable());
}

async fn short_body_is_a_transient_error_and_breaks_the_connection<C: HttpConn>() {
    let mut body = Vec::new();
    // The reply ends with the marker "CLOSE", after which the scripted
    // server hangs up: 10 of the 50 declared bytes arrive.
    let s = scripted(vec![Some(
        "HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nhelloCLOSE",
    )])
    .await;
    let mut conn = C::connect(&s.endpoint, Duration::from_secs(1))
        .await
        .unwrap();
    let err = conn
        .get(&s.endpoint, "/get/a", &limits(), &mut body)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::ShortBody { expected: 50, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(!conn.is_usable());
}

async fn declared_oversize_is_refused_before_reading<C: HttpConn>() {
    let s = scripted(vec![Some(
        "HTTP/1.1 200 OK\r\ncontent-length: 1000000000000\r\n\r\nxx",
    )])
    .await;
    let mut conn = C::connect(&s.endpoint, Duration::from_secs(1))
        .await
        .unwrap();
    let mut body = Vec::new();
    let err = conn
        .get(&s.endpoint, "/get/a", &limits(), &mut body)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        FetchError::TooLarge {
            limit: 1000,
            declared: Some(1_000_000_000_000)
        }
    );
    assert!(!err.is_transient());
    assert!(body.capacity() < 1 << 20);
}

async fn chunked_oversize_is_refused_while_streaming<C: HttpConn>() {
    let s = scripted(vec![Some(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3e8\r\n",
    )])
    .await;
    // 1000 bytes declared in the first chunk, then more: over the limit.
    let mut conn = C::connect(&s.endpoint, Duration::from_secs(1))
        .await
        .unwrap();
    let mut body = Vec::new();
    let mut l = limits();
    l.max_body = 10;
    l.idle = Duration::from_millis(200);
    let err = conn
        .get(&s.endpoint, "/get/a", &l, &mut body)
        .await
        .unwrap_err();
    // The server sent a chunk header but no data: either the limit or the
    // idle timeout fires, and neither buffers anything.
    assert!(
        matches!(
            err,
            FetchError::Timeout("idle-body") | FetchError::TooLarge { .. }
        ),
        "{err:?}"
    );
}

async fn silent_body_hits_the_idle_timeout<C: HttpConn>() {
    let s = scripted(vec![Some("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhe")]).await;
    let mut conn = C::connect(&s.endpoint, Duration::from_secs(1))
        .await
        .unwrap();
    let mut body = Vec::new();
    let err = conn
        .get(&s.endpoint, "/get/a", &limits(), &mut body)
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Timeout("idle-body"));
    assert!(err.is_transient());
}

async fn silent_server_hits_the_first_byte_timeout<C: HttpConn>() {
    let s = scripted(vec![None]).await;
    let mut conn = C::connect(&s.endpoint, Duration::from_secs(1))
        .await
        .unwrap();
    let mut body = Vec::new();
    let err = conn
        .get(&s.endpoint, "/get/a", &limits(), &mut body)
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Timeout("first-byte"));
}

async fn statuses_are_classified_and_retry_after_read<C: HttpConn>() {
    let s = scripted(vec![
        Some("HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\ncontent-length: 4\r\n\r\nslow"),
        Some("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
        Some("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"),
        Some(OK_HELLO),
    ])
    .await;
    let mut conn = C::connect(&s.endpoint, Duration::from_secs(1))
        .await
        .unwrap();
    let mut body = Vec::new();
    let e = conn
        .get(&s.endpoint, "/get/a", &limits(), &mut body)
        .await
        .unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    assert!(e.is_transient() && conn.is_usable());
    let e = conn
        .get(&s.endpoint, "/get/a", &limits(), &mut body)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert!(!e.is_transient());
    assert_eq!(e.to_string(), "HTTP 404 Not Found");
    let e = conn
        .get(&s.endpoint, "/get/a", &limits(), &mut body)
        .await
        .unwrap_err();
    assert!(e.is_transient());
    conn.get(&s.endpoint, "/get/a", &limits(), &mut body)
        .await
        .unwrap();
    assert_eq!(
        s.accepted.load(Ordering::SeqCst),
        1,
        "error responses keep the connection"
    );
}

async fn redirects_same_host_followed_other_host_refused<C: HttpConn>() {
    let s = scripted(vec![
        Some("HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere/a\r\ncontent-length: 0\r\n\r\n"),
        Some(OK_HELLO),
        Some("HTTP/1.1 302 Found\r\nlocation: http://127.0.0.2:9/get/a\r\ncontent-length: 0\r\n\r\n"),
        Some("HTTP/1.1 302 Found\r\nlocation: /1\r\ncontent-length: 0\r\n\r\n"),
        Some("HTTP/1.1 302 Found\r\nlocation: /2\r\ncontent-length: 0\r\n\r\n"),
        Some("HTTP/1.1 302 Found\r\nlocation: /3\r\ncontent-length: 0\r\n\r\n"),
    ])
    .await;
    let mut conn = C::connect(&s.endpoint, Duration::from_secs(1))
        .await
        .unwrap();
    let mut body = Vec::new();
    conn.get(&s.endpoint, "/get/a", &limits(), &mut body)
        .await
        .unwrap();
    assert_eq!(body, b"hello");
    let e = conn
        .get(&s.endpoint, "/get/a", &limits(), &mut body)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::OffHostRedirect(_)), "{e:?}");
    assert!(!e.is_transient());
    let mut conn = C::connect(&s.endpoint, Duration::from_secs(1))
        .await
        .unwrap();
    let e = conn
        .get(&s.endpoint, "/get/a", &limits(), &mut body)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::BadRedirect(_)), "{e:?}");
}

async fn connect_refused_is_transient<C: HttpConn>() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let e = Endpoint::parse(&format!("http://{addr}")).unwrap();
    let err = C::connect(&e, Duration::from_secs(1)).await.err().unwrap();
    assert!(matches!(err, FetchError::Connect(_)));
    assert!(err.is_transient());
}

against_both! {
    #[tokio::test]
    keep_alive_reuses_one_connection,
    #[tokio::test]
    short_body_is_a_transient_error_and_breaks_the_connection,
    #[tokio::test]
    declared_oversize_is_refused_before_reading,
    #[tokio::test]
    chunked_oversize_is_refused_while_streaming,
    #[tokio::test(start_paused = true)]
    silent_body_hits_the_idle_timeout,
    #[tokio::test(start_paused = true)]
    silent_server_hits_the_first_byte_timeout,
    #[tokio::test]
    statuses_are_classified_and_retry_after_read,
    #[tokio::test]
    redirects_same_host_followed_other_host_refused,
    #[tokio::test]
    connect_refused_is_transient,
}
