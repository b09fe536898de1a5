//! The listener, the runtime and the handle that owns them.

use std::future::Future;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::HandshakeKind;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;

use crate::args::ServerArgs;
use crate::service::{handle, normalize_prefix, App, Connection};
use crate::stats::ServerStats;
use crate::tls::ServerTls;

/// How long in-flight responses may finish after shutdown begins. Slow and
/// liar bodies would otherwise hold the server open for ever.
const GRACE: Duration = Duration::from_secs(1);

/// A running server. Dropping it shuts the server down: it stops accepting,
/// lets in-flight responses finish for up to a second, and joins its thread.
pub struct ServerHandle {
    /// The address the server is bound to (with the real port if `--port 0`).
    pub addr: SocketAddr,
    prefix: String,
    app: Arc<App>,
    /// The certificate authority of `--tls`, as PEM.
    ca_pem: Option<String>,
    runtime: tokio::runtime::Handle,
    shutdown: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The URL a client is given: `http://IP:PORT` (`https` with `--tls`)
    /// plus `--prefix`. An unspecified bind address (`0.0.0.0`, `::`)
    /// becomes the loopback address, which is reachable.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!(
            "{}://{}{}",
            self.scheme(),
            SocketAddr::new(ip, self.addr.port()),
            self.prefix
        )
    }

    fn scheme(&self) -> &'static str {
        if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// With `--tls`, the certificate authority that signed the server's
    /// certificate, as PEM (what `--cert-out` writes).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The counters, as `GET /_stats` would answer them now.
    pub fn stats(&self) -> ServerStats {
        self.app.stats.snapshot()
    }

    /// The dataset being served.
    pub fn dataset(&self) -> &crate::Dataset {
        &self.app.dataset
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn validate(args: &ServerArgs) -> io::Result<()> {
    let transient = args.error_rate
        + args.throttle_rate
        + args.reset_rate
        + args.truncate_rate
        + args.trickle_rate
        + args.trickle_head_rate;
    if transient > 1.0 + 1e-9 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--error-rate, --throttle-rate, --reset-rate, --truncate-rate, --trickle-rate and \
                 --trickle-head-rate add up to {transient}; a name gets at most one of them, so \
                 they must add up to at most 1"
            ),
        ));
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A restarted server must not wait for the old one's TIME_WAIT sockets.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // Benchmarks open many connections at once; the default backlog of 128
    // would drop SYNs.
    socket.listen(4096)
}

/// Starts a server on its own runtime and returns once it is bound.
pub fn start(args: ServerArgs) -> io::Result<ServerHandle> {
    validate(&args)?;
    let threads = match args.threads {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("bulkget-server")
        .enable_all()
        .build()?;
    // Entering (not blocking on) the runtime registers the socket with its
    // reactor and still works when the caller is itself inside a runtime,
    // as an async test is.
    let listener = {
        let _enter = rt.enter();
        bind(SocketAddr::new(args.addr, args.port))?
    };
    let addr = listener.local_addr()?;
    // Certificates are made and written before `start` returns, so a
    // client may read `--cert-out` as soon as the server listens.
    let tls = crate::tls::setup(&args, addr.ip())?;
    let ca_pem = tls.as_ref().map(|tls| tls.ca_pem.clone());
    let protocols = Arc::new(Protocols::new(&args, tls));
    let app = Arc::new(App::new(&args));
    let (tx, rx) = watch::channel(false);
    let runtime = rt.handle().clone();
    let serving = Arc::clone(&app);
    let thread = std::thread::Builder::new()
        .name("bulkget-server-main".into())
        .spawn(move || {
            rt.block_on(async move {
                // The accept loop runs as a task so that it is polled by the
                // worker threads, next to the connections it spawns.
                let _ = tokio::spawn(serve(listener, serving, protocols, rx)).await;
            });
            // Connections still open after the grace period (a liar's
            // client that never hangs up) are dropped here.
            rt.shutdown_timeout(Duration::from_millis(100));
        })?;
    Ok(ServerHandle {
        addr,
        prefix: normalize_prefix(&args.prefix),
        app,
        ca_pem,
        runtime,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// Runs the server the way the binary does: binds, prints `listening on
/// http://IP:PORT` (`https` with `--tls`) on stdout, and serves until
/// SIGINT or SIGTERM, then shuts down gracefully and returns `Ok`.
pub fn run(args: ServerArgs) -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};

    let server = start(args)?;
    let rt = server.runtime.clone();
    // Signal handlers are installed before the line is printed, so that a
    // test that signals as soon as it reads the line gets a clean exit.
    let (mut term, mut int) = {
        let _enter = rt.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    {
        let mut out = io::stdout().lock();
        writeln!(out, "listening on {}://{}", server.scheme(), server.addr)?;
        out.flush()?;
    }
    rt.block_on(async {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    });
    drop(server);
    Ok(())
}

/// How connections are served: TLS or not, and the HTTP versions.
struct Protocols {
    tls: Option<ServerTls>,
    /// For plain connections, and TLS ones that agreed on no protocol by
    /// ALPN: HTTP/1.1, and HTTP/2 with prior knowledge (h2c: hyper-util
    /// tells them apart by the HTTP/2 preface) unless `--http1-only`.
    default: auto::Builder<TokioExecutor>,
    /// For TLS connections that agreed on `http/1.1`.
    http1: auto::Builder<TokioExecutor>,
    /// For TLS connections that agreed on `h2`.
    http2: auto::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(args: &ServerArgs, tls: Option<ServerTls>) -> Protocols {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper's header-read timeout also runs while a keep-alive
        // connection waits for its next request, so it would close idle
        // connections after 30 s; a client pausing between batches would
        // then see spurious failures, and connection counts would depend on
        // timing. A test server does not need protection from idle clients,
        // so it is off (which also spares a timer update per request).
        builder.http1().keep_alive(true).header_read_timeout(None);
        // With `--coalesce-pipelined`, hyper holds a response back while the
        // request after it is already read, and writes them together once
        // none is left: a client pipelining 16 requests then costs the
        // server one read and one write for 16 answers instead of 16 writes.
        if args.coalesce_pipelined {
            builder.http1().pipeline_flush(true);
        }
        let default = if args.http1_only {
            builder.clone().http1_only()
        } else {
            builder.clone()
        };
        Protocols {
            tls,
            default,
            http1: builder.clone().http1_only(),
            http2: builder.http2_only(),
        }
    }
}

async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    protocols: Arc<Protocols>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Every connection task holds a sender; when all are gone, the channel
    // closes and shutdown knows that the last connection has finished.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    loop {
        let stream = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning, the
                    // open connections will free descriptors.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // Small responses must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let shutdown = shutdown.clone();
        let open = open_tx.clone();
        let protocols = Arc::clone(&protocols);
        tokio::spawn(async move {
            let _open = open;
            let _counted = app.stats.connection();
            let reset_on_close = Arc::new(AtomicBool::new(false));
            let trickle_ms = Arc::new(AtomicU64::new(0));
            // Requests clone this per-connection Arc, not the shared `App`
            // one, so that concurrent connections do not contend on one
            // reference count.
            let shared = Arc::new(Connection {
                app: Arc::clone(&app),
                reset_on_close: Arc::clone(&reset_on_close),
                trickle_ms: Arc::clone(&trickle_ms),
                responses: Default::default(),
            });
            let stream = ResettableStream {
                stream,
                reset_on_close,
                trickle_ms,
                trickle_pause: None,
            };
            match &protocols.tls {
                None => serve_connection(stream, &protocols.default, shared, shutdown).await,
                Some(tls) => {
                    let Some(stream) =
                        accept_tls(&tls.acceptor, stream, &app, shutdown.clone()).await
                    else {
                        return;
                    };
                    let builder = match stream.get_ref().1.alpn_protocol() {
                        Some(b"h2") => &protocols.http2,
                        Some(b"http/1.1") => &protocols.http1,
                        _ => &protocols.default,
                    };
                    serve_connection(stream, builder, shared, shutdown).await
                }
            }
        });
    }
    drop(listener);
    drop(open_tx);
    let _ = tokio::time::timeout(GRACE, open_rx.recv()).await;
}

/// The TLS handshake, counted; `None` if it failed or shutdown came first.
async fn accept_tls(
    acceptor: &TlsAcceptor,
    stream: ResettableStream,
    app: &App,
    mut shutdown: watch::Receiver<bool>,
) -> Option<tokio_rustls::server::TlsStream<ResettableStream>> {
    let accepted = tokio::select! {
        accepted = acceptor.accept(stream) => accepted,
        _ = shutdown.changed() => return None,
    };
    match accepted {
        Ok(stream) => {
            let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
            app.stats.tls_handshake(resumed);
            Some(stream)
        }
        Err(e) => {
            // A client that refuses the certificate ends here, as it should.
            tracing::debug!("TLS handshake failed: {e}");
            app.stats.tls_handshake_failed();
            None
        }
    }
}

/// Serves the requests of one connection until it closes, or until
/// shutdown, after which in-flight requests may finish.
async fn serve_connection<I>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    shared: Arc<Connection>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(Arc::clone(&shared), req));
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Injected resets, truncations and clients that hang up on the
        // liar all end here; none is a server problem.
        tracing::debug!("connection ended: {e}");
    }
}

/// A connection's socket that closes with a TCP RST instead of a FIN when
/// an injected reset asked for it (`SO_LINGER` 0 makes `close` send RST and
/// drop unsent data, which is what a crashed peer looks like), and that
/// writes one byte at a time, `trickle_ms` apart, once a trickled answer
/// asked for it (`--trickle-head-rate`): hyper writes a response's head in
/// one go, so only the socket can make the head itself trickle.
struct ResettableStream {
    stream: TcpStream,
    reset_on_close: Arc<AtomicBool>,
    /// Zero: write normally. Otherwise the pause after each byte.
    trickle_ms: Arc<AtomicU64>,
    trickle_pause: Option<Pin<Box<Sleep>>>,
}

impl ResettableStream {
    /// Writes at most one byte of `buf` once the pause after the last one
    /// is over, when trickling; `None` when not trickling.
    fn poll_trickle(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Option<Poll<io::Result<usize>>> {
        let ms = self.trickle_ms.load(Ordering::Relaxed);
        if ms == 0 {
            return None;
        }
        if let Some(pause) = &mut self.trickle_pause {
            if pause.as_mut().poll(cx).is_pending() {
                return Some(Poll::Pending);
            }
            self.trickle_pause = None;
        }
        let n = buf.len().min(1);
        let written = Pin::new(&mut self.stream).poll_write(cx, &buf[..n]);
        if let Poll::Ready(Ok(_)) = written {
            self.trickle_pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(ms))));
        }
        Some(written)
    }
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset_on_close.load(Ordering::Relaxed) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(trickled) = this.poll_trickle(cx, buf) {
            return trickled;
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        if let Some(trickled) = this.poll_trickle(cx, first) {
            return trickled;
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
