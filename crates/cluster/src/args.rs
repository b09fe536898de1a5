//! The `bulkget cluster` command line.

use bulkget_coordinator::args::{FetchArgs, HttpVersionArg};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// The one lister of a job: lists URL and publishes its batches to the
    /// job's JetStream stream; exits once every batch is acknowledged.
    List(Box<ListArgs>),
    /// One per host: fetches the job's batches into OUT with this host's
    /// workers, and acknowledges each after its sink commit.
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
    /// HTTP version of the listing connection (see `bulkget fetch`).
    #[arg(long, value_enum, default_value_t = HttpVersionArg::Auto)]
    pub http_version: HttpVersionArg,
    /// Largest list page accepted, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_page_size: u64,
    /// TCP connect timeout, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub connect_timeout_ms: u64,
    /// Time allowed from request to response headers, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub first_byte_timeout_ms: u64,
    /// Longest silence allowed inside a body, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub idle_timeout_ms: u64,
    /// The most one attempt at a list page may take.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub list_timeout: Duration,
    /// Attempts per list page before a transient error is permanent.
    #[arg(long, default_value_t = 10)]
    pub max_attempts: u32,
    /// First retry delay in milliseconds; doubles per attempt, with jitter.
    #[arg(long, default_value_t = 50)]
    pub retry_base_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub retry_max_ms: u64,
    /// A header sent on every list request: 'Name: value' or @FILE (see
    /// `bulkget fetch`). Values are never written anywhere.
    #[arg(long, short = 'H', value_name = "'NAME: VALUE' | @FILE")]
    pub header: Vec<String>,
    /// Trust only the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// A PEM client certificate for mutual TLS; needs --client-key.
    #[arg(long, value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(long, value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// Do not verify the server's certificate.
    #[arg(long, short = 'k')]
    pub insecure: bool,
    /// Tunnel the listing through this http:// proxy (see `bulkget fetch`).
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// Hosts reached without the proxy.
    #[arg(long, value_name = "LIST")]
    pub noproxy: Option<String>,
    /// No progress lines; errors only.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `bulkget fetch`'s own flags (URL, OUT, --workers, --connections,
/// --sink, ...), plus the job. The flags about the listing, resuming and
/// checkpoints do nothing here: the lister and JetStream hold that state.
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
