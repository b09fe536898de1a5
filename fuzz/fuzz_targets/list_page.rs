//! `lister::parse_page` on arbitrary bytes: a list page is the one piece of
//! the server's output the coordinator parses.
//!
//! Holds: no panic, no abort, no unbounded allocation (libFuzzer's
//! `-rss_limit_mb` and `-malloc_limit_mb` catch those); an accepted page
//! never has an empty marker; an error is short (it goes to the terminal and
//! the summary) and not empty.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match bulkget_coordinator::lister::parse_page(data) {
        Ok(page) => {
            assert!(page.next.as_ref().is_none_or(|m| !m.is_empty()));
        }
        Err(e) => {
            assert!(!e.is_empty());
            assert!(e.len() < 400, "{} bytes of error", e.len());
        }
    }
});
