//! Issue 11: what a run tells the person watching it. Every permanent
//! failure is named on stderr (capped) and in the summary, and a closed
//! stdout or stderr does not stop a run.

use crate::util::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `bulkget fetch URL OUT ARGS...` with the default display flags (no
/// `--progress none`), run to the end.
fn fetch_default(server: &Server, ws: &Workspace, args: &[&str]) -> std::process::Output {
    let out = ws.out();
    let mut cmd = bulkget(&["fetch", &server.url, out.to_str().unwrap()]);
    cmd.args(args);
    cmd.output().expect("run bulkget fetch")
}

/// The lines of `stderr` that name one failure: `bulkget: failed: "..."`.
fn failure_lines(stderr: &[u8]) -> Vec<String> {
    text(stderr)
        .lines()
        .filter(|l| l.starts_with("bulkget: failed: \""))
        .map(String::from)
        .collect()
}

/// `failed.jsonl` as name -> reason.
fn failed_map(state: &Path) -> BTreeMap<String, String> {
    failures(state).into_iter().collect()
}

/// The line a failure is named with: the name as `{:?}` shows it.
fn named(name: &str, reason: &str) -> String {
    format!("bulkget: failed: {name:?}: {reason}")
}

#[test]
fn every_failure_is_named_once_on_stderr_and_the_summary_lists_the_first_twenty() {
    let server = Server::start(&["--files", "2000", "--gone-rate", "0.01", "--hostile-names"]);
    let ws = Workspace::new();
    let output = fetch_default(&server, &ws, &["--workers", "2"]);
    assert_code(&output, 3);

    let failed = failed_map(&ws.state());
    let unsafe_count = failed
        .keys()
        .filter(|n| bulkget_names::check(n).is_err())
        .count();
    assert!(
        unsafe_count >= 10 && failed.len() > unsafe_count && failed.len() > 20,
        "404s and unsafe names fail, more than the summary lists: {failed:?}"
    );
    let mut lines = failure_lines(&output.stderr);
    lines.sort();
    let mut expected: Vec<String> = failed.iter().map(|(n, r)| named(n, r)).collect();
    expected.sort();
    assert_eq!(lines, expected, "each failure named once, no other");

    // The name made to forge a line and rewrite the terminal is escaped:
    // no line of stderr claims "innocent" failed, and no control character
    // but the newlines between lines reaches the terminal.
    let stderr = text(&output.stderr);
    assert!(
        !stderr.lines().any(|l| l.contains("failed: \"innocent\"")
            && !l.starts_with("bulkget: failed: \"../forged")),
        "{stderr}"
    );
    assert!(stderr.contains(r#"bulkget: failed: "../forged\nbulkget: failed: \"innocent\": HTTP 404 Not Found\r\u{1b}[2K\u{202e}": unsafe name"#), "{stderr}");
    assert!(
        !stderr
            .chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
        "{stderr:?}"
    );

    // The summary lists the first twenty with their reasons and says where
    // the rest are.
    let summary = text(&output.stdout);
    let listed: Vec<&str> = summary
        .lines()
        .filter_map(|l| l.strip_prefix("    \""))
        .collect();
    assert_eq!(listed.len(), 20, "{summary}");
    for l in &listed {
        let line = format!("bulkget: failed: \"{l}");
        assert!(expected.contains(&line), "{line} is not a failure");
    }
    let rest = failed.len() - 20;
    let failed_path = ws.state().join("failed.jsonl");
    assert!(
        summary.contains(&format!("    and {rest} more in {}", failed_path.display())),
        "{summary}"
    );
}

#[test]
fn after_a_thousand_failures_stderr_gets_counts_and_quiet_keeps_them() {
    // Every name is gone: 1,500 failures. --quiet drops the progress and
    // the summary, not the failures, which are errors.
    let server = Server::start(&["--files", "1500", "--gone-rate", "1"]);
    let ws = Workspace::new();
    let output = fetch_default(&server, &ws, &["--workers", "2", "--quiet"]);
    assert_code(&output, 3);
    assert_eq!(failures(&ws.state()).len(), 1500);
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));

    assert_eq!(failure_lines(&output.stderr).len(), 1_000);
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("1000 failures shown; from now on only a count every 10s"),
        "{stderr}"
    );
    // The run is shorter than ten seconds, so the rest is counted once, at
    // the end; the counts add up to every failure not shown.
    let counted: u64 = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("bulkget: failed: "))
        .filter_map(|l| l.split_once(" more file"))
        .map(|(n, _)| n.replace(',', "").parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, 500, "{stderr}");
    assert!(
        stderr.lines().count() < 1_010,
        "nothing else floods stderr: {} lines",
        stderr.lines().count()
    );
}

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

/// With `--log-format json`, stderr holds one JSON object per line and
/// nothing else, whoever wrote it: the coordinator's notes and progress,
/// failed names, and the workers' own messages (a worker that crashes on a
/// name says so before it aborts), with the default display flags.
#[test]
fn with_json_logs_every_line_on_stderr_is_json_workers_included() {
    let crash = "file-0000000777";
    let server = Server::start(&[
        "--files",
        "2000",
        "--gone-rate",
        "0.01",
        "--crash-name",
        crash,
    ]);
    let ws = Workspace::new();
    let out = ws.out();
    let output = bulkget(&["--log-format", "json"])
        .args([
            "fetch",
            &server.url,
            out.to_str().unwrap(),
            "--workers",
            "2",
            "--test-abort-on-header",
        ])
        .output()
        .expect("run bulkget fetch");
    assert_code(&output, 3);
    let stderr = text(&output.stderr);
    let messages: Vec<String> = stderr
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{stderr}"));
            assert!(v["level"].is_string(), "{line}");
            v["fields"]["message"]
                .as_str()
                .unwrap_or_else(|| panic!("no message: {line}"))
                .to_string()
        })
        .collect();
    let has = |what: &str| messages.iter().any(|m| m.contains(what));
    assert!(
        has(&format!("bulkget worker: test hook: aborting on {crash:?}")),
        "the worker's own line: {stderr}"
    );
    assert!(has("restarting in"), "the crash, noted: {stderr}");
    assert!(has("bulkget: failed: \""), "failed names: {stderr}");
    assert!(messages.iter().any(|m| m == "progress"), "{stderr}");
    let failed = failed_map(&ws.state());
    assert!(failed.contains_key(crash), "{failed:?}");
    assert!(failed.len() > 1, "404s fail too: {failed:?}");
}
