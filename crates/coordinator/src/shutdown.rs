//! How a run ends: the one value that knows whether the run is stopping
//! early and why, whether it is finishing normally, how many stop signals
//! it has seen, and until when the workers may take to go.
//!
//! The rules, each decided here and nowhere else:
//!
//! - The first stop (a signal, a failed listing, every shard parked, a full
//!   disk, a worker of another build) gives in-flight batches `--grace` to
//!   finish; a later stop of another kind changes nothing.
//! - A second signal, or the grace deadline passing, stops the workers at
//!   once (SIGTERM, then SIGKILL).
//! - A failure of the state directory stops the workers at once, whatever
//!   stop was under way, and its reason wins: nothing acknowledged after it
//!   could be saved, and no checkpoint is written after it.
//! - Once every listed file is acknowledged the run finishes: the workers
//!   drain and exit, within [`FINISH_WITHIN`].
//!
//! Like mini-redis's `Shutdown`, it is a plain value the run loop asks; it
//! holds no handle and does no I/O, so every rule is tested without
//! processes. Its two inputs from the outside world are here too, for every
//! loop that ends this way (`fetch`'s run loop and a `cluster work` host):
//! [`StopSignals`], the process's stop signals as one stream, and
//! [`sleep_until`], which waits for the deadline.

use crate::exit;
use bulkget_stats::RunState;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

/// How long finished workers may take to write their last stats and exit.
pub const FINISH_WITHIN: Duration = Duration::from_secs(10);

/// A signal that stops the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// SIGHUP: the terminal went away; handled like SIGTERM.
    Hangup,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
            StopSignal::Hangup => "SIGHUP",
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            StopSignal::Interrupt => exit::INTERRUPTED,
            StopSignal::Terminate => exit::TERMINATED,
            StopSignal::Hangup => exit::HANGUP,
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP as one stream of [`StopSignal`]s.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    /// Installs the handlers: from now on these signals no longer end the
    /// process, they are read here. A closed terminal sends SIGHUP, so it
    /// stops the run as SIGTERM does, with its checkpoint, instead of
    /// killing it without one.
    pub fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next stop signal. Cancel safe: a signal that arrives while
    /// another branch of a `select!` wins is kept for the next call.
    pub async fn recv(&mut self) -> StopSignal {
        tokio::select! {
            _ = self.interrupt.recv() => StopSignal::Interrupt,
            _ = self.terminate.recv() => StopSignal::Terminate,
            _ = self.hangup.recv() => StopSignal::Hangup,
        }
    }
}

impl StopSignals {
    /// Sends every stop signal on to a channel, from a task of its own:
    /// `fetch`'s loop reads its signals from a channel, so that a test can
    /// send its own instead.
    pub fn forward(mut self) -> mpsc::UnboundedReceiver<StopSignal> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let signal = self.recv().await;
                if tx.send(signal).is_err() {
                    return;
                }
            }
        });
        rx
    }
}

/// Waits until `deadline` ([`Shutdown::deadline`]), or forever without one.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Why the run is stopping before every listed file is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Signal(StopSignal),
    ListingFailed(String),
    AllParked,
    NoSpace(String),
    /// Writing or syncing the state directory or the output failed: the run
    /// stops at once and writes no further checkpoint.
    StateFailed(String),
    /// A worker is another build than the coordinator.
    Incompatible(String),
}

impl Reason {
    pub fn exit_code(&self) -> i32 {
        match self {
            Reason::Signal(s) => s.exit_code(),
            Reason::ListingFailed(_) => exit::LISTING_FAILED,
            Reason::AllParked => exit::ALL_PARKED,
            Reason::NoSpace(_) => exit::NO_SPACE,
            Reason::StateFailed(_) | Reason::Incompatible(_) => exit::ERROR,
        }
    }

    /// Completes "stopped: ..." in the summary.
    pub fn describe(&self) -> String {
        match self {
            Reason::Signal(s) => format!("interrupted by {}", s.name()),
            Reason::ListingFailed(e) => e.clone(),
            Reason::AllParked => "every shard was parked".into(),
            Reason::NoSpace(e) => format!("out of space: {e}"),
            Reason::StateFailed(e) => e.clone(),
            Reason::Incompatible(e) => e.clone(),
        }
    }
}

/// How many stop signals the run has seen: the first asks for a graceful
/// stop, any later one for an immediate one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Signals {
    #[default]
    None,
    One,
    More,
}

/// What the run loop does about a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSignal {
    /// The first: stop within the grace period. `began` says whether this
    /// signal began the stop (and is its reason), or one was under way.
    Graceful { began: bool },
    /// A later one: stop the workers now.
    Now,
}

/// The run's ending, if it is ending (see the module documentation).
#[derive(Debug, Clone)]
pub struct Shutdown {
    grace: Duration,
    reason: Option<Reason>,
    finishing: bool,
    signals: Signals,
    /// When the workers still there are stopped by force; `None` when there
    /// is no deadline, or it has passed and the workers are being stopped.
    deadline: Option<Instant>,
}

impl Shutdown {
    /// A run that is not ending, whose stops give `grace` to in-flight
    /// batches.
    pub fn new(grace: Duration) -> Shutdown {
        Shutdown {
            grace,
            reason: None,
            finishing: false,
            signals: Signals::None,
            deadline: None,
        }
    }

    /// Why the run is stopping early, if it is.
    pub fn reason(&self) -> Option<&Reason> {
        self.reason.as_ref()
    }

    /// Whether the run is stopping early: no new work goes out.
    pub fn stopping(&self) -> bool {
        self.reason.is_some()
    }

    /// Whether every listed file was acknowledged and the workers were told
    /// to drain.
    pub fn finishing(&self) -> bool {
        self.finishing
    }

    /// Whether the run is ending, one way or the other: once every worker
    /// has exited, the loop ends.
    pub fn ending(&self) -> bool {
        self.finishing || self.reason.is_some()
    }

    pub fn signals(&self) -> Signals {
        self.signals
    }

    /// When the workers still running are to be stopped by force.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Begins a graceful stop for `reason`. Returns false, changing
    /// nothing, if a stop is already under way.
    pub fn begin(&mut self, reason: Reason, now: Instant) -> bool {
        if self.reason.is_some() {
            return false;
        }
        self.reason = Some(reason);
        self.deadline = Some(now + self.grace);
        true
    }

    /// Counts a stop signal and says what to do about it.
    pub fn on_signal(&mut self, signal: StopSignal, now: Instant) -> OnSignal {
        match self.signals {
            Signals::None => {
                self.signals = Signals::One;
                let began = self.begin(Reason::Signal(signal), now);
                OnSignal::Graceful { began }
            }
            Signals::One | Signals::More => {
                self.signals = Signals::More;
                OnSignal::Now
            }
        }
    }

    /// The state directory failed (see [`crate::state_thread`]). Returns
    /// true if the workers are to be stopped now: the first such failure
    /// replaces any other reason and drops the deadline; a later one
    /// changes nothing.
    pub fn state_failed(&mut self, why: String) -> bool {
        if matches!(self.reason, Some(Reason::StateFailed(_))) {
            return false;
        }
        self.reason = Some(Reason::StateFailed(why));
        self.deadline = None;
        true
    }

    /// Whether the deadline has passed at `now`. If it has, it is dropped
    /// (it fires once) and the workers are to be stopped now.
    pub fn deadline_passed(&mut self, now: Instant) -> bool {
        match self.deadline {
            Some(d) if now >= d => {
                self.deadline = None;
                true
            }
            _ => false,
        }
    }

    /// Every listed file is acknowledged. Returns true, once, if the
    /// workers are to be told to drain and exit: not while stopping.
    pub fn finish(&mut self, now: Instant) -> bool {
        if self.reason.is_some() || self.finishing {
            return false;
        }
        self.finishing = true;
        self.deadline = Some(now + FINISH_WITHIN);
        true
    }

    /// Whether a last checkpoint may be written: not after a failure of
    /// the state directory, so the one saved before it stays the one to
    /// resume from.
    pub fn last_checkpoint_allowed(&self) -> bool {
        !matches!(self.reason, Some(Reason::StateFailed(_)))
    }

    /// Whether the run is complete: it finished, did not stop, and the
    /// scheduler agrees that every listed file is done.
    pub fn complete(&self, scheduler_finished: bool) -> bool {
        self.finishing && self.reason.is_none() && scheduler_finished
    }

    /// The process exit code, before any failure to save the last
    /// checkpoint (which makes it [`exit::ERROR`]).
    pub fn exit_code(&self, files_failed: u64) -> i32 {
        match &self.reason {
            Some(r) => r.exit_code(),
            None if files_failed > 0 => exit::FILES_FAILED,
            None => exit::OK,
        }
    }

    /// The run's final state, for coordinator.json.
    pub fn final_state(&self, complete: bool) -> RunState {
        match (&self.reason, complete) {
            (Some(Reason::Signal(_)), _) => RunState::Interrupted,
            (Some(_), _) => RunState::Failed,
            (None, true) => RunState::Finished,
            (None, false) => RunState::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn the_first_signal_stops_gracefully_and_a_second_stops_now() {
        let t0 = Instant::now();
        let mut s = Shutdown::new(GRACE);
        assert!(!s.ending());
        assert_eq!(
            s.on_signal(StopSignal::Interrupt, t0),
            OnSignal::Graceful { began: true }
        );
        assert_eq!(s.signals(), Signals::One);
        assert!(s.stopping());
        assert_eq!(s.reason(), Some(&Reason::Signal(StopSignal::Interrupt)));
        assert_eq!(s.deadline(), Some(t0 + GRACE));
        // Another kind of signal is a second signal all the same, and the
        // first one stays the reason.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(s.on_signal(StopSignal::Terminate, t1), OnSignal::Now);
        assert_eq!(s.on_signal(StopSignal::Hangup, t1), OnSignal::Now);
        assert_eq!(s.signals(), Signals::More);
        assert_eq!(s.reason(), Some(&Reason::Signal(StopSignal::Interrupt)));
        assert_eq!(s.exit_code(0), exit::INTERRUPTED);
    }

    #[test]
    fn a_signal_after_another_stop_keeps_that_stop_and_its_deadline() {
        let t0 = Instant::now();
        let mut s = Shutdown::new(GRACE);
        assert!(s.begin(Reason::AllParked, t0));
        let later = t0 + Duration::from_secs(5);
        assert_eq!(
            s.on_signal(StopSignal::Terminate, later),
            OnSignal::Graceful { began: false }
        );
        assert_eq!(s.reason(), Some(&Reason::AllParked));
        assert_eq!(s.deadline(), Some(t0 + GRACE));
        assert!(!s.begin(Reason::NoSpace("full".into()), later));
        assert_eq!(s.exit_code(0), exit::ALL_PARKED);
        assert_eq!(s.on_signal(StopSignal::Terminate, later), OnSignal::Now);
    }

    #[test]
    fn the_grace_deadline_fires_once_when_reached() {
        let t0 = Instant::now();
        let mut s = Shutdown::new(GRACE);
        assert!(!s.deadline_passed(t0 + GRACE), "no stop, no deadline");
        s.begin(Reason::ListingFailed("page 3: HTTP 500".into()), t0);
        assert!(!s.deadline_passed(t0 + GRACE - Duration::from_millis(1)));
        assert!(s.deadline_passed(t0 + GRACE));
        assert_eq!(s.deadline(), None);
        assert!(!s.deadline_passed(t0 + GRACE * 2), "once");
        assert!(
            s.stopping(),
            "the stop goes on: the workers are stopped now"
        );
    }

    #[test]
    fn a_state_failure_stops_at_once_and_wins_over_any_other_stop() {
        let t0 = Instant::now();
        let mut s = Shutdown::new(GRACE);
        s.on_signal(StopSignal::Interrupt, t0);
        assert!(s.last_checkpoint_allowed());
        assert!(s.state_failed("syncfs: EIO".into()));
        assert_eq!(s.deadline(), None, "no grace");
        assert_eq!(s.reason(), Some(&Reason::StateFailed("syncfs: EIO".into())));
        assert!(!s.last_checkpoint_allowed());
        assert!(!s.state_failed("again".into()), "the first failure counts");
        assert_eq!(s.exit_code(0), exit::ERROR);
        assert_eq!(s.final_state(false), RunState::Failed);
        // A later stop changes nothing.
        assert!(!s.begin(Reason::AllParked, t0));
        assert_eq!(s.reason(), Some(&Reason::StateFailed("syncfs: EIO".into())));
    }

    #[test]
    fn finishing_drains_within_its_own_deadline_and_not_while_stopping() {
        let t0 = Instant::now();
        let mut s = Shutdown::new(GRACE);
        assert!(s.finish(t0));
        assert!(!s.finish(t0), "once");
        assert!(s.ending() && !s.stopping());
        assert_eq!(s.deadline(), Some(t0 + FINISH_WITHIN));
        assert!(s.complete(true));
        assert!(!s.complete(false));
        assert_eq!(s.final_state(true), RunState::Finished);

        let mut stopped = Shutdown::new(GRACE);
        stopped.begin(Reason::AllParked, t0);
        assert!(!stopped.finish(t0), "a stopping run does not finish");
        assert!(!stopped.complete(true));

        // A signal while finishing makes it a stop with the grace deadline.
        assert_eq!(
            s.on_signal(StopSignal::Hangup, t0),
            OnSignal::Graceful { began: true }
        );
        assert_eq!(s.deadline(), Some(t0 + GRACE));
        assert!(!s.complete(true));
        assert_eq!(s.final_state(false), RunState::Interrupted);
        assert_eq!(s.exit_code(0), exit::HANGUP);
    }

    #[tokio::test]
    async fn each_stop_signal_is_read_as_its_own_kind() {
        use nix::sys::signal::{raise, Signal};
        // Installed before any is raised: from then on they are read here
        // instead of ending the test process.
        let mut signals = StopSignals::install().expect("signal handlers");
        for (raised, read) in [
            (Signal::SIGHUP, StopSignal::Hangup),
            (Signal::SIGTERM, StopSignal::Terminate),
            (Signal::SIGINT, StopSignal::Interrupt),
        ] {
            raise(raised).expect("raise");
            let got = tokio::time::timeout(Duration::from_secs(30), signals.recv())
                .await
                .expect("the signal arrives");
            assert_eq!(got, read);
        }
    }

    #[tokio::test]
    async fn the_deadline_sleep_ends_at_the_deadline_and_never_without_one() {
        let soon = Instant::now() + Duration::from_millis(10);
        tokio::time::timeout(Duration::from_secs(30), sleep_until(Some(soon)))
            .await
            .expect("a deadline is reached");
        assert!(Instant::now() >= soon);
        let never = tokio::time::timeout(Duration::from_millis(50), sleep_until(None)).await;
        assert!(never.is_err(), "no deadline, no wake-up");
    }

    #[test]
    fn exit_codes_follow_the_reason_then_the_failed_files() {
        let t0 = Instant::now();
        let s = Shutdown::new(GRACE);
        assert_eq!(s.exit_code(0), exit::OK);
        assert_eq!(s.exit_code(2), exit::FILES_FAILED);
        for (reason, code) in [
            (Reason::Signal(StopSignal::Interrupt), exit::INTERRUPTED),
            (Reason::Signal(StopSignal::Terminate), exit::TERMINATED),
            (Reason::Signal(StopSignal::Hangup), exit::HANGUP),
            (Reason::ListingFailed("x".into()), exit::LISTING_FAILED),
            (Reason::AllParked, exit::ALL_PARKED),
            (Reason::NoSpace("x".into()), exit::NO_SPACE),
            (Reason::StateFailed("x".into()), exit::ERROR),
            (Reason::Incompatible("x".into()), exit::ERROR),
        ] {
            let mut s = Shutdown::new(GRACE);
            s.begin(reason.clone(), t0);
            // A stop's code wins over failed files.
            assert_eq!(s.exit_code(5), code, "{reason:?}");
            let state = s.final_state(false);
            let interrupted = matches!(reason, Reason::Signal(_));
            assert_eq!(state == RunState::Interrupted, interrupted, "{reason:?}");
        }
    }
}
