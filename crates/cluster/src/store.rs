//! The job's streams, consumer and bucket on the NATS server.

use crate::job::{Job, ListerRecord, CONSUMER, LISTER_KEY};
use async_nats::jetstream::{self, consumer, kv, stream, Context};
use std::time::Duration;

/// How a job is created (by its lister; the settings then hold for good).
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    pub replicas: usize,
    pub dedup_window: Duration,
}

/// An open job: the JetStream context and the job's handles.
pub struct JobStore {
    pub js: Context,
    pub job: Job,
    pub batches: stream::Stream,
    pub failed: stream::Stream,
    pub consumer: consumer::PullConsumer,
    pub kv: kv::Store,
}

/// Connects to NATS. The client reconnects by itself after a lost
/// connection (a restarted server), by default for as long as the process
/// runs.
pub async fn connect(url: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", redact(url)))
}

/// `url` without a password or token, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        (None, Some(at)) => format!("…@{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// A JetStream context whose requests wait long enough for a server that
/// is restarting.
pub fn context(client: async_nats::Client) -> Context {
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(10));
    js
}

/// Creates the job's streams, consumer and bucket, or opens them if they
/// exist (their settings are then the ones they were created with).
pub async fn create(js: &Context, job: &Job, s: &JobSettings) -> Result<JobStore, String> {
    let batches = js
        .get_or_create_stream(stream::Config {
            name: job.stream(),
            subjects: vec![job.subject()],
            // Each message is deleted once acknowledged: the stream holds
            // exactly the unfinished batches.
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            duplicate_window: s.dedup_window,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create the stream {}: {e}", job.stream()))?;
    let failed = js
        .get_or_create_stream(stream::Config {
            name: job.failed_stream(),
            subjects: vec![job.failed_subject()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create the stream {}: {e}", job.failed_stream()))?;
    let consumer = batches
        .get_or_create_consumer(
            CONSUMER,
            consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: s.ack_wait,
                max_ack_pending: s.max_ack_pending,
                // Poison batches are handled by their delivery count (see
                // poison.rs); JetStream never drops one by itself.
                max_deliver: -1,
                num_replicas: s.replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("cannot create the consumer {CONSUMER}: {e}"))?;
    let kv = match js.get_key_value(job.bucket()).await {
        Ok(kv) => kv,
        Err(_) => {
            // The bucket's stream, made as the client's `create_key_value`
            // makes it. That call first reads the account's limits, whose
            // answer from nats-server 2.9 this client cannot parse; the
            // bucket itself works on 2.9.
            js.get_or_create_stream(stream::Config {
                name: format!("KV_{}", job.bucket()),
                subjects: vec![format!("$KV.{}.>", job.bucket())],
                max_messages_per_subject: 1,
                storage: stream::StorageType::File,
                num_replicas: s.replicas,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create the bucket {}: {e}", job.bucket()))?;
            js.get_key_value(job.bucket())
                .await
                .map_err(|e| format!("cannot open the bucket {}: {e}", job.bucket()))?
        }
    };
    Ok(JobStore {
        js: js.clone(),
        job: job.clone(),
        batches,
        failed,
        consumer,
        kv,
    })
}

/// Opens a job some lister created; `Ok(None)` if it does not exist (yet).
pub async fn open(js: &Context, job: &Job) -> Result<Option<JobStore>, String> {
    let batches = match js.get_stream(job.stream()).await {
        Ok(s) => s,
        // JetStream's own answer: no such stream (yet).
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(_)
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(format!("cannot open the stream {}: {e}", job.stream())),
    };
    let Ok(failed) = js.get_stream(job.failed_stream()).await else {
        return Ok(None);
    };
    let Ok(consumer) = batches.get_consumer(CONSUMER).await else {
        return Ok(None);
    };
    let Ok(kv) = js.get_key_value(job.bucket()).await else {
        return Ok(None);
    };
    Ok(Some(JobStore {
        js: js.clone(),
        job: job.clone(),
        batches,
        failed,
        consumer,
        kv,
    }))
}

impl JobStore {
    /// The lister's record and its revision, if there is one.
    pub async fn lister(&self) -> Result<Option<(ListerRecord, u64)>, String> {
        let entry = self
            .kv
            .entry(LISTER_KEY)
            .await
            .map_err(|e| format!("cannot read the job's lister record: {e}"))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let rec = serde_json::from_slice(&e.value)
                    .map_err(|e| format!("the job's lister record is unreadable: {e}"))?;
                Ok(Some((rec, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Batches not yet acknowledged: queued, or delivered and not yet
    /// acknowledged, as the consumer counts them. Not the stream's message
    /// count: a server killed with SIGKILL may come back with a few messages
    /// whose acknowledgement its consumer had recorded but whose removal
    /// from the work-queue stream was lost; they are done, and the consumer
    /// never delivers them again.
    pub async fn unfinished(&mut self) -> Result<u64, String> {
        let info = self
            .consumer
            .info()
            .await
            .map_err(|e| format!("cannot read the consumer {CONSUMER}: {e}"))?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    /// Names recorded as failed.
    pub async fn failed_count(&mut self) -> Result<u64, String> {
        let info = self
            .failed
            .info()
            .await
            .map_err(|e| format!("cannot read the stream {}: {e}", self.job.failed_stream()))?;
        Ok(info.state.messages)
    }
}
