//! What a person watching the run sees on stderr: a bar on a terminal,
//! a plain line every few seconds otherwise, and a summary at the end.

use crate::args::ProgressArg;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// A moment of the run, as the display needs it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub ok: u64,
    pub failed: u64,
    pub bytes: u64,
    pub listed: u64,
    pub listing_done: bool,
    pub files_per_sec: f64,
    pub eta_seconds: Option<f64>,
    pub restarts: u32,
    pub parked: usize,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    last_plain: Option<Instant>,
    every: Duration,
}

impl Progress {
    pub fn new(mode: ProgressArg, quiet: bool) -> Progress {
        let mode = match (mode, quiet) {
            (_, true) => ProgressArg::None,
            (ProgressArg::Auto, _) if std::io::stderr().is_terminal() => ProgressArg::Bar,
            (ProgressArg::Auto, _) => ProgressArg::Plain,
            (m, _) => m,
        };
        let bar = (mode == ProgressArg::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(4));
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner:.green} [{elapsed_precise}] [{bar:30.cyan/blue}] {human_pos}/{human_len} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Progress {
            bar,
            plain: mode == ProgressArg::Plain,
            last_plain: None,
            every: Duration::from_secs(5),
        }
    }

    pub fn update(&mut self, s: &Snapshot) {
        if let Some(bar) = &self.bar {
            bar.set_length(s.listed);
            bar.set_position(s.ok + s.failed);
            bar.set_message(details(s));
            bar.tick();
        } else if self.plain && self.last_plain.is_none_or(|t| t.elapsed() >= self.every) {
            self.last_plain = Some(Instant::now());
            eprintln!(
                "bulkget: {}/{}{} files, {}",
                s.ok + s.failed,
                s.listed,
                if s.listing_done { "" } else { "+" },
                details(s)
            );
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn details(s: &Snapshot) -> String {
    let eta = match s.eta_seconds {
        Some(e) => format!("ETA {}", human_duration(e)),
        None if s.listing_done => "ETA -".to_string(),
        None => "listing".to_string(),
    };
    let mut out = format!(
        "{:.0} files/s, {}, {} failed, {}",
        s.files_per_sec,
        human_bytes(s.bytes),
        s.failed,
        eta
    );
    if s.restarts > 0 {
        out.push_str(&format!(", {} restarts", s.restarts));
    }
    if s.parked > 0 {
        out.push_str(&format!(", {} shards parked", s.parked));
    }
    out
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humans() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(human_duration(59.4), "59s");
        assert_eq!(human_duration(61.0), "1m01s");
        assert_eq!(human_duration(7322.0), "2h02m");
    }
}
