//! `bulkget fetch --refresh`: a finished run listed again, fetching only the
//! names not in the sink yet.

use crate::sqlite::read_rows;
use crate::util::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Duration;

/// The first run's service: 1,000 files in pages of 100.
const FIRST: &[&str] = &["--files", "1000", "--page-size", "100"];
/// The same service a day later: 200 more files, and the names from page 5
/// on spelled differently (replaced), so pages 0 to 4 (500 names) list what
/// the first run fetched and the 700 names after them are new.
const LATER: &[&str] = &[
    "--files",
    "1200",
    "--page-size",
    "100",
    "--listing-variant",
    "1",
    "--listing-variant-page",
    "5",
];
const NEW: u64 = 700;
const ALREADY_THERE: u64 = 500;

fn dataset(args: &[&str]) -> bulkget_server::Dataset {
    use clap::Parser;
    let argv = std::iter::once("bulkget-server").chain(args.iter().copied());
    bulkget_server::Dataset::from_args(&bulkget_server::ServerArgs::parse_from(argv))
}

fn gets(server: &Server) -> u64 {
    server.stats()["requests"]["get"].as_u64().unwrap()
}

/// Every name `dataset` lists is in the sink with the right bytes.
fn assert_all_in_sink(ws: &Workspace, sink: &str, dataset: &bulkget_server::Dataset) {
    match sink {
        "dir" => assert_eq!(verify_flat(&ws.out(), dataset), 1200),
        _ => {
            let rows = read_rows(&ws.out());
            for name in dataset.listed_names() {
                let expected = dataset.expected_content(&name).unwrap();
                assert_eq!(
                    rows.get(&name).map(|(_, data)| data),
                    Some(&expected),
                    "{name}"
                );
            }
            // The replaced names of the first run are kept: a refresh adds.
            assert_eq!(rows.len(), 1200 + 500);
        }
    }
}

/// A finished run, then a refresh against the changed service: exactly one
/// GET per new name (the server's own counter), every listed name in the
/// sink, and the summary and `coordinator.json` say new, already there and
/// failed. Both storing sinks.
#[test]
fn a_refresh_fetches_exactly_the_new_names() {
    for sink in ["dir", "sqlite"] {
        let ws = Workspace::new();
        let args = ["--workers", "2", "--sink", sink];
        let first = Server::start(FIRST);
        assert_code(&fetch(&first, &ws, &args), 0);
        let port = first.port();
        drop(first);

        let later = Server::start_on(port, LATER);
        // Without --refresh a finished run has nothing to do.
        let again = fetch(&later, &ws, &args);
        assert_code(&again, 0);
        assert!(
            text(&again.stdout).contains("--refresh"),
            "{}",
            text(&again.stdout)
        );
        assert_eq!(gets(&later), 0);

        let output = fetch(&later, &ws, &[&args[..], &["--refresh"]].concat());
        assert_code(&output, 0);
        assert_eq!(gets(&later), NEW, "{sink}: one GET per new name");
        assert_all_in_sink(&ws, sink, &later.dataset());
        let c = coordinator_json(&ws).unwrap();
        assert_eq!(c["refresh"], true, "{c}");
        assert_eq!(c["files_ok"], NEW, "{c}");
        assert_eq!(c["files_present"], ALREADY_THERE, "{c}");
        assert_eq!(c["files_failed"], 0, "{c}");
        assert_eq!(c["names_listed"], 1200, "{c}");
        let summary = text(&output.stdout);
        for line in [
            format!("files new:      {NEW}"),
            format!("already there:  {ALREADY_THERE}"),
            "files failed:   0".to_string(),
        ] {
            assert!(summary.contains(&line), "{sink}: {line:?} in\n{summary}");
        }
        let shards: u64 = (0..2)
            .map(|k| {
                read_json(&ws.state().join(format!("shards/shard-{k:02}.json"))).unwrap()
                    ["files_present"]
                    .as_u64()
                    .unwrap()
            })
            .sum();
        assert_eq!(shards, ALREADY_THERE);
        let status = bulkget(&["status", ws.state().to_str().unwrap()])
            .output()
            .unwrap();
        for line in [
            "700 new + 500 already there + 0 failed of 1,200",
            "refresh: 700 new + 500 already there + 0 failed",
        ] {
            assert!(
                text(&status.stdout).contains(line),
                "{line:?} in\n{}",
                text(&status.stdout)
            );
        }
        let cp = read_json(&ws.state().join("checkpoint.json")).unwrap();
        assert_eq!(
            (&cp["complete"], &cp["refresh"]),
            (&true.into(), &true.into())
        );

        // A second refresh of the same listing fetches nothing.
        let output = fetch(&later, &ws, &[&args[..], &["--refresh"]].concat());
        assert_code(&output, 0);
        assert_eq!(gets(&later), NEW, "{sink}: nothing new the second time");
        assert_eq!(coordinator_json(&ws).unwrap()["files_present"], 1200);
    }
}

/// A refresh whose coordinator is killed (SIGKILL) with one new name left:
/// `--refresh` again is refused, pointing at `--resume`; `--resume` goes on
/// as a refresh and fetches only that name, since the names fetched before
/// the kill are in the sink whether or not a checkpoint counted them.
#[test]
fn a_killed_refresh_resumes_as_a_refresh() {
    let ws = Workspace::new();
    let args = ["--workers", "2"];
    let first = Server::start(FIRST);
    assert_code(&fetch(&first, &ws, &args), 0);
    let port = first.port();
    drop(first);

    // The last new name is throttled for two minutes, so the refresh
    // cannot finish.
    let stuck = dataset(LATER).name(1199);
    let later = Server::start_on(
        port,
        &[LATER, &["--throttle-name", &stuck, "--retry-after", "120"]].concat(),
    );
    let mut run = spawn_fetch(&later, &ws, &[&args[..], &["--refresh"]].concat());
    wait_for(Duration::from_secs(60), "every new name but one", || {
        coordinator_json(&ws).is_some_and(|c| c["files_ok"] == NEW - 1)
    });
    let workers = worker_pids(&ws);
    kill(Pid::from_raw(run.pid() as i32), Signal::SIGKILL).unwrap();
    run.wait_within(Duration::from_secs(30));
    wait_for(Duration::from_secs(30), "the workers to exit", || {
        workers.iter().all(|&p| gone(p))
    });

    let refused = fetch(&later, &ws, &[&args[..], &["--refresh"]].concat());
    assert_code(&refused, 6);
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("unfinished refresh") && stderr.contains("--resume"),
        "{stderr}"
    );

    drop(later);
    let later = Server::start_on(port, LATER);
    let output = fetch(&later, &ws, &[&args[..], &["--resume"]].concat());
    assert_code(&output, 0);
    assert_eq!(gets(&later), 1, "only the name left");
    assert_eq!(verify_flat(&ws.out(), &later.dataset()), 1200);
    let c = coordinator_json(&ws).unwrap();
    assert_eq!(c["refresh"], true, "{c}");
    assert_eq!(
        c["files_ok"].as_u64().unwrap() + c["files_present"].as_u64().unwrap(),
        1200,
        "{c}"
    );
    assert!(
        text(&output.stdout).contains("files new:"),
        "{}",
        text(&output.stdout)
    );
}

/// `--refresh` on a directory without a run is refused, pointing at a first
/// run, and asks the server nothing. (On an unfinished run it is refused
/// too, pointing at `--resume`: `a_killed_refresh_resumes_as_a_refresh`.)
#[test]
fn a_refresh_needs_a_finished_run() {
    let server = Server::start(FIRST);
    let ws = Workspace::new();
    let output = fetch(&server, &ws, &["--refresh"]);
    assert_code(&output, 6);
    assert!(
        text(&output.stderr).contains("no finished run to refresh"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(gets(&server), 0);
}
