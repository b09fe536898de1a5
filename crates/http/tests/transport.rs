//! The connect path against in-process servers: TLS verification and its
//! permanent errors, session resumption on reconnect, the user's headers,
//! and a proxy that refuses the tunnel.

use bulkget_http::proxy::Proxy;
use bulkget_http::tls::{TlsOptions, TlsProblem};
use bulkget_http::transport::parse_header;
use bulkget_http::{Conn, Endpoint, FetchError, Limits, Transport};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{HandshakeKind, ServerConfig};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Ca = CertifiedIssuer<'static, KeyPair>;

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn server_config(ca: &Ca) -> Arc<ServerConfig> {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// What the TLS server saw: each request head, and each handshake's kind.
#[derive(Default)]
struct Seen {
    heads: Vec<String>,
    resumed: Vec<bool>,
}

/// An HTTPS server answering every request with `ok`, one per connection.
async fn https_server(config: Arc<ServerConfig>) -> (Endpoint, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = Endpoint::parse(&format!("https://{}", listener.local_addr().unwrap())).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let (acceptor, seen) = (acceptor.clone(), s.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
                seen.lock().unwrap().resumed.push(resumed);
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut buf = [0u8; 1024];
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .heads
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (endpoint, seen)
}

fn limits() -> Limits {
    Limits {
        first_byte: Duration::from_secs(5),
        idle: Duration::from_secs(5),
        max_body: 1 << 20,
        max_redirects: 0,
        deadline: Duration::from_secs(10),
    }
}

fn trusting(dir: &tempfile::TempDir, ca: &Ca) -> TlsOptions {
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    TlsOptions {
        cacert: Some(path),
        ..TlsOptions::default()
    }
}

#[tokio::test]
async fn headers_are_sent_and_a_reconnect_resumes_the_tls_session() {
    let server_ca = ca("server CA");
    let (endpoint, seen) = https_server(server_config(&server_ca)).await;
    let dir = tempfile::tempdir().unwrap();
    let headers = vec![
        parse_header("Authorization: Bearer t0ken").unwrap(),
        parse_header("X-Extra:  two words ").unwrap(),
    ];
    let transport = Transport::new(
        &endpoint,
        Duration::from_secs(5),
        &trusting(&dir, &server_ca),
        None,
        headers,
    )
    .unwrap();
    for _ in 0..2 {
        let mut conn = Conn::connect(&endpoint, &transport).await.unwrap();
        let mut body = Vec::new();
        conn.get(&endpoint, "/get/a", &limits(), &mut body)
            .await
            .unwrap();
        assert_eq!(body, b"ok");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.resumed,
        vec![false, true],
        "the second handshake resumes"
    );
    for head in &seen.heads {
        assert!(head.contains("authorization: Bearer t0ken\r\n"), "{head}");
        assert!(head.contains("x-extra: two words\r\n"), "{head}");
        assert!(
            head.contains(&format!("host: {}\r\n", endpoint.authority)),
            "{head}"
        );
    }
    // The transport's debug form names headers, never their values.
    assert!(!format!("{transport:?}").contains("t0ken"));
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_permanent_tls_error() {
    let (endpoint, _) = https_server(server_config(&ca("server CA"))).await;
    let dir = tempfile::tempdir().unwrap();
    let transport = Transport::new(
        &endpoint,
        Duration::from_secs(5),
        &trusting(&dir, &ca("another CA")),
        None,
        Vec::new(),
    )
    .unwrap();
    let err = Conn::connect(&endpoint, &transport).await.err().unwrap();
    match &err {
        FetchError::Tls(f) => assert_eq!(f.problem, TlsProblem::UnknownIssuer),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    assert!(!err.is_transient(), "a file fails at once: {err}");
    assert!(err.to_string().contains("unknown issuer"), "{err}");
}

/// A proxy that answers every CONNECT with `answer` and closes.
async fn refusing_proxy(answer: &'static str) -> (Proxy, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h = heads.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut buf = [0u8; 1024];
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            h.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            let _ = sock.write_all(answer.as_bytes()).await;
        }
    });
    let proxy = Proxy::parse(&format!("http://u:p@127.0.0.1:{port}")).unwrap();
    (proxy, heads)
}

#[tokio::test]
async fn a_proxy_that_wants_credentials_is_a_permanent_error_and_overload_is_not() {
    let endpoint = Endpoint::parse("http://[::1]:9/api").unwrap();
    let (proxy, heads) = refusing_proxy("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await;
    let mut transport = Transport::plain(Duration::from_secs(5));
    transport.proxy = Some(Arc::new(proxy));
    let err = Conn::connect(&endpoint, &transport).await.err().unwrap();
    assert!(matches!(err, FetchError::Proxy(_)), "{err:?}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("authentication"), "{err}");
    let head = heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("CONNECT [::1]:9 HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains("Proxy-Authorization: Basic dTpw\r\n"),
        "{head}"
    );

    let (proxy, _) = refusing_proxy("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
    transport.proxy = Some(Arc::new(proxy));
    let err = Conn::connect(&endpoint, &transport).await.err().unwrap();
    assert!(err.is_transient(), "{err:?}");
}

#[test]
fn header_lines_are_checked_without_showing_values() {
    let (name, value) = parse_header("X-Key: a b\r\n").unwrap();
    assert_eq!((name.as_str(), value.to_str().unwrap()), ("x-key", "a b"));
    assert!(value.is_sensitive());
    for bad in [
        "no colon",
        ": v",
        "Host: h",
        "Content-Length: 1",
        "bad name: v",
    ] {
        assert!(parse_header(bad).is_err(), "{bad}");
    }
    let e = parse_header("X-Key: secret\u{7f}value").unwrap_err();
    assert!(!e.contains("secret"), "{e}");
}
