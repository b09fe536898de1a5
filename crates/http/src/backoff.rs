use std::time::Duration;

/// Exponential backoff with jitter: attempt `n` (from 1) waits a random time
/// in `[d/2, d]` where `d = min(base * 2^(n-1), max)`. A server's
/// `Retry-After` is a floor: the wait is never shorter than what it asked.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        jitter: &mut Jitter,
    ) -> Duration {
        let shift = attempt.saturating_sub(1).min(30);
        let d = self.base.saturating_mul(1u32 << shift).min(self.max);
        let half = d / 2;
        let spread = (d - half).as_micros() as u64;
        let jittered = half + Duration::from_micros(jitter.below(spread + 1));
        match retry_after {
            Some(ra) => jittered.max(ra),
            None => jittered,
        }
    }
}

/// A small xorshift generator for jitter. Jitter needs no cryptographic
/// quality, only that processes started together do not retry in lockstep,
/// so each is seeded from its pid and the clock.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    pub fn from_entropy() -> Jitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Jitter::new(t ^ ((std::process::id() as u64) << 32))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        let mut j = Jitter::new(42);
        for attempt in 1..=12 {
            let full =
                Duration::from_millis(100 * (1 << (attempt - 1))).min(Duration::from_secs(5));
            for _ in 0..50 {
                let d = b.delay(attempt, None, &mut j);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let b = Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(10),
        };
        let mut j = Jitter::new(7);
        let d = b.delay(1, Some(Duration::from_secs(2)), &mut j);
        assert_eq!(d, Duration::from_secs(2));
    }
}
