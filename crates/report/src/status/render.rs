//! The human table of a [`StatusReport`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use bulkget_stats::checkpoint::{self, ListPosition, ParseError};
use bulkget_stats::schema::{EtaMethod, ShardStats, ShardSummary, SummaryState, COORDINATOR_FILE};
use bulkget_stats::time::age;

use super::load::summary_for;
use super::{shard_is_stale, StatusReport, Totals, STALE_AFTER};
use crate::format::{
    compact, grouped, human_age, human_bytes, human_duration, human_ms, plural, truncate,
    written_ago,
};
use crate::table::{self, Align};

/// The widest line the table aims for, so it reads at a glance in an
/// ordinary terminal.
pub(super) const WIDTH: usize = 100;

const COLUMNS: [(&str, Align); 14] = [
    ("shard", Align::Right),
    ("pid", Align::Right),
    ("gen", Align::Right),
    ("state", Align::Left),
    ("ok", Align::Right),
    ("failed", Align::Right),
    ("bytes", Align::Right),
    ("retries", Align::Right),
    ("files/s", Align::Right),
    ("in-fl", Align::Right),
    ("conns", Align::Right),
    ("p50ms", Align::Right),
    ("p99ms", Align::Right),
    ("age", Align::Left),
];

fn row_state(s: &ShardStats, summary: Option<&ShardSummary>, stale: bool) -> String {
    if stale {
        return "STALE".to_string();
    }
    match summary {
        Some(sum) if matches!(sum.state, SummaryState::Backoff | SummaryState::Parked) => {
            sum.state.as_str().to_string()
        }
        _ => s.state.as_str().to_string(),
    }
}

fn shard_row(
    s: &ShardStats,
    summary: Option<&ShardSummary>,
    stale: bool,
    now: SystemTime,
) -> Vec<String> {
    vec![
        format!("{:02}", s.shard),
        s.pid.to_string(),
        s.generation.to_string(),
        row_state(s, summary, stale),
        compact(s.files_ok),
        compact(s.files_failed),
        human_bytes(s.bytes),
        compact(s.retries),
        compact(s.files_per_sec.round() as u64),
        compact(s.in_flight),
        format!("{}/{}", s.open_connections, s.connections_opened),
        human_ms(s.latency_ms.p50),
        human_ms(s.latency_ms.p99),
        age(&s.updated_at, now).map_or("?".to_string(), human_age),
    ]
}

/// A shard the coordinator knows but that has written no file yet.
fn summary_row(sum: &ShardSummary) -> Vec<String> {
    let mut row = vec![
        format!("{:02}", sum.shard),
        sum.pid.map_or("-".to_string(), |p| p.to_string()),
        sum.restarts.to_string(),
        sum.state.as_str().to_string(),
    ];
    row.resize(COLUMNS.len(), "-".to_string());
    row
}

fn totals_row(t: &Totals) -> Vec<String> {
    vec![
        "TOTAL".to_string(),
        String::new(),
        t.restarts.to_string(),
        String::new(),
        compact(t.files_ok),
        compact(t.files_failed),
        human_bytes(t.bytes),
        compact(t.retries),
        compact(t.files_per_sec.round() as u64),
        compact(t.in_flight),
        format!("{}/{}", t.open_connections, t.connections_opened),
        human_ms(t.worst_p50_ms),
        human_ms(t.worst_p99_ms),
        String::new(),
    ]
}

/// One header line: a fixed-width label, then the text, cut to [`WIDTH`].
fn header_line(out: &mut String, label: &str, text: &str) {
    let line = format!("{label:<11}{text}");
    out.push_str(&truncate(&line, WIDTH));
    out.push('\n');
}

/// A marker for display: quoted, cut short, or a word when there is none.
fn show_marker(m: Option<&str>) -> String {
    match m {
        Some(m) => format!("\"{}\"", truncate(m, 32)),
        None => "none".to_string(),
    }
}

fn render_header(out: &mut String, report: &StatusReport, now: SystemTime) {
    let Some(c) = &report.coordinator else {
        header_line(
            out,
            "run",
            &format!(
                "state unknown: no readable {COORDINATOR_FILE} in {}",
                report.state_dir
            ),
        );
        let t = &report.totals;
        header_line(
            out,
            "files",
            &format!(
                "{} ok + {} failed (sum of the shard files)",
                grouped(t.files_ok),
                grouped(t.files_failed)
            ),
        );
        return;
    };

    // Run: state, pid, uptime, URL last so that a long one is what gets cut.
    let mut state = c.state.as_str().to_string();
    if let Some(code) = c.exit_code {
        let _ = write!(state, " (exit {code})");
    }
    if report.coordinator_stale {
        state.push_str(" STALE");
    }
    let up = match (
        bulkget_stats::time::parse_rfc3339(&c.started_at),
        bulkget_stats::time::parse_rfc3339(&c.updated_at),
    ) {
        // A finished run's duration is up to its last update, not to now.
        (Some(s), Some(u)) if c.state.is_final() => u.duration_since(s).ok(),
        (Some(s), _) => Some(now.duration_since(s).unwrap_or_default()),
        _ => None,
    };
    let up = up.map_or("?".to_string(), |d| human_duration(d.as_secs_f64()));
    let updated = age(&c.updated_at, now).map_or("?".to_string(), human_age);
    header_line(
        out,
        "run",
        &format!(
            "{state}, pid {}, {} {up}, updated {updated} ago, {}",
            c.pid,
            if c.state.is_final() { "ran" } else { "up" },
            c.url
        ),
    );

    let mut listing = if c.listing_done {
        "done".to_string()
    } else {
        format!(
            "in progress, marker {}",
            show_marker(c.current_marker.as_deref())
        )
    };
    if c.names_excluded > 0 {
        let _ = write!(listing, "; {} excluded", grouped(c.names_excluded));
    }
    if c.pages_changed > 0 {
        let _ = write!(
            listing,
            "; {} listed differently on resume",
            plural(c.pages_changed, "page", "pages")
        );
    }
    header_line(
        out,
        "listing",
        &format!(
            "{}, {}, {listing}",
            plural(c.pages_listed, "page", "pages"),
            plural(c.names_listed, "name", "names"),
        ),
    );

    let done = c.files_ok + c.files_failed + c.files_present;
    let percent = if c.names_listed > 0 {
        format!(" ({:.1} %)", done as f64 * 100.0 / c.names_listed as f64)
    } else {
        String::new()
    };
    header_line(
        out,
        "files",
        &format!(
            "{} {} + {}{} failed of {}{percent}, {}, {}",
            grouped(c.files_ok),
            if c.refresh { "new" } else { "ok" },
            if c.refresh {
                format!("{} already there + ", grouped(c.files_present))
            } else {
                String::new()
            },
            grouped(c.files_failed),
            grouped(c.names_listed),
            human_bytes(c.bytes),
            plural(c.retries, "retry", "retries"),
        ),
    );

    // The method says how the ETA was made, or why there is none.
    let eta = match (c.eta_seconds, c.eta_method) {
        (Some(s), EtaMethod::Unknown) => format!("eta {}", human_duration(s.max(0.0))),
        (Some(s), method) => format!("eta {} ({})", human_duration(s.max(0.0)), method.as_str()),
        (None, EtaMethod::Unknown) => "eta unknown".to_string(),
        (None, method) => format!(
            "no eta: {}",
            method
                .as_str()
                .strip_prefix("none: ")
                .unwrap_or(method.as_str())
        ),
    };
    header_line(
        out,
        "rate",
        &format!("{} files/s, {eta}", grouped(c.files_per_sec.round() as u64)),
    );

    // Shards as the coordinator sees them.
    let mut by_state: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for s in &c.shards {
        by_state.entry(s.state.as_str()).or_default().push(s.shard);
    }
    let mut parts: Vec<String> = Vec::new();
    for (state, ids) in &by_state {
        if *state == SummaryState::Parked.as_str() || *state == SummaryState::Backoff.as_str() {
            let list: Vec<String> = ids.iter().map(|i| format!("{i:02}")).collect();
            parts.push(format!("{} {state} ({})", ids.len(), list.join(" ")));
        } else {
            parts.push(format!("{} {state}", ids.len()));
        }
    }
    let restarts: u64 = c.shards.iter().map(|s| u64::from(s.restarts)).sum();
    let in_flight: u64 = c.shards.iter().map(|s| s.batches_in_flight).sum();
    header_line(
        out,
        "shards",
        &format!(
            "{}: {}; {}",
            c.shards.len(),
            if parts.is_empty() {
                "none reported".to_string()
            } else {
                parts.join(", ")
            },
            plural(restarts, "restart", "restarts"),
        ),
    );
    header_line(
        out,
        "batches",
        &format!(
            "{} queued, {} in flight, {} requeued after a worker died",
            grouped(c.batches_queued),
            grouped(in_flight),
            grouped(c.batches_requeued),
        ),
    );

    // Which side waits tells where the bottleneck is.
    let idle_avg = if c.shards.is_empty() {
        0.0
    } else {
        c.shards.iter().map(|s| s.idle_ms).sum::<u64>() as f64 / c.shards.len() as f64
    };
    header_line(
        out,
        "waits",
        &format!(
            "lister {} on full windows; shards idle {} on average",
            human_duration(c.lister_wait_ms as f64 / 1000.0),
            human_duration(idle_avg / 1000.0),
        ),
    );
}

fn render_checkpoint(out: &mut String, report: &StatusReport, now: SystemTime) {
    let Some(raw) = &report.checkpoint else {
        return;
    };
    let saved = match report
        .checkpoint_saved_at
        .as_deref()
        .and_then(|t| age(t, now))
    {
        Some(a) => format!("saved {} ago", human_age(a)),
        None => "present".to_string(),
    };
    // The same parser a resume uses, so status says what a resume would do.
    let parsed = serde_json::to_vec(raw)
        .map_err(ParseError::Damaged)
        .and_then(|bytes| checkpoint::parse(&bytes));
    let cp = match parsed {
        Ok(parsed) => parsed.checkpoint,
        Err(ParseError::Newer(v)) => {
            header_line(
                out,
                "checkpoint",
                &format!(
                    "{saved}, written by a newer bulkget (checkpoint version {v}); not shown \
                     (see --json)"
                ),
            );
            return;
        }
        Err(ParseError::Damaged(_)) => {
            header_line(
                out,
                "checkpoint",
                &format!("{saved}, but its content is not understood (see --json)"),
            );
            return;
        }
    };
    let position = match (&cp.position, cp.complete) {
        (_, true) => "the run is complete, nothing to resume".to_string(),
        (ListPosition::Start, _) => "a resume lists from the first page".to_string(),
        (ListPosition::Marker(m), _) => {
            format!("a resume lists from marker {}", show_marker(Some(m)))
        }
        (ListPosition::Done, _) => {
            "the listing is done; a resume only fetches what is unacknowledged".to_string()
        }
    };
    header_line(out, "checkpoint", &format!("{saved}; {position}"));
    let t = &cp.totals;
    let mut counts = if cp.refresh {
        format!(
            "refresh: {} new + {} already there + {} failed, {}; ",
            grouped(t.files_ok),
            grouped(t.files_present),
            grouped(t.files_failed),
            human_bytes(t.bytes),
        )
    } else {
        format!(
            "{} ok + {} failed, {}; ",
            grouped(t.files_ok),
            grouped(t.files_failed),
            human_bytes(t.bytes),
        )
    };
    if cp.complete {
        counts.push_str(&plural(t.pages_done, "page", "pages"));
    } else {
        let _ = write!(
            counts,
            "{} done before it",
            plural(t.pages_done, "page", "pages")
        );
        let after = cp.done_after.complete_pages();
        let partial = cp.done_after.partial.len() as u64;
        if after + partial > 0 {
            let _ = write!(counts, ", {} after", grouped(after + partial));
            if partial > 0 {
                let _ = write!(counts, " ({} partly)", grouped(partial));
            }
        }
    }
    header_line(out, "", &counts);
}

/// The human table: a header about the run, one row per shard, a TOTAL row,
/// then HTTP status counts, staleness and warnings, in at most 100 columns
/// for a 16-shard billion-file run. Ages are judged at `now`.
///
/// ```text
/// run        listing, pid 4242, up 2m05s, updated 0s ago, http://127.0.0.1:8080/
/// ...
/// shard   pid gen state        ok failed    bytes retries files/s in-fl   conns p50ms p99ms age
///    00 40000   0 running 250,000      0  25.0 MB       3   1,000    64   64/64  0.50  10.0 1s
///    02 40002   0 STALE   250,002      2  25.0 MB       3   1,000    64   64/66  2.50  12.0 42s
/// TOTAL         2           1.00M      6 100.0 MB      12   4,000   256 256/262  3.50  13.0
/// ```
///
/// `docs/STATS.md` explains every part.
pub fn render_table(report: &StatusReport, now: SystemTime) -> String {
    let mut out = String::new();
    render_header(&mut out, report, now);
    render_checkpoint(&mut out, report, now);
    out.push('\n');

    let coordinator = report.coordinator.as_ref();
    let mut rows: Vec<(u32, Vec<String>)> = Vec::new();
    let mut stale_notes: Vec<String> = Vec::new();
    for s in &report.shards {
        let summary = summary_for(&report.coordinator, s.shard);
        let stale = shard_is_stale(s, summary, coordinator, now);
        if stale {
            stale_notes.push(format!(
                "shard {:02}, pid {}, said {}, last wrote {}",
                s.shard,
                s.pid,
                s.state.as_str(),
                written_ago(&s.updated_at, now)
            ));
        }
        rows.push((s.shard, shard_row(s, summary, stale, now)));
    }
    if let Some(c) = coordinator {
        for sum in &c.shards {
            if !report.shards.iter().any(|s| s.shard == sum.shard) {
                rows.push((sum.shard, summary_row(sum)));
            }
        }
    }
    // Stable: two files claiming one shard keep their load order.
    rows.sort_by_key(|(shard, _)| *shard);
    let mut cells: Vec<Vec<String>> = rows.into_iter().map(|(_, r)| r).collect();
    cells.push(totals_row(&report.totals));
    out.push_str(&table::render(&COLUMNS, &cells));

    if !report.totals.http_status.is_empty() {
        let parts: Vec<String> = report
            .totals
            .http_status
            .iter()
            .map(|(code, n)| format!("{code}: {}", grouped(*n)))
            .collect();
        header_line(&mut out, "http", &parts.join("   "));
    }
    if report.totals.worst_max_ms > 0.0 {
        header_line(
            &mut out,
            "latency",
            &format!(
                "slowest request {} ms; the TOTAL row's p50 and p99 are the worst shard's",
                human_ms(report.totals.worst_max_ms)
            ),
        );
    }
    if !stale_notes.is_empty() {
        header_line(
            &mut out,
            "STALE",
            &format!(
                "no update for over {}s while the run goes on (hung or killed worker?):",
                STALE_AFTER.as_secs()
            ),
        );
        for note in &stale_notes {
            header_line(&mut out, "", note);
        }
    }
    if report.coordinator_stale {
        if let Some(c) = coordinator {
            let when = written_ago(&c.updated_at, now);
            header_line(
                &mut out,
                "STALE",
                &format!(
                    "{COORDINATOR_FILE} says {} but was last written {when} (coordinator hung \
                     or killed?)",
                    c.state.as_str(),
                ),
            );
        }
    }
    for w in &report.warnings {
        // Not cut to the width: a warning names a path and a parse error,
        // and both matter whole.
        out.push_str(&format!("warning    {w}\n"));
    }
    out
}
