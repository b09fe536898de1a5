//! A job's names in JetStream and the records kept there.
//!
//! Everything of a job is named after it, so two jobs on one NATS server
//! never meet, and a message id of one job can never deduplicate another's:
//!
//! | what | name |
//! | --- | --- |
//! | work-queue stream of unfinished batches | `BULKGET_<JOB>`, subject `bulkget.<JOB>.batch` |
//! | its durable pull consumer, shared by every host | `work` |
//! | stream of names failed for good (limits retention) | `BULKGET_<JOB>_FAILED`, subject `bulkget.<JOB>.failed` |
//! | key-value bucket (listing position, hosts' totals) | `bulkget-<JOB>` |

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// The durable consumer every host pulls from.
pub const CONSUMER: &str = "work";
/// The key of the lister's record (lease and listing position).
pub const LISTER_KEY: &str = "lister";
/// Hosts' records are `host.<HOST>`.
pub const HOST_PREFIX: &str = "host.";
/// The header that marks a batch as a part of a split one: it runs alone
/// from its first delivery on (see `poison`).
pub const PART_HEADER: &str = "Bulkget-Part";

/// The longest job name accepted. Stream names must stay short.
const MAX_JOB: usize = 64;

/// A validated job name and the JetStream names made from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    name: String,
}

impl Job {
    /// Accepts letters, digits, `-` and `_` only: the characters every
    /// JetStream name (stream, subject token, bucket, message id) allows.
    pub fn parse(name: &str) -> Result<Job, String> {
        if name.is_empty()
            || name.len() > MAX_JOB
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "--job {name:?}: a job name is 1 to {MAX_JOB} letters, digits, '-' or '_'"
            ));
        }
        Ok(Job { name: name.into() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stream(&self) -> String {
        format!("BULKGET_{}", self.name)
    }

    pub fn subject(&self) -> String {
        format!("bulkget.{}.batch", self.name)
    }

    pub fn failed_stream(&self) -> String {
        format!("BULKGET_{}_FAILED", self.name)
    }

    pub fn failed_subject(&self) -> String {
        format!("bulkget.{}.failed", self.name)
    }

    pub fn bucket(&self) -> String {
        format!("bulkget-{}", self.name)
    }

    /// The message id of batch `batch` of page `page`: the same batch
    /// published again by a restarted lister is dropped by the stream's
    /// de-duplication (within its window).
    pub fn batch_id(&self, page: u64, batch: u32) -> String {
        format!("{}.p{page}.b{batch}", self.name)
    }
}

/// One batch as published: the page and place it was cut from, and its
/// names. JSON, because names are arbitrary strings and the message is
/// small next to the files it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMsg {
    pub page: u64,
    pub batch: u32,
    pub names: Vec<String>,
}

/// The lister's record in the bucket: who lists the job (a lease it renews)
/// and how far the listing is. Every change is a compare-and-set on the
/// revision the writer read, so two listers can never both advance it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListerRecord {
    /// `host:pid:start-time` of the lister that holds the lease.
    pub owner: String,
    /// When the owner last renewed the lease (ms since the epoch).
    pub heartbeat_ms: u64,
    /// The lease: another lister may take over once this long has passed
    /// since the heartbeat.
    pub lease_ms: u64,
    /// The index of the next page to list (pages before it are published).
    pub next_page: u64,
    /// The marker that lists that page; `None` for the first page.
    pub marker: Option<String>,
    /// Names published: as batches, or as failures if unsafe.
    pub names_published: u64,
    pub batches_published: u64,
    /// Names listed and left out by `--include` / `--exclude`. Absent in
    /// the record of a lister from before filters: 0.
    #[serde(default)]
    pub names_excluded: u64,
    /// The last page has been published.
    pub listing_done: bool,
    /// The listing failed for good (the message says why).
    pub listing_failed: Option<String>,
    /// The listing is done and every batch is acknowledged: hosts exit.
    pub finished: bool,
}

impl ListerRecord {
    /// Whether the lease has run out at `now_ms`.
    pub fn lease_expired(&self, now: u64) -> bool {
        now.saturating_sub(self.heartbeat_ms) > self.lease_ms
    }
}

/// A host's totals, put in the bucket every few seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host: String,
    pub pid: u32,
    pub updated_ms: u64,
    pub workers: usize,
    /// `running`, `draining` or `exited`.
    pub state: String,
    pub exit_code: Option<i32>,
    pub files_ok: u64,
    pub files_failed: u64,
    pub bytes: u64,
    pub retries: u64,
    pub batches_acked: u64,
    pub batches_in_flight: u64,
    /// Batches this host received that had been delivered before.
    pub batches_redelivered: u64,
    /// Batches split into parts after repeated deaths.
    pub batches_split: u64,
    pub worker_restarts: u32,
}

/// A name that failed for good, as published to the failure stream before
/// its batch is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRecord {
    pub name: String,
    pub reason: String,
    pub status: Option<u16>,
    pub host: String,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// This machine's name, made safe for a key (letters, digits, `-`, `_`).
pub fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let safe: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() {
        "host".into()
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_checked() {
        assert!(Job::parse("nightly-2026_11").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(65)] {
            assert!(Job::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn message_ids_carry_the_job() {
        let a = Job::parse("a").unwrap();
        let b = Job::parse("b").unwrap();
        assert_ne!(a.batch_id(3, 1), b.batch_id(3, 1));
        assert_eq!(a.batch_id(3, 1), "a.p3.b1");
    }

    #[test]
    fn a_lease_runs_out() {
        let r = ListerRecord {
            owner: "x".into(),
            heartbeat_ms: 1_000,
            lease_ms: 500,
            next_page: 0,
            marker: None,
            names_published: 0,
            batches_published: 0,
            names_excluded: 0,
            listing_done: false,
            listing_failed: None,
            finished: false,
        };
        assert!(!r.lease_expired(1_400));
        assert!(r.lease_expired(1_600));
    }

    #[test]
    fn a_record_without_the_excluded_count_reads_as_none_excluded() {
        let old = r#"{"owner":"x","heartbeat_ms":1,"lease_ms":2,"next_page":3,"marker":null,
            "names_published":4,"batches_published":5,"listing_done":false,
            "listing_failed":null,"finished":false}"#;
        let r: ListerRecord = serde_json::from_str(old).unwrap();
        assert_eq!((r.names_published, r.names_excluded), (4, 0));
    }
}
