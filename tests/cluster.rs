//! `bulkget cluster`: a private nats-server with JetStream on a free
//! loopback port and a temporary store, a lister and several hosts, all
//! real processes.

use crate::util::*;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// Where nats-server is looked for: `$NATS_SERVER`, Debian's path, then
/// `PATH`. scripts/test.sh installs it when it is missing.
fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER") {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/sbin/nats-server");
    if debian.exists() {
        return debian.to_path_buf();
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join("nats-server");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "nats-server is not installed: the cluster tests need it. \
         Run scripts/test.sh (it installs Debian's nats-server), or \
         `apt-get install nats-server`, or set NATS_SERVER to its path"
    );
}

/// A private nats-server with JetStream, stopped on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let store = tempfile::Builder::new()
            .prefix("bulkget-nats-")
            .tempdir()
            .unwrap();
        // A free port: bound and released here, then given to the server.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = Nats {
            child: None,
            port,
            store,
        };
        nats.launch();
        nats
    }

    /// Starts the server on this port and store, and waits until it
    /// greets a client.
    fn launch(&mut self) {
        let child = Command::new(nats_server_binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let port = self.port;
        wait_for(
            Duration::from_secs(20),
            "nats-server to accept clients",
            || {
                TcpStream::connect(("127.0.0.1", port))
                    .ok()
                    .and_then(|s| {
                        let mut line = String::new();
                        BufReader::new(s).read_line(&mut line).ok()?;
                        Some(line.starts_with("INFO"))
                    })
                    .unwrap_or(false)
            },
        );
    }

    /// SIGKILLs the server (its store stays).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `bulkget cluster ARGS...`, not yet started.
fn cluster(args: &[&str]) -> Command {
    let mut cmd = Command::new(BULKGET);
    cmd.arg("cluster").args(args).stdin(Stdio::null());
    cmd
}

fn lister_command(server: &Server, nats: &Nats, job: &str, args: &[&str]) -> Command {
    let mut cmd = cluster(&["list", &server.url, "--nats", &nats.url(), "--job", job]);
    cmd.args(args);
    cmd
}

/// A host in its own process group, as a host would be started by a
/// service manager, so the test can kill the whole group.
fn host(server: &Server, nats: &Nats, job: &str, out: &Path, args: &[&str]) -> Running {
    let mut cmd = cluster(&[
        "work",
        &server.url,
        out.to_str().unwrap(),
        "--nats",
        &nats.url(),
        "--job",
        job,
        "--progress",
        "none",
    ]);
    cmd.args(args).process_group(0);
    Running::spawn(cmd)
}

fn status(nats: &Nats, job: &str, args: &[&str]) -> Output {
    cluster(&["status", "--nats", &nats.url(), "--job", job])
        .args(args)
        .output()
        .unwrap()
}

fn status_json(nats: &Nats, job: &str) -> serde_json::Value {
    let out = status(nats, job, &["--json"]);
    assert_code(&out, 0);
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

/// Sum of a host counter over every host in the status.
fn hosts_sum(st: &serde_json::Value, field: &str) -> u64 {
    st["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[field].as_u64().unwrap_or(0))
        .sum()
}

/// Checks that every listed (safe) name is in at least one of `outs`
/// with exactly the bytes the server serves, and that nothing else is
/// there. Returns how many copies were found in all.
fn verify_union(outs: &[PathBuf], dataset: &bulkget_server::Dataset) -> u64 {
    let mut copies = 0;
    let mut missing = Vec::new();
    let mut listed = HashSet::new();
    for name in dataset.listed_names() {
        if bulkget_names::check(&name).is_err() {
            continue;
        }
        let Some(expected) = dataset.expected_content(&name) else {
            continue;
        };
        let mut found = 0;
        for out in outs {
            if let Ok(got) = std::fs::read(out.join(&name)) {
                assert_eq!(got, expected, "{name:?} in {} differs", out.display());
                found += 1;
            }
        }
        if found == 0 {
            missing.push(name.clone());
        }
        copies += found;
        listed.insert(name);
    }
    assert!(
        missing.is_empty(),
        "{} names in no host's OUT, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    for out in outs {
        for e in std::fs::read_dir(out).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(
                name == ".bulkget" || listed.contains(&name),
                "{name:?} in {} was never listed",
                out.display()
            );
        }
    }
    copies
}

fn count_files(out: &Path) -> usize {
    std::fs::read_dir(out)
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0)
}

#[test]
fn three_hosts_fetch_the_union_of_every_file() {
    let nats = Nats::start();
    let server = Server::start(&["--files", "100000", "--page-size", "1000"]);
    let ws = Workspace::new();
    let outs: Vec<PathBuf> = (0..3)
        .map(|k| ws.root.path().join(format!("host{k}")))
        .collect();
    let mut lister = Running::spawn(lister_command(&server, &nats, "union", &[]));
    let mut hosts: Vec<Running> = outs
        .iter()
        .map(|o| host(&server, &nats, "union", o, &["--workers", "1"]))
        .collect();
    let out = lister.wait_within(Duration::from_secs(240));
    assert_code(&out, 0);
    for h in &mut hosts {
        let out = h.wait_within(Duration::from_secs(60));
        assert_code(&out, 0);
    }
    let copies = verify_union(&outs, &server.dataset());
    let st = status_json(&nats, "union");
    assert_eq!(st["lister"]["finished"], true);
    assert_eq!(st["lister"]["names_published"], 100_000);
    assert_eq!(st["files_failed"], 0);
    assert_eq!(st["batches_queued"], 0);
    assert_eq!(st["batches_in_flight"], 0);
    assert_eq!(st["hosts"].as_array().unwrap().len(), 3);
    // Every host did some of the work, and the copies are the files
    // acknowledged: with no host lost, none was fetched twice.
    for h in st["hosts"].as_array().unwrap() {
        assert!(h["files_ok"].as_u64().unwrap() > 0, "{h}");
        assert_eq!(h["exit_code"], 0);
    }
    assert_eq!(hosts_sum(&st, "files_ok"), copies);
    assert_eq!(copies, 100_000);
    // The job's name is spent: a new run needs a new one.
    let again = lister_command(&server, &nats, "union", &[])
        .output()
        .unwrap();
    assert_code(&again, 6);
    assert!(
        text(&again.stderr).contains("is finished"),
        "{}",
        text(&again.stderr)
    );
}

#[test]
fn a_killed_host_started_again_loses_nothing() {
    let nats = Nats::start();
    let server = Server::start(&[
        "--files",
        "20000",
        "--page-size",
        "500",
        "--latency-ms",
        "20",
    ]);
    let ws = Workspace::new();
    let a = ws.root.path().join("a");
    let b = ws.root.path().join("b");
    let mut lister = Running::spawn(lister_command(
        &server,
        &nats,
        "kill",
        &["--ack-wait", "3s", "--batch-size", "100"],
    ));
    let flags = ["--workers", "2", "--connections", "8"];
    let mut host_a = host(&server, &nats, "kill", &a, &flags);
    let mut host_b = host(&server, &nats, "kill", &b, &flags);
    wait_for(
        Duration::from_secs(60),
        "host a to fetch some files",
        || count_files(&a) >= 2_000,
    );
    // The whole host: its process group; its workers, in groups of their
    // own, see their sockets close and go too.
    killpg(Pid::from_raw(host_a.pid() as i32), Signal::SIGKILL).unwrap();
    let killed = host_a.wait_within(Duration::from_secs(10));
    assert!(!killed.status.success());
    assert!(
        count_files(&a) < 20_000,
        "host a was killed after the end of the run"
    );
    let mut host_a = host(&server, &nats, "kill", &a, &flags);
    assert_code(&lister.wait_within(Duration::from_secs(240)), 0);
    assert_code(&host_a.wait_within(Duration::from_secs(60)), 0);
    assert_code(&host_b.wait_within(Duration::from_secs(60)), 0);
    let copies = verify_union(&[a, b], &server.dataset());
    assert!(copies >= 20_000);
    let st = status_json(&nats, "kill");
    assert_eq!(st["files_failed"], 0);
    // What the killed host held came back to a host after AckWait.
    assert!(hosts_sum(&st, "batches_redelivered") > 0, "{st}");
}

#[test]
fn a_killed_lister_resumes_and_a_second_one_is_refused() {
    let nats = Nats::start();
    let server = Server::start(&[
        "--files",
        "20000",
        "--page-size",
        "100",
        "--list-delay-ms",
        "150",
    ]);
    let ws = Workspace::new();
    let out = ws.out();
    let mut first = Running::spawn(lister_command(&server, &nats, "relist", &[]));
    let mut host_a = host(&server, &nats, "relist", &out, &["--workers", "1"]);
    // The listing takes 30 s at least (200 pages, 150 ms each): after page
    // 5, that leaves the second lister and the kill below 29 s to happen
    // while it lists, even on a loaded machine where each `cluster`
    // command takes seconds to start (with 80 ms a page, the whole suite
    // on two busy cores once let the listing finish first).
    wait_for(
        Duration::from_secs(60),
        "the listing to pass page 5",
        || {
            let st = status(&nats, "relist", &["--json"]);
            st.status.success()
                && serde_json::from_slice::<serde_json::Value>(&st.stdout)
                    .ok()
                    .and_then(|v| v["lister"]["next_page"].as_u64())
                    .is_some_and(|p| p >= 5)
        },
    );
    let second = lister_command(&server, &nats, "relist", &[])
        .output()
        .unwrap();
    assert_code(&second, 6);
    assert!(
        text(&second.stderr).contains("is being listed by"),
        "{}",
        text(&second.stderr)
    );
    kill(Pid::from_raw(first.pid() as i32), Signal::SIGKILL).unwrap();
    let _ = first.wait_within(Duration::from_secs(10));
    let page_at_kill = status_json(&nats, "relist")["lister"]["next_page"]
        .as_u64()
        .unwrap();
    // Started again, it is refused while the dead one's lease runs (10 s by
    // default), then takes over from the position in the bucket.
    let mut restarted = loop {
        let mut r = Running::spawn(lister_command(&server, &nats, "relist", &[]));
        std::thread::sleep(Duration::from_millis(500));
        match r.try_exit() {
            Some(out) => {
                assert_code(&out, 6);
                std::thread::sleep(Duration::from_millis(500));
            }
            None => break r,
        }
    };
    let out = restarted.wait_within(Duration::from_secs(240));
    assert_code(&out, 0);
    assert!(
        text(&out.stderr).contains(&format!("resuming job relist at page {}", page_at_kill + 1)),
        "{}",
        text(&out.stderr)
    );
    assert_code(&host_a.wait_within(Duration::from_secs(60)), 0);
    verify_union(&[out_dir(&ws)], &server.dataset());
    let st = status_json(&nats, "relist");
    assert_eq!(st["lister"]["names_published"], 20_000);
    // The server was asked for the pages from the position on, not from
    // the start: 200 pages and at most the one in progress twice.
    let pages = server.stats()["list_pages_served"].as_u64().unwrap();
    assert!(pages <= 202, "{pages} list requests");
}

fn out_dir(ws: &Workspace) -> PathBuf {
    ws.out()
}

#[test]
fn the_job_completes_across_a_nats_server_restart() {
    let mut nats = Nats::start();
    let server = Server::start(&[
        "--files",
        "20000",
        "--page-size",
        "500",
        "--latency-ms",
        "20",
    ]);
    let ws = Workspace::new();
    let out = ws.out();
    let mut lister = Running::spawn(lister_command(
        &server,
        &nats,
        "restart",
        &["--batch-size", "100"],
    ));
    let mut h = host(
        &server,
        &nats,
        "restart",
        &out,
        &["--workers", "2", "--connections", "8"],
    );
    wait_for(Duration::from_secs(60), "some files", || {
        count_files(&out) >= 2_000
    });
    nats.kill();
    nats.launch();
    assert_code(&lister.wait_within(Duration::from_secs(240)), 0);
    assert_code(&h.wait_within(Duration::from_secs(60)), 0);
    verify_union(&[out], &server.dataset());
}

#[test]
fn a_name_that_kills_its_worker_is_failed_alone() {
    let nats = Nats::start();
    let server_args = ["--files", "2000", "--page-size", "500"];
    let probe = Server::start(&server_args);
    let poison = probe.dataset().name(777);
    drop(probe);
    let server = Server::start(&[
        "--files",
        "2000",
        "--page-size",
        "500",
        "--crash-name",
        &poison,
    ]);
    let ws = Workspace::new();
    let out = ws.out();
    let mut lister = Running::spawn(lister_command(
        &server,
        &nats,
        "poison",
        &["--batch-size", "50"],
    ));
    let mut h = host(
        &server,
        &nats,
        "poison",
        &out,
        &["--workers", "2", "--test-abort-on-header"],
    );
    let lout = lister.wait_within(Duration::from_secs(240));
    assert_code(&lout, 3);
    assert_code(&h.wait_within(Duration::from_secs(60)), 3);
    let st = status(&nats, "poison", &["--json", "--failed"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let failed = st["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{st}");
    assert_eq!(failed[0]["name"], poison.as_str());
    assert!(failed[0]["reason"]
        .as_str()
        .unwrap()
        .contains("died 4 times"));
    // Every other name is there.
    let dataset = server.dataset();
    for name in dataset.listed_names() {
        if name != poison {
            assert_eq!(
                std::fs::read(out.join(&name)).ok(),
                dataset.expected_content(&name),
                "{name}"
            );
        }
    }
    assert!(failures(&ws.state()).iter().any(|(n, _)| *n == poison));
}

#[test]
fn a_retry_after_longer_than_ack_wait_is_not_redelivered() {
    let nats = Nats::start();
    let probe = Server::start(&["--files", "500"]);
    let slow = probe.dataset().name(123);
    drop(probe);
    let server = Server::start(&[
        "--files",
        "500",
        "--throttle-name",
        &slow,
        "--retry-after",
        "6",
    ]);
    let ws = Workspace::new();
    let out = ws.out();
    let mut lister = Running::spawn(lister_command(
        &server,
        &nats,
        "throttle",
        &["--ack-wait", "2s"],
    ));
    let mut h = host(&server, &nats, "throttle", &out, &["--workers", "1"]);
    assert_code(&lister.wait_within(Duration::from_secs(120)), 0);
    assert_code(&h.wait_within(Duration::from_secs(60)), 0);
    verify_union(&[out], &server.dataset());
    let st = status_json(&nats, "throttle");
    assert_eq!(hosts_sum(&st, "batches_redelivered"), 0, "{st}");
    assert!(hosts_sum(&st, "retries") >= 1, "{st}");
}

/// A job of two batches of slow files (every answer takes `latency_ms`)
/// with host "a", one worker and `--grace GRACE`, once both batches are in
/// flight there. AckWait is far longer than the test: a batch that reaches
/// another host in time was given back, not left to run out.
///
/// Fields drop in order: the processes before what they use.
struct SlowJob {
    host_a: Running,
    _lister: Running,
    job: &'static str,
    ws: Workspace,
    server: Server,
    nats: Nats,
}

impl SlowJob {
    fn start(job: &'static str, latency_ms: &str, grace: &str) -> SlowJob {
        let nats = Nats::start();
        let server = Server::start(&["--files", "2000", "--latency-ms", latency_ms]);
        let ws = Workspace::new();
        let lister = Running::spawn(lister_command(&server, &nats, job, &["--ack-wait", "600s"]));
        let a = ws.root.path().join("a");
        let host_a = host(
            &server,
            &nats,
            job,
            &a,
            &["--workers", "1", "--grace", grace, "--host-id", "a"],
        );
        wait_for(Duration::from_secs(30), "both batches in flight", || {
            let out = status(&nats, job, &["--json"]);
            out.status.success()
                && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    .is_ok_and(|v| v["batches_in_flight"].as_u64() == Some(2))
        });
        SlowJob {
            host_a,
            _lister: lister,
            job,
            ws,
            server,
            nats,
        }
    }

    /// Whether host `id`'s published record satisfies `cond`.
    fn host_record(&self, id: &str, cond: impl Fn(&serde_json::Value) -> bool) -> bool {
        status_json(&self.nats, self.job)["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["host"] == id && cond(h))
    }

    /// Starts host "b" and waits until both batches were delivered to it
    /// again: host "a" gave them back.
    fn host_b_gets_both_batches(&self) -> Running {
        let b = self.ws.root.path().join("b");
        let host_b = host(
            &self.server,
            &self.nats,
            self.job,
            &b,
            &["--workers", "1", "--host-id", "b"],
        );
        wait_for(
            Duration::from_secs(30),
            "the batches given back to reach host b",
            || self.host_record("b", |h| h["batches_redelivered"] == 2),
        );
        host_b
    }
}

#[test]
fn a_host_stopped_by_sigterm_gives_its_unfinished_batches_back() {
    // Every answer takes 3 s: the batches cannot finish within --grace 1.
    let mut job = SlowJob::start("term", "3000", "1");
    kill(Pid::from_raw(job.host_a.pid() as i32), Signal::SIGTERM).unwrap();
    assert_code(&job.host_a.wait_within(Duration::from_secs(20)), 143);
    job.host_b_gets_both_batches();
}

#[test]
fn a_second_signal_stops_a_host_at_once_and_gives_its_batches_back() {
    // Every answer takes 5 s: within --grace 300 the batches would run for
    // minutes, so a host that exits within the bound below did not wait.
    let mut job = SlowJob::start("twice", "5000", "300");
    let pid = Pid::from_raw(job.host_a.pid() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    // Two signals sent at once may reach the host as one: the second goes
    // only once the host says it is stopping.
    wait_for(Duration::from_secs(30), "host a to be stopping", || {
        job.host_record("a", |h| h["state"] == "draining")
    });
    kill(pid, Signal::SIGTERM).unwrap();
    // The first signal's code: the second only hurries the stop.
    assert_code(&job.host_a.wait_within(Duration::from_secs(40)), 143);
    job.host_b_gets_both_batches();
}

#[test]
fn a_host_whose_every_shard_is_parked_stops_with_exit_5_and_others_finish_the_job() {
    let nats = Nats::start();
    let server = Server::start(&["--files", "2000"]);
    let ws = Workspace::new();
    let mut lister = Running::spawn(lister_command(&server, &nats, "parked", &[]));
    let a = ws.root.path().join("a");
    let mut host_a = host(
        &server,
        &nats,
        "parked",
        &a,
        &[
            "--workers",
            "1",
            "--host-id",
            "a",
            "--test-fail-start-shard",
            "0",
            "--restart-burst",
            "2",
        ],
    );
    let out = host_a.wait_within(Duration::from_secs(60));
    assert_code(&out, 5);
    assert!(
        text(&out.stderr).contains("every shard is parked"),
        "{}",
        text(&out.stderr)
    );
    let st = status_json(&nats, "parked");
    let a_record = st["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "a")
        .cloned()
        .expect("host a published its totals");
    assert_eq!(a_record["exit_code"], 5, "{a_record}");
    assert_eq!(a_record["files_ok"], 0, "{a_record}");
    // Nothing was lost with it: another host does the whole job.
    let b = ws.root.path().join("b");
    let mut host_b = host(
        &server,
        &nats,
        "parked",
        &b,
        &["--workers", "1", "--host-id", "b"],
    );
    assert_code(&lister.wait_within(Duration::from_secs(240)), 0);
    assert_code(&host_b.wait_within(Duration::from_secs(60)), 0);
    assert_eq!(verify_union(&[b], &server.dataset()), 2000);
}

/// The names in one host's OUT (its state directory aside), sorted.
fn out_names(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".bulkget")
        .collect();
    names.sort();
    names
}

/// `--include` and `--exclude` mean on `cluster list` what they mean on
/// `fetch` (tests/filters.rs, same globs): only matching names are
/// published, the others counted as excluded. A host refuses them.
#[test]
fn cluster_list_filters_names_as_fetch_does() {
    let nats = Nats::start();
    let server = Server::start(&["--files", "1000", "--page-size", "250"]);
    let ws = Workspace::new();
    let out = ws.out();
    // Names 500 to 589: 90 kept, 910 excluded.
    let filters = [
        "--include",
        "file-00000005??",
        "--exclude",
        "file-000000059?",
    ];
    let refused = cluster(&[
        "work",
        &server.url,
        out.to_str().unwrap(),
        "--nats",
        &nats.url(),
        "--job",
        "filters",
        "--include",
        "x*",
    ])
    .output()
    .unwrap();
    assert_code(&refused, 2);
    assert!(
        text(&refused.stderr).contains("cluster list"),
        "{}",
        text(&refused.stderr)
    );

    let mut lister = Running::spawn(lister_command(&server, &nats, "filters", &filters));
    let mut h = host(&server, &nats, "filters", &out, &["--workers", "1"]);
    assert_code(&lister.wait_within(Duration::from_secs(120)), 0);
    assert_code(&h.wait_within(Duration::from_secs(60)), 0);
    let dataset = server.dataset();
    let expected: Vec<String> = (500..590).map(|i| dataset.name(i)).collect();
    assert_eq!(out_names(&out), expected);
    let st = status_json(&nats, "filters");
    assert_eq!(st["lister"]["names_published"], 90, "{st}");
    assert_eq!(st["lister"]["names_excluded"], 910, "{st}");
    assert_eq!(server.stats()["requests"]["get"], 90);
    let table = text(&status(&nats, "filters", &[]).stdout);
    assert!(table.contains("(910 excluded)"), "{table}");
}

/// A host's `--max-rps` is divided among its shards, as `fetch` divides
/// its own: each of two workers is told half (the shard files' pace).
#[test]
fn a_hosts_max_rps_is_shared_by_its_workers() {
    let nats = Nats::start();
    let server = Server::start(&["--files", "600"]);
    let ws = Workspace::new();
    let out = ws.out();
    let mut lister = Running::spawn(lister_command(&server, &nats, "rps", &[]));
    let started = std::time::Instant::now();
    let mut h = host(
        &server,
        &nats,
        "rps",
        &out,
        &["--workers", "2", "--max-rps", "200"],
    );
    assert_code(&lister.wait_within(Duration::from_secs(120)), 0);
    assert_code(&h.wait_within(Duration::from_secs(60)), 0);
    verify_union(std::slice::from_ref(&out), &server.dataset());
    // 600 GETs at 200 a second take 3 s, with room for the buckets' bursts.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(2_500), "{elapsed:?}");
    for k in 0..2 {
        let shard = read_json(&out.join(format!(".bulkget/shards/shard-0{k}.json"))).unwrap();
        assert_eq!(shard["pace"]["rps_share"].as_f64(), Some(100.0), "{shard}");
    }
}

/// `ToCoordinator::Pressure` is heard on a host as in `fetch`: against a
/// service that rations requests, its two shards are slowed together
/// (a shard file says `run-wide`), and with the default flags few GETs are
/// refused and no name fails.
#[test]
fn a_hosts_shards_slow_down_together_on_pushback() {
    let nats = Nats::start();
    // A limit low enough that both shards are refused even when the
    // machine is loaded and each sends slowly.
    let server = Server::start(&["--files", "4000", "--rate-limit", "400"]);
    let ws = Workspace::new();
    let out = ws.out();
    // Batches of 100, so that both shards have work even when the second
    // worker is ready only after the first batches went to the first.
    let mut lister = Running::spawn(lister_command(
        &server,
        &nats,
        "pushback",
        &["--batch-size", "100"],
    ));
    let mut h = host(&server, &nats, "pushback", &out, &["--workers", "2"]);
    // The shard files are rewritten every second; a slow-down lasts
    // longer than that, so a poll sees it. This is a measurement, not
    // synchronisation: the host's end is its exit.
    let mut run_wide = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let output = loop {
        if let Some(output) = h.try_exit() {
            break output;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the host had not exited after 180 s"
        );
        for k in 0..2 {
            let path = out.join(format!(".bulkget/shards/shard-0{k}.json"));
            if read_json(&path).is_some_and(|s| s["pace"]["backoff"] == "run-wide") {
                run_wide = true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_code(&output, 0);
    assert_code(&lister.wait_within(Duration::from_secs(60)), 0);
    assert!(run_wide, "no shard file ever said run-wide");
    let st = status_json(&nats, "pushback");
    assert_eq!(st["files_failed"], 0, "{st}");
    assert_eq!(verify_union(&[out], &server.dataset()), 4000);
    let stats = server.stats();
    let all = stats["requests"]["get"].as_u64().unwrap();
    let refused = stats["responses"]["429"].as_u64().unwrap_or(0);
    assert!(
        refused * 10 <= all,
        "{refused} of {all} GETs were answered 429"
    );
}

/// `cluster status` answers, and answers the same job, every time it is
/// called from the moment a lister starts until the job is finished. It
/// once listed the hosts' records with an ordered consumer that
/// nats-server 2.9 kept from ending while the lister updated its record
/// (issue 15); status then failed after a 5 s bound, or hung before that.
#[test]
fn status_answers_every_call_while_a_lister_publishes() {
    let nats = Nats::start();
    // 200 pages of 100 names, 5 ms apart: the lister updates its record
    // after every page, so about every 5 ms while it lists. With the old
    // listing, the first call made once the job existed never ended.
    let files = 20_000;
    let server = Server::start(&[
        "--files",
        &files.to_string(),
        "--page-size",
        "100",
        "--list-delay-ms",
        "5",
    ]);
    let ws = Workspace::new();
    let out = ws.out();
    let job = "watched";
    let mut lister = Running::spawn(lister_command(&server, &nats, job, &[]));
    let mut worker: Option<Running> = None;
    let mut answered = 0;
    let mut while_listing = 0;
    let mut published = 0;
    let mut host_seen = false;
    // A bound for a lister that never ends (say, a host that never
    // starts), so that the test fails instead of running forever.
    let give_up = std::time::Instant::now() + Duration::from_secs(240);
    let lister_out = loop {
        assert!(
            std::time::Instant::now() < give_up,
            "the job did not finish within 240 s"
        );
        // Read before the call, so the last call is made after the exit.
        let lister_exit = lister.try_exit();
        let st = status(&nats, job, &["--json"]);
        if answered == 0 && text(&st.stderr).contains("there is no job") {
            // Called before the lister created the job: the one other
            // answer there may be, and only before the first.
            assert_code(&st, 1);
            continue;
        }
        assert_code(&st, 0);
        answered += 1;
        let st: serde_json::Value = serde_json::from_slice(&st.stdout).expect("JSON");
        assert_eq!(st["job"], job);
        let lister_rec = &st["lister"];
        // The listing position only moves forward.
        if let Some(p) = lister_rec["names_published"].as_u64() {
            assert!(p >= published, "{p} after {published}: {st}");
            published = p;
        }
        if lister_rec["listing_done"] == false {
            while_listing += 1;
        }
        // A host's record, once there, is in every later answer.
        let hosts = st["hosts"].as_array().unwrap();
        assert!(hosts.len() <= 1, "{st}");
        if host_seen {
            assert_eq!(hosts.len(), 1, "the host's record went missing: {st}");
        }
        host_seen = !hosts.is_empty();
        // Hosts start once the listing is done, so that the lister
        // publishes alone while the calls above run.
        if lister_rec["listing_done"] == true && worker.is_none() {
            worker = Some(host(&server, &nats, job, &out, &["--workers", "1"]));
        }
        if let Some(out) = lister_exit {
            break out;
        }
    };
    assert_code(&lister_out, 0);
    assert_code(
        &worker
            .expect("a host ran")
            .wait_within(Duration::from_secs(60)),
        0,
    );
    assert!(while_listing >= 3, "{while_listing} answers while listing");
    let st = status_json(&nats, job);
    assert_eq!(st["lister"]["finished"], true);
    assert_eq!(st["hosts"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(hosts_sum(&st, "files_ok"), files);
}
