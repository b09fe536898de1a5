//! Poison batches across hosts, from JetStream's delivery count alone.
//!
//! Every delivery after the first means that whoever held the batch before
//! did not acknowledge it: its host died (AckWait ran out), or the worker
//! fetching it died and the host gave it back (a nak), or a host stopped
//! and gave it back unfinished. No advisory is needed to know it: the count
//! comes with the message.
//!
//! - A batch delivered a second time (or more) runs **alone**: on a worker
//!   that holds nothing else, so if that worker dies, the death is this
//!   batch's, not its neighbours'.
//! - A batch of several names delivered a fourth time is **split** into up
//!   to [`SPLIT_PARTS`] parts, published as new messages marked as parts
//!   ([`crate::job::PART_HEADER`]); a part runs alone from its first
//!   delivery on. The original is acknowledged once the parts are stored.
//! - A single name delivered a fifth time, that is one whose holder died
//!   four times (three of them at least with the name alone), is
//!   **failed**: "the host or worker fetching it died 4 times".

/// Parts a poison batch is split into.
pub const SPLIT_PARTS: usize = 16;

/// Deaths after which a batch of several names is split.
pub const SPLIT_AFTER_DEATHS: i64 = 3;

/// Deaths after which a single name is failed.
pub const FAIL_AFTER_DEATHS: i64 = 4;

/// The reason recorded for a name failed as poison.
pub const POISON_REASON: &str =
    "the host or worker fetching it died 4 times (the last ones with this name alone)";

/// What to do with a delivered batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fetch it among others.
    Normal,
    /// Fetch it on a worker that holds nothing else.
    Alone,
    /// Publish it again as these parts and acknowledge it.
    Split(Vec<Vec<String>>),
    /// Record its one name as failed and acknowledge it.
    Fail,
}

/// The verdict for a batch of `names` delivered the `delivered`-th time;
/// `part` if it is a part of a split batch.
pub fn verdict(names: &[String], delivered: i64, part: bool) -> Verdict {
    let deaths = delivered.saturating_sub(1);
    if names.len() > 1 && deaths >= SPLIT_AFTER_DEATHS {
        let per = names.len().div_ceil(SPLIT_PARTS);
        return Verdict::Split(names.chunks(per).map(<[String]>::to_vec).collect());
    }
    if names.len() == 1 && deaths >= FAIL_AFTER_DEATHS {
        return Verdict::Fail;
    }
    if deaths >= 1 || part {
        Verdict::Alone
    } else {
        Verdict::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn a_batch_goes_alone_then_splits() {
        let b = names(100);
        assert_eq!(verdict(&b, 1, false), Verdict::Normal);
        assert_eq!(verdict(&b, 2, false), Verdict::Alone);
        assert_eq!(verdict(&b, 3, false), Verdict::Alone);
        match verdict(&b, 4, false) {
            Verdict::Split(parts) => {
                assert!(parts.len() <= SPLIT_PARTS);
                assert_eq!(parts.concat(), b);
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_part_runs_alone_at_once() {
        assert_eq!(verdict(&names(7), 1, true), Verdict::Alone);
    }

    #[test]
    fn a_single_name_fails_after_four_deaths() {
        let one = names(1);
        assert_eq!(verdict(&one, 1, false), Verdict::Normal);
        for d in 2..=4 {
            assert_eq!(verdict(&one, d, false), Verdict::Alone);
            assert_eq!(verdict(&one, d, true), Verdict::Alone);
        }
        assert_eq!(verdict(&one, 5, false), Verdict::Fail);
        assert_eq!(verdict(&one, 5, true), Verdict::Fail);
    }
}
