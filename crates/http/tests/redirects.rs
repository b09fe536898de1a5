//! Relative redirects against a scripted server that records the request
//! line of every request, so the test sees exactly which path was asked for.
//!
//! Every test runs twice (`against_both!`): on hyper's `Conn` and on the
//! pipelining reader `PipeConn`, one request at a time, which must keep the
//! same rules.

mod common;
use bulkget_http::{Endpoint, Limits};
use common::HttpConn;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers each request by its path from `routes` (404 for any other
/// path) on one keep-alive connection, and records the paths asked for.
async fn server(routes: Vec<(&'static str, &'static str)>) -> (Endpoint, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        loop {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end);
            // "GET /path HTTP/1.1"
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            log.lock().unwrap().push(path.clone());
            let reply = routes
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, r)| *r)
                .unwrap_or("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
            if sock.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    (
        Endpoint::parse(&format!("http://{addr}/api")).unwrap(),
        seen,
    )
}

async fn relative_locations_with_dot_segments_are_resolved_before_they_are_requested<
    C: HttpConn,
>() {
    let (endpoint, seen) = server(vec![
        (
            "/api/get/a",
            "HTTP/1.1 302 Found\r\nlocation: ../blob/./x\r\ncontent-length: 0\r\n\r\n",
        ),
        (
            "/api/blob/x",
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: ../../y/../z?q=1#f\r\ncontent-length: 0\r\n\r\n",
        ),
        (
            "/z?q=1",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        ),
    ])
    .await;
    let mut conn = C::connect(&endpoint, Duration::from_secs(5)).await.unwrap();
    let limits = Limits {
        first_byte: Duration::from_secs(5),
        idle: Duration::from_secs(5),
        max_body: 1000,
        max_redirects: 3,
        deadline: Duration::from_secs(10),
    };
    let mut body = Vec::new();
    let response = conn
        .get(&endpoint, "/api/get/a", &limits, &mut body)
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(body, b"hello");
    // Never `/api/get/../blob/./x`, and the fragment is not sent.
    assert_eq!(
        *seen.lock().unwrap(),
        ["/api/get/a", "/api/blob/x", "/z?q=1"]
    );
}

against_both! {
    #[tokio::test]
    relative_locations_with_dot_segments_are_resolved_before_they_are_requested,
}
