//! What a host runs, from the command line: `bulkget fetch`'s arguments
//! checked, and the workers' settings derived, in one place for `fetch`
//! and `bulkget cluster work` (ripgrep's flags-to-configuration step is
//! the model).
//!
//! Three steps, kept apart so that the two pure ones are unit-tested
//! without a file system:
//!
//! 1. [`check`] (pure): the URL, the counts and timeouts, the filters, the
//!    number of workers.
//! 2. [`prepare_paths`]: the only step that touches the file system. It
//!    makes OUT and the state directory, resolves them, and probes how the
//!    dir sink can resolve paths beneath OUT (`openat2`).
//! 3. [`worker_settings`] (pure): the settings every worker gets.
//!
//! [`HostConfig::from_args`] runs them in that order, with the connection
//! settings of [`crate::service`] between the first two, so that an
//! unreadable header or CA file stops a run before OUT is made. Every
//! refusal is a [`ConfigError`], and [`ConfigError::exit_code`] is the one
//! place that gives each its exit code.

use crate::args::{FetchArgs, LayoutArg, ServiceArgs, SinkArg, Toggle};
use crate::exit;
use crate::filter::NameFilter;
use crate::service::Connection;
use bulkget_console::errln;
use bulkget_http::Endpoint;
use bulkget_protocol::{Layout, Resolve, SinkKind, WorkerSettings};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the arguments cannot make a run.
#[derive(Debug)]
pub enum ConfigError {
    /// The URL does not parse.
    Url(String),
    /// `--workers`, `--connections`, `--batch-size` or `--window` is 0.
    ZeroCount,
    /// `--request-timeout` or `--list-timeout` (the flag named) is under a
    /// millisecond.
    ZeroTimeout(&'static str),
    /// An `--include` or `--exclude` glob is not valid.
    Filter(String),
    /// `-H`, the TLS files or the proxy cannot be used.
    Service(String),
    /// A flag that the command does not take (e.g. `--refresh` on a
    /// cluster host), with the reason.
    NotHere(String),
    /// The state directory cannot hold the run's state where it is (it is
    /// OUT itself, or does not resolve).
    StateDir(String),
    /// OUT or the state directory cannot be made or resolved.
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The `openat2` probe in OUT failed.
    Probe(String),
}

impl ConfigError {
    /// The process's exit code for this refusal: the one place that says.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Url(_)
            | ConfigError::ZeroCount
            | ConfigError::ZeroTimeout(_)
            | ConfigError::Filter(_)
            | ConfigError::Service(_)
            | ConfigError::NotHere(_)
            | ConfigError::StateDir(_) => exit::USAGE,
            ConfigError::Io { .. } | ConfigError::Probe(_) => exit::ERROR,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Url(e)
            | ConfigError::Filter(e)
            | ConfigError::Service(e)
            | ConfigError::NotHere(e)
            | ConfigError::StateDir(e)
            | ConfigError::Probe(e) => f.write_str(e),
            ConfigError::ZeroCount => f.write_str(
                "--workers, --connections, --batch-size and --window must be at least 1",
            ),
            ConfigError::ZeroTimeout(flag) => write!(f, "{flag} must be at least 1ms"),
            ConfigError::Io { path, error } => {
                write!(f, "cannot create or resolve {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// For the commands whose setup reports `(exit code, message)`.
impl From<ConfigError> for (i32, String) {
    fn from(e: ConfigError) -> (i32, String) {
        (e.exit_code(), e.to_string())
    }
}

impl From<SinkArg> for SinkKind {
    fn from(sink: SinkArg) -> SinkKind {
        match sink {
            SinkArg::Dir => SinkKind::Dir,
            SinkArg::Sqlite => SinkKind::Sqlite,
            SinkArg::Null => SinkKind::Null,
        }
    }
}

impl From<LayoutArg> for Layout {
    fn from(layout: LayoutArg) -> Layout {
        match layout {
            LayoutArg::Flat => Layout::Flat,
            LayoutArg::Fanout => Layout::Fanout,
        }
    }
}

/// The sink's name in run.json: the flag's value.
pub fn sink_name(sink: SinkKind) -> &'static str {
    match sink {
        SinkKind::Dir => "dir",
        SinkKind::Sqlite => "sqlite",
        SinkKind::Null => "null",
    }
}

/// The layout's name in run.json: the flag's value.
pub fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Flat => "flat",
        Layout::Fanout => "fanout",
    }
}

/// A duration in whole milliseconds, as the worker settings carry it.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The listing flags' own rule, for every command that lists: deadlines
/// are kept in whole milliseconds, so none may be under one.
pub fn check_service(args: &ServiceArgs) -> Result<(), ConfigError> {
    if duration_ms(args.list_timeout) == 0 {
        return Err(ConfigError::ZeroTimeout("--list-timeout"));
    }
    Ok(())
}

/// What [`check`] finds in the arguments.
#[derive(Debug)]
pub struct Checked {
    pub endpoint: Endpoint,
    pub filter: NameFilter,
    /// `--workers`, or the number of CPUs.
    pub workers: usize,
}

/// Checks the arguments that need no file system and no network.
pub fn check(args: &FetchArgs) -> Result<Checked, ConfigError> {
    let endpoint = Endpoint::parse(&args.url).map_err(|e| ConfigError::Url(e.to_string()))?;
    if args.workers == Some(0) || args.connections == 0 || args.batch_size == 0 || args.window == 0
    {
        return Err(ConfigError::ZeroCount);
    }
    if duration_ms(args.request_timeout) == 0 {
        return Err(ConfigError::ZeroTimeout("--request-timeout"));
    }
    check_service(&args.service)?;
    let filter = NameFilter::new(&args.filter).map_err(ConfigError::Filter)?;
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    Ok(Checked {
        endpoint,
        filter,
        workers,
    })
}

/// The state directory of a run on `out`: `--state-dir`, or one inside
/// OUT by default.
pub fn state_dir_of(out: &Path, state_dir: Option<&Path>) -> PathBuf {
    match state_dir {
        Some(dir) => dir.to_path_buf(),
        None => out.join(bulkget_protocol::STATE_DIR_NAME),
    }
}

/// Where a host writes, made and resolved by [`prepare_paths`].
#[derive(Debug, Clone)]
pub struct Paths {
    /// OUT, canonical.
    pub out: PathBuf,
    pub state_dir: PathBuf,
    /// Where the state directory is inside OUT, if it is, so that no
    /// server name lands there, whatever the directory is called.
    pub state_dir_in_out: Option<String>,
    /// How the dir sink resolves paths beneath OUT.
    pub resolve: Resolve,
}

/// The file-system steps of a host's setup: makes OUT and the state
/// directory, resolves them, and (for the dir sink) probes `openat2` in
/// OUT, saying once what it found.
pub fn prepare_paths(args: &FetchArgs) -> Result<Paths, ConfigError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| ConfigError::Io { path, error }
    };
    std::fs::create_dir_all(&args.out).map_err(io(&args.out))?;
    let out = std::fs::canonicalize(&args.out).map_err(io(&args.out))?;
    let state_dir = state_dir_of(&out, args.state_dir.as_deref());
    std::fs::create_dir_all(&state_dir).map_err(io(&state_dir))?;
    let state_dir_in_out =
        bulkget_sink::state_dir_within(&out, &state_dir).map_err(ConfigError::StateDir)?;
    let resolve = if args.sink == SinkArg::Dir {
        probe_resolve(&out, args.quiet)?
    } else {
        // Only the dir sink resolves paths beneath OUT.
        Resolve::Openat2
    };
    Ok(Paths {
        out,
        state_dir,
        state_dir_in_out,
        resolve,
    })
}

/// Finds out, once and before any worker starts, how the dir sink can
/// resolve paths beneath OUT, and says so once: in the log when `openat2`
/// works, on stderr when the workers must walk without it.
fn probe_resolve(out: &Path, quiet: bool) -> Result<Resolve, ConfigError> {
    let (resolve, why) =
        bulkget_sink::probe_resolve(out).map_err(|e| ConfigError::Probe(e.to_string()))?;
    match why {
        None => tracing::info!("openat2 with RESOLVE_BENEATH is available"),
        Some(why) => {
            let msg = format!(
                "openat2 cannot be used here ({why}); the dir sink opens each path one \
                 component at a time with O_NOFOLLOW instead, which follows no symbolic \
                 link inside {}",
                out.display()
            );
            if !quiet {
                errln!("bulkget: note: {msg}");
            }
        }
    }
    Ok(resolve)
}

/// The settings every worker of the host gets. `refresh` is off: only a
/// run's state directory can say it is a refresh, so `fetch` sets it once
/// the directory is open.
pub fn worker_settings(
    args: &FetchArgs,
    endpoint: &Endpoint,
    connection: &Connection,
    paths: &Paths,
) -> WorkerSettings {
    WorkerSettings {
        base_url: endpoint.url(),
        out_dir: paths.out.display().to_string(),
        state_dir: paths.state_dir.display().to_string(),
        state_dir_in_out: paths.state_dir_in_out.clone(),
        sink: args.sink.into(),
        layout: args.layout.into(),
        resolve: paths.resolve,
        connections: args.connections,
        http_version: args.service.http_version.into(),
        pipeline: args.pipeline,
        max_file_size: args.max_file_size,
        connect_timeout_ms: args.service.connect_timeout_ms,
        first_byte_timeout_ms: args.service.first_byte_timeout_ms,
        idle_timeout_ms: args.service.idle_timeout_ms,
        request_timeout_ms: duration_ms(args.request_timeout),
        max_attempts: args.service.max_attempts.max(1),
        backoff_base_ms: args.service.retry_base_ms,
        backoff_max_ms: args.service.retry_max_ms,
        max_redirects: 5,
        stats_interval_ms: 1_000,
        headers: connection.headers.clone(),
        tls: connection.tls.clone(),
        proxy: connection.proxy.clone(),
        refresh: false,
        test_hooks: args.test.worker_hooks(),
        adaptive: args.adaptive == Toggle::On,
    }
}

/// What a host needs to run its workers: `fetch` adds the listing and the
/// state directory's run to it, `cluster work` the job's queue.
pub struct HostConfig {
    pub endpoint: Endpoint,
    pub connection: Connection,
    pub filter: NameFilter,
    pub paths: Paths,
    pub workers: usize,
    pub settings: WorkerSettings,
}

impl HostConfig {
    /// Checks the arguments, reads the connection settings, makes the
    /// directories and derives the workers' settings.
    pub fn from_args(args: &FetchArgs) -> Result<HostConfig, ConfigError> {
        let Checked {
            endpoint,
            filter,
            workers,
        } = check(args)?;
        let connection = crate::service::connection_setup(&args.service, &endpoint)?;
        let paths = prepare_paths(args)?;
        let settings = worker_settings(args, &endpoint, &connection, &paths);
        Ok(HostConfig {
            endpoint,
            connection,
            filter,
            paths,
            workers,
            settings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fetch: FetchArgs,
    }

    fn args(extra: &[&str]) -> FetchArgs {
        let mut argv = vec!["bulkget", "http://127.0.0.1:1", "/nonexistent/out"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("valid flags").fetch
    }

    fn paths() -> Paths {
        Paths {
            out: "/o".into(),
            state_dir: "/o/.bulkget".into(),
            state_dir_in_out: Some(".bulkget".into()),
            resolve: Resolve::Openat2,
        }
    }

    #[test]
    fn zero_counts_and_timeouts_are_refused_as_usage_errors() {
        for flags in [
            &["--workers", "0"][..],
            &["--connections", "0"],
            &["--batch-size", "0"],
            &["--window", "0"],
        ] {
            let e = check(&args(flags)).unwrap_err();
            assert!(matches!(e, ConfigError::ZeroCount), "{flags:?}: {e}");
            assert_eq!(e.exit_code(), exit::USAGE);
        }
        for flag in ["--request-timeout", "--list-timeout"] {
            let e = check(&args(&[flag, "0s"])).unwrap_err();
            assert!(matches!(e, ConfigError::ZeroTimeout(f) if f == flag), "{e}");
            assert!(e.to_string().contains(flag), "{e}");
        }
        assert!(matches!(
            check(&args(&["--include", "a[z"])).unwrap_err(),
            ConfigError::Filter(_)
        ));
        let ok = check(&args(&["--workers", "3"])).unwrap();
        assert_eq!(ok.workers, 3);
        assert!(ok.filter.is_empty());
    }

    #[test]
    fn each_refusal_has_its_exit_code() {
        let io = ConfigError::Io {
            path: "/x".into(),
            error: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert_eq!(io.exit_code(), exit::ERROR);
        assert_eq!(ConfigError::Probe("p".into()).exit_code(), exit::ERROR);
        assert_eq!(ConfigError::StateDir("s".into()).exit_code(), exit::USAGE);
        let (code, msg) = <(i32, String)>::from(ConfigError::ZeroCount);
        assert_eq!(code, exit::USAGE);
        assert!(msg.contains("--workers"), "{msg}");
    }

    #[test]
    fn sink_and_layout_flags_map_to_the_workers_settings() {
        assert_eq!(SinkKind::from(SinkArg::Dir), SinkKind::Dir);
        assert_eq!(SinkKind::from(SinkArg::Sqlite), SinkKind::Sqlite);
        assert_eq!(SinkKind::from(SinkArg::Null), SinkKind::Null);
        assert_eq!(Layout::from(LayoutArg::Flat), Layout::Flat);
        assert_eq!(Layout::from(LayoutArg::Fanout), Layout::Fanout);
        assert_eq!(sink_name(SinkKind::Sqlite), "sqlite");
        assert_eq!(layout_name(Layout::Fanout), "fanout");

        let a = args(&["--sink", "sqlite", "--layout", "fanout", "-c", "7"]);
        let endpoint = Endpoint::parse(&a.url).unwrap();
        let connection = crate::service::connection_setup(&a.service, &endpoint).unwrap();
        let s = worker_settings(&a, &endpoint, &connection, &paths());
        assert_eq!(s.sink, SinkKind::Sqlite);
        assert_eq!(s.layout, Layout::Fanout);
        assert_eq!(s.connections, 7);
        assert_eq!(s.state_dir_in_out.as_deref(), Some(".bulkget"));
        assert!(!s.refresh);
        // The defaults: the dir sink, flat, adaptive.
        let s = worker_settings(&args(&[]), &endpoint, &connection, &paths());
        assert_eq!(
            (s.sink, s.layout, s.adaptive),
            (SinkKind::Dir, Layout::Flat, true)
        );
    }

    #[test]
    fn the_state_directory_is_inside_out_unless_given() {
        let out = Path::new("/data/out");
        assert_eq!(
            state_dir_of(out, None),
            out.join(bulkget_protocol::STATE_DIR_NAME)
        );
        assert_eq!(
            state_dir_of(out, Some(Path::new("/var/state"))),
            Path::new("/var/state")
        );
    }

    #[test]
    fn prepare_paths_makes_out_and_finds_the_state_directory_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut a = args(&["--sink", "null"]);
        a.out = out.clone();
        let p = prepare_paths(&a).unwrap();
        assert_eq!(p.out, out.canonicalize().unwrap());
        assert!(p.state_dir.is_dir());
        assert_eq!(
            p.state_dir_in_out.as_deref(),
            Some(bulkget_protocol::STATE_DIR_NAME)
        );
        // OUT itself as the state directory is refused.
        a.state_dir = Some(out.clone());
        assert!(matches!(
            prepare_paths(&a).unwrap_err(),
            ConfigError::StateDir(_)
        ));
    }
}
