//! Timestamps in the stats files: RFC 3339, UTC, millisecond precision.
//!
//! Wall-clock strings rather than numbers, because a person reading the file
//! with `cat` or `jq` should see when it was written without converting
//! anything; `jq` can still compare them (`fromdateiso8601` after dropping the
//! milliseconds) and they sort as strings.

use std::time::{Duration, SystemTime};

/// The current time as the stats files write it: `2025-01-31T12:34:56.789Z`.
/// Allocates; called once per snapshot.
pub fn now_rfc3339() -> String {
    format_rfc3339(SystemTime::now())
}

/// `t` as the stats files write it: RFC 3339, UTC, milliseconds.
pub fn format_rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses a timestamp written by [`format_rfc3339`] (any fractional
/// precision, `Z` or `+00:00`). `None` for anything else, including the empty
/// string a default-constructed struct holds.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

/// How long before `now` the timestamp `s` is. `None` if `s` does not parse;
/// zero if it lies in the future (clocks of the writer and reader may
/// disagree a little, and a negative age means nothing useful).
pub fn age(s: &str, now: SystemTime) -> Option<Duration> {
    let t = parse_rfc3339(s)?;
    Some(now.duration_since(t).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_at_millisecond_precision() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let s = format_rfc3339(t);
        assert_eq!(s, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_rfc3339(&s), Some(t));
        // Sub-millisecond parts are dropped on the way out.
        let t2 = t + Duration::from_micros(456);
        assert_eq!(parse_rfc3339(&format_rfc3339(t2)), Some(t));
        assert!(now_rfc3339().ends_with('Z'));
    }

    #[test]
    fn bad_input_and_ages() {
        assert_eq!(parse_rfc3339(""), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20ÄÄ"), None);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_010);
        assert_eq!(
            age("2023-11-14T22:13:20.000Z", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(age("2023-11-14T22:13:30.500Z", now), Some(Duration::ZERO));
        assert_eq!(age("", now), None);
    }
}
