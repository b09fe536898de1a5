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

/// An nginx process serving `dataset` as a static tree, stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
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

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
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
            make_cert(dir.path());
            format!(
                "ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;",
                d = dir.path().display()
            )
        } else {
            String::new()
        };
        let d = dir.path().display();
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
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(nginx)
            .args(["-e", "stderr", "-p"])
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut n = Nginx { child, port, dir };
        wait_for(Duration::from_secs(30), "nginx to listen", || {
            if let Ok(Some(status)) = n.child.try_wait() {
                panic!(
                    "nginx exited with {status}: {}",
                    std::fs::read_to_string(n.dir.path().join("error.log")).unwrap_or_default()
                );
            }
            std::net::TcpStream::connect(("127.0.0.1", n.port)).is_ok()
        });
        n
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    #[allow(dead_code)]
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

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for 127.0.0.1, by openssl.
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

#[test]
fn nginx_over_h2c_serves_every_byte_as_http2() {
    let Some(nginx) = nginx() else { return };
    let data = dataset(&["--files", "3000", "--page-size", "700"]);
    let server = Nginx::start(nginx, &data, false);
    let ws = Workspace::new();
    let out = ws.out();
    let output = bulkget(&[
        "fetch",
        &server.url("http"),
        out.to_str().unwrap(),
        "--progress",
        "none",
        "--workers",
        "2",
        "--http-version",
        "2",
    ])
    .output()
    .unwrap();
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
