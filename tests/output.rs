//! Issue 11: what a run tells the person watching it. A closed stdout or
//! stderr does not stop a run.

use crate::util::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn a_closed_pipe_on_stdout_and_stderr_is_not_a_crash() {
    // As `bulkget fetch ... 2>&1 | head -1`: stdout and stderr are one pipe
    // whose reader goes away after the first line. Every later write fails
    // with EPIPE: the coordinator's progress lines, log lines and summary,
    // and a worker's message (below). The run must finish as if nothing
    // happened. At 2 ms a file on 4 connections it lasts at least 3 s.
    let n = 6_000;
    let server = Server::start(&["--files", "6000", "--latency-ms", "2"]);
    let ws = Workspace::new();
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut cmd = Command::new(BULKGET);
    cmd.args(["fetch", &server.url, ws.out().to_str().unwrap()])
        .args([
            "--workers",
            "2",
            "--connections",
            "2",
            "--progress",
            "plain",
        ])
        // Log lines from the coordinator after the pipe is closed.
        .env("RUST_LOG", "bulkget_coordinator=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end.try_clone().unwrap()))
        .stderr(Stdio::from(write_end));
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let mut reader = BufReader::new(std::fs::File::from(read_end));
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(!first.is_empty(), "the run printed a line");
    drop(reader);

    // A worker's stats file becomes a directory, so the worker fails to
    // replace it and says so on stderr, now closed. A worker that died of
    // that would be restarted, which the stats show.
    let stats_file = ws.state().join("shards").join("shard-00.json");
    wait_for(
        Duration::from_secs(30),
        "the stats file to become a directory",
        || {
            let _ = std::fs::remove_file(&stats_file);
            std::fs::create_dir(&stats_file).is_ok() || stats_file.is_dir()
        },
    );

    let mut status = None;
    wait_for(Duration::from_secs(120), "bulkget fetch to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0), "{:?}", status);
    let checkpoint = read_json(&ws.state().join("checkpoint.json")).unwrap();
    assert_eq!(checkpoint["complete"], true, "{checkpoint}");
    assert_eq!(checkpoint["totals"]["files_ok"], n, "{checkpoint}");
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), n);
    let c = coordinator_json(&ws).unwrap();
    let restarts: u64 = c["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["restarts"].as_u64().unwrap())
        .sum();
    assert_eq!(restarts, 0, "no worker died of a closed stderr: {c}");
}
