//! The fetch engine: a queue of names and the connection tasks that drain it.

use crate::governor::{Governor, Outcome};
use crate::stats_file::Counters;
use bulkget_console::MESSAGES;
use bulkget_http::{
    Backoff, Conn, Endpoint, FetchError, Jitter, Limits, PipeConn, PipelineFault, Proto, Response,
    Transport,
};
use bulkget_protocol::{BatchId, Failure, FatalKind, HttpVersion, ToCoordinator, WorkerSettings};
use bulkget_sink::{PutError, Sink};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::Notify;

/// One batch while the worker holds it.
pub struct BatchState {
    pub id: BatchId,
    /// The names, immutable once received; work items index into them, so a
    /// name is never copied on its way to the connection task.
    pub names: Vec<String>,
    remaining: Cell<u32>,
    ok: Cell<u32>,
    /// Names a refresh found already in the sink, not fetched.
    present: Cell<u32>,
    bytes: Cell<u64>,
    /// Attempts of this batch's names that were retried.
    retries: Cell<u32>,
    failures: RefCell<Vec<Failure>>,
    /// Positions of the names now waiting on a retry timer.
    sleeping: RefCell<Vec<u32>>,
    /// A stall report was made; it is made at most once per batch.
    stalled: Cell<bool>,
}

impl BatchState {
    pub fn ok(&self) -> u32 {
        self.ok.get()
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }
    pub fn present(&self) -> u32 {
        self.present.get()
    }
    pub fn retries(&self) -> u32 {
        self.retries.get()
    }
    pub fn take_failures(&self) -> Vec<Failure> {
        self.failures.take()
    }
}

/// One name to fetch: a batch and an index into it.
struct Item {
    batch: Rc<BatchState>,
    idx: u32,
    /// Attempts made so far for this name.
    attempt: u32,
    /// Times the server said it did not process this name's request
    /// (HTTP/2 `GOAWAY` or `REFUSED_STREAM`). Those resends cost no
    /// attempt, up to [`MAX_NOT_PROCESSED`].
    not_processed: u32,
}

/// Request tasks that share one HTTP/2 connection, as concurrent streams.
/// Servers commonly allow 100 or more (nginx 128, the test server's hyper
/// 200); hyper queues any beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS
/// until one frees up. With the default 256 tasks that is two connections
/// per worker: against 8 of 32 streams, 1, 2 and 4 connections measured
/// 0.92, 0.91 and 0.99 × the CPU per file over h2c and 1.03, 0.94 and
/// 0.96 × over TLS, at the same files/s; 128 is also the most nginx allows
/// by default, so no stream waits in hyper's queue there.
pub const H2_STREAMS_PER_CONNECTION: u32 = 128;

/// The service latency floor above which pipelined requests are spread
/// over more connections instead of queued deeper on few (see
/// [`Engine::connection_depth`]).
const SPREAD_ABOVE: Duration = Duration::from_millis(1);

/// Resends of one name that the server did not process, before such a
/// refusal counts as a failed attempt: a server that refuses everything
/// must still end in a failure, not a loop.
const MAX_NOT_PROCESSED: u32 = 16;

/// One HTTP/2 connection that up to [`H2_STREAMS_PER_CONNECTION`] request
/// tasks share. The first task to need it connects; the others wait for that
/// and take a handle ([`Conn::share`]) on the result.
#[derive(Default)]
struct Shared {
    /// The connection and its generation, which tells a task whose handle
    /// broke whether the slot still holds the connection it broke on.
    current: RefCell<Option<(u64, Conn)>>,
    generations: Cell<u64>,
    /// A task is connecting; the others wait on `connected`.
    connecting: Cell<bool>,
    connected: Notify,
    /// The server answered with HTTP/1.1 (ALPN did not choose h2), so each
    /// task of this slot connects on its own from now on.
    http1: Cell<bool>,
}

/// A request task's connection: its own, or its handle on a shared one
/// with the generation it came from.
struct Held {
    conn: Conn,
    generation: Option<u64>,
}

/// State shared by every task of the worker. Single-threaded: `Cell` and
/// `RefCell` only, borrowed briefly and never across an `.await`.
pub struct Engine {
    settings: WorkerSettings,
    /// The shared HTTP/2 connections, one per
    /// [`H2_STREAMS_PER_CONNECTION`] request tasks. Unused over HTTP/1.1.
    shared: Vec<Shared>,
    endpoint: Endpoint,
    /// How connections are made; one per process, shared by every
    /// connection task (and so one TLS session cache).
    transport: Transport,
    limits: Limits,
    backoff: Backoff,
    queue: RefCell<VecDeque<Item>>,
    work_ready: Notify,
    sink: RefCell<Box<dyn Sink>>,
    /// Batches whose every name is done, waiting for the committer.
    completed: RefCell<Vec<Rc<BatchState>>>,
    pub completed_ready: Notify,
    /// Stall reports (`ToCoordinator::BatchStalled`) waiting for the
    /// committer, which sends them after the commit that makes the names
    /// they count durable. Taken at the moment of the stall, so the counts
    /// and `waiting` agree however late the committer runs.
    stalls: RefCell<Vec<ToCoordinator>>,
    /// Batches received and not yet acknowledged.
    outstanding: Cell<usize>,
    /// Set when the coordinator asked for a drain: connection tasks exit
    /// once the queue is empty and nothing waits on a retry timer.
    draining: Cell<bool>,
    /// Names waiting on a retry timer, which the drain must wait for.
    retrying: Cell<usize>,
    fatal: RefCell<Option<(FatalKind, String)>>,
    pub fatal_ready: Notify,
    /// Woken after each acknowledgement, so a drain can see when it is done.
    pub drain_progress: Notify,
    jitter: RefCell<Jitter>,
    /// Requests each pipelined connection keeps in flight: `--pipeline`,
    /// until a server shows it mishandles pipelining; then 1 for the rest of
    /// this process (see [`Engine::fall_back`]).
    depth: Cell<u32>,
    /// The pipelined answers' latency, smoothed (a sixteenth of each new
    /// one), for the hold before the thread parks ([`crate::park`]).
    pipelined_latency: Cell<Duration>,
    /// The in-flight limit and the pacing every request goes through.
    pub governor: Governor,
    pub counters: Counters,
}

/// Whether a connection task goes on after a response was handled.
enum Next {
    Continue,
    /// The sink failed fatally; the worker is about to exit.
    Stop,
}

impl Engine {
    pub fn new(
        settings: WorkerSettings,
        endpoint: Endpoint,
        transport: Transport,
        sink: Box<dyn Sink>,
    ) -> Rc<Engine> {
        let limits = Limits {
            first_byte: Duration::from_millis(settings.first_byte_timeout_ms),
            idle: Duration::from_millis(settings.idle_timeout_ms),
            max_body: settings.max_file_size,
            max_redirects: settings.max_redirects,
            deadline: Duration::from_millis(settings.request_timeout_ms),
        };
        let backoff = Backoff {
            base: Duration::from_millis(settings.backoff_base_ms),
            max: Duration::from_millis(settings.backoff_max_ms),
        };
        let counters = Counters::default();
        let depth = settings.pipeline.max(1);
        counters.pipeline_depth.set(depth);
        let tasks = settings.connections.max(1);
        let shared = (0..tasks.div_ceil(H2_STREAMS_PER_CONNECTION))
            .map(|_| Shared::default())
            .collect();
        let pipelined = settings.pipeline > 1
            && transport.tls.is_none()
            && settings.http_version != HttpVersion::Http2;
        // The most requests the tasks can keep in flight: the bound of the
        // adaptive limit.
        let max_in_flight = if pipelined {
            tasks.saturating_mul(depth)
        } else {
            tasks
        };
        let governor = Governor::new(settings.adaptive, max_in_flight);
        Rc::new(Engine {
            settings,
            shared,
            endpoint,
            transport,
            limits,
            backoff,
            queue: RefCell::new(VecDeque::new()),
            work_ready: Notify::new(),
            sink: RefCell::new(sink),
            completed: RefCell::new(Vec::new()),
            completed_ready: Notify::new(),
            stalls: RefCell::new(Vec::new()),
            outstanding: Cell::new(0),
            draining: Cell::new(false),
            retrying: Cell::new(0),
            fatal: RefCell::new(None),
            fatal_ready: Notify::new(),
            drain_progress: Notify::new(),
            jitter: RefCell::new(Jitter::from_entropy()),
            depth: Cell::new(depth),
            pipelined_latency: Cell::new(Duration::ZERO),
            governor,
            counters,
        })
    }

    /// Whether connection tasks pipeline: `--pipeline` above 1 on plain
    /// HTTP/1.1. Over TLS the connection may turn out to be HTTP/2 (and its
    /// streams already keep many requests in flight), so `Conn` serves it.
    fn pipelined(&self) -> bool {
        self.settings.pipeline > 1 && self.transport.tls.is_none() && self.proto() == Proto::Http1
    }

    /// Starts the connection tasks on the current `LocalSet`: hyper
    /// connections one request at a time (or HTTP/2 streams), or, when
    /// [`Engine::pipelined`], pipelined ones.
    pub fn start(self: &Rc<Self>) {
        for task in 0..self.settings.connections.max(1) {
            let engine = self.clone();
            if self.pipelined() {
                tokio::task::spawn_local(async move { engine.pipelined_task().await });
            } else {
                let slot = (task / H2_STREAMS_PER_CONNECTION) as usize;
                tokio::task::spawn_local(async move { engine.connection_task(slot).await });
            }
        }
    }

    /// Queues a batch received from the coordinator. An empty batch is
    /// complete at once, and so is a refresh's batch whose every name is in
    /// the sink already.
    pub fn add_batch(&self, id: BatchId, names: Vec<String>) {
        let n = names.len() as u32;
        let batch = Rc::new(BatchState {
            id,
            names,
            remaining: Cell::new(n),
            ok: Cell::new(0),
            present: Cell::new(0),
            bytes: Cell::new(0),
            retries: Cell::new(0),
            failures: RefCell::new(Vec::new()),
            sleeping: RefCell::new(Vec::new()),
            stalled: Cell::new(false),
        });
        self.outstanding.set(self.outstanding.get() + 1);
        if n == 0 {
            self.complete(batch);
            return;
        }
        let mut queue = self.queue.borrow_mut();
        for idx in 0..n {
            if self.settings.refresh && self.in_sink(&batch.names[idx as usize]) {
                let c = &self.counters;
                c.files_present.set(c.files_present.get() + 1);
                batch.present.set(batch.present.get() + 1);
                batch.remaining.set(batch.remaining.get() - 1);
                continue;
            }
            queue.push_back(Item {
                batch: batch.clone(),
                idx,
                attempt: 0,
                not_processed: 0,
            });
        }
        drop(queue);
        if batch.remaining.get() == 0 {
            self.complete(batch);
            return;
        }
        self.work_ready.notify_waiters();
    }

    /// Whether a refresh finds `name` in the sink already, so it is not
    /// fetched. Asked here, as the batch arrives, rather than of a list of
    /// the sink's names: one lookup per name, nothing held in memory. A
    /// lookup that fails is no answer: the name is fetched, and storing it
    /// reports whatever is wrong with the sink as a fetch always does.
    fn in_sink(&self, name: &str) -> bool {
        match self.sink.borrow_mut().contains(name) {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!("cannot tell whether the sink has a file: {e}");
                false
            }
        }
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.get()
    }

    /// Called by the committer after a batch was acknowledged.
    pub fn acknowledged(&self) {
        self.outstanding.set(self.outstanding.get() - 1);
        self.counters
            .batches_done
            .set(self.counters.batches_done.get() + 1);
        self.drain_progress.notify_waiters();
    }

    pub fn start_drain(&self) {
        self.draining.set(true);
        self.work_ready.notify_waiters();
        self.drain_progress.notify_waiters();
    }

    /// A drain was requested and every batch received is acknowledged.
    pub fn is_drained(&self) -> bool {
        self.draining.get() && self.outstanding.get() == 0
    }

    /// The batches completed since the last call.
    pub fn take_completed(&self) -> Vec<Rc<BatchState>> {
        self.completed.take()
    }

    /// The stall reports made since the last call. They must be sent
    /// before the `BatchDone`s taken with them: a batch may stall and then
    /// complete before the committer runs.
    pub fn take_stall_reports(&self) -> Vec<ToCoordinator> {
        self.stalls.take()
    }

    /// Commits the sink so every completed batch is durable.
    pub fn commit(&self) -> Result<(), PutError> {
        self.sink.borrow_mut().commit()
    }

    /// Closes the sink (anything not committed is rolled back) and puts a
    /// null sink in its place. Called before the worker closes its socket:
    /// the coordinator kills a worker whose socket has closed, and a SQLite
    /// database closed cleanly folds its write-ahead log back into the
    /// database file and removes it, so a finished run is one file per shard.
    pub fn close_sink(&self) {
        let sink = self.sink.replace(Box::new(bulkget_sink::NullSink::new()));
        drop(sink);
    }

    pub fn take_fatal(&self) -> Option<(FatalKind, String)> {
        self.fatal.borrow_mut().take()
    }

    pub fn set_fatal(&self, kind: FatalKind, reason: String) {
        let mut f = self.fatal.borrow_mut();
        if f.is_none() {
            *f = Some((kind, reason));
            self.fatal_ready.notify_one();
        }
    }

    /// The next name to fetch, or `None` when draining and nothing is left.
    async fn next_item(&self) -> Option<Item> {
        loop {
            // Created before the check so a batch that arrives in between
            // cannot be missed (notify_waiters wakes futures created before
            // it is called).
            let ready = self.work_ready.notified();
            if let Some(item) = self.queue.borrow_mut().pop_front() {
                return Some(item);
            }
            if self.draining.get() && self.retrying.get() == 0 {
                return None;
            }
            ready.await;
        }
    }

    /// The protocol a new connection speaks. `auto` is HTTP/1.1 on
    /// `http://`; over TLS the transport's ALPN result decides instead
    /// (passed to [`Conn::handshake`]), and a connection that turns out to
    /// be HTTP/2 is shared by [`Engine::connection`] all the same.
    fn proto(&self) -> Proto {
        match self.settings.http_version {
            HttpVersion::Http2 => Proto::Http2,
            HttpVersion::Http1 | HttpVersion::Auto => Proto::Http1,
        }
    }

    /// Whether a new connection may turn out to speak HTTP/2, so request
    /// tasks go through their slot to share it. Over TLS with `auto` this is
    /// also true (ALPN offers `h2` and the server decides); a slot whose
    /// server chose HTTP/1.1 stops sharing at its first connection.
    fn may_be_http2(&self) -> bool {
        self.proto() == Proto::Http2
            || (self.transport.tls.is_some() && self.settings.http_version.allows_http2())
    }

    /// Opens a new connection and counts it.
    async fn open(&self) -> Result<Conn, FetchError> {
        let conn = Conn::connect_with(&self.endpoint, &self.transport, self.proto()).await?;
        let c = &self.counters;
        c.connections_opened.set(c.connections_opened.get() + 1);
        c.open_connections.set(c.open_connections.get() + 1);
        Ok(conn)
    }

    fn closed(&self) {
        let c = &self.counters;
        c.open_connections.set(c.open_connections.get() - 1);
    }

    /// A usable connection for a request task of `slot`, replacing `old`.
    ///
    /// Over HTTP/1.1 the task opens its own. Over HTTP/2 it takes a handle
    /// on the slot's shared connection; if the old handle came from the
    /// connection the slot still holds and broke (a timeout, a transport
    /// error, a `GOAWAY`), that connection is replaced, once, whichever of
    /// its tasks notices first.
    async fn connection(&self, slot: usize, old: Option<Held>) -> Result<Held, FetchError> {
        let shared = &self.shared[slot];
        let stale = match old {
            Some(Held {
                generation: None, ..
            }) => {
                self.closed();
                None
            }
            Some(Held { generation, .. }) => generation,
            None => None,
        };
        if shared.http1.get() || !self.may_be_http2() {
            // Known to be HTTP/1.1: no sharing, and no waiting on the slot.
            let conn = self.open().await?;
            if conn.proto() == Proto::Http1 {
                shared.http1.set(true);
                return Ok(Held {
                    conn,
                    generation: None,
                });
            }
            return Ok(self.install(shared, conn));
        }
        loop {
            {
                let mut current = shared.current.borrow_mut();
                if let Some((generation, conn)) = current.as_ref() {
                    if conn.is_usable() && Some(*generation) != stale {
                        let handle = conn.share().expect("only HTTP/2 is shared");
                        return Ok(Held {
                            conn: handle,
                            generation: Some(*generation),
                        });
                    }
                    if !shared.connecting.get() {
                        current.take();
                        drop(current);
                        self.closed();
                    }
                }
            }
            if shared.connecting.get() {
                // Created after the check with no await in between, so the
                // connecting task cannot finish unseen.
                shared.connected.notified().await;
                continue;
            }
            shared.connecting.set(true);
            let result = self.open().await;
            shared.connecting.set(false);
            shared.connected.notify_waiters();
            let conn = result?;
            if conn.proto() == Proto::Http1 {
                shared.http1.set(true);
                return Ok(Held {
                    conn,
                    generation: None,
                });
            }
            return Ok(self.install(shared, conn));
        }
    }

    /// Makes `conn` the slot's shared connection and returns a handle on it.
    fn install(&self, shared: &Shared, conn: Conn) -> Held {
        let generation = shared.generations.get() + 1;
        shared.generations.set(generation);
        let handle = conn.share().expect("only HTTP/2 is shared");
        if shared.current.replace(Some((generation, conn))).is_some() {
            self.closed();
        }
        Held {
            conn: handle,
            generation: Some(generation),
        }
    }

    /// Requests a pipelined connection keeps in flight now.
    ///
    /// A server answers a connection's pipelined requests one after another
    /// (nginx and hyper both do), so against a service whose answers take
    /// milliseconds, depth only makes requests wait behind each other: the
    /// in-flight limit is spread over the connections before any is
    /// pipelined deeper. Against one that answers in well under
    /// [`SPREAD_ABOVE`] (loopback, the same rack), the client's CPU is
    /// the bottleneck and deep pipelines on few connections cost the least
    /// per request, so connections fill to `--pipeline` first.
    fn connection_depth(&self) -> u32 {
        let depth = self.depth.get();
        if !self.settings.adaptive
            || self
                .governor
                .latency_floor()
                .is_none_or(|floor| floor < SPREAD_ABOVE)
        {
            return depth;
        }
        self.governor
            .limit()
            .div_ceil(self.settings.connections.max(1))
            .clamp(1, depth)
    }

    /// The next name if one is queued now, without waiting.
    fn try_next_item(&self) -> Option<Item> {
        self.queue.borrow_mut().pop_front()
    }

    /// Folds a pipelined answer's latency into the smoothed one, and
    /// updates the hold before the thread parks.
    fn note_pipelined_latency(&self, latency: Duration) {
        let old = self.pipelined_latency.get();
        let smoothed = if latency > old {
            old + (latency - old) / 16
        } else {
            old - (old - latency) / 16
        };
        self.pipelined_latency.set(smoothed);
        self.update_hold();
    }

    /// Sets the hold before the thread parks from the requests in flight
    /// now and the smoothed latency: called wherever pipelined requests
    /// leave flight.
    fn update_hold(&self) {
        crate::park::set_hold(crate::park::hold_for(
            self.counters.in_flight.get(),
            self.pipelined_latency.get(),
        ));
    }

    /// Opens a pipelined connection and counts it.
    async fn open_pipelined(&self) -> Result<PipeConn, FetchError> {
        let conn = PipeConn::connect(&self.endpoint, &self.transport).await?;
        let c = &self.counters;
        c.connections_opened.set(c.connections_opened.get() + 1);
        c.open_connections.set(c.open_connections.get() + 1);
        Ok(conn)
    }

    /// `/get/NAME` under the endpoint's prefix, percent-encoded, into `path`.
    fn file_path(&self, item: &Item, path: &mut String) {
        path.clear();
        path.push_str(&self.endpoint.prefix);
        path.push_str("/get/");
        bulkget_names::push_url_encoded(path, &item.batch.names[item.idx as usize]);
    }

    /// What every connection task does with a finished request: count it,
    /// put a success into the sink, retry or fail an error.
    fn handled(
        self: &Rc<Self>,
        item: Item,
        result: Result<Response, FetchError>,
        body: &[u8],
    ) -> Next {
        let c = &self.counters;
        match result {
            Ok(response) => {
                c.status.borrow_mut().record(response.status);
                let name = &item.batch.names[item.idx as usize];
                if response.test_abort && crate::test_hooks(&self.settings).abort_on_header {
                    tracing::error!(target: MESSAGES, "bulkget worker: test hook: aborting on {name:?}");
                    std::process::abort();
                }
                let put = self.sink.borrow_mut().put(name, body);
                match put {
                    Ok(()) => self.succeed(item, body.len() as u64),
                    Err(PutError::File(why)) => self.fail(item, why, None),
                    Err(PutError::NoSpace(why)) => {
                        self.set_fatal(FatalKind::NoSpace, why);
                        return Next::Stop;
                    }
                    Err(PutError::Fatal(why)) => {
                        self.set_fatal(FatalKind::Crash, why);
                        return Next::Stop;
                    }
                }
            }
            Err(e) => {
                match e.status() {
                    Some(code) => c.status.borrow_mut().record(code),
                    None => c.status.borrow_mut().record_error(),
                }
                self.retry_or_fail(item, e);
            }
        }
        Next::Continue
    }

    /// A server mishandled pipelining: every pipelined connection of this
    /// worker keeps one request in flight from now on. Said once, when the
    /// depth drops.
    fn fall_back(&self, fault: &PipelineFault) {
        if self.depth.replace(1) > 1 {
            self.counters.pipeline_depth.set(1);
            tracing::warn!(
                %fault,
                "the server does not pipeline correctly; this worker sends one request \
                 per connection at a time from now on"
            );
        }
    }

    /// One pipelined connection at a time: keeps up to the engine's depth of
    /// requests in flight on it, reads the answers in order, and when the
    /// connection ends sends the requests it did not answer again (first in
    /// the queue, no attempt counted: GETs are idempotent, and the server
    /// may never have seen them).
    async fn pipelined_task(self: Rc<Self>) {
        let mut conn: Option<PipeConn> = None;
        let mut path = String::with_capacity(256);
        let mut body = Vec::with_capacity(4096);
        let mut connect_failures: u32 = 0;
        // The items in flight on `conn`, by the token they were pushed with
        // (an index here), and the free indices.
        let mut slots: Vec<Option<Item>> = Vec::new();
        let mut free: Vec<u32> = Vec::new();
        let mut unanswered: Vec<u32> = Vec::new();
        // The permit of the request answered last, kept for the next one
        // this connection sends.
        let mut spare = false;
        let c = &self.counters;
        loop {
            // Fill the pipeline: wait for work only when nothing is in
            // flight, otherwise take what is queued now.
            loop {
                let in_flight = conn.as_ref().map_or(0, PipeConn::in_flight);
                if in_flight >= self.connection_depth() as usize {
                    break;
                }
                // A permit first, so no more names than the in-flight
                // limit are ever held by tasks.
                let item = if in_flight == 0 {
                    if !std::mem::take(&mut spare) {
                        self.governor.acquire().await;
                    }
                    match self.next_item().await {
                        Some(item) => item,
                        None => {
                            self.governor.release();
                            if conn.is_some() {
                                self.closed();
                            }
                            return;
                        }
                    }
                } else {
                    if !(std::mem::take(&mut spare) || self.governor.try_acquire()) {
                        break;
                    }
                    match self.try_next_item() {
                        Some(item) => item,
                        None => {
                            self.governor.release();
                            break;
                        }
                    }
                };
                if let Err(why) = bulkget_names::check(&item.batch.names[item.idx as usize]) {
                    self.governor.release();
                    self.fail(item, why.to_string(), None);
                    continue;
                }
                // A connection that ended gave its requests back below, so
                // a new one is opened only with nothing in flight.
                if conn.as_ref().is_none_or(|c| !c.is_usable()) {
                    if conn.take().is_some() {
                        self.closed();
                    }
                    match self.open_pipelined().await {
                        Ok(new) => {
                            connect_failures = 0;
                            conn = Some(new);
                        }
                        Err(e) => {
                            self.connect_failed(item, e, &mut connect_failures).await;
                            continue;
                        }
                    }
                }
                // The rate: with nothing in flight, wait for this request's
                // slot; otherwise send only if a slot is free now, and read
                // answers instead of waiting with requests outstanding.
                if in_flight == 0 {
                    self.governor.pace().await;
                } else if !self.governor.try_pace() {
                    self.governor.release();
                    self.queue.borrow_mut().push_front(item);
                    self.work_ready.notify_waiters();
                    break;
                }
                self.file_path(&item, &mut path);
                let token = free.pop().unwrap_or_else(|| {
                    slots.push(None);
                    slots.len() as u32 - 1
                });
                match conn.as_mut().expect("connected above").push(token, &path) {
                    Ok(()) => {
                        slots[token as usize] = Some(item);
                        c.in_flight.set(c.in_flight.get() + 1);
                    }
                    Err(e) => {
                        free.push(token);
                        self.governor.answered(Outcome::Silent);
                        if let Next::Stop = self.handled(item, Err(e), &[]) {
                            return;
                        }
                    }
                }
            }
            if std::mem::take(&mut spare) {
                self.governor.release();
            }
            let Some(live) = conn.as_mut() else {
                continue;
            };
            if live.in_flight() == 0 {
                continue;
            }
            if let Some(answer) = live.next(&self.endpoint, &self.limits, &mut body).await {
                let item = slots[answer.token as usize]
                    .take()
                    .expect("an answer is for a request in flight");
                free.push(answer.token);
                c.in_flight.set(c.in_flight.get() - 1);
                c.latency
                    .borrow_mut()
                    .record(answer.latency.as_micros() as u64);
                self.note_pipelined_latency(answer.latency);
                self.governor
                    .judge_at(outcome(&answer.result, answer.latency), answer.at);
                spare = true;
                if let Next::Stop = self.handled(item, answer.result, &body) {
                    return;
                }
            }
            if !live.is_usable() {
                live.take_unanswered(|token| unanswered.push(token));
                // Oldest first at the front of the queue, in their order.
                let mut queue = self.queue.borrow_mut();
                for token in unanswered.drain(..).rev() {
                    let item = slots[token as usize]
                        .take()
                        .expect("an unanswered request is in flight");
                    free.push(token);
                    c.in_flight.set(c.in_flight.get() - 1);
                    c.pipeline_retries.set(c.pipeline_retries.get() + 1);
                    self.governor.release();
                    queue.push_front(item);
                }
                drop(queue);
                self.work_ready.notify_waiters();
                self.update_hold();
                if let Some(fault) = live.fault() {
                    self.fall_back(fault);
                }
                conn = None;
                self.closed();
            }
        }
    }

    async fn connection_task(self: Rc<Self>, slot: usize) {
        let mut conn: Option<Held> = None;
        let mut path = String::with_capacity(256);
        let mut body = Vec::with_capacity(4096);
        let mut connect_failures: u32 = 0;
        let c = &self.counters;
        loop {
            // A permit first, so no more names than the in-flight limit are
            // ever held by tasks, and a task connects only once it may send.
            self.governor.acquire().await;
            let Some(item) = self.next_item().await else {
                self.governor.release();
                break;
            };
            if let Err(why) = bulkget_names::check(&item.batch.names[item.idx as usize]) {
                // The coordinator filters unsafe names; this is the second
                // line of defence, and the sink's RESOLVE_BENEATH the third.
                self.governor.release();
                self.fail(item, why.to_string(), None);
                continue;
            }
            if conn.as_ref().is_none_or(|h| !h.conn.is_usable()) {
                match self.connection(slot, conn.take()).await {
                    Ok(new) => {
                        connect_failures = 0;
                        conn = Some(new);
                    }
                    Err(e) => {
                        self.connect_failed(item, e, &mut connect_failures).await;
                        continue;
                    }
                }
            }
            self.governor.pace().await;
            let live = &mut conn.as_mut().expect("connected above").conn;
            self.file_path(&item, &mut path);

            c.in_flight.set(c.in_flight.get() + 1);
            let result = live
                .get(&self.endpoint, &path, &self.limits, &mut body)
                .await;
            c.in_flight.set(c.in_flight.get() - 1);
            // `Conn::get` times itself from the same clock reading its
            // first-byte deadline counts from, whatever the outcome, so the
            // engine reads no clock of its own per file.
            c.latency
                .borrow_mut()
                .record(live.last_latency().as_micros() as u64);
            self.governor
                .answered(outcome(&result, live.last_latency()));

            if let Next::Stop = self.handled(item, result, &body) {
                return;
            }
        }
        if let Some(Held {
            generation: None, ..
        }) = conn
        {
            self.closed();
        }
    }

    /// A connection for `item` could not be made: the item is retried or
    /// failed, its permit is given back, and the task backs off its
    /// connection slot too, so a server that refuses connections is not
    /// hammered in a hot loop. `failures` counts the slot's failures in a
    /// row (the caller resets it on success).
    async fn connect_failed(self: &Rc<Self>, item: Item, e: FetchError, failures: &mut u32) {
        *failures += 1;
        self.counters.status.borrow_mut().record_error();
        let delay = self
            .backoff
            .delay(*failures, None, &mut self.jitter.borrow_mut());
        self.governor.answered(Outcome::Silent);
        self.retry_or_fail(item, e);
        tokio::time::sleep(delay).await;
    }

    fn retry_or_fail(self: &Rc<Self>, mut item: Item, error: FetchError) {
        let c = &self.counters;
        if matches!(error, FetchError::NotProcessed(_)) && item.not_processed < MAX_NOT_PROCESSED {
            // The server says it never looked at the request: send it again
            // at once (on a new connection, as the handle broke), without
            // spending an attempt or waiting out a backoff.
            item.not_processed += 1;
            c.retries.set(c.retries.get() + 1);
            item.batch.retries.set(item.batch.retries.get() + 1);
            self.queue.borrow_mut().push_front(item);
            self.work_ready.notify_waiters();
            return;
        }
        item.attempt += 1;
        if !error.is_transient() || item.attempt >= self.settings.max_attempts {
            let reason = if error.is_transient() {
                format!("{error} (gave up after {} attempts)", item.attempt)
            } else {
                error.to_string()
            };
            self.fail(item, reason, error.status());
            return;
        }
        c.retries.set(c.retries.get() + 1);
        item.batch.retries.set(item.batch.retries.get() + 1);
        let delay = self.backoff.delay(
            item.attempt,
            error.retry_after(),
            &mut self.jitter.borrow_mut(),
        );
        // A timer task per retry keeps the connection free for other names
        // while this one waits; retries are rare, so the task is cheap.
        self.retrying.set(self.retrying.get() + 1);
        item.batch.sleeping.borrow_mut().push(item.idx);
        self.check_stalled(&item.batch);
        let engine = self.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(delay).await;
            engine.retrying.set(engine.retrying.get() - 1);
            item.batch.sleeping.borrow_mut().retain(|&i| i != item.idx);
            engine.queue.borrow_mut().push_front(item);
            engine.work_ready.notify_waiters();
        });
    }

    /// Reports a batch as stalled once every name it has left sleeps on a
    /// retry timer. Without this a batch held its place in the shard's
    /// window until its slowest name was done, so a server answering
    /// `Retry-After` to a fraction of names throttled the whole shard
    /// (finding 1, "Retries block the window", in
    /// docs/benchmarks/2026-11-21-1044-profile-findings.md). The report takes
    /// the batch's counts so far; its `BatchDone` counts the rest.
    fn check_stalled(&self, batch: &Rc<BatchState>) {
        let remaining = batch.remaining.get() as usize;
        if batch.stalled.get() || remaining == 0 || batch.sleeping.borrow().len() != remaining {
            return;
        }
        batch.stalled.set(true);
        let c = &self.counters;
        c.batches_stalled.set(c.batches_stalled.get() + 1);
        let mut waiting = batch.sleeping.borrow().clone();
        waiting.sort_unstable();
        self.stalls.borrow_mut().push(ToCoordinator::BatchStalled {
            id: batch.id,
            ok: batch.ok.replace(0),
            bytes: batch.bytes.replace(0),
            retries: batch.retries.replace(0),
            present: batch.present.replace(0),
            failures: batch.failures.take(),
            waiting,
        });
        self.completed_ready.notify_one();
    }

    fn succeed(&self, item: Item, bytes: u64) {
        let c = &self.counters;
        c.files_ok.set(c.files_ok.get() + 1);
        c.bytes.set(c.bytes.get() + bytes);
        item.batch.ok.set(item.batch.ok.get() + 1);
        item.batch.bytes.set(item.batch.bytes.get() + bytes);
        self.finish(item);
    }

    fn fail(&self, item: Item, reason: String, status: Option<u16>) {
        let c = &self.counters;
        c.files_failed.set(c.files_failed.get() + 1);
        item.batch.failures.borrow_mut().push(Failure::new(
            item.batch.names[item.idx as usize].clone(),
            reason,
            status,
        ));
        self.finish(item);
    }

    fn finish(&self, item: Item) {
        let remaining = item.batch.remaining.get() - 1;
        item.batch.remaining.set(remaining);
        if remaining == 0 {
            self.complete(item.batch);
        } else {
            self.check_stalled(&item.batch);
        }
    }

    fn complete(&self, batch: Rc<BatchState>) {
        self.completed.borrow_mut().push(batch);
        self.completed_ready.notify_one();
    }
}

/// What an answer says to the governor: 429 and 503 are pushback, any
/// other answer is clean, and no answer says nothing.
fn outcome(result: &Result<Response, FetchError>, latency: Duration) -> Outcome {
    match result {
        Ok(_) => Outcome::Clean(latency),
        Err(e) => match e.status() {
            Some(429 | 503) => Outcome::Pushback(latency, e.retry_after()),
            Some(_) => Outcome::Clean(latency),
            None => Outcome::Silent,
        },
    }
}
