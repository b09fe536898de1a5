//! End-to-end tests: the real `bulkget` and `bulkget-server` binaries,
//! started as processes, on loopback.

mod util;

mod cluster;
mod fetch;
mod hardening;
mod hostile;
mod http2;
mod limits;
mod nginx;
mod output;
mod pipeline;
mod server;
mod services;
mod space;
mod sqlite;
mod stats;
mod supervision;
