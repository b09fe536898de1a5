//! Real services: HTTPS (trusted roots, `--cacert`, mutual TLS), headers
//! with credentials that must never be written anywhere, CONNECT proxies
//! and IPv6 literals.

use crate::util::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The server's counters over HTTPS (the plain helper cannot speak TLS),
/// fetched with bulkget's own connection.
fn tls_stats(server: &Server, cacert: &Path) -> serde_json::Value {
    use bulkget_http::{tls::TlsOptions, Conn, Endpoint, Limits, Transport};
    let endpoint = Endpoint::parse(&server.url).unwrap();
    let options = TlsOptions {
        cacert: Some(cacert.to_path_buf()),
        ..TlsOptions::default()
    };
    let transport = Transport::new(
        &endpoint,
        Duration::from_secs(10),
        &options,
        None,
        Vec::new(),
    )
    .unwrap();
    let limits = Limits {
        first_byte: Duration::from_secs(10),
        idle: Duration::from_secs(10),
        max_body: 1 << 20,
        max_redirects: 0,
        deadline: Duration::from_secs(30),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = Conn::connect(&endpoint, &transport).await.unwrap();
        let mut body = Vec::new();
        conn.get(&endpoint, "/_stats", &limits, &mut body)
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    })
}

/// A TLS test server that writes its CA to `dir/ca.pem`.
fn tls_server(dir: &Path, extra: &[&str]) -> (Server, PathBuf) {
    let ca = dir.join("ca.pem");
    let mut args = vec!["--tls", "--cert-out", ca.to_str().unwrap()];
    args.extend_from_slice(extra);
    (Server::start(&args), ca)
}

#[test]
fn https_with_cacert_fetches_every_byte_and_resumes_tls_sessions() {
    let ws = Workspace::new();
    // A few names reset mid-body, so connections are made again and must
    // resume their TLS session.
    let (server, ca) = tls_server(
        ws.root.path(),
        &["--files", "100000", "--reset-rate", "0.001"],
    );
    let out = fetch(
        &server,
        &ws,
        &["--cacert", ca.to_str().unwrap(), "--workers", "2"],
    );
    assert_code(&out, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 100_000);
    let stats = tls_stats(&server, &ca);
    let resumed = stats["tls_resumed"].as_u64().unwrap();
    let handshakes = stats["tls_handshakes"].as_u64().unwrap();
    assert!(
        resumed > 0,
        "reconnects resumed no TLS session ({handshakes} handshakes): {stats}"
    );
}

/// On `https://` the default (`--http-version auto`) offers `h2` by ALPN,
/// and a server that takes it gets every request over HTTP/2 streams on a
/// few shared connections; `--http-version 1.1` offers only `http/1.1`.
#[test]
fn https_auto_speaks_http2_when_alpn_picks_it_and_1_1_never_does() {
    let ws = Workspace::new();
    let (server, ca) = tls_server(ws.root.path(), &["--files", "3000"]);
    let out = fetch(
        &server,
        &ws,
        &["--cacert", ca.to_str().unwrap(), "--workers", "2"],
    );
    assert_code(&out, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 3000);
    let stats = tls_stats(&server, &ca);
    assert!(
        stats["requests_http2"].as_u64().unwrap() >= 3000,
        "files and pages did not come over HTTP/2: {stats}"
    );
    // Two workers' request tasks share a few connections (HTTP/2 streams),
    // where HTTP/1.1 would open one per task: at most the default
    // --connections (256) over the streams a connection carries, per
    // worker, and one each for the lister and this test's stats request.
    let per_worker = 256 / u64::from(bulkget_worker::engine::H2_STREAMS_PER_CONNECTION);
    let accepted = stats["connections_accepted"].as_u64().unwrap();
    assert!(
        accepted <= 2 * per_worker + 2,
        "{accepted} connections: {stats}"
    );

    let ws = Workspace::new();
    let (server, ca) = tls_server(ws.root.path(), &["--files", "500"]);
    let out = fetch(
        &server,
        &ws,
        &[
            "--cacert",
            ca.to_str().unwrap(),
            "--workers",
            "1",
            "--http-version",
            "1.1",
        ],
    );
    assert_code(&out, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 500);
    let stats = tls_stats(&server, &ca);
    assert_eq!(stats["requests_http2"].as_u64().unwrap(), 0, "{stats}");
}

#[test]
fn https_without_cacert_stops_with_exit_4_naming_the_certificate() {
    let ws = Workspace::new();
    let (server, _ca) = tls_server(ws.root.path(), &["--files", "100"]);
    // The default trust is the system's store, which does not know the
    // test server's private CA.
    let out = fetch(&server, &ws, &["--workers", "1"]);
    assert_code(&out, 4);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(stderr.contains("unknown issuer"), "{stderr}");
    let fetched = std::fs::read_dir(ws.out())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name() != ".bulkget")
        .count();
    assert_eq!(fetched, 0, "nothing is fetched");
}

#[test]
fn a_wrong_name_or_an_expired_certificate_is_named_and_not_retried() {
    for (fault, words) in [
        ("wrong-name", "does not match the name"),
        ("expired", "certificate expired"),
    ] {
        let ws = Workspace::new();
        let (server, ca) = tls_server(ws.root.path(), &["--files", "10", "--cert-fault", fault]);
        let out = fetch(&server, &ws, &["--cacert", ca.to_str().unwrap()]);
        assert_code(&out, 4);
        let stderr = text(&out.stderr);
        assert!(stderr.contains(words), "{fault}: {stderr}");
        assert!(
            !stderr.contains("attempts"),
            "{fault} was retried: {stderr}"
        );
    }
}

#[test]
fn mutual_tls_works_with_the_client_certificate_and_is_named_without() {
    let ws = Workspace::new();
    let mtls = ws.root.path().join("mtls");
    let (server, ca) = tls_server(
        ws.root.path(),
        &["--files", "500", "--mtls-dir", mtls.to_str().unwrap()],
    );
    let out = fetch(&server, &ws, &["--cacert", ca.to_str().unwrap()]);
    assert_code(&out, 4);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("client certificate"), "{stderr}");

    let ws = Workspace::new();
    let out = fetch(
        &server,
        &ws,
        &[
            "--cacert",
            ca.to_str().unwrap(),
            "--client-cert",
            mtls.join("client.pem").to_str().unwrap(),
            "--client-key",
            mtls.join("client-key.pem").to_str().unwrap(),
        ],
    );
    assert_code(&out, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 500);
}

#[test]
fn insecure_skips_verification_with_a_warning() {
    let ws = Workspace::new();
    let (server, _ca) = tls_server(ws.root.path(), &["--files", "50"]);
    let out = fetch(&server, &ws, &["--insecure", "--quiet"]);
    assert_code(&out, 0);
    assert!(
        text(&out.stderr).contains("not verified"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 50);
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                found.push(path);
            }
        }
    }
    found
}

const TOKEN: &str = "tok-7f3a9c1e-secret";

#[test]
fn a_token_from_a_file_is_sent_and_never_written_anywhere() {
    let ws = Workspace::new();
    let required = format!("Authorization: Bearer {TOKEN}");
    let server = Server::start(&[
        "--files",
        "2000",
        "--page-size",
        "200",
        // Slow pages keep the workers alive long enough to read their /proc.
        "--list-delay-ms",
        "150",
        "--require-header",
        &required,
    ]);
    let token_file = ws.root.path().join("token");
    std::fs::write(&token_file, format!("# the service's token\n{required}\n")).unwrap();
    let header_arg = format!("@{}", token_file.display());
    let mut cmd = fetch_command(&server.url, &ws, &["-H", &header_arg, "--workers", "2"]);
    // Proxy variables with credentials, bypassed by NO_PROXY: the workers
    // must not inherit them either.
    cmd.env("HTTP_PROXY", format!("http://user:{TOKEN}@127.0.0.1:9"))
        .env("NO_PROXY", "127.0.0.1");
    let mut run = Running::spawn(cmd);
    let mut checked = 0;
    wait_for(Duration::from_secs(60), "two workers to report", || {
        worker_pids(&ws).len() == 2
    });
    for pid in worker_pids(&ws) {
        for what in ["cmdline", "environ"] {
            let bytes = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(TOKEN), "worker {pid}'s {what}: {text}");
            assert!(!text.contains("NO_PROXY"), "worker {pid}'s {what}: {text}");
            checked += 1;
        }
        // The worker was alive when read, so what was read was its own.
        assert!(!gone(pid), "worker {pid} exited before it was checked");
    }
    assert_eq!(checked, 4);
    let out = run.wait_within(Duration::from_secs(120));
    assert_code(&out, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 2000);
    assert!(!text(&out.stdout).contains(TOKEN));
    assert!(!text(&out.stderr).contains(TOKEN));
    let leaks = files_containing(ws.root.path(), TOKEN.as_bytes());
    assert_eq!(leaks, vec![token_file], "the token is only in its own file");
    let run_json = read_json(&ws.state().join("run.json")).unwrap();
    assert_eq!(
        run_json["header_names"],
        serde_json::json!(["authorization"])
    );
}

#[test]
fn without_the_token_the_run_stops_with_exit_4_naming_authentication() {
    let ws = Workspace::new();
    let required = format!("Authorization: Bearer {TOKEN}");
    let server = Server::start(&["--files", "100", "--require-header", &required]);
    let out = fetch(&server, &ws, &[]);
    assert_code(&out, 4);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("401"), "{stderr}");
    assert!(stderr.contains("authentication"), "{stderr}");

    // A wrong token: the message names the header sent, never its value.
    let ws = Workspace::new();
    let out = fetch(&server, &ws, &["-H", "Authorization: Bearer wrong-value"]);
    assert_code(&out, 4);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("authentication"), "{stderr}");
    assert!(stderr.contains("authorization"), "{stderr}");
    assert!(!stderr.contains("wrong-value"), "{stderr}");
}

#[test]
fn a_resume_without_the_headers_names_the_ones_it_needs() {
    let ws = Workspace::new();
    let required = format!("X-Api-Key: {TOKEN}");
    let server = Server::start(&[
        "--files",
        "3000",
        "--page-size",
        "100",
        "--list-delay-ms",
        "100",
        "--require-header",
        &required,
    ]);
    let mut run = Running::spawn(fetch_command(
        &server.url,
        &ws,
        &[
            "-H",
            &required,
            "--workers",
            "1",
            "--checkpoint-interval",
            "1",
        ],
    ));
    wait_for(Duration::from_secs(60), "a checkpoint", || {
        ws.state().join("checkpoint.json").exists()
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = run.wait_within(Duration::from_secs(60));
    assert_code(&out, 143);

    let out = fetch(&server, &ws, &["--resume"]);
    assert_code(&out, 6);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("x-api-key"), "{stderr}");
    assert!(!stderr.contains(TOKEN), "{stderr}");

    let out = fetch(&server, &ws, &["--resume", "-H", &required]);
    assert_code(&out, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 3000);
}

/// A CONNECT proxy for tests: counts its tunnels and remembers the
/// `Proxy-Authorization` values it was sent.
struct ConnectProxy {
    url: String,
    tunnels: Arc<AtomicUsize>,
    authorizations: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let tunnels = Arc::new(AtomicUsize::new(0));
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let (t, a) = (tunnels.clone(), authorizations.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (t, a) = (t.clone(), a.clone());
                std::thread::spawn(move || tunnel(client, &t, &a));
            }
        });
        ConnectProxy {
            url,
            tunnels,
            authorizations,
        }
    }
}

fn tunnel(client: TcpStream, tunnels: &AtomicUsize, auths: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut parts = line.split_whitespace();
    if parts.next() != Some("CONNECT") {
        let _ = (&client).write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n");
        return;
    }
    let target = parts.next().unwrap().to_string();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        if header == "\r\n" || header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("proxy-authorization") {
                auths.lock().unwrap().push(value.trim().to_string());
            }
        }
    }
    let upstream = TcpStream::connect(&target).unwrap();
    tunnels.fetch_add(1, Ordering::SeqCst);
    (&client)
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .unwrap();
    // Nothing was buffered past the request head: the client waits for
    // the answer before it sends anything.
    assert!(reader.buffer().is_empty());
    let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut u2, &mut c2);
        let _ = c2.shutdown(std::net::Shutdown::Write);
    });
    let (mut c, mut u) = (client, upstream);
    let _ = std::io::copy(&mut c, &mut u);
    let _ = u.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
}

#[test]
fn https_through_a_connect_proxy_from_the_environment_with_credentials() {
    let ws = Workspace::new();
    let (server, ca) = tls_server(ws.root.path(), &["--files", "1000"]);
    let proxy = ConnectProxy::start();
    let proxy_url = proxy.url.replace("http://", "http://alice:pa%3Ass@");
    let mut cmd = fetch_command(
        &server.url,
        &ws,
        &["--cacert", ca.to_str().unwrap(), "--workers", "2"],
    );
    cmd.env("HTTPS_PROXY", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    let out = Running::spawn(cmd).wait_within(Duration::from_secs(120));
    assert_code(&out, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 1000);
    // The lister's connection and at least one per worker went through it.
    assert!(proxy.tunnels.load(Ordering::SeqCst) >= 3);
    let auths = proxy.authorizations.lock().unwrap();
    // base64("alice:pa:ss")
    assert!(
        auths.iter().all(|a| a == "Basic YWxpY2U6cGE6c3M="),
        "{auths:?}"
    );
    assert!(!auths.is_empty());
    assert!(files_containing(ws.root.path(), b"pa:ss").is_empty());
    assert!(files_containing(ws.root.path(), b"YWxpY2U6cGE6c3M=").is_empty());
}

#[test]
fn http_goes_through_the_proxy_flag_and_no_proxy_bypasses_it() {
    let server = Server::start(&["--files", "300"]);
    let proxy = ConnectProxy::start();
    let ws = Workspace::new();
    let out = fetch(&server, &ws, &["--proxy", &proxy.url, "--workers", "1"]);
    assert_code(&out, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 300);
    let through = proxy.tunnels.load(Ordering::SeqCst);
    assert!(through >= 2, "{through} tunnels");

    let ws = Workspace::new();
    let mut cmd = fetch_command(&server.url, &ws, &["--workers", "1"]);
    cmd.env("http_proxy", &proxy.url)
        .env("NO_PROXY", "localhost,127.0.0.1");
    let out = Running::spawn(cmd).wait_within(Duration::from_secs(120));
    assert_code(&out, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 300);
    assert_eq!(
        proxy.tunnels.load(Ordering::SeqCst),
        through,
        "NO_PROXY bypasses it"
    );
}

#[test]
fn an_ipv6_literal_url_works() {
    let server = Server::start(&["--addr", "::1", "--files", "300", "--prefix", "/api"]);
    let url = format!("{}/api", server.url);
    assert!(url.starts_with("http://[::1]:"), "{url}");
    let ws = Workspace::new();
    let out = Running::spawn(fetch_command(&url, &ws, &["--workers", "1"]))
        .wait_within(Duration::from_secs(120));
    assert_code(&out, 0);
    assert_eq!(verify_flat(&ws.out(), &server.dataset()), 300);
}
