//! What the test files share: the calls a test makes on a connection, so
//! that every test of `Conn` also runs against `PipeConn` (one request at a
//! time through its own reader), and the macro that runs a test on both.

use bulkget_http::{Conn, Endpoint, FetchError, Limits, PipeConn, Response, Transport};
use std::time::Duration;

/// One HTTP/1.1 connection as the tests drive it. Not every test file
/// calls every method.
#[allow(async_fn_in_trait, dead_code)]
pub trait HttpConn: Sized {
    async fn connect(endpoint: &Endpoint, connect_timeout: Duration) -> Result<Self, FetchError>;
    async fn get(
        &mut self,
        endpoint: &Endpoint,
        path: &str,
        limits: &Limits,
        body: &mut Vec<u8>,
    ) -> Result<Response, FetchError>;
    fn is_usable(&self) -> bool;
    fn last_latency(&self) -> Duration;
}

impl HttpConn for Conn {
    async fn connect(endpoint: &Endpoint, connect_timeout: Duration) -> Result<Self, FetchError> {
        Conn::connect(endpoint, &Transport::plain(connect_timeout)).await
    }
    async fn get(
        &mut self,
        endpoint: &Endpoint,
        path: &str,
        limits: &Limits,
        body: &mut Vec<u8>,
    ) -> Result<Response, FetchError> {
        Conn::get(self, endpoint, path, limits, body).await
    }
    fn is_usable(&self) -> bool {
        Conn::is_usable(self)
    }
    fn last_latency(&self) -> Duration {
        Conn::last_latency(self)
    }
}

impl HttpConn for PipeConn {
    async fn connect(endpoint: &Endpoint, connect_timeout: Duration) -> Result<Self, FetchError> {
        PipeConn::connect(endpoint, &Transport::plain(connect_timeout)).await
    }
    async fn get(
        &mut self,
        endpoint: &Endpoint,
        path: &str,
        limits: &Limits,
        body: &mut Vec<u8>,
    ) -> Result<Response, FetchError> {
        PipeConn::get(self, endpoint, path, limits, body).await
    }
    fn is_usable(&self) -> bool {
        PipeConn::is_usable(self)
    }
    fn last_latency(&self) -> Duration {
        PipeConn::last_latency(self)
    }
}

/// Runs each listed test, an `async fn NAME<C: HttpConn>()` of the calling
/// file, as `hyper_conn::NAME` (hyper's `Conn`) and as `pipe_conn::NAME`
/// (the pipelining reader), each under the attributes given before it.
#[macro_export]
macro_rules! against_both {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        mod hyper_conn {
            $( $(#[$attr])* async fn $name() { super::$name::<bulkget_http::Conn>().await } )*
        }
        mod pipe_conn {
            $( $(#[$attr])* async fn $name() { super::$name::<bulkget_http::PipeConn>().await } )*
        }
    };
}
