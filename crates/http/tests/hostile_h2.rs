//! `Conn` against hostile servers over both protocols: each case is one
//! misbehaviour, scripted once for HTTP/1.1 on a raw socket and once for
//! HTTP/2 with the `h2` crate's server (which lets a test trickle DATA
//! frames, lie in `content-length`, reset streams and send `GOAWAY`), and
//! every case runs against both. The HTTP/2-only cases (`REFUSED_STREAM`,
//! `GOAWAY` before the request was processed) are at the end.

use bulkget_http::{Conn, Endpoint, FetchError, Limits, Proto, Transport};
use bytes::Bytes;
use std::future::poll_fn;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One misbehaviour, for either protocol.
#[derive(Debug, Clone, Copy)]
enum Script {
    /// A 200 whose body never ends.
    EndlessBody,
    /// `content-length` far over the limit, and no body.
    HugeLength,
    /// `content-length: 1000`, then 10 bytes and the end of the response.
    ShortBody,
    /// The request is received and never answered.
    Stall,
    /// A 200 whose body comes a byte every 100 ms, forever.
    Trickle,
    /// A redirect to another host.
    OffHost,
    /// A well-behaved 200 with a 5-byte body.
    Fine,
}

/// Serves every connection on a loopback port with `script`, speaking
/// `proto`, and returns the endpoint.
async fn serve(proto: Proto, script: Script) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            match proto {
                Proto::Http1 => tokio::spawn(serve_h1(sock, script)),
                Proto::Http2 => tokio::spawn(serve_h2(sock, script)),
            };
        }
    });
    Endpoint::parse(&format!("http://{addr}")).unwrap()
}

async fn serve_h1(mut sock: TcpStream, script: Script) {
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head: &[u8] = match script {
        Script::EndlessBody => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        Script::HugeLength => b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000000\r\n\r\n",
        Script::ShortBody => b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789",
        Script::Stall => b"",
        Script::Trickle => b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n",
        Script::OffHost => {
            b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.2:9/x\r\ncontent-length: 0\r\n\r\n"
        }
        Script::Fine => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    };
    if sock.write_all(head).await.is_err() {
        return;
    }
    match script {
        Script::EndlessBody => {
            let mut chunk = b"2000\r\n".to_vec();
            chunk.extend_from_slice(&[b'x'; 0x2000]);
            chunk.extend_from_slice(b"\r\n");
            while sock.write_all(&chunk).await.is_ok() {}
        }
        Script::Trickle => loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if sock.write_all(b"x").await.is_err() {
                return;
            }
        },
        Script::ShortBody => {
            // Closes, so the body ends short.
        }
        _ => {
            // Holds the connection open, as a live server would.
            let mut rest = [0u8; 1024];
            while matches!(sock.read(&mut rest).await, Ok(n) if n > 0) {}
        }
    }
}

async fn serve_h2(sock: TcpStream, script: Script) {
    let Ok(mut conn) = h2::server::handshake(sock).await else {
        return;
    };
    while let Some(Ok((_request, respond))) = conn.accept().await {
        tokio::spawn(answer_h2(respond, script));
    }
}

async fn answer_h2(mut respond: h2::server::SendResponse<Bytes>, script: Script) {
    let response = |status: u16, headers: &[(&str, &str)]| {
        let mut r = http::Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    };
    let (head, body): (_, Option<&[u8]>) = match script {
        Script::EndlessBody => (response(200, &[]), None),
        Script::HugeLength => (response(200, &[("content-length", "1000000000000")]), None),
        Script::ShortBody => (
            response(200, &[("content-length", "1000")]),
            Some(b"0123456789"),
        ),
        Script::Stall => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Script::Trickle => (response(200, &[("content-length", "1000000")]), None),
        Script::OffHost => (
            response(302, &[("location", "http://127.0.0.2:9/x")]),
            Some(b""),
        ),
        Script::Fine => (response(200, &[("content-length", "5")]), Some(b"hello")),
    };
    let Ok(mut stream) = respond.send_response(head, false) else {
        return;
    };
    if let Some(body) = body {
        let _ = stream.send_data(Bytes::from_static(body), true);
        return;
    }
    let (piece, pause) = match script {
        Script::Trickle => (1, Duration::from_millis(100)),
        _ => (0x2000, Duration::ZERO),
    };
    loop {
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        // Flow control: send only what the client's window allows, so the
        // body is endless but the server's memory is not.
        stream.reserve_capacity(piece);
        match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) if n > 0 => {
                if stream
                    .send_data(Bytes::from(vec![b'x'; n.min(piece)]), false)
                    .is_err()
                {
                    return;
                }
            }
            Some(Ok(_)) => {}
            _ => return,
        }
    }
}

fn limits(max_body: u64) -> Limits {
    Limits {
        first_byte: Duration::from_millis(500),
        idle: Duration::from_millis(500),
        max_body,
        max_redirects: 3,
        deadline: Duration::from_secs(60),
    }
}

async fn get(
    endpoint: &Endpoint,
    proto: Proto,
    limits: &Limits,
) -> (Result<u16, FetchError>, Conn, Vec<u8>) {
    let mut conn = Conn::connect_with(endpoint, &Transport::plain(Duration::from_secs(1)), proto)
        .await
        .unwrap();
    assert_eq!(conn.proto(), proto);
    let mut body = Vec::new();
    let r = conn
        .get(endpoint, "/get/a", limits, &mut body)
        .await
        .map(|r| r.status);
    (r, conn, body)
}

const BOTH: [Proto; 2] = [Proto::Http1, Proto::Http2];

#[tokio::test]
async fn a_well_behaved_answer_arrives_over_both_protocols() {
    for proto in BOTH {
        let e = serve(proto, Script::Fine).await;
        let (r, conn, body) = get(&e, proto, &limits(1000)).await;
        assert_eq!(r, Ok(200), "{proto:?}");
        assert_eq!(body, b"hello", "{proto:?}");
        assert!(conn.is_usable(), "{proto:?}");
    }
}

#[tokio::test]
async fn an_endless_body_is_cut_at_the_limit_over_both_protocols() {
    for proto in BOTH {
        let e = serve(proto, Script::EndlessBody).await;
        let started = Instant::now();
        let (r, conn, body) = get(&e, proto, &limits(100_000)).await;
        let err = r.unwrap_err();
        assert_eq!(
            err,
            FetchError::TooLarge {
                limit: 100_000,
                declared: None
            },
            "{proto:?}"
        );
        assert!(!err.is_transient());
        assert!(body.len() <= 100_000, "{proto:?}: {} bytes", body.len());
        assert!(!conn.is_usable(), "{proto:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{proto:?}");
    }
}

#[tokio::test]
async fn a_huge_declared_length_is_refused_from_the_headers_over_both_protocols() {
    for proto in BOTH {
        let e = serve(proto, Script::HugeLength).await;
        let mut l = limits(1 << 20);
        l.idle = Duration::from_secs(30);
        let started = Instant::now();
        let (r, _conn, body) = get(&e, proto, &l).await;
        assert!(
            matches!(
                r,
                Err(FetchError::TooLarge {
                    declared: Some(1_000_000_000_000),
                    ..
                })
            ),
            "{proto:?}: {r:?}"
        );
        assert!(body.is_empty());
        assert!(started.elapsed() < Duration::from_secs(5), "{proto:?}");
    }
}

#[tokio::test]
async fn a_body_shorter_than_its_length_is_a_transient_error_over_both_protocols() {
    for proto in BOTH {
        let e = serve(proto, Script::ShortBody).await;
        let (r, conn, _body) = get(&e, proto, &limits(1 << 20)).await;
        let err = r.unwrap_err();
        // HTTP/1.1 sees the close; the h2 client checks the length itself
        // and resets the stream. Either way it is retried, never accepted.
        assert!(
            matches!(
                err,
                FetchError::ShortBody { expected: 1000, .. } | FetchError::Transport(_)
            ),
            "{proto:?}: {err:?}"
        );
        assert!(err.is_transient(), "{proto:?}");
        assert!(!conn.is_usable(), "{proto:?}");
    }
}

#[tokio::test]
async fn a_stalled_request_hits_the_first_byte_timeout_over_both_protocols() {
    for proto in BOTH {
        let e = serve(proto, Script::Stall).await;
        let started = Instant::now();
        let (r, conn, _) = get(&e, proto, &limits(1000)).await;
        assert_eq!(r, Err(FetchError::Timeout("first-byte")), "{proto:?}");
        assert!(!conn.is_usable(), "{proto:?}");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{proto:?}: {took:?}");
    }
}

#[tokio::test]
async fn a_trickled_body_hits_the_request_deadline_over_both_protocols() {
    for proto in BOTH {
        let e = serve(proto, Script::Trickle).await;
        let mut l = limits(1 << 20);
        l.deadline = Duration::from_millis(800);
        let started = Instant::now();
        let (r, _conn, body) = get(&e, proto, &l).await;
        assert_eq!(r, Err(FetchError::Timeout("request")), "{proto:?}");
        assert!(!body.is_empty(), "{proto:?}: the trickle did arrive");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{proto:?}: {took:?}");
    }
}

#[tokio::test]
async fn an_off_host_redirect_is_refused_over_both_protocols() {
    for proto in BOTH {
        let e = serve(proto, Script::OffHost).await;
        let (r, _, _) = get(&e, proto, &limits(1000)).await;
        assert!(
            matches!(r, Err(FetchError::OffHostRedirect(_))),
            "{proto:?}: {r:?}"
        );
    }
}

#[tokio::test]
async fn many_handles_share_one_http2_connection_and_http1_has_none() {
    let e = serve(Proto::Http2, Script::Fine).await;
    let conn = Conn::connect_with(&e, &Transport::plain(Duration::from_secs(1)), Proto::Http2)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut handle = conn.share().expect("HTTP/2 is shared");
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let mut body = Vec::new();
            handle
                .get(&e, "/get/a", &limits(1000), &mut body)
                .await
                .map(|_| body)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), b"hello");
    }
    let h1 = serve(Proto::Http1, Script::Fine).await;
    let plain = Conn::connect_with(&h1, &Transport::plain(Duration::from_secs(1)), Proto::Http1)
        .await
        .unwrap();
    assert!(plain.share().is_none());
}

#[tokio::test]
async fn a_refused_stream_is_not_processed_and_may_be_sent_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(sock).await.unwrap();
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    let e = Endpoint::parse(&format!("http://{addr}")).unwrap();
    let (r, conn, _) = get(&e, Proto::Http2, &limits(1000)).await;
    let err = r.unwrap_err();
    assert!(matches!(err, FetchError::NotProcessed(_)), "{err:?}");
    assert!(err.is_transient());
    assert!(!conn.is_usable(), "the shared connection is replaced");
}

/// Writes one HTTP/2 frame (RFC 9113 section 4.1).
async fn frame(sock: &mut TcpStream, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    sock.write_all(&out).await.unwrap();
}

#[tokio::test]
async fn goaway_before_the_request_was_processed_is_not_processed() {
    // A raw server: reads the client's preface and frames until its request
    // (HEADERS on stream 1) is in, then says GOAWAY with last stream 0, so
    // the request provably was not processed.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut preface = [0u8; 24];
        sock.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        frame(&mut sock, 4, 0, 0, &[]).await; // SETTINGS, empty
        loop {
            let mut head = [0u8; 9];
            sock.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            sock.read_exact(&mut payload).await.unwrap();
            if head[3] == 1 {
                break; // HEADERS: the request.
            }
        }
        let mut goaway = 0u32.to_be_bytes().to_vec(); // last stream 0
        goaway.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
        frame(&mut sock, 7, 0, 0, &goaway).await;
        let mut rest = [0u8; 1024];
        while matches!(sock.read(&mut rest).await, Ok(n) if n > 0) {}
    });
    let e = Endpoint::parse(&format!("http://{addr}")).unwrap();
    let (r, conn, _) = get(&e, Proto::Http2, &limits(1000)).await;
    let err = r.unwrap_err();
    assert!(matches!(err, FetchError::NotProcessed(_)), "{err:?}");
    assert!(!conn.is_usable());
}
