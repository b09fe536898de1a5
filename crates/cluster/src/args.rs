//! The `bulkget cluster` command line.

use bulkget_coordinator::args::{FetchArgs, FilterArgs, ServiceArgs};
use clap::{Args, Subcommand};
use std::time::Duration;

#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// The one lister of a job: lists URL and publishes its batches to the
    /// job's JetStream stream; exits once every batch is acknowledged.
    List(Box<ListArgs>),
    /// One per host: fetches the job's batches into OUT with this host's
    /// workers, and acknowledges each after its sink commit.
    // `fetch`'s help for --max-rps speaks of a run; on a host it is the
    // host's own cap, and the job's is the sum over its hosts.
    #[command(mut_arg("max_rps", |a| a.help(
        "A cap on this host's GET requests a second, across its workers together \
         (each working shard gets an equal share). Per host: N hosts with --max-rps R \
         send up to N x R; give each host the job's cap divided by the hosts. \
         Default: no cap."
    )))]
    Work(Box<WorkArgs>),
    /// A job's listing position, queue, hosts and failures.
    Status(StatusArgs),
}

/// Where the job lives.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// The NATS server (with JetStream) that holds the job, e.g.
    /// nats://10.0.0.5:4222. Credentials belong in the NATS_URL
    /// environment variable, not on the command line.
    #[arg(long, env = "NATS_URL")]
    pub nats: String,
    /// The job's name: letters, digits, '-' and '_'. Every stream, bucket
    /// and message id of the job carries it.
    #[arg(long)]
    pub job: String,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// The service's base URL.
    pub url: String,
    #[command(flatten)]
    pub job: JobArgs,
    /// Names per published batch (also cut so that a message stays under
    /// 512 KiB).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// How long a host may hold a batch without acknowledging it (or
    /// sending a progress acknowledgement) before JetStream gives it to
    /// another host. Set when the job is created.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub ack_wait: Duration,
    /// The most batches delivered and not yet acknowledged, over all hosts:
    /// at least hosts x workers x window. Set when the job is created.
    #[arg(long, default_value_t = 10_000)]
    pub max_ack_pending: i64,
    /// Replicas of the job's streams and bucket: 3 on a production
    /// cluster of 3 or more NATS servers, 1 on a single server.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// How long the stream remembers message ids, so a restarted lister's
    /// batches of the page it was on are not queued twice.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub dedup_window: Duration,
    /// How long the lister's lease lasts without renewal: a second lister
    /// is refused while it runs, and a restarted one may take over after.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// The most batches queued (published and not yet acknowledged) before
    /// the lister waits for the hosts.
    #[arg(long, default_value_t = 100_000)]
    pub max_queued: u64,
    /// No progress lines; errors only.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// The listing flags of `bulkget fetch` and `bulkget list`, meaning the
    /// same here.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Which names the job fetches, as in `bulkget fetch`: the lister
    /// publishes only these, and counts the others as excluded.
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `bulkget fetch`'s own flags (URL, OUT, --workers, --connections,
/// --sink, --max-rps, ...), plus the job. `--max-rps` caps this host's
/// requests, not the job's: N hosts with `--max-rps R` send up to N x R.
/// The listing flags do nothing here, and `--include`, `--exclude`,
/// `--resume` and `--refresh` are refused: the lister and JetStream hold
/// that state.
#[derive(Debug, Clone, Args)]
pub struct WorkArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// This host's name in `cluster status`. Default: the machine's name
    /// and this process's id.
    #[arg(long)]
    pub host_id: Option<String>,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Redraw every 2 seconds until the job is finished.
    #[arg(long)]
    pub watch: bool,
    /// List the failed names with their reasons.
    #[arg(long)]
    pub failed: bool,
}
