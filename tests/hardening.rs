//! Issue 11: hardening for unattended runs. No request takes forever (a
//! deadline per attempt at a file and at a list page), the state directory
//! is protected wherever it is, and a host without `openat2` still writes
//! nothing outside OUT.

use crate::util::*;
use bulkget_server::Transient;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

// ------------------------------------------------------------- deadlines

/// The dataset names whose first attempt gets `kind`.
fn names_with(server: &Server, kind: Transient) -> BTreeSet<String> {
    let dataset = server.dataset();
    dataset
        .listed_names()
        .filter(|n| dataset.faults(n).and_then(|f| f.transient) == Some(kind))
        .collect()
}

/// The sum of `field` over the shards' stats files.
fn shard_sum(state: &Path, field: &str) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(state.join("shards")).expect("shards directory") {
        let v = read_json(&entry.unwrap().path()).expect("a whole stats file");
        total += v[field].as_u64().expect("a counter");
    }
    total
}

/// Runs a fetch that must finish with every file, within `limit`, and
/// checks that each name in `trickled` was asked for exactly twice: the
/// trickled attempt, cut at its deadline, and the retry.
fn assert_trickled_names_retried_once(
    server: &Server,
    trickled: &BTreeSet<String>,
    flags: &[&str],
) {
    let ws = Workspace::new();
    let mut args = vec![
        "--workers",
        "1",
        "--connections",
        "4",
        "--retry-base-ms",
        "10",
    ];
    args.extend_from_slice(flags);
    let mut run = spawn_fetch(server, &ws, &args);
    // Without a deadline a trickled answer takes minutes (a 100-byte body
    // at a byte per 2 s is 200 s; trickled headers meet the 30 s first-byte
    // timeout); with a 1 s deadline the run takes a few seconds.
    let output = run.wait_within(Duration::from_secs(25));
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 40);
    assert!(failures(&ws.state()).is_empty());
    let stats = server.stats();
    let retries = shard_sum(&ws.state(), "retries");
    assert_eq!(retries, trickled.len() as u64, "{stats}");
    assert_eq!(stats["requests"]["get"], 40 + trickled.len() as u64);
}

#[test]
fn a_body_trickled_a_byte_every_2s_ends_at_the_request_deadline_and_the_retry_succeeds() {
    let server = Server::start(&[
        "--files",
        "40",
        "--page-size",
        "20",
        "--trickle-rate",
        "0.1",
        "--trickle-ms",
        "2000",
    ]);
    let trickled = names_with(&server, Transient::Trickle);
    assert!(!trickled.is_empty());
    assert_trickled_names_retried_once(&server, &trickled, &["--request-timeout", "1s"]);
    assert_eq!(server.stats()["faults"]["trickle"], trickled.len() as u64);
}

#[test]
fn headers_trickled_a_byte_every_2s_end_at_the_request_deadline_and_the_retry_succeeds() {
    let server = Server::start(&[
        "--files",
        "40",
        "--page-size",
        "20",
        "--trickle-head-rate",
        "0.1",
        "--trickle-ms",
        "2000",
    ]);
    let trickled = names_with(&server, Transient::TrickleHead);
    assert!(!trickled.is_empty());
    assert_trickled_names_retried_once(&server, &trickled, &["--request-timeout", "1s"]);
    assert_eq!(
        server.stats()["faults"]["trickle_head"],
        trickled.len() as u64
    );
}

#[test]
fn a_list_page_trickled_a_byte_every_2s_ends_at_the_list_deadline_and_the_retry_succeeds() {
    let server = Server::start(&[
        "--files",
        "60",
        "--page-size",
        "20",
        "--list-fault",
        "trickle",
        "--list-fault-page",
        "1",
        "--trickle-ms",
        "2000",
    ]);
    let ws = Workspace::new();
    let mut run = spawn_fetch(
        &server,
        &ws,
        &[
            "--workers",
            "1",
            "--retry-base-ms",
            "10",
            "--list-timeout",
            "1s",
        ],
    );
    // The page is about 500 bytes: 1,000 s at a byte per 2 s, never idle
    // for the 30 s idle timeout.
    let output = run.wait_within(Duration::from_secs(25));
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 60);
    let stats = server.stats();
    assert_eq!(stats["faults"]["list_trickle"], 1, "{stats}");
    // Three pages, the second twice.
    assert_eq!(stats["requests"]["list"], 4, "{stats}");
}

#[test]
fn a_zero_deadline_is_refused_as_a_usage_error() {
    let server = Server::start(&["--files", "1"]);
    for flag in ["--request-timeout", "--list-timeout"] {
        let ws = Workspace::new();
        let output = fetch(&server, &ws, &[flag, "0s"]);
        assert_code(&output, 2);
        assert!(
            text(&output.stderr).contains(flag),
            "{}",
            text(&output.stderr)
        );
    }
}

// ------------------------------------------------------- the state directory

#[test]
fn names_aimed_at_a_state_directory_inside_out_are_refused_in_any_case_and_the_run_resumes() {
    let reserved = [
        "st/run.json",
        "st/lock",
        "st/checkpoint.json",
        "ST/failed.jsonl",
        "St/reserve",
        "st/shards/shard-00.json",
        ".BULKGET/lock",
    ];
    let harmless = ["stx/a", "a/st/run.json", "st.json"];
    let mut args = vec![
        "--files",
        "40",
        "--page-size",
        "20",
        // The listing stops at page 1 once, so the run must resume.
        "--list-fault",
        "fail-once",
    ];
    for name in reserved.iter().chain(&harmless) {
        args.extend(["--extra-name", name]);
    }
    let server = Server::start(&args);
    let ws = Workspace::new();
    let state = ws.out().join("st");
    let state_arg = state.to_str().unwrap();
    let flags = [
        "--state-dir",
        state_arg,
        "--workers",
        "2",
        "--max-attempts",
        "1",
    ];
    let output = fetch(&server, &ws, &flags);
    assert_code(&output, 4);
    let mut resumed = flags.to_vec();
    resumed.push("--resume");
    let output = fetch(&server, &ws, &resumed);
    assert_code(&output, 3);

    // Exactly the reserved names failed, saying why.
    let failed = failures(&state);
    let names: BTreeSet<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, reserved.iter().copied().collect(), "{failed:?}");
    for (name, reason) in &failed {
        assert!(
            reason.contains("is reserved for the state directory"),
            "{name}: {reason}"
        );
    }
    // Every other name is there with its bytes; the state files are the
    // run's own.
    let dataset = server.dataset();
    for name in dataset.listed_names() {
        if reserved.contains(&name.as_str()) {
            continue;
        }
        let got = std::fs::read(ws.out().join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(Some(got), dataset.expected_content(&name), "{name}");
    }
    let run = read_json(&state.join("run.json")).expect("run.json is the run's");
    assert_eq!(run["url"], server.url.as_str());
    let checkpoint = read_json(&state.join("checkpoint.json")).expect("a checkpoint");
    assert_eq!(checkpoint["complete"], true, "{checkpoint}");
    assert!(!ws.out().join("ST").exists() && !ws.out().join(".BULKGET").exists());
}

#[test]
fn a_state_directory_that_is_out_itself_is_refused() {
    let server = Server::start(&["--files", "1"]);
    let ws = Workspace::new();
    let out = ws.out();
    let output = fetch(&server, &ws, &["--state-dir", out.to_str().unwrap()]);
    assert_code(&output, 2);
    assert!(
        text(&output.stderr).contains("is the output directory itself"),
        "{}",
        text(&output.stderr)
    );
    assert!(!out.join("run.json").exists() && !out.join("lock").exists());
}

// ------------------------------------------------- a host without openat2

/// Makes `openat2` fail with `ENOSYS` in the process `cmd` starts and in
/// every process that one starts (its workers): a seccomp filter is
/// inherited across fork and exec. This is how an older kernel, or a
/// container sandbox that does not know the call, looks to bulkget.
fn without_openat2(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only prctl is called, which is
    // async-signal-safe; the filter lives on this closure's stack until the
    // kernel has copied it.
    unsafe {
        cmd.pre_exec(|| {
            const OPENAT2: u32 = 437; // The same number on every architecture.
            let filter = [
                // Load the syscall number, at offset 0 of seccomp_data.
                libc::sock_filter {
                    code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                libc::sock_filter {
                    code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 1,
                    k: OPENAT2,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn without_openat2_the_run_walks_paths_writes_everything_safe_and_nothing_outside_out() {
    let server = Server::start(&[
        "--files",
        "40",
        "--page-size",
        "20",
        "--hostile-names",
        "--extra-name",
        "evil/escaped",
        "--extra-name",
        "alias/inside",
    ]);
    const NOTE: &str = "openat2 cannot be used here (ENOSYS";
    let unsafe_names: BTreeSet<String> = server
        .dataset()
        .listed_names()
        .filter(|n| bulkget_names::check(n).is_err())
        .collect();
    for walk in [true, false] {
        let ws = Workspace::new();
        let outside = ws.root.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(ws.out().join("real")).unwrap();
        std::os::unix::fs::symlink(&outside, ws.out().join("evil")).unwrap();
        std::os::unix::fs::symlink("real", ws.out().join("alias")).unwrap();

        let mut cmd = fetch_command(&server.url, &ws, &["--workers", "2"]);
        if walk {
            without_openat2(&mut cmd);
        }
        let output = Running::spawn(cmd).wait_within(Duration::from_secs(60));
        assert_code(&output, 3);
        // The probe's finding is said once, not once per worker.
        let stderr = text(&output.stderr);
        assert_eq!(stderr.matches(NOTE).count(), usize::from(walk), "{stderr}");

        // Nothing outside OUT, whichever way paths were resolved.
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        let failed: BTreeSet<String> = failures(&ws.state()).into_iter().map(|(n, _)| n).collect();
        let mut expected = unsafe_names.clone();
        expected.insert("evil/escaped".into());
        // The walk follows no link, not even one that stays inside.
        if walk {
            expected.insert("alias/inside".into());
        }
        assert_eq!(failed, expected, "walk: {walk}");
        let dataset = server.dataset();
        for name in dataset.listed_names().filter(|n| !expected.contains(n)) {
            let got = std::fs::read(ws.out().join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(Some(got), dataset.expected_content(&name), "{name}");
        }
    }
}
