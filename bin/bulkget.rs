//! `bulkget`: command-line glue over the library crates. Parses arguments,
//! sets up logging and maps results to exit codes; nothing else lives here.

use bulkget_console::{errln, outln};
use bulkget_coordinator::args::{FetchArgs, LayoutArg, ListArgs, LogFormat};
use bulkget_coordinator::exit;
use clap::{CommandFactory, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

/// Download every file from a remote file service, fast, and lose none.
///
/// Exit codes: 0 every listed file is in the sink; 1 unexpected error, or
/// a failed write or sync of the state directory or OUT (stopped at once);
/// 2 bad usage; 3 some files failed (see failed.jsonl); 4 the listing
/// failed; 5 every shard was parked; 6 state directory conflict; 7 out of
/// disk space; 129 hung up (SIGHUP); 130 interrupted (SIGINT); 143
/// terminated (SIGTERM). Runs stopped by 4, 5, 7, 129, 130 or 143 are
/// resumable with --resume, and so is a run stopped by 1 that saved a
/// checkpoint before.
#[derive(Parser)]
#[command(name = "bulkget", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr (filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Download every file the service at URL lists into OUT.
    // Boxed: the fetch flags are most of the enum's size otherwise.
    Fetch(Box<FetchArgs>),
    /// Print the names the service at URL lists, without fetching them: a
    /// manifest. Same listing, retries, headers and limits as fetch; exit 4
    /// if the listing fails.
    List(Box<ListArgs>),
    /// Show a run's progress per shard and in total, while it runs or after.
    Status(bulkget_report::StatusArgs),
    /// Unpack the SQLite shards of OUT into a directory tree.
    Export {
        /// The output directory of a `--sink sqlite` run.
        out: PathBuf,
        /// Where to write the files (created if missing).
        dest: PathBuf,
        /// Directory layout to write.
        #[arg(long, value_enum, default_value_t = LayoutArg::Flat)]
        layout: LayoutArg,
    },
    /// Print one fetched file's bytes to stdout.
    Cat {
        /// The output directory of a run (any sink that keeps files).
        out: PathBuf,
        /// The file's name as the service lists it.
        name: String,
    },
    /// Many hosts on one job, over NATS JetStream: `list`, `work`, `status`
    /// (docs/CLUSTER.md).
    #[command(subcommand)]
    Cluster(bulkget_cluster::args::ClusterCommand),
    /// Print a shell completion script to stdout, e.g.
    /// `bulkget completions bash > ~/.local/share/bash-completion/completions/bulkget`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Internal: write the man pages (bulkget.1 and one per subcommand)
    /// into DIR; scripts/man.sh runs it.
    #[command(hide = true)]
    Man {
        /// Where to write the pages (created if missing).
        dir: PathBuf,
    },
    /// Internal: a worker process, started by `fetch`.
    #[command(name = bulkget_protocol::WORKER_SUBCOMMAND, hide = true)]
    Worker,
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let code = match cli.command {
        Command::Fetch(args) => bulkget_coordinator::fetch(*args),
        Command::Cluster(command) => bulkget_cluster::run(command),
        Command::List(args) => bulkget_coordinator::list(*args),
        Command::Completions { shell } => {
            // Rendered in memory first: the generator panics on a failed
            // write, and a closed stdout must not make a panic.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "bulkget", &mut script);
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&script).and_then(|()| out.flush());
            exit::OK
        }
        Command::Man { dir } => {
            match std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
            {
                Ok(()) => {
                    outln!("bulkget: man pages written to {}", dir.display());
                    exit::OK
                }
                Err(e) => {
                    errln!("bulkget man: cannot write to {}: {e}", dir.display());
                    exit::ERROR
                }
            }
        }
        Command::Worker => bulkget_worker::run_on_fd(bulkget_worker::WORKER_FD),
        Command::Status(args) => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            match bulkget_report::run_status(&args, &mut out) {
                Ok(code) => code,
                Err(e) => {
                    let _ = out.flush();
                    errln!("bulkget status: {e}");
                    e.exit_code()
                }
            }
        }
        Command::Export { out, dest, layout } => {
            match bulkget_sink::export(&out, &dest, layout.into()) {
                Ok(summary) => {
                    outln!(
                        "exported {} files ({} bytes) to {}",
                        summary.files,
                        summary.bytes,
                        dest.display()
                    );
                    for (name, why) in &summary.refused {
                        errln!("bulkget export: refused {name:?}: {why}");
                    }
                    if summary.refused.is_empty() {
                        exit::OK
                    } else {
                        exit::FILES_FAILED
                    }
                }
                Err(e) => {
                    errln!("bulkget export: {e}");
                    exit::ERROR
                }
            }
        }
        Command::Cat { out, name } => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            match bulkget_sink::cat(&out, &name, &mut lock) {
                Ok(true) => exit::OK,
                Ok(false) => {
                    errln!("bulkget cat: {name:?} is not in {}", out.display());
                    exit::FILES_FAILED
                }
                Err(e) => {
                    errln!("bulkget cat: {e}");
                    exit::ERROR
                }
            }
        }
    };
    std::process::exit(code);
}

fn init_logging(format: LogFormat) {
    bulkget_console::log::init(format == LogFormat::Json);
}
