use std::fmt;
use std::time::Duration;

/// What went wrong with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The TCP connection could not be made.
    Connect(String),
    /// No response or body data within the named timeout.
    Timeout(&'static str),
    /// The connection failed mid-request (reset, closed, protocol error).
    Transport(String),
    /// The server said it did not process the request (HTTP/2 `GOAWAY`
    /// naming an earlier last stream, or `REFUSED_STREAM`), so sending it
    /// again is safe and is no sign the name itself fails. Transient.
    NotProcessed(String),
    /// A status other than 2xx. `retry_after` is the server's
    /// `Retry-After` (seconds or an IMF-fixdate, capped at
    /// [`crate::MAX_RETRY_AFTER`]), when it gave a valid one.
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    /// The body ended before `Content-Length` bytes.
    ShortBody { expected: u64, got: u64 },
    /// The body is larger than the limit (declared or actually sent).
    TooLarge { limit: u64, declared: Option<u64> },
    /// A redirect to another host, which is never followed.
    OffHostRedirect(String),
    /// More redirects than allowed, or a redirect without a usable `Location`.
    BadRedirect(String),
    /// A TLS problem that every attempt would meet again (the server's
    /// certificate is not trusted, does not match, has expired; our client
    /// certificate was refused; no common protocol). Never retried.
    Tls(crate::tls::TlsFailure),
    /// The proxy refused the tunnel for a reason a retry will not cure
    /// (407 without or with wrong credentials, 403). Never retried.
    Proxy(String),
}

impl FetchError {
    /// Whether trying again may succeed: connection trouble, timeouts, short
    /// bodies, 5xx and 429. Other 4xx, oversized bodies and bad redirects
    /// fail at once, because the server will answer the same again.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Connect(_)
            | FetchError::Timeout(_)
            | FetchError::Transport(_)
            | FetchError::NotProcessed(_)
            | FetchError::ShortBody { .. } => true,
            FetchError::Status { code, .. } => *code >= 500 || *code == 429 || *code == 408,
            FetchError::TooLarge { .. }
            | FetchError::OffHostRedirect(_)
            | FetchError::BadRedirect(_)
            | FetchError::Tls(_)
            | FetchError::Proxy(_) => false,
        }
    }

    /// The HTTP status behind the error, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            FetchError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The server's requested wait before the next attempt.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the server refused us for want of credentials: 401 or 403.
    pub fn is_auth(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }

    /// Whether the connection may carry another request after this error.
    /// Only a complete error response leaves it in a known state.
    pub fn connection_reusable(&self) -> bool {
        matches!(self, FetchError::Status { .. })
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Connect(e) => write!(f, "connect failed: {e}"),
            FetchError::Timeout(which) => write!(f, "{which} timeout"),
            FetchError::Transport(e) => write!(f, "connection error: {e}"),
            FetchError::NotProcessed(e) => write!(f, "not processed by the server: {e}"),
            FetchError::Status { code, .. } => {
                let reason = http::StatusCode::from_u16(*code)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("");
                write!(f, "HTTP {code} {reason}")
            }
            FetchError::ShortBody { expected, got } => {
                write!(f, "body ended after {got} of {expected} bytes")
            }
            FetchError::TooLarge {
                limit,
                declared: Some(d),
            } => write!(f, "body of {d} bytes is over the {limit}-byte limit"),
            FetchError::TooLarge {
                limit,
                declared: None,
            } => write!(f, "body is over the {limit}-byte limit"),
            FetchError::OffHostRedirect(to) => {
                write!(f, "redirect to another host refused: {to}")
            }
            FetchError::BadRedirect(why) => write!(f, "bad redirect: {why}"),
            FetchError::Tls(failure) => write!(f, "TLS: {failure}"),
            FetchError::Proxy(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for FetchError {}
