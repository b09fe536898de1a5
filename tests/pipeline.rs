//! `bulkget fetch --pipeline`: HTTP/1.1 pipelining end to end, against
//! the test server with and without servers that break pipelines.

use crate::util::*;

/// The shard stats files of a finished run.
fn shards(ws: &Workspace) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(ws.state().join("shards")).unwrap() {
        let path = entry.unwrap().path();
        out.push(read_json(&path).expect("a whole shard stats file"));
    }
    out.sort_by_key(|s| s["shard"].as_u64());
    out
}

fn sum(shards: &[serde_json::Value], key: &str) -> u64 {
    shards.iter().map(|s| s[key].as_u64().unwrap()).sum()
}

fn depths(shards: &[serde_json::Value]) -> Vec<u64> {
    shards
        .iter()
        .map(|s| s["pipeline_depth"].as_u64().unwrap())
        .collect()
}

/// The lines of a worker's fallback warning in a run's stderr.
fn fallbacks(stderr: &[u8]) -> usize {
    text(stderr)
        .lines()
        .filter(|l| l.contains("does not pipeline correctly"))
        .count()
}

#[test]
fn a_pipelined_run_arrives_byte_for_byte_over_kept_alive_connections() {
    let server = Server::start(&["--files", "10000"]);
    let ws = Workspace::new();
    let output = fetch(
        &server,
        &ws,
        &["--workers", "2", "--connections", "8", "--pipeline", "4"],
    );
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 10_000);
    let stats = server.stats();
    assert_eq!(stats["requests"]["get"].as_u64().unwrap(), 10_000);
    let accepted = stats["connections_accepted"].as_u64().unwrap();
    assert!(accepted <= 2 * 8 + 1 + 1, "{accepted} connections");
    let s = shards(&ws);
    assert_eq!(depths(&s), [4, 4]);
    assert_eq!(sum(&s, "pipeline_retries"), 0);
    assert_eq!(sum(&s, "retries"), 0);
}

#[test]
fn requests_behind_a_keep_alive_limit_are_sent_again_and_pipelining_goes_on() {
    // Every connection closes after 64 answers (16 × the depth of 4: a
    // keep-alive limit, not a server that cannot pipeline), with up to
    // three requests pipelined behind the last answer.
    let server = Server::start(&["--files", "10000", "--keepalive-requests", "64"]);
    let ws = Workspace::new();
    let mut cmd = fetch_command(
        &server.url,
        &ws,
        &["--workers", "2", "--connections", "4", "--pipeline", "4"],
    );
    cmd.env("RUST_LOG", "warn");
    let output = cmd.output().unwrap();
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 10_000);
    let s = shards(&ws);
    assert_eq!(depths(&s), [4, 4], "no fallback");
    assert_eq!(fallbacks(&output.stderr), 0, "{}", text(&output.stderr));
    let resent = sum(&s, "pipeline_retries");
    assert!(resent > 0, "no request was sent again");
    // Resent requests are not attempts.
    assert_eq!(sum(&s, "retries"), 0);
    // The server served every file once: the requests it had read behind a
    // `Connection: close` it dropped without serving.
    let gets = server.stats()["requests"]["get"].as_u64().unwrap();
    assert_eq!(gets, 10_000);
}

#[test]
fn at_the_defaults_a_worker_holds_before_sleeping_and_unpipelined_never() {
    // With hundreds of pipelined requests out, a worker that finds nothing
    // to do waits a little before it sleeps, so that it wakes to many
    // answers (crates/worker/src/park.rs); the shards count those holds.
    // One request per connection never gets there.
    let server = Server::start(&["--files", "100000"]);
    let ws = Workspace::new();
    let output = fetch(&server, &ws, &["--sink", "null"]);
    assert_code(&output, 0);
    let s = shards(&ws);
    assert_eq!(sum(&s, "files_ok"), 100_000);
    assert!(sum(&s, "parks_held") > 0, "no worker held: {s:?}");

    let ws = Workspace::new();
    let output = fetch(&server, &ws, &["--sink", "null", "--pipeline", "1"]);
    assert_code(&output, 0);
    let s = shards(&ws);
    assert_eq!(sum(&s, "files_ok"), 100_000);
    assert_eq!(sum(&s, "parks_held"), 0);
}

#[test]
fn a_server_that_coalesces_its_answers_is_pipelined_at_the_defaults_without_loss() {
    // `--coalesce-pipelined` writes the answers to requests read together
    // in one write, many to a segment: the client's reader must take them
    // apart byte for byte.
    let server = Server::start(&["--files", "20000", "--coalesce-pipelined"]);
    let ws = Workspace::new();
    let mut cmd = fetch_command(&server.url, &ws, &[]);
    cmd.env("RUST_LOG", "warn");
    let output = cmd.output().unwrap();
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 20_000);
    let s = shards(&ws);
    assert!(depths(&s).iter().all(|&d| d == 16), "{:?}", depths(&s));
    assert_eq!(fallbacks(&output.stderr), 0, "{}", text(&output.stderr));
    assert_eq!(sum(&s, "retries"), 0);
    assert_eq!(server.stats()["requests"]["get"].as_u64().unwrap(), 20_000);
}

#[test]
fn a_server_that_closes_after_two_answers_makes_each_worker_fall_back_once() {
    let server = Server::start(&["--files", "3000", "--keepalive-requests", "2"]);
    let ws = Workspace::new();
    // Both workers must get names: 3,000 files in the default batches of
    // 1,024 are three batches, which the worker that starts first can take
    // alone (its window holds eight). Batches of 100 leave some for each.
    let mut cmd = fetch_command(
        &server.url,
        &ws,
        &[
            "--workers",
            "2",
            "--connections",
            "4",
            "--pipeline",
            "8",
            "--batch-size",
            "100",
        ],
    );
    cmd.env("RUST_LOG", "warn");
    let output = cmd.output().unwrap();
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 3000);
    let s = shards(&ws);
    assert_eq!(depths(&s), [1, 1]);
    assert_eq!(fallbacks(&output.stderr), 2, "{}", text(&output.stderr));
    assert!(sum(&s, "pipeline_retries") > 0);
}

#[test]
fn resets_and_truncations_mid_pipeline_lose_nothing_and_keep_pipelining() {
    // A reset or truncated answer breaks its connection with requests
    // pipelined behind it: the broken one is retried (an attempt), the ones
    // behind it are sent again (not attempts), and pipelining goes on,
    // since the server pipelines correctly.
    let server = Server::start(&[
        "--files",
        "8000",
        "--reset-rate",
        "0.01",
        "--truncate-rate",
        "0.01",
    ]);
    let ws = Workspace::new();
    let mut cmd = fetch_command(
        &server.url,
        &ws,
        &[
            "--workers",
            "2",
            "--connections",
            "4",
            "--pipeline",
            "8",
            "--retry-base-ms",
            "10",
        ],
    );
    cmd.env("RUST_LOG", "warn");
    let output = cmd.output().unwrap();
    assert_code(&output, 0);
    let dataset = server.dataset();
    assert_eq!(verify_flat(&ws.out(), &dataset), 8000);
    let faulted = dataset
        .listed_names()
        .filter(|n| dataset.faults(n).is_some_and(|f| f.transient.is_some()))
        .count() as u64;
    let s = shards(&ws);
    assert_eq!(depths(&s), [8, 8], "{}", text(&output.stderr));
    // Each faulted name fails once: as a retry, or as a resend when the
    // reset discarded its answer before a byte of it was read (then it
    // looks like a connection closed between answers).
    let (retries, resent) = (sum(&s, "retries"), sum(&s, "pipeline_retries"));
    assert!(retries <= faulted, "{retries} retries for {faulted} faults");
    assert!(
        retries + resent >= faulted,
        "{retries} + {resent} for {faulted}"
    );
    assert!(resent > 0);
}
