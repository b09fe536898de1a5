//! `bulkget-server`: the test stand-in for the remote file service. All of it
//! lives in the `bulkget-server` library; see its documentation or `--help`.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = bulkget_server::ServerArgs::parse();
    match bulkget_server::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkget-server: {e}");
            ExitCode::FAILURE
        }
    }
}
