//! Counters, updated with relaxed atomics on the request path and read as a
//! [`ServerStats`] snapshot by `GET /_stats` and [`crate::ServerHandle::stats`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::faults::FaultKind;

/// Requests by the kind of path they asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// `/list`, with or without a marker.
    pub list: u64,
    /// `/get/{name}`.
    pub get: u64,
    /// `/get-redirected/{name}`, the target of `--redirect-rate`.
    pub get_redirected: u64,
    /// `/_stats`.
    pub stats: u64,
    /// Anything else (answered 404 or 405).
    pub other: u64,
}

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.list + self.get + self.get_redirected + self.stats + self.other
    }
}

/// A snapshot of the server's counters; the JSON of `GET /_stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// TCP connections accepted since start. Tests compare it with the
    /// number of requests to prove that a client keeps connections alive.
    pub connections_accepted: u64,
    /// TCP connections open now.
    pub connections_open: u64,
    /// Requests by path kind.
    pub requests: RequestCounts,
    /// Requests that came over HTTP/1.0 or HTTP/1.1.
    pub requests_http1: u64,
    /// Requests that came over HTTP/2 (`h2` by ALPN, or h2c with prior
    /// knowledge on a plain connection).
    pub requests_http2: u64,
    /// TLS handshakes completed (none without `--tls`).
    pub tls_handshakes: u64,
    /// Of those, the ones that resumed an earlier session.
    pub tls_resumed: u64,
    /// TLS handshakes that failed: a client that refused the certificate or
    /// had none to offer under `--mtls-dir`, or that did not speak TLS.
    pub tls_handshake_failures: u64,
    /// Responses by status code (only codes that occurred).
    pub responses: BTreeMap<u16, u64>,
    /// Faults injected, by [`FaultKind::name`] (every kind, zeros included).
    pub faults: BTreeMap<String, u64>,
    /// Responses that carried `Retry-After`.
    pub retry_after_sent: u64,
    /// Requests of a name that came sooner after its `Retry-After` answer
    /// than that answer asked for.
    pub retry_after_violations: u64,
    /// The shortest gap seen between a `Retry-After` answer and the next
    /// request of the same name, if any name came back.
    pub retry_after_min_gap_ms: Option<u64>,
    /// Listing pages answered with status 200 (faulty bodies included).
    pub list_pages_served: u64,
}

impl ServerStats {
    /// Responses with status `code`.
    pub fn status(&self, code: u16) -> u64 {
        self.responses.get(&code).copied().unwrap_or(0)
    }

    /// Faults of `kind` injected.
    pub fn fault(&self, kind: FaultKind) -> u64 {
        self.faults.get(kind.name()).copied().unwrap_or(0)
    }
}

/// Which counter of [`RequestCounts`] a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathKind {
    List = 0,
    Get = 1,
    GetRedirected = 2,
    Stats = 3,
    Other = 4,
}

/// Status codes below this are counted one by one; HTTP has none above 599.
const STATUS_SLOTS: usize = 600;

/// The live counters.
pub(crate) struct Stats {
    connections_accepted: AtomicU64,
    connections_open: AtomicU64,
    requests: [AtomicU64; 5],
    requests_http1: AtomicU64,
    requests_http2: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_resumed: AtomicU64,
    tls_handshake_failures: AtomicU64,
    responses: Box<[AtomicU64]>,
    faults: [AtomicU64; FaultKind::ALL.len()],
    retry_after_sent: AtomicU64,
    retry_after_violations: AtomicU64,
    /// `u64::MAX` until a gap is seen.
    retry_after_min_gap_ms: AtomicU64,
    list_pages_served: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            connections_accepted: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            requests: Default::default(),
            requests_http1: AtomicU64::new(0),
            requests_http2: AtomicU64::new(0),
            tls_handshakes: AtomicU64::new(0),
            tls_resumed: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            responses: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            faults: Default::default(),
            retry_after_sent: AtomicU64::new(0),
            retry_after_violations: AtomicU64::new(0),
            retry_after_min_gap_ms: AtomicU64::new(u64::MAX),
            list_pages_served: AtomicU64::new(0),
        }
    }
}

/// Counts a connection as open until dropped.
pub(crate) struct OpenConnection<'a>(&'a Stats);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Relaxed);
    }
}

impl Stats {
    pub(crate) fn connection(&self) -> OpenConnection<'_> {
        self.connections_accepted.fetch_add(1, Relaxed);
        self.connections_open.fetch_add(1, Relaxed);
        OpenConnection(self)
    }

    pub(crate) fn request(&self, kind: PathKind) {
        self.requests[kind as usize].fetch_add(1, Relaxed);
    }

    /// Counts a request by the HTTP version it came in.
    pub(crate) fn version(&self, version: http::Version) {
        let counter = if version == http::Version::HTTP_2 {
            &self.requests_http2
        } else {
            &self.requests_http1
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn tls_handshake(&self, resumed: bool) {
        self.tls_handshakes.fetch_add(1, Relaxed);
        if resumed {
            self.tls_resumed.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn response(&self, status: u16) {
        if let Some(slot) = self.responses.get(status as usize) {
            slot.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn fault(&self, kind: FaultKind) {
        self.faults[kind as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn retry_after_sent(&self) {
        self.retry_after_sent.fetch_add(1, Relaxed);
    }

    /// Records the gap between a `Retry-After: asked` answer and the next
    /// request of the same name.
    pub(crate) fn retry_after_gap(&self, gap: Duration, asked: Duration) {
        if gap < asked {
            self.retry_after_violations.fetch_add(1, Relaxed);
        }
        let ms = gap.as_millis().min(u64::MAX as u128 - 1) as u64;
        self.retry_after_min_gap_ms.fetch_min(ms, Relaxed);
    }

    pub(crate) fn list_page_served(&self) {
        self.list_pages_served.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ServerStats {
        let r = |k: PathKind| self.requests[k as usize].load(Relaxed);
        let min_gap = self.retry_after_min_gap_ms.load(Relaxed);
        ServerStats {
            connections_accepted: self.connections_accepted.load(Relaxed),
            connections_open: self.connections_open.load(Relaxed),
            requests: RequestCounts {
                list: r(PathKind::List),
                get: r(PathKind::Get),
                get_redirected: r(PathKind::GetRedirected),
                stats: r(PathKind::Stats),
                other: r(PathKind::Other),
            },
            requests_http1: self.requests_http1.load(Relaxed),
            requests_http2: self.requests_http2.load(Relaxed),
            tls_handshakes: self.tls_handshakes.load(Relaxed),
            tls_resumed: self.tls_resumed.load(Relaxed),
            tls_handshake_failures: self.tls_handshake_failures.load(Relaxed),
            responses: self
                .responses
                .iter()
                .enumerate()
                .map(|(code, n)| (code as u16, n.load(Relaxed)))
                .filter(|&(_, n)| n != 0)
                .collect(),
            faults: FaultKind::ALL
                .iter()
                .map(|k| (k.name().to_owned(), self.faults[*k as usize].load(Relaxed)))
                .collect(),
            retry_after_sent: self.retry_after_sent.load(Relaxed),
            retry_after_violations: self.retry_after_violations.load(Relaxed),
            retry_after_min_gap_ms: (min_gap != u64::MAX).then_some(min_gap),
            list_pages_served: self.list_pages_served.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_through_json() {
        let stats = Stats::default();
        let _conn = stats.connection();
        stats.request(PathKind::Get);
        stats.version(http::Version::HTTP_11);
        stats.version(http::Version::HTTP_2);
        stats.version(http::Version::HTTP_2);
        stats.tls_handshake(false);
        stats.tls_handshake(true);
        stats.response(200);
        stats.response(429);
        stats.fault(FaultKind::Throttle);
        let snap = stats.snapshot();
        assert_eq!(snap.connections_open, 1);
        assert_eq!(snap.status(200), 1);
        assert_eq!(snap.fault(FaultKind::Throttle), 1);
        assert_eq!(snap.retry_after_min_gap_ms, None);
        assert_eq!((snap.requests_http1, snap.requests_http2), (1, 2));
        assert_eq!((snap.tls_handshakes, snap.tls_resumed), (2, 1));
        let json = serde_json::to_string(&snap).unwrap();
        assert!(json.contains(r#""429":1"#), "{json}");
        let back: ServerStats = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snap);
        drop(_conn);
        assert_eq!(stats.snapshot().connections_open, 0);
    }
}
