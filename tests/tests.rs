//! End-to-end tests: the real `bulkget` and `bulkget-server` binaries,
//! started as processes, on loopback.

mod util;

mod fetch;
mod hostile;
mod pipeline;
mod space;
mod sqlite;
mod stats;
mod supervision;
