//! Issue 7: a run into a nearly full file system stops cleanly (exit 7,
//! checkpoint saved, nothing torn, nothing claimed that is not on disk) and
//! `--resume` finishes once there is room again. The file system is a small
//! tmpfs mounted for the test (we run as root); where mounting is not
//! permitted, each test says so and checks the same promises with the
//! free-space limit set above the real free space instead.

use crate::sqlite::{assert_integrity, read_rows, verify_sqlite};
use crate::util::*;
use bulkget_server::Dataset;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::path::{Path, PathBuf};
use std::process::Output;

/// A tmpfs mounted on a test's `out` directory, unmounted on drop (declare
/// it after the `Workspace`, so it is dropped first).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes and `inodes` inodes on `dir`, or says
    /// why it cannot.
    /// `BULKGET_TEST_NO_MOUNT=1` takes the fallback path on purpose.
    fn mount(dir: &Path, size: &str, inodes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let options = format!("size={size},nr_inodes={inodes},mode=0755");
        let mounted = if std::env::var_os("BULKGET_TEST_NO_MOUNT").is_some() {
            Err(nix::errno::Errno::EPERM)
        } else {
            mount(
                Some("tmpfs"),
                dir,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(options.as_str()),
            )
        };
        match mounted {
            Ok(()) => {
                eprintln!("space test: a real tmpfs ({options}) on {}", dir.display());
                Some(Tmpfs {
                    dir: dir.to_path_buf(),
                })
            }
            Err(e) => {
                eprintln!(
                    "space test: cannot mount a tmpfs ({e}); SIMULATING a full disk with --min-free-mb above the free space instead"
                );
                None
            }
        }
    }

    /// Makes room: a larger size and more inodes, keeping the files.
    fn grow(&self, size: &str, inodes: u64) {
        let options = format!("size={size},nr_inodes={inodes}");
        mount(
            None::<&str>,
            &self.dir,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .unwrap_or_else(|e| panic!("remount {}: {e}", self.dir.display()));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily, in case a process of a failed test still holds a file.
        let _ = umount2(&self.dir, MntFlags::MNT_DETACH);
    }
}

/// Every name `checkpoint.json` calls done: the pages before its position,
/// then the complete pages and the set bits of the partial pages after it.
fn done_names(ws: &Workspace, dataset: &Dataset) -> Vec<String> {
    let cp = read_json(&ws.state().join("checkpoint.json")).expect("checkpoint.json");
    let pages = dataset.pages();
    let first = match &cp["position"] {
        serde_json::Value::String(s) if s == "Start" => 0,
        serde_json::Value::String(s) if s == "Done" => pages,
        other => {
            let marker = other["Marker"].as_str().expect("a marker");
            (1..pages)
                .find(|&p| dataset.marker(p) == marker)
                .expect("the checkpoint's marker is one the server hands out")
        }
    };
    let mut done: Vec<String> = (0..first).flat_map(|p| dataset.page_names(p)).collect();
    for run in cp["done_after"]["complete"].as_array().unwrap() {
        let a = run["first"].as_u64().unwrap();
        let b = a + run["fingerprints"].as_array().unwrap().len() as u64;
        for offset in a..b {
            done.extend(dataset.page_names(first + offset));
        }
    }
    for partial in cp["done_after"]["partial"].as_array().unwrap() {
        let page: Vec<String> = dataset
            .page_names(first + partial["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(page.len() as u64, partial["len"].as_u64().unwrap());
        let bits: Vec<u64> = partial["done"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_u64().unwrap())
            .collect();
        for (i, name) in page.into_iter().enumerate() {
            if bits[i / 64] & (1 << (i % 64)) != 0 {
                done.push(name);
            }
        }
    }
    assert_eq!(
        done.len() as u64,
        cp["totals"]["files_ok"].as_u64().unwrap(),
        "the checkpoint's bitmaps and its counter agree"
    );
    done
}

/// The stopped run: exit 7, a message on stderr naming the output's file
/// system and each of `says`, and a saved, incomplete checkpoint with some
/// files in it. Returns how many.
fn assert_stopped_for_space(output: &Output, ws: &Workspace, says: &[&str]) -> u64 {
    assert_code(output, 7);
    let err = text(&output.stderr);
    let out = ws.out().canonicalize().unwrap();
    assert!(
        err.contains(&format!("file system of {}", out.display())),
        "stderr does not name the file system:\n{err}"
    );
    for s in says {
        assert!(err.contains(s), "stderr does not say {s:?}:\n{err}");
    }
    let summary = text(&output.stdout);
    assert!(
        summary.contains("--resume"),
        "the summary says how to go on:\n{summary}"
    );
    let cp = read_json(&ws.state().join("checkpoint.json")).expect("checkpoint.json saved");
    assert_eq!(cp["complete"], false);
    cp["totals"]["files_ok"].as_u64().unwrap()
}

/// Every name the checkpoint calls done is in the dir sink, whole.
fn assert_done_files_whole(ws: &Workspace, dataset: &Dataset) -> usize {
    let done = done_names(ws, dataset);
    for name in &done {
        let got = std::fs::read(ws.out().join(name))
            .unwrap_or_else(|e| panic!("{name:?} is done but cannot be read: {e}"));
        assert_eq!(
            got,
            dataset.expected_content(name).unwrap(),
            "{name:?} is done but not whole"
        );
    }
    done.len()
}

/// Every database is intact, every row whole, and every name the
/// checkpoint calls done has its row.
fn assert_databases_sound(ws: &Workspace, dataset: &Dataset) -> usize {
    assert_integrity(&ws.out());
    let rows = read_rows(&ws.out());
    for (name, (_, data)) in &rows {
        assert_eq!(
            Some(data),
            dataset.expected_content(name).as_ref(),
            "{name:?}"
        );
    }
    let done = done_names(ws, dataset);
    for name in &done {
        assert!(rows.contains_key(name), "{name:?} is done but has no row");
    }
    done.len()
}

/// Without a tmpfs: the guard trips at once (the limit is above any real
/// free space), then a resume with the default limit finishes.
fn simulated(sink: &str) {
    let server = Server::start(&["--files", "3000"]);
    let dataset = server.dataset();
    let ws = Workspace::new();
    let args = ["--sink", sink, "--workers", "2"];
    let output = fetch(
        &server,
        &ws,
        &[&args[..], &["--min-free-mb", "1000000000"]].concat(),
    );
    assert_stopped_for_space(&output, &ws, &["--min-free-mb 1000000000"]);
    let output = fetch(&server, &ws, &[&args[..], &["--resume"]].concat());
    assert_code(&output, 0);
    if sink == "sqlite" {
        assert_eq!(verify_sqlite(&ws.out(), &dataset, 2), 3000);
    } else {
        assert_eq!(verify_flat(&ws.out(), &dataset), 3000);
    }
}

#[test]
fn sqlite_run_stops_at_the_free_space_limit_and_resumes_when_there_is_room() {
    // 16,000 rows of 900 bytes (small enough to stay in the B-tree pages)
    // are over 14 MB, more than the 24 MiB file system holds above the
    // 12 MiB limit. 1 ms per file over 8 connections keeps the run under
    // 8,000 files/s (7.4 MB/s; 3,000-5,000 in practice), and small windows
    // keep what is in flight when the limit trips under 256 files, so the
    // once-a-second check stops the run well before the disk is full.
    let n = 16_000;
    let server = Server::start(&[
        "--files",
        "16000",
        "--file-size",
        "900",
        "--latency-ms",
        "1",
    ]);
    let dataset = server.dataset();
    let ws = Workspace::new();
    let Some(fs) = Tmpfs::mount(&ws.out(), "24m", 10_000) else {
        return simulated("sqlite");
    };
    let args = [
        "--sink",
        "sqlite",
        "--workers",
        "2",
        "--connections",
        "4",
        "--batch-size",
        "64",
        "--window",
        "2",
        "--min-free-mb",
        "12",
    ];
    let output = fetch(&server, &ws, &args);
    let saved = assert_stopped_for_space(&output, &ws, &["--min-free-mb 12"]);
    eprintln!("stopped at the limit with {saved} of {n} files saved");
    assert!(saved > 0 && saved < n, "{saved} files saved");
    assert_eq!(assert_databases_sound(&ws, &dataset) as u64, saved);

    fs.grow("128m", 10_000);
    let output = fetch(&server, &ws, &[&args[..], &["--resume"]].concat());
    assert_code(&output, 0);
    assert_integrity(&ws.out());
    assert_eq!(verify_sqlite(&ws.out(), &dataset, 2) as u64, n);
}

#[test]
fn sqlite_run_that_fills_the_disk_stops_cleanly_and_resumes_when_there_is_room() {
    // No limit at all: the workers really hit ENOSPC (SQLITE_FULL) in the
    // middle of a transaction, and the checkpoint must still be saved on
    // the full file system.
    let n = 40_000;
    let server = Server::start(&["--files", "40000"]);
    let dataset = server.dataset();
    let ws = Workspace::new();
    let Some(fs) = Tmpfs::mount(&ws.out(), "6m", 10_000) else {
        return simulated("sqlite");
    };
    let args = ["--sink", "sqlite", "--workers", "2"];
    let output = fetch(&server, &ws, &[&args[..], &["--min-free-mb", "0"]].concat());
    let saved = assert_stopped_for_space(&output, &ws, &["is full"]);
    assert!(saved < n, "{saved} files saved");
    assert_eq!(assert_databases_sound(&ws, &dataset) as u64, saved);

    fs.grow("64m", 10_000);
    let output = fetch(
        &server,
        &ws,
        &[&args[..], &["--min-free-mb", "0", "--resume"]].concat(),
    );
    assert_code(&output, 0);
    assert_integrity(&ws.out());
    assert_eq!(verify_sqlite(&ws.out(), &dataset, 2) as u64, n);
    // A complete run gives its reserve back.
    assert!(!ws.state().join("reserve").exists());
}

#[test]
fn dir_run_stops_at_the_free_inode_limit_and_resumes_when_there_is_room() {
    // 5,000 inodes, stop below 3,000 free: the run stops after about 2,000
    // of the 4,000 files. 2 ms per file over 4 connections keeps it under
    // 2,000 files/s, and small windows keep what is in flight under 256
    // files, so the once-a-second check trips before the inodes run out.
    let n = 4_000;
    let server = Server::start(&["--files", "4000", "--latency-ms", "2"]);
    let dataset = server.dataset();
    let ws = Workspace::new();
    let Some(fs) = Tmpfs::mount(&ws.out(), "64m", 5_000) else {
        return simulated("dir");
    };
    let args = [
        "--workers",
        "2",
        "--connections",
        "2",
        "--batch-size",
        "64",
        "--window",
        "2",
        "--min-free-mb",
        "1",
        "--min-free-inodes",
        "3000",
    ];
    let output = fetch(&server, &ws, &args);
    let saved = assert_stopped_for_space(&output, &ws, &["free inodes", "--min-free-inodes 3000"]);
    eprintln!("stopped at the limit with {saved} of {n} files saved");
    assert!(saved > 0 && saved < n, "{saved} files saved");
    assert_eq!(assert_done_files_whole(&ws, &dataset) as u64, saved);

    fs.grow("64m", 100_000);
    let output = fetch(&server, &ws, &[&args[..], &["--resume"]].concat());
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &dataset), n);
    assert!(ws.strays().is_empty());
}

#[test]
fn dir_run_that_runs_out_of_inodes_stops_cleanly_and_resumes_when_there_is_room() {
    // No limits: file creation really fails with ENOSPC, and the
    // checkpoint still needs an inode of its own.
    let n = 5_000;
    let server = Server::start(&["--files", "5000"]);
    let dataset = server.dataset();
    let ws = Workspace::new();
    let Some(fs) = Tmpfs::mount(&ws.out(), "64m", 1_500) else {
        return simulated("dir");
    };
    let args = [
        "--workers",
        "2",
        "--min-free-mb",
        "0",
        "--min-free-inodes",
        "0",
    ];
    let output = fetch(&server, &ws, &args);
    let saved = assert_stopped_for_space(&output, &ws, &["is full"]);
    assert!(saved < n, "{saved} files saved");
    assert_eq!(assert_done_files_whole(&ws, &dataset) as u64, saved);

    fs.grow("64m", 100_000);
    let output = fetch(&server, &ws, &[&args[..], &["--resume"]].concat());
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &dataset), n);
    assert!(ws.strays().is_empty());
}
