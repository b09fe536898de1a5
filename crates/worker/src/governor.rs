//! How fast a worker sends: the rules, apart from the engine that obeys
//! them, so that each is unit-tested on tokio's paused clock.
//!
//! - [`TokenBucket`]: paces GETs to a rate (the coordinator's share of
//!   `--max-rps` and of a run-wide slow-down, and this worker's own cap).
//! - [`Aimd`]: the limit on requests in flight (`--adaptive on`): slow
//!   start, then additive increase while answers are clean, multiplicative
//!   decrease on pushback (429, 503).
//! - [`RateCap`]: this worker's own cap on its send rate, set from its
//!   goodput at the first pushback. An in-flight limit cannot slow a worker
//!   below one request a round trip, which on a fast network is far above
//!   what a rate-limited service serves, so pushback must cut a rate too.
//!
//! Why AIMD and not a latency gradient (Vegas, Netflix's gradient limit):
//! the signal that matters, a service that says "too many", is explicit,
//! and AIMD answers it directly and converges to a fair share among
//! independent senders. Latency is a poor signal here: on loopback it is
//! dominated by the client's own CPU, and against a server that answers
//! pipelined requests one after another it rises with depth while
//! throughput still grows. A hold on growth while latency was above twice
//! its floor was tried: it kept a loopback run near 100 requests in flight
//! on many shallow pipelines, for about 40 % more CPU per file, and bought
//! nothing against a distant service. So the limit grows to its bound
//! (`--connections` × depth) unless the service pushes back, and latency
//! only decides how the limit is laid out over connections (the engine's
//! `connection_depth`).

use std::cell::{Cell, RefCell};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The burst a bucket allows, in seconds of its rate: small, so that the
/// rate over any 10 s window stays within 1 % of the cap (at least one
/// token, so a rate under 20 a second still sends).
const BURST_SECONDS: f64 = 0.05;

/// Paces requests to a rate. Unlimited until a rate is set.
///
/// [`TokenBucket::reserve`] never refuses: it takes a token, going into
/// debt if there is none, and says how long to wait before sending, so
/// waiting callers are served in order, one slot each, with no herd of
/// sleepers waking at once to race for one token.
#[derive(Debug)]
pub struct TokenBucket {
    rate: Option<f64>,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(now: Instant) -> TokenBucket {
        TokenBucket {
            rate: None,
            tokens: 0.0,
            last: now,
        }
    }

    /// The rate in requests a second, `None` when unlimited.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    fn burst(rate: f64) -> f64 {
        (rate * BURST_SECONDS).max(1.0)
    }

    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate).min(Self::burst(rate));
        }
        self.last = now.max(self.last);
    }

    /// Changes the rate from `now` on. Tokens saved up at the old rate are
    /// kept up to the new burst; a debt is kept whole.
    pub fn set_rate(&mut self, rate: Option<f64>, now: Instant) {
        self.refill(now);
        let rate = rate.filter(|r| r.is_finite() && *r > 0.0);
        if self.rate.is_none() {
            // Leaving "unlimited": no tokens saved up. A rate comes after
            // pushback (a refusal says there is no room now) or before the
            // first request, and a burst at once was most of a run's 429s.
            self.tokens = 0.0;
        }
        self.rate = rate;
        if let Some(r) = rate {
            self.tokens = self.tokens.min(Self::burst(r));
        }
    }

    /// Takes a token if one is there now.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.rate.is_none() {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes a token if one is there now (`Duration::ZERO`), else says how
    /// long until one will be, taking nothing: a waiter asks again then,
    /// at whatever rate holds by that time.
    pub fn take_or_wait(&mut self, now: Instant) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / rate)
        }
    }

    /// Takes a token, in debt if need be: the time to wait before sending.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

/// The shortest time between two multiplicative cuts: a cut must have a
/// second to show in what is served before the next ([`Sensitivity`]
/// judges it over that second), and on loopback a round trip is so short
/// that a cut per round trip took the in-flight limit to 1 on one burst.
/// The fast correction is the rate cap's: down to the goodput at once.
///
/// Both rules also cut only for requests *sent* after their last cut: the
/// answers to requests sent before it are still arriving, and counting each
/// would cut to the floor on one burst of 429s (TCP cuts once per window
/// for the same reason). Each cut holds growth for at least this long.
pub const DECREASE_GAP: Duration = Duration::from_secs(1);

/// When pushback may cut a limit, and how long growth is held after it:
/// the one rule [`Aimd`] and [`RateCap`] share. Every pushback holds growth
/// for its `Retry-After` ([`DECREASE_GAP`] at least); a cut is allowed only
/// for a request sent after the last cut, and at most once per
/// [`DECREASE_GAP`].
#[derive(Debug, Default)]
struct CutGate {
    hold_until: Option<Instant>,
    last_decrease: Option<Instant>,
}

impl CutGate {
    /// Whether growth is held now.
    fn holding(&self, now: Instant) -> bool {
        self.hold_until.is_some_and(|t| now < t)
    }

    /// Pushback to a request sent at `sent`: extends the hold, and returns
    /// whether the caller may cut now (and records the cut if so).
    fn pushback(&mut self, now: Instant, sent: Instant, retry_after: Option<Duration>) -> bool {
        let hold = retry_after.unwrap_or(Duration::ZERO).max(DECREASE_GAP);
        self.hold_until = Some(self.hold_until.map_or(now + hold, |t| t.max(now + hold)));
        if self
            .last_decrease
            .is_some_and(|t| sent < t || now.saturating_duration_since(t) < DECREASE_GAP)
        {
            return false;
        }
        self.last_decrease = Some(now);
        true
    }
}

/// The multiplicative decrease of [`Aimd`] on pushback.
pub const AIMD_DECREASE: f64 = 0.5;

/// The in-flight limit a worker starts at: one pipelined connection's
/// worth; slow start doubles it every round trip.
pub const INITIAL_IN_FLIGHT: u32 = 16;

/// The adaptive limit on a worker's requests in flight.
#[derive(Debug)]
pub struct Aimd {
    limit: f64,
    max: f64,
    /// Until the first pushback the limit grows by one per clean answer
    /// (doubling per round trip), as TCP's slow start does.
    slow_start: bool,
    floor: Option<Duration>,
    gate: CutGate,
}

impl Aimd {
    pub fn new(initial: u32, max: u32) -> Aimd {
        let max = f64::from(max.max(1));
        Aimd {
            limit: f64::from(initial.max(1)).min(max),
            max,
            slow_start: true,
            floor: None,
            gate: CutGate::default(),
        }
    }

    /// The requests that may be in flight now.
    pub fn limit(&self) -> u32 {
        self.limit as u32
    }

    /// The lowest latency seen: the service's own, without queueing.
    pub fn floor(&self) -> Option<Duration> {
        self.floor
    }

    /// Whether the limit is held after pushback (`Retry-After`, or the gap
    /// after a decrease).
    pub fn holding(&self, now: Instant) -> bool {
        self.gate.holding(now)
    }

    /// A clean answer (anything but pushback) that took `latency`.
    pub fn on_clean(&mut self, now: Instant, latency: Duration) {
        self.floor = Some(self.floor.map_or(latency, |f| f.min(latency)));
        if self.holding(now) {
            return;
        }
        self.limit += if self.slow_start {
            1.0
        } else {
            1.0 / self.limit
        };
        self.limit = self.limit.min(self.max);
    }

    /// Pushback (429 or 503) to a request sent at `sent`, with the server's
    /// `Retry-After` if it sent one: halves the limit, once for all the
    /// requests sent before the last cut and at most once per
    /// [`DECREASE_GAP`], and holds it there for the
    /// `Retry-After` ([`DECREASE_GAP`] at least). Returns whether the limit
    /// was cut.
    pub fn on_pushback(
        &mut self,
        now: Instant,
        sent: Instant,
        retry_after: Option<Duration>,
    ) -> bool {
        if !self.gate.pushback(now, sent, retry_after) {
            return false;
        }
        self.slow_start = false;
        self.limit = (self.limit * AIMD_DECREASE).max(1.0);
        true
    }
}

/// The lowest rate cap, in requests a second: a service that refuses
/// everything still sees this worker try now and then.
pub const MIN_RATE: f64 = 1.0;

/// The share of its goodput a worker keeps sending at after pushback.
pub const RATE_DECREASE: f64 = 0.9;

/// How fast a cap grows back while answers are clean: this share of the
/// cap a second (at least [`MIN_RATE`] a second).
pub const RATE_INCREASE_PER_SECOND: f64 = 0.05;

/// A pause in pushback that ends its episode (see [`RateCap`]).
const EPISODE_QUIET: Duration = Duration::from_secs(2);

/// The shortest span of an episode whose goodput is trusted.
const EPISODE_MIN_SPAN: Duration = Duration::from_millis(20);

/// The slots of the goodput window, each [`SLOT`] long: the rates are over
/// the last second.
const SLOTS: usize = 10;
const SLOT: Duration = Duration::from_millis(100);

/// A worker's own cap on its send rate, from pushback.
///
/// At the first pushback the cap is set to [`RATE_DECREASE`] × the rate of
/// answers that were *not* pushback over the last second: when a service
/// rations requests, what it serves is the best measure of what it allows.
/// That first measure still counts the service's burst, so while the
/// pushback goes on the cap also comes down to what was served since it
/// began. Further pushback cuts the cap again (once per [`DECREASE_GAP`]); clean
/// answers let it grow by [`RATE_INCREASE_PER_SECOND`], after any
/// `Retry-After` has passed. A cap twice the rate actually answered holds
/// nothing back and is dropped.
#[derive(Debug)]
pub struct RateCap {
    cap: Option<f64>,
    /// Answers per slot: (clean, all), the newest last.
    slots: [(u32, u32); SLOTS],
    slot_start: Instant,
    /// The first answer: a window that began before it would count time
    /// when nothing was sent and understate the rate.
    first: Option<Instant>,
    gate: CutGate,
    last_increase: Instant,
    /// The current episode of pushback: when its first pushback came, and
    /// the clean answers to requests sent since. Once a rate limiter
    /// refuses, its burst is spent, and what it serves from then on is its
    /// real rate.
    episode: Option<(Instant, u64)>,
    /// The last pushback, to end an episode after a quiet spell.
    last_pushback: Option<Instant>,
}

impl RateCap {
    pub fn new(now: Instant) -> RateCap {
        RateCap {
            cap: None,
            slots: [(0, 0); SLOTS],
            slot_start: now,
            first: None,
            gate: CutGate::default(),
            last_increase: now,
            episode: None,
            last_pushback: None,
        }
    }

    pub fn cap(&self) -> Option<f64> {
        self.cap
    }

    /// Drops the cap (a run-wide share replaces it); the hold after the
    /// last pushback stays.
    pub fn reset(&mut self) {
        self.cap = None;
    }

    /// Moves the window on to `now`.
    fn advance(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        while now.saturating_duration_since(self.slot_start) >= SLOT {
            self.slots.rotate_left(1);
            self.slots[SLOTS - 1] = (0, 0);
            self.slot_start += SLOT;
            if now.saturating_duration_since(self.slot_start) >= SLOT * SLOTS as u32 {
                // Long idle: skip ahead instead of rotating slot by slot.
                self.slots = [(0, 0); SLOTS];
                self.slot_start = now;
            }
        }
    }

    /// (clean, all) answers a second over the window.
    fn rates(&self, now: Instant) -> (f64, f64) {
        let (clean, all) = self.slots.iter().fold((0u64, 0u64), |(c, a), &(sc, sa)| {
            (c + u64::from(sc), a + u64::from(sa))
        });
        // The current slot is only partly over.
        let mut span = SLOT * (SLOTS as u32 - 1) + now.saturating_duration_since(self.slot_start);
        if let Some(first) = self.first {
            span = span.min(now.saturating_duration_since(first));
        }
        // At least 10 ms, so the very first answers do not claim a huge rate.
        let secs = span.as_secs_f64().max(0.01);
        (clean as f64 / secs, all as f64 / secs)
    }

    /// A clean answer to a request sent at `sent`.
    pub fn on_clean(&mut self, now: Instant, sent: Instant) {
        // Only requests sent after the first refusal measure what the
        // service grants; earlier ones were let in by its burst.
        if let Some((start, clean)) = &mut self.episode {
            if sent >= *start {
                *clean += 1;
            }
        }
        self.advance(now);
        let slot = &mut self.slots[SLOTS - 1];
        slot.0 += 1;
        slot.1 += 1;
        self.grow(now);
    }

    fn grow(&mut self, now: Instant) {
        let Some(cap) = self.cap else {
            self.last_increase = now;
            return;
        };
        if self.gate.holding(now) {
            self.last_increase = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.last_increase);
        if elapsed < SLOT {
            return;
        }
        self.last_increase = now;
        let grown = cap + (cap * RATE_INCREASE_PER_SECOND).max(MIN_RATE) * elapsed.as_secs_f64();
        let (_, all) = self.rates(now);
        self.cap = if grown > 2.0 * all && all > 0.0 {
            None
        } else {
            Some(grown)
        };
    }

    /// Pushback to a request sent at `sent`, with its `Retry-After`: cuts
    /// the cap (once for the requests sent before the last cut, and at most
    /// once per [`DECREASE_GAP`]) and holds it for the `Retry-After`.
    /// Returns whether the cap was cut.
    pub fn on_pushback(
        &mut self,
        now: Instant,
        sent: Instant,
        retry_after: Option<Duration>,
    ) -> bool {
        self.advance(now);
        self.slots[SLOTS - 1].1 += 1;
        if self
            .last_pushback
            .is_none_or(|t| now.saturating_duration_since(t) > EPISODE_QUIET)
        {
            self.episode = Some((now, 0));
        }
        self.last_pushback = Some(now);
        // Refused while sending at the cap: what the service served since
        // the episode began is the most it grants, so the cap comes down to
        // it at once. Not a multiplicative cut, so it does not compound: at
        // a cap the service fully serves, it is the cap itself.
        if let (Some(cap), Some((start, clean))) = (self.cap, self.episode) {
            // Answers to the requests sent since the episode began come a
            // round trip later (behind a pipeline, many milliseconds), so
            // the span they cover ends when this refused request was sent,
            // not now. Measured up to now, the first tens of milliseconds
            // held almost no answers and the cap fell to its floor of one
            // request a second, which then took minutes to grow back.
            let span = sent.saturating_duration_since(start);
            if span >= EPISODE_MIN_SPAN {
                let served = clean as f64 / span.as_secs_f64();
                self.cap = Some(cap.min(served).max(MIN_RATE));
            }
        }
        if !self.gate.pushback(now, sent, retry_after) {
            return false;
        }
        let (clean, _) = self.rates(now);
        let measured = clean * RATE_DECREASE;
        let cut = match self.cap {
            Some(cap) => measured.min(cap * RATE_DECREASE),
            None => measured,
        };
        self.cap = Some(cut.max(MIN_RATE));
        true
    }
}

/// How long pushback that does not answer to cuts is taken for what it is
/// (names the service refuses whatever the rate) before it is tested again.
pub const INSENSITIVE_FOR: Duration = Duration::from_secs(10);

/// The least share of pushback, after cuts, that makes it "not about the
/// rate": below it, the few refusals of a rate limiter crossed again.
pub const INSENSITIVE_SHARE: f64 = 0.02;

/// Whether pushback answers to the rate.
///
/// A rate limiter's refusals fall away once a client slows below its rate;
/// a service that refuses some names whatever the rate (a hot name, a
/// per-name `Retry-After`) refuses the same share however slowly it is
/// asked. Cutting on the second kind only compounds: 10 % of names refused
/// once drove a run to a request a second. So a cut is judged over the two
/// seconds after it: the first still holds the refusals of the requests
/// sent before the cut took hold, the second shows whether it helped. If
/// the share of pushback in the second is at least [`INSENSITIVE_SHARE`]
/// and not under half the share in the first, the cuts did not help, and
/// pushback is left to the per-name retries (it neither cuts nor holds the
/// limits) for [`INSENSITIVE_FOR`]. (Comparing with the second *before*
/// the cut misjudged a rate limiter: refusals have only just begun then.)
#[derive(Debug)]
pub struct Sensitivity {
    /// Answers per slot: (pushback, all), the newest last.
    slots: [(u32, u32); SLOTS],
    slot_start: Instant,
    /// The cut being judged, and the share of pushback in the second after
    /// it, once that second is over.
    last_cut: Option<(Instant, Option<f64>)>,
    insensitive_until: Option<Instant>,
}

impl Sensitivity {
    pub fn new(now: Instant) -> Sensitivity {
        Sensitivity {
            slots: [(0, 0); SLOTS],
            slot_start: now,
            last_cut: None,
            insensitive_until: None,
        }
    }

    fn advance(&mut self, now: Instant) {
        while now.saturating_duration_since(self.slot_start) >= SLOT {
            self.slots.rotate_left(1);
            self.slots[SLOTS - 1] = (0, 0);
            self.slot_start += SLOT;
            if now.saturating_duration_since(self.slot_start) >= SLOT * SLOTS as u32 {
                self.slots = [(0, 0); SLOTS];
                self.slot_start = now;
            }
        }
    }

    /// The share of pushback among the answers of the last second.
    fn share(&self) -> f64 {
        let (p, a) = self.slots.iter().fold((0u64, 0u64), |(p, a), &(sp, sa)| {
            (p + u64::from(sp), a + u64::from(sa))
        });
        if a == 0 {
            0.0
        } else {
            p as f64 / a as f64
        }
    }

    pub fn record(&mut self, now: Instant, pushback: bool) {
        self.advance(now);
        let slot = &mut self.slots[SLOTS - 1];
        slot.0 += u32::from(pushback);
        slot.1 += 1;
    }

    /// Whether the limits may act on pushback now.
    pub fn acts(&mut self, now: Instant) -> bool {
        self.advance(now);
        if self.insensitive_until.is_some_and(|t| now < t) {
            return false;
        }
        if let Some((at, first)) = self.last_cut {
            let since = now.saturating_duration_since(at);
            match first {
                None if since >= DECREASE_GAP => {
                    self.last_cut = Some((at, Some(self.share())));
                }
                Some(first) if since >= DECREASE_GAP * 2 => {
                    let second = self.share();
                    self.last_cut = None;
                    if second >= INSENSITIVE_SHARE && second >= first / 2.0 {
                        self.insensitive_until = Some(now + INSENSITIVE_FOR);
                        return false;
                    }
                }
                _ => {}
            }
        }
        true
    }

    /// A limit was cut at `now`.
    pub fn cut(&mut self, now: Instant) {
        self.advance(now);
        if self.last_cut.is_none() {
            self.last_cut = Some((now, None));
        }
    }

    pub fn insensitive(&self, now: Instant) -> bool {
        self.insensitive_until.is_some_and(|t| now < t)
    }
}

/// What an answer says about the service's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer that is not pushback (a 404 or a 500 too: the service
    /// answered in its time).
    Clean(Duration),
    /// 429 or 503 to a request that took the first `Duration`, with the
    /// server's `Retry-After`.
    Pushback(Duration, Option<Duration>),
    /// No answer (a connect error, a reset, a timeout): says nothing the
    /// limits act on.
    Silent,
}

/// The engine's side of the rules: one per worker, single-threaded.
///
/// A request task takes a permit ([`Governor::acquire`]) before it takes a
/// name, so no more than the in-flight limit of names are held by tasks,
/// and paces its send ([`Governor::pace`]); it gives the permit back with
/// the answer ([`Governor::answered`]). With `--adaptive off` the in-flight
/// limit is the task count, and only the coordinator's share paces.
pub struct Governor {
    adaptive: bool,
    admitted: Cell<u32>,
    aimd: RefCell<Aimd>,
    cap: RefCell<RateCap>,
    sensitivity: RefCell<Sensitivity>,
    bucket: RefCell<TokenBucket>,
    share: Cell<Option<f64>>,
    slowdown: Cell<bool>,
    permit_ready: Notify,
    /// Wakes the requests waiting in [`Governor::pace`] when the rate
    /// changes, so a raised or lifted limit applies to them at once.
    rate_changed: Notify,
    /// Answers since the last pressure report: (clean, pushback).
    pressure: Cell<(u32, u32)>,
    pushback_total: Cell<u64>,
}

impl Governor {
    /// `max_in_flight` bounds the adaptive limit: the worker's request
    /// tasks times the requests each may keep in flight.
    pub fn new(adaptive: bool, max_in_flight: u32) -> Governor {
        let now = Instant::now();
        let initial = if adaptive {
            INITIAL_IN_FLIGHT
        } else {
            max_in_flight
        };
        Governor {
            adaptive,
            admitted: Cell::new(0),
            aimd: RefCell::new(Aimd::new(initial, max_in_flight)),
            cap: RefCell::new(RateCap::new(now)),
            sensitivity: RefCell::new(Sensitivity::new(now)),
            bucket: RefCell::new(TokenBucket::new(now)),
            share: Cell::new(None),
            slowdown: Cell::new(false),
            permit_ready: Notify::new(),
            rate_changed: Notify::new(),
            pressure: Cell::new((0, 0)),
            pushback_total: Cell::new(0),
        }
    }

    /// The in-flight limit now.
    pub fn limit(&self) -> u32 {
        self.aimd.borrow().limit()
    }

    /// The lowest answer latency seen (adaptive only).
    pub fn latency_floor(&self) -> Option<Duration> {
        self.aimd.borrow().floor()
    }

    /// Takes a permit if the limit allows one now.
    pub fn try_acquire(&self) -> bool {
        let admitted = self.admitted.get();
        if admitted < self.limit() {
            self.admitted.set(admitted + 1);
            true
        } else {
            false
        }
    }

    /// Waits for a permit.
    pub async fn acquire(&self) {
        loop {
            // Created before the check, so a release in between is seen.
            let ready = self.permit_ready.notified();
            if self.try_acquire() {
                // `notify_one` keeps at most one wake-up for a task that is
                // not yet waiting, so permits freed meanwhile may have gone
                // unannounced: pass the word on while some are left.
                if self.admitted.get() < self.limit() {
                    self.permit_ready.notify_one();
                }
                return;
            }
            ready.await;
        }
    }

    /// Gives a permit back without an answer (no name to send after all).
    pub fn release(&self) {
        self.admitted.set(self.admitted.get() - 1);
        self.permit_ready.notify_one();
    }

    /// Waits for this request's slot under the rate, if there is one.
    ///
    /// A waiter takes no token in advance: with hundreds of requests
    /// waiting, tokens reserved in debt at a low rate (a cap cut to the
    /// goodput of a throttled second) held the last of them for minutes
    /// after the rate was raised or lifted, one request a second. It waits
    /// until a token is due or the rate changes, and asks again.
    pub async fn pace(&self) {
        loop {
            // Created before the check, so a change in between is seen.
            let changed = self.rate_changed.notified();
            let wait = self.bucket.borrow_mut().take_or_wait(Instant::now());
            if wait.is_zero() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed => {}
            }
        }
    }

    /// Takes a slot under the rate if one is free now (for a pipelined
    /// connection, which reads answers rather than wait).
    pub fn try_pace(&self) -> bool {
        let mut bucket = self.bucket.borrow_mut();
        // Without a rate there is nothing to take: no need to read the
        // clock, which is done per request.
        bucket.rate().is_none() || bucket.try_take(Instant::now())
    }

    /// An answer (or none) to a request that held a permit: gives the
    /// permit back and applies the rules.
    pub fn answered(&self, outcome: Outcome) {
        self.judge(outcome);
        self.release();
    }

    /// Applies the rules to an answer whose permit the caller keeps for
    /// its next request (a pipelined connection refilling itself, which
    /// saves a wake-up of another task per answer).
    pub fn judge(&self, outcome: Outcome) {
        self.judge_at(outcome, Instant::now());
    }

    /// [`Governor::judge`] for an answer that ended at `now`, for a caller
    /// that has just read the clock (a pipelined connection reads it once
    /// per response).
    pub fn judge_at(&self, outcome: Outcome, now: Instant) {
        let before = self.limit();
        let (clean, pushback) = self.pressure.get();
        match outcome {
            Outcome::Clean(latency) => {
                self.pressure.set((clean.saturating_add(1), pushback));
                if self.adaptive {
                    self.sensitivity.borrow_mut().record(now, false);
                    self.aimd.borrow_mut().on_clean(now, latency);
                    let sent = now.checked_sub(latency).unwrap_or(now);
                    self.cap.borrow_mut().on_clean(now, sent);
                }
            }
            Outcome::Pushback(latency, retry_after) => {
                let sent = now.checked_sub(latency).unwrap_or(now);
                self.pressure.set((clean, pushback.saturating_add(1)));
                self.pushback_total.set(self.pushback_total.get() + 1);
                if self.adaptive {
                    let mut sensitivity = self.sensitivity.borrow_mut();
                    sensitivity.record(now, true);
                    if sensitivity.acts(now) {
                        let a = self.aimd.borrow_mut().on_pushback(now, sent, retry_after);
                        let r = self.cap.borrow_mut().on_pushback(now, sent, retry_after);
                        if a || r {
                            sensitivity.cut(now);
                        }
                    } else if self.cap.borrow().cap().is_some() {
                        // The cuts did not help: this pushback is not about
                        // the rate. Let the cap go; per-name retries
                        // handle the refused names.
                        self.cap.borrow_mut().reset();
                    }
                }
            }
            Outcome::Silent => {}
        }
        self.apply_rate(now);
        // A grown limit lets one more task in.
        if self.limit() > before {
            self.permit_ready.notify_one();
        }
    }

    /// The coordinator's share (`None`: no limit), and whether a run-wide
    /// slow-down is part of it.
    pub fn set_share(&self, share: Option<f64>, slowdown: bool) {
        if slowdown {
            // The run-wide decision, from every shard's answers, replaces
            // this worker's own cap, so the shards slow and recover
            // together instead of each at its own level.
            self.cap.borrow_mut().reset();
        }
        self.share.set(share);
        self.slowdown.set(slowdown);
        self.apply_rate(Instant::now());
    }

    /// The bucket's rate: the lower of the share and this worker's own cap.
    fn apply_rate(&self, now: Instant) {
        let rate = match (self.share.get(), self.cap.borrow().cap()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut bucket = self.bucket.borrow_mut();
        if bucket.rate() != rate {
            bucket.set_rate(rate, now);
            self.rate_changed.notify_waiters();
        }
    }

    /// The answers since the last call: (clean, pushback).
    pub fn take_pressure(&self) -> (u32, u32) {
        self.pressure.replace((0, 0))
    }

    /// The limits as the stats file shows them.
    pub fn snapshot(&self) -> bulkget_stats::Pace {
        let now = Instant::now();
        let own = self.cap.borrow().cap().is_some() || self.aimd.borrow().holding(now);
        bulkget_stats::Pace {
            adaptive: self.adaptive,
            in_flight_limit: u64::from(self.limit()),
            rps_limit: self.bucket.borrow().rate(),
            rps_share: self.share.get(),
            backoff: if self.slowdown.get() {
                bulkget_stats::Backoff::RunWide
            } else if own {
                bulkget_stats::Backoff::Own
            } else {
                bulkget_stats::Backoff::None
            },
            pushback_total: self.pushback_total.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends as fast as the bucket allows for `window` and counts.
    async fn sent_in(bucket: &mut TokenBucket, window: Duration) -> u64 {
        let end = Instant::now() + window;
        let mut sent = 0;
        loop {
            let wait = bucket.reserve(Instant::now());
            tokio::time::sleep(wait).await;
            if Instant::now() >= end {
                return sent;
            }
            sent += 1;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_keeps_within_five_percent_over_ten_seconds() {
        for rate in [0.7, 5.0, 333.0, 4_000.0, 100_000.0] {
            let mut bucket = TokenBucket::new(Instant::now());
            bucket.set_rate(Some(rate), Instant::now());
            let sent = sent_in(&mut bucket, Duration::from_secs(10)).await as f64;
            let ideal = rate * 10.0;
            assert!(
                (sent - ideal).abs() <= (ideal * 0.05).max(1.0),
                "rate {rate}: {sent} sent in 10 s"
            );
        }
    }

    /// Requests waiting at a low rate go at once when the rate is lifted,
    /// and at the new rate when it is raised: none waits out a slot it was
    /// given at the old one.
    #[tokio::test(start_paused = true)]
    async fn waiters_at_a_low_rate_follow_a_raised_or_lifted_rate_at_once() {
        let governor = std::rc::Rc::new(Governor::new(true, 1_000));
        governor.set_share(Some(1.0), false);
        let sent = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let local = tokio::task::LocalSet::new();
        for _ in 0..200 {
            let (governor, sent) = (governor.clone(), sent.clone());
            local.spawn_local(async move {
                governor.pace().await;
                sent.set(sent.get() + 1);
            });
        }
        local
            .run_until(async {
                tokio::time::sleep(Duration::from_millis(2_500)).await;
                // At 1 a second (nothing saved up), two or three went.
                assert!(sent.get() <= 3, "{}", sent.get());
                // Raised to 100 a second: the next second sends about 100,
                // not the one a second the old slots would have allowed.
                governor.set_share(Some(100.0), false);
                tokio::time::sleep(Duration::from_secs(1)).await;
                let after_raise = sent.get();
                assert!((95..=110).contains(&after_raise), "{after_raise}");
                // Lifted: everyone left goes at once.
                governor.set_share(None, false);
                tokio::time::sleep(Duration::from_millis(1)).await;
                assert_eq!(sent.get(), 200);
            })
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn many_senders_share_the_rate_and_a_new_rate_applies_at_once() {
        let bucket = std::rc::Rc::new(std::cell::RefCell::new(TokenBucket::new(Instant::now())));
        bucket.borrow_mut().set_rate(Some(1_000.0), Instant::now());
        let sent = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let local = tokio::task::LocalSet::new();
        let end = Instant::now() + Duration::from_secs(10);
        for _ in 0..50 {
            let (bucket, sent) = (bucket.clone(), sent.clone());
            local.spawn_local(async move {
                loop {
                    let wait = bucket.borrow_mut().reserve(Instant::now());
                    tokio::time::sleep(wait).await;
                    if Instant::now() >= end {
                        return;
                    }
                    sent.set(sent.get() + 1);
                }
            });
        }
        local.await;
        let n = sent.get() as f64;
        assert!((n - 10_000.0).abs() <= 500.0, "{n}");

        // Half the rate from now on: the next 10 s send half as much. The
        // tasks are done, so the bucket is this test's alone.
        let mut b = std::rc::Rc::try_unwrap(bucket).unwrap().into_inner();
        b.set_rate(Some(500.0), Instant::now());
        let n = sent_in(&mut b, Duration::from_secs(10)).await as f64;
        assert!((n - 5_000.0).abs() <= 250.0, "{n}");
        // Unlimited again: no wait at all.
        b.set_rate(None, Instant::now());
        assert_eq!(b.reserve(Instant::now()), Duration::ZERO);
        assert!(b.try_take(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn try_take_refuses_when_a_token_is_not_there_yet() {
        let mut bucket = TokenBucket::new(Instant::now());
        assert!(bucket.try_take(Instant::now()), "unlimited");
        // A new rate starts with nothing saved up.
        bucket.set_rate(Some(10.0), Instant::now());
        assert!(!bucket.try_take(Instant::now()));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(bucket.try_take(Instant::now()));
        assert!(!bucket.try_take(Instant::now()));
    }

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn slow_start_doubles_then_pushback_halves_and_growth_is_additive() {
        let mut aimd = Aimd::new(16, 10_000);
        // One round trip of clean answers: each adds one.
        for _ in 0..16 {
            aimd.on_clean(Instant::now(), 10 * MS);
        }
        assert_eq!(aimd.limit(), 32);
        // 429s in a burst, to requests sent before the cut: one cut, not
        // one per answer.
        let sent = Instant::now();
        tokio::time::advance(10 * MS).await;
        assert!(aimd.on_pushback(Instant::now(), sent, None));
        for _ in 0..20 {
            assert!(!aimd.on_pushback(Instant::now(), sent, None));
        }
        assert_eq!(aimd.limit(), 16);
        // Held through the gap after the cut...
        aimd.on_clean(Instant::now(), 10 * MS);
        assert_eq!(aimd.limit(), 16);
        tokio::time::advance(DECREASE_GAP).await;
        // ... then one per round trip (limit answers), no longer doubling.
        for _ in 0..16 {
            aimd.on_clean(Instant::now(), 10 * MS);
        }
        assert_eq!(aimd.limit(), 16);
        for _ in 0..16 {
            aimd.on_clean(Instant::now(), 10 * MS);
        }
        assert_eq!(aimd.limit(), 17);
        // Pushback after the gap cuts again; never below one.
        for _ in 0..10 {
            tokio::time::advance(DECREASE_GAP).await;
            aimd.on_pushback(Instant::now(), Instant::now(), None);
        }
        assert_eq!(aimd.limit(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_holds_the_limit_for_its_length() {
        let mut aimd = Aimd::new(64, 10_000);
        aimd.on_pushback(Instant::now(), Instant::now(), Some(Duration::from_secs(2)));
        assert_eq!(aimd.limit(), 32);
        tokio::time::advance(Duration::from_millis(1_900)).await;
        for _ in 0..100 {
            aimd.on_clean(Instant::now(), 10 * MS);
        }
        assert_eq!(aimd.limit(), 32);
        tokio::time::advance(Duration::from_millis(100)).await;
        for _ in 0..34 {
            aimd.on_clean(Instant::now(), 10 * MS);
        }
        assert_eq!(aimd.limit(), 33);
    }

    #[tokio::test(start_paused = true)]
    async fn growth_stops_at_the_bound_and_the_floor_is_the_fastest_answer() {
        let mut aimd = Aimd::new(16, 40);
        assert_eq!(aimd.floor(), None);
        for i in 0..100 {
            aimd.on_clean(Instant::now(), (10 + i % 7) * MS);
        }
        assert_eq!(aimd.limit(), 40);
        assert_eq!(aimd.floor(), Some(10 * MS));
        // A limit never starts above its bound.
        assert_eq!(Aimd::new(16, 4).limit(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn pushback_that_does_not_fall_after_a_cut_stops_cutting_for_a_while() {
        // A tenth of the answers refused, whatever the rate.
        let mut s = Sensitivity::new(Instant::now());
        let mut cuts = 0;
        let mut last: Option<Instant> = None;
        for i in 0..3_000u32 {
            let pushback = i % 10 == 0;
            let now = Instant::now();
            s.record(now, pushback);
            // The limits cut at most once per DECREASE_GAP.
            if pushback && s.acts(now) && last.is_none_or(|t| now - t >= DECREASE_GAP) {
                s.cut(now);
                last = Some(now);
                cuts += 1;
            }
            tokio::time::advance(MS).await;
        }
        // A cut on the first refusal and one a second later; two seconds
        // after the first, the share has not moved, and no cut follows.
        assert_eq!(cuts, 2);
        assert!(s.insensitive(Instant::now()));
        tokio::time::advance(INSENSITIVE_FOR).await;
        assert!(s.acts(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn pushback_that_falls_after_a_cut_keeps_the_rules_acting() {
        // A rate limiter: refusals begin, the cut comes on the first, the
        // second after it still has many (sent before it took hold), the
        // next has a few; much later a few again (crossed once more).
        let mut s = Sensitivity::new(Instant::now());
        for _ in 0..500 {
            s.record(Instant::now(), false);
            tokio::time::advance(MS).await;
        }
        s.record(Instant::now(), true);
        assert!(s.acts(Instant::now()));
        s.cut(Instant::now());
        for i in 0..1_000u32 {
            s.record(Instant::now(), i % 3 == 0);
            assert!(i % 3 != 0 || s.acts(Instant::now()));
            tokio::time::advance(MS).await;
        }
        for i in 0..3_000u32 {
            s.record(Instant::now(), i % 200 == 0);
            assert!(i % 200 != 0 || s.acts(Instant::now()), "{i}");
            tokio::time::advance(MS).await;
        }
        assert!(!s.insensitive(Instant::now()));
    }

    /// Answers `clean` requests a second, the rest of `sent` pushback, for
    /// `ms` milliseconds, spread evenly.
    async fn answer(cap: &mut RateCap, sent: u32, clean: u32, ms: u32) {
        let step = Duration::from_secs(1) / sent;
        for i in 0..(u64::from(sent) * u64::from(ms) / 1000) as u32 {
            let i = i % sent;
            if i * clean / sent != (i + 1) * clean / sent {
                cap.on_clean(Instant::now(), Instant::now());
            } else {
                // Answered at once (a rate limiter refuses without work).
                cap.on_pushback(Instant::now(), Instant::now(), Some(Duration::from_secs(1)));
            }
            tokio::time::advance(step).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_fast_start_the_cap_comes_down_to_what_is_served_within_a_tenth_of_a_second() {
        let mut cap = RateCap::new(Instant::now());
        answer(&mut cap, 12_000, 12_000, 30).await;
        answer(&mut cap, 10_000, 1_000, 100).await;
        let c = cap.cap().expect("a cap");
        assert!((900.0..=1_100.0).contains(&c), "{c}");
    }

    /// Pipelined answers come a round trip after their requests were sent:
    /// the refusals that open an episode arrive before any answer to a
    /// request sent after it, and that must not read as "nothing served".
    #[tokio::test(start_paused = true)]
    async fn answers_a_round_trip_late_do_not_take_the_cap_to_its_floor() {
        let mut cap = RateCap::new(Instant::now());
        let rtt = Duration::from_millis(100);
        // A second at 2,000 clean answers a second.
        for _ in 0..2_000 {
            let now = Instant::now();
            cap.on_clean(now, now - rtt);
            tokio::time::advance(Duration::from_micros(500)).await;
        }
        // Then half a second in which the service refuses one request a
        // millisecond and serves one, every answer a round trip late.
        for _ in 0..500 {
            let now = Instant::now();
            cap.on_pushback(now, now - rtt, Some(Duration::from_secs(1)));
            cap.on_clean(now, now - rtt);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let c = cap.cap().expect("a cap");
        assert!(
            c >= 500.0,
            "the cap fell to {c} while 1,000 a second were served"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_cap_is_set_from_goodput_and_grows_back_after_retry_after() {
        let mut cap = RateCap::new(Instant::now());
        answer(&mut cap, 2_000, 2_000, 1_000).await;
        assert_eq!(cap.cap(), None);
        // A burst at 10,000 a second of which the service serves 1,500:
        // the cap comes down to what was served, whatever was sent, and
        // the burst of 429s does not take it lower.
        answer(&mut cap, 10_000, 1_500, 150).await;
        let c = cap.cap().expect("a cap");
        assert!((1_200.0..=1_500.0).contains(&c), "{c}");
        // Clean answers at the cap: held for the Retry-After, then growing
        // by 5 % of the cap a second.
        let served = c as u32;
        answer(&mut cap, served, served, 900).await;
        assert_eq!(cap.cap(), Some(c));
        answer(&mut cap, served, served, 2_000).await;
        let grown = cap.cap().unwrap();
        assert!(grown > c * 1.05 && grown < c * 1.15, "{c} -> {grown}");
        // More pushback cuts it again, by at least a tenth.
        answer(&mut cap, 10_000, 1_000, 10).await;
        assert!(cap.cap().unwrap() <= grown * RATE_DECREASE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cap_never_drops_below_its_floor_and_is_dropped_once_it_holds_nothing_back() {
        let mut cap = RateCap::new(Instant::now());
        // Everything refused: the floor.
        answer(&mut cap, 100, 0, 1_000).await;
        assert_eq!(cap.cap(), Some(MIN_RATE));
        // The service comes back; the cap grows, and once it is twice what
        // is sent (here a steady 2 a second) it is dropped.
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..120 {
            cap.on_clean(Instant::now(), Instant::now());
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        assert_eq!(cap.cap(), None);
    }
}
