//! `--metrics-addr`: the coordinator's `GET /metrics`, scraped during a real
//! run.

use crate::util::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One scrape: the status line and the samples, `name{labels}` to value.
fn scrape(addr: &str) -> Option<(String, BTreeMap<String, f64>, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut samples = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        samples.insert(series.to_string(), value.parse::<f64>().expect("a number"));
    }
    Some((head.lines().next()?.to_string(), samples, body.to_string()))
}

/// The number after `label` on its line of the summary.
fn summary_number(summary: &str, label: &str) -> f64 {
    let line = summary
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} in\n{summary}"));
    line[line.find(label).unwrap() + label.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Scrapes every few tens of milliseconds through a run with failures,
/// retries and a worker killed halfway (so a shard's own counters start
/// again from zero): every scrape parses, no counter ever goes down, and
/// the last scrape, which `--metrics-linger` lets see the end, agrees with
/// the summary.
#[test]
fn scrapes_during_a_run_never_go_down_and_the_last_agrees_with_the_summary() {
    let server = Server::start(&[
        "--files",
        "6000",
        "--page-size",
        "200",
        "--error-rate",
        "0.02",
        "--gone-rate",
        "0.01",
        "--list-delay-ms",
        "80",
    ]);
    let ws = Workspace::new();
    let mut run = spawn_fetch(
        &server,
        &ws,
        &[
            "--workers",
            "2",
            "--retry-base-ms",
            "5",
            "--metrics-addr",
            "127.0.0.1:0",
            "--metrics-linger",
            "60s",
        ],
    );
    let mut addr = String::new();
    wait_for(
        Duration::from_secs(30),
        "metrics_addr in coordinator.json",
        || match coordinator_json(&ws).and_then(|c| c["metrics_addr"].as_str().map(String::from)) {
            Some(a) => {
                addr = a;
                true
            }
            None => false,
        },
    );

    let mut previous: BTreeMap<String, f64> = BTreeMap::new();
    let mut last = None;
    let mut scrapes = 0;
    let mut killed = false;
    while let Some((status, samples, body)) = scrape(&addr) {
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.ends_with("# EOF\n"), "{body}");
        scrapes += 1;
        for (series, value) in &samples {
            let counter = ["_total", "_count", "_sum", "_bucket"]
                .iter()
                .any(|suffix| series.split('{').next().unwrap().ends_with(suffix));
            if let Some(before) = previous.get(series).filter(|_| counter) {
                assert!(value >= before, "{series} went down: {before} -> {value}");
            }
        }
        if !killed
            && samples
                .get("bulkget_files_total{result=\"ok\"}")
                .copied()
                .unwrap_or(0.0)
                > 1000.0
        {
            let pid = worker_pids(&ws)[0];
            kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
            killed = true;
        }
        previous = samples.clone();
        last = Some(samples);
        std::thread::sleep(Duration::from_millis(30));
    }
    let output = run.wait_within(Duration::from_secs(120));
    assert_code(&output, 3);
    assert!(killed && scrapes > 10, "{scrapes} scrapes");
    let last = last.expect("at least one scrape");
    assert_eq!(
        last["bulkget_run_state{state=\"finished\"}"], 1.0,
        "{last:?}"
    );

    let summary = text(&output.stdout);
    let get = |series: &str| {
        last.get(series)
            .copied()
            .unwrap_or_else(|| panic!("no {series} in {last:?}"))
    };
    assert_eq!(
        get("bulkget_files_total{result=\"ok\"}"),
        summary_number(&summary, "files ok:")
    );
    assert_eq!(
        get("bulkget_files_total{result=\"failed\"}"),
        summary_number(&summary, "files failed:")
    );
    assert_eq!(
        get("bulkget_retries_total"),
        summary_number(&summary, "retries:")
    );
    assert_eq!(
        get("bulkget_bytes_total"),
        summary_number(&summary, "bytes:")
    );
    assert_eq!(
        get("bulkget_worker_restarts_total"),
        summary_number(&summary, "restarts:")
    );
    assert!(get("bulkget_worker_restarts_total") >= 1.0);
    assert_eq!(
        get("bulkget_files_total{result=\"ok\"}") + get("bulkget_files_total{result=\"failed\"}"),
        6000.0
    );
    assert_eq!(get("bulkget_list_pages_total"), 30.0);
    assert_eq!(get("bulkget_listed_names_total"), 6000.0);
    assert_eq!(get("bulkget_shards_parked"), 0.0);
    assert_eq!(get("bulkget_requests_in_flight"), 0.0);
    // The server's answers, as the shards counted them: 200s, 404s and
    // 5xx were seen, and every attempt is in the latency histogram.
    assert!(get("bulkget_http_responses_total{status=\"200\"}") > 0.0);
    assert!(get("bulkget_http_responses_total{status=\"404\"}") > 0.0);
    assert!(last
        .iter()
        .any(|(k, v)| k.starts_with("bulkget_http_responses_total{status=\"5") && *v > 0.0));
    let attempts: f64 = last
        .iter()
        .filter(|(k, _)| k.starts_with("bulkget_http_responses_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(get("bulkget_request_duration_seconds_count"), attempts);
    assert_eq!(
        get("bulkget_request_duration_seconds_bucket{le=\"+Inf\"}"),
        attempts
    );
    assert!(get("bulkget_request_duration_seconds_sum") > 0.0);
}

/// Anything but `GET /metrics` is answered 404 or 405, and the run is
/// none the worse.
#[test]
fn other_paths_and_methods_are_refused() {
    let server = Server::start(&[
        "--files",
        "2000",
        "--page-size",
        "100",
        "--list-delay-ms",
        "100",
    ]);
    let ws = Workspace::new();
    let mut run = spawn_fetch(
        &server,
        &ws,
        &["--workers", "1", "--metrics-addr", "127.0.0.1:0"],
    );
    let mut addr = String::new();
    wait_for(
        Duration::from_secs(30),
        "metrics_addr in coordinator.json",
        || match coordinator_json(&ws).and_then(|c| c["metrics_addr"].as_str().map(String::from)) {
            Some(a) => {
                addr = a;
                true
            }
            None => false,
        },
    );
    for (request, expected) in [
        ("GET / HTTP/1.1", "HTTP/1.1 404 Not Found"),
        ("POST /metrics HTTP/1.1", "HTTP/1.1 405 Method Not Allowed"),
        ("garbage", "HTTP/1.1 404 Not Found"),
    ] {
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(s, "{request}\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.starts_with(expected), "{request}: {text}");
    }
    assert_code(&run.wait_within(Duration::from_secs(60)), 0);
    assert_eq!(files_ok(&ws), 2000);
}
