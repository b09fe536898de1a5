//! `--rate-limit R`: the service's own request budget, as a production
//! service behind nginx's `limit_req` has one.

use std::sync::Mutex;
use std::time::Instant;

/// A token bucket shared by every connection: R tokens a second, at most a
/// tenth of a second of them (and at least one) saved up. A request that
/// finds no token is refused; refused requests cost nothing, so a client
/// that pushes harder does not lower the rate served.
pub(crate) struct RateLimit {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub(crate) fn new(per_second: u64, now: Instant) -> RateLimit {
        let rate = per_second as f64;
        let burst = (rate / 10.0).max(1.0);
        RateLimit {
            rate,
            burst,
            state: Mutex::new((burst, now)),
        }
    }

    /// Whether a request arriving at `now` is served.
    pub(crate) fn admit(&self, now: Instant) -> bool {
        let mut state = self.state.lock().expect("no panic holds the lock");
        let (tokens, last) = &mut *state;
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        *last = now.max(*last);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn serves_the_rate_and_a_tenth_of_a_second_of_burst() {
        let start = Instant::now();
        let limit = RateLimit::new(1000, start);
        // A burst of 100 at once, then nothing until tokens come back.
        let burst = (0..1000).filter(|_| limit.admit(start)).count();
        assert_eq!(burst, 100);
        // Over the next second, asked 10 times a millisecond: 1,000 served.
        let mut served = 0;
        for ms in 1..=1000 {
            let now = start + Duration::from_millis(ms);
            served += (0..10).filter(|_| limit.admit(now)).count();
        }
        assert_eq!(served, 1000);
    }
}
