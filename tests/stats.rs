//! Issue 4: the stats files, `bulkget status`, and the progress display.
//! Real runs on loopback; the files are read as a person or a script would,
//! while the run goes on and after it.

use crate::util::*;
use bulkget_stats::{CoordinatorStats, ShardState, ShardStats, SummaryState};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn coordinator(state: &Path) -> Option<CoordinatorStats> {
    bulkget_stats::read_json(&state.join("coordinator.json"))
        .ok()
        .flatten()
}

fn shard(state: &Path, k: u32) -> ShardStats {
    bulkget_stats::read_json(&state.join(format!("shards/shard-{k:02}.json")))
        .unwrap()
        .unwrap_or_else(|| panic!("no stats file for shard {k}"))
}

/// `bulkget status ARGS...`, run to the end.
fn status(args: &[&str]) -> Output {
    let mut cmd = bulkget(&["status"]);
    cmd.args(args);
    cmd.output().expect("run bulkget status")
}

/// The number after `label` in the fetch summary (`  files ok:       42`).
fn summary_number(stdout: &[u8], label: &str) -> u64 {
    let text = text(stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in the summary:\n{text}"))
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Whether `line` is a plain progress line:
/// `bulkget: H:MM:SS DONE/LISTED[+] files ...files/s, ...`.
fn is_progress_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("bulkget: ") else {
        return false;
    };
    let mut words = rest.split(' ');
    let clock = words.next().unwrap_or("");
    let clock_ok = {
        let parts: Vec<&str> = clock.split(':').collect();
        parts.len() == 3
            && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit()))
            && parts[1].len() == 2
            && parts[2].len() == 2
    };
    let counts = words.next().unwrap_or("");
    let counts_ok = counts.split_once('/').is_some_and(|(done, listed)| {
        let number = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == ',');
        number(done) && number(listed.trim_end_matches('+'))
    });
    clock_ok && counts_ok && words.next() == Some("files") && rest.contains(" files/s, ")
}

/// The `done/listed` of a progress line, without separators.
fn progress_counts(line: &str) -> (u64, String) {
    let counts = line.split(' ').nth(2).unwrap();
    let (done, listed) = counts.split_once('/').unwrap();
    (
        done.replace(',', "").parse().unwrap(),
        listed.replace(',', ""),
    )
}

#[test]
fn stats_files_parse_at_every_moment_of_a_run() {
    let n = 10_000u64;
    let server = Server::start(&["--files", "10000", "--latency-ms", "1"]);
    let ws = Workspace::new();
    let state = ws.state();
    // The sink does not matter here; `null` keeps the run about the files.
    let mut child = spawn_fetch(
        &server,
        &ws,
        &["--workers", "2", "--connections", "4", "--sink", "null"],
    );

    // A reader as a script would be: read, parse, again, as fast as it can.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (state, done) = (state.clone(), done.clone());
        std::thread::spawn(move || {
            let files: Vec<PathBuf> = vec![
                state.join("coordinator.json"),
                state.join("shards/shard-00.json"),
                state.join("shards/shard-01.json"),
            ];
            let mut reads = [0u64; 3];
            let mut live_reads = 0u64;
            let mut last_ok = [0u64; 3];
            while !done.load(Ordering::Acquire) {
                for (i, path) in files.iter().enumerate() {
                    let bytes = match std::fs::read(path) {
                        Ok(b) => b,
                        // Not written yet: a reader skips it.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => panic!("{}: {e}", path.display()),
                    };
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                        panic!(
                            "torn or invalid {} after {} reads: {e}: {:?}",
                            path.display(),
                            reads[i],
                            String::from_utf8_lossy(&bytes)
                        )
                    });
                    assert_eq!(v["schema_version"], 1, "{}", path.display());
                    assert!(v["updated_at"].is_string(), "{v}");
                    let ok = v["files_ok"].as_u64().expect("files_ok is a number");
                    if i == 0 {
                        let c: CoordinatorStats = serde_json::from_value(v).unwrap();
                        if !c.state.is_final() {
                            live_reads += 1;
                        }
                        assert_eq!(c.shards.len(), 2);
                    } else {
                        let s: ShardStats = serde_json::from_value(v).unwrap();
                        assert_eq!(s.shard, i as u32 - 1);
                    }
                    // Counters never go back (no worker restarts here).
                    assert!(ok >= last_ok[i], "{} went back", path.display());
                    last_ok[i] = ok;
                    reads[i] += 1;
                }
            }
            (reads, live_reads)
        })
    };
    let output = child.wait_within(Duration::from_secs(120));
    done.store(true, Ordering::Release);
    let (reads, live_reads) = reader.join().expect("the reader saw only whole files");
    assert_code(&output, 0);
    assert!(
        reads.iter().all(|&r| r >= 200) && live_reads >= 200,
        "too few reads to mean anything: {reads:?}, {live_reads} during the run"
    );
    // The last snapshots are the final ones.
    assert_eq!(coordinator(&state).unwrap().files_ok, n);
    for k in 0..2 {
        assert_eq!(shard(&state, k).state, ShardState::Exited);
    }
    // Nothing but the two shard files is left in shards/: no temporary file.
    let mut names: Vec<String> = std::fs::read_dir(state.join("shards"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["shard-00.json", "shard-01.json"]);
}

#[test]
fn every_count_agrees_after_a_run_retries_included() {
    let n = 5_000u64;
    // 4% of the names answer 5xx once, so retries are counted too.
    let server = Server::start(&["--files", "5000", "--error-rate", "0.04"]);
    let ws = Workspace::new();
    let state = ws.state();
    let output = fetch(&server, &ws, &["--workers", "2", "--connections", "8"]);
    assert_code(&output, 0);

    let shards: Vec<ShardStats> = (0..2).map(|k| shard(&state, k)).collect();
    let c = coordinator(&state).unwrap();
    let cp =
        bulkget_stats::checkpoint::parse(&std::fs::read(state.join("checkpoint.json")).unwrap())
            .unwrap()
            .checkpoint;
    let report: Value =
        serde_json::from_slice(&status(&[state.to_str().unwrap(), "--json"]).stdout)
            .expect("status --json prints JSON");

    // Files: the sink, the shards, the coordinator, the summary, the
    // checkpoint and `status --json` all say N.
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), n);
    assert_eq!(shards.iter().map(|s| s.files_ok).sum::<u64>(), n);
    assert_eq!(c.files_ok, n);
    assert_eq!(summary_number(&output.stdout, "files ok:"), n);
    assert_eq!(cp.totals.files_ok, n);
    assert_eq!(report["totals"]["files_ok"], n);
    assert_eq!(report["coordinator"]["files_ok"], n);
    assert_eq!(report["totals"]["bytes"], c.bytes);
    assert_eq!(c.bytes, n * 100);

    // Retries: what the workers counted, what they reported with their
    // batches, and what the server saw (one GET per attempt).
    let retries = summary_number(&output.stdout, "retries:");
    assert!(retries > 0, "the faults caused retries");
    assert_eq!(shards.iter().map(|s| s.retries).sum::<u64>(), retries);
    assert_eq!(c.retries, retries);
    assert_eq!(cp.totals.retries, retries);
    assert_eq!(report["totals"]["retries"], retries);
    let gets = server.stats()["requests"]["get"].as_u64().unwrap();
    assert_eq!(gets, n + retries);

    // The coordinator's final snapshot.
    assert_eq!(c.state, bulkget_stats::RunState::Finished);
    assert_eq!(c.exit_code, Some(0));
    assert!(c.listing_done);
    assert_eq!(c.current_marker, None);
    assert_eq!((c.names_listed, c.pages_listed), (n, 5));
    assert_eq!(
        (c.eta_seconds, c.eta_method.as_str()),
        (None, "none: run over")
    );
    assert_eq!(c.batches_queued, 0);
    assert!(c.shards.iter().all(|s| s.batches_in_flight == 0
        && s.state == SummaryState::Stopped
        && s.pid.is_none()
        && s.restarts == 0));
    assert!(cp.complete);
    assert_eq!(cp.position, bulkget_stats::checkpoint::ListPosition::Done);
    assert_eq!(report["stale_shards"], serde_json::json!([]));
    assert_eq!(report["warnings"], serde_json::json!([]));
}

/// Every key of the real files has a row in docs/STATS.md.
#[test]
fn the_documentation_names_every_field_the_run_writes() {
    let server = Server::start(&["--files", "3000"]);
    let ws = Workspace::new();
    let state = ws.state();
    assert_code(&fetch(&server, &ws, &["--workers", "2"]), 0);
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/STATS.md")).unwrap();
    let documented = |key: &str| doc.contains(&format!("| `{key}` |"));
    let mut missing = Vec::new();
    let mut check = |prefix: &str, v: &Value| {
        for key in v.as_object().unwrap().keys() {
            let name = format!("{prefix}{key}");
            if !documented(&name) {
                missing.push(name);
            }
        }
    };
    let c = read_json(&state.join("coordinator.json")).unwrap();
    check("", &c);
    check("", &c["shards"][0]);
    let s = read_json(&state.join("shards/shard-00.json")).unwrap();
    check("", &s);
    check("latency_ms.", &s["latency_ms"]);
    let cp = read_json(&state.join("checkpoint.json")).unwrap();
    check("", &cp);
    check("totals.", &cp["totals"]);
    check("done_after.", &cp["done_after"]);
    assert!(missing.is_empty(), "not in docs/STATS.md: {missing:?}");
}

#[test]
fn a_killed_worker_shows_in_its_generation_and_restarts_and_every_file_counts_once() {
    let n = 20_000u64;
    let server = Server::start(&["--files", "20000", "--latency-ms", "2"]);
    let ws = Workspace::new();
    let state = ws.state();
    let mut child = spawn_fetch(
        &server,
        &ws,
        &["--workers", "2", "--connections", "4", "--sink", "null"],
    );
    let mut victim = None;
    wait_for(Duration::from_secs(60), "shard 0 at work", || {
        victim = coordinator(&state).and_then(|c| {
            (!c.state.is_final() && c.files_ok >= 500 && c.files_ok < n / 2)
                .then_some(c.shards[0].pid)
                .flatten()
        });
        victim.is_some()
    });
    let victim = victim.unwrap();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();

    // While the run goes on, the coordinator says the shard restarted and a
    // new worker of the next generation writes the file.
    wait_for(Duration::from_secs(60), "shard 0's next worker", || {
        bulkget_stats::read_json::<ShardStats>(&state.join("shards/shard-00.json"))
            .ok()
            .flatten()
            .is_some_and(|s| s.generation >= 1 && s.pid != victim)
    });
    let output = child.wait_within(Duration::from_secs(120));
    assert_code(&output, 0);

    let s0 = shard(&state, 0);
    let c = coordinator(&state).unwrap();
    assert!(s0.generation >= 1, "{s0:?}");
    assert!(c.shards[0].restarts >= 1, "{:?}", c.shards);
    assert_eq!(c.shards[0].restarts, s0.generation);
    assert_eq!(c.shards[1].restarts, shard(&state, 1).generation);
    assert!(c.batches_requeued >= 1);
    // Every file counted once by the coordinator and the summary, although
    // shard 0's own counters began again with its new worker.
    assert_eq!(c.files_ok, n);
    assert_eq!(summary_number(&output.stdout, "files ok:"), n);
    assert_eq!(
        summary_number(&output.stdout, "restarts:"),
        u64::from(c.shards[0].restarts + c.shards[1].restarts)
    );
    let shard_sum = s0.files_ok + shard(&state, 1).files_ok;
    assert!(shard_sum <= n, "{shard_sum}");

    // `status` shows the generation and the restarts.
    let out = status(&[state.to_str().unwrap()]);
    assert_code(&out, 0);
    let table = text(&out.stdout);
    let row0: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("   00 "))
        .expect("a row for shard 00")
        .split_whitespace()
        .collect();
    assert_eq!(row0[1], s0.pid.to_string(), "{table}");
    assert_eq!(row0[2], s0.generation.to_string(), "{table}");
    assert!(
        table.contains(&format!(
            "shards     2: 2 stopped; {} restart",
            c.shards[0].restarts + c.shards[1].restarts
        )),
        "{table}"
    );
}

#[test]
fn status_of_a_live_run_a_finished_one_and_an_empty_directory() {
    // An empty directory: exit 1 and a message that says what was looked for.
    let empty = tempfile::tempdir().unwrap();
    let out = status(&[empty.path().to_str().unwrap()]);
    assert_code(&out, 1);
    assert!(out.stdout.is_empty());
    let msg = text(&out.stderr);
    assert!(
        msg.contains(&format!(
            "no bulkget run found in {0} (expected {0}/coordinator.json or {0}/shards/)",
            empty.path().display()
        )),
        "{msg}"
    );

    let n = 20_000u64;
    let server = Server::start(&["--files", "20000", "--latency-ms", "2"]);
    let ws = Workspace::new();
    let state = ws.state();
    let state_arg = state.to_str().unwrap().to_string();
    let mut child = spawn_fetch(
        &server,
        &ws,
        &["--workers", "2", "--connections", "4", "--sink", "null"],
    );
    wait_for(Duration::from_secs(60), "both shards at work", || {
        coordinator(&state).is_some_and(|c| !c.state.is_final() && c.files_ok > 0)
            && (0..2).all(|k| state.join(format!("shards/shard-{k:02}.json")).exists())
    });
    // `--watch --json` from now to the end, in the background.
    let mut watcher = Running::spawn(bulkget(&[
        "status",
        &state_arg,
        "--watch",
        "--json",
        "--interval-ms",
        "200",
    ]));

    // While it runs: the header says listing or draining, one row per shard
    // with a live pid, a TOTAL row.
    let out = status(&[&state_arg]);
    assert_code(&out, 0);
    let live = text(&out.stdout);
    assert!(
        live.starts_with("run        listing, pid ")
            || live.starts_with("run        draining, pid "),
        "{live}"
    );
    assert!(
        live.contains("\nshards     2: 2 running; 0 restarts\n"),
        "{live}"
    );
    for k in 0..2 {
        let row: Vec<&str> = live
            .lines()
            .find(|l| l.starts_with(&format!("   0{k} ")))
            .unwrap_or_else(|| panic!("no row for shard {k}:\n{live}"))
            .split_whitespace()
            .collect();
        let pid: i32 = row[1].parse().unwrap();
        assert!(
            kill(Pid::from_raw(pid), None).is_ok(),
            "shard {k}'s pid is alive"
        );
        assert!(
            ["starting", "running", "draining"].contains(&row[3]),
            "{live}"
        );
    }
    assert!(live.lines().any(|l| l.starts_with("TOTAL ")), "{live}");
    assert!(!live.contains("STALE"), "{live}");
    let live_json: Value = serde_json::from_slice(&status(&[&state_arg, "--json"]).stdout).unwrap();
    assert!(["listing", "draining"].contains(&live_json["coordinator"]["state"].as_str().unwrap()));
    assert_eq!(live_json["shards"].as_array().unwrap().len(), 2);

    let output = child.wait_within(Duration::from_secs(120));
    assert_code(&output, 0);

    // The watcher ends by itself once the run is final, its last line saying
    // so; the lines before it were taken while the run went on.
    let watched = watcher.wait_within(Duration::from_secs(30));
    assert_code(&watched, 0);
    let lines: Vec<Value> = text(&watched.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(lines.len() >= 2, "{} lines", lines.len());
    let last = lines.last().unwrap();
    assert_eq!(last["coordinator"]["state"], "finished");
    assert_eq!(last["coordinator"]["files_ok"], n);
    assert_ne!(lines[0]["coordinator"]["state"], "finished");

    // After it: finished, exit 0, every shard exited, the checkpoint complete.
    let out = status(&[ws.out().to_str().unwrap()]); // the output directory works too
    assert_code(&out, 0);
    let done = text(&out.stdout);
    assert!(
        done.starts_with("run        finished (exit 0), pid "),
        "{done}"
    );
    assert!(
        done.contains("\nlisting    20 pages, 20,000 names, done\n"),
        "{done}"
    );
    assert!(
        done.contains("\nfiles      20,000 ok + 0 failed of 20,000 (100.0 %), 2.0 MB, 0 retries\n"),
        "{done}"
    );
    assert!(done.contains(", no eta: run over\n"), "{done}");
    assert!(
        done.contains("; the run is complete, nothing to resume\n"),
        "{done}"
    );
    assert!(
        done.contains("\n           20,000 ok + 0 failed, 2.0 MB; 20 pages\n"),
        "{done}"
    );
    assert_eq!(done.matches(" exited ").count(), 2, "{done}");
    let total: Vec<&str> = done
        .lines()
        .find(|l| l.starts_with("TOTAL "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&total[..3], ["TOTAL", "0", "20,000"], "{done}");
    assert!(
        !done.contains("STALE") && !done.contains("warning"),
        "{done}"
    );
}

#[test]
fn plain_progress_lines_when_not_a_terminal_json_lines_with_json_logs_and_quiet() {
    let n = 2_000u64;
    let server = Server::start(&["--files", "2000"]);
    // The null sink: these runs are about what is printed, not the files.
    let run = |args: &[&str]| -> Output {
        let ws = Workspace::new();
        let out = ws.out();
        bulkget(&[
            "fetch",
            &server.url,
            out.to_str().unwrap(),
            "--workers",
            "2",
            "--sink",
            "null",
        ])
        .args(args)
        .output()
        .unwrap()
    };

    // `auto` and `plain` on a pipe: plain lines, the last with the final
    // numbers; the summary on stdout.
    for mode in ["auto", "plain"] {
        let output = run(&["--progress", mode]);
        assert_code(&output, 0);
        let stderr = text(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| is_progress_line(l)).collect();
        assert!(!lines.is_empty(), "no progress line with {mode}:\n{stderr}");
        assert!(!stderr.contains('\x1b'), "no terminal codes on a pipe");
        let last = lines.last().unwrap();
        assert_eq!(progress_counts(last), (n, n.to_string()), "{last}");
        assert!(last.contains(" files (100.0 %), "), "{last}");
        assert_eq!(summary_number(&output.stdout, "files ok:"), n);
    }

    // With JSON logs, every line on stderr is a JSON object; progress lines
    // carry the numbers as fields.
    let output = bulkget(&["--log-format", "json"])
        .args([
            "fetch",
            &server.url,
            Workspace::new().out().to_str().unwrap(),
            "--workers",
            "2",
            "--sink",
            "null",
            "--progress",
            "plain",
        ])
        .output()
        .unwrap();
    assert_code(&output, 0);
    let stderr = text(&output.stderr);
    let objects: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let last = objects
        .iter()
        .rev()
        .find(|v| v["fields"]["message"] == "progress")
        .expect("a progress object");
    assert_eq!(last["fields"]["files_done"], n);
    assert_eq!(last["fields"]["listing_done"], true);
    assert_eq!(last["level"], "INFO");

    // `none`: no progress, still a summary. `--quiet`: neither.
    let output = run(&["--progress", "none"]);
    assert_code(&output, 0);
    assert!(!text(&output.stderr).lines().any(is_progress_line));
    assert_eq!(summary_number(&output.stdout, "files ok:"), n);
    let output = run(&["--quiet", "--progress", "plain"]);
    assert_code(&output, 0);
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));
}

#[test]
fn a_hung_worker_is_flagged_stale_and_recovers() {
    let server = Server::start(&["--files", "10000", "--latency-ms", "2"]);
    let ws = Workspace::new();
    let state = ws.state();
    let state_arg = state.to_str().unwrap().to_string();
    let mut child = spawn_fetch(
        &server,
        &ws,
        &["--workers", "2", "--connections", "4", "--sink", "null"],
    );
    let mut pid = None;
    wait_for(Duration::from_secs(60), "shard 1 at work", || {
        pid = coordinator(&state)
            .filter(|c| !c.state.is_final())
            .and_then(|c| c.shards[1].pid);
        pid.is_some()
            && bulkget_stats::read_json::<ShardStats>(&state.join("shards/shard-01.json"))
                .ok()
                .flatten()
                .is_some_and(|s| s.state == ShardState::Running && s.files_ok > 0)
    });
    let pid = Pid::from_raw(pid.unwrap() as i32);
    // A hung worker: alive, but it neither works nor writes its file.
    kill(pid, Signal::SIGSTOP).unwrap();
    let mut report = Value::Null;
    wait_for(Duration::from_secs(30), "shard 1 flagged stale", || {
        report = serde_json::from_slice(&status(&[&state_arg, "--json"]).stdout).unwrap();
        report["stale_shards"] == serde_json::json!([1])
    });
    let table = text(&status(&[&state_arg]).stdout);
    kill(pid, Signal::SIGCONT).unwrap();
    assert_eq!(report["coordinator_stale"], false);
    let row1 = table
        .lines()
        .find(|l| l.starts_with("   01 "))
        .unwrap_or_else(|| panic!("no row for shard 01:\n{table}"));
    assert!(row1.contains(" STALE "), "{table}");
    assert!(
        table.contains(&format!(
            "\n           shard 01, pid {pid}, said running, last wrote "
        )),
        "{table}"
    );

    // Woken up, it goes on, and once the run is over nothing is stale.
    let output = child.wait_within(Duration::from_secs(120));
    assert_code(&output, 0);
    let report: Value = serde_json::from_slice(&status(&[&state_arg, "--json"]).stdout).unwrap();
    assert_eq!(report["stale_shards"], serde_json::json!([]));
    assert_eq!(report["coordinator"]["files_ok"], 10_000);
}
