//! The connect path of every connection: TCP, then an optional proxy
//! tunnel (`CONNECT`), then optional TLS, giving one I/O type for hyper.
//!
//! # One code path through a proxy
//!
//! A proxy is always used as a tunnel: `CONNECT host:port`, then the
//! request goes through the tunnel as it would to the server directly, for
//! `http://` as well as `https://` (what curl does with `--proxytunnel`).
//! So a connection through a proxy is the same keep-alive connection with
//! the same limits, Host header and redirect rules as one without, and the
//! proxy never sees the requests of an `https://` service.
//!
//! # Cost
//!
//! [`Io`] is an enum, not a `Box<dyn>`: a read on a plain connection is one
//! match on top of the `TcpStream` read, no allocation and no virtual call,
//! so plain HTTP keeps the cost per file it had.

use crate::proxy::Proxy;
use crate::tls::{self, TlsFailure};
use crate::{Endpoint, FetchError};
use http::{HeaderName, HeaderValue};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How connections to one endpoint are made, and the headers sent on
/// every request over them. Build it once per process and clone it (the
/// clones share the TLS configuration, and so its session cache: a
/// reconnect resumes the TLS session instead of a full handshake).
#[derive(Clone)]
pub struct Transport {
    /// TCP connect, proxy tunnel and TLS handshake together.
    pub connect_timeout: Duration,
    /// Set for `https://` endpoints.
    pub tls: Option<Arc<ClientConfig>>,
    /// The proxy to tunnel through, already chosen for this endpoint
    /// (`NO_PROXY` applied).
    pub proxy: Option<Arc<Proxy>>,
    /// Sent on every request (`-H`), marked sensitive so that hyper never
    /// shows their values.
    pub headers: Arc<[(HeaderName, HeaderValue)]>,
}

impl Transport {
    /// Plain TCP: no TLS, no proxy, no extra headers.
    pub fn plain(connect_timeout: Duration) -> Transport {
        Transport {
            connect_timeout,
            tls: None,
            proxy: None,
            headers: Arc::from(Vec::new()),
        }
    }
}

impl Transport {
    /// The transport of one process for `endpoint`: the TLS configuration
    /// is built here, once, when the endpoint is `https://` (see
    /// [`crate::tls`] on why once), offering `tls_options.alpn`.
    pub fn new(
        endpoint: &Endpoint,
        connect_timeout: Duration,
        tls_options: &tls::TlsOptions,
        proxy: Option<Proxy>,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<Transport, tls::TlsConfigError> {
        let tls = if endpoint.tls {
            Some(tls::client_config(tls_options, tls_options.alpn)?)
        } else {
            None
        };
        Ok(Transport {
            connect_timeout,
            tls,
            proxy: proxy.map(Arc::new),
            headers: Arc::from(headers),
        })
    }
}

/// Headers a user may not set: bulkget sends them itself, or they would
/// change how a response is framed.
const RESERVED_HEADERS: &[&str] = &["host", "content-length", "transfer-encoding", "connection"];

/// Parses one `Name: value` header line (`-H`). The value is marked
/// sensitive. Errors name the header, never its value.
pub fn parse_header(line: &str) -> Result<(HeaderName, HeaderValue), String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let Some((name, value)) = line.split_once(':') else {
        return Err("a header must be 'Name: value'".to_string());
    };
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{:?} is not a valid header name", name.trim()))?;
    if RESERVED_HEADERS.contains(&name.as_str()) {
        return Err(format!(
            "the {name} header is set by bulkget and cannot be given"
        ));
    }
    let mut value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of the {name} header has invalid characters"))?;
    value.set_sensitive(true);
    Ok((name, value))
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values and proxy credentials never appear in output.
        f.debug_struct("Transport")
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls.is_some())
            .field("proxy", &self.proxy)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A connected stream, plain or TLS.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>, Arc<OnceLock<FetchError>>),
}

/// What [`connect`] gives: the stream and whether ALPN chose HTTP/2.
pub struct Connected {
    pub io: Io,
    pub h2: bool,
    /// Set by the stream's first read or write that fails with a TLS error
    /// that will repeat (over TLS 1.3 a server refuses a client
    /// certificate after the handshake, in an alert the first read gets;
    /// see `record_write` for a write that meets the reset first). A
    /// request may only see "canceled" (hyper's HTTP/1.1 dispatcher) or
    /// the error's text (h2), so requests that fail look here first.
    pub tls_failure: Arc<OnceLock<FetchError>>,
}

/// Connects to `endpoint` as `transport` says, all within its connect
/// timeout.
pub async fn connect(endpoint: &Endpoint, transport: &Transport) -> Result<Connected, FetchError> {
    match tokio::time::timeout(
        transport.connect_timeout,
        connect_inner(endpoint, transport),
    )
    .await
    {
        Err(_) => Err(FetchError::Timeout("connect")),
        Ok(r) => r,
    }
}

async fn connect_inner(
    endpoint: &Endpoint,
    transport: &Transport,
) -> Result<Connected, FetchError> {
    let stream = match &transport.proxy {
        None => {
            let (host, port) = endpoint.connect_target();
            TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| FetchError::Connect(format!("{}: {e}", endpoint.authority)))?
        }
        Some(proxy) => {
            let mut s = TcpStream::connect((proxy.host.as_str(), proxy.port))
                .await
                .map_err(|e| {
                    FetchError::Connect(format!("proxy {}:{}: {e}", proxy.host, proxy.port))
                })?;
            tunnel(&mut s, endpoint, proxy).await?;
            s
        }
    };
    // Requests are tiny and latency-bound; Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    let Some(config) = &transport.tls else {
        return Ok(Connected {
            io: Io::Plain(stream),
            h2: false,
            tls_failure: Arc::default(),
        });
    };
    let name = ServerName::try_from(endpoint.bare_host().to_string()).map_err(|e| {
        FetchError::Connect(format!(
            "{} is not a valid TLS server name: {e}",
            endpoint.host
        ))
    })?;
    let tls_stream = TlsConnector::from(Arc::clone(config))
        .connect(name, stream)
        .await
        .map_err(|e| io_error(endpoint, e))?;
    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let tls_failure = Arc::default();
    Ok(Connected {
        io: Io::Tls(Box::new(tls_stream), Arc::clone(&tls_failure)),
        h2,
        tls_failure,
    })
}

/// A TLS failure as a [`FetchError`]: [`FetchError::Tls`] when it will
/// repeat on every attempt, a transient error otherwise.
pub(crate) fn tls_or(error: &(dyn std::error::Error + 'static), other: FetchError) -> FetchError {
    match tls::find_tls_error(error).map(tls::classify) {
        Some(failure) if failure.is_permanent() => FetchError::Tls(failure),
        Some(TlsFailure { message, .. }) => FetchError::Transport(message),
        None => other,
    }
}

fn io_error(endpoint: &Endpoint, e: io::Error) -> FetchError {
    let other = FetchError::Connect(format!("{}: TLS handshake: {e}", endpoint.authority));
    tls_or(&e, other)
}

/// The most a proxy's answer to `CONNECT` may take.
const MAX_PROXY_RESPONSE: usize = 16 << 10;

/// Asks the proxy for a tunnel to `endpoint` and reads its answer.
async fn tunnel(s: &mut TcpStream, endpoint: &Endpoint, proxy: &Proxy) -> Result<(), FetchError> {
    let mut head = format!(
        "CONNECT {a} HTTP/1.1\r\nHost: {a}\r\nUser-Agent: bulkget/{v}\r\n",
        a = endpoint.authority,
        v = env!("CARGO_PKG_VERSION")
    );
    if let Some(auth) = &proxy.authorization {
        head.push_str("Proxy-Authorization: ");
        head.push_str(auth.expose());
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let name = format!("proxy {}:{}", proxy.host, proxy.port);
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| FetchError::Connect(format!("{name}: {e}")))?;
    drop(head);
    // The server says nothing until it has our request (or TLS hello), so
    // everything the proxy sends before that is its answer.
    let mut answer = Vec::with_capacity(256);
    let end = loop {
        if let Some(i) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if answer.len() > MAX_PROXY_RESPONSE {
            return Err(FetchError::Connect(format!(
                "{name}: answer to CONNECT is too long"
            )));
        }
        let mut chunk = [0u8; 1024];
        match s.read(&mut chunk).await {
            Ok(0) => {
                return Err(FetchError::Connect(format!(
                    "{name} closed the connection instead of answering CONNECT"
                )))
            }
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(FetchError::Connect(format!("{name}: {e}"))),
        }
    };
    if end != answer.len() {
        return Err(FetchError::Connect(format!(
            "{name} sent data after its answer to CONNECT"
        )));
    }
    let status_line = answer
        .split(|&b| b == b'\r')
        .next()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(200..=299) => Ok(()),
        Some(407) => Err(FetchError::Proxy(format!(
            "{name} requires authentication (407): give credentials in the proxy URL, \
             http://user:password@host:port"
        ))),
        // The proxy is overloaded or cannot reach the server right now.
        Some(500..=599 | 429) => Err(FetchError::Connect(format!(
            "{name} refused the tunnel to {}: {}",
            endpoint.authority,
            status_line.trim()
        ))),
        _ => Err(FetchError::Proxy(format!(
            "{name} refused the tunnel to {}: {}",
            endpoint.authority,
            status_line.trim()
        ))),
    }
}

/// Passes `result` on, first keeping in `failure` the TLS error it carries
/// when that error will repeat.
fn record<T>(result: Poll<io::Result<T>>, failure: &OnceLock<FetchError>) -> Poll<io::Result<T>> {
    if let Poll::Ready(Err(e)) = &result {
        if failure.get().is_none() {
            if let Some(tls) = tls::find_tls_error(e).map(tls::classify) {
                if tls.is_permanent() {
                    let _ = failure.set(FetchError::Tls(tls));
                }
            }
        }
    }
    result
}

/// [`record`] for a write or flush on a TLS stream. A server that refuses
/// our client certificate after a TLS 1.3 handshake sends its alert and
/// closes, and a request written in between meets the reset: the write
/// fails with a broken pipe while the alert that says why still waits,
/// unread, in the socket's receive queue. Reading what the socket holds
/// into rustls, without waiting and without taking any plaintext out (the
/// reader may still want it), lets rustls find that alert, so the failure
/// is named rather than lost.
fn record_write<T>(
    result: Poll<io::Result<T>>,
    stream: &mut TlsStream<TcpStream>,
    failure: &OnceLock<FetchError>,
) -> Poll<io::Result<T>> {
    let result = record(result, failure);
    if let Poll::Ready(Err(e)) = &result {
        let reset = matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        );
        if reset && failure.get().is_none() {
            let (tcp, tls) = stream.get_mut();
            // Each read_tls takes at most one buffer's worth; a few are
            // enough for an alert behind a session ticket or two.
            for _ in 0..4 {
                match tls.read_tls(&mut TryRead(tcp)) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if let Err(e) = tls.process_new_packets() {
                            let e = io::Error::new(io::ErrorKind::InvalidData, e);
                            let _ = record::<()>(Poll::Ready(Err(e)), failure);
                            break;
                        }
                    }
                }
            }
        }
    }
    result
}

/// A TCP stream read as `std::io::Read` without waiting: rustls's
/// `read_tls` wants that, and `WouldBlock` ends the read. It asks the
/// socket itself: tokio's `try_read` answers `WouldBlock` without asking
/// until its reactor has seen the socket readable, which a connection that
/// only wrote since the alert arrived has not.
struct TryRead<'a>(&'a TcpStream);

impl std::io::Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::AsRawFd;
        recv(self.0.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)
    }
}

impl AsyncRead for Io {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s, failure) => record(Pin::new(s.as_mut()).poll_read(cx, buf), failure),
        }
    }
}

impl AsyncWrite for Io {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s, failure) => {
                let result = Pin::new(s.as_mut()).poll_write(cx, buf);
                record_write(result, s, failure)
            }
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s, failure) => {
                let result = Pin::new(s.as_mut()).poll_write_vectored(cx, bufs);
                record_write(result, s, failure)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s, _) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s, failure) => {
                let result = Pin::new(s.as_mut()).poll_flush(cx);
                record_write(result, s, failure)
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
