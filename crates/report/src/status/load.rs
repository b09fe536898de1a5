//! Reading a state directory into a [`StatusReport`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bulkget_stats::atomic::read_json;
use bulkget_stats::schema::{
    checkpoint_path, coordinator_path, shards_dir, CoordinatorStats, ShardState, ShardStats,
    ShardSummary, SummaryState, COORDINATOR_FILE, SCHEMA_VERSION, SHARDS_DIR,
};
use bulkget_stats::time::{age, format_rfc3339};

use super::{StatusError, StatusReport, Totals, STALE_AFTER};

fn looks_like_state_dir(dir: &Path) -> bool {
    dir.join(COORDINATOR_FILE).is_file() || dir.join(SHARDS_DIR).is_dir()
}

/// The directory `bulkget status` reads.
///
/// * `Some(dir)`: `dir`, unless it holds no stats files and `dir/.bulkget`
///   does (the user named the output directory): then `dir/.bulkget`.
/// * `None`: `./.bulkget` if it holds stats files, else `.` if it does, else
///   `./.bulkget` if it exists, else `.` (and the error names it).
pub fn resolve_state_dir(arg: Option<&Path>) -> PathBuf {
    match arg {
        Some(dir) => {
            let inner = dir.join(bulkget_protocol::STATE_DIR_NAME);
            if !looks_like_state_dir(dir) && looks_like_state_dir(&inner) {
                inner
            } else {
                dir.to_path_buf()
            }
        }
        None => {
            let default = PathBuf::from(bulkget_protocol::STATE_DIR_NAME);
            let here = PathBuf::from(".");
            if looks_like_state_dir(&default) {
                default
            } else if looks_like_state_dir(&here) {
                here
            } else if default.is_dir() {
                default
            } else {
                here
            }
        }
    }
}

/// Whether a shard's file is stale: older than [`STALE_AFTER`] at `now`
/// although the shard should be writing it. A shard is not expected to write
/// when the run is over, when its file says it exited, or when the
/// coordinator says no worker runs for it (backoff, parked, stopped). A file
/// whose `updated_at` does not parse counts as stale.
pub fn shard_is_stale(
    shard: &ShardStats,
    summary: Option<&ShardSummary>,
    coordinator: Option<&CoordinatorStats>,
    now: SystemTime,
) -> bool {
    if coordinator.is_some_and(|c| c.state.is_final()) || shard.state == ShardState::Exited {
        return false;
    }
    if summary.is_some_and(|s| s.state != SummaryState::Running) {
        return false;
    }
    age(&shard.updated_at, now).is_none_or(|a| a > STALE_AFTER)
}

fn coordinator_is_stale(c: &CoordinatorStats, now: SystemTime) -> bool {
    !c.state.is_final() && age(&c.updated_at, now).is_none_or(|a| a > STALE_AFTER)
}

/// Reads the run in `state_dir` as of now. See [`load_at`].
pub fn load(state_dir: &Path) -> Result<StatusReport, StatusError> {
    load_at(state_dir, SystemTime::now())
}

/// Reads the run in `state_dir`, judging staleness as of `now`.
///
/// Fails with [`StatusError::NoRun`] if the directory does not exist or has
/// neither `coordinator.json` nor a `shards/shard-*.json`, and with
/// [`StatusError::Io`] if a directory cannot be listed. A single file that
/// cannot be read or parsed becomes a warning; a shard file removed between
/// the listing and the open is skipped silently.
pub fn load_at(state_dir: &Path, now: SystemTime) -> Result<StatusReport, StatusError> {
    let io_err = |path: &Path, source| StatusError::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::metadata(state_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(StatusError::NoRun {
                dir: state_dir.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StatusError::NoRun {
                dir: state_dir.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err(state_dir, e)),
    }

    let mut warnings = Vec::new();
    let mut found_any = false;

    let coordinator_file = coordinator_path(state_dir);
    let coordinator: Option<CoordinatorStats> = match read_json(&coordinator_file) {
        Ok(c) => {
            found_any |= c.is_some();
            c
        }
        Err(e) => {
            found_any = true;
            warnings.push(describe(&coordinator_file, &e));
            None
        }
    };

    let mut shards: Vec<(ShardStats, String)> = Vec::new();
    let dir = shards_dir(state_dir);
    match fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|e| io_err(&dir, e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                // `shard-03.json` only: not the `shard-03.json.tmp.PID` a
                // writer is filling or a killed writer left behind.
                if !(name.starts_with("shard-") && name.ends_with(".json")) {
                    continue;
                }
                let path = entry.path();
                found_any = true;
                match read_json::<ShardStats>(&path) {
                    Ok(Some(s)) => shards.push((s, name.to_string())),
                    Ok(None) => {} // removed since the listing
                    Err(e) => warnings.push(describe(&path, &e)),
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&dir, e)),
    }
    if !found_any {
        return Err(StatusError::NoRun {
            dir: state_dir.to_path_buf(),
        });
    }
    shards.sort_by(|a, b| (a.0.shard, &a.1).cmp(&(b.0.shard, &b.1)));
    let shards: Vec<ShardStats> = shards.into_iter().map(|(s, _)| s).collect();

    let checkpoint_file = checkpoint_path(state_dir);
    let checkpoint: Option<serde_json::Value> = read_json(&checkpoint_file).unwrap_or_else(|e| {
        warnings.push(describe(&checkpoint_file, &e));
        None
    });
    let checkpoint_saved_at = checkpoint
        .as_ref()
        .and_then(|_| fs::metadata(&checkpoint_file).ok())
        .and_then(|m| m.modified().ok())
        .map(format_rfc3339);

    if let Some(c) = &coordinator {
        if c.schema_version > SCHEMA_VERSION {
            warnings.push(newer_schema(&coordinator_file, c.schema_version));
        }
    }
    for s in &shards {
        if s.schema_version > SCHEMA_VERSION {
            warnings.push(newer_schema(
                &bulkget_stats::schema::shard_path(state_dir, s.shard),
                s.schema_version,
            ));
        }
    }

    let totals: Totals = shards.iter().collect();
    let stale_shards = shards
        .iter()
        .filter(|s| {
            shard_is_stale(
                s,
                summary_for(&coordinator, s.shard),
                coordinator.as_ref(),
                now,
            )
        })
        .map(|s| s.shard)
        .collect();
    let coordinator_stale = coordinator
        .as_ref()
        .is_some_and(|c| coordinator_is_stale(c, now));

    Ok(StatusReport {
        schema_version: SCHEMA_VERSION,
        state_dir: state_dir.to_string_lossy().into_owned(),
        generated_at: format_rfc3339(now),
        coordinator,
        shards,
        checkpoint,
        checkpoint_saved_at,
        totals,
        stale_shards,
        coordinator_stale,
        warnings,
    })
}

fn describe(path: &Path, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::InvalidData {
        // The message already names the file.
        format!("cannot parse {e}")
    } else {
        format!("cannot read {}: {e}", path.display())
    }
}

fn newer_schema(path: &Path, version: u32) -> String {
    format!(
        "{} has schema version {version}, newer than this bulkget's {SCHEMA_VERSION}: \
         fields may be missing or mean something else",
        path.display()
    )
}

pub(super) fn summary_for(
    coordinator: &Option<CoordinatorStats>,
    shard: u32,
) -> Option<&ShardSummary> {
    coordinator
        .as_ref()
        .and_then(|c| c.shards.iter().find(|s| s.shard == shard))
}
