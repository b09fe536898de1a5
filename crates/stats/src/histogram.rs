//! A fixed-size log-linear latency histogram.
//!
//! The worker records one latency per request, hundreds of thousands of times
//! a second on one thread, so [`LatencyHistogram::record`] is a handful of
//! integer instructions: no lock, no allocation, no floating point. The price
//! is paid once a second when the snapshot asks for percentiles, by a walk over
//! the 2,560 buckets.
//!
//! The layout is the one HdrHistogram uses, with 7 bits of sub-bucket
//! precision: values below 256 µs have a bucket each; above that, every power
//! of two `[2^k, 2^(k+1))` is split into 128 equal buckets. A bucket is thus at
//! most 1/128 of its lower bound wide, and reporting its midpoint is within
//! 1/256 (0.4 %) of any value in it: two significant decimal digits, from 1 µs
//! to 2^26 µs (67 s). Larger values are counted in the last bucket, and the
//! exact maximum is kept apart so that a timeout still shows as what it was.

use std::fmt;
use std::time::Duration;

use crate::schema::Latency;

/// Bits of linear precision within each power of two.
const SUB_BITS: u32 = 7;
/// Buckets per power of two.
const SUB_COUNT: usize = 1 << SUB_BITS;
/// Powers of two covered above the linear range: `2^7 .. 2^26`.
const OCTAVES: usize = 19;
/// Total buckets: 128 exact ones for 0..128 µs, then 128 per octave.
pub const BUCKETS: usize = SUB_COUNT * (OCTAVES + 1);
/// The largest value stored in its own bucket, in microseconds (about 67 s).
pub const MAX_TRACKABLE_MICROS: u64 = (1 << (SUB_BITS as usize + OCTAVES)) - 1;

/// Latencies in microseconds, with percentiles in milliseconds.
#[derive(Clone)]
pub struct LatencyHistogram {
    counts: Box<[u64; BUCKETS]>,
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LatencyHistogram {
    // The 2,560 buckets would drown any assertion message; the summary is
    // what a reader wants.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count)
            .field("min_us", &self.min())
            .field("max_us", &self.max)
            .field("p50_ms", &self.percentile(50.0))
            .field("p99_ms", &self.percentile(99.0))
            .finish()
    }
}

/// The bucket a value falls in.
#[inline]
fn bucket_of(micros: u64) -> usize {
    let v = micros.min(MAX_TRACKABLE_MICROS);
    // Position of the highest set bit; values below 2^7 have their own
    // bucket (shift 0), so the `| 1` only keeps `leading_zeros` defined at 0.
    let top = 63 - (v | 1).leading_zeros();
    let shift = top.saturating_sub(SUB_BITS);
    // `v >> shift` is in [128, 256) once shift > 0, and in [0, 256) at shift
    // 0, so consecutive octaves land in consecutive runs of 128 buckets.
    (shift as usize) * SUB_COUNT + (v >> shift) as usize
}

/// The lowest value of a bucket and its width, in microseconds.
fn bucket_range(index: usize) -> (u64, u64) {
    let shift = (index >> SUB_BITS).saturating_sub(1);
    let sub = (index - shift * SUB_COUNT) as u64;
    (sub << shift, 1 << shift)
}

impl LatencyHistogram {
    /// An empty histogram. Allocates its 20 KiB of buckets once, here.
    pub fn new() -> Self {
        let counts: Box<[u64]> = vec![0u64; BUCKETS].into_boxed_slice();
        LatencyHistogram {
            counts: counts.try_into().expect("length is BUCKETS"),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Counts one latency. Constant time, no allocation.
    #[inline]
    pub fn record(&mut self, micros: u64) {
        self.counts[bucket_of(micros)] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(micros);
        self.min = self.min.min(micros);
        self.max = self.max.max(micros);
    }

    /// Counts one latency given as a `Duration`.
    #[inline]
    pub fn record_duration(&mut self, d: Duration) {
        self.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The smallest recorded latency in microseconds, 0 when empty.
    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    /// The largest recorded latency in microseconds (exact, even beyond
    /// [`MAX_TRACKABLE_MICROS`]), 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean latency in milliseconds, 0 when empty.
    pub fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64 / 1000.0
        }
    }

    /// The `p`-th percentile (`0.0..=100.0`) in milliseconds, 0 when empty.
    ///
    /// Uses the nearest-rank definition (the smallest recorded value with at
    /// least `p` % of the values at or below it), reported as the midpoint of
    /// its bucket and clamped to the exact minimum and maximum: within 0.4 %
    /// of the true value below 67 s. The lowest and highest ranks return the
    /// exact minimum and maximum.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) };
        // `as u64` saturates, and the `max(1)` makes p = 0 mean the minimum.
        let rank = ((p / 100.0 * self.count as f64).ceil() as u64).clamp(1, self.count);
        // The extremes are known exactly; no need to approximate them.
        if rank == 1 {
            return self.min as f64 / 1000.0;
        }
        if rank == self.count {
            return self.max as f64 / 1000.0;
        }
        let mut seen = 0u64;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = bucket_range(index);
                let mid = low as f64 + (width - 1) as f64 / 2.0;
                let clamped = mid.clamp(self.min as f64, self.max as f64);
                return clamped / 1000.0;
            }
        }
        // Unreachable while `count` equals the sum of the buckets.
        self.max as f64 / 1000.0
    }

    /// p50, p90, p99 and max, as the stats file wants them.
    pub fn latency(&self) -> Latency {
        Latency {
            p50: self.percentile(50.0),
            p90: self.percentile(90.0),
            p99: self.percentile(99.0),
            max: self.max as f64 / 1000.0,
        }
    }

    /// The latencies in the fixed buckets `le_seconds` (increasing), as
    /// cumulative counts. A bucket of this histogram counts under a bound
    /// when its lowest value is at or below it, so a count may include
    /// latencies up to 0.8 % above its bound.
    pub fn buckets(&self, le_seconds: &[f64]) -> crate::schema::LatencyBuckets {
        let mut counts = vec![0u64; le_seconds.len()];
        if self.count > 0 {
            for (index, &n) in self.counts.iter().enumerate() {
                if n == 0 {
                    continue;
                }
                let low_seconds = bucket_range(index).0 as f64 / 1e6;
                if let Some(first) = le_seconds.iter().position(|&le| low_seconds <= le) {
                    counts[first] += n;
                }
            }
            for i in 1..counts.len() {
                counts[i] += counts[i - 1];
            }
        }
        crate::schema::LatencyBuckets {
            le_seconds: le_seconds.to_vec(),
            counts,
            count: self.count,
            sum_seconds: self.sum as f64 / 1e6,
        }
    }

    /// Adds every value of `other` to `self`, as if recorded here.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Forgets every value, keeping the allocation.
    pub fn reset(&mut self) {
        self.counts.fill(0);
        self.count = 0;
        self.sum = 0;
        self.min = u64::MAX;
        self.max = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_buckets_are_cumulative_and_add_up() {
        let mut h = LatencyHistogram::new();
        let le = [0.001, 0.01, 0.1];
        assert_eq!(h.buckets(&le).counts, [0, 0, 0]);
        for micros in [200, 1_000, 5_000, 9_000, 50_000, 2_000_000, 100_000_000] {
            h.record(micros);
        }
        let b = h.buckets(&le);
        assert_eq!(b.le_seconds, le);
        assert_eq!(b.counts, [2, 4, 5]);
        assert_eq!(b.count, 7);
        assert!((b.sum_seconds - 102.0652).abs() < 1e-9, "{}", b.sum_seconds);
    }

    /// The exact nearest-rank percentile of sorted values, in milliseconds.
    fn exact(sorted: &[u64], p: f64) -> f64 {
        let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1] as f64 / 1000.0
    }

    /// A deterministic spread of values over the whole range (xorshift, so
    /// the test needs no random-number crate and never changes).
    fn values(n: usize, seed: u64) -> Vec<u64> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Log-uniform between 1 µs and 2^26 µs.
                let bits = 1 + x % 26;
                (x >> 32) % (1 << bits)
            })
            .collect()
    }

    #[test]
    fn buckets_are_contiguous_and_ordered() {
        let mut last = 0;
        for v in 0..=MAX_TRACKABLE_MICROS.min(1 << 20) {
            let b = bucket_of(v);
            assert!(b == last || b == last + 1, "gap at {v}");
            let (low, width) = bucket_range(b);
            assert!(low <= v && v < low + width, "{v} not in bucket {b}");
            last = b;
        }
        assert_eq!(bucket_of(MAX_TRACKABLE_MICROS), BUCKETS - 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        let (low, width) = bucket_range(BUCKETS - 1);
        assert_eq!(low + width - 1, MAX_TRACKABLE_MICROS);
    }

    #[test]
    fn every_bucket_is_within_two_significant_digits() {
        for b in 0..BUCKETS {
            let (low, width) = bucket_range(b);
            if width > 1 {
                // Half a bucket over its low end: the worst midpoint error.
                assert!((width as f64 / 2.0) / low as f64 <= 1.0 / 256.0 + 1e-12);
            }
        }
    }

    #[test]
    fn percentiles_match_exact_within_bucket_error() {
        let mut v = values(100_000, 0x9e37_79b9_7f4a_7c15);
        let mut h = LatencyHistogram::new();
        for &x in &v {
            h.record(x);
        }
        v.sort_unstable();
        for p in [0.0, 1.0, 10.0, 50.0, 90.0, 99.0, 99.9, 100.0] {
            let want = exact(&v, p);
            let got = h.percentile(p);
            // Values below 256 µs have exact buckets; above, 0.4 %.
            let tolerance = want * (1.0 / 256.0) + 1e-9;
            assert!(
                (got - want).abs() <= tolerance,
                "p{p}: got {got} ms, exact {want} ms"
            );
        }
        assert_eq!(h.percentile(100.0), *v.last().unwrap() as f64 / 1000.0);
        assert_eq!(h.percentile(0.0), v[0] as f64 / 1000.0);
        assert_eq!(h.count(), 100_000);
    }

    #[test]
    fn simple_distribution() {
        // 1..=1000 ms, one of each: p50 is 500 ms, p99 990 ms.
        let mut h = LatencyHistogram::new();
        for ms in 1..=1000u64 {
            h.record(ms * 1000);
        }
        let l = h.latency();
        assert!((l.p50 - 500.0).abs() <= 500.0 / 256.0, "{l:?}");
        assert!((l.p90 - 900.0).abs() <= 900.0 / 256.0, "{l:?}");
        assert!((l.p99 - 990.0).abs() <= 990.0 / 256.0, "{l:?}");
        assert_eq!(l.max, 1000.0);
        assert!((h.mean_ms() - 500.5).abs() < 1e-9);
    }

    #[test]
    fn small_values_are_exact_and_a_single_value_is_itself() {
        let mut h = LatencyHistogram::new();
        h.record(137);
        assert_eq!(h.percentile(50.0), 0.137);
        h.reset();
        h.record(3_000_123);
        // Clamped to the exact min and max, so one value reads back exactly.
        assert_eq!(h.percentile(99.0), 3_000.123);
    }

    #[test]
    fn overflow_is_counted_and_max_is_exact() {
        let mut h = LatencyHistogram::new();
        h.record(1_000);
        h.record(600_000_000); // ten minutes: past the last bucket
        assert_eq!(h.max(), 600_000_000);
        assert_eq!(h.latency().max, 600_000.0);
        // The overflowing value sits in the last bucket, about 67 s.
        let p100 = h.percentile(100.0);
        assert!(p100 > 60_000.0 && p100 <= 600_000.0, "{p100}");
    }

    #[test]
    fn empty_and_reset() {
        let mut h = LatencyHistogram::new();
        assert_eq!(h.percentile(50.0), 0.0);
        assert_eq!(h.latency(), Latency::default());
        assert_eq!(h.min(), 0);
        h.record(5);
        h.reset();
        assert_eq!(h.count(), 0);
        assert_eq!(h.percentile(99.0), 0.0);
        assert_eq!(h.max(), 0);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let a_vals = values(5_000, 1);
        let b_vals = values(7_000, 2);
        let (mut a, mut b, mut all) = (
            LatencyHistogram::new(),
            LatencyHistogram::new(),
            LatencyHistogram::new(),
        );
        for &x in &a_vals {
            a.record(x);
            all.record(x);
        }
        for &x in &b_vals {
            b.record(x);
            all.record(x);
        }
        a.merge(&b);
        assert_eq!(a.count(), all.count());
        assert_eq!(a.min(), all.min());
        assert_eq!(a.max(), all.max());
        for p in [50.0, 90.0, 99.0] {
            assert_eq!(a.percentile(p), all.percentile(p));
        }
        // Merging an empty histogram changes nothing.
        a.merge(&LatencyHistogram::new());
        assert_eq!(a.min(), all.min());
        assert_eq!(a.count(), all.count());
    }

    #[test]
    fn nan_and_out_of_range_percentiles_do_not_panic() {
        let mut h = LatencyHistogram::new();
        h.record(10);
        h.record(20);
        assert_eq!(h.percentile(f64::NAN), 0.010);
        assert_eq!(h.percentile(-5.0), 0.010);
        assert_eq!(h.percentile(500.0), 0.020);
    }
}
