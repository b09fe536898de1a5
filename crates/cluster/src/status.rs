//! `bulkget cluster status`: a job as JetStream holds it.

use crate::args::StatusArgs;
use crate::job::{now_ms, FailedRecord, HostRecord, Job, ListerRecord, HOST_PREFIX};
use crate::store::{self, JobStore};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use bulkget_console::{errln, outln};
use bulkget_coordinator::exit;
use bulkget_report::format::{grouped, human_bytes};
use futures_util::StreamExt;
use serde::Serialize;
use std::time::Duration;

/// A host whose record is older than this is flagged stale: it publishes
/// every 2 s while it runs.
pub const STALE_AFTER_MS: u64 = 15_000;

/// Everything `status` shows, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct JobStatus {
    pub job: String,
    pub lister: Option<ListerRecord>,
    /// The lister's lease has run out (it is not running).
    pub lister_stale: bool,
    /// Batches not yet delivered to any host.
    pub batches_queued: u64,
    /// Batches delivered and not yet acknowledged, those given back (a nak)
    /// and waiting for their next delivery included.
    pub batches_in_flight: u64,
    /// Deliveries after the first (AckWait ran out, or a host gave a batch back).
    pub batches_redelivered: u64,
    pub hosts: Vec<HostStatus>,
    pub files_ok: u64,
    pub files_failed: u64,
    pub bytes: u64,
    pub failed: Option<Vec<FailedRecord>>,
}

#[derive(Debug, Serialize)]
pub struct HostStatus {
    #[serde(flatten)]
    pub record: HostRecord,
    pub age_ms: u64,
    pub stale: bool,
}

pub fn run(args: StatusArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("bulkget cluster status: cannot start runtime: {e}");
            return exit::ERROR;
        }
    };
    runtime.block_on(async move {
        match status(args).await {
            Ok(code) => code,
            Err((code, msg)) => {
                errln!("bulkget cluster status: {msg}");
                code
            }
        }
    })
}

async fn status(args: StatusArgs) -> Result<i32, (i32, String)> {
    let job = Job::parse(&args.job.job).map_err(|e| (exit::USAGE, e))?;
    let client = store::connect(&args.job.nats)
        .await
        .map_err(|e| (exit::ERROR, e))?;
    let js = store::context(client);
    let Some(mut store) = store::open(&js, &job).await.map_err(|e| (exit::ERROR, e))? else {
        errln!(
            "bulkget cluster status: there is no job {} on this NATS server",
            job.name()
        );
        return Ok(exit::ERROR);
    };
    loop {
        let st = read(&mut store, args.failed)
            .await
            .map_err(|e| (exit::ERROR, e))?;
        if args.json {
            outln!(
                "{}",
                serde_json::to_string_pretty(&st).expect("status serialises")
            );
        } else {
            if args.watch {
                // Clear the screen and go home, as `watch` does.
                outln!("\x1b[H\x1b[2J");
            }
            print_table(&st);
        }
        let finished = st.lister.as_ref().is_some_and(|l| l.finished);
        if !args.watch || finished {
            return Ok(exit::OK);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Reads the job's state from the bucket, the stream and the consumer.
pub async fn read(store: &mut JobStore, with_failed: bool) -> Result<JobStatus, String> {
    let lister = store.lister().await?.map(|(r, _)| r);
    let info = store
        .consumer
        .info()
        .await
        .map_err(|e| format!("cannot read the consumer: {e}"))?
        .clone();
    let now = now_ms();
    let mut hosts = Vec::new();
    let mut names = host_keys(store).await?;
    names.sort();
    for key in names {
        if let Ok(Some(value)) = store.kv.get(key).await {
            if let Ok(record) = serde_json::from_slice::<HostRecord>(&value) {
                let age_ms = now.saturating_sub(record.updated_ms);
                let stale = record.exit_code.is_none() && age_ms > STALE_AFTER_MS;
                hosts.push(HostStatus {
                    record,
                    age_ms,
                    stale,
                });
            }
        }
    }
    let files_failed = store.failed_count().await?;
    let failed = if with_failed {
        Some(read_failed(store).await?)
    } else {
        None
    };
    Ok(JobStatus {
        job: store.job.name().to_string(),
        lister_stale: lister.as_ref().is_some_and(|l| l.lease_expired(now)),
        lister,
        batches_queued: info.num_pending,
        batches_in_flight: info.num_ack_pending as u64,
        batches_redelivered: info.num_redelivered as u64,
        files_ok: hosts.iter().map(|h| h.record.files_ok).sum(),
        bytes: hosts.iter().map(|h| h.record.bytes).sum(),
        files_failed,
        hosts,
        failed,
    })
}

/// The keys of the hosts' records in the job's bucket: the subjects its
/// stream holds under `host.`, as a stream-info request filtered on them
/// answers. Each answer lists up to 100,000 subjects and says how many
/// there are in all, so listing them takes a known number of requests,
/// each bounded by the JetStream context's timeout.
///
/// Not `kv.keys()`: that runs an ordered consumer over the bucket ("last
/// per subject") and ends only when a delivered key reports nothing
/// pending, or, after 5 s without any message, when the consumer's info
/// says everything was delivered.
/// nats-server 2.9 over-counts what such a consumer has pending when a key
/// is updated between the consumer's creation and its first delivery, and
/// keeps the surplus: every later update of the key then arrives with 1 or
/// more pending. The lister updates its record after every page and every
/// second, so a status read started as a lister began got neither end and
/// waited for as long as the lister ran.
async fn host_keys(store: &JobStore) -> Result<Vec<String>, String> {
    let cannot = |e: &dyn std::fmt::Display| {
        format!(
            "cannot list the hosts' records in the bucket {}: {e}",
            store.job.bucket()
        )
    };
    let mut subjects = store
        .kv
        .stream
        .info_with_subjects(format!("{}{HOST_PREFIX}>", store.kv.prefix))
        .await
        .map_err(|e| cannot(&e))?;
    let mut names = Vec::new();
    while let Some(subject) = subjects.next().await {
        let (subject, _messages) = subject.map_err(|e| cannot(&e))?;
        if let Some(key) = subject.strip_prefix(&store.kv.prefix) {
            names.push(key.to_string());
        }
    }
    Ok(names)
}

/// Every record of the failure stream, read with an ephemeral ordered
/// consumer (it leaves nothing behind on the server).
async fn read_failed(store: &mut JobStore) -> Result<Vec<FailedRecord>, String> {
    let total = store.failed_count().await?;
    let mut out = Vec::new();
    if total == 0 {
        return Ok(out);
    }
    let consumer = store
        .failed
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot read the failures: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("cannot read the failures: {e}"))?;
    while (out.len() as u64) < total {
        match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            Ok(Some(Ok(m))) => {
                if let Ok(rec) = serde_json::from_slice::<FailedRecord>(&m.payload) {
                    out.push(rec);
                }
            }
            Ok(Some(Err(e))) => return Err(format!("cannot read the failures: {e}")),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(out)
}

fn print_table(st: &JobStatus) {
    outln!("job        {}", st.job);
    match &st.lister {
        None => outln!("listing    not started"),
        Some(l) => {
            let state = if l.finished {
                "finished".to_string()
            } else if let Some(why) = &l.listing_failed {
                format!("failed: {why}")
            } else if l.listing_done {
                "done; waiting for the hosts".to_string()
            } else {
                format!("at page {}", l.next_page + 1)
            };
            let excluded = if l.names_excluded > 0 {
                format!(" ({} excluded)", grouped(l.names_excluded))
            } else {
                String::new()
            };
            outln!(
                "listing    {}, {} names in {} batches{}; lister {}{}",
                state,
                grouped(l.names_published),
                grouped(l.batches_published),
                excluded,
                l.owner,
                if st.lister_stale && !l.finished {
                    " (lease run out: not running)"
                } else {
                    ""
                }
            );
        }
    }
    outln!(
        "batches    {} queued, {} in flight, {} redelivered",
        grouped(st.batches_queued),
        grouped(st.batches_in_flight),
        grouped(st.batches_redelivered)
    );
    outln!(
        "files      {} ok + {} failed, {}",
        grouped(st.files_ok),
        grouped(st.files_failed),
        human_bytes(st.bytes)
    );
    outln!("");
    outln!(
        "host                      state         ok  failed     bytes  in-fl redeliv restarts  age"
    );
    for h in &st.hosts {
        let r = &h.record;
        let state = match (r.exit_code, h.stale) {
            (Some(code), _) => format!("exit {code}"),
            (None, true) => "STALE".to_string(),
            (None, false) => r.state.clone(),
        };
        outln!(
            "{:<24} {:>8} {:>10} {:>7} {:>9} {:>6} {:>7} {:>8} {:>4}s",
            r.host,
            state,
            grouped(r.files_ok),
            grouped(r.files_failed),
            human_bytes(r.bytes),
            r.batches_in_flight,
            r.batches_redelivered,
            r.worker_restarts,
            h.age_ms / 1000
        );
    }
    if let Some(failed) = &st.failed {
        outln!("");
        outln!("failed     {}", grouped(failed.len() as u64));
        for f in failed {
            let failure = bulkget_protocol::Failure::new(&f.name, &f.reason, f.status);
            outln!(
                "  {} (host {})",
                bulkget_coordinator::failure_log::name_and_reason(&failure),
                f.host
            );
        }
    }
}
