use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Reads a `Retry-After` header value: delay-seconds (`120`) or an
/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, the HTTP-date form every
/// sender must use), measured from `now`. A date in the past is no wait; the
/// result is capped at `cap`. Anything else (negative numbers, the obsolete
/// RFC 850 and asctime date forms, garbage) is `None`: the normal backoff
/// applies.
pub fn parse_retry_after(value: &str, now: SystemTime, cap: Duration) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Longer than u64 is "very long", not invalid.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(cap));
    }
    let at = parse_imf_fixdate(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)).min(cap))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` as seconds since the Unix epoch.
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 29 || &b[3..5] != b", " || &b[25..] != b" GMT" {
        return None;
    }
    if !matches!(
        &s[..3],
        "Mon" | "Tue" | "Wed" | "Thu" | "Fri" | "Sat" | "Sun"
    ) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    if b[7] != b' ' || b[11] != b' ' || b[16] != b' ' || b[19] != b':' || b[22] != b':' {
        return None;
    }
    let day = num(5..7)?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| s.get(8..11) == Some(*m))? as u64
        + 1;
    let year = num(12..16)?;
    let (h, m, sec) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), for year >= 1970.
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
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
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let cap = Duration::from_secs(120);
        // 1994-11-06T08:49:37Z, RFC 9110's example.
        let t0 = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let p = |v: &str| parse_retry_after(v, t0, cap);
        assert_eq!(p("0"), Some(Duration::ZERO));
        assert_eq!(p(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(p("86400"), Some(cap));
        assert_eq!(p("99999999999999999999999"), Some(cap));
        assert_eq!(p("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(
            p("Sun, 06 Nov 1994 08:50:07 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(p("Sun, 06 Nov 1994 07:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(p("Mon, 07 Nov 1994 08:49:37 GMT"), Some(cap));
        assert_eq!(p("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(
            parse_retry_after("Tue, 29 Feb 2000 00:00:10 GMT", leap, cap),
            Some(Duration::from_secs(10))
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 06 Nov 1994 08:4x:37 GMT",
            "Sun, 06 Nov +994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT\u{e9}",
            "Sun, 06 Nov 1994 08:49:3\u{e9}GMT",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
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
