//! Which names get which fault, and the little state transient faults need.
//!
//! Selection is pure: a name's faults follow from a hash of (seed, fault
//! kind, name), so any test can predict them with [`crate::Dataset::faults`]
//! and a rerun injects the same faults. The only mutable state is the number
//! of attempts a name in a transient-fault state has made (and when it was
//! last told to `Retry-After`); an entry exists only while its name is
//! faulted and is removed when the name is finally served, so memory does not
//! grow with the dataset.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::args::ServerArgs;
use crate::content::{mix64, GOLDEN};
use crate::stats::Stats;

/// Every kind of fault the server injects, as counted in
/// [`crate::ServerStats::faults`] under [`FaultKind::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    Error,
    Throttle,
    Reset,
    Truncate,
    Slow,
    Trickle,
    TrickleHead,
    Gone,
    Redirect,
    OffhostRedirect,
    Crash,
    Oversize,
    Liar,
    ListFailOnce,
    ListInvalidJson,
    ListWrongType,
    ListMissingNames,
    ListHtml,
    ListLoop,
    ListHuge,
    ListDuplicates,
    ListNextFile,
    ListTrickle,
    ListLongMarker,
}

impl FaultKind {
    /// Every kind, in the order of the enum.
    pub const ALL: [FaultKind; 24] = [
        FaultKind::Error,
        FaultKind::Throttle,
        FaultKind::Reset,
        FaultKind::Truncate,
        FaultKind::Slow,
        FaultKind::Trickle,
        FaultKind::TrickleHead,
        FaultKind::Gone,
        FaultKind::Redirect,
        FaultKind::OffhostRedirect,
        FaultKind::Crash,
        FaultKind::Oversize,
        FaultKind::Liar,
        FaultKind::ListFailOnce,
        FaultKind::ListInvalidJson,
        FaultKind::ListWrongType,
        FaultKind::ListMissingNames,
        FaultKind::ListHtml,
        FaultKind::ListLoop,
        FaultKind::ListHuge,
        FaultKind::ListDuplicates,
        FaultKind::ListNextFile,
        FaultKind::ListTrickle,
        FaultKind::ListLongMarker,
    ];

    /// The key of this kind in the stats' `faults` map.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Error => "error",
            FaultKind::Throttle => "throttle",
            FaultKind::Reset => "reset",
            FaultKind::Truncate => "truncate",
            FaultKind::Slow => "slow",
            FaultKind::Trickle => "trickle",
            FaultKind::TrickleHead => "trickle_head",
            FaultKind::Gone => "gone",
            FaultKind::Redirect => "redirect",
            FaultKind::OffhostRedirect => "offhost_redirect",
            FaultKind::Crash => "crash",
            FaultKind::Oversize => "oversize",
            FaultKind::Liar => "liar",
            FaultKind::ListFailOnce => "list_fail_once",
            FaultKind::ListInvalidJson => "list_invalid_json",
            FaultKind::ListWrongType => "list_wrong_type",
            FaultKind::ListMissingNames => "list_missing_names",
            FaultKind::ListHtml => "list_html",
            FaultKind::ListLoop => "list_loop",
            FaultKind::ListHuge => "list_huge",
            FaultKind::ListDuplicates => "list_duplicates",
            FaultKind::ListNextFile => "list_next_file",
            FaultKind::ListTrickle => "list_trickle",
            FaultKind::ListLongMarker => "list_long_marker",
        }
    }
}

/// A fault that hits a name on its first `--fault-attempts` requests only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transient {
    /// A 5xx answer with this status; `retry_after` is `Some(1)` for the
    /// 503s that carry `Retry-After: 1`.
    Error {
        status: u16,
        retry_after: Option<u64>,
    },
    /// 429 with `Retry-After: --retry-after`.
    Throttle,
    /// Headers with Content-Length, half the body, then the connection is
    /// aborted.
    Reset,
    /// Content-Length is the file size but only three quarters of the body
    /// are sent before the connection is closed.
    Truncate,
    /// Headers at once, then the body one byte every `--trickle-ms`: each
    /// pause is short, the whole answer takes minutes.
    Trickle,
    /// The whole answer, from the first byte of its headers, one byte every
    /// `--trickle-ms` (and whatever else that connection sends later).
    TrickleHead,
}

/// Everything the server does differently for one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NameFaults {
    /// Always 404, although listed.
    pub gone: bool,
    /// `/get/` answers 307 to `/get-redirected/`.
    pub redirect: bool,
    /// `/get/` answers 302 to another host.
    pub offhost_redirect: bool,
    /// The body always trickles (every attempt).
    pub slow: bool,
    /// Every answer carries `x-bulkget-test-abort: 1`.
    pub crash: bool,
    /// The fault of the name's first attempts, if any.
    pub transient: Option<Transient>,
}

/// The selection of faults: pure functions of the name's hash and its index.
#[derive(Debug, Clone)]
pub(crate) struct FaultPlan {
    salts: [u64; 4],
    /// Cumulative thresholds over one roll, in units of 2^-53: error, then
    /// throttle, reset, truncate, trickle, trickle-head. One roll for all
    /// makes the transient kinds mutually exclusive and each exactly at its
    /// rate.
    transient_upto: [u64; 6],
    slow: u64,
    gone: u64,
    redirect: u64,
    /// The top of the off-host redirect band of the redirect roll, above
    /// `redirect`, so a name gets at most one kind of redirect.
    offhost_upto: u64,
    retry_after: u64,
    crash: CrashSet,
    crash_exact: Vec<String>,
    throttle_exact: Vec<String>,
}

/// Roll numbers 0..3 (the salt index of each independent choice).
const ROLL_TRANSIENT: usize = 0;
const ROLL_SLOW: usize = 1;
const ROLL_GONE: usize = 2;
const ROLL_REDIRECT: usize = 3;

fn threshold(rate: f64) -> u64 {
    (rate.clamp(0.0, 1.0) * (1u64 << 53) as f64) as u64
}

impl FaultPlan {
    pub(crate) fn new(args: &ServerArgs) -> FaultPlan {
        let mut salts = [0; 4];
        for (i, salt) in salts.iter_mut().enumerate() {
            *salt = mix64(args.seed ^ mix64((i as u64 + 1).wrapping_mul(GOLDEN)));
        }
        let mut upto = [0; 6];
        let mut sum = 0.0;
        for (i, rate) in [
            args.error_rate,
            args.throttle_rate,
            args.reset_rate,
            args.truncate_rate,
            args.trickle_rate,
            args.trickle_head_rate,
        ]
        .into_iter()
        .enumerate()
        {
            sum += rate;
            upto[i] = threshold(sum);
        }
        FaultPlan {
            salts,
            transient_upto: upto,
            slow: threshold(args.slow_rate),
            gone: threshold(args.gone_rate),
            redirect: threshold(args.redirect_rate),
            offhost_upto: threshold(args.redirect_rate + args.offhost_redirect_rate),
            retry_after: args.retry_after,
            crash: CrashSet::new(args.seed, args.files, args.crash_names),
            crash_exact: args.crash_name.clone(),
            throttle_exact: args.throttle_name.clone(),
        }
    }

    /// A uniform 53-bit number for (seed, roll, name).
    fn roll(&self, hash: u64, roll: usize) -> u64 {
        mix64(hash ^ self.salts[roll]) >> 11
    }

    /// The faults of a dataset name (`index` is its position in the
    /// dataset) whose stable hash is `hash`.
    pub(crate) fn indexed(&self, name: &str, hash: u64, index: u64) -> NameFaults {
        let t = self.roll(hash, ROLL_TRANSIENT);
        let transient = if self.throttle_exact.iter().any(|n| n == name) {
            Some(Transient::Throttle)
        } else if t < self.transient_upto[0] {
            // The low bits of the roll are independent of its comparison
            // against a threshold far above them, so they pick the flavour.
            let (status, retry_after) = match t & 3 {
                0 => (500, None),
                1 => (502, None),
                2 => (503, None),
                _ => (503, Some(1)),
            };
            Some(Transient::Error {
                status,
                retry_after,
            })
        } else if t < self.transient_upto[1] {
            Some(Transient::Throttle)
        } else if t < self.transient_upto[2] {
            Some(Transient::Reset)
        } else if t < self.transient_upto[3] {
            Some(Transient::Truncate)
        } else if t < self.transient_upto[4] {
            Some(Transient::Trickle)
        } else if t < self.transient_upto[5] {
            Some(Transient::TrickleHead)
        } else {
            None
        };
        NameFaults {
            gone: self.roll(hash, ROLL_GONE) < self.gone,
            redirect: self.roll(hash, ROLL_REDIRECT) < self.redirect,
            offhost_redirect: (self.redirect..self.offhost_upto)
                .contains(&self.roll(hash, ROLL_REDIRECT)),
            slow: self.roll(hash, ROLL_SLOW) < self.slow,
            crash: self.crash.contains(index) || self.is_exact_crash(name),
            transient,
        }
    }

    /// Names outside the dataset proper (hostile, huge, oversize...) get no
    /// hashed faults, only an exact `--crash-name`.
    pub(crate) fn extra(&self, name: &str) -> NameFaults {
        NameFaults {
            crash: self.is_exact_crash(name),
            ..NameFaults::default()
        }
    }

    fn is_exact_crash(&self, name: &str) -> bool {
        !self.crash_exact.is_empty() && self.crash_exact.iter().any(|c| c == name)
    }

    /// The `Retry-After` seconds of a transient fault, if it sends one.
    pub(crate) fn retry_after(&self, t: Transient) -> Option<u64> {
        match t {
            Transient::Error { retry_after, .. } => retry_after,
            Transient::Throttle => Some(self.retry_after),
            Transient::Reset
            | Transient::Truncate
            | Transient::Trickle
            | Transient::TrickleHead => None,
        }
    }
}

/// Exactly `k` of the dataset's `n` indices: those that a seeded affine
/// permutation `i -> (a*i + b) mod n` (with `a` coprime to `n`) maps below
/// `k`. A bijection without a table, so the count is exact and membership
/// costs one multiplication.
#[derive(Debug, Clone)]
struct CrashSet {
    a: u64,
    b: u64,
    n: u64,
    k: u64,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl CrashSet {
    fn new(seed: u64, n: u64, k: u64) -> CrashSet {
        if n == 0 || k == 0 {
            return CrashSet {
                a: 0,
                b: 0,
                n,
                k: 0,
            };
        }
        let mut a = mix64(seed ^ 0x6372_6173_682d_6131) % n;
        while gcd(a, n) != 1 {
            a = (a + 1) % n;
        }
        let b = mix64(seed ^ 0x6372_6173_682d_6232) % n;
        CrashSet { a, b, n, k }
    }

    fn contains(&self, index: u64) -> bool {
        self.k != 0
            && index < self.n
            && ((self.a as u128 * index as u128 + self.b as u128) % self.n as u128) < self.k as u128
    }
}

/// What a request of a name with a transient fault should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// Inject the fault this time.
    Fault,
    /// The name has had its faulted attempts: serve it.
    Serve,
}

#[derive(Debug)]
struct NameState {
    attempts: u32,
    /// When the last `Retry-After` answer was sent, and what it said.
    retry_after: Option<(Instant, Duration)>,
}

/// Attempt counts of the names currently in a transient-fault state,
/// sharded by name hash so that concurrent requests rarely share a lock.
/// Names without a transient fault never get here.
pub(crate) struct Attempts {
    limit: u32,
    shards: Box<[Mutex<HashMap<String, NameState>>]>,
}

const SHARDS: usize = 64;

impl Attempts {
    pub(crate) fn new(limit: u32) -> Attempts {
        Attempts {
            limit,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Records one request of `name` (hash `hash`) at `now` and decides
    /// whether it is faulted. A faulted answer that carries `Retry-After:
    /// retry_after` seconds is remembered, so that the gap to the name's next
    /// request can be checked against it (and counted in `stats`).
    pub(crate) fn request(
        &self,
        name: &str,
        hash: u64,
        now: Instant,
        retry_after: Option<u64>,
        stats: &Stats,
    ) -> Attempt {
        let shard = &self.shards[(hash >> 58) as usize % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let state = match map.get_mut(name) {
            Some(state) => state,
            None => map.entry(name.to_owned()).or_insert(NameState {
                attempts: 0,
                retry_after: None,
            }),
        };
        if let Some((sent, asked)) = state.retry_after.take() {
            stats.retry_after_gap(now.saturating_duration_since(sent), asked);
        }
        if state.attempts < self.limit {
            state.attempts += 1;
            if let Some(secs) = retry_after {
                state.retry_after = Some((now, Duration::from_secs(secs)));
            }
            Attempt::Fault
        } else {
            map.remove(name);
            Attempt::Serve
        }
    }

    /// Names currently in a faulted state (for tests of the memory bound).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: ServerArgs) -> FaultPlan {
        FaultPlan::new(&args)
    }

    fn names(n: u64) -> impl Iterator<Item = (u64, String, u64)> {
        (0..n).map(|i| {
            let name = format!("file-{i:010}");
            let h = bulkget_names::stable_hash(&name);
            (i, name, h)
        })
    }

    #[test]
    fn selection_is_deterministic_and_near_the_rate() {
        let args = ServerArgs {
            error_rate: 0.05,
            throttle_rate: 0.10,
            reset_rate: 0.02,
            truncate_rate: 0.03,
            trickle_rate: 0.02,
            trickle_head_rate: 0.01,
            slow_rate: 0.01,
            gone_rate: 0.04,
            redirect_rate: 0.2,
            ..ServerArgs::default()
        };
        let (a, b) = (plan(args.clone()), plan(args));
        let n = 100_000;
        let mut counts = [0u32; 9];
        for (i, name, h) in names(n) {
            let f = a.indexed(&name, h, i);
            assert_eq!(f, b.indexed(&name, h, i));
            match f.transient {
                Some(Transient::Error { .. }) => counts[0] += 1,
                Some(Transient::Throttle) => counts[1] += 1,
                Some(Transient::Reset) => counts[2] += 1,
                Some(Transient::Truncate) => counts[3] += 1,
                Some(Transient::Trickle) => counts[7] += 1,
                Some(Transient::TrickleHead) => counts[8] += 1,
                None => {}
            }
            counts[4] += f.slow as u32;
            counts[5] += f.gone as u32;
            counts[6] += f.redirect as u32;
        }
        let expected = [0.05, 0.10, 0.02, 0.03, 0.01, 0.04, 0.2, 0.02, 0.01];
        for (count, rate) in counts.iter().zip(expected) {
            let want = rate * n as f64;
            // Five standard deviations of a binomial count.
            let slack = 5.0 * (want * (1.0 - rate)).sqrt();
            assert!(
                (*count as f64 - want).abs() < slack,
                "{count} vs {want} (rate {rate})"
            );
        }
    }

    #[test]
    fn the_seed_changes_the_selection() {
        let at = |seed| {
            plan(ServerArgs {
                throttle_rate: 0.5,
                seed,
                ..ServerArgs::default()
            })
        };
        let (a, b) = (at(1), at(2));
        let differ = names(1000)
            .filter(|(i, name, h)| a.indexed(name, *h, *i) != b.indexed(name, *h, *i))
            .count();
        assert!(differ > 300, "{differ}");
    }

    #[test]
    fn error_flavours_all_occur() {
        let p = plan(ServerArgs {
            error_rate: 1.0,
            ..ServerArgs::default()
        });
        let mut seen = std::collections::HashSet::new();
        for (i, name, h) in names(200) {
            if let Some(Transient::Error {
                status,
                retry_after,
            }) = p.indexed(&name, h, i).transient
            {
                seen.insert((status, retry_after));
            }
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
    }

    #[test]
    fn off_host_redirects_come_at_their_rate_and_never_with_a_same_host_one() {
        let p = plan(ServerArgs {
            redirect_rate: 0.2,
            offhost_redirect_rate: 0.1,
            ..ServerArgs::default()
        });
        let (mut same, mut off) = (0, 0);
        for (i, name, h) in names(10_000) {
            let f = p.indexed(&name, h, i);
            assert!(!(f.redirect && f.offhost_redirect), "{name}");
            same += f.redirect as u32;
            off += f.offhost_redirect as u32;
        }
        assert!((1800..2200).contains(&same), "{same}");
        assert!((850..1150).contains(&off), "{off}");
        let all = plan(ServerArgs {
            offhost_redirect_rate: 1.0,
            ..ServerArgs::default()
        });
        assert!(names(100).all(|(i, name, h)| all.indexed(&name, h, i).offhost_redirect));
    }

    #[test]
    fn a_throttle_name_is_throttled_and_no_other() {
        let p = plan(ServerArgs {
            throttle_name: vec!["file-0000000007".into()],
            ..ServerArgs::default()
        });
        for (i, name, h) in names(100) {
            let expected = (i == 7).then_some(Transient::Throttle);
            assert_eq!(p.indexed(&name, h, i).transient, expected, "{name}");
        }
    }

    #[test]
    fn crash_set_has_exactly_k_members() {
        for (n, k) in [(1, 1), (10, 3), (1000, 7), (1024, 1000), (999, 0), (5, 9)] {
            let set = CrashSet::new(3, n, k);
            let count = (0..n).filter(|&i| set.contains(i)).count() as u64;
            assert_eq!(count, k.min(n), "n={n} k={k}");
        }
    }

    #[test]
    fn attempts_fault_first_then_serve_and_forget() {
        let stats = Stats::default();
        let attempts = Attempts::new(2);
        let now = Instant::now();
        let h = 42;
        assert_eq!(attempts.request("a", h, now, None, &stats), Attempt::Fault);
        assert_eq!(attempts.request("a", h, now, None, &stats), Attempt::Fault);
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts.request("a", h, now, None, &stats), Attempt::Serve);
        assert_eq!(attempts.len(), 0);
    }

    #[test]
    fn retry_after_gaps_are_checked() {
        let stats = Stats::default();
        let attempts = Attempts::new(1);
        let t0 = Instant::now();
        attempts.request("early", 1, t0, Some(1), &stats);
        attempts.request("early", 1, t0 + Duration::from_millis(300), None, &stats);
        attempts.request("late", 2, t0, Some(1), &stats);
        attempts.request("late", 2, t0 + Duration::from_millis(1500), None, &stats);
        let s = stats.snapshot();
        assert_eq!(s.retry_after_violations, 1);
        assert_eq!(s.retry_after_min_gap_ms, Some(300));
    }
}
