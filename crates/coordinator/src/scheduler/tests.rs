use super::*;

fn names(prefix: &str, n: usize) -> Names {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// The names of a batch or a page, owned.
fn owned(names: &Names) -> Vec<String> {
    names.iter().map(String::from).collect()
}

/// Acknowledges every batch on `shard` as all ok; returns the files acked.
fn ack_all(s: &mut Scheduler, shard: usize) -> u64 {
    let ids: Vec<(BatchId, usize)> = s.shards[shard]
        .outstanding
        .values()
        .map(|b| (b.id, b.names.len()))
        .collect();
    let mut n = 0;
    for (id, len) in ids {
        s.batch_done(shard, id, len as u32, 0, len as u64 * 100, vec![])
            .unwrap();
        n += len as u64;
    }
    n
}

fn sched(shards: usize) -> Scheduler {
    let mut s = Scheduler::new(shards, 2, 10, ListPosition::Start);
    for i in 0..shards {
        s.set_available(i, true);
    }
    s
}

/// Runs `s` to the end on one shard, acking everything; returns the names
/// that were sent.
fn drain(s: &mut Scheduler) -> Vec<String> {
    let mut sent = Vec::new();
    loop {
        let mut any = false;
        while let Some((_, b)) = s.assign() {
            sent.extend(owned(&b.names));
            any = true;
        }
        for shard in 0..s.shards.len() {
            ack_all(s, shard);
        }
        if !any {
            return sent;
        }
    }
}

#[test]
fn pages_are_cut_into_batches_that_never_span_pages() {
    let mut s = sched(1);
    s.add_page(names("a", 25), Some("m1".into()));
    s.add_page(names("b", 5), None);
    let sizes: Vec<usize> = s.pending.iter().map(|b| b.names.len()).collect();
    assert_eq!(sizes, vec![10, 10, 5, 5]);
}

#[test]
fn windows_bound_each_shard_and_the_emptiest_shard_goes_first() {
    let mut s = sched(2);
    s.add_page(names("a", 100), None);
    let mut got = Vec::new();
    while let Some((shard, _)) = s.assign() {
        got.push(shard);
    }
    assert_eq!(got, vec![0, 1, 0, 1]);
    assert_eq!(s.in_flight(0), 2);
    assert_eq!(s.pending_len(), 6);
    let id = *s.shards[1].outstanding.keys().next().unwrap();
    s.batch_done(1, id, 10, 0, 1000, vec![]).unwrap();
    assert_eq!(s.assign().map(|(shard, _)| shard), Some(1));
}

#[test]
fn unavailable_shards_get_nothing() {
    let mut s = sched(2);
    s.set_available(0, false);
    s.add_page(names("a", 40), None);
    while let Some((shard, _)) = s.assign() {
        assert_eq!(shard, 1);
    }
    assert_eq!(s.in_flight(1), 2);
}

#[test]
fn the_position_is_the_earliest_page_not_fully_done() {
    let mut s = sched(1);
    assert_eq!(s.snapshot().position, ListPosition::Start);
    s.add_page(names("a", 10), Some("m1".into()));
    s.add_page(names("b", 10), Some("m2".into()));
    let first = s.assign().unwrap().1.id;
    let second = s.assign().unwrap().1.id;
    // The second page completes first: the position stays, and the
    // checkpoint records the second page as complete.
    s.batch_done(0, second, 10, 0, 1000, vec![]).unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.position, ListPosition::Start);
    assert_eq!(snap.done_after.complete.len(), 1);
    assert_eq!(snap.done_after.complete[0].first, 1);
    assert_eq!(snap.totals.files_ok, 10);
    assert_eq!(snap.totals.pages_done, 0);
    s.batch_done(0, first, 10, 0, 1000, vec![]).unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.position, ListPosition::Marker("m2".into()));
    assert_eq!(snap.done_after, DoneAfter::default());
    assert_eq!(
        (
            snap.totals.files_ok,
            snap.totals.pages_done,
            snap.totals.names_listed
        ),
        (20, 2, 20)
    );
    assert!(!s.is_finished());
}

#[test]
fn unsafe_names_fail_at_once_and_empty_pages_complete() {
    let mut s = sched(1);
    let failures = s.add_page(["../x", "/abs", ""].iter().collect(), None);
    assert_eq!(failures.len(), 3);
    assert!(failures[0].reason.starts_with("unsafe name"));
    assert!(s.is_finished());
    let snap = s.snapshot();
    assert_eq!(snap.position, ListPosition::Done);
    assert_eq!(
        snap.totals,
        Totals {
            files_failed: 3,
            names_listed: 3,
            pages_done: 1,
            ..Totals::default()
        }
    );
}

#[test]
fn a_crash_requeues_at_the_front_and_counts_each_file_once() {
    let mut s = sched(2);
    s.add_page(names("a", 40), None);
    while s.assign().is_some() {}
    assert_eq!(s.pending_len(), 0);
    s.shard_down(0);
    assert_eq!(s.pending_len(), 2);
    assert!(s.pending.iter().all(|b| b.crashes == 1));
    ack_all(&mut s, 1);
    s.set_available(0, true);
    // Suspects go one at a time to shards holding nothing else.
    let (a, _) = s.assign().unwrap();
    let (b, _) = s.assign().unwrap();
    assert_ne!(a, b);
    assert!(s.assign().is_none());
    ack_all(&mut s, 0);
    ack_all(&mut s, 1);
    assert!(s.is_finished());
    assert_eq!(s.snapshot().totals.files_ok, 40);
    assert_eq!(s.live_totals().files_ok, 40);
}

#[test]
fn a_poison_name_is_isolated_and_failed_and_the_rest_succeed() {
    let poison = "a137";
    let mut s = Scheduler::new(2, 4, 256, ListPosition::Start);
    s.set_available(0, true);
    s.set_available(1, true);
    s.add_page(names("a", 256), None);
    let mut crashes = 0;
    let mut failures = Vec::new();
    let mut ok = 0u64;
    for _ in 0..1000 {
        while s.assign().is_some() {}
        // Each shard: crash if it holds the poison name, else ack all.
        for shard in 0..2 {
            let holds = s.shards[shard]
                .outstanding
                .values()
                .any(|b| b.names.iter().any(|n| n == poison));
            if holds {
                crashes += 1;
                failures.extend(s.shard_down(shard));
                s.set_available(shard, true);
            } else {
                ok += ack_all(&mut s, shard);
            }
        }
        if s.is_finished() {
            break;
        }
    }
    assert!(s.is_finished());
    assert_eq!(ok, 255);
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].name, poison);
    assert_eq!(failures[0].reason, CRASH_REASON);
    assert!(crashes <= 5, "{crashes} crashes to isolate one name");
    let t = s.snapshot().totals;
    assert_eq!((t.files_ok, t.files_failed), (255, 1));
}

#[test]
fn unknown_acknowledgements_are_refused() {
    let mut s = sched(1);
    assert!(s.batch_done(0, 99, 1, 0, 1, vec![]).is_none());
}

#[test]
fn split_is_even_complete_and_keeps_indices_with_names() {
    let parts = split(names("x", 35), (0..35).collect(), 16);
    assert_eq!(parts.len(), 16);
    assert_eq!(parts.iter().map(|p| p.0.len()).sum::<usize>(), 35);
    assert!(parts.iter().all(|p| p.0.len() == 2 || p.0.len() == 3));
    for (names, idx) in &parts {
        for (n, i) in names.iter().zip(idx) {
            assert_eq!(n, format!("x{i}"));
        }
    }
    assert_eq!(split(names("x", 3), vec![0, 1, 2], 16).len(), 3);
}

#[test]
fn repeats_of_this_page_or_the_previous_are_fetched_and_counted_once() {
    let mut s = Scheduler::new(1, 100, 10, ListPosition::Start);
    s.set_available(0, true);
    s.add_page(names("a", 25), Some("m1".into()));
    // The previous page again, a repeat within the page, then new names.
    let mut second = owned(&names("a", 25));
    second.extend(owned(&names("b", 5)));
    second.push("b0".into());
    s.add_page(second.iter().collect(), Some("m2".into()));
    // A page that repeats a name from two pages back: beyond the window,
    // fetched again (harmless) and counted again.
    s.add_page(["a0", "c0"].iter().collect(), None);
    let sent: Vec<String> = s.pending.iter().flat_map(|b| owned(&b.names)).collect();
    let mut expected = owned(&names("a", 25));
    expected.extend(owned(&names("b", 5)));
    expected.extend(["a0".to_string(), "c0".to_string()]);
    assert_eq!(sent, expected);
    assert_eq!(s.repeated(), 26);
    drain(&mut s);
    assert!(s.is_finished());
    let t = s.snapshot().totals;
    assert_eq!((t.files_ok, t.names_listed, t.pages_done), (32, 32, 3));
    assert_eq!(s.live_totals().names_listed, 32);
}

#[test]
fn a_repeated_unsafe_name_fails_once() {
    let mut s = sched(1);
    let failures = s.add_page(["../x", "../x"].iter().collect(), Some("m".into()));
    let more = s.add_page(["../x"].iter().collect(), None);
    assert_eq!(failures.len() + more.len(), 1);
    assert_eq!(s.snapshot().totals.files_failed, 1);
}

/// The heart of resume: a straggling batch on the first page while later
/// pages complete. The checkpoint says exactly what is done, and a resumed
/// scheduler fetches only the rest, counting every file once.
#[test]
fn a_resume_fetches_only_what_was_not_done_however_far_a_straggler_fell_behind() {
    let pages: Vec<Names> = (0..6).map(|p| names(&format!("p{p}-"), 25)).collect();
    let markers = |p: usize| {
        if p < 5 {
            Some(format!("m{}", p + 1))
        } else {
            None
        }
    };
    let mut s = Scheduler::new(2, 100, 10, ListPosition::Start);
    s.set_available(0, true);
    s.set_available(1, true);
    for (p, n) in pages.iter().enumerate() {
        s.add_page(n.clone(), markers(p));
    }
    // The first batch (page 0) straggles on shard 0; everything else is
    // acknowledged except one batch of page 3, in flight when we "crash".
    let mut straggler = None;
    let mut in_flight_p3 = None;
    while let Some((shard, b)) = s.assign() {
        let (id, first) = (b.id, b.names[0].to_string());
        if straggler.is_none() {
            straggler = Some((shard, id));
        } else if first == "p3-10" {
            in_flight_p3 = Some((shard, id));
        } else {
            let n = s.shards[shard].outstanding[&id].names.len() as u32;
            s.batch_done(shard, id, n, 0, n as u64, vec![]).unwrap();
        }
    }
    let _ = (straggler, in_flight_p3);
    let snap = s.snapshot();
    assert_eq!(snap.position, ListPosition::Start);
    let runs: Vec<(u64, usize)> = snap
        .done_after
        .complete
        .iter()
        .map(|r| (r.first, r.fingerprints.len()))
        .collect();
    assert_eq!(runs, vec![(1, 2), (4, 2)]);
    assert_eq!(
        snap.done_after.partial.len(),
        2,
        "pages 0 and 3 are partly done"
    );
    assert_eq!(snap.totals.files_ok, 150 - 10 - 10);

    // Resume from that checkpoint: the same pages are listed again.
    let mut r = Scheduler::new(2, 100, 10, snap.position.clone())
        .resume(snap.totals, snap.done_after.clone());
    r.set_available(0, true);
    r.set_available(1, true);
    for (p, n) in pages.iter().enumerate() {
        r.add_page(n.clone(), markers(p));
    }
    let mut sent = drain(&mut r);
    sent.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("p0-{i}")).collect();
    expected.extend((10..20).map(|i| format!("p3-{i}")));
    expected.sort();
    assert_eq!(
        sent, expected,
        "only the straggler and the in-flight batch are fetched again"
    );
    assert!(r.is_finished());
    let t = r.snapshot().totals;
    assert_eq!((t.files_ok, t.names_listed, t.pages_done), (150, 150, 6));
    assert_eq!(r.pages_changed(), 0);
}

#[test]
fn a_page_listed_differently_on_resume_is_fetched_whole() {
    let mut s = sched(1);
    s.add_page(names("a", 20), Some("m1".into()));
    s.add_page(names("b", 20), None);
    let _first = s.assign().unwrap().1.id;
    let second = s.assign().unwrap().1.id;
    s.batch_done(0, second, 10, 0, 10, vec![]).unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.done_after.partial.len(), 1);
    let mut r = Scheduler::new(1, 2, 10, snap.position).resume(snap.totals, snap.done_after);
    r.set_available(0, true);
    r.add_page(names("a", 21), None);
    assert_eq!(r.pages_changed(), 1);
    assert_eq!(drain(&mut r).len(), 21);
}

#[test]
fn fingerprints_differ_for_similar_names() {
    let mut seen = HashSet::new();
    for i in 0..100_000 {
        assert!(seen.insert(fingerprint(&format!("file-{i:010}"))));
    }
    assert_ne!(fingerprint("ab"), fingerprint("ba"));
    assert_ne!(fingerprint(""), fingerprint("\0"));
}

#[test]
fn affinity_sends_each_name_to_its_home_shard_even_after_a_crash() {
    let mut s = Scheduler::new(3, 4, 8, ListPosition::Start).with_affinity(true);
    for i in 0..3 {
        s.set_available(i, true);
    }
    s.add_page(names("a", 60), None);
    let mut homes = HashMap::new();
    while let Some((shard, b)) = s.assign() {
        for n in owned(&b.names) {
            assert_eq!(s.home_of(&n), shard, "{n} went to shard {shard}");
            homes.insert(n, shard);
        }
    }
    assert!(
        homes.values().collect::<HashSet<_>>().len() == 3,
        "names spread over every shard"
    );
    // Shard 1 dies: its batches wait for it, the other shards are not
    // given them, and they go back to shard 1 once it is up again.
    s.shard_down(1);
    ack_all(&mut s, 0);
    ack_all(&mut s, 2);
    while let Some((shard, _)) = s.assign() {
        assert_ne!(shard, 1);
    }
    assert!(s.pending.iter().all(|b| b.home == Some(1)));
    s.set_available(1, true);
    let mut sent = Vec::new();
    while let Some((shard, b)) = s.assign() {
        assert_eq!(shard, 1);
        sent.extend(owned(&b.names));
        ack_all(&mut s, 1);
    }
    assert!(!sent.is_empty());
    assert!(sent.iter().all(|n| homes[n] == 1));
    drain(&mut s);
    assert!(s.is_finished());
    assert_eq!(s.snapshot().totals.files_ok, 60);
}

#[test]
fn a_parked_shards_work_goes_anywhere() {
    let mut s = Scheduler::new(2, 4, 8, ListPosition::Start).with_affinity(true);
    s.set_available(0, true);
    s.add_page(names("a", 40), None);
    // Shard 1 never comes up and is parked.
    while s.assign().is_some() {}
    assert!(s.pending_len() > 0);
    s.park(1);
    let sent = drain(&mut s);
    assert!(s.is_finished());
    assert!(!sent.is_empty());
    assert_eq!(s.snapshot().totals.files_ok, 40);
}

#[test]
fn a_waiting_suspect_is_not_starved_by_the_work_behind_it() {
    let mut s = Scheduler::new(1, 2, 10, ListPosition::Start);
    s.set_available(0, true);
    s.add_page(names("a", 20), Some("m".into()));
    while s.assign().is_some() {}
    s.shard_down(0);
    s.set_available(0, true);
    s.add_page(names("b", 100), None);
    // The two suspects go first, one at a time, each alone on the shard.
    for _ in 0..2 {
        let (_, b) = s.assign().unwrap();
        assert!(b.names[0].starts_with('a'));
        assert!(s.assign().is_none(), "nothing joins a suspect");
        ack_all(&mut s, 0);
    }
    let (_, b) = s.assign().unwrap();
    assert!(b.names[0].starts_with('b'));
}

#[test]
fn a_stalled_batch_leaves_the_window_and_counts_its_done_names_at_once() {
    // Window 2, batches of 10, one shard.
    let mut s = sched(1);
    s.add_page(names("a", 30), None);
    let first = s.assign().unwrap().1.id;
    s.assign().unwrap();
    assert!(s.assign().is_none(), "the window is full");

    // Seven names done, three (positions 1, 4, 9) waiting on Retry-After.
    let failed = Failure::new("a2", "HTTP 404", Some(404));
    let recorded = s
        .batch_stalled(0, first, 6, 0, 600, vec![failed.clone()], &[1, 4, 9])
        .unwrap();
    assert_eq!(recorded, vec![failed]);
    assert_eq!((s.stalled(0), s.in_flight(0)), (1, 2));
    let live = s.live_totals();
    assert_eq!((live.files_ok, live.files_failed, live.bytes), (6, 1, 600));
    // The stall freed a window place: the third batch goes out.
    assert!(s.assign().is_some());
    assert!(s.assign().is_none());

    // The batch now holds only the waiting names, and its BatchDone counts
    // only those.
    let kept = &s.shards[0].outstanding[&first];
    assert_eq!(owned(&kept.names), vec!["a1", "a4", "a9"]);
    s.batch_done(0, first, 3, 0, 300, vec![]).unwrap();
    assert_eq!(s.stalled(0), 0);
    let live = s.live_totals();
    assert_eq!((live.files_ok, live.files_failed, live.bytes), (9, 1, 900));
}

#[test]
fn a_checkpoint_after_a_stall_skips_exactly_the_names_done() {
    let mut s = sched(1);
    s.add_page(names("a", 10), Some("m1".into()));
    let id = s.assign().unwrap().1.id;
    s.batch_stalled(0, id, 8, 0, 800, vec![], &[0, 5]).unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.position, ListPosition::Start);
    assert_eq!(snap.totals.files_ok, 8);
    assert_eq!(snap.done_after.partial.len(), 1);

    // A resume from this checkpoint fetches the two waiting names only.
    let mut r = Scheduler::new(1, 2, 10, snap.position).resume(snap.totals, snap.done_after);
    r.set_available(0, true);
    r.add_page(names("a", 10), Some("m1".into()));
    assert_eq!(drain(&mut r), vec!["a0", "a5"]);
    assert_eq!(r.live_totals().files_ok, 10);
}

#[test]
fn a_crash_after_a_stall_puts_back_only_the_waiting_names() {
    let mut s = sched(1);
    s.add_page(names("a", 10), None);
    let id = s.assign().unwrap().1.id;
    s.batch_stalled(0, id, 9, 0, 900, vec![], &[7]).unwrap();
    s.shard_down(0);
    assert_eq!(s.stalled(0), 0);
    s.set_available(0, true);
    assert_eq!(drain(&mut s), vec!["a7"]);
    let live = s.live_totals();
    assert_eq!((live.files_ok, live.files_failed), (10, 0));
    assert!(s.is_finished());
}

#[test]
fn stall_reports_that_do_not_fit_the_batch_are_refused() {
    let mut s = sched(1);
    s.add_page(names("a", 10), None);
    let id = s.assign().unwrap().1.id;
    // Unknown batch, a position out of range, positions not increasing,
    // nothing waiting, and counts that do not add up to the names done.
    assert!(s
        .batch_stalled(0, id + 100, 9, 0, 0, vec![], &[1])
        .is_none());
    assert!(s.batch_stalled(0, id, 9, 0, 0, vec![], &[10]).is_none());
    assert!(s.batch_stalled(0, id, 8, 0, 0, vec![], &[3, 2]).is_none());
    assert!(s.batch_stalled(0, id, 8, 0, 0, vec![], &[2, 2]).is_none());
    assert!(s.batch_stalled(0, id, 0, 0, 0, vec![], &[0; 12]).is_none());
    assert!(s.batch_stalled(0, id, 10, 0, 0, vec![], &[]).is_none());
    assert!(s.batch_stalled(0, id, 5, 0, 0, vec![], &[1]).is_none());
    // Nothing was counted by the refused reports; a fitting one is taken
    // once, and a second report for the same batch is refused.
    assert_eq!(s.live_totals().files_ok, 0);
    assert!(s.batch_stalled(0, id, 9, 0, 0, vec![], &[1]).is_some());
    assert!(s.batch_stalled(0, id, 0, 0, 0, vec![], &[0]).is_none());
    assert_eq!(s.live_totals().files_ok, 9);
}

/// A refresh's names found in the sink are done, counted apart from the
/// files fetched, in stall reports and acknowledgements alike, and carried
/// by the checkpoint.
#[test]
fn names_already_present_are_done_and_counted_apart() {
    let mut s = sched(1);
    s.add_page(names("a", 10), None);
    let id = s.assign().unwrap().1.id;
    // 3 fetched and 5 present of the 8 done: the counts must add up.
    assert!(s.batch_stalled(0, id, 3, 6, 300, vec![], &[1, 2]).is_none());
    assert!(s.batch_stalled(0, id, 3, 5, 300, vec![], &[1, 2]).is_some());
    s.batch_done(0, id, 1, 1, 100, vec![]).unwrap();
    let live = s.live_totals();
    assert_eq!((live.files_ok, live.files_present, live.bytes), (4, 6, 400));
    assert!(s.is_finished());
    assert_eq!(s.snapshot().totals.files_present, 6);
}

#[test]
fn at_most_max_stalled_batches_leave_the_window() {
    let mut s = Scheduler::new(1, 1, 1, ListPosition::Start);
    s.set_available(0, true);
    s.add_page(names("a", MAX_STALLED + 2), None);
    for _ in 0..MAX_STALLED {
        let id = s.assign().unwrap().1.id;
        // A one-name batch stalls with its name waiting.
        s.batch_stalled(0, id, 0, 0, 0, vec![], &[0]).unwrap();
    }
    assert_eq!(s.stalled(0), MAX_STALLED);
    // The next stalled batch keeps its place: the window (1) stays full.
    let id = s.assign().unwrap().1.id;
    s.batch_stalled(0, id, 0, 0, 0, vec![], &[0]).unwrap();
    assert_eq!(s.stalled(0), MAX_STALLED);
    assert!(s.assign().is_none());
    // Once it is done the last batch goes out.
    s.batch_done(0, id, 1, 0, 100, vec![]).unwrap();
    assert!(s.assign().is_some());
}

/// Page `p` of a listing of 25-name pages; from page `changed_from` on, the
/// names are those of another listing (same markers, same lengths).
fn listing_page(p: usize, changed_from: usize) -> Names {
    if p >= changed_from {
        names(&format!("new-p{p}-"), 25)
    } else {
        names(&format!("p{p}-"), 25)
    }
}

/// Issue 11, point 1: a straggler on page 0 keeps the position there while
/// pages 1 to 5 complete; on resume the server lists pages 2 on with other
/// names, same lengths and markers. Before page fingerprints the resume
/// skipped those pages by position and length alone and never fetched
/// their new names.
#[test]
fn a_resume_never_skips_a_name_of_a_page_listed_differently() {
    let markers = |p: usize| (p < 5).then(|| format!("m{}", p + 1));
    let mut s = Scheduler::new(1, 100, 10, ListPosition::Start);
    s.set_available(0, true);
    for p in 0..6 {
        s.add_page(listing_page(p, usize::MAX), markers(p));
    }
    // Everything is acknowledged but the first batch of page 0.
    let straggler = s.assign().unwrap().1.id;
    while let Some((_, b)) = s.assign() {
        let (id, n) = (b.id, b.names.len() as u32);
        s.batch_done(0, id, n, 0, 0, vec![]).unwrap();
    }
    let snap = s.snapshot();
    assert_eq!(snap.position, ListPosition::Start);
    assert_eq!(snap.done_after.pages(), 6, "page 0 partly, 1 to 5 complete");
    let _ = straggler;

    let mut r = Scheduler::new(1, 100, 10, snap.position).resume(snap.totals, snap.done_after);
    r.set_available(0, true);
    for p in 0..6 {
        r.add_page(listing_page(p, 2), markers(p));
    }
    let mut sent = drain(&mut r);
    sent.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("p0-{i}")).collect();
    for p in 2..6 {
        expected.extend(owned(&names(&format!("new-p{p}-"), 25)));
    }
    expected.sort();
    assert_eq!(
        sent, expected,
        "the straggler and every name of pages 2 to 5"
    );
    assert_eq!(r.pages_changed(), 4);
    assert!(r.is_finished());
}

#[test]
fn reordered_added_and_removed_names_make_a_page_changed() {
    let base: Vec<String> = owned(&names("a", 20));
    let mut reordered = base.clone();
    reordered.swap(3, 17);
    let mut added = base.clone();
    added.push("a-new".into());
    let removed = base[..19].to_vec();
    let mut replaced = base.clone();
    replaced[5] = "other".into();
    let fp = |v: &[String]| page_fingerprint(&v.iter().collect());
    for other in [&reordered, &added, &removed, &replaced] {
        assert_ne!(fp(&base), fp(other));
    }
    assert_eq!(fp(&base), fp(&base.clone()));
    // The fingerprint the scheduler records is the same function's.
    let mut s = sched(1);
    s.add_page(base.iter().collect(), None);
    assert_eq!(s.pages[0].fingerprint, fp(&base));

    // A partly done page whose names were reordered: nothing of it is
    // taken as done, although its length is the same.
    let mut s = sched(1);
    s.add_page(base.iter().collect(), None);
    let id = s.assign().unwrap().1.id;
    s.batch_done(0, id, 10, 0, 0, vec![]).unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.done_after.partial.len(), 1);
    let mut r = Scheduler::new(1, 2, 10, snap.position).resume(snap.totals, snap.done_after);
    r.set_available(0, true);
    r.add_page(reordered.iter().collect(), None);
    assert_eq!(r.pages_changed(), 1);
    assert_eq!(drain(&mut r).len(), 20);
}

#[test]
fn checkpoint_fingerprints_are_sixteen_hex_digits_and_read_back() {
    let fp = PageFingerprint(0x00ab_cdef_0123_4567);
    let text = serde_json::to_string(&fp).unwrap();
    assert_eq!(text, "\"00abcdef01234567\"");
    assert_eq!(serde_json::from_str::<PageFingerprint>(&text).unwrap(), fp);
    for bad in [
        "\"abc\"",
        "\"00abcdef0123456g\"",
        "12",
        "\"00abcdef012345678\"",
    ] {
        assert!(
            serde_json::from_str::<PageFingerprint>(bad).is_err(),
            "{bad}"
        );
    }
}

/// Issue 11, point 7: `--batch-size 20000` with long names made a batch
/// over the frame limit, and the coordinator panicked encoding it. Batches
/// are cut by cost too, so every frame about one fits.
#[test]
fn batches_of_long_names_are_cut_so_every_frame_fits() {
    use bulkget_protocol::frame::{encode, encode_batch, MAX_FRAME};
    use bulkget_protocol::ToCoordinator;
    // Safe names of nearly the longest length: 255-byte components.
    let tail = vec!["d".repeat(254); 15].join("/");
    let page: Names = (0..20_000).map(|i| format!("{i:05}/{tail}")).collect();
    assert_eq!(page[0].len(), 3830);
    assert!(bulkget_names::check(&page[0]).is_ok());
    assert!(
        page.text_len() > MAX_FRAME,
        "the page alone is over a frame"
    );
    for affinity in [false, true] {
        let mut s = Scheduler::new(2, 8, 20_000, ListPosition::Start).with_affinity(affinity);
        s.add_page(page.clone(), None);
        let mut total = 0;
        let mut buf = Vec::new();
        for b in &s.pending {
            total += b.names.len();
            let cost: usize = b.names.iter().map(batch_cost).sum();
            assert!(cost <= MAX_BATCH_COST, "{cost}");
            buf.clear();
            encode_batch(b.id, &b.names, &mut buf).unwrap();
            assert!(buf.len() <= MAX_FRAME);
            // Every name failed with the longest reason kept.
            let reason = "r".repeat(bulkget_protocol::MAX_REASON_BYTES);
            let done = ToCoordinator::BatchDone {
                id: b.id,
                ok: 0,
                bytes: 0,
                retries: 0,
                present: 0,
                failures: b
                    .names
                    .iter()
                    .map(|n| Failure::new(n, reason.clone(), Some(503)))
                    .collect(),
            };
            buf.clear();
            encode(&done, &mut buf).unwrap();
        }
        assert_eq!(total, 20_000, "every name is in one batch");
        assert!(s.pending.len() >= 3, "{} batches", s.pending.len());
    }
}

#[test]
fn a_crash_is_blamed_on_a_suspect_only_while_the_shard_holds_it_alone() {
    let mut s = Scheduler::new(2, 4, 10, ListPosition::Start);
    s.set_available(0, true);
    s.set_available(1, true);
    s.add_page(names("a", 40), None);
    while s.assign().is_some() {}
    // Fresh batches: a crash says nothing about any one of them.
    assert!(!s.holds_suspect_alone(0));
    s.shard_down(0);
    s.set_available(0, true);
    // Shard 0's two batches are suspects now: each goes alone to an empty
    // shard, so shard 1 (busy) takes none and shard 0 takes one.
    while s.assign().is_some() {}
    assert!(s.holds_suspect_alone(0));
    assert!(!s.holds_suspect_alone(1));
    assert_eq!(s.in_flight(0), 1);
    // Acknowledged, it no longer stands between the shard and a crash.
    ack_all(&mut s, 0);
    assert!(!s.holds_suspect_alone(0));
    // The second suspect, crashed again: blamed, and split.
    let (shard, _) = s.assign().unwrap();
    assert_eq!(shard, 0);
    assert!(s.holds_suspect_alone(0));
    let requeued = s.requeued();
    s.shard_down(0);
    assert!(!s.holds_suspect_alone(0));
    assert_eq!(s.requeued(), requeued + 1);
    // Split into its ten names, each still suspect.
    assert_eq!(s.pending.iter().filter(|b| b.crashes == 1).count(), 10);
}

#[test]
fn a_poison_name_costs_its_shard_one_unblamed_crash() {
    let poison = "a137";
    let mut s = Scheduler::new(2, 4, 256, ListPosition::Start);
    s.set_available(0, true);
    s.set_available(1, true);
    s.add_page(names("a", 256), None);
    let (mut blamed, mut unblamed) = (0, 0);
    for _ in 0..1000 {
        while s.assign().is_some() {}
        for shard in 0..2 {
            let holds = s.shards[shard]
                .outstanding
                .values()
                .any(|b| b.names.iter().any(|n| n == poison));
            if holds {
                if s.holds_suspect_alone(shard) {
                    blamed += 1;
                } else {
                    unblamed += 1;
                }
                s.shard_down(shard);
                s.set_available(shard, true);
            } else {
                ack_all(&mut s, shard);
            }
        }
        if s.is_finished() {
            break;
        }
    }
    assert!(s.is_finished());
    assert_eq!((unblamed, blamed), (1, 4));
}

fn filter(include: &[&str], exclude: &[&str]) -> Option<NameFilter> {
    Some(
        NameFilter::new(&crate::args::FilterArgs {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap(),
    )
}

#[test]
fn excluded_names_are_never_sent_and_counted_once_across_a_resume() {
    // Page 0: a0..a19; page 1: b0..b19. Keep the a's and b's ending in 1..4,
    // drop a13 and the unsafe "../x" (excluded, so not failed).
    let f = || filter(&["a*", "b[1-4]"], &["a13", "../*"]);
    let mut page0 = names("a", 20);
    page0.push("../x");
    let page1 = names("b", 20);
    let mut s = Scheduler::new(1, 100, 10, ListPosition::Start).with_filter(f());
    s.set_available(0, true);
    assert!(s.add_page(page0.clone(), Some("m1".into())).is_empty());
    s.add_page(page1.clone(), None);
    assert_eq!(s.live_totals().names_excluded, 2 + 16);
    assert_eq!(s.live_totals().names_listed, 19 + 4);
    // Acknowledge page 1's batch only: page 0 stays the position.
    let mut sent = Vec::new();
    let mut page0_batches = Vec::new();
    while let Some((_, b)) = s.assign() {
        sent.extend(owned(&b.names));
        if b.names[0].starts_with('a') {
            page0_batches.push(b.id);
        }
    }
    let mut expected: Vec<String> = (0..20)
        .filter(|&i| i != 13)
        .map(|i| format!("a{i}"))
        .collect();
    expected.extend((1..5).map(|i| format!("b{i}")));
    sent.sort();
    expected.sort();
    assert_eq!(sent, expected);
    let b_batch = *s.shards[0]
        .outstanding
        .keys()
        .find(|id| !page0_batches.contains(id))
        .unwrap();
    s.batch_done(0, b_batch, 4, 0, 4, vec![]).unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.position, ListPosition::Start);
    // Like `names_listed`, the checkpoint counts the exclusions of the
    // pages before its position only: page 1 is after it, and is counted
    // again when the resume lists it.
    assert_eq!(snap.totals.names_excluded, 0);
    assert_eq!(snap.done_after.complete_pages(), 1);

    // The resume lists both pages again; page 1 is skipped whole, and the
    // exclusions of each page end up counted exactly once.
    let mut r = Scheduler::new(1, 100, 10, snap.position.clone())
        .resume(snap.totals, snap.done_after.clone())
        .with_filter(f());
    r.set_available(0, true);
    r.add_page(page0, Some("m1".into()));
    r.add_page(page1, None);
    let mut again = drain(&mut r);
    again.sort();
    let only_a: Vec<String> = expected
        .into_iter()
        .filter(|n| n.starts_with('a'))
        .collect();
    assert_eq!(again, only_a);
    assert!(r.is_finished());
    let t = r.snapshot().totals;
    assert_eq!((t.names_excluded, t.names_listed, t.files_ok), (18, 23, 23));
    assert_eq!(
        t.files_failed, 0,
        "an excluded unsafe name is not a failure"
    );
}
