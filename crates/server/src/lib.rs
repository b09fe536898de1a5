//! `bulkget-server`: a fast, deterministic stand-in for the remote file
//! service, with fault injection, for end-to-end tests and benchmarks.
//!
//! # The service
//!
//! | request | answer |
//! | --- | --- |
//! | `GET {prefix}/list` | page 0: `{"FileNames": [...], "NextMarker": "m"}` |
//! | `GET {prefix}/list?next-marker=m` | the page `m` names; no `NextMarker` on the last page; an unknown marker is 404 with a JSON error |
//! | `GET {prefix}/get/{name}` | the file: 200 with Content-Length; 404 for unknown names |
//! | `GET {prefix}/get-redirected/{name}` | the same file; the target of `--redirect-rate` |
//! | `GET /_stats` (also under the prefix) | [`ServerStats`] as JSON |
//!
//! The path after `/get/` is percent-decoded once, as a whole: `%2F` is a
//! `/` inside the name and `%252F` a literal `%2F`. Methods other than GET
//! and HEAD get 405, other paths 404.
//!
//! Connections are keep-alive HTTP/1.1, or HTTP/2 with prior knowledge
//! (h2c: the HTTP/2 preface tells them apart), served by hyper on a
//! multi-thread tokio runtime (`--threads`, default: one worker per CPU).
//! `--http1-only` refuses HTTP/2. Pipelined HTTP/1.1 answers are written
//! one at a time, as nginx writes them, unless `--coalesce-pipelined`
//! (hyper's `pipeline_flush`) writes the answers to requests read together
//! at once. The server never closes an idle
//! keep-alive connection itself, so connection counts in [`ServerStats`]
//! depend only on the client. `--addr` (alias `--bind`) takes IPv4 or IPv6
//! (`::1`, `[::1]`).
//!
//! # TLS and credentials
//!
//! * `--tls` serves HTTPS with a certificate authority and a certificate for
//!   `localhost`, `127.0.0.1`, `::1` (and the bound address) made at start
//!   with rcgen; `--cert-out PATH` writes the authority as PEM before the
//!   server says it listens, for a client's `--cacert`
//!   ([`ServerHandle::ca_pem`] in-process). ALPN offers `h2` and
//!   `http/1.1` (`http/1.1` alone with `--http1-only`); sessions resume.
//! * `--cert-fault expired|wrong-name` serves a certificate from the same
//!   authority that a client must refuse anyway.
//! * `--mtls-dir DIR` makes a client CA and a client certificate and key
//!   ([`MTLS_CA_FILE`], [`MTLS_CERT_FILE`], [`MTLS_KEY_FILE`], the key
//!   mode 0600) and refuses clients without a certificate from that CA.
//! * `--require-header 'NAME: VALUE'` (repeatable) answers `/list` and
//!   `/get` with 401 unless every such header is there with exactly that
//!   value; `/_stats` stays open. The 401 names the header, never the value.
//! * [`ServerStats`] counts requests by HTTP version and TLS handshakes
//!   (full, resumed, failed).
//!
//! Faults work the same over every protocol, with one difference: over
//! HTTP/2 an injected reset resets the stream (RST_STREAM) and the
//! connection carries on, and a truncated body ends its stream early, which
//! the client's HTTP/2 layer reports as an error.
//!
//! # Layout
//!
//! * [`args`](ServerArgs): the command line, shared with in-process tests.
//! * `dataset`: names, pages, and what a name serves ([`Dataset`]). Nothing
//!   is stored per name; a name is parsed back to its index and regenerated
//!   to check it, so memory does not grow with `--files`.
//! * `content`: file bytes, a counter-based splitmix64 stream seeded with
//!   `bulkget_names::stable_hash(name)`, so any range can be produced alone
//!   ([`content`], [`fill_content`]).
//! * `markers`: opaque, self-checking listing markers.
//! * `faults`: which names get which fault (a pure function of seed, fault
//!   kind and name), and the attempt counts of transient faults.
//! * `listing`: page JSON and the listing faults.
//! * `body`: whole and streamed response bodies.
//! * `service`: routing and the answers.
//! * `stats`: atomic counters and the [`ServerStats`] snapshot.
//! * `tls`: the certificates of `--tls`, `--cert-fault` and `--mtls-dir`,
//!   and the rustls server configuration.
//! * `server`: the listener, the runtime, the protocols of a connection,
//!   [`start`], [`run`] and [`ServerHandle`].
//!
//! # Names
//!
//! Plain names are `file-{i:010}`. With `--tricky`, name `i` is variant
//! `i % 18` of group `i / 18`, each variant embedding the group number as
//! its only run of ten or more digits: spaces (leading, trailing, double),
//! `café` in NFC and NFD, `%`, `+`, `#`, `?`, `&`, `;`, `=`, a literal
//! `%2F`, a 255-byte name, a 255-byte component under a directory, names
//! differing only in case, subdirectories (`dir-3/sub/file-…`), emoji,
//! quotes and backslashes, a leading dash, leading dots. All are safe per
//! `bulkget_names::check`. Extra names (hostile, oversize, liar, off-host
//! redirect, `huge-{j:07}`) are listed on top of `--files`; see
//! [`Dataset`].
//!
//! # Faults
//!
//! A name's faults follow from a hash of (seed, fault kind, name), so tests
//! can predict them ([`Dataset::faults`]) and reruns repeat them. Hashed
//! faults apply to dataset names only, not to extra names.
//!
//! * Transient (`--error-rate`, `--throttle-rate`, `--reset-rate`,
//!   `--truncate-rate`): the name's first `--fault-attempts` requests fail,
//!   later ones succeed. The four rates partition one hash roll, so a name
//!   gets at most one of them and each is exact; their sum must not exceed
//!   one. Errors are 500, 502, 503 and 503 with `Retry-After: 1`; throttling
//!   is 429 with `Retry-After: --retry-after`; a reset sends the headers and
//!   half the body, then aborts the connection; a truncation declares the
//!   full Content-Length, sends three quarters, then closes. The server
//!   remembers attempt counts only for names in a faulted state and forgets
//!   a name when it is served.
//! * `Retry-After` is checked: the gap between such an answer and the next
//!   request of the same name is measured, and gaps shorter than asked are
//!   counted as `retry_after_violations`.
//! * `--slow-rate`: on every attempt, the headers go out at once and the
//!   body in `--slow-pieces` pieces spread over `--slow-ms` (default: half,
//!   a pause of `--slow-ms`, the rest), so a client whose idle-body timeout
//!   is shorter than the pause always fails and one with a longer timeout
//!   succeeds.
//! * `--gone-rate`: always 404, although listed.
//! * `--redirect-rate`: `/get/` answers 307 to `{prefix}/get-redirected/{name}`.
//! * `--latency-ms` delays every `/get` answer; `--list-delay-ms` every
//!   listing page but the first.
//! * `--rate-limit R`: at most R `/get` requests a second (a token bucket
//!   with a tenth of a second of burst); the rest are answered 429 with
//!   `Retry-After: 1` at once, as nginx's `limit_req` does.
//! * `--crash-names K`: exactly K dataset names, chosen by a seeded affine
//!   permutation of the indices, carry `x-bulkget-test-abort: 1` on every
//!   answer, as does every `--crash-name NAME`.
//! * Listing faults (`--list-fault KIND` on page `--list-fault-page`):
//!   `fail-once` (503 the first time), `invalid-json`, `wrong-type`
//!   (`FileNames` is a string), `missing-names`, `html` (200, text/html),
//!   `loop` (`NextMarker` points back), `huge` (2,000,000 extra names,
//!   streamed), `duplicates` (the previous page repeated first), `next-file`
//!   (the key `NextFile` on every page).
//! * Special names on page 0: `--hostile-names` (unsafe names, served like
//!   any other), `--oversize-name` (a streamed `--oversize-bytes` body),
//!   `--liar-name` (Content-Length 1 TB, then bytes until the client hangs
//!   up), `--offhost-redirect-name` (302 to `http://127.0.0.2:9/get/NAME`).
//!
//! # Use in tests
//!
//! ```no_run
//! use bulkget_server::{start, ServerArgs};
//!
//! let server = start(ServerArgs { port: 0, files: 1000, ..ServerArgs::default() }).unwrap();
//! let url = server.base_url(); // http://127.0.0.1:PORT
//! // ... run a client against `url` ...
//! for name in server.dataset().listed_names() {
//!     let _bytes = server.dataset().expected_content(&name);
//! }
//! assert!(server.stats().connections_accepted < 10);
//! ```

mod args;
mod body;
mod content;
mod dataset;
mod faults;
mod listing;
mod markers;
mod rate_limit;
mod server;
mod service;
mod stats;
mod tls;

pub use args::{CertFault, ListFault, RequiredHeader, ServerArgs};
pub use content::{content, content_key, fill_content, fill_content_at};
pub use dataset::{
    hostile_names, plain_name, tricky_name, Dataset, HUGE_EXTRA_NAMES, TRICKY_VARIANTS,
};
pub use faults::{FaultKind, NameFaults, Transient};
pub use markers::Markers;
pub use server::{run, start, ServerHandle};
pub use service::{CRASH_HEADER, OFFHOST_BASE};
pub use stats::{RequestCounts, ServerStats};
pub use tls::{MTLS_CA_FILE, MTLS_CERT_FILE, MTLS_KEY_FILE, WRONG_NAME};
