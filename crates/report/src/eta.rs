//! The ETA rule, in one place: whether there is an estimate, what it is,
//! and, when there is none, why. The coordinator writes its answer into
//! `coordinator.json` (`eta_seconds`, `eta_method`); the progress lines and
//! `bulkget status` only show what the file says.

use bulkget_stats::schema::EtaMethod;

/// What the ETA rule needs to know about the run at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EtaInput {
    /// The run has ended (an exit code is known).
    pub over: bool,
    /// The last page of the listing has been received, so the number of
    /// files is known.
    pub listing_done: bool,
    /// Names listed so far (to be fetched).
    pub listed: u64,
    /// Files done (acknowledged as ok or failed).
    pub done: u64,
    /// `--expected-files`: how many files the run expects to fetch.
    pub expected: Option<u64>,
    /// Files done per second recently.
    pub files_per_sec: f64,
}

/// The number of files the run will have done at the end, as far as it is
/// known: the names listed once the listing is done; while it goes on,
/// `--expected-files` or the names listed so far, whichever is larger; else
/// unknown. Never fewer than the files done (a resumed run counts files
/// done on pages it has not listed again). The percentage and the bar's
/// length are this total.
pub fn total(listing_done: bool, listed: u64, done: u64, expected: Option<u64>) -> Option<u64> {
    let listed = listed.max(done);
    if listing_done {
        Some(listed)
    } else {
        expected.map(|e| e.max(listed))
    }
}

/// The estimate in seconds (or `None`) and how it was made.
///
/// * The run is over: nothing to estimate.
/// * Still listing, without `--expected-files`: the total is unknown, so
///   any estimate would be a guess.
/// * Still listing, with `--expected-files`: the files expected and not yet
///   done (see [`total`]) over the recent rate.
/// * Listed and progressing: remaining names over the recent rate.
/// * No recent progress: no estimate.
pub fn eta(input: EtaInput) -> (Option<f64>, EtaMethod) {
    if input.over {
        return (None, EtaMethod::Done);
    }
    let Some(total) = total(input.listing_done, input.listed, input.done, input.expected) else {
        return (None, EtaMethod::NoneListing);
    };
    let method = if input.listing_done {
        EtaMethod::RemainingOverRate
    } else {
        EtaMethod::ExpectedOverRate
    };
    match bulkget_stats::eta_seconds(total - input.done, input.files_per_sec) {
        Some(s) => (Some(s), method),
        None => (None, EtaMethod::NoneNoProgress),
    }
}

/// The words after the counts in a progress line: the estimate, or why
/// there is none.
pub fn eta_words(eta_seconds: Option<f64>, method: EtaMethod) -> String {
    match (eta_seconds, method) {
        (Some(s), _) => format!("ETA {}", crate::format::human_duration(s)),
        (None, EtaMethod::NoneListing) => "no ETA while listing".to_string(),
        (None, EtaMethod::NoneNoProgress) => "no ETA: no recent progress".to_string(),
        (None, EtaMethod::Done) => "run over".to_string(),
        (None, EtaMethod::RemainingOverRate | EtaMethod::ExpectedOverRate | EtaMethod::Unknown) => {
            "no ETA".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> EtaInput {
        EtaInput {
            over: false,
            listing_done: true,
            listed: 1_500,
            done: 500,
            expected: None,
            files_per_sec: 100.0,
        }
    }

    #[test]
    fn each_case_has_its_method() {
        assert_eq!(eta(input()), (Some(10.0), EtaMethod::RemainingOverRate));
        let listing = EtaInput {
            listing_done: false,
            ..input()
        };
        assert_eq!(eta(listing), (None, EtaMethod::NoneListing));
        let stuck = EtaInput {
            files_per_sec: 0.0,
            ..input()
        };
        assert_eq!(eta(stuck), (None, EtaMethod::NoneNoProgress));
        let over = EtaInput {
            over: true,
            ..input()
        };
        assert_eq!(eta(over), (None, EtaMethod::Done));
        let nothing_left = EtaInput {
            done: 1_500,
            files_per_sec: 0.0,
            ..input()
        };
        assert_eq!(eta(nothing_left), (Some(0.0), EtaMethod::RemainingOverRate));
    }

    #[test]
    fn expected_files_give_an_eta_while_listing() {
        let listing = EtaInput {
            listing_done: false,
            expected: Some(10_500),
            ..input()
        };
        // 10,500 expected, 500 done, at 100 files/s.
        assert_eq!(eta(listing), (Some(100.0), EtaMethod::ExpectedOverRate));
        // More listed than expected: the listing wins.
        let more = EtaInput {
            expected: Some(1_000),
            ..listing
        };
        assert_eq!(eta(more), (Some(10.0), EtaMethod::ExpectedOverRate));
        let stuck = EtaInput {
            files_per_sec: 0.0,
            ..listing
        };
        assert_eq!(eta(stuck), (None, EtaMethod::NoneNoProgress));
        // Once the listing ends, the count listed is the total, whatever
        // was expected.
        let listed = EtaInput {
            listing_done: true,
            ..listing
        };
        assert_eq!(eta(listed), (Some(10.0), EtaMethod::RemainingOverRate));
    }

    #[test]
    fn the_total_is_known_once_listed_or_expected() {
        assert_eq!(total(false, 100, 10, None), None);
        assert_eq!(total(false, 100, 10, Some(1_000)), Some(1_000));
        assert_eq!(total(false, 2_000, 10, Some(1_000)), Some(2_000));
        assert_eq!(total(true, 100, 10, Some(1_000)), Some(100));
        // A resumed run may have done more than it has listed again.
        assert_eq!(total(true, 100, 150, None), Some(150));
        assert_eq!(total(false, 0, 150, Some(100)), Some(150));
    }

    #[test]
    fn words() {
        assert_eq!(
            eta_words(Some(36.7), EtaMethod::RemainingOverRate),
            "ETA 37s"
        );
        assert_eq!(
            eta_words(None, EtaMethod::NoneListing),
            "no ETA while listing"
        );
        assert_eq!(
            eta_words(None, EtaMethod::NoneNoProgress),
            "no ETA: no recent progress"
        );
    }
}
