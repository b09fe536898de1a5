//! TLS, HTTP/2 and required headers, with the server in-process on port 0
//! and clients over real sockets. The TLS client is bulkget's own
//! configuration (`bulkget_http::tls`), so these tests also show that what
//! the server writes is what a client's `--cacert` takes.
//!
//! The tests run on a multi-thread runtime so that the clients' connection
//! tasks keep running while a test's thread is blocked dropping the
//! server: they can then answer its graceful shutdown (an HTTP/2 GOAWAY and
//! PING) at once, instead of making it wait out its grace period.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use bulkget_http::tls::{self, Alpn, TlsOptions, TlsProblem};
use bulkget_server::{
    content, start, CertFault, FaultKind, RequiredHeader, ServerArgs, ServerHandle, ServerStats,
    MTLS_CA_FILE, MTLS_CERT_FILE, MTLS_KEY_FILE,
};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn serve(args: ServerArgs) -> ServerHandle {
    start(ServerArgs {
        port: 0,
        threads: Some(2),
        files: 100,
        ..args
    })
    .expect("the server starts")
}

/// A TLS server whose CA is written to `dir/ca.pem`; returns the server and
/// a client configuration that trusts that file.
fn tls_server(dir: &Path, args: ServerArgs, alpn: Alpn) -> (ServerHandle, Arc<ClientConfig>) {
    let cert_out = dir.join("ca.pem");
    let server = serve(ServerArgs {
        tls: true,
        cert_out: Some(cert_out.clone()),
        ..args
    });
    let client = trusting(&cert_out, alpn);
    (server, client)
}

fn trusting(cacert: &Path, alpn: Alpn) -> Arc<ClientConfig> {
    let options = TlsOptions {
        cacert: Some(cacert.to_owned()),
        ..TlsOptions::default()
    };
    tls::client_config(&options, alpn).expect("a client configuration")
}

/// One connection, HTTP/1.1 or HTTP/2.
enum Conn {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    version: Version,
    body: Bytes,
}

impl Conn {
    async fn open<I>(io: I, h2: bool) -> Conn
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if h2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .expect("an HTTP/2 handshake");
            tokio::spawn(conn);
            Conn::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(TokioIo::new(io))
                .await
                .expect("an HTTP/1.1 handshake");
            tokio::spawn(conn);
            Conn::H1(sender)
        }
    }

    /// A plain connection, with HTTP/2 prior knowledge if `h2`.
    async fn plain(addr: SocketAddr, h2: bool) -> Conn {
        Conn::open(TcpStream::connect(addr).await.unwrap(), h2).await
    }

    /// A TLS connection to `name`, in the HTTP version ALPN agreed on.
    async fn tls(addr: SocketAddr, client: &Arc<ClientConfig>, name: &str) -> Conn {
        let stream = tls_connect(addr, client, name)
            .await
            .expect("a TLS handshake");
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Conn::open(stream, h2).await
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Answer, hyper::Error> {
        // HTTP/2 carries the scheme and authority as pseudo-headers, so its
        // requests need an absolute URI; the server reads only the path.
        let uri = match self {
            Conn::H1(_) => path.to_owned(),
            Conn::H2(_) => format!("https://localhost{path}"),
        };
        let mut req = Request::get(uri).header("host", "localhost");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Empty::new()).unwrap();
        // `ready` waits until the connection has finished with the previous
        // response, which its task may still be doing.
        let resp = match self {
            Conn::H1(sender) => {
                sender.ready().await?;
                sender.send_request(req).await
            }
            Conn::H2(sender) => {
                sender.ready().await?;
                sender.send_request(req).await
            }
        }?;
        let status = resp.status();
        let version = resp.version();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            version,
            body,
        })
    }
}

async fn tls_connect(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    TlsConnector::from(Arc::clone(client))
        .connect(name, tcp)
        .await
}

/// Lists page 0 and fetches one file; both must succeed.
async fn list_and_get(conn: &mut Conn) -> Version {
    let list = conn.get("/list", &[]).await.unwrap();
    assert_eq!(list.status, StatusCode::OK);
    let names: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    assert_eq!(names["FileNames"][0], "file-0000000000");
    let file = conn.get("/get/file-0000000007", &[]).await.unwrap();
    assert_eq!(file.status, StatusCode::OK);
    assert_eq!(file.body, content("file-0000000007", 100));
    assert_eq!(file.version, list.version);
    file.version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn tls_with_the_written_ca_serves_h2_and_http1_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let (server, h2_client) = tls_server(dir.path(), ServerArgs::default(), Alpn::Http2AndHttp1);
    assert_eq!(
        server.ca_pem(),
        Some(
            std::fs::read_to_string(dir.path().join("ca.pem"))
                .unwrap()
                .as_str()
        )
    );
    assert!(server.base_url().starts_with("https://127.0.0.1:"));

    // The certificate is for every name a test may use for loopback.
    for name in ["localhost", "127.0.0.1"] {
        let mut conn = Conn::tls(server.addr, &h2_client, name).await;
        assert_eq!(list_and_get(&mut conn).await, Version::HTTP_2);
    }
    let h1_client = trusting(&dir.path().join("ca.pem"), Alpn::Http1);
    let mut conn = Conn::tls(server.addr, &h1_client, "localhost").await;
    assert_eq!(list_and_get(&mut conn).await, Version::HTTP_11);

    let stats = server.stats();
    assert_eq!(stats.tls_handshakes, 3);
    assert_eq!(stats.tls_handshake_failures, 0);
    assert_eq!(stats.requests_http2, 4);
    assert_eq!(stats.requests_http1, 2);
    assert_eq!(stats.connections_accepted, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn http1_only_offers_no_h2_and_refuses_h2c() {
    let dir = tempfile::tempdir().unwrap();
    let args = ServerArgs {
        http1_only: true,
        ..ServerArgs::default()
    };
    let (server, client) = tls_server(dir.path(), args.clone(), Alpn::Http2AndHttp1);
    let stream = tls_connect(server.addr, &client, "localhost")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut conn = Conn::open(stream, false).await;
    assert_eq!(list_and_get(&mut conn).await, Version::HTTP_11);

    let plain = serve(args);
    let mut h2c = Conn::plain(plain.addr, true).await;
    assert!(h2c.get("/list", &[]).await.is_err());
    assert_eq!(plain.stats().requests_http2, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn plain_connections_take_h2c_with_prior_knowledge_and_http1() {
    let server = serve(ServerArgs::default());
    assert!(server.base_url().starts_with("http://"));
    assert_eq!(server.ca_pem(), None);
    let mut h2c = Conn::plain(server.addr, true).await;
    assert_eq!(list_and_get(&mut h2c).await, Version::HTTP_2);
    let mut h1 = Conn::plain(server.addr, false).await;
    assert_eq!(list_and_get(&mut h1).await, Version::HTTP_11);
    let stats = server.stats();
    assert_eq!((stats.requests_http1, stats.requests_http2), (2, 2));
    assert_eq!(stats.tls_handshakes, 0);

    // `/_stats` carries the counts too.
    let json = h1.get("/_stats", &[]).await.unwrap().body;
    let over_http: ServerStats = serde_json::from_slice(&json).unwrap();
    assert_eq!(over_http.requests_http2, 2);
    assert_eq!(over_http.requests_http1, 3);
}

fn required(name: &str, value: &str) -> RequiredHeader {
    RequiredHeader {
        name: HeaderName::from_bytes(name.as_bytes()).unwrap(),
        value: HeaderValue::from_str(value).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn required_headers_gate_list_and_get_over_both_versions() {
    let server = serve(ServerArgs {
        require_header: vec![
            required("Authorization", "Bearer s3cret"),
            required("x-api-key", "k1"),
        ],
        redirect_rate: 1.0,
        ..ServerArgs::default()
    });
    let both = [("authorization", "Bearer s3cret"), ("X-Api-Key", "k1")];
    for h2 in [false, true] {
        let mut conn = Conn::plain(server.addr, h2).await;
        for path in [
            "/list",
            "/get/file-0000000001",
            "/get-redirected/file-0000000001",
        ] {
            for headers in [
                &[][..],
                &both[..1],
                &[("authorization", "Bearer wrong"), ("x-api-key", "k1")],
            ] {
                let answer = conn.get(path, headers).await.unwrap();
                assert_eq!(
                    answer.status,
                    StatusCode::UNAUTHORIZED,
                    "{path} {headers:?}"
                );
                let body = String::from_utf8_lossy(&answer.body);
                assert!(
                    body.contains("header") && !body.contains("s3cret"),
                    "{body}"
                );
            }
            let answer = conn.get(path, &both).await.unwrap();
            assert!(
                answer.status.is_success() || answer.status.is_redirection(),
                "{path}"
            );
        }
        // The counters stay readable without credentials.
        assert_eq!(
            conn.get("/_stats", &[]).await.unwrap().status,
            StatusCode::OK
        );
    }
    assert_eq!(server.stats().status(401), 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn one_client_configuration_resumes_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = tls_server(dir.path(), ServerArgs::default(), Alpn::Http2AndHttp1);
    for _ in 0..3 {
        let mut conn = Conn::tls(server.addr, &client, "localhost").await;
        list_and_get(&mut conn).await;
    }
    let stats = server.stats();
    assert_eq!((stats.tls_handshakes, stats.tls_resumed), (3, 2));

    // A configuration per connection starts from nothing every time.
    for _ in 0..2 {
        let fresh = trusting(&dir.path().join("ca.pem"), Alpn::Http2AndHttp1);
        let mut conn = Conn::tls(server.addr, &fresh, "localhost").await;
        list_and_get(&mut conn).await;
    }
    let stats = server.stats();
    assert_eq!((stats.tls_handshakes, stats.tls_resumed), (5, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn certificate_faults_are_refused_by_a_client_that_trusts_the_ca() {
    for (fault, problem) in [
        (CertFault::Expired, TlsProblem::Expired),
        (CertFault::WrongName, TlsProblem::NameMismatch),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let args = ServerArgs {
            cert_fault: Some(fault),
            ..ServerArgs::default()
        };
        let (server, client) = tls_server(dir.path(), args, Alpn::Http2AndHttp1);
        let err = tls_connect(server.addr, &client, "localhost")
            .await
            .expect_err("the certificate is refused");
        let failure = tls::classify(tls::find_tls_error(&err).expect("a TLS error"));
        assert_eq!(failure.problem, problem, "{failure}");
        assert!(failure.is_permanent());
        // The server sees the client's refusal as a failed handshake.
        poll(|| server.stats().tls_handshake_failures == 1).await;
    }
}

/// Waits until `done` holds (the server counts on its own threads).
async fn poll(done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "gave up waiting"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn mtls_dir_holds_a_client_certificate_that_the_server_requires() {
    let dir = tempfile::tempdir().unwrap();
    let mtls = dir.path().join("mtls");
    let args = ServerArgs {
        mtls_dir: Some(mtls.clone()),
        ..ServerArgs::default()
    };
    let (server, without) = tls_server(dir.path(), args, Alpn::Http2AndHttp1);
    for file in [MTLS_CA_FILE, MTLS_CERT_FILE, MTLS_KEY_FILE] {
        assert!(mtls.join(file).is_file(), "{file}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(mtls.join(MTLS_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let with = tls::client_config(
        &TlsOptions {
            cacert: Some(dir.path().join("ca.pem")),
            client_cert: Some(mtls.join(MTLS_CERT_FILE)),
            client_key: Some(mtls.join(MTLS_KEY_FILE)),
            insecure: false,
            alpn: Alpn::Http2AndHttp1,
        },
        Alpn::Http2AndHttp1,
    )
    .unwrap();
    let mut conn = Conn::tls(server.addr, &with, "localhost").await;
    list_and_get(&mut conn).await;

    // TLS 1.3 lets the client finish its side of the handshake before the
    // server checks the (missing) certificate, so the refusal arrives with
    // the first read. Nothing is written first: a write could race the
    // server's close and end in a broken pipe instead of the alert.
    let mut stream = tls_connect(server.addr, &without, "localhost")
        .await
        .unwrap();
    let err = stream.read(&mut [0; 16]).await.expect_err("refused");
    let refused = tls::classify(tls::find_tls_error(&err).expect("a TLS error"));
    assert_eq!(
        refused.problem,
        TlsProblem::ClientCertificateRefused,
        "{refused}"
    );
    // A request fails, whatever the HTTP version.
    for h2 in [false, true] {
        let stream = tls_connect(server.addr, &without, "localhost")
            .await
            .unwrap();
        let mut conn = Conn::open(stream, h2).await;
        assert!(conn.get("/list", &[]).await.is_err());
    }
    poll(|| server.stats().tls_handshake_failures == 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn faults_work_over_h2_and_a_reset_ends_only_its_stream() {
    let server = serve(ServerArgs {
        files: 10,
        file_size: 1000,
        reset_rate: 0.5,
        truncate_rate: 0.5,
        ..ServerArgs::default()
    });
    let dataset = server.dataset();
    let mut conn = Conn::plain(server.addr, true).await;
    for i in 0..10 {
        let path = format!("/get/{}", dataset.name(i));
        // The first attempt fails: a stream reset, or a body shorter than
        // its Content-Length, which the client's HTTP/2 layer refuses.
        assert!(conn.get(&path, &[]).await.is_err(), "{path}");
        // The next one, on the same connection, is served whole.
        let answer = conn.get(&path, &[]).await.unwrap();
        assert_eq!(answer.body, content(&dataset.name(i), 1000));
    }
    let stats = server.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(
        stats.fault(FaultKind::Reset) + stats.fault(FaultKind::Truncate),
        10
    );
    assert!(stats.fault(FaultKind::Reset) > 0 && stats.fault(FaultKind::Truncate) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_reset_over_tls_http1_ends_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let args = ServerArgs {
        reset_rate: 1.0,
        file_size: 1000,
        ..ServerArgs::default()
    };
    let (server, client) = tls_server(dir.path(), args, Alpn::Http1);
    let mut conn = Conn::tls(server.addr, &client, "localhost").await;
    assert!(conn.get("/get/file-0000000003", &[]).await.is_err());
    // The connection is gone; a new one gets the file.
    assert!(conn.get("/get/file-0000000003", &[]).await.is_err());
    let mut conn = Conn::tls(server.addr, &client, "localhost").await;
    let answer = conn.get("/get/file-0000000003", &[]).await.unwrap();
    assert_eq!(answer.body, content("file-0000000003", 1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn ipv6_loopback_serves_plain_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let v6 = ServerArgs {
        addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
        ..ServerArgs::default()
    };
    let plain = serve(v6.clone());
    assert!(
        plain.base_url().starts_with("http://[::1]:"),
        "{}",
        plain.base_url()
    );
    let mut conn = Conn::plain(plain.addr, false).await;
    list_and_get(&mut conn).await;

    let (secure, client) = tls_server(dir.path(), v6, Alpn::Http2AndHttp1);
    assert!(secure.base_url().starts_with("https://[::1]:"));
    let mut conn = Conn::tls(secure.addr, &client, "::1").await;
    assert_eq!(list_and_get(&mut conn).await, Version::HTTP_2);
}

/// Reads pipelined answers of `size`-byte files off `buf`: their bodies in
/// order, and how many bytes they took (a head ends at a blank line and
/// the body is `size` bytes, as the server writes them).
fn split_answers(buf: &[u8], size: usize) -> (Vec<Vec<u8>>, usize) {
    let mut bodies = Vec::new();
    let mut at = 0;
    while let Some(end) = buf[at..].windows(4).position(|w| w == b"\r\n\r\n") {
        let head = std::str::from_utf8(&buf[at..at + end]).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        let body = at + end + 4;
        if buf.len() < body + size {
            break;
        }
        bodies.push(buf[body..body + size].to_vec());
        at = body + size;
    }
    (bodies, at)
}

/// `--coalesce-pipelined`: the answers to requests that arrived together
/// leave in one write, so a client's first read returns all of them, each
/// the file its request named, in order. (Without the flag each answer is
/// its own write, and a read returns however many had arrived.)
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn coalesced_pipelined_answers_arrive_together_and_in_order() {
    use tokio::io::AsyncWriteExt;
    let server = serve(ServerArgs {
        coalesce_pipelined: true,
        ..ServerArgs::default()
    });
    let names: Vec<String> = (0..8).map(|i| format!("file-{:010}", i * 7)).collect();
    let requests: String = names
        .iter()
        .map(|n| format!("GET /get/{n} HTTP/1.1\r\nHost: localhost\r\n\r\n"))
        .collect();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let n = stream.read(&mut buf).await.unwrap();
    let (bodies, used) = split_answers(&buf[..n], 100);
    assert_eq!(used, n, "the read ends where an answer ends");
    assert_eq!(bodies.len(), names.len(), "one read holds every answer");
    for (body, name) in bodies.iter().zip(&names) {
        assert_eq!(body, &content(name, 100), "{name}");
    }
    assert_eq!(server.stats().connections_accepted, 1);
}
