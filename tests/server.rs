//! The test server's binary: what scripts and the other end-to-end tests
//! rely on when they start it.

use crate::util::Server;

#[test]
fn with_tls_the_ca_is_written_before_the_server_says_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let server = Server::start(&["--files", "10", "--tls", "--cert-out", ca.to_str().unwrap()]);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    // `Server::start` returns once the line is read, so the file must be
    // complete by now.
    let pem = std::fs::read_to_string(&ca).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(
        pem.trim_end().ends_with("-----END CERTIFICATE-----"),
        "{pem}"
    );
}
