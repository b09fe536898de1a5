//! Running politely: `--max-rps`, and the adaptive back-off against a
//! service that rations requests (`bulkget-server --rate-limit`).

use crate::util::*;
use std::time::{Duration, Instant};

/// The server's GET count.
fn gets(server: &Server) -> u64 {
    server.stats()["requests"]["get"].as_u64().unwrap()
}

fn responses(server: &Server, code: &str) -> u64 {
    server.stats()["responses"][code].as_u64().unwrap_or(0)
}

#[test]
fn max_rps_caps_the_gets_of_all_workers_together() {
    let server = Server::start(&["--files", "2000"]);
    let ws = Workspace::new();
    let started = Instant::now();
    let mut run = spawn_fetch(&server, &ws, &["--workers", "2", "--max-rps", "400"]);
    // The server's count, sampled while the run goes on. The samples are
    // measurements, not synchronisation: the run's end is its exit.
    let mut samples = vec![(Instant::now(), gets(&server))];
    while !gone(run.pid() as i32) {
        std::thread::sleep(Duration::from_millis(250));
        samples.push((Instant::now(), gets(&server)));
    }
    let output = run.wait_within(Duration::from_secs(60));
    let elapsed = started.elapsed();
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 2000);
    assert_eq!(gets(&server), 2000);
    // 2,000 GETs at 400 a second take 5 s: never much faster.
    assert!(elapsed >= Duration::from_millis(4_500), "{elapsed:?}");
    // Over every window of 2 s or more, at most 400 a second, with room
    // for the buckets' bursts (a twentieth of a second each) and sampling.
    for (i, &(t0, n0)) in samples.iter().enumerate() {
        for &(t1, n1) in &samples[i + 1..] {
            let secs = (t1 - t0).as_secs_f64();
            if secs >= 2.0 {
                let rate = (n1 - n0) as f64 / secs;
                assert!(
                    rate <= 400.0 * 1.1 + 40.0 / secs,
                    "{rate:.0}/s over {secs:.1} s"
                );
            }
        }
    }
}

#[test]
fn a_parked_shards_share_of_max_rps_goes_to_the_others() {
    let server = Server::start(&["--files", "600"]);
    let ws = Workspace::new();
    let output = fetch(
        &server,
        &ws,
        &[
            "--workers",
            "2",
            "--max-rps",
            "300",
            "--test-fail-start-shard",
            "1",
            "--restart-burst",
            "1",
        ],
    );
    assert_code(&output, 0);
    assert_eq!(run_counts(&ws).parked, 1);
    let shard = read_json(&ws.state().join("shards/shard-00.json")).unwrap();
    // The whole budget: shard 1 never worked.
    assert_eq!(shard["pace"]["rps_share"].as_f64(), Some(300.0), "{shard}");
    assert_eq!(gets(&server), 600);
}

/// The measure, with the default flags: against a service that
/// answers 429 with `Retry-After: 1` above 2,000 requests a second, the run
/// loses nothing and at most a tenth of its GETs are refused. Before the
/// adaptive back-off 87 % were.
#[test]
fn a_rate_limited_service_is_fetched_with_few_429s_by_default() {
    let server = Server::start(&["--files", "16000", "--rate-limit", "2000"]);
    let ws = Workspace::new();
    let output = fetch(&server, &ws, &[]);
    assert_code(&output, 0);
    assert_eq!(run_counts(&ws).files_failed, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 16_000);
    let (all, refused) = (gets(&server), responses(&server, "429"));
    assert_eq!(all - refused, 16_000);
    assert!(
        refused * 10 <= all,
        "{refused} of {all} GETs were answered 429"
    );
    // The back-off did the work: the workers saw pushback and cut.
    let mut pushback = 0;
    for entry in std::fs::read_dir(ws.state().join("shards")).unwrap() {
        let shard = read_json(&entry.unwrap().path()).unwrap();
        assert_eq!(shard["pace"]["adaptive"], true);
        pushback += shard["pace"]["pushback_total"].as_u64().unwrap();
    }
    assert!(pushback > 0);
}

/// Each shard's stats file, in shard order.
fn shard_files(ws: &Workspace) -> Vec<serde_json::Value> {
    let mut paths: Vec<_> = std::fs::read_dir(ws.state().join("shards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths.iter().map(|p| read_json(p).unwrap()).collect()
}

/// The default ceiling on sockets per worker (`--connections`).
const DEFAULT_CONNECTIONS: u64 = 256;

/// With the default flags a worker opens a connection only for a request
/// its in-flight limit lets out, and the limit starts at 16 and grows with
/// answers: a short loopback run opens a few connections, not the 256 per
/// worker that `--connections` allows.
#[test]
fn a_short_run_opens_only_the_connections_its_in_flight_limit_calls_for() {
    let server = Server::start(&["--files", "100"]);
    let ws = Workspace::new();
    let output = fetch(&server, &ws, &["--workers", "2"]);
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 100);
    let stats = server.stats();
    assert_eq!(stats["requests"]["get"].as_u64().unwrap(), 100);
    let accepted = stats["connections_accepted"].as_u64().unwrap();
    // At most one per GET, plus the lister's and this test's own; far
    // below 2 x 256.
    assert!(accepted <= 100 + 2, "{accepted} connections for 100 files");
    assert!(accepted * 4 <= 2 * DEFAULT_CONNECTIONS, "{accepted}");
    for shard in shard_files(&ws) {
        let opened = shard["connections_opened"].as_u64().unwrap();
        let limit = shard["pace"]["in_flight_limit"].as_u64().unwrap();
        assert_eq!(shard["pace"]["adaptive"], true);
        // The limit only grew (no pushback), so it is the highest it was.
        assert!(
            opened <= limit,
            "{opened} connections at a limit of {limit}"
        );
        assert!(limit <= 16 + 100, "{shard}");
    }
}

/// Against a service 10 ms away the in-flight limit grows by slow start and
/// is spread over connections: the connections grow with it, from the 16
/// requests a worker starts with to its ceiling of 256, and never past the
/// limit or the ceiling.
#[test]
fn at_ten_milliseconds_the_connections_grow_with_the_in_flight_limit() {
    let server = Server::start(&["--files", "6000", "--latency-ms", "10"]);
    let ws = Workspace::new();
    let output = fetch(&server, &ws, &["--workers", "2"]);
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 6000);
    let accepted = server.stats()["connections_accepted"].as_u64().unwrap();
    assert!(
        accepted <= 2 * DEFAULT_CONNECTIONS + 2,
        "{accepted} connections"
    );
    let shards = shard_files(&ws);
    let mut opened_all = 0;
    for shard in &shards {
        let opened = shard["connections_opened"].as_u64().unwrap();
        let limit = shard["pace"]["in_flight_limit"].as_u64().unwrap();
        let fetched = shard["files_ok"].as_u64().unwrap();
        assert!(
            opened <= limit,
            "{opened} connections at a limit of {limit}"
        );
        assert!(opened <= DEFAULT_CONNECTIONS, "{opened}");
        // A shard that fetched a few hundred files grew its limit past
        // the connections it could fill one request each, and opened far
        // more than the 16 it started with.
        if fetched >= 1_000 {
            assert!(opened >= 128, "{opened} connections for {fetched} files");
        }
        opened_all += opened;
    }
    assert!(opened_all >= 128, "{shards:?}");
}
