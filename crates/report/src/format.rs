//! Numbers, bytes, durations and plurals for people: one function for each,
//! used by the progress lines, the fetch summary and `bulkget status` alike,
//! so that the same quantity reads the same everywhere.

use std::time::{Duration, SystemTime};

/// `1234567` as `1,234,567`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        // A separator before every digit with a multiple of 3 after it.
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count for a table cell, at most 7 characters: exact with separators
/// below a million, then with an M or G suffix. Where a table shows it, a
/// header nearby has the exact number; the cell is for comparing at a glance.
pub fn compact(n: u64) -> String {
    if n < 1_000_000 {
        grouped(n)
    } else if n < 1_000_000_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else {
        format!("{:.3}G", n as f64 / 1e9)
    }
}

/// Bytes in decimal units (the design counts 10^9 × 100 B as 100 GB).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    if b < 1000 {
        return format!("{b} B");
    }
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 999.95 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A duration in seconds, short: `4.2s`, `42s`, `7m05s`, `3h04m`, `2d05h`;
/// `-` for a value that is not a duration.
pub fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".to_string();
    }
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// An age in whole seconds below a minute (a redraw a second should not
/// flicker tenths), else as [`human_duration`].
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        human_duration(s as f64)
    }
}

/// `42s ago`, or words for a timestamp that does not parse.
pub fn written_ago(timestamp: &str, now: SystemTime) -> String {
    bulkget_stats::time::age(timestamp, now).map_or("at an unknown time".to_string(), |a| {
        format!("{} ago", human_age(a))
    })
}

/// Milliseconds with about two significant digits; `-` for no data.
pub fn human_ms(ms: f64) -> String {
    if ms.is_nan() || ms <= 0.0 {
        "-".to_string()
    } else if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// Elapsed time as `H:MM:SS`, which reads and sorts well in a log.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// At most `max` characters of `s`, with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A grouped count and its noun: `1 retry`, `3,456 retries`.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", grouped(n), if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_helpers() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(12), "12");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(compact(999_999), "999,999");
        assert_eq!(compact(62_500_000), "62.50M");
        assert_eq!(compact(1_000_000_000), "1.000G");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_000), "1.0 kB");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(human_bytes(999_960), "1.0 MB");
        assert_eq!(human_bytes(100_000_000_000), "100.0 GB");
        assert_eq!(human_duration(4.21), "4.2s");
        assert_eq!(human_duration(42.0), "42s");
        assert_eq!(human_duration(59.4), "59s");
        assert_eq!(human_duration(61.0), "1m01s");
        assert_eq!(human_duration(425.0), "7m05s");
        assert_eq!(human_duration(11_040.0), "3h04m");
        assert_eq!(human_duration(190_800.0), "2d05h");
        assert_eq!(human_duration(-1.0), "-");
        assert_eq!(human_age(Duration::from_millis(4_900)), "4s");
        assert_eq!(human_age(Duration::from_secs(425)), "7m05s");
        assert_eq!(human_ms(0.0), "-");
        assert_eq!(human_ms(0.523), "0.52");
        assert_eq!(human_ms(12.34), "12.3");
        assert_eq!(human_ms(1234.6), "1235");
        assert_eq!(clock(Duration::from_secs(3_725)), "1:02:05");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        assert_eq!(plural(1, "retry", "retries"), "1 retry");
        assert_eq!(plural(3_456, "retry", "retries"), "3,456 retries");
    }
}
