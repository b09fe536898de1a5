//! Stats for a bulkget run: the files and the meters behind them.
//!
//! While a run goes on, every worker rewrites `STATE/shards/shard-KK.json`
//! and the coordinator rewrites `STATE/coordinator.json`, once a second and
//! once more at exit. People and scripts read those files (`cat`, `jq`,
//! `watch`, `bulkget status`) without talking to the run, so they must always
//! be whole, self-describing and versioned. `docs/STATS.md` documents them
//! field by field.
//!
//! The crate is laid out by who uses what:
//!
//! * [`schema`]: the serde types of both files ([`ShardStats`],
//!   [`CoordinatorStats`]), the schema version, the versioning rule and the
//!   file paths. The contract between writers and readers.
//! * [`checkpoint`]: the serde types of `checkpoint.json`, which the
//!   coordinator's scheduler records into and readers read, and the one
//!   parser of its versions.
//! * [`histogram`], [`rate`], [`http_status`]: the worker's hot-path meters
//!   (its counters and the shard file's writer are in `bulkget-worker`'s
//!   `stats_file.rs`).
//!   Recording a latency or a status code is a few integer operations on one
//!   thread: no lock, no allocation. The work of turning them into
//!   percentiles, a rate and a map happens once per snapshot.
//! * [`atomic`]: JSON written by temporary file and rename, so readers never
//!   see a torn file; a durable variant (fsync of file and directory) for the
//!   checkpoint.
//! * [`time`]: the RFC 3339 timestamps in the files.
//!
//! Reading the files for people (`bulkget status`, the progress lines) is
//! `bulkget-report`'s.

pub mod atomic;
pub mod checkpoint;
pub mod histogram;
pub mod http_status;
pub mod rate;
pub mod schema;
pub mod time;

pub use atomic::{read_json, write_json_atomic, write_json_durable};
pub use histogram::LatencyHistogram;
pub use http_status::StatusCounts;
pub use rate::{eta_seconds, RateWindow};
pub use schema::{
    Backoff, CoordinatorStats, EtaMethod, Latency, Pace, RunState, ShardState, ShardStats,
    ShardSummary, SummaryState, SCHEMA_VERSION,
};
pub use time::{format_rfc3339, now_rfc3339, parse_rfc3339};

/// This process's peak resident memory (`VmHWM` in `/proc/self/status`), in
/// bytes, or `None` where the system does not say.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The largest peak resident memory of this process's children that have
/// exited and been waited for (`getrusage(RUSAGE_CHILDREN)`), in bytes: for
/// the coordinator, its workers'. Unlike a child's own `wait4` figure, it
/// never includes the memory of whoever started this process (the kernel
/// records a process's pre-`exec` high-water mark as its own), because
/// the workers are started from the coordinator itself.
pub fn children_peak_rss_bytes() -> Option<u64> {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    let r = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    (r == 0).then(|| u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024)
}

/// `docs/STATS.md` is the schema's documentation for people; these tests keep
/// it honest against the types.
#[cfg(test)]
mod doc_tests {
    use super::*;
    use serde_json::Value;

    const DOC: &str = include_str!("../../../docs/STATS.md");

    /// The JSON block after `<!-- example: NAME -->`.
    fn example(name: &str) -> &'static str {
        let at = DOC
            .find(&format!("<!-- example: {name} -->"))
            .unwrap_or_else(|| panic!("no {name} example in docs/STATS.md"));
        let rest = &DOC[at..];
        let start = rest.find("```json\n").expect("a json block") + "```json\n".len();
        let end = rest[start..].find("```").expect("the block's end");
        &rest[start..start + end]
    }

    /// Parsing into the type and writing back loses nothing and adds
    /// nothing: the example has every field and only known ones.
    fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(name: &str) -> T {
        let text = example(name);
        let as_value: Value = serde_json::from_str(text).unwrap();
        let typed: T = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), as_value, "{name}");
        typed
    }

    fn assert_documented(keys: impl IntoIterator<Item = String>) {
        for key in keys {
            assert!(
                DOC.contains(&format!("| `{key}` |")),
                "field `{key}` is not in a table of docs/STATS.md"
            );
        }
    }

    fn keys_of(v: &Value) -> Vec<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn the_examples_match_the_types() {
        let s: ShardStats = round_trips("shard");
        assert_eq!(s.schema_version, SCHEMA_VERSION);
        let c: CoordinatorStats = round_trips("coordinator");
        assert_eq!(c.schema_version, SCHEMA_VERSION);
        assert!(c.shards.iter().any(|s| s.pid.is_none()));
        let cp: checkpoint::Checkpoint = round_trips("checkpoint");
        assert_eq!(cp.schema_version, checkpoint::CHECKPOINT_VERSION);
        assert!(matches!(cp.position, checkpoint::ListPosition::Marker(_)));
        // The example is consistent: every name before the position, on the
        // complete pages after it and in the bitmap is counted once.
        let bits: u32 = cp.done_after.partial[0]
            .done
            .iter()
            .map(|w| w.count_ones())
            .sum();
        assert_eq!(
            cp.totals.files_ok + cp.totals.files_failed,
            cp.totals.names_listed + cp.done_after.complete_pages() * 1000 + u64::from(bits)
        );
        assert_eq!(
            cp.done_after.partial[0].done.len(),
            (cp.done_after.partial[0].len as usize).div_ceil(64)
        );
    }

    #[test]
    fn every_field_has_a_row() {
        let shard = serde_json::to_value(ShardStats::default()).unwrap();
        assert_documented(keys_of(&shard));
        assert_documented(
            keys_of(&shard["latency_ms"])
                .into_iter()
                .map(|k| format!("latency_ms.{k}")),
        );
        assert_documented(
            keys_of(&shard["pace"])
                .into_iter()
                .map(|k| format!("pace.{k}")),
        );
        let mut c = CoordinatorStats::default();
        c.shards.push(ShardSummary::default());
        let c = serde_json::to_value(c).unwrap();
        assert_documented(keys_of(&c));
        assert_documented(keys_of(&c["shards"][0]));
        let cp = checkpoint::Checkpoint {
            schema_version: checkpoint::CHECKPOINT_VERSION,
            position: checkpoint::ListPosition::Start,
            totals: checkpoint::Totals::default(),
            done_after: checkpoint::DoneAfter {
                complete: vec![checkpoint::CompleteRun {
                    first: 0,
                    fingerprints: vec![],
                }],
                partial: vec![checkpoint::PartialPage {
                    offset: 0,
                    len: 0,
                    fingerprint: checkpoint::PageFingerprint(0),
                    done: vec![],
                }],
            },
            failed_len: 0,
            complete: false,
            refresh: false,
            updated_at: String::new(),
        };
        let cp = serde_json::to_value(cp).unwrap();
        assert_documented(keys_of(&cp));
        for nested in ["totals", "done_after"] {
            assert_documented(
                keys_of(&cp[nested])
                    .into_iter()
                    .map(|k| format!("{nested}.{k}")),
            );
        }
        for list in ["partial", "complete"] {
            assert_documented(
                keys_of(&cp["done_after"][list][0])
                    .into_iter()
                    .map(|k| format!("done_after.{list}[].{k}")),
            );
        }
    }
}
