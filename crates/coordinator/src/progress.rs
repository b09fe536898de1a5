//! What a person watching the run sees on stderr: a bar on a terminal, a
//! plain line every few seconds otherwise; and the messages in between.
//!
//! - `--progress bar` (or `auto` on a terminal): two lines redrawn in place
//!   by indicatif, at most 4 times a second, fed once a second by the run
//!   loop. While the listing goes on the total is unknown, so the first line
//!   shows counts and no bar; once the listing is done it becomes a bar with a
//!   percentage and an ETA. The second line has the rate, bytes, failures,
//!   retries and restarts, cut to the terminal's width:
//!
//!   ```text
//!   ⠚ 00:12:34 [=======>            ]  45% 450,123,456/1,000,000,000 · ETA 5m32s
//!     1,654,321 files/s · 45.0 GB · 12 failed · 3,456 retries · 2 restarts
//!   ```
//! - `--progress plain` (or `auto` when stderr is not a terminal): a line
//!   every [`PLAIN_EVERY`], and one more with the final numbers at the end, so
//!   a log of a run that takes hours reads as a history:
//!   `bulkget: 0:01:05 123,456/200,000+ files (61.7 %), 2,102 files/s, 12.3 MB,
//!   0 failed, 3 retries, 0 restarts, no ETA while listing`.
//! - With `--log-format json` ([`set_json_logs`]), `auto` means plain, and
//!   plain lines and messages are JSON objects shaped like the `tracing`
//!   JSON log lines, so stderr stays one JSON object per line.
//! - `--progress none` and `--quiet`: no progress; messages still print.
//!
//! Messages printed while the run goes on ("worker 3 died; restarting",
//! `bulkget: failed: "NAME": REASON`) go through [`Progress::note`] (the
//! [`note!`] macro), which prints them above the bar instead of through it.
//! Every line goes through `bulkget_console`, so a closed stderr never
//! stops the run.

use crate::args::ProgressArg;
use bulkget_console::errln;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a plain progress line is printed.
pub const PLAIN_EVERY: Duration = Duration::from_secs(5);

static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Called once at start-up with whether `--log-format json` was given.
pub fn set_json_logs(on: bool) {
    JSON_LOGS.store(on, Ordering::Relaxed);
}

/// Prints a message for the person watching: above the bar if one is drawn,
/// else on stderr (as a JSON line with `--log-format json`).
/// `note!(self.progress, "worker {shard} died")`.
macro_rules! note {
    ($progress:expr, $($arg:tt)*) => {
        $progress.note(&format!($($arg)*))
    };
}
pub(crate) use note;

/// A moment of the run, as the display needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub ok: u64,
    pub failed: u64,
    pub bytes: u64,
    /// Names listed so far (the total once `listing_done`).
    pub listed: u64,
    pub listing_done: bool,
    pub files_per_sec: f64,
    pub eta_seconds: Option<f64>,
    pub restarts: u32,
    pub parked: usize,
    /// Retried attempts reported with acknowledgements.
    pub retries: u64,
}

impl Snapshot {
    fn done(&self) -> u64 {
        self.ok + self.failed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// No total yet: counts only.
    Listing,
    /// The total is known: a bar.
    Bar,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    shape: Option<Shape>,
    plain: bool,
    json: bool,
    started: Instant,
    last_plain: Option<Instant>,
    /// The latest snapshot not yet printed as a plain line.
    unprinted: Option<Snapshot>,
}

impl Progress {
    pub fn new(mode: ProgressArg, quiet: bool) -> Progress {
        let json = JSON_LOGS.load(Ordering::Relaxed);
        let mode = match (mode, quiet) {
            (_, true) => ProgressArg::None,
            (ProgressArg::Auto, _) if !json && std::io::stderr().is_terminal() => ProgressArg::Bar,
            (ProgressArg::Auto, _) => ProgressArg::Plain,
            (m, _) => m,
        };
        let bar = (mode == ProgressArg::Bar)
            .then(|| ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(4)));
        Progress {
            bar,
            shape: None,
            plain: mode == ProgressArg::Plain,
            json,
            started: Instant::now(),
            last_plain: None,
            unprinted: None,
        }
    }

    /// Shows `s`: redraws the bar, or prints a plain line if one is due.
    /// Called once a second.
    pub fn update(&mut self, s: &Snapshot) {
        if let Some(bar) = &self.bar {
            let shape = if s.listing_done {
                Shape::Bar
            } else {
                Shape::Listing
            };
            if shape == Shape::Bar {
                bar.set_length(s.listed.max(s.done()));
                bar.set_position(s.done());
            }
            if self.shape != Some(shape) {
                bar.set_style(style(shape));
                self.shape = Some(shape);
            }
            let (first, second) = bar_lines(s);
            bar.set_prefix(first);
            bar.set_message(second);
            bar.tick();
        } else if self.plain {
            if self.last_plain.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
                self.last_plain = Some(Instant::now());
                self.unprinted = None;
                self.print_plain(s);
            } else {
                self.unprinted = Some(s.clone());
            }
        }
    }

    /// Ends the display: clears the bar, or prints the last plain line if
    /// the latest numbers have not been printed.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if let Some(s) = self.unprinted.take() {
            self.print_plain(&s);
        }
    }

    /// Prints a message for the person watching (see [`note!`]).
    pub fn note(&self, msg: &str) {
        if self.json {
            errln!("{}", json_line("WARN", msg, serde_json::Map::new()));
            return;
        }
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(msg),
            _ => errln!("{msg}"),
        }
    }

    fn print_plain(&self, s: &Snapshot) {
        let elapsed = self.started.elapsed();
        if self.json {
            errln!("{}", json_line("INFO", "progress", json_fields(s, elapsed)));
        } else {
            errln!("{}", plain_line(s, elapsed));
        }
    }
}

fn style(shape: Shape) -> ProgressStyle {
    let template = match shape {
        Shape::Listing => "{spinner:.green} {elapsed_precise} {prefix}\n  {wide_msg}",
        Shape::Bar => {
            "{spinner:.green} {elapsed_precise} [{bar:20.cyan/blue}] {percent:>3}% {prefix}\n  {wide_msg}"
        }
    };
    ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ")
}

/// The bar's two lines: the counts (and the ETA once there is one), then
/// the rest, most useful first so that a narrow terminal cuts the least.
fn bar_lines(s: &Snapshot) -> (String, String) {
    let first = if s.listing_done {
        format!("{}/{} · {}", grouped(s.done()), grouped(s.listed), eta(s))
    } else {
        format!(
            "{} files done of {} listed so far (listing: no ETA yet)",
            grouped(s.done()),
            grouped(s.listed)
        )
    };
    let mut second = format!(
        "{} files/s · {} · {} failed · {} · {}",
        grouped(s.files_per_sec.round() as u64),
        human_bytes(s.bytes),
        grouped(s.failed),
        plural(s.retries, "retry", "retries"),
        plural(u64::from(s.restarts), "restart", "restarts"),
    );
    if s.parked > 0 {
        second.push_str(&format!(
            " · {} parked",
            plural(s.parked as u64, "shard", "shards")
        ));
    }
    (first, second)
}

/// `bulkget: 0:01:05 123,456/200,000+ files (61.7 %), 2,102 files/s,
/// 12.3 MB, 0 failed, 3 retries, 0 restarts, no ETA while listing`. The `+`
/// says more names may come.
pub fn plain_line(s: &Snapshot, elapsed: Duration) -> String {
    let percent = if s.listed > 0 {
        format!(" ({:.1} %)", s.done() as f64 * 100.0 / s.listed as f64)
    } else {
        String::new()
    };
    format!(
        "bulkget: {} {}/{}{} files{percent}, {} files/s, {}, {} failed, {}, {}, {}{}",
        clock(elapsed),
        grouped(s.done()),
        grouped(s.listed),
        if s.listing_done { "" } else { "+" },
        grouped(s.files_per_sec.round() as u64),
        human_bytes(s.bytes),
        grouped(s.failed),
        plural(s.retries, "retry", "retries"),
        plural(u64::from(s.restarts), "restart", "restarts"),
        eta(s),
        parked(s),
    )
}

fn eta(s: &Snapshot) -> String {
    match s.eta_seconds {
        Some(e) => format!("ETA {}", human_duration(e)),
        None if s.listing_done => "no ETA: no recent progress".to_string(),
        None => "no ETA while listing".to_string(),
    }
}

fn parked(s: &Snapshot) -> String {
    if s.parked > 0 {
        format!(", {} parked", plural(s.parked as u64, "shard", "shards"))
    } else {
        String::new()
    }
}

fn json_fields(s: &Snapshot, elapsed: Duration) -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "elapsed_seconds": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "files_done": s.done(),
        "files_ok": s.ok,
        "files_failed": s.failed,
        "names_listed": s.listed,
        "listing_done": s.listing_done,
        "files_per_sec": s.files_per_sec.round(),
        "bytes": s.bytes,
        "retries": s.retries,
        "restarts": s.restarts,
        "parked_shards": s.parked,
        "eta_seconds": s.eta_seconds.map(|e| e.round()),
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => unreachable!("an object literal"),
    }
}

/// One line in the shape of `tracing-subscriber`'s JSON format.
fn json_line(
    level: &str,
    message: &str,
    mut fields: serde_json::Map<String, serde_json::Value>,
) -> String {
    fields.insert("message".into(), message.into());
    serde_json::json!({
        "timestamp": bulkget_stats::now_rfc3339(),
        "level": level,
        "fields": fields,
        "target": "bulkget::progress",
    })
    .to_string()
}

/// `1234567` as `1,234,567`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        // A separator before every digit with a multiple of 3 after it.
        if i > 0 && i % 3 == digits.len() % 3 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", grouped(n), if n == 1 { one } else { many })
}

/// Bytes in decimal units, as `bulkget status` shows them.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    if b < 1000 {
        return format!("{b} B");
    }
    let mut v = b as f64;
    let mut u = 0;
    while v >= 999.95 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Elapsed time as `H:MM:SS`, which reads and sorts well in a log.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            ok: 123_450,
            failed: 6,
            bytes: 12_345_600,
            listed: 200_000,
            listing_done: false,
            files_per_sec: 2_101.6,
            eta_seconds: None,
            restarts: 1,
            parked: 0,
            retries: 3,
        }
    }

    #[test]
    fn humans() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_000), "1.0 kB");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(human_bytes(100_000_000_000), "100.0 GB");
        assert_eq!(human_duration(59.4), "59s");
        assert_eq!(human_duration(61.0), "1m01s");
        assert_eq!(human_duration(7322.0), "2h02m");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(12), "12");
        assert_eq!(clock(Duration::from_secs(3_725)), "1:02:05");
    }

    #[test]
    fn plain_lines_while_listing_and_after() {
        let mut s = snapshot();
        assert_eq!(
            plain_line(&s, Duration::from_secs(65)),
            "bulkget: 0:01:05 123,456/200,000+ files (61.7 %), 2,102 files/s, 12.3 MB, \
             6 failed, 3 retries, 1 restart, no ETA while listing"
        );
        s.listing_done = true;
        s.eta_seconds = Some(36.7);
        s.parked = 2;
        s.retries = 1;
        assert_eq!(
            plain_line(&s, Duration::from_secs(7_200)),
            "bulkget: 2:00:00 123,456/200,000 files (61.7 %), 2,102 files/s, 12.3 MB, \
             6 failed, 1 retry, 1 restart, ETA 37s, 2 shards parked"
        );
        let s = Snapshot::default();
        assert_eq!(
            plain_line(&s, Duration::ZERO),
            "bulkget: 0:00:00 0/0+ files, 0 files/s, 0 B, 0 failed, 0 retries, 0 restarts, \
             no ETA while listing"
        );
    }

    #[test]
    fn bar_lines_put_the_counts_first() {
        let mut s = snapshot();
        assert_eq!(
            bar_lines(&s),
            (
                "123,456 files done of 200,000 listed so far (listing: no ETA yet)".to_string(),
                "2,102 files/s · 12.3 MB · 6 failed · 3 retries · 1 restart".to_string()
            )
        );
        s.listing_done = true;
        s.eta_seconds = Some(4_000.0);
        s.parked = 1;
        let (first, second) = bar_lines(&s);
        assert_eq!(first, "123,456/200,000 · ETA 1h06m");
        assert!(
            second.ends_with(" · 1 restart · 1 shard parked"),
            "{second}"
        );
        // A billion-file run's first line fits 80 columns with the bar.
        s.ok = 450_123_456;
        s.listed = 1_000_000_000;
        s.eta_seconds = Some(332.0);
        let prefix = "⠚ 00:12:34 [=======>            ]  45% ".chars().count();
        assert!(prefix + bar_lines(&s).0.chars().count() <= 80);
        // Both templates parse.
        style(Shape::Listing);
        style(Shape::Bar);
    }

    #[test]
    fn json_lines_look_like_tracing_lines() {
        let line = json_line(
            "INFO",
            "progress",
            json_fields(&snapshot(), Duration::from_secs(3)),
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "bulkget::progress");
        assert_eq!(v["fields"]["message"], "progress");
        assert_eq!(v["fields"]["files_done"], 123_456);
        assert_eq!(v["fields"]["names_listed"], 200_000);
        assert_eq!(v["fields"]["eta_seconds"], serde_json::Value::Null);
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn plain_mode_prints_when_due_and_the_rest_at_the_end() {
        let mut p = Progress::new(ProgressArg::Plain, false);
        assert!(p.plain && p.bar.is_none());
        p.update(&snapshot());
        // Printed at once: nothing is left over.
        assert_eq!(p.unprinted, None);
        let mut later = snapshot();
        later.ok += 10;
        p.update(&later);
        // Not due yet: kept for the final line.
        assert_eq!(p.unprinted.as_ref(), Some(&later));
        p.finish();
        assert_eq!(p.unprinted, None);
        let q = Progress::new(ProgressArg::Bar, true);
        assert!(q.bar.is_none() && !q.plain, "--quiet wins");
    }
}
