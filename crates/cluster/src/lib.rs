//! `bulkget cluster`: one job over many hosts, on NATS JetStream.
//!
//! `bulkget fetch` stays one host with no server to run. When one host is
//! not enough, a job's unfinished batches live in a JetStream work-queue
//! stream: one lister publishes them (`cluster list`), every host fetches
//! them with `fetch`'s own workers and acknowledges each after its sink
//! commit (`cluster work`), and `cluster status` reads it all back. The
//! design and the operator's guide are in docs/CLUSTER.md.

pub mod args;
pub mod host;
pub mod job;
pub mod list;
pub mod poison;
pub mod status;
pub mod store;
pub mod work;

use args::ClusterCommand;

/// Runs a `bulkget cluster` subcommand and returns the exit code.
pub fn run(command: ClusterCommand) -> i32 {
    match command {
        ClusterCommand::List(args) => list::run(*args),
        ClusterCommand::Work(args) => work::run(*args),
        ClusterCommand::Status(args) => status::run(args),
    }
}
