//! The serial listing: one keep-alive connection that asks for the next page
//! as soon as the previous one is parsed.
//!
//! The lister runs on its own thread ([`ListerThread`]) and hands pages over
//! a bounded channel, so it waits for the downloads only when the
//! dispatcher's queue is full, and parsing a page never delays dispatch.
//!
//! # Memory
//!
//! A page is parsed straight into [`Names`] (its names' bytes and 4 bytes
//! each), and the next page is asked for only once the channel has room for
//! it. So at most two parsed pages exist at once: one waiting in the
//! channel, or being parsed, while the run loop cuts the other into batches.
//! The body of the page being received is the third copy of a page
//! (ARCHITECTURE.md, "Memory").

use crate::scheduler::ListPosition;
use bulkget_http::{Backoff, Conn, Endpoint, FetchError, Jitter, Limits, Proto, Transport};
use bulkget_protocol::{cut_text, Names, MAX_REASON_BYTES};
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The longest `NextMarker` accepted, in bytes. A marker is stored in every
/// checkpoint and in `coordinator.json` every second, and sent back in the
/// next request's URL; real services use tens of bytes. A longer one stops
/// the listing as an invalid page (exit 4).
pub const MAX_MARKER_BYTES: usize = 64 << 10;

/// The longest text quoted from a page's request in a message (the path
/// with its marker, or a marker), in bytes; longer ones are cut in the
/// middle.
const MAX_QUOTED: usize = 200;

/// One page as the service returns it. `NextFile` is accepted as an alias,
/// as the talk's slides use it.
#[derive(Debug, Deserialize)]
#[serde(expecting = "a list page object: {\"FileNames\": [...], \"NextMarker\": \"...\"}")]
struct RawPage {
    #[serde(rename = "FileNames")]
    file_names: Names,
    #[serde(rename = "NextMarker", alias = "NextFile", default)]
    next_marker: Option<String>,
}

/// A parsed page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub names: Names,
    /// `None` on the last page.
    pub next: Option<String>,
}

/// Why the listing stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListError {
    /// The request failed permanently, or transient errors outlasted the
    /// retries.
    Http { page: String, error: String },
    /// The body is not a list page.
    Invalid { page: String, why: String },
    /// A marker came back that was seen before: the listing would loop.
    Loop { page: String, marker: String },
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListError::Http { page, error } => write!(f, "listing failed at {page}: {error}"),
            ListError::Invalid { page, why } => write!(f, "listing failed at {page}: {why}"),
            ListError::Loop { page, marker } => write!(
                f,
                "listing failed at {page}: NextMarker {marker:?} was already seen; the listing would loop"
            ),
        }
    }
}

impl std::error::Error for ListError {}

/// How the lister behaves.
#[derive(Debug, Clone)]
pub struct ListerConfig {
    /// TCP, proxy, TLS and the headers of `-H`.
    pub transport: Transport,
    /// The protocol of the listing connection on plain http: the workers'
    /// own, so a server that speaks only h2c (`--http-version 2`) can be
    /// listed. Over TLS, ALPN decides.
    pub proto: Proto,
    pub limits: Limits,
    pub max_attempts: u32,
    pub backoff: Backoff,
}

/// Describes a page for error messages: `page 3 (GET /list?next-marker=ab12)`,
/// with an over-long path cut in the middle.
pub fn describe(seq: u64, path: &str) -> String {
    format!("page {} (GET {})", seq + 1, cut_text(path, MAX_QUOTED))
}

/// The request path for a listing position.
pub fn list_path(endpoint: &Endpoint, position: &ListPosition) -> Option<String> {
    match position {
        ListPosition::Start => Some(format!("{}/list", endpoint.prefix)),
        ListPosition::Marker(m) => {
            let mut p = format!("{}/list?next-marker=", endpoint.prefix);
            bulkget_names::push_url_encoded(&mut p, m);
            Some(p)
        }
        ListPosition::Done => None,
    }
}

/// Parses a page body, naming what is wrong in a way a user can act on.
pub fn parse_page(body: &[u8]) -> Result<Page, String> {
    let trimmed = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|i| &body[i..])
        .unwrap_or(&[]);
    if trimmed.first() == Some(&b'<') {
        return Err("the server answered with an HTML page, not a JSON list page".into());
    }
    match serde_json::from_slice::<RawPage>(body) {
        Ok(RawPage {
            next_marker: Some(m),
            ..
        }) if m.len() > MAX_MARKER_BYTES => Err(format!(
            "NextMarker is {} bytes long, over the {MAX_MARKER_BYTES}-byte limit for a marker",
            m.len()
        )),
        Ok(raw) => Ok(Page {
            names: raw.file_names,
            // An empty marker cannot name a next page; treat it as the end.
            next: raw.next_marker.filter(|m| !m.is_empty()),
        }),
        Err(e) => Err(format!(
            "invalid list page JSON: {}",
            shorten_json_error(&e)
        )),
    }
}

/// The longest part of a JSON parser message kept in an error, besides its
/// position. serde_json quotes the offending value: a `FileNames` that is
/// one string joining 2,000,000 names would otherwise make a 30 MB message.
pub const MAX_ERROR_DETAIL: usize = 200;

/// `e` as text, with an over-long middle (a quoted value) cut out, keeping
/// the start, the end (`expected a sequence`) and the line and column.
fn shorten_json_error(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let (core, position) = match full.strip_suffix(&position) {
        Some(core) => (core, position.as_str()),
        None => (full.as_str(), ""),
    };
    if core.len() <= MAX_ERROR_DETAIL {
        return full;
    }
    format!("{}{position}", cut_text(core, MAX_ERROR_DETAIL))
}

/// The time the lister spent waiting for room for its next page: the
/// back-pressure from the downloads. A wait going on now counts as far as
/// it has gone, so a lister blocked for minutes shows it at once.
#[derive(Debug)]
pub struct ListerWait {
    state: Mutex<WaitState>,
}

#[derive(Debug, Default)]
struct WaitState {
    done: Duration,
    since: Option<Instant>,
}

impl Default for ListerWait {
    fn default() -> Self {
        ListerWait {
            state: Mutex::new(WaitState::default()),
        }
    }
}

impl ListerWait {
    fn begin(&self) {
        self.lock().since = Some(Instant::now());
    }

    fn end(&self) {
        let mut s = self.lock();
        if let Some(since) = s.since.take() {
            s.done += since.elapsed();
        }
    }

    /// Milliseconds waited in all, the current wait included. Never
    /// decreases.
    pub fn total_ms(&self) -> u64 {
        let s = self.lock();
        let now = s.since.map(|t| t.elapsed()).unwrap_or_default();
        (s.done + now).as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WaitState> {
        // Nothing can panic while the lock is held.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The lister on a thread of its own, with its own single-threaded runtime.
///
/// The coordinator's thread dispatches batches and reads acknowledgements
/// for every worker; at 16 workers that is most of a core (finding 2, "The
/// coordinator is one thread", in
/// docs/benchmarks/2026-11-21-1044-profile-findings.md). Receiving and
/// parsing a page of JSON there would delay dispatch by as long; on its own
/// thread it overlaps.
/// Dropping the handle stops the lister at its next await.
pub struct ListerThread {
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ListerThread {
    /// Starts [`run`] on a new thread.
    pub fn spawn(
        endpoint: Endpoint,
        start: ListPosition,
        config: ListerConfig,
        tx: mpsc::Sender<Result<Page, ListError>>,
        wait: Arc<ListerWait>,
    ) -> std::io::Result<ListerThread> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("bulkget-lister".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        () = run(endpoint, start, config, tx, wait) => {}
                        // The handle was dropped: the run is over.
                        _ = stop_rx => {}
                    }
                });
            })?;
        Ok(ListerThread { _stop: stop_tx })
    }
}

/// The largest body buffer kept from one page to the next. A bigger one,
/// left by a huge page, is freed, so it does not stay resident for the rest
/// of the run.
const KEEP_BODY_BYTES: usize = 4 << 20;

/// Lists from `start` until the last page, sending each page (or the error
/// that stopped the listing) on `tx`. Returns when done, on error, or when
/// the receiver is dropped. A page is asked for only once `tx` has room for
/// it; the time spent waiting for that room is added to `wait`.
pub async fn run(
    endpoint: Endpoint,
    start: ListPosition,
    config: ListerConfig,
    tx: mpsc::Sender<Result<Page, ListError>>,
    wait: Arc<ListerWait>,
) {
    let mut seen: HashSet<u64> = HashSet::new();
    let mut position = start;
    if let ListPosition::Marker(m) = &position {
        seen.insert(bulkget_names::stable_hash(m));
    }
    let mut conn: Option<Conn> = None;
    let mut body = Vec::new();
    let mut jitter = Jitter::from_entropy();
    // Pages are numbered from where this listing starts (the checkpoint's
    // position on a resume), as the messages that name them say.
    let mut seq: u64 = 0;
    while let Some(path) = list_path(&endpoint, &position) {
        // Room first, then the page: a page is never parsed only to wait
        // here while another waits in the channel (ARCHITECTURE.md, "Memory").
        wait.begin();
        let permit = tx.reserve().await;
        wait.end();
        let Ok(permit) = permit else {
            return;
        };
        let page_desc = describe(seq, &path);
        let mut attempt = 0;
        let page = loop {
            attempt += 1;
            let result = fetch(&endpoint, &mut conn, &path, &config, &mut body).await;
            let parsed = result.map(|()| parse_page(&body));
            if body.capacity() > KEEP_BODY_BYTES {
                body = Vec::new();
            }
            let error = match parsed {
                Ok(Ok(p)) => break Ok(p),
                Ok(Err(why)) => {
                    break Err(ListError::Invalid {
                        page: page_desc.clone(),
                        why,
                    })
                }
                Err(e) => e,
            };
            if !error.is_transient() || attempt >= config.max_attempts {
                break Err(ListError::Http {
                    page: page_desc.clone(),
                    error: gave_up(&error, attempt, &config.transport),
                });
            }
            let text = cut_text(&error.to_string(), MAX_REASON_BYTES).into_owned();
            tracing::warn!(page = %page_desc, error = %text, attempt, "list page failed; retrying");
            tokio::time::sleep(
                config
                    .backoff
                    .delay(attempt, error.retry_after(), &mut jitter),
            )
            .await;
        };
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                permit.send(Err(e));
                return;
            }
        };
        if let Some(next) = &page.next {
            // 8 bytes a page: 10^6 pages of a billion-file run cost about
            // 16 MB with the set's overhead, and loops are caught at once.
            if !seen.insert(bulkget_names::stable_hash(next)) {
                permit.send(Err(ListError::Loop {
                    page: page_desc,
                    marker: cut_text(next, MAX_QUOTED).into_owned(),
                }));
                return;
            }
        }
        position = match &page.next {
            Some(m) => ListPosition::Marker(m.clone()),
            None => ListPosition::Done,
        };
        seq += 1;
        permit.send(Ok(page));
    }
}

/// Why a page's request failed for good, after `attempt` attempts. The
/// error may quote the server (a `Location`), so it is cut like a failure's
/// reason.
fn gave_up(error: &FetchError, attempt: u32, transport: &Transport) -> String {
    let text = cut_text(&error.to_string(), MAX_REASON_BYTES).into_owned();
    match error {
        FetchError::TooLarge { .. } => {
            format!("list page {text}; raise --max-page-size to accept it")
        }
        e if e.is_auth() => cut_text(&auth_message(e, transport), MAX_REASON_BYTES).into_owned(),
        FetchError::Timeout("request") => format!(
            "{text} (gave up after {attempt} attempts); \
             raise --list-timeout if the pages are this slow"
        ),
        e if e.is_transient() => format!("{text} (gave up after {attempt} attempts)"),
        _ => text,
    }
}

/// A 401 or 403 on a list page: the message names authentication and the
/// headers that were sent, by name only.
fn auth_message(error: &FetchError, transport: &Transport) -> String {
    let names: Vec<&str> = transport.headers.iter().map(|(n, _)| n.as_str()).collect();
    if names.is_empty() {
        format!(
            "{error}: authentication failed; no header was given, so the server may need \
             credentials: -H 'Name: value' or -H @FILE"
        )
    } else {
        format!(
            "{error}: authentication failed; the server refused the credentials sent in \
             the header(s) {}",
            names.join(", ")
        )
    }
}

async fn fetch(
    endpoint: &Endpoint,
    conn: &mut Option<Conn>,
    path: &str,
    config: &ListerConfig,
    body: &mut Vec<u8>,
) -> Result<(), FetchError> {
    if conn.as_ref().is_none_or(|c| !c.is_usable()) {
        *conn = Some(Conn::connect_with(endpoint, &config.transport, config.proto).await?);
    }
    let c = conn.as_mut().expect("connected above");
    c.get(endpoint, path, &config.limits, body)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pages_and_the_next_file_alias() {
        let p = parse_page(br#"{"FileNames": ["a", "b"], "NextMarker": "t"}"#).unwrap();
        assert_eq!(
            p,
            Page {
                names: ["a", "b"].iter().collect(),
                next: Some("t".into())
            }
        );
        let p = parse_page(br#"{"FileNames": ["a"], "NextFile": "t2"}"#).unwrap();
        assert_eq!(p.next.as_deref(), Some("t2"));
        let p = parse_page(br#"{"FileNames": []}"#).unwrap();
        assert_eq!(p.next, None);
        let p = parse_page(br#"{"FileNames": ["x"], "NextMarker": ""}"#).unwrap();
        assert_eq!(p.next, None);
    }

    #[test]
    fn bad_pages_say_what_is_wrong() {
        let e = parse_page(b"<html><body>502 Bad Gateway</body></html>").unwrap_err();
        assert!(e.contains("HTML"), "{e}");
        let e = parse_page(br#"{"FileNames": "a"}"#).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let e = parse_page(br#"{"NextMarker": "a"}"#).unwrap_err();
        assert!(e.contains("missing field `FileNames`"), "{e}");
        let e = parse_page(b"{not json").unwrap_err();
        assert!(e.contains("invalid list page JSON"), "{e}");
        let e = parse_page(br#"{"FileNames": [1, 2]}"#).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn errors_quoting_a_huge_value_stay_short_and_keep_what_was_expected() {
        // `--list-fault wrong-type` on a big page: every name in one string.
        let joined: Vec<String> = (0..100_000).map(|i| format!("file-{i:010}")).collect();
        let body = serde_json::to_vec(&serde_json::json!({
            "FileNames": joined.join(","),
            "NextMarker": "m",
        }))
        .unwrap();
        let e = parse_page(&body).unwrap_err();
        assert!(e.len() < 400, "{} bytes: {e}", e.len());
        assert!(
            e.starts_with("invalid list page JSON: invalid type: string"),
            "{e}"
        );
        assert!(e.contains("expected a sequence at line 1 column"), "{e}");
        // Multi-byte characters are never cut in half.
        let body = format!(r#"{{"FileNames": "{}"}}"#, "é".repeat(10_000));
        let e = parse_page(body.as_bytes()).unwrap_err();
        assert!(e.len() < 400 && e.contains("expected a sequence"), "{e}");
    }

    #[test]
    fn a_json_value_of_the_wrong_shape_says_what_a_page_looks_like() {
        for body in [&b"[]"[..], b"\"text\"", b"42", b"null"] {
            let e = parse_page(body).unwrap_err();
            assert!(e.contains("expected a list page object"), "{e}");
            assert!(!e.contains("RawPage"), "{e}");
        }
    }

    /// A deterministic stand-in for the `list_page` fuzz target that runs on
    /// stable Rust in every `cargo test`: random bytes, valid pages mutated
    /// (flips, insertions, deletions, splices of JSON tokens) and
    /// truncated. `parse_page` must never panic, must agree with a generic
    /// JSON parser about what it accepts, and its errors must be short.
    #[test]
    fn parse_page_survives_mutated_and_random_input() {
        const TOKENS: &[&[u8]] = &[
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"\"",
            b"\\",
            b"\\u0000",
            b"\\ud800",
            b"null",
            b"true",
            b"-1e999",
            b"1",
            b"\"FileNames\"",
            b"\"NextMarker\"",
            b"\"NextFile\"",
            b"<html>",
            b"\xff",
            b"\xc3",
            b" ",
            b"\n",
        ];
        let seeds: Vec<Vec<u8>> = vec![
            br#"{"FileNames": ["a", "b/c", "\u00e9"], "NextMarker": "t"}"#.to_vec(),
            br#"{"FileNames": [], "NextFile": "x"}"#.to_vec(),
            br#"{"NextMarker": null, "FileNames": ["x"], "Extra": {"a": [1, 2]}}"#.to_vec(),
            br#"  {"FileNames": ["a\"b", "\\", ""]}  "#.to_vec(),
        ];
        let mut rng = bulkget_http::Jitter::new(0x5eed_1157);
        let mut pick = |n: usize| rng.below(n as u64) as usize;
        let mut accepted = 0;
        for i in 0..50_000 {
            let mut input = if i % 5 == 0 {
                (0..pick(64)).map(|_| pick(256) as u8).collect()
            } else {
                seeds[pick(seeds.len())].clone()
            };
            for _ in 0..=pick(4) {
                let at = pick(input.len() + 1);
                match pick(5) {
                    0 if at < input.len() => input[at] ^= 1 << pick(8),
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    2 => input.truncate(at),
                    3 => {
                        let t = TOKENS[pick(TOKENS.len())];
                        input.splice(at..at, t.iter().copied());
                    }
                    _ => input.insert(at, pick(256) as u8),
                }
            }
            accepted += usize::from(check_page_parse(&input));
        }
        // Both ways out are exercised, not just the error path.
        assert!((1_000..49_000).contains(&accepted), "{accepted} accepted");
        // Deep nesting hits serde_json's recursion limit, not the stack.
        let deep = format!(
            r#"{{"FileNames": {}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        check_page_parse(deep.as_bytes());
    }

    /// Checks one input; returns whether it was accepted as a page.
    fn check_page_parse(input: &[u8]) -> bool {
        match parse_page(input) {
            Ok(page) => {
                assert!(page.next.as_ref().is_none_or(|m| !m.is_empty()));
                // serde_json skips the value of an unknown key without
                // checking its string escapes (`"X": "\ud800x"`), which
                // `Value` refuses; such input is fine to accept, as the
                // value is never used. Otherwise both must agree.
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(input) else {
                    return true;
                };
                let names = v["FileNames"].as_array().expect("FileNames is a list");
                assert_eq!(names.len(), page.names.len(), "{input:?}");
                for (a, b) in names.iter().zip(page.names.iter()) {
                    assert_eq!(a.as_str(), Some(b), "{input:?}");
                }
                true
            }
            Err(e) => {
                assert!(!e.is_empty());
                assert!(e.len() < 400, "{} bytes of error for {input:?}", e.len());
                false
            }
        }
    }

    #[test]
    fn markers_over_the_limit_are_refused_and_messages_about_them_stay_short() {
        let page = |marker: &str| {
            serde_json::to_vec(&serde_json::json!({"FileNames": ["a"], "NextMarker": marker}))
                .unwrap()
        };
        let longest = "m".repeat(MAX_MARKER_BYTES);
        assert_eq!(
            parse_page(&page(&longest)).unwrap().next.as_deref(),
            Some(&*longest)
        );
        // A 20 MB marker would be copied into coordinator.json every second
        // and into every checkpoint.
        let e = parse_page(&page(&"m".repeat(20 << 20))).unwrap_err();
        assert_eq!(
            e,
            "NextMarker is 20971520 bytes long, over the 65536-byte limit for a marker"
        );
        let e = Endpoint::parse("http://h:1").unwrap();
        let desc = describe(2, &list_path(&e, &ListPosition::Marker(longest)).unwrap());
        assert!(desc.len() < 300, "{desc}");
        assert!(
            desc.starts_with("page 3 (GET /list?next-marker=mmm"),
            "{desc}"
        );
    }

    #[test]
    fn a_list_error_quoting_a_huge_location_stays_short() {
        let to = format!("http://other/{}", "x".repeat(300_000));
        let e = gave_up(
            &FetchError::OffHostRedirect(to),
            1,
            &Transport::plain(Duration::from_secs(1)),
        );
        assert!(e.len() <= MAX_REASON_BYTES, "{}", e.len());
        assert!(
            e.starts_with("redirect to another host refused: http://other/xxx"),
            "{e}"
        );
        let e = gave_up(
            &FetchError::Transport("y".repeat(300_000)),
            10,
            &Transport::plain(Duration::from_secs(1)),
        );
        assert!(e.len() < MAX_REASON_BYTES + 40, "{}", e.len());
        assert!(e.ends_with("yyy (gave up after 10 attempts)"), "{e}");
    }

    #[test]
    fn the_wait_counts_as_it_goes_and_never_decreases() {
        let wait = ListerWait::default();
        assert_eq!(wait.total_ms(), 0);
        wait.begin();
        let started = Instant::now();
        let mut last = 0;
        while started.elapsed() < Duration::from_millis(30) {
            let now = wait.total_ms();
            assert!(now >= last);
            last = now;
        }
        wait.end();
        let after = wait.total_ms();
        assert!(after >= 30 && after >= last, "{after}");
        assert_eq!(wait.total_ms(), after);
    }

    #[test]
    fn list_paths_encode_the_marker() {
        let e = Endpoint::parse("http://h:1/api").unwrap();
        assert_eq!(list_path(&e, &ListPosition::Start).unwrap(), "/api/list");
        assert_eq!(
            list_path(&e, &ListPosition::Marker("a b&c".into())).unwrap(),
            "/api/list?next-marker=a%20b%26c"
        );
        assert_eq!(list_path(&e, &ListPosition::Done), None);
    }
}
