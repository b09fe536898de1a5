//! HTTP status counting without a map on the hot path.
//!
//! A `BTreeMap<String, u64>` is the natural shape in the stats file, but
//! building a `String` key for every response would allocate a billion times.
//! [`StatusCounts`] is a flat array indexed by the status code; the map is
//! built once per snapshot by [`StatusCounts::to_map`].

use std::collections::BTreeMap;

/// The lowest status code with its own slot.
const FIRST: u16 = 100;
/// The highest status code with its own slot.
const LAST: u16 = 599;
const SLOTS: usize = (LAST - FIRST + 1) as usize;

/// The map key for attempts that ended without any HTTP status (connect
/// error, reset, timeout, malformed response).
pub const ERROR_KEY: &str = "error";
/// The map key for status codes outside 100..=599, which HTTP does not define
/// and a proper client rejects; counted rather than dropped so the totals add
/// up.
pub const OTHER_KEY: &str = "other";

/// Responses per HTTP status code, plus transport errors.
#[derive(Clone, PartialEq, Eq)]
pub struct StatusCounts {
    by_code: [u64; SLOTS],
    error: u64,
    other: u64,
}

impl Default for StatusCounts {
    fn default() -> Self {
        StatusCounts {
            by_code: [0; SLOTS],
            error: 0,
            other: 0,
        }
    }
}

impl std::fmt::Debug for StatusCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.to_map()).finish()
    }
}

impl StatusCounts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one response with this status code. Constant time, no
    /// allocation.
    #[inline]
    pub fn record(&mut self, code: u16) {
        if (FIRST..=LAST).contains(&code) {
            self.by_code[(code - FIRST) as usize] += 1;
        } else {
            self.other += 1;
        }
    }

    /// Counts one attempt that got no status at all.
    #[inline]
    pub fn record_error(&mut self) {
        self.error += 1;
    }

    /// How many responses had this code (codes outside 100..=599 give the
    /// count of all of them together).
    pub fn get(&self, code: u16) -> u64 {
        if (FIRST..=LAST).contains(&code) {
            self.by_code[(code - FIRST) as usize]
        } else {
            self.other
        }
    }

    /// How many attempts got no status.
    pub fn errors(&self) -> u64 {
        self.error
    }

    /// Every attempt counted, errors included.
    pub fn total(&self) -> u64 {
        self.by_code.iter().sum::<u64>() + self.error + self.other
    }

    /// Adds `other`'s counts to `self`.
    pub fn merge(&mut self, other: &StatusCounts) {
        for (a, b) in self.by_code.iter_mut().zip(other.by_code.iter()) {
            *a += b;
        }
        self.error += other.error;
        self.other += other.other;
    }

    /// Forgets every count.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// The stats file's shape: `{"200": n, "503": n, "error": n}`, with only
    /// the keys whose count is not zero. Allocates; call it per snapshot, not
    /// per response.
    pub fn to_map(&self) -> BTreeMap<String, u64> {
        let mut map = BTreeMap::new();
        for (i, &n) in self.by_code.iter().enumerate() {
            if n > 0 {
                map.insert((FIRST as usize + i).to_string(), n);
            }
        }
        if self.error > 0 {
            map.insert(ERROR_KEY.to_string(), self.error);
        }
        if self.other > 0 {
            map.insert(OTHER_KEY.to_string(), self.other);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_map() {
        let mut c = StatusCounts::new();
        assert!(c.to_map().is_empty());
        for _ in 0..3 {
            c.record(200);
        }
        c.record(503);
        c.record(100);
        c.record(599);
        c.record(42);
        c.record(600);
        c.record_error();
        assert_eq!(c.get(200), 3);
        assert_eq!(c.get(404), 0);
        assert_eq!(c.get(42), 2);
        assert_eq!(c.errors(), 1);
        assert_eq!(c.total(), 9);
        let m = c.to_map();
        let keys: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(keys, ["100", "200", "503", "599", "error", "other"]);
        assert_eq!(m["200"], 3);
        assert_eq!(m["other"], 2);
    }

    #[test]
    fn merge_and_reset() {
        let mut a = StatusCounts::new();
        let mut b = StatusCounts::new();
        a.record(200);
        b.record(200);
        b.record(429);
        b.record_error();
        a.merge(&b);
        assert_eq!(a.get(200), 2);
        assert_eq!(a.get(429), 1);
        assert_eq!(a.errors(), 1);
        a.reset();
        assert_eq!(a.total(), 0);
    }
}
