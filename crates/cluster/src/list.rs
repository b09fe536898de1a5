//! `bulkget cluster list`: the one lister of a job.
//!
//! It lists with the single-host lister ([`bulkget_coordinator::lister`]),
//! cuts each page into batches, publishes them with message ids made of the
//! job, the page and the batch, waits for JetStream to confirm every one,
//! and only then advances its record in the job's bucket
//! ([`ListerRecord`]) with a compare-and-set. So the record's position is
//! never ahead of what the stream holds; a restarted lister lists again the
//! page it was on, and the stream's de-duplication drops the batches it had
//! already published.
//!
//! The record is also a lease: the lister renews it every quarter of
//! `--lease`; a second lister finds it fresh and is refused, and a lister
//! that finds it run out takes it over.

use crate::args::ListArgs;
use crate::job::{now_ms, BatchMsg, FailedRecord, Job, ListerRecord, LISTER_KEY};
use crate::store::{self, JobSettings, JobStore};
use bulkget_console::errln;
use bulkget_coordinator::exit;
use bulkget_coordinator::filter::NameFilter;
use bulkget_coordinator::lister::{ListError, ListerThread, ListerWait, Page};
use bulkget_coordinator::scheduler::ListPosition;
use bulkget_coordinator::{config, service};
use bulkget_http::Endpoint;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// The most a published batch's names may cost: each name's bytes six
/// times (the worst JSON escaping) plus its quotes and comma.
const MAX_BATCH_BYTES: usize = 512 << 10;

fn name_cost(name: &str) -> usize {
    6 * name.len() + 3
}

/// A page cut into batches: what [`cut`] makes of it.
#[derive(Debug, Default, PartialEq)]
pub struct Cut {
    pub batches: Vec<Vec<String>>,
    /// Unsafe names and why: they fail here and are never published as
    /// work.
    pub unsafe_names: Vec<(String, String)>,
    /// Names `--include` / `--exclude` left out: neither fetched nor
    /// failed, only counted, as in `bulkget fetch`.
    pub excluded: u64,
}

/// Cuts a page into batches of at most `batch_size` names and
/// [`MAX_BATCH_BYTES`]. As in `fetch`'s scheduler, the filter comes first
/// and the name check second, so an excluded name is never failed.
pub fn cut(page: &Page, batch_size: usize, filter: Option<&NameFilter>) -> Cut {
    let mut out = Cut::default();
    let mut open: Vec<String> = Vec::new();
    let mut cost = 0;
    for name in page.names.iter() {
        if filter.is_some_and(|f| !f.keeps(name)) {
            out.excluded += 1;
            continue;
        }
        if let Err(why) = bulkget_names::check(name) {
            out.unsafe_names.push((name.to_string(), why.to_string()));
            continue;
        }
        let c = name_cost(name);
        if !open.is_empty() && (open.len() == batch_size || cost + c > MAX_BATCH_BYTES) {
            out.batches.push(std::mem::take(&mut open));
            cost = 0;
        }
        open.push(name.to_string());
        cost += c;
    }
    if !open.is_empty() {
        out.batches.push(open);
    }
    out
}

/// Runs the lister and returns the exit code.
pub fn run(args: ListArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("bulkget cluster list: cannot start runtime: {e}");
            return exit::ERROR;
        }
    };
    runtime.block_on(async move {
        // The loop below answers a signal between two steps; a step that
        // waits on an unreachable NATS server may retry for minutes. So a
        // signal stops the lister within 10 s whatever it is doing.
        tokio::spawn(async {
            let mut int = signal(SignalKind::interrupt()).expect("signal handler");
            let mut term = signal(SignalKind::terminate()).expect("signal handler");
            let code = tokio::select! {
                _ = int.recv() => exit::INTERRUPTED,
                _ = term.recv() => exit::TERMINATED,
            };
            tokio::time::sleep(Duration::from_secs(10)).await;
            errln!("bulkget cluster list: still busy 10s after the signal (is NATS reachable?); stopping now");
            std::process::exit(code);
        });
        match list(args).await {
            Ok(code) => code,
            Err((code, msg)) => {
                errln!("bulkget cluster list: {msg}");
                code
            }
        }
    })
}

/// The lister's hold on the job's record.
struct Lease {
    owner: String,
    record: ListerRecord,
    revision: u64,
}

impl Lease {
    /// Writes the record with a compare-and-set on the revision last
    /// written. A write whose answer was lost (a server restarting) is
    /// recognised on the re-read: the record is still ours.
    async fn save(&mut self, store: &JobStore) -> Result<(), (i32, String)> {
        self.record.heartbeat_ms = now_ms();
        let body = serde_json::to_vec(&self.record).expect("a record serialises");
        let mut delay = Duration::from_millis(200);
        for _ in 0..30 {
            match store
                .kv
                .update(LISTER_KEY, body.clone().into(), self.revision)
                .await
            {
                Ok(rev) => {
                    self.revision = rev;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!("updating the lister record: {e}");
                    match store.lister().await {
                        Ok(Some((rec, _))) if rec.owner != self.owner => {
                            return Err((
                                exit::STATE_CONFLICT,
                                format!(
                                    "another lister ({}) took over job {}; stopping",
                                    rec.owner,
                                    store.job.name()
                                ),
                            ));
                        }
                        Ok(Some((rec, rev))) if rec == self.record => {
                            // Our write landed; only its answer was lost.
                            self.revision = rev;
                            return Ok(());
                        }
                        Ok(Some((_, rev))) => self.revision = rev,
                        _ => {}
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        Err((
            exit::ERROR,
            "cannot update the lister record in the job's bucket".into(),
        ))
    }
}

/// Takes the job's lease: creates the record for a new job, takes over one
/// whose lease has run out, refuses a live or finished one.
async fn take_lease(
    store: &JobStore,
    owner: &str,
    lease: Duration,
) -> Result<Lease, (i32, String)> {
    let job = store.job.name();
    let fresh = ListerRecord {
        owner: owner.to_string(),
        heartbeat_ms: now_ms(),
        lease_ms: lease.as_millis() as u64,
        next_page: 0,
        marker: None,
        names_published: 0,
        batches_published: 0,
        listing_done: false,
        listing_failed: None,
        finished: false,
        names_excluded: 0,
    };
    match store.lister().await.map_err(|e| (exit::ERROR, e))? {
        None => {
            let body = serde_json::to_vec(&fresh).expect("a record serialises");
            let revision = store
                .kv
                .create(LISTER_KEY, body.into())
                .await
                .map_err(|e| {
                    (
                        exit::STATE_CONFLICT,
                        format!("job {job} is being started by another lister ({e})"),
                    )
                })?;
            Ok(Lease {
                owner: owner.to_string(),
                record: fresh,
                revision,
            })
        }
        Some((rec, _)) if rec.finished => Err((
            exit::STATE_CONFLICT,
            format!(
                "job {job} is finished ({} names listed); a new run needs a new --job name",
                rec.names_published
            ),
        )),
        Some((rec, _)) if !rec.lease_expired(now_ms()) => {
            let age = now_ms().saturating_sub(rec.heartbeat_ms);
            Err((
                exit::STATE_CONFLICT,
                format!(
                    "job {job} is being listed by {} (lease renewed {:.1}s ago); one lister per job. \
                     A lister that died can be started again once its lease of {:.1}s has run out",
                    rec.owner,
                    age as f64 / 1000.0,
                    rec.lease_ms as f64 / 1000.0
                ),
            ))
        }
        Some((rec, revision)) => {
            let mut lease = Lease {
                owner: owner.to_string(),
                record: ListerRecord {
                    owner: owner.to_string(),
                    lease_ms: lease.as_millis() as u64,
                    ..rec
                },
                revision,
            };
            lease.save(store).await?;
            Ok(lease)
        }
    }
}

async fn list(args: ListArgs) -> Result<i32, (i32, String)> {
    let job = Job::parse(&args.job.job).map_err(|e| (exit::USAGE, e))?;
    let endpoint = Endpoint::parse(&args.url).map_err(|e| (exit::USAGE, e.to_string()))?;
    if args.batch_size == 0 || args.max_ack_pending < 1 || args.replicas == 0 {
        return Err((
            exit::USAGE,
            "--batch-size, --max-ack-pending and --replicas must be at least 1".into(),
        ));
    }
    config::check_service(&args.service)?;
    let filter = NameFilter::new(&args.filter).map_err(|e| (exit::USAGE, e))?;
    // The same connection, limits and retries as `bulkget fetch`'s lister.
    let connection = service::connection_setup(&args.service, &endpoint)?;
    // No glob, no filter: then nothing is tested per name.
    let filter = (!filter.is_empty()).then_some(filter);
    let client = store::connect(&args.job.nats)
        .await
        .map_err(|e| (exit::ERROR, e))?;
    let js = store::context(client);
    let settings = JobSettings {
        ack_wait: args.ack_wait,
        max_ack_pending: args.max_ack_pending,
        replicas: args.replicas,
        dedup_window: args.dedup_window,
    };
    let mut store = store::create(&js, &job, &settings)
        .await
        .map_err(|e| (exit::ERROR, e))?;
    let owner = format!(
        "{}:{}:{}",
        crate::job::hostname(),
        std::process::id(),
        now_ms()
    );
    let mut lease = take_lease(&store, &owner, args.lease).await?;
    let say = |msg: String| {
        if !args.quiet {
            errln!("bulkget cluster list: {msg}");
        }
    };
    if lease.record.next_page > 0 || lease.record.listing_done {
        say(format!(
            "resuming job {} at page {} ({} names published before)",
            job.name(),
            lease.record.next_page + 1,
            lease.record.names_published
        ));
    }

    let mut sigint = signal(SignalKind::interrupt()).expect("signal handler");
    let mut sigterm = signal(SignalKind::terminate()).expect("signal handler");
    // A quarter of the lease, so three renewals can be lost before it runs
    // out; at most a second, which is also how soon the end is noticed.
    let mut heartbeat = tokio::time::interval(
        (args.lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)),
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // The listing, unless it is done.
    let (page_tx, mut pages) = mpsc::channel::<Result<Page, ListError>>(1);
    let _lister = if lease.record.listing_done || lease.record.listing_failed.is_some() {
        None
    } else {
        let start = match &lease.record.marker {
            None => ListPosition::Start,
            Some(m) => ListPosition::Marker(m.clone()),
        };
        let config = service::lister_config(&args.service, connection.transport);
        Some(
            ListerThread::spawn(
                endpoint.clone(),
                start,
                config,
                page_tx,
                Arc::new(ListerWait::default()),
            )
            .map_err(|e| (exit::ERROR, format!("cannot start the lister: {e}")))?,
        )
    };

    let mut queued_check = tokio::time::Instant::now();
    loop {
        let listing = !lease.record.listing_done && lease.record.listing_failed.is_none();
        // Back-pressure: past --max-queued unfinished batches, wait for the
        // hosts (checked at most once a second).
        let mut room = true;
        if listing && queued_check.elapsed() >= Duration::from_secs(1) {
            queued_check = tokio::time::Instant::now();
            match store.unfinished().await {
                Ok(n) => room = n < args.max_queued,
                // JetStream away (a server restarting): list on; the
                // publishes wait for it anyway.
                Err(e) => tracing::warn!("{e}"),
            }
        }
        tokio::select! {
            page = pages.recv(), if listing && room => match page {
                Some(Ok(page)) => {
                    publish_page(&store, &mut lease, &page, args.batch_size, filter.as_ref()).await?;
                }
                Some(Err(e)) => {
                    say(format!("{e}; the batches already published are still fetched"));
                    lease.record.listing_failed = Some(e.to_string());
                    lease.save(&store).await?;
                }
                None => {
                    lease.record.listing_failed = Some("the lister stopped unexpectedly".into());
                    lease.save(&store).await?;
                }
            },
            _ = heartbeat.tick() => {
                lease.save(&store).await?;
                if !listing {
                    match store.unfinished().await {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
            }
            _ = sigint.recv() => return stop(&store, &mut lease, exit::INTERRUPTED, "SIGINT").await,
            _ = sigterm.recv() => return stop(&store, &mut lease, exit::TERMINATED, "SIGTERM").await,
        }
    }

    // Every batch is acknowledged: the job is finished.
    lease.record.finished = true;
    lease.save(&store).await?;
    // Messages a killed server failed to remove after their acks (see
    // `JobStore::unfinished`) would stay in the stream for good.
    if let Err(e) = store.batches.purge().await {
        tracing::warn!("purging the finished job's stream: {e}");
    }
    let failed = store.failed_count().await.map_err(|e| (exit::ERROR, e))?;
    say(format!(
        "job {} finished: {} names in {} batches; {failed} failed",
        job.name(),
        lease.record.names_published,
        lease.record.batches_published
    ));
    Ok(if let Some(why) = &lease.record.listing_failed {
        say(format!("the listing failed: {why}"));
        exit::LISTING_FAILED
    } else if failed > 0 {
        exit::FILES_FAILED
    } else {
        exit::OK
    })
}

/// A signal: the lease is given up at once (its heartbeat set to zero), so
/// a lister started next takes over without waiting for it to run out.
async fn stop(
    store: &JobStore,
    lease: &mut Lease,
    code: i32,
    name: &str,
) -> Result<i32, (i32, String)> {
    // A signal must stop the lister even with NATS unreachable, so giving
    // the lease up is tried for a few seconds only; if it fails, the lease
    // simply runs out.
    let release = async {
        lease.record.heartbeat_ms = 0;
        let body = serde_json::to_vec(&lease.record).expect("a record serialises");
        store
            .kv
            .update(LISTER_KEY, body.into(), lease.revision)
            .await
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(5), release).await,
        Ok(Ok(_))
    ) {
        errln!("bulkget cluster list: {name}: could not give the lease up; it runs out by itself");
    }
    errln!("bulkget cluster list: {name}: stopped; start the lister again to go on");
    Ok(code)
}

/// Publishes a page's batches and its unsafe names, waits for every
/// confirmation, then moves the record past the page. A failed publish is
/// retried whole: the message ids make the repeats harmless.
async fn publish_page(
    store: &JobStore,
    lease: &mut Lease,
    page: &Page,
    batch_size: usize,
    filter: Option<&NameFilter>,
) -> Result<(), (i32, String)> {
    let page_no = lease.record.next_page;
    let Cut {
        batches,
        unsafe_names,
        excluded,
    } = cut(page, batch_size, filter);
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match publish_all(store, page_no, &batches, &unsafe_names).await {
            Ok(()) => break,
            Err(e) if attempt < 60 => {
                tracing::warn!("publishing page {}: {e}; retrying", page_no + 1);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                // Keep the lease while JetStream is away.
                if lease
                    .record
                    .lease_expired(now_ms() + lease.record.lease_ms / 2)
                {
                    lease.save(store).await?;
                }
            }
            Err(e) => {
                return Err((
                    exit::ERROR,
                    format!("cannot publish page {}: {e}", page_no + 1),
                ))
            }
        }
    }
    lease.record.next_page += 1;
    lease.record.marker = page.next.clone();
    lease.record.names_published += page.names.len() as u64 - excluded;
    lease.record.names_excluded += excluded;
    lease.record.batches_published += batches.len() as u64;
    lease.record.listing_done = page.next.is_none();
    lease.save(store).await
}

async fn publish_all(
    store: &JobStore,
    page_no: u64,
    batches: &[Vec<String>],
    unsafe_names: &[(String, String)],
) -> Result<(), String> {
    let job = &store.job;
    let mut acks = Vec::with_capacity(batches.len() + unsafe_names.len());
    for (k, names) in batches.iter().enumerate() {
        let msg = BatchMsg {
            page: page_no,
            batch: k as u32,
            names: names.clone(),
        };
        let payload = serde_json::to_vec(&msg).expect("a batch serialises");
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .message_id(job.batch_id(page_no, k as u32))
            .payload(payload.into());
        acks.push(
            store
                .js
                .send_publish(job.subject(), publish)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    for (k, (name, reason)) in unsafe_names.iter().enumerate() {
        let rec = FailedRecord {
            name: name.clone(),
            reason: reason.clone(),
            status: None,
            host: "lister".into(),
        };
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .message_id(format!("{}.p{page_no}.unsafe{k}", job.name()))
            .payload(
                serde_json::to_vec(&rec)
                    .expect("a record serialises")
                    .into(),
            );
        acks.push(
            store
                .js
                .send_publish(job.failed_subject(), publish)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    for ack in acks {
        ack.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkget_protocol::Names;

    fn page(names: &[&str]) -> Page {
        let mut n = Names::new();
        for name in names {
            n.push(name);
        }
        Page {
            names: n,
            next: None,
        }
    }

    #[test]
    fn pages_are_cut_by_count_and_unsafe_names_set_apart() {
        let c = cut(&page(&["a", "b", "../x", "c", "d", "e"]), 2, None);
        assert_eq!(c.batches, vec![vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
        assert_eq!(c.unsafe_names.len(), 1);
        assert_eq!(c.unsafe_names[0].0, "../x");
        assert_eq!(c.excluded, 0);
    }

    #[test]
    fn excluded_names_are_counted_and_never_failed() {
        let filter = NameFilter::new(&bulkget_coordinator::args::FilterArgs {
            include: vec!["*.jpg".into()],
            exclude: vec!["skip/*".into()],
        })
        .unwrap();
        let names = ["a.jpg", "b.txt", "skip/c.jpg", "../d.txt", "e.jpg"];
        let c = cut(&page(&names), 10, Some(&filter));
        assert_eq!(c.batches, vec![vec!["a.jpg", "e.jpg"]]);
        // The unsafe name is excluded first, so it is not a failure.
        assert!(c.unsafe_names.is_empty());
        assert_eq!(c.excluded, 3);
    }

    #[test]
    fn pages_are_cut_by_size() {
        let long = "x".repeat(200);
        let names: Vec<&str> = (0..1000).map(|_| long.as_str()).collect();
        let c = cut(&page(&names), 1000, None);
        assert!(c.batches.len() > 1);
        for b in &c.batches {
            let bytes = serde_json::to_vec(b).unwrap().len();
            assert!(bytes <= MAX_BATCH_BYTES, "{bytes}");
        }
    }
}
