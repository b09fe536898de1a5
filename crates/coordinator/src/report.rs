//! What a run reports about itself: each tick's snapshot, published to
//! `coordinator.json`, `/metrics` and the progress display at once (so they
//! never disagree), and the summary printed on stdout at the end.
//!
//! The run loop gathers the numbers; rendering them is here, and the
//! summary is a pure function of a [`Summary`].

use crate::exit;
use crate::failure_log;
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::scheduler::Totals;
use crate::shutdown::Reason;
use bulkget_protocol::Failure;
use bulkget_report::format::{grouped, human_bytes};
use bulkget_stats::CoordinatorStats;
use std::fmt::Write;
use std::path::Path;

/// Writes `stats` to `coordinator.json` in `state_dir`, hands it to the
/// metrics endpoint and shows it as progress.
pub fn publish(
    stats: &CoordinatorStats,
    state_dir: &Path,
    metrics: Option<&Metrics>,
    progress: &mut Progress,
) {
    let path = bulkget_stats::schema::coordinator_path(state_dir);
    if let Err(e) = bulkget_stats::write_json_atomic(&path, stats) {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
    if let Some(m) = metrics {
        m.publish(stats);
    }
    progress.update(stats);
}

/// The numbers the summary shows.
pub struct Summary<'a> {
    /// A refresh: names already in the sink were counted, not fetched.
    pub refresh: bool,
    /// Everything acknowledged, this process's work and the resumed run's.
    pub live: Totals,
    /// What the last checkpoint holds.
    pub durable: Totals,
    /// What the checkpoint this run resumed from held.
    pub resumed_from: Totals,
    pub elapsed_secs: f64,
    pub restarts: u32,
    pub parked: usize,
    /// `--include` or `--exclude` was given.
    pub filtered: bool,
    pub pages_changed: u64,
    /// The first failures, named in full.
    pub first_failures: &'a [Failure],
    pub state_dir: &'a Path,
    /// Why the run stopped early, if it did.
    pub reason: Option<&'a Reason>,
    pub code: i32,
    /// The command that continues a stopped run.
    pub resume_command: String,
    /// Whether a checkpoint exists in the state directory.
    pub checkpoint_saved: bool,
}

/// The summary, one line per `\n`, the last one included.
pub fn render_summary(s: &Summary<'_>) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    macro_rules! line {
        ($($arg:tt)*) => {
            let _ = writeln!(out, $($arg)*);
        };
    }
    let live = &s.live;
    let this_run = (live.files_ok + live.files_failed + live.files_present)
        - (s.resumed_from.files_ok + s.resumed_from.files_failed + s.resumed_from.files_present);
    line!("bulkget summary");
    if s.refresh {
        line!("  refresh:        fetched the names not in the sink yet");
        line!("  files new:      {}", live.files_ok);
        line!("  already there:  {}", live.files_present);
    } else {
        line!("  files ok:       {}", live.files_ok);
    }
    line!("  files failed:   {}", live.files_failed);
    // Reported with each acknowledgement, so restarts lose none.
    line!("  retries:        {}", live.retries);
    line!(
        "  bytes:          {} ({})",
        live.bytes,
        human_bytes(live.bytes)
    );
    line!("  wall time:      {:.2}s", s.elapsed_secs);
    line!(
        "  files/s:        {:.0}",
        this_run as f64 / s.elapsed_secs.max(1e-9)
    );
    line!("  restarts:       {}", s.restarts);
    if s.filtered {
        line!(
            "  excluded:       {} names left out by --include/--exclude",
            live.names_excluded
        );
    }
    if s.parked > 0 {
        line!("  parked shards:  {}", s.parked);
    }
    if s.pages_changed > 0 {
        line!(
            "  pages changed:  {} listed differently than before the resume, fetched whole",
            s.pages_changed
        );
    }
    if live.files_failed > 0 {
        let failed_path = s.state_dir.join("failed.jsonl");
        line!(
            "  failures:       every one is in {}",
            failed_path.display()
        );
        for f in s.first_failures {
            line!("    {}", failure_log::name_and_reason(f));
        }
        let rest = live
            .files_failed
            .saturating_sub(s.first_failures.len() as u64);
        if rest > 0 {
            line!(
                "    {}{} more in {}",
                if s.first_failures.is_empty() {
                    ""
                } else {
                    "and "
                },
                grouped(rest),
                failed_path.display()
            );
        }
    }
    line!("  state:          {}", s.state_dir.display());
    let code = s.code;
    match s.reason {
        None if code == exit::OK => {
            line!("  result:         complete: every listed file is in the sink");
        }
        None => {
            line!(
                "  result:         complete, with {} failed files (exit {code})",
                live.files_failed
            );
        }
        Some(reason) => {
            line!(
                "  result:         stopped: {} (exit {code})",
                reason.describe()
            );
            let resume = &s.resume_command;
            match reason {
                Reason::StateFailed(_) if s.checkpoint_saved => {
                    line!(
                        "  checkpoint:     not written after the failure; the one saved before it is exact: fix the cause, then continue with: {resume}"
                    );
                }
                Reason::StateFailed(_) => {
                    line!(
                        "  checkpoint:     none was saved: fix the cause, then run again without --resume"
                    );
                }
                _ => {
                    let d = &s.durable;
                    line!(
                        "  checkpoint:     {} files saved; continue with: {resume}",
                        d.files_ok + d.files_failed + d.files_present
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::StopSignal;

    fn summary<'a>(reason: Option<&'a Reason>, code: i32, failures: &'a [Failure]) -> Summary<'a> {
        let live = Totals {
            files_ok: 990,
            files_failed: 10,
            bytes: 99_000,
            ..Totals::default()
        };
        Summary {
            refresh: false,
            live,
            durable: Totals {
                files_ok: 900,
                ..Totals::default()
            },
            resumed_from: Totals::default(),
            elapsed_secs: 2.0,
            restarts: 1,
            parked: 0,
            filtered: false,
            pages_changed: 0,
            first_failures: failures,
            state_dir: Path::new("/out/.bulkget"),
            reason,
            code,
            resume_command: "bulkget fetch URL /out --resume".into(),
            checkpoint_saved: true,
        }
    }

    #[test]
    fn a_finished_run_with_failures_names_the_first_and_counts_the_rest() {
        let failures = [Failure::new("a", "HTTP 404", Some(404))];
        let text = render_summary(&summary(None, exit::FILES_FAILED, &failures));
        assert!(text.starts_with("bulkget summary\n"), "{text}");
        assert!(text.contains("  files ok:       990\n"), "{text}");
        assert!(text.contains("  files/s:        500\n"), "{text}");
        assert!(text.contains("    \"a\": HTTP 404\n"), "{text}");
        assert!(
            text.contains("    and 9 more in /out/.bulkget/failed.jsonl\n"),
            "{text}"
        );
        assert!(
            text.ends_with("  result:         complete, with 10 failed files (exit 3)\n"),
            "{text}"
        );
    }

    #[test]
    fn a_stopped_run_says_how_to_continue_unless_the_state_directory_failed() {
        let signal = Reason::Signal(StopSignal::Interrupt);
        let text = render_summary(&summary(Some(&signal), exit::INTERRUPTED, &[]));
        assert!(
            text.contains("stopped: interrupted by SIGINT (exit 130)"),
            "{text}"
        );
        assert!(
            text.ends_with("  checkpoint:     900 files saved; continue with: bulkget fetch URL /out --resume\n"),
            "{text}"
        );
        let failed = Reason::StateFailed("syncfs: EIO".into());
        let mut s = summary(Some(&failed), exit::ERROR, &[]);
        s.checkpoint_saved = false;
        let text = render_summary(&s);
        assert!(
            text.ends_with("none was saved: fix the cause, then run again without --resume\n"),
            "{text}"
        );
    }
}
