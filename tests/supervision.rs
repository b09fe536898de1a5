//! Issue 3: crashed workers restart, nothing is lost, interrupted runs
//! resume. These tests kill real processes.

use crate::util::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::time::{Duration, Instant};

fn files_done(ws: &Workspace) -> u64 {
    coordinator_json(ws)
        .map(|c| c["files_ok"].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

fn gets(server: &Server) -> u64 {
    server.stats()["requests"]["get"].as_u64().unwrap()
}

/// A small deterministic generator, so a failing run can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// An outside killer (the OOM killer, an operator) that hits workers which
/// acknowledge batches between kills parks nothing: with the default
/// restart settings, only crashes of a worker that acknowledged nothing
/// count toward parking.
#[test]
fn killing_random_workers_every_second_loses_nothing() {
    let n = 200_000;
    let server = Server::start(&["--files", "200000"]);
    let ws = Workspace::new();
    let mut child = spawn_fetch(&server, &ws, &["--workers", "2", "--connections", "8"]);
    let pid = child.pid() as i32;
    let mut rng = Lcg(7);
    let mut kills = 0;
    let start = Instant::now();
    // Kill a random live worker every 0.5-1 s while the run goes on.
    while !gone(pid) && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(500 + rng.next(500)));
        if coordinator_json(&ws)
            .is_some_and(|c| c["listing_done"] == true && c["files_ok"].as_u64() == Some(n))
        {
            break;
        }
        let pids = worker_pids(&ws);
        if pids.is_empty() {
            continue;
        }
        let victim = pids[rng.next(pids.len() as u64) as usize];
        if kill(Pid::from_raw(victim), Signal::SIGKILL).is_ok() {
            kills += 1;
        }
    }
    let output = child.wait_within(Duration::from_secs(120));
    assert_code(&output, 0);
    assert!(
        kills >= 2,
        "the run ended before the test could kill workers ({kills} kills)"
    );
    // The killer was someone else: the messages do not blame the coordinator.
    let err = text(&output.stderr);
    assert!(
        err.contains("died (killed by SIGKILL); restarting"),
        "{err}"
    );
    assert!(!err.contains("killed by the coordinator"), "{err}");
    let counts = run_counts(&ws);
    assert_eq!((counts.files_ok, counts.files_failed), (n, 0));
    assert!(counts.restarts >= 1, "restarts are reported: {counts:?}");
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), n);
}

#[test]
fn workers_die_with_a_killed_coordinator_and_resume_completes() {
    let n = 100_000u64;
    let server = Server::start(&["--files", "100000"]);
    let ws = Workspace::new();
    let (workers, window, batch) = (3u64, 4u64, 256u64);
    let args = [
        "--workers",
        "3",
        "--window",
        "4",
        "--batch-size",
        "256",
        "--connections",
        "4",
        "--checkpoint-interval",
        "1",
    ];
    let mut child = spawn_fetch(&server, &ws, &args);
    let coordinator_pid = child.pid() as i32;
    wait_for(
        Duration::from_secs(60),
        "a checkpoint with files in it",
        || {
            read_json(&ws.state().join("checkpoint.json"))
                .is_some_and(|c| c["totals"]["files_ok"].as_u64() > Some(0))
        },
    );
    let pids = worker_pids(&ws);
    assert_eq!(pids.len(), 3);
    kill(Pid::from_raw(coordinator_pid), Signal::SIGKILL).unwrap();
    let _ = child.wait_within(Duration::from_secs(10));
    let killed_at = Instant::now();
    wait_for(
        Duration::from_secs(5),
        "every worker to exit after the coordinator died",
        || pids.iter().all(|p| gone(*p)),
    );
    assert!(killed_at.elapsed() < Duration::from_secs(5));

    let checkpoint = read_json(&ws.state().join("checkpoint.json")).unwrap();
    let saved = checkpoint["totals"]["files_ok"].as_u64().unwrap();
    let gets_before = gets(&server);
    let output = fetch(&server, &ws, &[&args[..], &["--resume"]].concat());
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), n);
    assert_eq!(files_ok(&ws), n, "counted once");

    // The resume fetches everything after the checkpoint: what was not yet
    // acknowledged when it was written, plus at most what was in flight.
    let refetched = gets_before + gets(&server) - gets_before - n;
    let acked_after_checkpoint = gets_before.saturating_sub(saved);
    assert!(
        refetched <= acked_after_checkpoint + workers * window * batch,
        "{refetched} files fetched twice; checkpoint had {saved}, {gets_before} fetched before the kill"
    );
}

#[test]
fn sigint_saves_a_checkpoint_and_resume_fetches_at_most_the_in_flight_work_again() {
    let n = 100_000u64;
    let server = Server::start(&["--files", "100000"]);
    let ws = Workspace::new();
    let args = [
        "--workers",
        "2",
        "--window",
        "4",
        "--batch-size",
        "256",
        "--connections",
        "4",
    ];
    let mut child = spawn_fetch(&server, &ws, &args);
    wait_for(Duration::from_secs(60), "some files done", || {
        files_done(&ws) > 5_000
    });
    kill(Pid::from_raw(child.pid() as i32), Signal::SIGINT).unwrap();
    let output = child.wait_within(Duration::from_secs(60));
    assert_code(&output, 130);
    let summary = text(&output.stdout);
    assert!(
        summary.contains("--resume"),
        "the summary says how to resume: {summary}"
    );
    let checkpoint = read_json(&ws.state().join("checkpoint.json")).unwrap();
    assert_eq!(checkpoint["complete"], false);
    let saved = checkpoint["totals"]["files_ok"].as_u64().unwrap();
    assert!(saved > 0);

    let gets_before = gets(&server);
    let output = fetch(&server, &ws, &[&args[..], &["--resume"]].concat());
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), n);
    // The final checkpoint after Ctrl-C is exact: only batches still in
    // flight when the grace period ended can be fetched twice.
    let refetched = gets(&server) - n;
    assert!(
        refetched <= 2 * 4 * 256,
        "{refetched} refetched; {saved} saved of {gets_before} fetched"
    );
    // A finished run says so when asked again.
    let again = fetch(&server, &ws, &args);
    assert_code(&again, 0);
    assert!(
        text(&again.stdout).contains("already complete"),
        "{}",
        text(&again.stdout)
    );
}

#[test]
fn a_name_that_crashes_its_worker_fails_alone() {
    let server = Server::start(&["--files", "5000", "--crash-name", "file-0000002345"]);
    let ws = Workspace::new();
    let output = fetch(
        &server,
        &ws,
        &[
            "--workers",
            "2",
            "--connections",
            "4",
            "--test-abort-on-header",
        ],
    );
    assert_code(&output, 3);
    let failed = failures(&ws.state());
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "file-0000002345");
    assert!(failed[0].1.contains("worker crashed"), "{failed:?}");
    let dataset = server.dataset();
    let present = (0..5000u64)
        .map(|i| dataset.name(i))
        .filter(|n| n != "file-0000002345")
        .filter(|n| std::fs::read(ws.out().join(n)).ok() == dataset.expected_content(n))
        .count();
    assert_eq!(present, 4999);
    assert!(!ws.out().join("file-0000002345").exists());
}

/// Crashes blamed on a suspect batch that a worker held alone count against
/// the batch, not the shard: four poison names cost about sixteen crashes,
/// and with the default restart settings no shard is parked.
#[test]
fn four_poison_names_on_two_workers_fail_alone_with_default_restart_settings() {
    let poison = [
        "file-0000000777",
        "file-0000002345",
        "file-0000003210",
        "file-0000004321",
    ];
    let mut server_args = vec!["--files", "5000"];
    for name in &poison {
        server_args.extend(["--crash-name", name]);
    }
    let server = Server::start(&server_args);
    let ws = Workspace::new();
    let output = fetch(&server, &ws, &["--workers", "2", "--test-abort-on-header"]);
    assert_code(&output, 3);
    let mut failed: Vec<String> = failures(&ws.state())
        .into_iter()
        .map(|(name, reason)| {
            assert!(reason.contains("worker crashed"), "{name}: {reason}");
            name
        })
        .collect();
    failed.sort();
    assert_eq!(failed, poison);
    let counts = run_counts(&ws);
    assert_eq!(counts.parked, 0, "{counts:?}");
    assert_eq!(counts.files_ok, 4996, "{counts:?}");
    let dataset = server.dataset();
    let present = (0..5000u64)
        .map(|i| dataset.name(i))
        .filter(|n| std::fs::read(ws.out().join(n)).ok() == dataset.expected_content(n))
        .count();
    assert_eq!(present, 4996);
}

#[test]
fn a_shard_that_cannot_start_is_parked_and_the_others_finish() {
    // Ten pages, each after the first served 300 ms late, so the run lasts
    // at least 2.7 s: far longer than the two failed starts (100 ms apart)
    // after which --restart-burst 1 parks the shard. Without that floor a
    // fast run could end while the shard is still backing off.
    let server = Server::start(&[
        "--files",
        "20000",
        "--page-size",
        "2000",
        "--list-delay-ms",
        "300",
    ]);
    let ws = Workspace::new();
    let output = fetch(
        &server,
        &ws,
        &[
            "--workers",
            "3",
            "--test-fail-start-shard",
            "1",
            "--restart-burst",
            "1",
        ],
    );
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 20_000);
    assert_eq!(run_counts(&ws).parked, 1);
    let c = coordinator_json(&ws).unwrap();
    assert_eq!(c["shards"][1]["state"], "parked");
    assert_eq!(c["shards"][1]["restarts"], 1);
}

#[test]
fn every_shard_parked_stops_the_run_with_a_checkpoint() {
    let server = Server::start(&["--files", "2000"]);
    let ws = Workspace::new();
    let output = fetch(
        &server,
        &ws,
        &[
            "--workers",
            "1",
            "--test-fail-start-shard",
            "0",
            "--restart-burst",
            "2",
        ],
    );
    assert_code(&output, 5);
    assert!(
        text(&output.stderr).contains("every shard is parked"),
        "{}",
        text(&output.stderr)
    );
    let checkpoint = read_json(&ws.state().join("checkpoint.json")).unwrap();
    assert_eq!(checkpoint["complete"], false);
}

#[test]
fn a_second_run_on_the_same_state_directory_is_refused_and_touches_nothing() {
    let server = Server::start(&["--files", "200000", "--latency-ms", "1"]);
    let ws = Workspace::new();
    let mut first = spawn_fetch(&server, &ws, &["--workers", "1", "--connections", "2"]);
    wait_for(Duration::from_secs(30), "the first run to start", || {
        files_done(&ws) > 0
    });
    let before = std::fs::read(ws.state().join("run.json")).unwrap();
    let second = fetch(&server, &ws, &["--workers", "1"]);
    assert_code(&second, 6);
    let err = text(&second.stderr);
    assert!(err.contains("in use by another bulkget run"), "{err}");
    assert!(
        err.contains(&format!("pid {}", first.pid())),
        "names the other run's pid: {err}"
    );
    assert_eq!(std::fs::read(ws.state().join("run.json")).unwrap(), before);
    kill(Pid::from_raw(first.pid() as i32), Signal::SIGKILL).unwrap();
    let _ = first.wait_within(Duration::from_secs(10));
}

#[test]
fn resuming_with_another_url_is_refused() {
    let server = Server::start(&["--files", "1000"]);
    let other = Server::start(&["--files", "1000"]);
    let ws = Workspace::new();
    let mut child = spawn_fetch(&server, &ws, &["--workers", "1"]);
    let out = child.wait_within(Duration::from_secs(60));
    assert_code(&out, 0);
    let output = fetch(&other, &ws, &["--resume"]);
    assert_code(&output, 6);
    assert!(
        text(&output.stderr).contains("belongs to a run of"),
        "{}",
        text(&output.stderr)
    );
    let _ = Path::new("");
}

#[test]
fn a_worker_killed_while_its_batches_are_stalled_loses_nothing_and_counts_each_file_once() {
    // A tenth of the names are told `Retry-After: 3` once, so for a few
    // seconds most batches are stalled: out of the window, their other
    // names already counted. Killing a worker then must put back only the
    // waiting names, and every file must be counted exactly once.
    let n = 20_000;
    let server = Server::start(&[
        "--files",
        "20000",
        "--page-size",
        "1000",
        "--throttle-rate",
        "0.1",
        "--retry-after",
        "3",
    ]);
    let ws = Workspace::new();
    let mut child = spawn_fetch(&server, &ws, ONE_BATCH_WINDOW);
    // The stalled shard with the most stalled batches, once there is one.
    let stalled_worker = || -> Option<(i32, u64)> {
        let c = coordinator_json(&ws)?;
        c["shards"]
            .as_array()?
            .iter()
            .filter_map(|s| Some((s["pid"].as_i64()? as i32, s["batches_stalled"].as_u64()?)))
            .filter(|&(_, stalled)| stalled > 0)
            .max_by_key(|&(_, stalled)| stalled)
    };
    let mut victim = None;
    wait_for(
        Duration::from_secs(60),
        "a shard with stalled batches",
        || {
            victim = stalled_worker();
            victim.is_some()
        },
    );
    let (pid, stalled) = victim.unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("the worker with stalled batches is alive");

    let output = child.wait_within(Duration::from_secs(120));
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), n);
    assert!(failures(&ws.state()).is_empty());
    let c = coordinator_json(&ws).unwrap();
    assert_eq!(
        c["files_ok"], n,
        "counted once each after {stalled} stalled batches were put back: {c}"
    );
    assert_eq!(c["files_failed"], 0, "{c}");
    let restarts: u64 = c["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["restarts"].as_u64().unwrap())
        .sum();
    assert!(restarts >= 1, "{c}");
}

#[test]
fn sighup_stops_like_sigterm_with_exit_129_and_the_run_resumes() {
    // A closed terminal sends SIGHUP: the run drains, saves its checkpoint
    // and exits 129 instead of dying without one.
    // At 2 ms a file on 4 connections the run lasts at least 3 s; the
    // stats file says what is done once a second.
    let n = 6_000u64;
    let server = Server::start(&["--files", "6000", "--latency-ms", "2"]);
    let ws = Workspace::new();
    let args = ["--workers", "2", "--connections", "2"];
    let mut child = spawn_fetch(&server, &ws, &args);
    wait_for(Duration::from_secs(60), "some files done", || {
        files_done(&ws) > 0
    });
    kill(Pid::from_raw(child.pid() as i32), Signal::SIGHUP).unwrap();
    let output = child.wait_within(Duration::from_secs(60));
    assert_code(&output, 129);
    let summary = text(&output.stdout);
    assert!(
        summary.contains("interrupted by SIGHUP") && summary.contains("--resume"),
        "{summary}"
    );
    let checkpoint = read_json(&ws.state().join("checkpoint.json")).unwrap();
    assert_eq!(checkpoint["complete"], false);
    assert!(checkpoint["totals"]["files_ok"].as_u64().unwrap() > 0);
    assert_eq!(coordinator_json(&ws).unwrap()["state"], "interrupted");

    let output = fetch(&server, &ws, &[&args[..], &["--resume"]].concat());
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), n);
}

#[test]
fn a_failed_sync_stops_the_run_at_once_and_no_later_checkpoint_is_written() {
    // The first sync of OUT fails, once, as the kernel reports a lost
    // write-back once: the next sync would succeed, and a checkpoint after
    // it would call files done that the disk lost. So the run must stop
    // there (exit 1), naming the cause, and write no checkpoint at all. At
    // 5 ms a file on 8 connections the run would last 12 s.
    let n = 20_000u64;
    let server = Server::start(&["--files", "20000", "--latency-ms", "5"]);
    let ws = Workspace::new();
    let mut child = spawn_fetch(
        &server,
        &ws,
        &[
            "--workers",
            "2",
            "--connections",
            "4",
            "--checkpoint-interval",
            "1",
            "--test-fail-sync-after",
            "0",
        ],
    );
    let output = child.wait_within(Duration::from_secs(60));
    assert_code(&output, 1);
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot sync the file system of")
            && stderr.contains("(syncfs)")
            && stderr.contains("stopping the run now"),
        "{stderr}"
    );
    assert!(
        !ws.state().join("checkpoint.json").exists(),
        "no checkpoint after a failed sync: {:?}",
        read_json(&ws.state().join("checkpoint.json"))
    );
    let summary = text(&output.stdout);
    assert!(
        summary.contains("stopped: cannot sync") && summary.contains("none was saved"),
        "{summary}"
    );
    assert!(gets(&server) < n, "the run stopped at once");
    assert_eq!(coordinator_json(&ws).unwrap()["state"], "failed");
}

/// A worker that closes its socket but does not exit is killed by the
/// coordinator, and the message says so, with the worker's exit status.
#[test]
fn a_worker_the_coordinator_kills_is_reported_as_killed_by_it() {
    let server = Server::start(&["--files", "2000"]);
    let ws = Workspace::new();
    let output = fetch(
        &server,
        &ws,
        &["--workers", "1", "--test-linger-shard", "0"],
    );
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 2000);
    let err = text(&output.stderr);
    assert!(
        err.contains(
            "worker 0 was killed by the coordinator because it closed its socket and it had not exited 2s later (killed by SIGKILL); restarting"
        ),
        "{err}"
    );
    assert!(!err.contains("died"), "{err}");
}

/// A copy of the `bulkget` binary in a directory of its own, so a test can
/// replace it while a run started from it goes on.
fn copy_of_bulkget(dir: &Path) -> std::path::PathBuf {
    let copy = dir.join("bulkget");
    std::fs::copy(BULKGET, &copy).unwrap();
    // Another test thread may fork while the copy is open for writing, and
    // its child holds the descriptor until it execs: running the copy fails
    // with ETXTBSY until then. Run it until it runs.
    wait_for(Duration::from_secs(30), "the copied binary to run", || {
        match std::process::Command::new(&copy).arg("--version").output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => false,
            Err(e) => panic!("cannot run {}: {e}", copy.display()),
            Ok(_) => true,
        }
    });
    copy
}

/// Workers are started from the coordinator's own image, not from the path
/// it was started from: a binary replaced during the run (an upgrade) does
/// not change what restarted workers run.
#[test]
fn restarted_workers_run_the_coordinators_own_code_after_its_file_is_replaced() {
    // Twenty pages served 200 ms apart: the run lasts at least 4 s. Few
    // files: the time is in the listing.
    let server = Server::start(&[
        "--files",
        "2000",
        "--page-size",
        "100",
        "--list-delay-ms",
        "200",
    ]);
    let ws = Workspace::new();
    let bin_dir = tempfile::tempdir().unwrap();
    let copy = copy_of_bulkget(bin_dir.path());
    let mut cmd = std::process::Command::new(&copy);
    cmd.args([
        "fetch",
        &server.url,
        ws.out().to_str().unwrap(),
        "--progress",
        "none",
        "--workers",
        "1",
    ]);
    let mut child = Running::spawn(cmd);
    let mut worker = None;
    wait_for(Duration::from_secs(60), "the worker at work", || {
        worker = worker_pids(&ws).first().copied();
        worker.is_some() && files_done(&ws) > 0
    });
    // Replace the file as an upgrade would (a new file renamed over the old
    // one; the old one is then deleted, kept only by the running process),
    // with a program that is not bulkget at all.
    let script = bin_dir.path().join("new-bulkget");
    std::fs::write(&script, "#!/bin/sh\nexit 99\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&script, &copy).unwrap();
    kill(Pid::from_raw(worker.unwrap()), Signal::SIGKILL).unwrap();

    let output = child.wait_within(Duration::from_secs(120));
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 2000);
    let summary = text(&output.stdout);
    assert!(summary.contains("restarts:       1"), "{summary}");
    assert!(!summary.contains("parked"), "{summary}");
    let shard = read_json(&ws.state().join("shards/shard-00.json")).unwrap();
    assert_eq!(
        shard["generation"], 1,
        "the restarted worker did the rest: {shard}"
    );
}

/// A worker of another build is one clear fatal error, not a crash loop:
/// the run stops at once with exit 1 and a checkpoint, and no worker is
/// restarted. The hook makes the coordinator announce another build, so
/// the real worker answers with a version that differs from it.
#[test]
fn a_worker_of_another_build_stops_the_run_with_one_clear_error() {
    let server = Server::start(&["--files", "2000"]);
    let ws = Workspace::new();
    let output = fetch(
        &server,
        &ws,
        &["--workers", "2", "--test-announce-build", "another-build"],
    );
    assert_code(&output, 1);
    let err = text(&output.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("another build"))
        .collect();
    assert_eq!(lines.len(), 1, "one message: {err}");
    let protocol = bulkget_protocol::PROTOCOL_VERSION;
    assert!(
        lines[0].contains(&format!("(protocol {protocol}, build 0.1.0+"))
            && lines[0].contains(&format!(
                "than this coordinator (protocol {protocol}, build another-build)"
            )),
        "names both versions: {err}"
    );
    assert!(!err.contains("restarting"), "{err}");
    assert!(!err.contains("parked"), "{err}");
    let summary = text(&output.stdout);
    assert!(summary.contains("restarts:       0"), "{summary}");
    assert!(summary.contains("--resume"), "{summary}");
    let checkpoint = read_json(&ws.state().join("checkpoint.json")).unwrap();
    assert_eq!(checkpoint["complete"], false);

    // The same binary, without the hook, resumes and completes.
    let output = fetch(&server, &ws, &["--workers", "2", "--resume"]);
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 2000);
}
