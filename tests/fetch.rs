//! `bulkget fetch` end to end: issue 2's checks.

use crate::util::*;
use std::time::Duration;

#[test]
fn hundred_thousand_files_over_four_workers_arrive_intact_over_kept_alive_connections() {
    let server = Server::start(&["--files", "100000"]);
    let ws = Workspace::new();
    let connections = 8;
    let output = fetch(
        &server,
        &ws,
        &["--workers", "4", "--connections", &connections.to_string()],
    );
    assert_code(&output, 0);
    let counts = run_counts(&ws);
    assert_eq!((counts.files_ok, counts.files_failed), (100_000, 0));

    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 100_000);
    assert!(ws.strays().is_empty());

    // Keep-alive: every worker holds its connections for the whole run, so
    // the server accepts about workers x connections, plus the lister's and
    // this test's own, not one per file.
    let stats = server.stats();
    let accepted = stats["connections_accepted"].as_u64().unwrap();
    assert!(
        accepted <= 4 * connections + 1 + 1 + 4,
        "{accepted} connections for 100,000 files"
    );
    assert_eq!(stats["requests"]["get"].as_u64().unwrap(), 100_000);

    let checkpoint = read_json(&ws.state().join("checkpoint.json")).unwrap();
    assert_eq!(checkpoint["complete"], true);
    assert_eq!(checkpoint["totals"]["files_ok"], 100_000);
}

#[test]
fn tricky_names_arrive_byte_for_byte() {
    let server = Server::start(&["--files", "6000", "--tricky", "--page-size", "500"]);
    let ws = Workspace::new();
    let output = fetch(&server, &ws, &["--workers", "2"]);
    assert_code(&output, 0);
    let dataset = server.dataset();
    assert_eq!(verify_flat(&ws.out(), &dataset), 6000);
    // The set covers what the issue lists; a sample of them, by shape.
    let names: Vec<String> = dataset.listed_names().collect();
    for needle in [" ", "%2F", "+", "#", "?", "&", ";", "=", "/", "\u{301}"] {
        assert!(
            names.iter().any(|n| n.contains(needle)),
            "no tricky name contains {needle:?}"
        );
    }
    assert!(names.iter().any(|n| n.len() == 255));
}

#[test]
fn unsafe_names_are_reported_and_nothing_escapes() {
    let server = Server::start(&["--files", "2000", "--hostile-names"]);
    let ws = Workspace::new();
    let output = fetch(&server, &ws, &["--workers", "2"]);
    assert_code(&output, 3);

    let dataset = server.dataset();
    let unsafe_names: Vec<String> = dataset
        .listed_names()
        .filter(|n| bulkget_names::check(n).is_err())
        .collect();
    assert!(
        unsafe_names.len() >= 8,
        "the hostile set is there: {unsafe_names:?}"
    );
    let failed = failures(&ws.state());
    for name in &unsafe_names {
        let hit = failed.iter().find(|(n, _)| n == name);
        assert!(hit.is_some(), "{name:?} is not in failed.jsonl: {failed:?}");
        assert!(hit.unwrap().1.starts_with("unsafe name"), "{hit:?}");
    }
    assert_eq!(
        failed.len(),
        unsafe_names.len(),
        "only unsafe names failed: {failed:?}"
    );
    assert!(
        ws.strays().is_empty(),
        "created outside OUT: {:?}",
        ws.strays()
    );
    verify_flat(&ws.out(), &dataset);
    let summary = text(&output.stdout);
    assert!(
        summary.contains("failed.jsonl"),
        "the summary says where failures are: {summary}"
    );
}

#[test]
fn downloads_start_while_the_listing_goes_on() {
    // Ten pages, each after the first delayed 300 ms: the listing takes 2.7 s.
    let server = Server::start(&[
        "--files",
        "5000",
        "--page-size",
        "500",
        "--list-delay-ms",
        "300",
    ]);
    let ws = Workspace::new();
    let out = ws.out();
    let mut child = bulkget(&[
        "fetch",
        &server.url,
        out.to_str().unwrap(),
        "--progress",
        "none",
        "--workers",
        "2",
    ])
    .stdout(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let first = out.join(server.dataset().name(0));
    wait_for(Duration::from_secs(20), "the first file", || first.exists());
    let pages_served = server.stats()["list_pages_served"].as_u64().unwrap();
    assert!(
        pages_served < 10,
        "the first file arrived only after {pages_served} of 10 pages"
    );
    assert!(child.wait().unwrap().success());
}
