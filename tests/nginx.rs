//! nginx (the Debian package) as the reference server: a static tree of
//! list pages and files, served over HTTP/2, fetched and verified byte for
//! byte. nginx is installed with apt-get when missing; the test skips only
//! when that is impossible, and says so on stderr.

use crate::util::*;
use bulkget_server::{Dataset, ServerArgs};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const NGINX: &str = "/usr/sbin/nginx";

/// nginx's path, installing the `nginx-light` package if it is missing.
/// `None` (with a loud message) only when it cannot be installed.
fn nginx() -> Option<&'static str> {
    if Path::new(NGINX).exists() {
        return Some(NGINX);
    }
    let installed = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "nginx-light"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if installed && Path::new(NGINX).exists() {
        return Some(NGINX);
    }
    eprintln!(
        "\n*** SKIPPED: nginx is not installed at {NGINX} and `apt-get install nginx-light` \
         failed; the nginx reference-server test did not run. Run scripts/test.sh as root \
         (or install nginx-light) to run it. ***\n"
    );
    None
}

/// nginx's version as (major, minor, patch).
fn version(nginx: &str) -> (u32, u32, u32) {
    let out = Command::new(nginx).arg("-v").output().expect("nginx -v");
    let text = String::from_utf8_lossy(&out.stderr);
    let v = text
        .split("nginx/")
        .nth(1)
        .expect("nginx -v names its version");
    let mut parts = v
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// An nginx master process, stopped on drop with its workers.
struct NginxProcess {
    child: Child,
    port: u16,
    /// It exited by itself (see [`Nginx::start_on`]).
    stopped: bool,
}

impl Drop for NginxProcess {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // SIGTERM makes the master stop its workers before it exits;
        // SIGKILL would leave them running, serving the port.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let mut gone = false;
        for _ in 0..250 {
            if let Ok(Some(_)) = self.child.try_wait() {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !gone {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An nginx process serving `dataset` as a static tree, stopped on drop.
struct Nginx {
    /// Declared first, so nginx stops before its directory goes.
    process: NginxProcess,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Writes the tree and the configuration and starts nginx on a free
    /// loopback port, speaking HTTP/2: h2c with prior knowledge when `tls`
    /// is false, `h2` by ALPN over TLS (with a self-signed certificate for
    /// 127.0.0.1 at [`Nginx::cert`]) when it is true.
    fn start(nginx: &str, dataset: &Dataset, tls: bool) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("get")).unwrap();
        std::fs::create_dir_all(root.join("pages")).unwrap();
        // Pages are named by the marker that asks for them; the first by
        // `start`.
        for page in 0..dataset.pages() {
            let names: Vec<String> = dataset.page_names(page).collect();
            let mut body = serde_json::json!({ "FileNames": names });
            if page + 1 < dataset.pages() {
                body["NextMarker"] = dataset.marker(page + 1).into();
            }
            let file = if page == 0 {
                "start".to_string()
            } else {
                dataset.marker(page)
            };
            std::fs::write(
                root.join("pages").join(format!("{file}.json")),
                body.to_string(),
            )
            .unwrap();
        }
        for name in dataset.listed_names() {
            let content = dataset.expected_content(&name).unwrap();
            std::fs::write(root.join("get").join(&name), content).unwrap();
        }

        // A free port, chosen by binding it and letting go: another test
        // may take it before nginx binds it, so nginx is tried on a new one
        // when that happens (below).
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if let Some(process) = Nginx::start_on(nginx, dir.path(), port, tls) {
                return Nginx { process, dir };
            }
        }
        panic!("nginx could not bind a free port in 5 tries");
    }

    /// Starts nginx on `port`; `None` if another process holds the port.
    /// nginx writes its pid file only once it has bound its ports, so the
    /// port answers for nginx when the pid file names it, and not when a
    /// connection merely succeeds (another test's server may hold it).
    fn start_on(nginx: &str, dir: &Path, port: u16, tls: bool) -> Option<NginxProcess> {
        // `http2 on` came in nginx 1.25.1; older ones (Debian 12 ships
        // 1.22) take `http2` as a parameter of `listen`.
        let new_style = version(nginx) >= (1, 25, 1);
        let listen = match (tls, new_style) {
            (false, true) => format!("listen 127.0.0.1:{port}; http2 on;"),
            (false, false) => format!("listen 127.0.0.1:{port} http2;"),
            (true, true) => format!("listen 127.0.0.1:{port} ssl; http2 on;"),
            (true, false) => format!("listen 127.0.0.1:{port} ssl http2;"),
        };
        let tls_conf = if tls {
            make_cert(dir);
            format!(
                "ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;",
                d = dir.display()
            )
        } else {
            String::new()
        };
        let d = dir.display();
        let conf = format!(
            r#"
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    log_format proto '$server_protocol $request_uri';
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    map $args $page {{
        "~^next-marker=(?<m>[^&]+)$" $m;
        default start;
    }}
    server {{
        {listen}
        {tls_conf}
        root {d}/root;
        access_log {d}/access.log proto;
        location = /list {{
            default_type application/json;
            try_files /pages/$page.json =404;
        }}
        location /get/ {{
            default_type application/octet-stream;
        }}
    }}
}}
"#
        );
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let pid_path = dir.join("nginx.pid");
        let _ = std::fs::remove_file(&pid_path);
        let child = Command::new(nginx)
            .args(["-e", "stderr", "-p"])
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            // A worker left behind must not hold the test runner's output.
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut n = NginxProcess {
            child,
            port,
            stopped: false,
        };
        let mut exited = None;
        wait_for(Duration::from_secs(30), "nginx to listen", || {
            if let Ok(Some(status)) = n.child.try_wait() {
                exited = Some(status);
                return true;
            }
            std::fs::read_to_string(&pid_path)
                .is_ok_and(|pid| pid.trim() == n.child.id().to_string())
        });
        match exited {
            None => Some(n),
            Some(status) => {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                assert!(
                    log.contains("Address already in use"),
                    "nginx exited with {status}: {log}"
                );
                n.stopped = true;
                None
            }
        }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.process.port)
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// The protocol of every request nginx logged (`HTTP/2.0`, `HTTP/1.1`).
    fn protocols(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("/get/"))
            .map(|l| l.split(' ').next().unwrap_or("").to_string())
            .collect()
    }
}

/// A self-signed leaf certificate for 127.0.0.1, by openssl.
fn make_cert(dir: &Path) {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            // A leaf certificate (CA:FALSE): by default `req -x509` makes
            // a CA one, which rustls refuses as a server's certificate.
            "-extensions",
            "v3_req",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl could not make a certificate");
}

fn dataset(args: &[&str]) -> Dataset {
    let mut argv = vec!["bulkget-server"];
    argv.extend_from_slice(args);
    Dataset::from_args(&ServerArgs::parse_from(argv))
}

/// Fetches nginx's 3,000 files (over TLS when `tls`) with `flags` and two workers,
/// verifies every byte, and checks from nginx's log that every file came
/// over HTTP/2.
fn fetch_all_over_http2(tls: bool, flags: &[&str]) {
    let Some(nginx) = nginx() else { return };
    let data = dataset(&["--files", "3000", "--page-size", "700"]);
    let server = Nginx::start(nginx, &data, tls);
    let ws = Workspace::new();
    let out = ws.out();
    let url = server.url(if tls { "https" } else { "http" });
    let cert = server.cert();
    let mut args = vec![
        "fetch",
        url.as_str(),
        out.to_str().unwrap(),
        "--progress",
        "none",
        "--workers",
        "2",
    ];
    if tls {
        args.extend(["--cacert", cert.to_str().unwrap()]);
    }
    args.extend_from_slice(flags);
    let output = bulkget(&args).output().unwrap();
    assert_code(&output, 0);
    assert_eq!(verify_flat(&out, &data), 3000);
    let protocols = server.protocols();
    assert_eq!(protocols.len(), 3000, "{protocols:?}");
    assert!(
        protocols.iter().all(|p| p == "HTTP/2.0"),
        "{:?}",
        protocols.iter().find(|p| *p != "HTTP/2.0")
    );
}

#[test]
fn nginx_over_h2c_serves_every_byte_as_http2() {
    fetch_all_over_http2(false, &["--http-version", "2"]);
}

/// On https:// the defaults offer `h2` by ALPN, and nginx takes it.
#[test]
fn nginx_over_tls_serves_every_byte_as_http2_by_alpn_with_the_defaults() {
    fetch_all_over_http2(true, &[]);
}
