//! Issue 7: the SQLite sink end to end. Every row is checked byte for byte,
//! each name lives in exactly one shard database (its home shard) even
//! after crashes and a resume, `bulkget export` gives the same tree as the
//! dir sink, `bulkget cat` finds a file, and a hostile database cannot make
//! an export write outside its directory.

use crate::util::*;
use bulkget_server::Dataset;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rusqlite::{Connection, OpenFlags};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shard databases in `out`, by shard number.
pub fn shard_files(out: &Path) -> BTreeMap<u32, PathBuf> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(out).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(k) = name
            .strip_prefix("shard-")
            .and_then(|r| r.strip_suffix(".sqlite"))
        {
            found.insert(k.parse().unwrap(), out.join(&name));
        }
    }
    found
}

/// Opens a database read-only: the test must not checkpoint or otherwise
/// change what it inspects (a read-only connection never writes the WAL
/// back on close).
pub fn open_ro(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

/// Asserts `PRAGMA integrity_check` says ok for every shard database.
pub fn assert_integrity(out: &Path) {
    for path in shard_files(out).values() {
        let verdict: String = open_ro(path)
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(verdict, "ok", "{}", path.display());
    }
}

/// Every row of every shard database: name -> (shard, data). Panics if a
/// name is in two databases, or a row's size column disagrees with its data.
pub fn read_rows(out: &Path) -> HashMap<String, (u32, Vec<u8>)> {
    let mut rows: HashMap<String, (u32, Vec<u8>)> = HashMap::new();
    for (shard, path) in shard_files(out) {
        let conn = open_ro(&path);
        let mut stmt = conn.prepare("SELECT name, size, data FROM files").unwrap();
        let mut it = stmt.query([]).unwrap();
        while let Some(row) = it.next().unwrap() {
            let name: String = row.get(0).unwrap();
            let size: i64 = row.get(1).unwrap();
            let data: Vec<u8> = row.get(2).unwrap();
            assert_eq!(size as usize, data.len(), "{name:?} in shard {shard}");
            if let Some((other, _)) = rows.insert(name.clone(), (shard, data)) {
                panic!("{name:?} is in shard {other} and shard {shard}");
            }
        }
    }
    rows
}

/// Checks that the databases hold exactly the dataset's names (every row
/// in its home shard, `stable_hash(name) % shards`), with the right bytes.
/// Returns the number of rows.
pub fn verify_sqlite(out: &Path, dataset: &Dataset, shards: u32) -> usize {
    let rows = read_rows(out);
    let dbs = shard_files(out);
    assert_eq!(
        dbs.keys().copied().collect::<Vec<_>>(),
        (0..shards).collect::<Vec<_>>(),
        "one database per shard"
    );
    let mut wrong = Vec::new();
    let mut listed = 0;
    for name in dataset.listed_names() {
        listed += 1;
        let expected = dataset.expected_content(&name).unwrap();
        match rows.get(&name) {
            None => wrong.push(format!("{name:?} is missing")),
            Some((_, data)) if *data != expected => wrong.push(format!("{name:?} has wrong bytes")),
            Some((shard, _)) => {
                let home = (bulkget_names::stable_hash(&name) % shards as u64) as u32;
                if *shard != home {
                    wrong.push(format!("{name:?} is in shard {shard}, its home is {home}"));
                }
            }
        }
        if wrong.len() > 10 {
            break;
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(rows.len(), listed, "rows that are not listed names");
    rows.len()
}

#[test]
fn hundred_thousand_files_each_in_exactly_one_shard_database() {
    let n = 100_000;
    let server = Server::start(&["--files", "100000"]);
    let ws = Workspace::new();
    let output = fetch(&server, &ws, &["--sink", "sqlite", "--workers", "3"]);
    assert_code(&output, 0);
    assert_eq!(files_ok(&ws), 100_000);

    // The packed sink keeps no file per name: the databases and the state
    // directory are all there is. Workers close their databases before they
    // exit, so a finished run leaves no write-ahead log to merge: each
    // shard is one file that can be copied alone. (Looked at before this
    // test opens the databases itself.)
    let mut entries: Vec<String> = std::fs::read_dir(ws.out())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            ".bulkget",
            "shard-00.sqlite",
            "shard-01.sqlite",
            "shard-02.sqlite"
        ]
    );
    assert_integrity(&ws.out());
    assert_eq!(verify_sqlite(&ws.out(), &server.dataset(), 3), n);
    let cp = read_json(&ws.state().join("checkpoint.json")).unwrap();
    assert_eq!(cp["complete"], true);
    assert_eq!(cp["totals"]["files_ok"], n as u64);
    assert!(ws.strays().is_empty());
}

#[test]
fn a_killed_worker_and_then_a_killed_coordinator_leave_each_name_once_after_resume() {
    let n = 40_000u64;
    // 1 ms (in practice 2-4 ms) per file and 24 connections: at most
    // about 12,000 files/s, so the test has time to kill processes
    // halfway through.
    let server = Server::start(&["--files", "40000", "--latency-ms", "1"]);
    let ws = Workspace::new();
    let args = [
        "--sink",
        "sqlite",
        "--workers",
        "3",
        "--connections",
        "8",
        "--checkpoint-interval",
        "1",
    ];
    let mut run = spawn_fetch(&server, &ws, &args);
    let coordinator_pid = run.pid() as i32;

    wait_for(Duration::from_secs(30), "5,000 files done", || {
        files_ok(&ws) > 5_000
    });
    let pids = worker_pids(&ws);
    assert_eq!(pids.len(), 3, "three live workers");
    let victim = pids[1];
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let killed_at = files_ok(&ws);

    // The shard restarts and the run goes on; a checkpoint taken after the
    // crash is on disk before the coordinator dies too.
    wait_for(
        Duration::from_secs(30),
        "shard 1 restarted and working again",
        || {
            coordinator_json(&ws).is_some_and(|c| {
                let s = &c["shards"][1];
                s["restarts"].as_u64() >= Some(1)
                    && s["pid"].as_i64().is_some_and(|p| p as i32 != victim)
                    && c["files_ok"].as_u64() > Some(killed_at + 3_000)
            })
        },
    );
    wait_for(
        Duration::from_secs(30),
        "a checkpoint after the crash",
        || {
            read_json(&ws.state().join("checkpoint.json"))
                .is_some_and(|c| c["totals"]["files_ok"].as_u64() > Some(killed_at))
        },
    );
    let before_kill = files_ok(&ws);
    assert!(
        before_kill < n,
        "the run finished before the coordinator could be killed"
    );
    let workers = worker_pids(&ws);
    kill(Pid::from_raw(coordinator_pid), Signal::SIGKILL).unwrap();
    let output = run.wait_within(Duration::from_secs(10));
    assert_eq!(output.status.code(), None, "killed by a signal");
    // Its workers see their sockets close and exit; only then may another
    // run open the databases.
    wait_for(
        Duration::from_secs(10),
        "the orphaned workers to exit",
        || workers.iter().all(|&p| gone(p)),
    );
    let partial = read_rows(&ws.out()).len() as u64;
    eprintln!(
        "worker killed at {killed_at} files, coordinator at {before_kill}; {partial} rows before the resume"
    );
    assert!(
        partial > 0 && partial < n,
        "{partial} rows before the resume"
    );
    assert_integrity(&ws.out());

    let output = fetch(&server, &ws, &[&args[..], &["--resume"]].concat());
    assert_code(&output, 0);
    // Counted once each, though some were fetched twice.
    let counts = run_counts(&ws);
    assert_eq!((counts.files_ok, counts.files_failed), (40_000, 0));
    assert_integrity(&ws.out());
    assert_eq!(verify_sqlite(&ws.out(), &server.dataset(), 3), n as usize);
    let cp = read_json(&ws.state().join("checkpoint.json")).unwrap();
    assert_eq!(cp["complete"], true);
    assert_eq!(cp["totals"]["files_ok"], n);
}

/// Every file and directory under `root` (relative path -> bytes, `None`
/// for a directory), leaving out `skip` at the top.
fn tree(root: &Path, skip: &str) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, skip: &str, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if dir == root && entry.file_name() == skip {
                continue;
            }
            let kind = entry.file_type().unwrap();
            assert!(!kind.is_symlink(), "a symbolic link: {}", path.display());
            if kind.is_dir() {
                out.insert(rel, None);
                walk(root, &path, skip, out);
            } else {
                out.insert(rel, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, skip, &mut out);
    out
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a, ".bulkget"), tree(b, ".bulkget"));
    let only_a: Vec<_> = ta.keys().filter(|k| !tb.contains_key(*k)).take(5).collect();
    let only_b: Vec<_> = tb.keys().filter(|k| !ta.contains_key(*k)).take(5).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "only in {}: {only_a:?}; only in {}: {only_b:?}",
        a.display(),
        b.display()
    );
    let differ: Vec<_> = ta
        .iter()
        .filter(|(k, v)| tb[*k] != **v)
        .map(|(k, _)| k)
        .take(5)
        .collect();
    assert!(differ.is_empty(), "different bytes: {differ:?}");
    assert!(ta.values().filter(|v| v.is_some()).count() > 0);
}

#[test]
fn export_matches_a_dir_run_byte_for_byte_and_cat_finds_files() {
    // Tricky names, each of the 18 shapes 100 times: spaces, %, +, #, ?,
    // unicode, case, and slashes (so the export makes subdirectories), up
    // to 255 bytes a component.
    let server = Server::start(&["--files", "1800", "--tricky", "--page-size", "300"]);
    let dataset = server.dataset();
    let sqlite_ws = Workspace::new();
    assert_code(
        &fetch(&server, &sqlite_ws, &["--sink", "sqlite", "--workers", "2"]),
        0,
    );
    assert_eq!(verify_sqlite(&sqlite_ws.out(), &dataset, 2), 1800);

    for layout in ["flat", "fanout"] {
        let dir_ws = Workspace::new();
        assert_code(
            &fetch(&server, &dir_ws, &["--workers", "2", "--layout", layout]),
            0,
        );
        let dest = sqlite_ws.root.path().join(format!("export-{layout}"));
        let output = bulkget(&[
            "export",
            sqlite_ws.out().to_str().unwrap(),
            dest.to_str().unwrap(),
            "--layout",
            layout,
        ])
        .output()
        .unwrap();
        assert_code(&output, 0);
        assert!(
            text(&output.stdout).contains("exported 1800 files"),
            "{}",
            text(&output.stdout)
        );
        assert_same_tree(&dir_ws.out(), &dest);
    }
    // And the flat export is the dataset itself.
    assert_eq!(
        verify_flat(&sqlite_ws.root.path().join("export-flat"), &dataset),
        1800
    );

    // cat: a few names of every shape, from the databases.
    let names: Vec<String> = dataset.listed_names().collect();
    let picks = [
        names.iter().find(|n| n.contains(' ')).unwrap(),
        names.iter().find(|n| n.contains('/')).unwrap(),
        names.iter().find(|n| n.contains('\u{301}')).unwrap(),
        names.iter().find(|n| n.len() == 255).unwrap(),
        &names[0],
        names.last().unwrap(),
    ];
    for name in picks {
        let output = bulkget(&["cat", sqlite_ws.out().to_str().unwrap(), name])
            .output()
            .unwrap();
        assert_code(&output, 0);
        assert_eq!(
            output.stdout,
            dataset.expected_content(name).unwrap(),
            "{name:?}"
        );
    }
    // A name that is not there: a non-zero exit and a message naming it.
    let output = bulkget(&["cat", sqlite_ws.out().to_str().unwrap(), "no-such-file"])
        .output()
        .unwrap();
    assert_code(&output, 3);
    assert!(output.stdout.is_empty());
    let err = text(&output.stderr);
    assert!(
        err.contains("\"no-such-file\" is not in")
            && err.contains(sqlite_ws.out().to_str().unwrap()),
        "{err}"
    );
    // A name that can never have been stored.
    let output = bulkget(&["cat", sqlite_ws.out().to_str().unwrap(), "../run.json"])
        .output()
        .unwrap();
    assert_code(&output, 1);
    assert!(output.stdout.is_empty());
    assert!(
        text(&output.stderr).contains("unsafe"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn a_hostile_database_cannot_make_export_write_outside_its_directory() {
    let server = Server::start(&["--files", "2000"]);
    let ws = Workspace::new();
    assert_code(
        &fetch(&server, &ws, &["--sink", "sqlite", "--workers", "2"]),
        0,
    );
    let root = ws.root.path().to_path_buf();
    let dest = root.join("dest");
    std::fs::create_dir(&dest).unwrap();
    // A symbolic link already in the destination, pointing up and out.
    std::os::unix::fs::symlink(&root, dest.join("link")).unwrap();

    // Rows bulkget would never write, put there behind its back.
    let abs = root.join("escaped-absolute");
    let hostile: Vec<String> = vec![
        "../escaped-dotdot".into(),
        "sub/../../escaped-inner-dotdot".into(),
        abs.to_str().unwrap().into(),
        "link/escaped-through-link".into(),
        "a//escaped-empty".into(),
        "./escaped-dot".into(),
        "nul\0escaped".into(),
        ".bulkget/escaped-state".into(),
    ];
    let db = shard_files(&ws.out())[&0].clone();
    let conn = Connection::open(&db).unwrap();
    for name in &hostile {
        conn.execute(
            "INSERT INTO files(name, size, fetched_at, data) VALUES (?1, 4, 0, x'65766976')",
            [name],
        )
        .unwrap();
    }
    drop(conn);

    let output = bulkget(&["export", ws.out().to_str().unwrap(), dest.to_str().unwrap()])
        .output()
        .unwrap();
    // The good files are exported; the refused rows make the exit 3.
    assert_code(&output, 3);
    assert!(
        text(&output.stdout).contains("exported 2000 files"),
        "{}",
        text(&output.stdout)
    );
    let err = text(&output.stderr);
    for name in &hostile {
        let shown = format!("refused {name:?}");
        assert!(err.contains(&shown), "{shown} not reported:\n{err}");
    }

    // Nothing appeared beside the output and the destination, nor anywhere
    // under the workspace but inside them.
    let mut top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["dest", "out"]);
    assert!(!abs.exists());
    assert!(!ws.state().join("escaped-state").exists());
    let exported = tree(&dest, "link");
    assert!(exported.keys().all(|p| {
        let s = p.to_str().unwrap();
        !s.contains("escaped")
    }));
    assert_eq!(exported.len(), 2000, "the good files and nothing else");
    assert_eq!(verify_flat(&dest, &server.dataset()), 2000);
}
