//! Tests of loading, rendering and watching, on state directories written
//! by hand.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bulkget_stats::atomic::write_json_atomic;
use bulkget_stats::schema::{
    coordinator_path, shard_path, CoordinatorStats, EtaMethod, Latency, RunState, ShardState,
    ShardStats, ShardSummary, SummaryState, SCHEMA_VERSION, SHARDS_DIR,
};
use bulkget_stats::time::format_rfc3339;
use clap::Parser;

use super::render::WIDTH;
use super::watch::run_status_with;
use super::*;

/// A fixed "now" for every test: 2023-11-14T22:13:20Z.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn ago(secs: u64) -> String {
    format_rfc3339(t0() - Duration::from_secs(secs))
}

fn shard(n: u32, files_ok: u64, updated_secs_ago: u64) -> ShardStats {
    ShardStats {
        schema_version: SCHEMA_VERSION,
        shard: n,
        pid: 40_000 + n,
        generation: n % 2,
        state: ShardState::Running,
        started_at: ago(125),
        updated_at: ago(updated_secs_ago),
        files_ok,
        files_failed: u64::from(n),
        bytes: files_ok * 100,
        retries: 3,
        pipeline_retries: 0,
        pipeline_depth: 1,
        parks_held: 0,
        http_status: BTreeMap::from([("200".to_string(), files_ok), ("503".to_string(), 3)]),
        in_flight: 64,
        open_connections: 64,
        connections_opened: 64 + u64::from(n),
        batches_done: files_ok / 1000,
        batches_stalled: 0,
        latency_ms: Latency {
            p50: 0.5 + f64::from(n),
            p90: 2.0,
            p99: 10.0 + f64::from(n),
            max: 120.0,
        },
        files_per_sec: 1000.0,
        ..ShardStats::default()
    }
}

fn coordinator(state: RunState, shards: u32) -> CoordinatorStats {
    CoordinatorStats {
        schema_version: SCHEMA_VERSION,
        pid: 4242,
        state,
        url: "http://127.0.0.1:8080/".to_string(),
        started_at: ago(125),
        updated_at: ago(0),
        pages_listed: 1_234,
        names_listed: 1_234_000,
        names_excluded: 0,
        expected_files: None,
        current_marker: Some("m-1234".to_string()),
        listing_done: false,
        batches_queued: 12,
        files_ok: 1_000_000,
        files_failed: 12,
        bytes: 100_000_000,
        retries: 1_234,
        files_per_sec: 12_345.6,
        eta_seconds: None,
        eta_method: EtaMethod::NoneListing,
        lister_wait_ms: 1_200,
        batches_requeued: 2,
        pages_changed: 0,
        names_repeated: 0,
        peak_rss_bytes: 50_000_000,
        workers_peak_rss_bytes: 0,
        exit_code: None,
        shards: (0..shards)
            .map(|i| ShardSummary {
                shard: i,
                pid: Some(40_000 + i),
                state: SummaryState::Running,
                batches_in_flight: 4,
                batches_stalled: 0,
                restarts: i % 2,
                idle_ms: 300,
            })
            .collect(),
        ..CoordinatorStats::default()
    }
}

/// `checkpoint.json` as the coordinator writes it.
fn checkpoint(position: serde_json::Value, files_ok: u64, complete: bool) -> serde_json::Value {
    serde_json::json!({
        "schema_version": 2,
        "position": position,
        "totals": {
            "files_ok": files_ok,
            "files_failed": 12,
            "bytes": files_ok * 100,
            "names_listed": files_ok + 12,
            "pages_done": files_ok / 1000,
        },
        "failed_len": 1_234,
        "complete": complete,
        "updated_at": ago(0),
    })
}

/// Writes a run: a coordinator and `shards` shard files, shard 2 stale.
fn fixture(state: RunState, shards: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join(SHARDS_DIR)).unwrap();
    write_json_atomic(&coordinator_path(dir.path()), &coordinator(state, shards)).unwrap();
    for n in 0..shards {
        let updated = if n == 2 { 42 } else { 1 };
        let s = shard(n, 250_000 + u64::from(n), updated);
        write_json_atomic(&shard_path(dir.path(), n), &s).unwrap();
    }
    dir
}

fn args(dir: &Path) -> StatusArgs {
    StatusArgs {
        state_dir: Some(dir.to_path_buf()),
        tty: Some(false),
        ..StatusArgs::default()
    }
}

fn total_row(text: &str) -> Vec<String> {
    text.lines()
        .find(|l| l.starts_with("TOTAL"))
        .expect("a TOTAL row")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn load_sums_and_flags_stale_shards() {
    let dir = fixture(RunState::Listing, 4);
    // Debris a reader must ignore: a writer's temporary file, a stranger.
    fs::write(dir.path().join("shards/shard-01.json.tmp.999"), b"{\"sha").unwrap();
    fs::write(dir.path().join("shards/notes.txt"), b"hello").unwrap();
    let r = load_at(dir.path(), t0()).unwrap();
    assert_eq!(
        r.shards.iter().map(|s| s.shard).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(r.totals.shards, 4);
    assert_eq!(r.totals.files_ok, 1_000_006);
    assert_eq!(r.totals.files_failed, 6);
    assert_eq!(r.totals.bytes, 100_000_600);
    assert_eq!(r.totals.retries, 12);
    assert_eq!(r.totals.in_flight, 256);
    assert_eq!(r.totals.connections_opened, 262);
    assert_eq!(r.totals.restarts, 2);
    assert_eq!(r.totals.files_per_sec, 4000.0);
    assert_eq!(r.totals.http_status["200"], 1_000_006);
    assert_eq!(r.totals.http_status["503"], 12);
    assert_eq!(r.totals.worst_p99_ms, 13.0);
    assert_eq!(r.stale_shards, [2]);
    assert!(!r.coordinator_stale);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(r.checkpoint, None);
}

#[test]
fn render_shows_totals_row_and_stale_flag() {
    let dir = fixture(RunState::Listing, 4);
    let r = load_at(dir.path(), t0()).unwrap();
    let text = render_table(&r, t0());
    println!("{text}");
    assert_eq!(
        total_row(&text),
        [
            "TOTAL", "2", "1.00M", "6", "100.0", "MB", "12", "4,000", "256", "256/262", "3.50",
            "13.0"
        ]
    );
    let stale_row = text
        .lines()
        .find(|l| l.trim_start().starts_with("02 "))
        .unwrap();
    assert!(
        stale_row.contains("STALE") && stale_row.contains("42s"),
        "{stale_row}"
    );
    assert!(text.contains("STALE      no update for over 5s"));
    assert!(text.contains("\n           shard 02, pid 40002, said running, last wrote 42s ago\n"));
    let fresh_row = text
        .lines()
        .find(|l| l.trim_start().starts_with("01 "))
        .unwrap();
    assert!(fresh_row.contains("running") && !fresh_row.contains("STALE"));
    assert!(text.contains("in progress, marker \"m-1234\""));
    assert!(
        text.contains("rate       12,346 files/s, no eta: total unknown until the listing ends\n")
    );
    assert!(
        text.contains("1,000,000 ok + 12 failed of 1,234,000 (81.0 %), 100.0 MB, 1,234 retries\n")
    );
    assert!(text.contains("200: 1,000,006   503: 12"));
    for line in text.lines() {
        assert!(line.chars().count() <= WIDTH, "too wide: {line}");
    }
}

/// The shape of the billion-file run: 16 shards, large counters, 7-digit
/// pids, a long URL and marker. Every line must still fit the width.
#[test]
fn a_billion_file_run_fits_in_100_columns() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join(SHARDS_DIR)).unwrap();
    let mut c = coordinator(RunState::Draining, 16);
    c.url = format!(
        "http://files.example.internal:8080/{}",
        "very/long/".repeat(12)
    );
    c.pages_listed = 1_000_000;
    c.names_listed = 1_000_000_000;
    c.listing_done = true;
    c.current_marker = Some("x".repeat(200));
    c.files_ok = 987_654_321;
    c.files_failed = 12_345;
    c.bytes = 98_765_432_100;
    c.retries = 2_119_876;
    c.files_per_sec = 1_654_321.0;
    c.eta_seconds = Some(7.5);
    c.eta_method = EtaMethod::RemainingOverRate;
    c.shards[4].state = SummaryState::Parked;
    c.shards[4].restarts = 5;
    write_json_atomic(&coordinator_path(dir.path()), &c).unwrap();
    for n in 0..16 {
        let k = u64::from(n);
        let mut s = shard(n, 61_728_395 - k * 37_411, if n == 9 { 17 } else { k % 2 });
        s.pid = 4_194_000 + n * 7;
        s.bytes = s.files_ok * 100;
        s.files_failed = 771 - k * 3;
        s.retries = 123_456 + k * 1_234;
        s.files_per_sec = 103_395.0 - (k * 211) as f64;
        s.connections_opened = 64 + k * 3;
        s.latency_ms.p50 = 0.412 + f64::from(n) * 0.003;
        s.latency_ms.p99 = 9.87 + f64::from(n) * 0.31;
        write_json_atomic(&shard_path(dir.path(), n), &s).unwrap();
    }
    write_json_atomic(&dir.path().join("checkpoint.json"), &{
        let mut cp = checkpoint(
            serde_json::json!({"Marker": "m-00999872"}),
            987_000_000,
            false,
        );
        cp["totals"]["files_failed"] = 12_000.into();
        cp["done_after"] = serde_json::json!({
            "complete": [
                {"first": 1, "fingerprints": ["0123456789abcdef", "fedcba9876543210"]},
                {"first": 4, "fingerprints": ["00000000000000aa"]},
            ],
            "partial": [
                {"offset": 0, "len": 1000, "fingerprint": "00000000000000bb", "done": [u64::MAX, 7]},
                {"offset": 3, "len": 1000, "fingerprint": "00000000000000cc", "done": [1]},
            ],
        });
        cp
    })
    .unwrap();
    let text = render_table(&load_at(dir.path(), t0()).unwrap(), t0());
    println!("{text}");
    for line in text.lines() {
        assert!(line.chars().count() <= WIDTH, "too wide: {line}");
    }
    assert_eq!(total_row(&text)[..2], ["TOTAL", "8"]);
    assert_eq!(total_row(&text)[3], "11,976");
    assert!(text.contains("checkpoint saved 0s ago; a resume lists from marker \"m-00999872\"\n"));
    assert!(text.contains(
        "\n           987,000,000 ok + 12,000 failed, 98.7 GB; 987,000 pages done before it, \
         5 after (2 partly)\n"
    ));
}

#[test]
fn finished_run_flags_nothing_stale() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join(SHARDS_DIR)).unwrap();
    let mut c = coordinator(RunState::Finished, 3);
    c.listing_done = true;
    c.current_marker = None;
    c.exit_code = Some(0);
    c.names_listed = 1_000_012;
    c.eta_seconds = None;
    c.eta_method = EtaMethod::Done;
    c.started_at = ago(725);
    c.updated_at = ago(600); // long over
    c.pages_changed = 2;
    c.names_excluded = 3_456;
    for s in &mut c.shards {
        s.state = SummaryState::Stopped;
        s.pid = None;
    }
    write_json_atomic(&coordinator_path(dir.path()), &c).unwrap();
    for n in 0..3 {
        let mut s = shard(n, 100, 600);
        s.state = ShardState::Exited;
        s.files_per_sec = 0.0;
        write_json_atomic(&shard_path(dir.path(), n), &s).unwrap();
    }
    // Even a shard file that never said "exited" is not stale once the
    // run is over.
    let mut s = shard(3, 100, 900);
    s.state = ShardState::Running;
    write_json_atomic(&shard_path(dir.path(), 3), &s).unwrap();
    write_json_atomic(
        &dir.path().join("checkpoint.json"),
        &checkpoint(serde_json::json!("Done"), 1_000_000, true),
    )
    .unwrap();

    let r = load_at(dir.path(), t0()).unwrap();
    assert!(r.stale_shards.is_empty());
    assert!(!r.coordinator_stale);
    assert_eq!(
        r.checkpoint.as_ref().unwrap()["totals"]["files_ok"],
        1_000_000
    );
    let text = render_table(&r, t0());
    println!("{text}");
    assert!(!text.contains("STALE"), "{text}");
    assert!(text.starts_with("run        finished (exit 0), pid 4242, ran 2m05s"));
    assert!(text.contains(
        "listing    1,234 pages, 1,000,012 names, done; 3,456 excluded; 2 pages listed \
         differently on resume\n"
    ));
    assert!(text.contains("(100.0 %)"));
    assert!(text.contains("rate       12,346 files/s, no eta: run over\n"));
    assert!(text.contains("3 stopped"));
    assert!(text.contains("checkpoint saved 0s ago; the run is complete, nothing to resume\n"));
    assert!(text.contains("\n           1,000,000 ok + 12 failed, 100.0 MB; 1,000 pages\n"));
    assert_eq!(
        total_row(&text),
        ["TOTAL", "2", "400", "6", "40.0", "kB", "12", "1,000", "256", "256/262", "3.50", "13.0"]
    );
    assert_eq!(text.matches(" exited ").count(), 3);
}

#[test]
fn checkpoint_positions_and_a_checkpoint_not_understood() {
    let dir = fixture(RunState::Listing, 1);
    let path = dir.path().join("checkpoint.json");
    let line = |cp: serde_json::Value| {
        write_json_atomic(&path, &cp).unwrap();
        let text = render_table(&load_at(dir.path(), t0()).unwrap(), t0());
        text.lines()
            .find(|l| l.starts_with("checkpoint"))
            .expect("a checkpoint line")
            .to_string()
    };
    assert!(line(checkpoint(serde_json::json!("Start"), 0, false))
        .ends_with("; a resume lists from the first page"));
    assert!(line(checkpoint(serde_json::json!("Done"), 0, false))
        .ends_with("; the listing is done; a resume only fetches what is unacknowledged"));
    // A position a resume would not understand is shown as such, not
    // guessed at: status reads the file with the parser a resume uses.
    assert!(line(checkpoint(serde_json::json!("Sideways"), 0, false))
        .ends_with(", but its content is not understood (see --json)"));
    assert!(line(serde_json::json!({"totals": "many"}))
        .ends_with(", but its content is not understood (see --json)"));
    let mut newer = checkpoint(serde_json::json!("Start"), 0, false);
    newer["schema_version"] = 3.into();
    assert!(line(newer)
        .ends_with(", written by a newer bulkget (checkpoint version 3); not shown (see --json)"));
}

#[test]
fn coordinator_view_overrides_a_dead_workers_file() {
    let dir = fixture(RunState::Listing, 3);
    let mut c = coordinator(RunState::Listing, 4);
    c.shards[1].state = SummaryState::Parked;
    c.shards[1].pid = None;
    c.shards[2].state = SummaryState::Backoff;
    c.updated_at = ago(30);
    write_json_atomic(&coordinator_path(dir.path()), &c).unwrap();
    let r = load_at(dir.path(), t0()).unwrap();
    // Shard 2's file is old, but the coordinator knows it is backing off.
    assert!(r.stale_shards.is_empty());
    assert!(r.coordinator_stale);
    let text = render_table(&r, t0());
    println!("{text}");
    assert!(text.contains("1 parked (01)") && text.contains("1 backoff (02)"));
    let row = |n: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(n))
            .unwrap()
            .to_string()
    };
    assert!(row("01 ").contains("parked"));
    assert!(row("02 ").contains("backoff"));
    // Shard 3 has written nothing yet: a row from the coordinator.
    assert!(row("03 ").contains("running"), "{}", row("03 "));
    assert!(text.contains("listing STALE"));
    assert!(text.contains("STALE      coordinator.json says listing but was last written 30s ago"));
}

#[test]
fn empty_or_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    let e = run_status(&args(dir.path()), &mut out).unwrap_err();
    assert_eq!(e.exit_code(), 1);
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "no bulkget run found in {0} (expected {0}/coordinator.json or {0}/shards/)",
            dir.path().display()
        )),
        "{msg}"
    );
    assert!(out.is_empty());
    // An empty shards/ directory is no run either.
    fs::create_dir(dir.path().join("shards")).unwrap();
    assert!(matches!(
        run_status(&args(dir.path()), &mut out),
        Err(StatusError::NoRun { .. })
    ));
    let gone = dir.path().join("nope");
    let e = run_status(&args(&gone), &mut out).unwrap_err();
    assert_eq!(e.exit_code(), EXIT_NO_RUN);
    assert!(e.to_string().contains("nope"));
}

#[test]
fn shards_only_and_broken_files() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("shards")).unwrap();
    write_json_atomic(&shard_path(dir.path(), 5), &shard(5, 10, 1)).unwrap();
    fs::write(dir.path().join("shards/shard-06.json"), b"{\"shard\": ").unwrap();
    let mut newer = shard(7, 10, 1);
    newer.schema_version = SCHEMA_VERSION + 1;
    write_json_atomic(&shard_path(dir.path(), 7), &newer).unwrap();
    let r = load_at(dir.path(), t0()).unwrap();
    assert!(r.coordinator.is_none());
    assert_eq!(r.shards.len(), 2);
    assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
    assert!(r.warnings[0].contains("shard-06.json"));
    assert!(r.warnings[1].contains("schema version 2"));
    let text = render_table(&r, t0());
    assert!(text.contains("state unknown: no readable coordinator.json"));
    assert!(text.contains("warning    cannot parse"));
    // Unparseable files alone still count as a run, with warnings.
    fs::remove_file(shard_path(dir.path(), 5)).unwrap();
    fs::remove_file(shard_path(dir.path(), 7)).unwrap();
    let r = load_at(dir.path(), t0()).unwrap();
    assert!(r.shards.is_empty());
    assert_eq!(r.warnings.len(), 1);
}

#[test]
fn json_output_round_trips() {
    let dir = fixture(RunState::Listing, 3);
    write_json_atomic(
        &dir.path().join("checkpoint.json"),
        &checkpoint(serde_json::json!({"Marker": "m-1200"}), 999, false),
    )
    .unwrap();
    let a = StatusArgs {
        json: true,
        ..args(dir.path())
    };
    let mut out = Vec::new();
    let code = run_status_with(&a, &mut out, false, &mut t0, &mut |_| {
        panic!("no sleep without --watch")
    })
    .unwrap();
    assert_eq!(code, 0);
    let parsed: StatusReport = serde_json::from_slice(&out).unwrap();
    assert_eq!(parsed, load_at(dir.path(), t0()).unwrap());
    assert_eq!(parsed.totals.files_ok, 750_003);
    assert_eq!(parsed.stale_shards, [2]);
    assert_eq!(parsed.checkpoint.unwrap()["position"]["Marker"], "m-1200");
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["coordinator"]["state"], "listing");
    assert_eq!(v["shards"][0]["http_status"]["200"], 250_000);
}

#[test]
fn table_output_through_run_status() {
    let dir = fixture(RunState::Draining, 2);
    let mut out = Vec::new();
    let code = run_status_with(&args(dir.path()), &mut out, false, &mut t0, &mut |_| {
        panic!("no sleep without --watch")
    })
    .unwrap();
    assert_eq!(code, 0);
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("run        draining"));
    assert!(text.contains("TOTAL"));
    assert!(!text.contains('\x1b'));
}

#[test]
fn watch_redraws_until_the_run_is_final() {
    let dir = fixture(RunState::Listing, 2);
    let a = StatusArgs {
        watch: true,
        interval_ms: 250,
        ..args(dir.path())
    };
    // The "sleep" advances the run instead of waiting: the second frame
    // sees draining, the third finished, and the loop must stop there.
    let mut sleeps = 0;
    let path = coordinator_path(dir.path());
    let mut sleep = |d: Duration| {
        assert_eq!(d, Duration::from_millis(250));
        sleeps += 1;
        let state = if sleeps == 1 {
            RunState::Draining
        } else {
            RunState::Finished
        };
        write_json_atomic(&path, &coordinator(state, 2)).unwrap();
    };
    let mut out = Vec::new();
    let code = run_status_with(&a, &mut out, false, &mut t0, &mut sleep).unwrap();
    assert_eq!(code, 0);
    assert_eq!(sleeps, 2);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().filter(|l| l.starts_with("TOTAL")).count(), 3);
    assert_eq!(
        text.matches("\n\nbulkget status ").count(),
        2,
        "frames apart"
    );
    assert!(text.contains("run        listing"));
    assert!(text.contains("run        draining"));
    assert!(text.contains("run        finished"));
    assert!(!text.contains('\x1b'));
}

#[test]
fn watch_on_a_terminal_redraws_in_place_and_json_lines() {
    let dir = fixture(RunState::Interrupted, 2);
    let mut out = Vec::new();
    let a = StatusArgs {
        watch: true,
        ..args(dir.path())
    };
    run_status_with(&a, &mut out, true, &mut t0, &mut |_| unreachable!()).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("\x1b[H\x1b[2J"));
    assert!(text.ends_with("\x1b[J"));
    assert!(text.contains("interrupted"));

    let mut out = Vec::new();
    let a = StatusArgs {
        watch: true,
        json: true,
        ..args(dir.path())
    };
    run_status_with(&a, &mut out, true, &mut t0, &mut |_| unreachable!()).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 1);
    let r: StatusReport = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(r.coordinator.unwrap().state, RunState::Interrupted);
}

#[test]
fn watch_waits_for_a_run_to_appear() {
    let dir = tempfile::tempdir().unwrap();
    let a = StatusArgs {
        watch: true,
        ..args(dir.path())
    };
    let root = dir.path().to_path_buf();
    let mut sleep = |_| {
        let c = coordinator(RunState::Failed, 0);
        write_json_atomic(&coordinator_path(&root), &c).unwrap();
    };
    let mut out = Vec::new();
    run_status_with(&a, &mut out, false, &mut t0, &mut sleep).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("waiting for a bulkget run in "));
    assert!(text.contains("run        failed"));
    // A directory that does not exist is an error at once, not a wait.
    let a = StatusArgs {
        watch: true,
        ..args(&dir.path().join("missing"))
    };
    let e = run_status_with(&a, &mut Vec::new(), false, &mut t0, &mut |_| unreachable!());
    assert_eq!(e.unwrap_err().exit_code(), 1);
}

#[test]
fn json_watch_of_an_output_directory_waits_silently_then_ends_with_the_workers() {
    // `bulkget status OUT --watch --json` started before the run made
    // OUT/.bulkget; the run has no coordinator file (workers by hand).
    let out_dir = tempfile::tempdir().unwrap();
    let state = out_dir.path().join(".bulkget");
    let a = StatusArgs {
        watch: true,
        json: true,
        ..args(out_dir.path())
    };
    let mut sleeps = 0;
    let mut sleep = |_| {
        sleeps += 1;
        let mut s = shard(0, 10, 0);
        if sleeps == 2 {
            s.state = ShardState::Exited;
        }
        write_json_atomic(&shard_path(&state, 0), &s).unwrap_or_else(|_| {
            fs::create_dir_all(state.join(SHARDS_DIR)).unwrap();
            write_json_atomic(&shard_path(&state, 0), &s).unwrap();
        });
    };
    let mut out = Vec::new();
    run_status_with(&a, &mut out, false, &mut t0, &mut sleep).unwrap();
    assert_eq!(sleeps, 2);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<StatusReport> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0].shards[0].state, ShardState::Running);
    assert_eq!(lines[1].shards[0].state, ShardState::Exited);
}

#[test]
fn a_closed_pipe_ends_quietly() {
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let dir = fixture(RunState::Listing, 1);
    assert_eq!(run_status(&args(dir.path()), &mut Closed).unwrap(), 0);
}

#[test]
fn output_directory_is_accepted_for_the_state_directory() {
    let out_dir = tempfile::tempdir().unwrap();
    let state = out_dir.path().join(".bulkget");
    fs::create_dir_all(state.join("shards")).unwrap();
    assert_eq!(resolve_state_dir(Some(out_dir.path())), state);
    assert_eq!(resolve_state_dir(Some(&state)), state);
    let other = tempfile::tempdir().unwrap();
    assert_eq!(resolve_state_dir(Some(other.path())), other.path());
}

#[test]
fn clap_parses_the_documented_command_line() {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        status: StatusArgs,
    }
    let c = Cli::try_parse_from(["status", "/tmp/s", "--json", "--watch"]).unwrap();
    assert_eq!(
        c.status,
        StatusArgs {
            state_dir: Some(PathBuf::from("/tmp/s")),
            json: true,
            watch: true,
            interval_ms: 1000,
            tty: None,
        }
    );
    let c = Cli::try_parse_from(["status", "--interval-ms", "200"]).unwrap();
    assert_eq!(c.status.state_dir, None);
    assert_eq!(c.status.interval_ms, 200);
    assert!(Cli::try_parse_from(["status", "--interval-ms", "0"]).is_err());
}

/// `docs/STATS.md` documents `status --json`'s report; this keeps it honest
/// against the types.
#[test]
fn every_report_field_is_documented() {
    const DOC: &str = include_str!("../../../../docs/STATS.md");
    let keys =
        |v: serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    for key in keys(serde_json::to_value(StatusReport::default()).unwrap()) {
        assert!(
            DOC.contains(&format!("| `{key}` |")),
            "report field `{key}`"
        );
    }
    for key in keys(serde_json::to_value(Totals::default()).unwrap()) {
        assert!(DOC.contains(&format!("`{key}`")), "totals field `{key}`");
    }
}
