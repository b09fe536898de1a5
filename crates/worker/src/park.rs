//! Waiting a little before the worker's thread sleeps, so that it wakes to
//! many answers instead of one or two.
//!
//! With pipelining the worker handles an answer in about a microsecond,
//! faster than one server core can send them, so it empties every socket,
//! finds nothing to do, and sleeps in `epoll_wait` until the next answer
//! wakes it: about one wake-up per two files. Each wake-up costs the worker
//! a system call and a context switch, and costs the server too: on one
//! host (and, with interrupts, on any) the sender's CPU runs the receiver's
//! wake-up. wrk at depth 16 waits for a connection's whole batch before it
//! writes again, so it sleeps less often; that is most of the gap between
//! their CPU per request.
//!
//! So when the runtime is about to park the thread and enough requests are
//! in flight that the server has queued work for longer than the wait, the
//! thread first sleeps for a short, bounded time ([`hold_for`]); answers
//! arrive meanwhile and the next `epoll_wait` returns them all at once. It
//! delays nothing the server is waiting for: with [`MIN_IN_FLIGHT`]
//! requests outstanding the server is busy for the whole hold unless it
//! answers more than [`MIN_IN_FLIGHT`] requests in [`MAX_HOLD`] (2 million
//! a second). Each request's round trip grows by at most the hold, capped
//! at a sixteenth of the answers' latency, so a worker bound by latency
//! rather than by CPU loses at most a thirty-second of its rate on
//! average (half a hold per request).
//!
//! The hold is a thread-local `Cell` that the connection tasks set and the
//! runtime's park hook (which runs on the same thread) reads: no atomics
//! on the per-file path.

use std::cell::Cell;
use std::time::Duration;

/// Requests in flight below which the thread never holds: with fewer, a
/// fast server could run out of work during the hold.
pub const MIN_IN_FLIGHT: u64 = 512;

/// The longest hold.
pub const MAX_HOLD: Duration = Duration::from_micros(250);

/// The hold is at most the answers' latency divided by this.
const LATENCY_SHARE: u32 = 16;

thread_local! {
    static HOLD: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    /// Holds so far, for the shard's stats file (`parks_held`).
    static HOLDS: Cell<u64> = const { Cell::new(0) };
}

/// How long the thread holds before it parks, with `in_flight` requests
/// outstanding whose answers take `latency` (smoothed) to come back.
pub fn hold_for(in_flight: u64, latency: Duration) -> Duration {
    if in_flight < MIN_IN_FLIGHT {
        return Duration::ZERO;
    }
    (latency / LATENCY_SHARE).min(MAX_HOLD)
}

/// Sets the hold of this thread (see [`hold_for`]).
pub fn set_hold(hold: Duration) {
    HOLD.set(hold);
}

/// The runtime's park hook: sleeps for this thread's hold, if any.
pub fn before_park() {
    let hold = HOLD.get();
    if !hold.is_zero() {
        HOLDS.set(HOLDS.get() + 1);
        std::thread::sleep(hold);
    }
}

/// How many times this thread has held before parking.
pub fn holds() -> u64 {
    HOLDS.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_requests_in_flight_never_hold() {
        let second = Duration::from_secs(1);
        assert_eq!(hold_for(0, second), Duration::ZERO);
        assert_eq!(hold_for(MIN_IN_FLIGHT - 1, second), Duration::ZERO);
        assert_eq!(hold_for(MIN_IN_FLIGHT, second), MAX_HOLD);
    }

    #[test]
    fn the_hold_is_a_sixteenth_of_the_latency_at_most_and_bounded() {
        let ms = Duration::from_millis(1);
        assert_eq!(
            hold_for(4096, ms),
            Duration::from_micros(62) + Duration::from_nanos(500)
        );
        assert_eq!(hold_for(4096, 10 * ms), MAX_HOLD);
        assert_eq!(hold_for(4096, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_hook_sleeps_for_the_hold_of_its_own_thread_only() {
        set_hold(Duration::from_millis(20));
        let other = std::thread::spawn(|| HOLD.get()).join().unwrap();
        assert_eq!(other, Duration::ZERO);
        let start = std::time::Instant::now();
        before_park();
        assert!(start.elapsed() >= Duration::from_millis(20));
        assert_eq!(holds(), 1);
        set_hold(Duration::ZERO);
        before_park();
        assert_eq!(holds(), 1, "no hold, no count");
    }
}
