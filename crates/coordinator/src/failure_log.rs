//! Every permanent failure named where the user looks: on stderr as it
//! happens, and in the summary at the end.
//!
//! A billion-file run can fail a million files (a server that lost a
//! directory), and a line each would bury the terminal and every other
//! message. So the first [`SHOWN_IN_FULL`] failures get a line each,
//! `bulkget: failed: "NAME": REASON`, and after that a count line at most
//! every [`COUNT_EVERY`], plus one at the end for the rest. The summary
//! lists the first [`IN_SUMMARY`]. `failed.jsonl` holds every failure,
//! whatever is shown.
//!
//! Names come from the server. One holding a newline could forge a line
//! ("bulkget: failed: ..." of a file that did not fail) and one holding an
//! escape sequence could rewrite the terminal, so a name is shown quoted and
//! escaped as Rust's `{:?}` does (`"a\nb"`), and a reason (which may quote a
//! name) has its control and invisible characters escaped the same way.
//!
//! The clock is passed in, so the cap and the count interval are unit-tested
//! without waiting.

use bulkget_protocol::Failure;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How many failures are shown a line each.
pub const SHOWN_IN_FULL: u64 = 1_000;
/// After that, at most one count line this often.
pub const COUNT_EVERY: Duration = Duration::from_secs(10);
/// How many failures the summary lists.
pub const IN_SUMMARY: usize = 20;

/// What this process has shown of the failures it recorded.
#[derive(Debug)]
pub struct FailureLog {
    /// `failed.jsonl`, which the messages point to.
    failed_path: PathBuf,
    /// Failures recorded by this process.
    seen: u64,
    /// Failures recorded since the last line that showed or counted them.
    unshown: u64,
    /// When the last count line was printed, or when the cap was reached.
    last_count: Option<Instant>,
    /// The first [`IN_SUMMARY`] failures, for the summary.
    first: Vec<Failure>,
}

impl FailureLog {
    pub fn new(failed_path: &Path) -> FailureLog {
        FailureLog {
            failed_path: failed_path.to_path_buf(),
            seen: 0,
            unshown: 0,
            last_count: None,
            first: Vec::new(),
        }
    }

    /// Takes failures as they are recorded and returns the lines to show
    /// now: one per failure up to the cap, then none (they are counted).
    pub fn record(&mut self, failures: &[Failure], now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        for f in failures {
            self.seen += 1;
            if self.first.len() < IN_SUMMARY {
                self.first.push(f.clone());
            }
            if self.seen <= SHOWN_IN_FULL {
                lines.push(failure_line(f));
                if self.seen == SHOWN_IN_FULL {
                    self.last_count = Some(now);
                    lines.push(format!(
                        "bulkget: {SHOWN_IN_FULL} failures shown; from now on only a count every {}s (every failure is in {})",
                        COUNT_EVERY.as_secs(),
                        self.failed_path.display()
                    ));
                }
            } else {
                self.unshown += 1;
            }
        }
        lines
    }

    /// Called once a second: a count line if failures went unshown and
    /// [`COUNT_EVERY`] has passed since the last one.
    pub fn tick(&mut self, now: Instant) -> Option<String> {
        let due = self
            .last_count
            .is_some_and(|t| now.saturating_duration_since(t) >= COUNT_EVERY);
        if self.unshown > 0 && due {
            self.last_count = Some(now);
            return Some(self.count_line());
        }
        None
    }

    /// At the end of the run: a count line for whatever went unshown since
    /// the last one, so the log's count is complete.
    pub fn flush(&mut self) -> Option<String> {
        (self.unshown > 0).then(|| self.count_line())
    }

    /// The first failures recorded, for the summary.
    pub fn first(&self) -> &[Failure] {
        &self.first
    }

    fn count_line(&mut self) -> String {
        let n = std::mem::take(&mut self.unshown);
        format!(
            "bulkget: failed: {} more {} not shown ({} failed so far); every failure is in {}",
            bulkget_report::format::grouped(n),
            if n == 1 { "file" } else { "files" },
            bulkget_report::format::grouped(self.seen),
            self.failed_path.display()
        )
    }
}

/// `bulkget: failed: "NAME": REASON`, on one line whatever the name holds.
pub fn failure_line(f: &Failure) -> String {
    format!("bulkget: failed: {}", name_and_reason(f))
}

/// `"NAME": REASON`, escaped: the name as `{:?}` shows it, the reason with
/// control and invisible characters escaped.
pub fn name_and_reason(f: &Failure) -> String {
    format!("{:?}: {}", f.name, escape_unprintable(&f.reason))
}

/// `s` with each character that `{:?}` would escape escaped the same way
/// (`\n`, `\u{1b}`, `\u{202e}`), except backslashes and quotes, which print
/// as themselves and cannot break a line.
pub fn escape_unprintable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let escaped = c.escape_debug();
        if escaped.len() > 1 && !matches!(c, '\\' | '"' | '\'') {
            out.extend(escaped);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(i: u64) -> Failure {
        Failure::new(format!("file-{i:010}"), "HTTP 404 Not Found", Some(404))
    }

    fn failures(range: std::ops::Range<u64>) -> Vec<Failure> {
        range.map(failure).collect()
    }

    #[test]
    fn the_first_thousand_are_shown_then_a_count_at_most_every_ten_seconds() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut log = FailureLog::new(Path::new("/state/failed.jsonl"));

        let lines = log.record(&failures(0..999), at(0));
        assert_eq!(lines.len(), 999);
        assert_eq!(
            lines[41],
            "bulkget: failed: \"file-0000000041\": HTTP 404 Not Found"
        );
        assert_eq!(log.tick(at(100)), None, "nothing unshown, nothing to count");

        // The thousandth is shown, with a line saying what comes next.
        let lines = log.record(&failures(999..1_003), at(100));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("file-0000000999"), "{lines:?}");
        assert!(lines[1].contains("only a count every 10s"), "{lines:?}");
        assert!(lines[1].contains("/state/failed.jsonl"), "{lines:?}");

        // A million more print nothing at once.
        assert!(log.record(&failures(1_003..1_001_003), at(101)).is_empty());
        // Counted no earlier than ten seconds after the cap was reached...
        assert_eq!(log.tick(at(109)), None);
        assert_eq!(
            log.tick(at(110)).as_deref(),
            Some(
                "bulkget: failed: 1,000,003 more files not shown (1,001,003 failed so far); \
                 every failure is in /state/failed.jsonl"
            )
        );
        // ... and then ten seconds after the last count line.
        log.record(&failures(2_000_000..2_000_005), at(111));
        assert_eq!(log.tick(at(119)), None);
        let line = log.tick(at(120)).unwrap();
        assert!(line.contains(" 5 more files "), "{line}");
        // Nothing new: no line, however long it has been.
        assert_eq!(log.tick(at(200)), None);
        assert_eq!(log.flush(), None);

        // At the end, the rest is counted at once.
        log.record(&failures(3_000_000..3_000_001), at(201));
        let line = log.flush().unwrap();
        assert!(line.contains(" 1 more file not shown "), "{line}");
        assert_eq!(log.flush(), None, "counted once");
    }

    #[test]
    fn the_summary_keeps_the_first_twenty() {
        let mut log = FailureLog::new(Path::new("failed.jsonl"));
        log.record(&failures(0..5), Instant::now());
        assert_eq!(log.first().len(), 5);
        log.record(&failures(5..5_000), Instant::now());
        let names: Vec<&str> = log.first().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names.len(), IN_SUMMARY);
        assert_eq!(names[0], "file-0000000000");
        assert_eq!(names[19], "file-0000000019");
    }

    #[test]
    fn a_name_cannot_forge_a_line_or_reach_the_terminal() {
        let f = Failure::new(
            "x\nbulkget: failed: \"innocent\": HTTP 404\r\u{1b}[2K\u{202e}",
            "unsafe name: 'x' \"quoted\" back\\slash\n\u{1b}[31m\u{2028}",
            None,
        );
        let line = failure_line(&f);
        assert!(
            !line
                .chars()
                .any(|c| c.is_control() || c == '\u{202e}' || c == '\u{2028}'),
            "{line:?}"
        );
        assert_eq!(
            line,
            r#"bulkget: failed: "x\nbulkget: failed: \"innocent\": HTTP 404\r\u{1b}[2K\u{202e}": unsafe name: 'x' "quoted" back\slash\n\u{1b}[31m\u{2028}"#
        );
        // The quotes of the name are the only unescaped ones before the
        // reason, so the name's end is never in doubt.
        assert_eq!(
            failure_line(&Failure::new("a: b", "r", None)),
            "bulkget: failed: \"a: b\": r"
        );
    }
}
