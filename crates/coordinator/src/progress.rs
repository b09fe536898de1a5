//! What a person watching the run sees on stderr: a bar on a terminal, a
//! plain line every few seconds otherwise; and the messages in between.
//!
//! - `--progress bar` (or `auto` on a terminal): two lines redrawn in place
//!   by indicatif, at most 4 times a second, fed once a second by the run
//!   loop. While the listing goes on the total is unknown, so the first line
//!   shows counts and no bar; once the listing is done, or from the start
//!   with `--expected-files`, it becomes a bar with a percentage and an ETA. The second line has the rate, bytes, failures,
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
//! - With `--log-format json` ([`bulkget_console::json_logs`]), `auto`
//!   means plain, messages are `tracing` events (see
//!   [`bulkget_console::log`]) and plain lines are JSON objects shaped like
//!   them, so stderr stays one JSON object per line, the workers' lines
//!   included.
//! - `--progress none` and `--quiet`: no progress; messages still print.
//!
//! Messages printed while the run goes on ("worker 3 died; restarting",
//! `bulkget: failed: "NAME": REASON`) go through [`Progress::note`], which
//! prints them above the bar instead of through it.
//! Every line goes through `bulkget_console`, so a closed stderr never
//! stops the run.

use crate::args::ProgressArg;
use bulkget_console::errln;
use bulkget_report::progress;
use bulkget_stats::CoordinatorStats;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a plain progress line is printed.
pub const PLAIN_EVERY: Duration = Duration::from_secs(5);

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
    unprinted: Option<CoordinatorStats>,
}

impl Progress {
    pub fn new(mode: ProgressArg, quiet: bool) -> Progress {
        let json = bulkget_console::json_logs();
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
    pub fn update(&mut self, s: &CoordinatorStats) {
        if let Some(bar) = &self.bar {
            let (done, total) = progress::bar_position(s);
            let shape = match total {
                Some(total) => {
                    bar.set_length(total);
                    bar.set_position(done);
                    Shape::Bar
                }
                None => Shape::Listing,
            };
            if self.shape != Some(shape) {
                bar.set_style(style(shape));
                self.shape = Some(shape);
            }
            let (first, second) = progress::bar_lines(s);
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

    /// Prints a message for the person watching: above the bar if one is
    /// drawn, else on stderr (as a JSON line with `--log-format json`).
    pub fn note(&self, msg: &str) {
        if self.json {
            tracing::warn!(target: bulkget_console::MESSAGES, "{msg}");
            return;
        }
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(msg),
            _ => errln!("{msg}"),
        }
    }

    fn print_plain(&self, s: &CoordinatorStats) {
        let elapsed = self.started.elapsed();
        if self.json {
            errln!(
                "{}",
                json_line("INFO", "progress", progress::json_fields(s, elapsed))
            );
        } else {
            errln!("{}", progress::plain_line(s, elapsed));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> CoordinatorStats {
        CoordinatorStats {
            files_ok: 123_450,
            files_failed: 6,
            names_listed: 200_000,
            ..CoordinatorStats::default()
        }
    }

    #[test]
    fn both_bar_templates_parse() {
        style(Shape::Listing);
        style(Shape::Bar);
    }

    #[test]
    fn json_lines_look_like_tracing_lines() {
        let line = json_line(
            "INFO",
            "progress",
            progress::json_fields(&snapshot(), Duration::from_secs(3)),
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
        later.files_ok += 10;
        p.update(&later);
        // Not due yet: kept for the final line.
        assert_eq!(p.unprinted.as_ref(), Some(&later));
        p.finish();
        assert_eq!(p.unprinted, None);
        let q = Progress::new(ProgressArg::Bar, true);
        assert!(q.bar.is_none() && !q.plain, "--quiet wins");
    }
}
