//! The server started in-process on port 0 and driven over real sockets:
//! a hyper client on one keep-alive connection for the well-behaved paths,
//! and raw TCP where the server is meant to break the protocol.

use std::net::SocketAddr;
use std::time::Duration;

use bulkget_names::url_encode;
use bulkget_server::{content, start, FaultKind, ListFault, ServerArgs, ServerHandle, Transient};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn server(args: ServerArgs) -> ServerHandle {
    start(ServerArgs {
        port: 0,
        threads: Some(2),
        ..args
    })
    .expect("the server starts")
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    sender: SendRequest<Empty<Bytes>>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn { sender }
    }

    async fn get(&mut self, path: &str) -> Answer {
        let req = Request::get(path)
            .header("host", "localhost")
            .body(Empty::new())
            .unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// Lists every page, following markers; returns the names and the number
/// of pages.
async fn list_all(conn: &mut Conn, prefix: &str) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut path = format!("{prefix}/list");
    let mut pages = 0;
    loop {
        let answer = conn.get(&path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        let page = answer.json();
        pages += 1;
        for name in page["FileNames"].as_array().unwrap() {
            names.push(name.as_str().unwrap().to_owned());
        }
        match page.get("NextMarker") {
            Some(marker) => {
                path = format!("{prefix}/list?next-marker={}", marker.as_str().unwrap())
            }
            None => return (names, pages),
        }
    }
}

/// A raw request with `Connection: close`; returns the head and whatever
/// body arrived before the server closed the connection.
async fn raw_get(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
    let (head, body, _) = raw_get_ending(addr, path).await;
    (head, body)
}

/// As [`raw_get`], and whether the connection ended with a reset.
async fn raw_get_ending(addr: SocketAddr, path: &str) -> (String, Vec<u8>, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    // A reset ends the read with an error instead of EOF; what arrived
    // before it stays in the buffer.
    let reset = match stream.read_to_end(&mut all).await {
        Ok(_) => false,
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
            true
        }
    };
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8(all[..split].to_vec()).unwrap();
    (head, all[split + 4..].to_vec(), reset)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn lists_every_page_and_serves_files_over_one_connection() {
    let server = server(ServerArgs {
        files: 2500,
        page_size: 1000,
        ..ServerArgs::default()
    });
    let mut conn = Conn::open(server.addr).await;
    let (names, pages) = list_all(&mut conn, "").await;
    assert_eq!(pages, 3);
    assert_eq!(names, server.dataset().listed_names().collect::<Vec<_>>());
    assert_eq!(names.len(), 2500);
    for name in [&names[0], &names[1234], &names[2499]] {
        let answer = conn.get(&format!("/get/{}", url_encode(name))).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers["content-length"], "100");
        assert_eq!(answer.body, content(name, 100));
    }
    assert_eq!(
        conn.get("/get/file-0000002500").await.status,
        StatusCode::NOT_FOUND
    );

    let stats = server.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.connections_open, 1);
    assert_eq!(stats.requests.list, 3);
    assert_eq!(stats.requests.get, 4);
    assert_eq!(stats.list_pages_served, 3);
    assert_eq!(stats.status(200), 6);
    assert_eq!(stats.status(404), 1);

    // `/_stats` answers the same counters over HTTP.
    let over_http: bulkget_server::ServerStats =
        serde_json::from_slice(&conn.get("/_stats").await.body).unwrap();
    assert_eq!(over_http.requests.get, 4);
    assert_eq!(over_http.connections_accepted, 1);

    // A second connection is counted as such.
    let mut second = Conn::open(server.addr).await;
    second.get("/list").await;
    assert_eq!(server.stats().connections_accepted, 2);
}

#[tokio::test]
async fn forged_and_malformed_markers_are_404_with_a_json_error() {
    let server = server(ServerArgs {
        files: 100,
        page_size: 10,
        ..ServerArgs::default()
    });
    let mut conn = Conn::open(server.addr).await;
    let good = server.dataset().marker(3);
    let mut forged = good.clone().into_bytes();
    forged[0] ^= 1;
    let forged = String::from_utf8(forged).unwrap();
    for marker in [forged.as_str(), "1", "", "%zz", "0000000000000003deadbeef"] {
        let answer = conn.get(&format!("/list?next-marker={marker}")).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{marker:?}");
        assert_eq!(answer.headers["content-type"], "application/json");
        assert!(answer.json()["error"].is_string());
    }
    let answer = conn.get(&format!("/list?next-marker={good}")).await;
    assert_eq!(answer.json()["FileNames"][0], "file-0000000030");
}

#[tokio::test]
async fn throttled_names_carry_retry_after_and_early_retries_are_counted() {
    let server = server(ServerArgs {
        files: 10,
        throttle_rate: 1.0,
        retry_after: 7,
        ..ServerArgs::default()
    });
    let mut conn = Conn::open(server.addr).await;
    let first = conn.get("/get/file-0000000003").await;
    assert_eq!(first.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(first.headers["retry-after"], "7");
    // Coming back at once violates the Retry-After; the name is served
    // because --fault-attempts is 1.
    let second = conn.get("/get/file-0000000003").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body, content("file-0000000003", 100));
    let stats = server.stats();
    assert_eq!(stats.fault(FaultKind::Throttle), 1);
    assert_eq!(stats.retry_after_sent, 1);
    assert_eq!(stats.retry_after_violations, 1);
    assert!(stats.retry_after_min_gap_ms.unwrap() < 7000);
}

#[tokio::test]
async fn errors_are_5xx_for_the_configured_attempts() {
    let server = server(ServerArgs {
        files: 50,
        error_rate: 1.0,
        fault_attempts: 2,
        ..ServerArgs::default()
    });
    let mut conn = Conn::open(server.addr).await;
    for i in 0..50 {
        let path = format!("/get/file-{i:010}");
        for _ in 0..2 {
            let answer = conn.get(&path).await;
            assert!(answer.status.is_server_error(), "{}", answer.status);
            if answer.headers.contains_key("retry-after") {
                assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(answer.headers["retry-after"], "1");
            }
        }
        assert_eq!(conn.get(&path).await.status, StatusCode::OK);
    }
    let stats = server.stats();
    assert_eq!(stats.fault(FaultKind::Error), 100);
    for code in [500, 502, 503] {
        assert!(stats.status(code) > 0, "no {code}");
    }
}

#[tokio::test]
async fn resets_and_truncations_send_less_than_content_length() {
    let server = server(ServerArgs {
        files: 10,
        file_size: 1000,
        reset_rate: 0.5,
        truncate_rate: 0.5,
        ..ServerArgs::default()
    });
    let dataset = server.dataset();
    for i in 0..10 {
        let name = dataset.name(i);
        let (head, body, reset) = raw_get_ending(server.addr, &format!("/get/{name}")).await;
        let fault = dataset.faults(&name).unwrap().transient.unwrap();
        // A reset is a TCP RST; a truncation an early end of file.
        assert_eq!(reset, fault == Transient::Reset, "{fault:?}");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(header(&head, "content-length"), Some("1000"));
        assert!(!body.is_empty() && body.len() < 1000, "{}", body.len());
        // What does arrive is the right prefix of the content.
        assert_eq!(body, content(&name, 1000)[..body.len()]);
        // The second attempt is served whole.
        let (_, body) = raw_get(server.addr, &format!("/get/{name}")).await;
        assert_eq!(body, content(&name, 1000));
    }
    let stats = server.stats();
    assert_eq!(
        stats.fault(FaultKind::Reset) + stats.fault(FaultKind::Truncate),
        10
    );
}

#[tokio::test]
async fn tricky_names_are_decoded_once_and_served() {
    let server = server(ServerArgs {
        files: 3 * bulkget_server::TRICKY_VARIANTS,
        tricky: true,
        page_size: 7,
        prefix: "/api".into(),
        ..ServerArgs::default()
    });
    let mut conn = Conn::open(server.addr).await;
    let (names, _) = list_all(&mut conn, "/api").await;
    assert_eq!(names.len() as u64, 3 * bulkget_server::TRICKY_VARIANTS);
    for name in &names {
        let answer = conn.get(&format!("/api/get/{}", url_encode(name))).await;
        assert_eq!(answer.status, StatusCode::OK, "{name:?}");
        assert_eq!(answer.body, content(name, 100), "{name:?}");
    }
    // `%2F` is a slash inside the name; `%252F` a literal `%2F`.
    let slash = conn.get("/api/get/dir-0%2Fsub%2Ffile-0000000000").await;
    assert_eq!(slash.status, StatusCode::OK);
    let literal = conn.get("/api/get/literal%252F0000000000%25252F").await;
    assert_eq!(literal.body, content("literal%2F0000000000%252F", 100));
    // Decoding twice would find a different (unknown) name.
    let twice = conn.get("/api/get/literal%2F0000000000%252F").await;
    assert_eq!(twice.status, StatusCode::NOT_FOUND);
    // Without the prefix nothing is served.
    assert_eq!(conn.get("/list").await.status, StatusCode::NOT_FOUND);
    assert_eq!(server.base_url(), format!("http://{}/api", server.addr));
}

#[tokio::test]
async fn special_names_redirects_and_crash_headers() {
    let server = server(ServerArgs {
        files: 20,
        hostile_names: true,
        oversize_name: Some("big".into()),
        oversize_bytes: 300_000,
        liar_name: Some("liar".into()),
        offhost_redirect_name: Some("away".into()),
        redirect_rate: 1.0,
        crash_names: 3,
        crash_name: vec!["../escape".into()],
        ..ServerArgs::default()
    });
    let mut conn = Conn::open(server.addr).await;
    let first: Vec<String> = conn.get("/list").await.json()["FileNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    for special in ["", "nul\0byte", "big", "liar", "away"] {
        assert!(first.iter().any(|n| n == special), "{special:?} not listed");
    }

    // Every dataset name redirects on the same host.
    let answer = conn.get("/get/file-0000000001").await;
    assert_eq!(answer.status, StatusCode::TEMPORARY_REDIRECT);
    let location = answer.headers["location"].to_str().unwrap().to_owned();
    assert_eq!(location, "/get-redirected/file-0000000001");
    assert_eq!(
        conn.get(&location).await.body,
        content("file-0000000001", 100)
    );

    let away = conn.get("/get/away").await;
    assert_eq!(away.status, StatusCode::FOUND);
    assert_eq!(away.headers["location"], "http://127.0.0.2:9/get/away");

    // Hostile names are served like any other.
    let empty = conn.get("/get/").await;
    assert_eq!(empty.body, content("", 100));
    let nul = conn.get("/get/nul%00byte").await;
    assert_eq!(nul.body, content("nul\0byte", 100));
    assert_eq!(
        conn.get("/get/..%2Fescape").await.headers["x-bulkget-test-abort"],
        "1"
    );

    let big = conn.get("/get/big").await;
    assert_eq!(big.headers["content-length"], "300000");
    assert_eq!(big.body, content("big", 300_000));

    let crashing: Vec<String> = server
        .dataset()
        .listed_names()
        .filter(|n| server.dataset().faults(n).is_some_and(|f| f.crash))
        .collect();
    assert_eq!(crashing.len(), 4, "{crashing:?}");
    for name in &crashing {
        let answer = conn
            .get(&format!("/get-redirected/{}", url_encode(name)))
            .await;
        assert_eq!(answer.headers["x-bulkget-test-abort"], "1", "{name}");
    }

    // The liar declares a terabyte and keeps sending until the client
    // leaves; the server then carries on.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /get/liar HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 256 * 1024];
    let mut got = 0;
    while got < buf.len() {
        got += stream.read(&mut buf[got..]).await.unwrap();
    }
    let head = String::from_utf8_lossy(&buf[..200]);
    assert_eq!(header(&head, "content-length"), Some("1000000000000"));
    drop(stream);
    assert_eq!(conn.get("/get/big").await.status, StatusCode::OK);
    assert_eq!(server.stats().fault(FaultKind::Liar), 1);
}

#[tokio::test]
async fn fail_once_then_normal_and_next_file() {
    let server = server(ServerArgs {
        files: 30,
        page_size: 10,
        list_fault: vec![ListFault::FailOnce, ListFault::NextFile],
        ..ServerArgs::default()
    });
    let mut conn = Conn::open(server.addr).await;
    let first = conn.get("/list").await.json();
    assert!(first.get("NextMarker").is_none());
    let marker = first["NextFile"].as_str().unwrap().to_owned();
    let path = format!("/list?next-marker={marker}");
    assert_eq!(
        conn.get(&path).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(conn.get(&path).await.status, StatusCode::OK);
    assert_eq!(server.stats().fault(FaultKind::ListFailOnce), 1);
}

#[tokio::test]
async fn slow_bodies_pause_between_pieces() {
    let server = server(ServerArgs {
        files: 10,
        slow_rate: 1.0,
        slow_ms: 300,
        ..ServerArgs::default()
    });
    let mut conn = Conn::open(server.addr).await;
    let start = std::time::Instant::now();
    let answer = conn.get("/get/file-0000000004").await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(answer.body, content("file-0000000004", 100));
    // Slowness is not transient.
    let start = std::time::Instant::now();
    conn.get("/get/file-0000000004").await;
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[test]
fn the_handle_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ServerHandle>();
    send_sync::<bulkget_server::Dataset>();
}

#[test]
fn dropping_the_handle_stops_the_server() {
    let server = server(ServerArgs {
        files: 1,
        ..ServerArgs::default()
    });
    let addr = server.addr;
    std::net::TcpStream::connect(addr).expect("the server accepts");
    drop(server);
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// Writes `n` GETs in one write on a fresh connection and reads until the
/// server closes it (or `n` answers came): the status lines, in order.
async fn pipelined(addr: SocketAddr, n: u64) -> Vec<String> {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let requests: String = (0..n)
        .map(|i| format!("GET /get/file-{i:010} HTTP/1.1\r\nhost: localhost\r\n\r\n"))
        .collect();
    sock.write_all(requests.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut answers = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // Each answer is a head with a Content-Length and that many bytes.
        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
            if got.len() < end + 4 + len {
                break;
            }
            let name = format!("file-{:010}", answers.len());
            assert_eq!(
                got[end + 4..end + 4 + len],
                content(&name, 100)[..],
                "{name}"
            );
            got.drain(..end + 4 + len);
            let close = header(&head, "connection") == Some("close");
            answers.push(format!(
                "{}{}",
                head.lines().next().unwrap(),
                if close { " (close)" } else { "" }
            ));
        }
        if answers.len() as u64 == n {
            return answers;
        }
        match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return answers,
            Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
            Err(_) => panic!("the server neither answered nor closed; got {answers:?}"),
        }
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_keepalive_requests_closes() {
    let s = server(ServerArgs {
        files: 10,
        ..ServerArgs::default()
    });
    let ok = "HTTP/1.1 200 OK".to_string();
    assert_eq!(pipelined(s.addr, 5).await, vec![ok.clone(); 5]);

    // The third answer says close; the two requests behind it go unanswered.
    let s = server(ServerArgs {
        files: 10,
        keepalive_requests: 3,
        ..ServerArgs::default()
    });
    assert_eq!(
        pipelined(s.addr, 5).await,
        vec![ok.clone(), ok.clone(), format!("{ok} (close)")]
    );
}
