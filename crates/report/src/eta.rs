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
    /// Names listed and not yet done (acknowledged as ok or failed).
    pub remaining: u64,
    /// Files done per second recently.
    pub files_per_sec: f64,
}

/// The estimate in seconds (or `None`) and how it was made.
///
/// * The run is over: nothing to estimate.
/// * Still listing: the total is unknown, so any estimate would be a guess.
/// * Listed and progressing: remaining names over the recent rate.
/// * Listed but no recent progress: no estimate.
pub fn eta(input: EtaInput) -> (Option<f64>, EtaMethod) {
    if input.over {
        return (None, EtaMethod::Done);
    }
    if !input.listing_done {
        return (None, EtaMethod::NoneListing);
    }
    match bulkget_stats::eta_seconds(input.remaining, input.files_per_sec) {
        Some(s) => (Some(s), EtaMethod::RemainingOverRate),
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
        (None, EtaMethod::RemainingOverRate | EtaMethod::Unknown) => "no ETA".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> EtaInput {
        EtaInput {
            over: false,
            listing_done: true,
            remaining: 1_000,
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
            remaining: 0,
            files_per_sec: 0.0,
            ..input()
        };
        assert_eq!(eta(nothing_left), (Some(0.0), EtaMethod::RemainingOverRate));
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
