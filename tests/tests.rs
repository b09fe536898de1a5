//! End-to-end tests: the real `bulkget` and `bulkget-server` binaries,
//! started as processes, on loopback.

mod util;

mod cluster;
mod fetch;
mod filters;
mod hardening;
mod hostile;
mod http2;
mod limits;
mod list;
mod metrics;
mod nginx;
mod output;
mod pipeline;
mod politeness;
mod refresh;
mod server;
mod services;
mod shell;
mod space;
mod sqlite;
mod stats;
mod supervision;
