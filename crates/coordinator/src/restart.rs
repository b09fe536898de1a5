//! When to restart a crashed shard, and when to give up on it.
//!
//! Modelled on systemd's `StartLimitBurst`/`StartLimitIntervalSec` and OTP's
//! restart intensity: a shard that crashes more than `burst` times within
//! `interval` is parked. Between restarts the shard backs off exponentially
//! (100 ms doubling to 5 s); the backoff resets once a worker of the shard
//! has acknowledged a batch, so occasional crashes in a long run never
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
    recent: VecDeque<Instant>,
    consecutive: u32,
    pub restarts: u32,
    pub parked: bool,
}

impl ShardLife {
    pub fn on_crash(&mut self, now: Instant, policy: &RestartPolicy) -> Decision {
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.interval)
        {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 > policy.burst {
            self.parked = true;
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

    /// A worker of this shard acknowledged a batch: it works, so the next
    /// crash starts the backoff from the beginning.
    pub fn on_progress(&mut self) {
        self.consecutive = 0;
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
        assert!(life.parked);
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
}
