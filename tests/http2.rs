//! HTTP/2 end to end (issue 13, point 3): h2c with prior knowledge against
//! the test server, whose counters tell the protocols apart.

use crate::util::*;

#[test]
fn h2c_with_prior_knowledge_fetches_every_byte_over_http2_streams() {
    let server = Server::start(&["--files", "3000", "--page-size", "500"]);
    let ws = Workspace::new();
    let connections = 64;
    let output = fetch(
        &server,
        &ws,
        &[
            "--workers",
            "2",
            "--connections",
            &connections.to_string(),
            "--http-version",
            "2",
        ],
    );
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 3000);
    assert!(ws.strays().is_empty());

    let stats = server.stats();
    // Every file and list page came over HTTP/2; only this test's own
    // stats request did not.
    assert_eq!(stats["requests"]["get"].as_u64().unwrap(), 3000);
    let http2 = stats["requests_http2"].as_u64().unwrap();
    assert!(http2 >= 3000, "{stats}");
    let http1 = stats["requests_http1"].as_u64().unwrap();
    assert!(http1 <= 1, "{http1} HTTP/1.1 requests: {stats}");
    // Streams share connections: 64 request tasks per worker are two
    // HTTP/2 connections each, not 64.
    let accepted = stats["connections_accepted"].as_u64().unwrap();
    assert!(accepted <= 2 * 2 + 1 + 1, "{accepted} connections: {stats}");
}

#[test]
fn the_default_on_plain_http_is_http1() {
    let server = Server::start(&["--files", "500"]);
    let ws = Workspace::new();
    let output = fetch(&server, &ws, &["--workers", "1"]);
    assert_code(&output, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 500);
    let stats = server.stats();
    assert_eq!(stats["requests_http2"].as_u64().unwrap(), 0, "{stats}");
}
