//! Helpers for the end-to-end tests: real `bulkget-server` and `bulkget`
//! processes, fresh directories, and checks of what arrived.

use bulkget_server::{Dataset, ServerArgs};
use clap::Parser;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BULKGET: &str = env!("CARGO_BIN_EXE_bulkget");
pub const SERVER: &str = env!("CARGO_BIN_EXE_bulkget-server");

/// A `bulkget-server` process on 127.0.0.1 and a free port, stopped on drop.
pub struct Server {
    child: Child,
    pub url: String,
    pub args: Vec<String>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Server::start_on(0, args)
    }

    /// A server on `port` (0: any free one), for a test that stops a server
    /// and starts another at the same URL.
    /// A server of 1,000 files in pages of 250 with one `--list-fault`:
    /// what the listing tests need.
    pub fn with_list_fault(fault: &str) -> Server {
        Server::start(&[
            "--files",
            "1000",
            "--page-size",
            "250",
            "--list-fault",
            fault,
        ])
    }

    pub fn start_on(port: u16, args: &[&str]) -> Server {
        let mut cmd = Command::new(SERVER);
        cmd.args(["--port", &port.to_string(), "--threads", "1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start bulkget-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the listening line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from bulkget-server: {line:?}"))
            .to_string();
        Server {
            child,
            url,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// The same dataset the server serves, computed in this process.
    pub fn dataset(&self) -> Dataset {
        let mut argv = vec!["bulkget-server".to_string()];
        argv.extend(self.args.iter().cloned());
        Dataset::from_args(&ServerArgs::parse_from(argv))
    }

    /// The server's counters (`GET /_stats`).
    pub fn stats(&self) -> serde_json::Value {
        let addr = self.url.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).expect("connect for stats");
        write!(
            s,
            "GET /_stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let body = text.split("\r\n\r\n").nth(1).expect("a body");
        serde_json::from_str(body).expect("stats JSON")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory for one test, with `out` inside it, so a test can
/// check that nothing was created beside `out`.
pub struct Workspace {
    pub root: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            root: tempfile::Builder::new()
                .prefix("bulkget-test-")
                .tempdir()
                .unwrap(),
        }
    }
    pub fn out(&self) -> PathBuf {
        self.root.path().join("out")
    }
    pub fn state(&self) -> PathBuf {
        self.out().join(".bulkget")
    }
    /// Every path under the root that is not under `out`.
    pub fn strays(&self) -> Vec<PathBuf> {
        let mut strays = Vec::new();
        for entry in std::fs::read_dir(self.root.path()).unwrap() {
            let p = entry.unwrap().path();
            if p != self.out() {
                strays.push(p);
            }
        }
        strays
    }
}

/// A `bulkget` command with quiet defaults for tests.
pub fn bulkget(args: &[&str]) -> Command {
    let mut cmd = Command::new(BULKGET);
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// Runs `bulkget fetch URL OUT ARGS...` to the end.
pub fn fetch(server: &Server, ws: &Workspace, args: &[&str]) -> Output {
    let out = ws.out();
    let mut cmd = bulkget(&[
        "fetch",
        &server.url,
        out.to_str().unwrap(),
        "--progress",
        "none",
    ]);
    cmd.args(args);
    let output = cmd.output().expect("run bulkget fetch");
    if std::env::var_os("BULKGET_TEST_VERBOSE").is_some() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    }
    output
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code, showing the output when it differs.
pub fn assert_code(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "expected exit {code}\n--- stdout\n{}\n--- stderr\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

/// Checks that every safe listed name is in the flat dir sink with the
/// right bytes; returns how many were checked.
pub fn verify_flat(out: &Path, dataset: &Dataset) -> u64 {
    let mut checked = 0;
    let mut wrong = Vec::new();
    for name in dataset.listed_names() {
        if bulkget_names::check(&name).is_err() {
            continue;
        }
        let Some(expected) = dataset.expected_content(&name) else {
            continue;
        };
        match std::fs::read(out.join(&name)) {
            Ok(got) if got == expected => checked += 1,
            Ok(got) => wrong.push(format!(
                "{name:?}: {} bytes differ from the expected {}",
                got.len(),
                expected.len()
            )),
            Err(e) => wrong.push(format!("{name:?}: {e}")),
        }
        if wrong.len() > 10 {
            break;
        }
    }
    assert!(
        wrong.is_empty(),
        "files missing or wrong:\n{}",
        wrong.join("\n")
    );
    checked
}

/// Reads `failed.jsonl` as (name, reason) pairs.
pub fn failures(state: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(state.join("failed.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("failed.jsonl line is JSON");
            (
                v["name"].as_str().unwrap().to_string(),
                v["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Polls `cond` every 20 ms until it holds or `limit` passes. Polling a
/// condition is synchronisation on the state itself, not a guess at timing.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a JSON file, or `None` if it is absent or (being replaced) unreadable.
pub fn read_json(path: &Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `bulkget fetch URL OUT --progress none ARGS...`, not yet started.
pub fn fetch_command(url: &str, ws: &Workspace, args: &[&str]) -> Command {
    let out = ws.out();
    let mut cmd = bulkget(&["fetch", url, out.to_str().unwrap(), "--progress", "none"]);
    cmd.args(args);
    cmd
}

/// A running `bulkget fetch`, killed if the test gives up on it. Its
/// output is drained by threads, so a chatty run cannot block on a full
/// pipe and look like a hang.
pub struct Running {
    child: Child,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bulkget fetch");
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                buf
            })
        };
        let stdout = Some(drain(Box::new(child.stdout.take().unwrap())));
        let stderr = Some(drain(Box::new(child.stderr.take().unwrap())));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn output(&mut self, status: std::process::ExitStatus) -> Output {
        Output {
            status,
            stdout: self.stdout.take().unwrap().join().unwrap(),
            stderr: self.stderr.take().unwrap().join().unwrap(),
        }
    }

    /// Waits for the exit, failing the test (and killing the run) if it
    /// takes longer than `limit`.
    pub fn wait_within(&mut self, limit: Duration) -> Output {
        let mut status = None;
        wait_for(limit, "bulkget fetch to exit", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        self.output(status.unwrap())
    }

    /// The output if the process has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<Output> {
        let status = self.child.try_wait().unwrap()?;
        Some(self.output(status))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only a run the test gave up on is still running. std remembers
        // an exit it reaped, so this never signals a pid reused since.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `bulkget fetch` against `server` in the background.
pub fn spawn_fetch(server: &Server, ws: &Workspace, args: &[&str]) -> Running {
    Running::spawn(fetch_command(&server.url, ws, args))
}

/// The run's `coordinator.json`, if it is there and whole.
pub fn coordinator_json(ws: &Workspace) -> Option<serde_json::Value> {
    read_json(&ws.state().join("coordinator.json"))
}

/// A run's counts as its `coordinator.json` says them: tests read these
/// numbers rather than the summary's wording, which may change freely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunCounts {
    pub files_ok: u64,
    pub files_failed: u64,
    /// Restarts of every shard.
    pub restarts: u64,
    /// Shards no longer restarted.
    pub parked: u64,
}

/// The counts in `coordinator.json` now (all zero before it is written);
/// after a run, its final counts.
pub fn run_counts(ws: &Workspace) -> RunCounts {
    let c = coordinator_json(ws).unwrap_or_default();
    let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let shards = c["shards"].as_array().cloned().unwrap_or_default();
    RunCounts {
        files_ok: count(&c["files_ok"]),
        files_failed: count(&c["files_failed"]),
        restarts: shards.iter().map(|s| count(&s["restarts"])).sum(),
        parked: shards.iter().filter(|s| s["state"] == "parked").count() as u64,
    }
}

/// Files acknowledged so far, as `coordinator.json` says.
pub fn files_ok(ws: &Workspace) -> u64 {
    run_counts(ws).files_ok
}

/// The worker pids the coordinator reports.
pub fn worker_pids(ws: &Workspace) -> Vec<i32> {
    coordinator_json(ws)
        .map(|c| {
            c["shards"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|s| s["pid"].as_i64())
                .map(|p| p as i32)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a process is gone (exited; a zombie awaiting its reaper counts
/// as gone: it runs no code).
pub fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// `fetch` flags for the stall tests: two workers, one batch of 50 names at a
/// time in each window, and quick retries, so that a name told
/// `Retry-After` leaves its batch stalled while the shard goes on.
pub const ONE_BATCH_WINDOW: &[&str] = &[
    "--workers",
    "2",
    "--window",
    "1",
    "--batch-size",
    "50",
    "--connections",
    "8",
    "--retry-base-ms",
    "10",
];
