//! `--include` / `--exclude` and `--expected-files` on `bulkget fetch`
//! (issue 14, points 6 and 8).

use crate::util::*;

const DATASET: [&str; 4] = ["--files", "1000", "--page-size", "250"];
/// Names 500 to 599 (on page 2 of 4), less 590 to 599: 90 names, the
/// other 910 excluded.
const FILTERS: [&str; 4] = [
    "--include",
    "file-00000005??",
    "--exclude",
    "file-000000059?",
];

fn kept(i: u64) -> bool {
    (500..590).contains(&i)
}

/// The names in OUT (the state directory aside), sorted.
fn out_names(ws: &Workspace) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(ws.out())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".bulkget")
        .collect();
    names.sort();
    names
}

#[test]
fn only_matching_names_are_fetched_and_the_excluded_are_counted() {
    let server = Server::start(&DATASET);
    let ws = Workspace::new();
    let output = fetch(
        &server,
        &ws,
        &[&["--workers", "2", "--expected-files", "90"][..], &FILTERS].concat(),
    );
    assert_code(&output, 0);
    let dataset = server.dataset();
    let expected: Vec<String> = (0..1000)
        .filter(|&i| kept(i))
        .map(|i| dataset.name(i))
        .collect();
    assert_eq!(out_names(&ws), expected);
    for name in &expected {
        let bytes = std::fs::read(ws.out().join(name)).unwrap();
        assert_eq!(Some(bytes), dataset.expected_content(name), "{name}");
    }
    assert_eq!(server.stats()["requests"]["get"], 90);

    let c = coordinator_json(&ws).unwrap();
    assert_eq!(
        (&c["files_ok"], &c["names_listed"], &c["names_excluded"]),
        (&90.into(), &90.into(), &910.into()),
        "{c}"
    );
    assert_eq!(c["expected_files"], 90, "{c}");
    let checkpoint = read_json(&ws.state().join("checkpoint.json")).unwrap();
    assert_eq!(checkpoint["complete"], true);
    assert_eq!(checkpoint["totals"]["names_excluded"], 910, "{checkpoint}");
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("excluded:       910 names left out by --include/--exclude"),
        "{stdout}"
    );
    let run = read_json(&ws.state().join("run.json")).unwrap();
    assert_eq!(run["include"], serde_json::json!(["file-00000005??"]));
    assert_eq!(run["exclude"], serde_json::json!(["file-000000059?"]));
}

#[test]
fn a_resume_with_other_filters_is_refused_and_with_the_same_counts_each_name_once() {
    // Page 1 of 4 is broken: the run stops with exit 4 after page 0, whose
    // names are all excluded, and can be resumed from page 1.
    let broken = Server::start(&[&DATASET[..], &["--list-fault", "invalid-json"]].concat());
    let port = broken.port();
    let url = broken.url.clone();
    let ws = Workspace::new();
    let client = [
        "--workers",
        "2",
        "--retry-base-ms",
        "10",
        "--retry-max-ms",
        "50",
    ];
    let output = fetch_command(&url, &ws, &[&client[..], &FILTERS].concat())
        .output()
        .unwrap();
    assert_code(&output, 4);

    // Other filters, or none: refused before anything is listed or fetched.
    // The same filters in another order are the same (checked last).
    let others: [Vec<&str>; 3] = [
        vec!["--include", "file-00000005??"],
        vec![],
        [&FILTERS[..], &["--exclude", "file-0000000999"]].concat(),
    ];
    for other in &others {
        let output = fetch_command(&url, &ws, &[&client[..], other, &["--resume"]].concat())
            .output()
            .unwrap();
        assert_code(&output, 6);
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains(
                "belongs to a run with --include \"file-00000005??\" --exclude \
                 \"file-000000059?\", and this one has "
            ),
            "{stderr}"
        );
        assert!(stderr.contains("give the same filters"), "{stderr}");
    }
    drop(broken);

    let fixed = Server::start_on(port, &DATASET);
    let reordered = [FILTERS[2], FILTERS[3], FILTERS[0], FILTERS[1], "--resume"];
    let output = fetch_command(&url, &ws, &[&client[..], &reordered].concat())
        .output()
        .unwrap();
    assert_code(&output, 0);
    assert_eq!(out_names(&ws).len(), 90);
    assert_eq!(fixed.stats()["requests"]["get"], 90);
    let c = coordinator_json(&ws).unwrap();
    assert_eq!(c["names_excluded"], 910, "{c}");
    assert_eq!(c["files_ok"], 90, "{c}");
}

#[test]
fn a_bad_glob_is_a_usage_error() {
    let server = Server::start(&["--files", "10"]);
    let ws = Workspace::new();
    let output = fetch(&server, &ws, &["--include", "file-[0"]);
    assert_code(&output, 2);
    assert!(
        text(&output.stderr).contains("--include \"file-[0\": "),
        "{}",
        text(&output.stderr)
    );
}
