//! HTTP for bulkget: one keep-alive connection at a time, with every limit
//! a hostile server could otherwise exploit.
//!
//! # Layout
//!
//! - [`Endpoint`]: the service's base URL, parsed once (`http[s]://host:port/prefix`).
//! - [`Conn`]: one connection driven by hyper's low-level
//!   `client::conn::http1` or `http2` API ([`Proto`]), over any IO type
//!   ([`Conn::handshake`]). Over HTTP/1.1 the caller owns exactly one
//!   request at a time on it, so "C connections" means exactly C sockets (no
//!   pool that might open more), and keep-alive is under our control; over
//!   HTTP/2, [`Conn::share`] gives each request task its own handle on one
//!   multiplexed connection.
//! - [`Conn::get`]: a GET that enforces the first-byte and idle-body
//!   timeouts and a deadline for the whole request, refuses bodies over a
//!   size limit before buffering them, checks the body against
//!   `Content-Length`, and follows same-host redirects only, resolved as
//!   RFC 3986 says (`uri`).
//! - [`FetchError`]: what went wrong, and whether a retry may cure it
//!   ([`FetchError::is_transient`]).
//! - [`Backoff`]: exponential backoff with jitter that honours `Retry-After`.
//! - [`PipeConn`]: an HTTP/1.1 connection that keeps several requests in
//!   flight (pipelining), with its own response reader on `httparse` under
//!   the same limits as [`Conn`]; it tells when a server does not pipeline
//!   correctly ([`PipelineFault`]).
//! - [`tls`]: the rustls client configuration ([`tls::client_config`] from
//!   [`tls::TlsOptions`]: system roots, `--cacert`, client certificates,
//!   `--insecure`), and [`tls::classify`], which names a TLS failure and says
//!   whether it is permanent.
//!
//! - [`transport`]: the connect path of every connection (TCP, an
//!   optional proxy tunnel, optional TLS) giving one I/O type, an enum.
//! - [`proxy`]: which proxy to use, from `--proxy`, `--noproxy` and the
//!   environment as curl reads it.
//!
//! Architecture invariant: no request leaves this crate without a timeout,
//! and no body is buffered past its limit.

mod backoff;
mod conn;
mod endpoint;
mod error;
mod pipeline;
pub mod proxy;
pub mod tls;
pub mod transport;
mod uri;

pub use backoff::{parse_retry_after, Backoff, Jitter};
pub use conn::{Conn, Limits, Proto, Response, MAX_RETRY_AFTER};
pub use endpoint::{Endpoint, UrlError};
pub use error::FetchError;
pub use http::{HeaderName, HeaderValue};
pub use pipeline::{Answer, PipeConn, PipelineFault, MAX_PIPELINE_DEPTH, MIN_ANSWERS_PER_DEPTH};
pub use transport::Transport;

/// The header the test server sets on responses that should make a worker
/// abort, when the worker's test hook is on. Defined here because this is
/// the crate that reads response headers.
pub const TEST_ABORT_HEADER: &str = "x-bulkget-test-abort";
