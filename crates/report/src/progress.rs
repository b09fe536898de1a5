//! The progress lines a run prints on stderr, rendered from the same
//! [`CoordinatorStats`] snapshot the coordinator writes to
//! `coordinator.json` each tick. The terminal plumbing (the indicatif bar,
//! when a plain line is due) stays in the coordinator; this module only
//! turns a snapshot into text.

use std::time::Duration;

use bulkget_stats::schema::{CoordinatorStats, SummaryState};

use crate::eta::eta_words;
use crate::format::{clock, grouped, human_bytes, plural};

/// Names done: fetched, failed, or (in a refresh) found in the sink.
fn done(c: &CoordinatorStats) -> u64 {
    c.files_ok + c.files_failed + c.files_present
}

/// Names listed so far, never fewer than the files done (a resumed run
/// counts files done on pages it has not listed again).
fn listed(c: &CoordinatorStats) -> u64 {
    c.names_listed.max(done(c))
}

/// The files the run will have done at the end, when known (the listing is
/// done, or `--expected-files` was given): the one rule, [`crate::eta::total`].
fn total(c: &CoordinatorStats) -> Option<u64> {
    crate::eta::total(c.listing_done, c.names_listed, done(c), c.expected_files)
}

/// Restarts of every shard.
pub fn restarts(c: &CoordinatorStats) -> u64 {
    c.shards.iter().map(|s| u64::from(s.restarts)).sum()
}

/// Shards no longer restarted.
pub fn parked(c: &CoordinatorStats) -> u64 {
    c.shards
        .iter()
        .filter(|s| s.state == SummaryState::Parked)
        .count() as u64
}

/// The bar's position and length: files done, and the total once it is
/// known (`None` while listing without `--expected-files`).
pub fn bar_position(c: &CoordinatorStats) -> (u64, Option<u64>) {
    (done(c), total(c))
}

/// The bar's two lines: the counts (and the ETA once there is one), then
/// the rest, most useful first so that a narrow terminal cuts the least.
pub fn bar_lines(c: &CoordinatorStats) -> (String, String) {
    let first = if c.listing_done {
        format!(
            "{}/{} · {}",
            grouped(done(c)),
            grouped(listed(c)),
            eta_words(c.eta_seconds, c.eta_method)
        )
    } else if let Some(total) = total(c) {
        // `~`: the total is what --expected-files says, until the listing
        // ends.
        format!(
            "{}/~{} · {}",
            grouped(done(c)),
            grouped(total),
            eta_words(c.eta_seconds, c.eta_method)
        )
    } else {
        format!(
            "{} files done of {} listed so far (listing: no ETA yet)",
            grouped(done(c)),
            grouped(listed(c))
        )
    };
    let mut second = format!(
        "{} files/s · {} · {} failed · {} · {}",
        grouped(c.files_per_sec.round() as u64),
        human_bytes(c.bytes),
        grouped(c.files_failed),
        plural(c.retries, "retry", "retries"),
        plural(restarts(c), "restart", "restarts"),
    );
    if parked(c) > 0 {
        second.push_str(&format!(
            " · {} parked",
            plural(parked(c), "shard", "shards")
        ));
    }
    (first, second)
}

/// `bulkget: 0:01:05 123,456/200,000+ files (61.7 %), 2,102 files/s,
/// 12.3 MB, 0 failed, 3 retries, 0 restarts, no ETA while listing`. The `+`
/// says more names may come. With `--expected-files`, while listing, the
/// percentage is of the files expected, said after the count:
/// `123,456/200,000+ of ~1,000,000 files (12.3 %)`.
pub fn plain_line(c: &CoordinatorStats, elapsed: Duration) -> String {
    let listed = listed(c);
    let expected = match total(c) {
        Some(total) if !c.listing_done => format!(" of ~{}", grouped(total)),
        _ => String::new(),
    };
    let of = total(c).unwrap_or(listed);
    let percent = if of > 0 {
        format!(" ({:.1} %)", done(c) as f64 * 100.0 / of as f64)
    } else {
        String::new()
    };
    let parked = match parked(c) {
        0 => String::new(),
        n => format!(", {} parked", plural(n, "shard", "shards")),
    };
    format!(
        "bulkget: {} {}/{}{}{expected} files{percent}, {} files/s, {}, {} failed, {}, {}, {}{parked}",
        clock(elapsed),
        grouped(done(c)),
        grouped(listed),
        if c.listing_done { "" } else { "+" },
        grouped(c.files_per_sec.round() as u64),
        human_bytes(c.bytes),
        grouped(c.files_failed),
        plural(c.retries, "retry", "retries"),
        plural(restarts(c), "restart", "restarts"),
        eta_words(c.eta_seconds, c.eta_method),
    )
}

/// The fields of a plain line as JSON (`--log-format json`).
pub fn json_fields(
    c: &CoordinatorStats,
    elapsed: Duration,
) -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "elapsed_seconds": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "files_done": done(c),
        "files_ok": c.files_ok,
        "files_failed": c.files_failed,
        "files_present": c.files_present,
        "names_listed": listed(c),
        "listing_done": c.listing_done,
        "files_per_sec": c.files_per_sec.round(),
        "bytes": c.bytes,
        "retries": c.retries,
        "restarts": restarts(c),
        "parked_shards": parked(c),
        "eta_seconds": c.eta_seconds.map(|e| e.round()),
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => unreachable!("an object literal"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkget_stats::schema::{EtaMethod, ShardSummary};

    fn snapshot() -> CoordinatorStats {
        CoordinatorStats {
            files_ok: 123_450,
            files_failed: 6,
            bytes: 12_345_600,
            names_listed: 200_000,
            listing_done: false,
            files_per_sec: 2_101.6,
            eta_seconds: None,
            eta_method: EtaMethod::NoneListing,
            retries: 3,
            shards: vec![
                ShardSummary {
                    shard: 0,
                    restarts: 1,
                    state: SummaryState::Running,
                    ..ShardSummary::default()
                },
                ShardSummary {
                    shard: 1,
                    state: SummaryState::Running,
                    ..ShardSummary::default()
                },
            ],
            ..CoordinatorStats::default()
        }
    }

    #[test]
    fn plain_lines_while_listing_and_after() {
        let mut s = snapshot();
        assert_eq!(
            plain_line(&s, Duration::from_secs(65)),
            "bulkget: 0:01:05 123,456/200,000+ files (61.7 %), 2,102 files/s, 12.3 MB, \
             6 failed, 3 retries, 1 restart, no ETA while listing"
        );
        s.listing_done = true;
        s.eta_seconds = Some(36.7);
        s.eta_method = EtaMethod::RemainingOverRate;
        s.shards[1].state = SummaryState::Parked;
        s.shards.push(ShardSummary {
            shard: 2,
            state: SummaryState::Parked,
            ..ShardSummary::default()
        });
        s.retries = 1;
        assert_eq!(
            plain_line(&s, Duration::from_secs(7_200)),
            "bulkget: 2:00:00 123,456/200,000 files (61.7 %), 2,102 files/s, 12.3 MB, \
             6 failed, 1 retry, 1 restart, ETA 37s, 2 shards parked"
        );
        let s = CoordinatorStats {
            eta_method: EtaMethod::NoneListing,
            ..CoordinatorStats::default()
        };
        assert_eq!(
            plain_line(&s, Duration::ZERO),
            "bulkget: 0:00:00 0/0+ files, 0 files/s, 0 B, 0 failed, 0 retries, 0 restarts, \
             no ETA while listing"
        );
    }

    #[test]
    fn bar_lines_put_the_counts_first() {
        let mut s = snapshot();
        assert_eq!(
            bar_lines(&s),
            (
                "123,456 files done of 200,000 listed so far (listing: no ETA yet)".to_string(),
                "2,102 files/s · 12.3 MB · 6 failed · 3 retries · 1 restart".to_string()
            )
        );
        assert_eq!(bar_position(&s), (123_456, None));
        s.listing_done = true;
        s.eta_seconds = Some(4_000.0);
        s.eta_method = EtaMethod::RemainingOverRate;
        s.shards[1].state = SummaryState::Parked;
        let (first, second) = bar_lines(&s);
        assert_eq!(first, "123,456/200,000 · ETA 1h06m");
        assert!(
            second.ends_with(" · 1 restart · 1 shard parked"),
            "{second}"
        );
        assert_eq!(bar_position(&s), (123_456, Some(200_000)));
        // A billion-file run's first line fits 80 columns with the bar.
        s.files_ok = 450_123_456;
        s.names_listed = 1_000_000_000;
        s.eta_seconds = Some(332.0);
        let prefix = "⠚ 00:12:34 [=======>            ]  45% ".chars().count();
        assert!(prefix + bar_lines(&s).0.chars().count() <= 80);
    }

    #[test]
    fn expected_files_give_a_bar_a_percentage_and_an_eta_while_listing() {
        let mut s = snapshot();
        s.expected_files = Some(1_000_000);
        s.eta_seconds = Some(415.0);
        s.eta_method = EtaMethod::ExpectedOverRate;
        assert_eq!(bar_position(&s), (123_456, Some(1_000_000)));
        assert_eq!(bar_lines(&s).0, "123,456/~1,000,000 · ETA 6m55s");
        assert_eq!(
            plain_line(&s, Duration::from_secs(65)),
            "bulkget: 0:01:05 123,456/200,000+ of ~1,000,000 files (12.3 %), 2,102 files/s, \
             12.3 MB, 6 failed, 3 retries, 1 restart, ETA 6m55s"
        );
        // Once the listing is done, the count listed is the total.
        s.listing_done = true;
        s.eta_method = EtaMethod::RemainingOverRate;
        assert_eq!(bar_position(&s), (123_456, Some(200_000)));
        assert_eq!(bar_lines(&s).0, "123,456/200,000 · ETA 6m55s");
        assert!(plain_line(&s, Duration::from_secs(65))
            .starts_with("bulkget: 0:01:05 123,456/200,000 files (61.7 %), "));
    }

    #[test]
    fn json_fields_carry_the_numbers() {
        let f = json_fields(&snapshot(), Duration::from_secs(3));
        assert_eq!(f["files_done"], 123_456);
        assert_eq!(f["names_listed"], 200_000);
        assert_eq!(f["restarts"], 1);
        assert_eq!(f["parked_shards"], 0);
        assert_eq!(f["eta_seconds"], serde_json::Value::Null);
    }
}
