//! Recent rate from periodic samples of a growing counter.
//!
//! The counter itself (files done) is a plain integer the hot path increments;
//! [`RateWindow`] is only touched when a snapshot is taken, about once a
//! second. It keeps the last few `(Instant, total)` samples and reports the
//! slope between the newest one and the newest one at least the window old.
//! A rate over the last few seconds follows a slowdown quickly, where the
//! average since the start would hide it behind minutes of history.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The window the stats files use for `files_per_sec`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5);

/// Samples kept at most. At one sample a second this is a minute, far more
/// than the window needs; it only bounds memory if sampling is too frequent.
const CAPACITY: usize = 64;

/// The rate of a counter over the last `window`, from periodic samples.
#[derive(Debug, Clone)]
pub struct RateWindow {
    window: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl Default for RateWindow {
    fn default() -> Self {
        Self::new(DEFAULT_WINDOW)
    }
}

impl RateWindow {
    /// An empty window of the given length. Allocates its sample buffer once.
    pub fn new(window: Duration) -> Self {
        RateWindow {
            window,
            samples: VecDeque::with_capacity(CAPACITY + 1),
        }
    }

    /// Records that the counter stood at `total` at `now`.
    ///
    /// A total lower than the previous one (a counter that was reset) or a
    /// time earlier than the previous one starts the window afresh rather
    /// than reporting a negative or infinite rate.
    pub fn sample(&mut self, now: Instant, total: u64) {
        if let Some(&(t, n)) = self.samples.back() {
            if total < n || now < t {
                self.samples.clear();
            }
        }
        self.samples.push_back((now, total));
        if self.samples.len() > CAPACITY {
            self.samples.pop_front();
        }
        // Keep exactly one sample at or before `now - window`: the base the
        // slope is measured from.
        while self.samples.len() >= 2 && now.duration_since(self.samples[1].0) >= self.window {
            self.samples.pop_front();
        }
    }

    /// Units per second between the oldest and the newest sample kept: over
    /// about the window once it has filled, over less before. 0 with fewer
    /// than two samples.
    pub fn rate(&self) -> f64 {
        let (Some(&(t0, n0)), Some(&(t1, n1))) = (self.samples.front(), self.samples.back()) else {
            return 0.0;
        };
        let dt = t1.duration_since(t0).as_secs_f64();
        if dt <= 0.0 {
            return 0.0;
        }
        (n1 - n0) as f64 / dt
    }

    /// The time the current rate is measured over.
    pub fn span(&self) -> Duration {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, _)), Some(&(t1, _))) => t1.duration_since(t0),
            _ => Duration::ZERO,
        }
    }

    /// Forgets every sample.
    pub fn reset(&mut self) {
        self.samples.clear();
    }
}

/// Seconds until `remaining` units are done at `rate` units a second, or
/// `None` when the rate is zero (or not a finite positive number).
pub fn eta_seconds(remaining: u64, rate: f64) -> Option<f64> {
    if remaining == 0 {
        return Some(0.0);
    }
    if rate.is_finite() && rate > 0.0 {
        Some(remaining as f64 / rate)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn steady_rate() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(secs(5.0));
        assert_eq!(w.rate(), 0.0);
        w.sample(t0, 0);
        assert_eq!(w.rate(), 0.0);
        for i in 1..=20u64 {
            w.sample(t0 + secs(i as f64), i * 1000);
        }
        assert!((w.rate() - 1000.0).abs() < 1e-9);
        assert_eq!(w.span(), secs(5.0));
    }

    #[test]
    fn follows_a_change_within_the_window() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(secs(5.0));
        let mut total = 0;
        for i in 0..=60u64 {
            w.sample(t0 + secs(i as f64), total);
            total += 1000;
        }
        assert!((w.rate() - 1000.0).abs() < 1e-9);
        // The counter stops: five seconds later the rate is zero, not the
        // long-run average.
        let stopped = total - 1000;
        for i in 61..=65u64 {
            w.sample(t0 + secs(i as f64), stopped);
        }
        assert_eq!(w.rate(), 0.0);
        // Half-way through a change the rate is in between.
        for i in 66..=68u64 {
            w.sample(t0 + secs(i as f64), stopped + (i - 65) * 500);
        }
        assert!((w.rate() - 1500.0 / 5.0).abs() < 1e-9, "{}", w.rate());
    }

    #[test]
    fn uneven_sampling_uses_elapsed_time() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(secs(5.0));
        w.sample(t0, 0);
        w.sample(t0 + secs(0.5), 100);
        w.sample(t0 + secs(2.0), 400);
        assert!((w.rate() - 200.0).abs() < 1e-9);
    }

    #[test]
    fn counter_reset_and_time_going_back_start_afresh() {
        let t0 = Instant::now() + secs(100.0);
        let mut w = RateWindow::new(secs(5.0));
        w.sample(t0, 1000);
        w.sample(t0 + secs(1.0), 2000);
        w.sample(t0 + secs(2.0), 10);
        assert_eq!(w.rate(), 0.0);
        w.sample(t0 + secs(3.0), 110);
        assert!((w.rate() - 100.0).abs() < 1e-9);
        w.sample(t0, 200);
        assert_eq!(w.rate(), 0.0);
    }

    #[test]
    fn same_instant_twice_is_not_infinite() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(secs(5.0));
        w.sample(t0, 0);
        w.sample(t0, 50);
        assert_eq!(w.rate(), 0.0);
    }

    #[test]
    fn frequent_sampling_stays_bounded() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(secs(5.0));
        for i in 0..10_000u64 {
            w.sample(t0 + Duration::from_millis(i), i * 10);
        }
        assert!(w.samples.len() <= CAPACITY);
        assert!((w.rate() - 10_000.0).abs() < 1e-6);
    }

    #[test]
    fn eta() {
        assert_eq!(eta_seconds(1000, 100.0), Some(10.0));
        assert_eq!(eta_seconds(0, 0.0), Some(0.0));
        assert_eq!(eta_seconds(10, 0.0), None);
        assert_eq!(eta_seconds(10, f64::NAN), None);
    }
}
