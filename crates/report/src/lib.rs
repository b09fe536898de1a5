//! What bulkget shows people, in one place.
//!
//! * [`format`]: numbers, bytes, durations and plurals: one function for
//!   each.
//! * [`table`]: plain-text tables.
//! * [`eta`]: the ETA rule: whether there is an estimate and, when not, why.
//! * [`progress`]: the bar's lines, the plain lines and their JSON form,
//!   rendered from the [`CoordinatorStats`](bulkget_stats::CoordinatorStats)
//!   snapshot the coordinator also writes to `coordinator.json`.
//! * [`status`]: `bulkget status` (load, render, watch) and its arguments.
//!
//! The files themselves (their serde types, versions and paths) are
//! `bulkget-stats`'s; this crate only reads and renders them.

pub mod eta;
pub mod format;
pub mod progress;
pub mod status;
pub mod table;

pub use status::{
    load, load_at, render_table, resolve_state_dir, run_status, StatusArgs, StatusError,
    StatusReport, Totals,
};
