//! When to restart a crashed shard, and when to give up on it.
//!
//! Modelled on systemd's `StartLimitBurst`/`StartLimitIntervalSec` and OTP's
//! restart intensity: a shard whose workers crash more than `burst` times
//! within `interval` *without doing any work* is parked. A crash counts
//! toward that limit only when the worker generation that crashed
//! acknowledged nothing since it started and the crash is not blamed on a
//! suspect batch it held alone. A shard whose workers make progress between
//! crashes (an outside killer such as the OOM killer or an operator), or
//! whose crashes are each blamed on a batch (poison names, which the
//! scheduler splits and fails), is never parked: parking is for a shard
//! that cannot work at all.
//!
//! Between restarts the shard backs off exponentially (100 ms doubling to
//! 5 s), counted crashes or not; the backoff resets once a worker of the
//! shard has acknowledged a batch, so occasional crashes in a long run never
//! accumulate into long pauses.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub burst: u32,
    pub interval: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            burst: 5,
            interval: Duration::from_secs(10),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// What to do after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    RestartAfter(Duration),
    Park,
}

/// One shard's crash history.
#[derive(Debug, Default)]
pub struct ShardLife {
    /// When the crashes that count toward parking happened.
    recent: VecDeque<Instant>,
    consecutive: u32,
    /// The current worker generation has acknowledged a batch.
    progressed: bool,
    /// The current worker went down holding one suspect batch alone, so
    /// its crash is blamed on that batch.
    batch_blamed: bool,
    pub restarts: u32,
}

impl ShardLife {
    /// A new worker generation starts: it has done nothing yet.
    pub fn on_start(&mut self) {
        self.progressed = false;
        self.batch_blamed = false;
    }

    /// A worker of this shard acknowledged a batch (or part of one): it
    /// works, so its crash will not count toward parking, and the next
    /// crash starts the backoff from the beginning.
    pub fn on_progress(&mut self) {
        self.progressed = true;
        self.consecutive = 0;
    }

    /// The current worker went down; `batch_blamed` says whether it held
    /// one suspect batch alone, which then takes the blame for the crash
    /// (see `Scheduler::holds_suspect_alone`).
    pub fn on_down(&mut self, batch_blamed: bool) {
        self.batch_blamed = batch_blamed;
    }

    /// Whether the current generation's crash counts toward parking.
    fn crash_counts(&self) -> bool {
        !self.progressed && !self.batch_blamed
    }

    /// The current worker crashed (its exit was not asked for).
    pub fn on_crash(&mut self, now: Instant, policy: &RestartPolicy) -> Decision {
        if self.crash_counts() {
            self.recent.push_back(now);
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.interval)
        {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 > policy.burst {
            return Decision::Park;
        }
        self.consecutive += 1;
        self.restarts += 1;
        let shift = (self.consecutive - 1).min(16);
        Decision::RestartAfter(
            policy
                .backoff_base
                .saturating_mul(1 << shift)
                .min(policy.backoff_max),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_doubling_to_the_cap_and_resets_on_progress() {
        let p = RestartPolicy {
            burst: 100,
            ..RestartPolicy::default()
        };
        let mut life = ShardLife::default();
        let t = Instant::now();
        let delays: Vec<Decision> = (0..8).map(|_| life.on_crash(t, &p)).collect();
        let ms = |d: u64| Decision::RestartAfter(Duration::from_millis(d));
        assert_eq!(
            delays,
            vec![
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(5000),
                ms(5000)
            ]
        );
        life.on_progress();
        assert_eq!(life.on_crash(t, &p), ms(100));
        assert_eq!(life.restarts, 9);
    }

    #[test]
    fn parks_after_more_than_burst_crashes_within_the_interval() {
        let p = RestartPolicy::default();
        let mut life = ShardLife::default();
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(matches!(
                life.on_crash(t0 + Duration::from_secs(i), &p),
                Decision::RestartAfter(_)
            ));
        }
        assert_eq!(
            life.on_crash(t0 + Duration::from_secs(5), &p),
            Decision::Park
        );
    }

    #[test]
    fn crashes_spread_out_never_park() {
        let p = RestartPolicy::default();
        let mut life = ShardLife::default();
        let t0 = Instant::now();
        for i in 0..50 {
            assert!(matches!(
                life.on_crash(t0 + Duration::from_secs(3 * i), &p),
                Decision::RestartAfter(_)
            ));
        }
    }
    /// Crashes `life` `n` times at `at(i)`, each of a new generation that
    /// did `work` before it went down.
    fn crash_generations(
        life: &mut ShardLife,
        p: &RestartPolicy,
        n: u64,
        at: impl Fn(u64) -> Instant,
        work: impl Fn(&mut ShardLife),
    ) -> Vec<Decision> {
        (0..n)
            .map(|i| {
                life.on_start();
                work(life);
                life.on_crash(at(i), p)
            })
            .collect()
    }

    #[test]
    fn a_shard_that_progresses_between_crashes_is_never_parked() {
        let p = RestartPolicy::default();
        let mut life = ShardLife::default();
        let t0 = Instant::now();
        let at = |i| t0 + Duration::from_millis(100 * i);
        let decisions = crash_generations(&mut life, &p, 100, at, |l| {
            l.on_progress();
            l.on_down(false);
        });
        assert!(decisions
            .iter()
            .all(|d| *d == Decision::RestartAfter(p.backoff_base)));
        assert_eq!(life.restarts, 100);
    }

    #[test]
    fn crashes_blamed_on_a_suspect_batch_never_park_but_still_back_off() {
        let p = RestartPolicy::default();
        let mut life = ShardLife::default();
        let t0 = Instant::now();
        let decisions = crash_generations(&mut life, &p, 20, |_| t0, |l| l.on_down(true));
        assert!(decisions
            .iter()
            .all(|d| matches!(d, Decision::RestartAfter(_))));
        assert_eq!(
            decisions[3],
            Decision::RestartAfter(Duration::from_millis(800))
        );
        assert_eq!(decisions[19], Decision::RestartAfter(p.backoff_max));
    }

    #[test]
    fn only_generations_that_did_nothing_count_toward_parking() {
        let p = RestartPolicy::default();
        let mut life = ShardLife::default();
        let t0 = Instant::now();
        // Five idle crashes, each followed by a crash of a generation that
        // worked and one blamed on a batch: still within the limit.
        for i in 0..5 {
            let t = t0 + Duration::from_millis(i);
            life.on_start();
            life.on_down(false);
            assert!(matches!(life.on_crash(t, &p), Decision::RestartAfter(_)));
            life.on_start();
            life.on_progress();
            life.on_down(false);
            assert!(matches!(life.on_crash(t, &p), Decision::RestartAfter(_)));
            life.on_start();
            life.on_down(true);
            assert!(matches!(life.on_crash(t, &p), Decision::RestartAfter(_)));
        }
        // The sixth crash of a generation that did nothing parks.
        life.on_start();
        life.on_down(false);
        assert_eq!(
            life.on_crash(t0 + Duration::from_millis(5), &p),
            Decision::Park
        );
    }

    #[test]
    fn progress_of_an_earlier_generation_does_not_excuse_a_later_one() {
        let p = RestartPolicy::default();
        let mut life = ShardLife::default();
        let t0 = Instant::now();
        life.on_start();
        life.on_progress();
        life.on_down(false);
        assert!(matches!(life.on_crash(t0, &p), Decision::RestartAfter(_)));
        let decisions = crash_generations(&mut life, &p, 6, |_| t0, |l| l.on_down(false));
        assert_eq!(decisions[5], Decision::Park);
    }
}
