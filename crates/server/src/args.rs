//! The command line, shared by the binary and by in-process tests.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use http::{HeaderName, HeaderValue};

/// Every setting of the test server. The binary parses it from the command
/// line; tests build it with struct-update syntax from [`ServerArgs::default`],
/// which holds exactly the command-line defaults.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "bulkget-server",
    version,
    about = "A fast, deterministic stand-in for the remote file service, with fault injection.",
    long_about = "A fast, deterministic stand-in for the remote file service, with fault \
                  injection.\n\nEndpoints (under --prefix): GET /list, GET /list?next-marker=M, \
                  GET /get/{name}, GET /get-redirected/{name}; GET /_stats answers JSON counters \
                  (also at the root). Every fault is chosen by a hash of (seed, fault kind, name), \
                  so a run is reproducible."
)]
pub struct ServerArgs {
    /// IP address to listen on: IPv4 or IPv6, brackets optional (`::1`, `[::1]`).
    #[arg(long, visible_alias = "bind", default_value = "127.0.0.1", value_parser = parse_ip)]
    pub addr: IpAddr,

    /// TCP port to listen on; 0 picks a free port (the chosen one is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Worker threads of the server's runtime; defaults to the number of CPUs.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// Serve every endpoint under this path prefix, e.g. `/api` gives `/api/list`.
    #[arg(long, default_value = "")]
    pub prefix: String,

    /// Serve HTTPS: a certificate authority and a certificate for localhost,
    /// 127.0.0.1 and ::1 signed by it are made at start.
    #[arg(long, help_heading = "Protocols")]
    pub tls: bool,

    /// Write the certificate authority of --tls here as PEM, for a client's --cacert.
    #[arg(
        long,
        value_name = "PATH",
        requires = "tls",
        help_heading = "Protocols"
    )]
    pub cert_out: Option<PathBuf>,

    /// Serve a certificate that a client must refuse although it trusts --cert-out.
    #[arg(
        long,
        value_enum,
        value_name = "KIND",
        requires = "tls",
        help_heading = "Protocols"
    )]
    pub cert_fault: Option<CertFault>,

    /// Mutual TLS: make a client CA and a client certificate signed by it, write
    /// DIR/ca.pem, DIR/client.pem and DIR/client-key.pem, and refuse clients
    /// without a certificate signed by that CA.
    #[arg(long, value_name = "DIR", requires = "tls", help_heading = "Protocols")]
    pub mtls_dir: Option<PathBuf>,

    /// Serve HTTP/1.1 only: offer no h2 by ALPN and refuse h2c.
    #[arg(long, help_heading = "Protocols")]
    pub http1_only: bool,

    /// Answer pipelined HTTP/1.1 requests with one write for all the
    /// responses ready at once, instead of one write each (hyper's
    /// `pipeline_flush`). Off by default, like nginx, which writes every
    /// response on its own: a pipelining client then saves the server only
    /// its reads. Not with --keepalive-requests: hyper then closes the
    /// connection without writing the answers it was holding back.
    #[arg(
        long,
        help_heading = "Protocols",
        conflicts_with = "keepalive_requests"
    )]
    pub coalesce_pipelined: bool,

    /// Answer /list and /get with 401 unless the request carries this header
    /// with exactly this value (repeatable: all are required). The value is
    /// visible in the process list, so use test values only.
    #[arg(long, value_name = "'NAME: VALUE'", value_parser = parse_required_header, help_heading = "Protocols")]
    pub require_header: Vec<RequiredHeader>,

    /// Number of files in the dataset (plain names are `file-{i:010}`).
    #[arg(long, default_value_t = 1_000_000, help_heading = "Dataset")]
    pub files: u64,

    /// Names per listing page.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Dataset")]
    pub page_size: u64,

    /// Size in bytes of every file (except --oversize-name).
    #[arg(long, default_value_t = 100, help_heading = "Dataset")]
    pub file_size: usize,

    /// Seed that changes markers and which names get faults (not the content).
    #[arg(long, default_value_t = 0, help_heading = "Dataset")]
    pub seed: u64,

    /// Use names that are hard to get right (spaces, unicode NFC/NFD, %, +, #, ?, /, 255 bytes...).
    #[arg(long, help_heading = "Dataset")]
    pub tricky: bool,

    /// List other names from page --listing-variant-page on, as a service whose listing changed between two runs: name `i` there is spelled as name `i + N * --files` (same markers, same page lengths). 0: the plain listing.
    #[arg(long, default_value_t = 0, value_name = "N", help_heading = "Dataset")]
    pub listing_variant: u64,

    /// The first 0-based listing page --listing-variant changes.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "PAGE",
        help_heading = "Dataset"
    )]
    pub listing_variant_page: u64,

    /// Also list unsafe names (`../escape`, `/abs/path`, NUL, ...) on the first page.
    #[arg(long, help_heading = "Dataset")]
    pub hostile_names: bool,

    /// Fraction of names answered with a 5xx (500, 502, 503, some 503 with Retry-After: 1) on their first attempts.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, help_heading = "Per-name faults")]
    pub error_rate: f64,

    /// Fraction of names answered with 429 and Retry-After on their first attempts.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, help_heading = "Per-name faults")]
    pub throttle_rate: f64,

    /// Seconds announced in the Retry-After header of 429 answers.
    #[arg(long, default_value_t = 1, help_heading = "Per-name faults")]
    pub retry_after: u64,

    /// How many first requests of a faulted name fail before it is served normally.
    #[arg(long, default_value_t = 1, help_heading = "Per-name faults")]
    pub fault_attempts: u32,

    /// Fraction of names whose first attempts send headers, half the body, then abort the connection.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, help_heading = "Per-name faults")]
    pub reset_rate: f64,

    /// Fraction of names whose first attempts send fewer bytes than Content-Length, then close.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, help_heading = "Per-name faults")]
    pub truncate_rate: f64,

    /// Fraction of names whose first attempts send their headers at once and their body one byte every --trickle-ms.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, help_heading = "Per-name faults")]
    pub trickle_rate: f64,

    /// Fraction of names whose first attempts send the whole answer, headers first, one byte every --trickle-ms (the rest of that connection trickles too).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, help_heading = "Per-name faults")]
    pub trickle_head_rate: f64,

    /// Milliseconds between two bytes of a trickled answer (--trickle-rate, --trickle-head-rate, --list-fault trickle).
    #[arg(long, default_value_t = 2000, help_heading = "Per-name faults")]
    pub trickle_ms: u64,

    /// Fraction of names whose body always trickles in --slow-pieces pieces over --slow-ms.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, help_heading = "Per-name faults")]
    pub slow_rate: f64,

    /// Milliseconds a slow body takes from its first piece to its last.
    #[arg(long, default_value_t = 2000, help_heading = "Per-name faults")]
    pub slow_ms: u64,

    /// Pieces a slow body is sent in (2: half at once, the rest after --slow-ms; file size: a byte at a time).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Per-name faults")]
    pub slow_pieces: u64,

    /// Fraction of names that always answer 404 although they are listed.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, help_heading = "Per-name faults")]
    pub gone_rate: f64,

    /// Fraction of names whose /get answers 307 to /get-redirected/{name} on the same host.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, help_heading = "Per-name faults")]
    pub redirect_rate: f64,

    /// Fraction of names whose /get answers 302 to another host (http://127.0.0.2:9/get/{name}), which a careful client refuses.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, help_heading = "Per-name faults")]
    pub offhost_redirect_rate: f64,

    /// Pad the Location of every redirect to at least this many bytes (with a `?pad=` query), as a hostile server might.
    #[arg(long, default_value_t = 0, help_heading = "Per-name faults")]
    pub location_bytes: usize,

    /// Milliseconds every /get answer is delayed.
    #[arg(long, default_value_t = 0, help_heading = "Per-name faults")]
    pub latency_ms: u64,

    /// Serve at most this many /get requests a second (a token bucket with
    /// a tenth of a second of burst); those above it are answered 429 with
    /// `Retry-After: 1` at once, as nginx's `limit_req` does. 0: no limit.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "R",
        help_heading = "Per-name faults"
    )]
    pub rate_limit: u64,

    /// Exactly this many dataset names, spread by a seeded permutation, carry `x-bulkget-test-abort: 1`.
    #[arg(long, default_value_t = 0, help_heading = "Per-name faults")]
    pub crash_names: u64,

    /// A dataset name answered 429 with `Retry-After: --retry-after` on its first --fault-attempts requests (repeatable).
    #[arg(long, value_name = "NAME", help_heading = "Per-name faults")]
    pub throttle_name: Vec<String>,

    /// A name that carries `x-bulkget-test-abort: 1` on every answer (repeatable).
    #[arg(long, value_name = "NAME", help_heading = "Per-name faults")]
    pub crash_name: Vec<String>,

    /// Answer `Connection: close` on every connection's Nth response (then
    /// close it), as nginx's `keepalive_requests` does; 0: never. Requests a
    /// client pipelined behind that response go unanswered.
    #[arg(long, default_value_t = 0, help_heading = "Connections")]
    pub keepalive_requests: u64,

    /// Milliseconds every listing page except the first is delayed.
    #[arg(long, default_value_t = 0, help_heading = "Listing faults")]
    pub list_delay_ms: u64,

    /// A fault applied to listing page --list-fault-page (repeatable).
    #[arg(long, value_enum, value_name = "KIND", help_heading = "Listing faults")]
    pub list_fault: Vec<ListFault>,

    /// The 0-based listing page the --list-fault kinds apply to.
    #[arg(long, default_value_t = 1, help_heading = "Listing faults")]
    pub list_fault_page: u64,

    /// A name listed on the first page whose body is --oversize-bytes long, streamed.
    #[arg(long, value_name = "NAME", help_heading = "Special names")]
    pub oversize_name: Option<String>,

    /// Size in bytes of --oversize-name.
    #[arg(long, default_value_t = 16 << 20, help_heading = "Special names")]
    pub oversize_bytes: u64,

    /// A name listed on the first page and served like a dataset file (repeatable), e.g. `st/run.json` to aim at a state directory.
    #[arg(long, value_name = "NAME", help_heading = "Special names")]
    pub extra_name: Vec<String>,

    /// A name listed on the first page that declares a 1 TB Content-Length and streams until the client hangs up.
    #[arg(long, value_name = "NAME", help_heading = "Special names")]
    pub liar_name: Option<String>,

    /// A name listed on the first page whose /get answers 302 to http://127.0.0.2:9/get/NAME.
    #[arg(long, value_name = "NAME", help_heading = "Special names")]
    pub offhost_redirect_name: Option<String>,
}

impl Default for ServerArgs {
    /// The command-line defaults.
    fn default() -> Self {
        ServerArgs::parse_from(["bulkget-server"])
    }
}

/// A fault of one listing page, chosen with `--list-fault`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListFault {
    /// The page answers 503 the first time it is asked for, then normally.
    FailOnce,
    /// The body is cut off in the middle, so it is not JSON.
    InvalidJson,
    /// `FileNames` is a string instead of a list.
    WrongType,
    /// The `FileNames` key is missing (`NextMarker` is still there).
    MissingNames,
    /// Status 200 with an HTML error page (content-type text/html).
    Html,
    /// `NextMarker` points back to an earlier page (to itself on pages 0 and 1).
    Loop,
    /// The page also lists 2,000,000 extra names `huge-{j:07}`, streamed.
    Huge,
    /// The page first repeats every name of the previous page.
    Duplicates,
    /// Every page uses the key `NextFile` instead of `NextMarker`.
    NextFile,
    /// The page's first answer sends its headers at once and its body one
    /// byte every --trickle-ms; later answers are normal.
    Trickle,
    /// `NextMarker` is 20 MiB long: the real marker, then padding.
    LongMarker,
}

/// A server certificate that is wrong on purpose, for `--cert-fault`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertFault {
    /// Valid from 2000-01-01 to 2001-01-01.
    Expired,
    /// Made for `wrong.invalid` only, so no address of the server matches.
    WrongName,
}

/// A header every `/list` and `/get` request must carry (`--require-header`).
#[derive(Clone, PartialEq, Eq)]
pub struct RequiredHeader {
    pub name: HeaderName,
    pub value: HeaderValue,
}

impl fmt::Debug for RequiredHeader {
    /// The value stands for a credential, so it is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequiredHeader({}: <redacted>)", self.name)
    }
}

fn parse_required_header(s: &str) -> Result<RequiredHeader, String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| "expected 'NAME: VALUE'".to_owned())?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{:?} is not a valid header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of {name} is not a valid header value"))?;
    Ok(RequiredHeader { name, value })
}

/// An IP address, IPv6 ones with or without the brackets of a URL.
fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let bare = s
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse()
        .map_err(|_| format!("{s:?} is not an IP address"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not a fraction between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_defaults_match_the_brief() {
        ServerArgs::command().debug_assert();
        let args = ServerArgs::default();
        assert_eq!(args.port, 8080);
        assert_eq!(args.files, 1_000_000);
        assert_eq!(args.page_size, 1000);
        assert_eq!(args.file_size, 100);
        assert_eq!(args.fault_attempts, 1);
        assert_eq!(args.list_fault_page, 1);
    }

    #[test]
    fn coalescing_is_refused_beside_a_keep_alive_limit() {
        // hyper's pipeline_flush drops the answers it holds back when it
        // closes at the limit: seen as 10,031 GETs served for 10,000 files
        // delivered, the client resending what it never received.
        let both = ["s", "--coalesce-pipelined", "--keepalive-requests", "64"];
        let err = ServerArgs::try_parse_from(both).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert!(ServerArgs::try_parse_from(["s", "--coalesce-pipelined"]).is_ok());
    }

    #[test]
    fn rates_outside_zero_to_one_are_refused() {
        assert!(ServerArgs::try_parse_from(["s", "--error-rate", "1.5"]).is_err());
        assert!(ServerArgs::try_parse_from(["s", "--error-rate", "-0.1"]).is_err());
        let args = ServerArgs::try_parse_from([
            "s",
            "--error-rate",
            "0.25",
            "--list-fault",
            "fail-once",
            "--list-fault",
            "next-file",
        ])
        .unwrap();
        assert_eq!(args.error_rate, 0.25);
        assert_eq!(args.list_fault, [ListFault::FailOnce, ListFault::NextFile]);
    }

    #[test]
    fn ipv6_addresses_are_taken_with_or_without_brackets() {
        for flag in ["--addr", "--bind"] {
            for value in ["::1", "[::1]"] {
                let args = ServerArgs::try_parse_from(["s", flag, value]).unwrap();
                assert_eq!(args.addr, IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
            }
        }
        assert!(ServerArgs::try_parse_from(["s", "--addr", "[127.0.0.1"]).is_err());
    }

    #[test]
    fn required_headers_are_parsed_and_their_values_never_shown() {
        let args = ServerArgs::try_parse_from([
            "s",
            "--require-header",
            "Authorization: Bearer s3cret",
            "--require-header",
            "x-api-key:k",
        ])
        .unwrap();
        assert_eq!(args.require_header.len(), 2);
        assert_eq!(args.require_header[0].name, "authorization");
        assert_eq!(args.require_header[0].value, "Bearer s3cret");
        assert_eq!(args.require_header[1].value, "k");
        assert!(!format!("{args:?}").contains("s3cret"));
        for bad in ["no colon", "bad name: v", "x: bad\nvalue"] {
            assert!(ServerArgs::try_parse_from(["s", "--require-header", bad]).is_err());
        }
    }

    #[test]
    fn tls_details_require_tls() {
        for flags in [
            &["--cert-out", "/tmp/x.pem"][..],
            &["--cert-fault", "expired"],
            &["--mtls-dir", "/tmp/d"],
        ] {
            let mut argv = vec!["s"];
            argv.extend_from_slice(flags);
            assert!(ServerArgs::try_parse_from(&argv).is_err(), "{flags:?}");
            argv.push("--tls");
            assert!(ServerArgs::try_parse_from(&argv).is_ok(), "{flags:?}");
        }
    }
}
