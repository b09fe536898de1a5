//! The sqlite sink: one database per shard, `OUT/shard-KK.sqlite`.
//!
//! The table is
//!
//! ```sql
//! CREATE TABLE files(
//!     name       TEXT PRIMARY KEY,
//!     size       INTEGER NOT NULL,
//!     fetched_at INTEGER NOT NULL, -- Unix time in milliseconds
//!     data       BLOB NOT NULL
//! ) WITHOUT ROWID;
//! ```
//!
//! `WITHOUT ROWID` stores each row once, in the primary-key B-tree, instead
//! of in a rowid table plus a separate index on `name` that repeats every
//! name. Measured with `examples/sink_bench.rs` (200,000 rows of 100 bytes,
//! 256 per transaction): with names inserted in ascending order, which is
//! how a shard receives a sorted listing, it costs the same or slightly less
//! CPU per row (0.9–1.1 µs against 1.0–1.2 µs) and makes a 10 % smaller
//! database (29.3 MB against 32.6 MB). With names in random order the rowid
//! table is about twice as fast, because its rows are appended and only the
//! small index entries land on random pages; if a service lists names
//! unsorted, revisit this (a new schema version).
//!
//! `PRAGMA user_version` holds [`SCHEMA_VERSION`]. The database runs in WAL
//! mode with `synchronous=NORMAL`: a commit appends to the write-ahead log
//! without an fsync, which survives the process crashing but not the machine;
//! the coordinator's `syncfs` before each checkpoint covers the machine.
//!
//! Each put is an `INSERT OR REPLACE` through a cached prepared statement,
//! inside one open transaction that the first put after a commit begins
//! (`BEGIN IMMEDIATE`) and [`Sink::commit`] commits. A refetched batch
//! replaces its rows, so writes are idempotent, and a crash before the
//! commit loses the whole transaction, never half of it.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{ffi, Connection, ErrorCode, OpenFlags};

use crate::{check_name, show, PutError, Reserved, Sink};

/// The schema version kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;

const CREATE_WITHOUT_ROWID: &str = "CREATE TABLE IF NOT EXISTS files(
    name TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    fetched_at INTEGER NOT NULL,
    data BLOB NOT NULL
) WITHOUT ROWID";

const CREATE_ROWID: &str = "CREATE TABLE IF NOT EXISTS files(
    name TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    fetched_at INTEGER NOT NULL,
    data BLOB NOT NULL
)";

const INSERT: &str =
    "INSERT OR REPLACE INTO files(name, size, fetched_at, data) VALUES (?1, ?2, ?3, ?4)";
const CONTAINS: &str = "SELECT 1 FROM files WHERE name = ?1";
const BEGIN: &str = "BEGIN IMMEDIATE";
const COMMIT: &str = "COMMIT";

/// How long a writer waits for a lock held by someone else (a reader
/// running `bulkget cat` during a checkpoint, or a worker of the same shard
/// that has not quite exited) before giving up.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The database of shard `shard`: `OUT/shard-07.sqlite`, `OUT/shard-123.sqlite`.
pub fn shard_db_path(out_dir: &Path, shard: u32) -> PathBuf {
    out_dir.join(format!("shard-{shard:02}.sqlite"))
}

/// Writes files as rows of one SQLite database.
#[derive(Debug)]
pub struct SqliteSink {
    conn: Connection,
    path: PathBuf,
    /// Whether a transaction is open.
    in_tx: bool,
    /// Names refused because the dir sink would put them in the state
    /// directory, so that both sinks refuse the same names.
    reserved: Reserved,
}

impl SqliteSink {
    /// Opens (creating it and `out_dir` if needed) the database of shard
    /// `shard` in `out_dir`.
    pub fn open(out_dir: &Path, shard: u32) -> Result<SqliteSink, PutError> {
        std::fs::create_dir_all(out_dir).map_err(|e| {
            let what = format_args!("cannot create output directory {out_dir:?}");
            match crate::io_error(&e, what) {
                PutError::File(m) => PutError::Fatal(m),
                other => other,
            }
        })?;
        Self::open_path(&shard_db_path(out_dir, shard))
    }

    /// Opens (creating it if needed) the database at `path`.
    pub fn open_path(path: &Path) -> Result<SqliteSink, PutError> {
        Self::open_with_schema(path, true)
    }

    /// Like [`SqliteSink::open_path`], with a choice of table shape: the
    /// benchmark uses this to compare a `WITHOUT ROWID` table with a rowid
    /// table plus the primary-key index. Only `without_rowid = true` is what
    /// bulkget writes.
    #[doc(hidden)]
    pub fn open_with_schema(path: &Path, without_rowid: bool) -> Result<SqliteSink, PutError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| db_error(None, &e, format_args!("cannot open {path:?}")))?;
        let fail =
            |e: rusqlite::Error| db_error(Some(&conn), &e, format_args!("cannot set up {path:?}"));
        conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(fail)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(PutError::Fatal(format!(
                "cannot put {path:?} in WAL mode (the file system said {mode:?})"
            )));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(fail)?;
        // Keep a finished write-ahead log from staying large on disk.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(fail)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(fail)?;
        match version {
            0 => {
                let create = if without_rowid {
                    CREATE_WITHOUT_ROWID
                } else {
                    CREATE_ROWID
                };
                conn.execute_batch(&format!(
                    "BEGIN IMMEDIATE; {create}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
                .map_err(fail)?;
            }
            SCHEMA_VERSION => {}
            other => {
                return Err(PutError::Fatal(format!(
                "{path:?} has schema version {other}; this bulkget knows version {SCHEMA_VERSION}"
            )))
            }
        }
        Ok(SqliteSink {
            conn,
            path: path.to_path_buf(),
            in_tx: false,
            reserved: Reserved::default(),
        })
    }

    /// Refuses the names `reserved` keeps for the state directory (by
    /// default only `.bulkget`), as the flat dir sink of the same run would.
    pub fn with_reserved(mut self, reserved: Reserved) -> SqliteSink {
        self.reserved = reserved;
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn insert(&mut self, name: &str, body: &[u8]) -> rusqlite::Result<()> {
        if !self.in_tx {
            self.conn.prepare_cached(BEGIN)?.execute([])?;
            self.in_tx = true;
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        // prepare_cached finds the statement by its text and allocates
        // nothing once it is cached.
        let mut insert = self.conn.prepare_cached(INSERT)?;
        insert.execute((name, body.len() as i64, now_ms, body))?;
        Ok(())
    }
}

impl Sink for SqliteSink {
    fn put(&mut self, name: &str, body: &[u8]) -> Result<(), PutError> {
        check_name(name)?;
        self.reserved.check(None, name)?;
        self.insert(name, body).map_err(|e| {
            // SQLite may roll a transaction back by itself after some errors
            // (a full disk among them); keep our idea of it in step.
            self.in_tx = !self.conn.is_autocommit();
            db_error(
                Some(&self.conn),
                &e,
                format_args!("cannot store {}", show(name)),
            )
        })
    }

    /// Whether the database has a row of this name: one primary-key
    /// lookup. Rows exist only whole (a transaction commits them all or
    /// none), so a row found is a file fetched in full.
    fn contains(&mut self, name: &str) -> Result<bool, PutError> {
        let found = self
            .conn
            .prepare_cached(CONTAINS)
            .and_then(|mut stmt| stmt.exists([name]));
        found.map_err(|e| {
            db_error(
                Some(&self.conn),
                &e,
                format_args!("cannot look up {}", show(name)),
            )
        })
    }

    fn commit(&mut self) -> Result<(), PutError> {
        if !self.in_tx {
            return Ok(());
        }
        let result = self
            .conn
            .prepare_cached(COMMIT)
            .and_then(|mut stmt| stmt.execute([]));
        self.in_tx = !self.conn.is_autocommit();
        result.map(drop).map_err(|e| {
            db_error(
                Some(&self.conn),
                &e,
                format_args!("cannot commit {:?}", self.path),
            )
        })
    }
}

/// A database closed by its worker goes back to a rollback journal, so that
/// `bulkget cat`, `export` and any other reader can open it read-only
/// without leaving `-wal` and `-shm` files beside it (a read-only
/// connection to a WAL database must create them and cannot remove them).
/// Uncommitted rows are rolled back first: nothing unacknowledged is kept.
/// The switch checkpoints the log into the database; if it cannot (another
/// connection is open, the disk is full) the database simply stays in WAL
/// mode, which loses nothing. The next worker to open it turns WAL back on.
impl Drop for SqliteSink {
    fn drop(&mut self) {
        if self.in_tx {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        let _ = self
            .conn
            .query_row("PRAGMA journal_mode=DELETE", [], |row| {
                row.get::<_, String>(0)
            });
    }
}

/// Sorts a SQLite error into the three kinds.
///
/// A full disk usually shows as `SQLITE_FULL`, but a write that fails while
/// growing the shared-memory index shows as an `SQLITE_IOERR_*` code; the
/// errno SQLite saw tells those apart from a real I/O error.
pub(crate) fn db_error(
    conn: Option<&Connection>,
    err: &rusqlite::Error,
    what: std::fmt::Arguments<'_>,
) -> PutError {
    let msg = format!("{what}: {err}");
    match err.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => PutError::NoSpace(msg),
        // A value over SQLite's length limit: only this file is affected.
        Some(ErrorCode::TooBig) => PutError::File(msg),
        Some(ErrorCode::SystemIoFailure) | Some(ErrorCode::CannotOpen) => {
            let errno = conn.map_or(0, |c| {
                // SAFETY: the handle is valid while `c` lives, and
                // sqlite3_system_errno only reads the connection's last errno.
                unsafe { ffi::sqlite3_system_errno(c.handle()) }
            });
            if errno == libc::ENOSPC || errno == libc::EDQUOT {
                PutError::NoSpace(format!("{msg} ({})", nix::errno::Errno::from_raw(errno)))
            } else {
                PutError::Fatal(msg)
            }
        }
        _ => PutError::Fatal(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::count_rows;

    #[test]
    fn a_database_per_shard_with_the_schema() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            shard_db_path(tmp.path(), 7),
            tmp.path().join("shard-07.sqlite")
        );
        assert_eq!(
            shard_db_path(tmp.path(), 123),
            tmp.path().join("shard-123.sqlite")
        );
        let mut sink = SqliteSink::open(tmp.path(), 7).unwrap();
        sink.put("a", b"hello").unwrap();
        sink.commit().unwrap();
        drop(sink);
        let conn = Connection::open(tmp.path().join("shard-07.sqlite")).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        // Closed cleanly, the database left WAL mode and its side files.
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
        for side in ["shard-07.sqlite-wal", "shard-07.sqlite-shm"] {
            assert!(!tmp.path().join(side).exists(), "{side} is left behind");
        }
        let (size, at, data): (i64, i64, Vec<u8>) = conn
            .query_row(
                "SELECT size, fetched_at, data FROM files WHERE name = 'a'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((size, data.as_slice()), (5, &b"hello"[..]));
        assert!(at > 1_600_000_000_000, "{at}");
    }

    #[test]
    fn a_refetch_replaces_the_row() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = SqliteSink::open(tmp.path(), 0).unwrap();
        sink.put("a", b"first, longer").unwrap();
        sink.commit().unwrap();
        sink.put("a", b"second").unwrap();
        sink.commit().unwrap();
        drop(sink);
        assert_eq!(count_rows(tmp.path()).unwrap(), 1);
        let mut out = Vec::new();
        assert!(crate::cat(tmp.path(), "a", &mut out).unwrap());
        assert_eq!(out, b"second");
    }

    #[test]
    fn nothing_is_half_committed() {
        // Dropped without a commit: the connection rolls back.
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = SqliteSink::open(tmp.path(), 0).unwrap();
        for i in 0..100 {
            sink.put(&format!("f{i}"), b"x").unwrap();
        }
        drop(sink);
        assert_eq!(count_rows(tmp.path()).unwrap(), 0);
        let mut sink = SqliteSink::open(tmp.path(), 0).unwrap();
        for i in 0..100 {
            sink.put(&format!("f{i}"), b"x").unwrap();
        }
        sink.commit().unwrap();
        assert_eq!(count_rows(tmp.path()).unwrap(), 100);

        // Closer to a crash: the sink is leaked, so no rollback, no close,
        // no cleanup of any kind runs. A second connection (as after a
        // restart) sees the committed rows and none of the open
        // transaction, even though that transaction is big enough to have
        // spilled pages into the write-ahead log.
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = SqliteSink::open(tmp.path(), 1).unwrap();
        for i in 0..10 {
            sink.put(&format!("committed{i}"), b"x").unwrap();
        }
        sink.commit().unwrap();
        let big = vec![7u8; 4096];
        for i in 0..5000 {
            sink.put(&format!("open{i}"), &big).unwrap();
        }
        std::mem::forget(sink);
        assert_eq!(count_rows(tmp.path()).unwrap(), 10);
        let mut out = Vec::new();
        assert!(crate::cat(tmp.path(), "committed3", &mut out).unwrap());
        assert!(!crate::cat(tmp.path(), "open3", &mut out).unwrap());
    }

    #[test]
    fn unsafe_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = SqliteSink::open(tmp.path(), 0).unwrap();
        for name in [
            "../x",
            "/abs",
            "a//b",
            "",
            ".",
            "..",
            "a\0b",
            ".bulkget/lock",
        ] {
            assert!(
                matches!(sink.put(name, b"x"), Err(PutError::File(_))),
                "{name:?}"
            );
        }
        // The transaction is still usable after a refused name.
        sink.put("fine", b"x").unwrap();
        sink.commit().unwrap();
        assert_eq!(count_rows(tmp.path()).unwrap(), 1);
    }

    #[test]
    fn an_unknown_schema_version_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = shard_db_path(tmp.path(), 0);
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        match SqliteSink::open(tmp.path(), 0) {
            Err(PutError::Fatal(msg)) => assert!(msg.contains("99"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_commit_without_puts_is_fine() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = SqliteSink::open(tmp.path(), 0).unwrap();
        sink.commit().unwrap();
        sink.commit().unwrap();
    }
}
