//! The run's request budget: the one place that decides how fast each
//! shard may send.
//!
//! Two things set it. `--max-rps N` is a cap on GET requests a second
//! across all workers, retries included. And with `--adaptive on`, a
//! run-wide slow-down: when several shards report pushback (429, 503) in
//! the same second, the whole run is capped just under what the service
//! served in that second, so every shard slows together, including those
//! that were not yet refused; it grows back by a twentieth of itself a
//! second while no shard is refused (after holding for a second), and ends
//! once it is twice what the run sends. Each worker also cuts its own
//! limits at once on its own pushback (the worker's governor); this is the
//! slower, run-wide half.
//!
//! The budget is divided evenly among the shards that have work: a parked,
//! restarting or finished shard's share goes to the others. The run loop
//! sends each worker its share in a `Pace` frame whenever it changes.

use bulkget_protocol::ToWorker;
use std::time::{Duration, Instant};

/// The share of the run's goodput it is capped at after pushback.
const DECREASE: f64 = 0.9;

/// How fast a slow-down grows back, as a share of where it started, a
/// second.
const INCREASE_PER_SECOND: f64 = 0.05;

/// How long a slow-down holds before it grows back: one report interval,
/// so a new cut is decided on answers sent under the old one.
const HOLD: Duration = Duration::from_secs(1);

/// How long pushback that does not answer to cuts is left alone.
const INSENSITIVE_FOR: Duration = Duration::from_secs(10);

/// The lowest run-wide cap, in requests a second per shard.
const MIN_PER_SHARD: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Slowdown {
    rate: f64,
    step: f64,
    hold_until: Instant,
}

/// What one shard's reports say.
#[derive(Debug, Clone, Copy, Default)]
struct Reports {
    /// Answers a second in its last report: clean, and all.
    clean_rate: f64,
    all_rate: f64,
    /// Pushback reported since the last tick.
    pushback: u64,
    last: Option<Instant>,
}

/// Reports older than this no longer count in the run's rate (the shard
/// stopped, or has nothing to do).
const STALE: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub struct Budget {
    max_rps: Option<f64>,
    adaptive: bool,
    slowdown: Option<Slowdown>,
    reports: Vec<Reports>,
    last_tick: Instant,
    /// The first cut being judged, and the run's share of pushback a tick
    /// after it.
    cut_share: Option<(Instant, Option<f64>)>,
    insensitive_until: Option<Instant>,
}

impl Budget {
    pub fn new(shards: usize, max_rps: Option<f64>, adaptive: bool, now: Instant) -> Budget {
        Budget {
            max_rps,
            adaptive,
            slowdown: None,
            reports: vec![Reports::default(); shards],
            last_tick: now,
            cut_share: None,
            insensitive_until: None,
        }
    }

    /// A worker's pressure report, received at `now`. Its rates are over
    /// the time since the shard's previous report (a second when it is the
    /// first): reports and ticks are not in step, so counting reports per
    /// tick would see one second's answers in one tick and two in the next.
    pub fn report(&mut self, shard: usize, clean: u32, pushback: u32, now: Instant) {
        let r = &mut self.reports[shard];
        let secs = r
            .last
            .map_or(1.0, |t| now.saturating_duration_since(t).as_secs_f64())
            .max(0.2);
        r.clean_rate = f64::from(clean) / secs;
        r.all_rate = f64::from(clean + pushback) / secs;
        r.pushback += u64::from(pushback);
        r.last = Some(now);
    }

    /// Whether a run-wide slow-down is on.
    pub fn slowing(&self) -> bool {
        self.slowdown.is_some()
    }

    /// The run-wide slow-down's cap, if one is on.
    pub fn slowdown_rate(&self) -> Option<f64> {
        self.slowdown.map(|s| s.rate)
    }

    /// Decides the slow-down from the reports since the last tick, with
    /// `working` shards that have work. Called once a second.
    pub fn tick(&mut self, now: Instant, working: usize) {
        let secs = now
            .saturating_duration_since(self.last_tick)
            .as_secs_f64()
            .max(0.1);
        self.last_tick = now;
        let pushed = self.reports.iter().filter(|r| r.pushback > 0).count();
        let fresh = || {
            self.reports.iter().filter(|r| {
                r.last
                    .is_some_and(|t| now.saturating_duration_since(t) < STALE)
            })
        };
        let clean: f64 = fresh().map(|r| r.clean_rate).sum();
        let all: f64 = fresh().map(|r| r.all_rate).sum();
        self.reports.iter_mut().for_each(|r| r.pushback = 0);
        if !self.adaptive {
            return;
        }
        // "Several" shards: two, or the only one working.
        let several = working.clamp(1, 2);
        let floor = MIN_PER_SHARD * working.max(1) as f64;
        let share = if all > 0.0 { (all - clean) / all } else { 0.0 };
        if self.insensitive_until.is_some_and(|t| now < t) {
            return;
        }
        if pushed >= several {
            // Judged as each worker judges its cuts (the worker's
            // `Sensitivity`): pushback still at 2 % or more two ticks after
            // the first cut, and not under half its share one tick after,
            // is not about the rate (names refused whatever the rate). End
            // the slow-down and leave it to the per-name retries a while.
            match self.cut_share {
                // Judged again whenever a judgement ends with pushback still
                // coming: a slow-down that one judgement let stand (a
                // second whose few answers happened to look better) must
                // not then cut for the rest of the run.
                None => self.cut_share = Some((now, None)),
                Some((at, None)) if now.saturating_duration_since(at) >= HOLD => {
                    self.cut_share = Some((at, Some(share)));
                }
                Some((at, Some(first))) if now.saturating_duration_since(at) >= HOLD * 2 => {
                    self.cut_share = None;
                    if share >= 0.02 && share >= first / 2.0 {
                        self.slowdown = None;
                        self.insensitive_until = Some(now + INSENSITIVE_FOR);
                        return;
                    }
                }
                _ => {}
            }
            let served = clean * DECREASE;
            let rate = match self.slowdown {
                Some(s) if now < s.hold_until => s.rate,
                Some(s) => served.min(s.rate * DECREASE),
                None => served,
            }
            .max(floor);
            self.slowdown = Some(Slowdown {
                rate,
                step: rate * INCREASE_PER_SECOND,
                hold_until: match self.slowdown {
                    Some(s) if now < s.hold_until => s.hold_until,
                    _ => now + HOLD,
                },
            });
        } else if let Some(s) = &mut self.slowdown {
            if now > s.hold_until && pushed == 0 {
                s.rate += s.step.max(floor) * secs;
                if s.rate > 2.0 * all {
                    self.slowdown = None;
                }
            }
        }
    }

    /// Each working shard's share, in requests a second (`None`: no
    /// limit), and whether a run-wide slow-down is part of it.
    pub fn share(&self, working: usize) -> (Option<f64>, bool) {
        let run = match (self.max_rps, self.slowdown_rate()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (run.map(|r| r / working.max(1) as f64), self.slowing())
    }

    /// What each of `working` shards is told: its share as a `Pace` frame
    /// carries it.
    pub fn pace(&self, working: usize) -> Pace {
        let (share, slowdown) = self.share(working);
        Pace {
            // 0 means no limit on the wire, so a limit rounds up to 1.
            rps_milli: share.map_or(0, |r| ((r * 1000.0).round() as u64).max(1)),
            slowdown,
        }
    }
}

/// A worker's share of the budget, as a `Pace` frame carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Thousandths of a request a second; 0: no limit.
    pub rps_milli: u64,
    /// A run-wide slow-down is part of it.
    pub slowdown: bool,
}

impl Pace {
    /// The frame that tells a worker.
    pub fn frame(self) -> ToWorker {
        ToWorker::Pace {
            rps_milli: self.rps_milli,
            slowdown: self.slowdown,
        }
    }

    /// Whether a worker last told `sent` (`None`: nothing yet) must be told
    /// this: a slow-down that starts or ends, a limit that appears or goes,
    /// or a rate that moves by more than 1 %. Smaller moves are not worth a
    /// frame to every worker every tick.
    pub fn differs_from(self, sent: Option<Pace>) -> bool {
        match sent {
            None => true,
            Some(old) => {
                old.slowdown != self.slowdown
                    || (old.rps_milli == 0) != (self.rps_milli == 0)
                    || old.rps_milli.abs_diff(self.rps_milli) * 100 > old.rps_milli.max(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);
    const MS10: Duration = Duration::from_millis(10);

    #[test]
    fn a_pace_is_sent_again_only_when_it_moves() {
        let b = Budget::new(4, Some(1_000.0), true, Instant::now());
        let p = b.pace(4);
        assert_eq!(
            p,
            Pace {
                rps_milli: 250_000,
                slowdown: false
            }
        );
        assert!(p.differs_from(None));
        assert!(!p.differs_from(Some(p)));
        // 1 % or less is not worth a frame; more is.
        let near = Pace {
            rps_milli: 252_000,
            ..p
        };
        assert!(!near.differs_from(Some(p)));
        let far = Pace {
            rps_milli: 253_000,
            ..p
        };
        assert!(far.differs_from(Some(p)));
        // No limit is 0 on the wire, and a change to or from it is sent.
        let none = Budget::new(4, None, true, Instant::now()).pace(4);
        assert_eq!(none.rps_milli, 0);
        assert!(none.differs_from(Some(p)) && p.differs_from(Some(none)));
        assert!(Pace {
            slowdown: true,
            ..p
        }
        .differs_from(Some(p)));
        // A tiny share still limits: it rounds up to 1.
        assert_eq!(
            Budget::new(1, Some(1e-6), true, Instant::now())
                .pace(1)
                .rps_milli,
            1
        );
    }

    #[test]
    fn max_rps_is_divided_among_the_shards_that_work() {
        let b = Budget::new(4, Some(1_000.0), true, Instant::now());
        assert_eq!(b.share(4), (Some(250.0), false));
        // One parked or finished: its share goes to the other three.
        assert_eq!(b.share(3).0, Some(1_000.0 / 3.0));
        assert_eq!(
            Budget::new(4, None, true, Instant::now()).share(4),
            (None, false)
        );
    }

    #[test]
    fn pushback_on_several_shards_slows_the_run_and_it_recovers_together() {
        let t0 = Instant::now();
        let mut b = Budget::new(4, None, true, t0);
        // One shard refused: its own governor copes; no run-wide change.
        b.report(0, 900, 100, t0 + SEC - MS10);
        b.report(1, 1_000, 0, t0 + SEC - MS10);
        b.tick(t0 + SEC, 4);
        assert_eq!(b.share(4), (None, false));
        // Two shards refused in one second, 3,000 served in all: the run
        // is capped at 90 % of that, shared by all four.
        b.report(0, 500, 500, t0 + 2 * SEC - MS10);
        b.report(1, 500, 500, t0 + 2 * SEC - MS10);
        b.report(2, 1_000, 0, t0 + 2 * SEC - MS10);
        b.report(3, 1_000, 0, t0 + 2 * SEC - MS10);
        b.tick(t0 + 2 * SEC, 4);
        let (share, slowing) = b.share(4);
        assert!(slowing);
        assert!((share.unwrap() - 2_700.0 / 4.0).abs() < 1e-6, "{share:?}");
        // Held for a second, then 5 % of the cap back a second.
        for shard in 0..4 {
            b.report(shard, 675, 0, t0 + 3 * SEC - MS10);
        }
        b.tick(t0 + 3 * SEC, 4);
        assert!((b.slowdown_rate().unwrap() - 2_700.0).abs() < 1e-6);
        for shard in 0..4 {
            b.report(shard, 675, 0, t0 + 4 * SEC - MS10);
        }
        b.tick(t0 + 4 * SEC, 4);
        assert!((b.slowdown_rate().unwrap() - 2_835.0).abs() < 1e-6);
        // Pushback again, after the hold: cut by at least a tenth.
        b.report(0, 600, 100, t0 + 5 * SEC - MS10);
        b.report(1, 600, 100, t0 + 5 * SEC - MS10);
        b.tick(t0 + 5 * SEC, 4);
        assert!(b.slowdown_rate().unwrap() <= 2_835.0 * DECREASE);
        // Clean seconds: it grows back and ends once it is twice what the
        // run sends.
        let mut t = t0 + 5 * SEC;
        for _ in 0..100 {
            t += SEC;
            b.report(0, 1_000, 0, t);
            b.tick(t, 4);
        }
        assert_eq!(b.share(4), (None, false));
    }

    #[test]
    fn pushback_that_a_cut_does_not_reduce_ends_the_slow_down() {
        let t0 = Instant::now();
        let mut b = Budget::new(2, None, true, t0);
        // A tenth of every shard's answers refused, second after second,
        // whatever the rate.
        let mut t = t0;
        let mut slowed = 0;
        for _ in 0..5 {
            t += SEC;
            b.report(0, 900, 100, t - MS10);
            b.report(1, 900, 100, t - MS10);
            b.tick(t, 2);
            slowed += usize::from(b.slowing());
        }
        assert_eq!(b.share(2), (None, false));
        assert!(slowed <= 2, "{slowed}");
    }

    #[test]
    fn pushback_that_stops_answering_to_cuts_later_ends_the_slow_down_too() {
        let t0 = Instant::now();
        let mut b = Budget::new(2, None, true, t0);
        let mut t = t0;
        let mut tick = |b: &mut Budget, refused: u32| {
            t += SEC;
            b.report(0, 1000 - refused, refused, t - MS10);
            b.report(1, 1000 - refused, refused, t - MS10);
            b.tick(t, 2);
        };
        // The first cut seems to help: a tenth refused, then a fiftieth.
        tick(&mut b, 100);
        tick(&mut b, 100);
        tick(&mut b, 20);
        assert!(b.slowing());
        // Then a tenth refused second after second, whatever the rate
        // (names refused once each): the slow-down must end, not cut the
        // run down to its floor.
        let mut ended = false;
        for _ in 0..6 {
            tick(&mut b, 100);
            ended |= !b.slowing();
        }
        assert!(ended, "still slowed to {:?}", b.slowdown_rate());
    }

    #[test]
    fn adaptive_off_never_slows_the_run_and_max_rps_still_holds() {
        let t0 = Instant::now();
        let mut b = Budget::new(2, Some(100.0), false, t0);
        b.report(0, 0, 100, t0 + SEC - MS10);
        b.report(1, 0, 100, t0 + SEC - MS10);
        b.tick(t0 + SEC, 2);
        assert_eq!(b.share(2), (Some(50.0), false));
    }

    #[test]
    fn a_service_that_refuses_everything_leaves_a_floor() {
        let t0 = Instant::now();
        let mut b = Budget::new(2, None, true, t0);
        b.report(0, 0, 100, t0 + SEC - MS10);
        b.report(1, 0, 100, t0 + SEC - MS10);
        b.tick(t0 + SEC, 2);
        assert_eq!(b.share(2), (Some(MIN_PER_SHARD), true));
    }
}
