//! Reading a finished (or running) output directory: `bulkget export`,
//! `bulkget cat`, and row counts for tests.
//!
//! The databases are treated as untrusted input: a database file can be
//! copied from elsewhere or edited by hand. They are opened read-only, with
//! SQLite's defensive mode on and schema-defined functions distrusted, every
//! name is checked again, and every file is written through a [`DirSink`],
//! so `RESOLVE_BENEATH` keeps a hostile name inside the destination.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use rusqlite::config::DbConfig;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::dir::{open_beneath, probe_fd};
use crate::sqlite::db_error;
use crate::{check_name, os_error, DirSink, Layout, PutError, Reserved, Sink};

/// What [`export`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Files written. A name stored in two shard databases (possible when a
    /// batch committed by one worker was fetched again by another after a
    /// crash) is written, and counted, twice; the second write replaces the
    /// first with the same bytes.
    pub files: u64,
    /// Body bytes written.
    pub bytes: u64,
    /// Rows that were not written, as (name, reason). Names that are not
    /// valid UTF-8 text appear in a readable rendering.
    pub refused: Vec<(String, String)>,
}

/// The shard databases in `out_dir` (`shard-<digits>.sqlite`), in shard
/// order. A missing `out_dir` has none.
pub fn shard_databases(out_dir: &Path) -> Result<Vec<PathBuf>, PutError> {
    let entries = match std::fs::read_dir(out_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PutError::Fatal(format!("cannot read {out_dir:?}: {e}"))),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| PutError::Fatal(format!("cannot read {out_dir:?}: {e}")))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let shard = file_name
            .strip_prefix("shard-")
            .and_then(|rest| rest.strip_suffix(".sqlite"))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(shard) = shard {
            found.push((shard, entry.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// Opens a shard database for reading, defensively.
fn open_read(path: &Path) -> Result<Connection, PutError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| db_error(None, &e, format_args!("cannot open {path:?}")))?;
    let setup = || -> rusqlite::Result<()> {
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
        // A running worker may hold the write lock briefly.
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(())
    };
    setup().map_err(|e| db_error(Some(&conn), &e, format_args!("cannot open {path:?}")))?;
    Ok(conn)
}

/// A stored value as text, for the `refused` list.
fn render(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".to_string(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(x) => x.to_string(),
        ValueRef::Text(b) => String::from_utf8_lossy(b).into_owned(),
        ValueRef::Blob(b) => {
            let hex: String = b.iter().take(64).map(|b| format!("{b:02x}")).collect();
            format!("x'{hex}'")
        }
    }
}

/// Writes every file of every `OUT/shard-*.sqlite` into `dest` (created if
/// needed) with `layout`, under the same rules as the dir sink.
///
/// A row that cannot be written (an unsafe name, a name that is not text, a
/// size column that disagrees with the data, a conflict such as `a` and
/// `a/b`) is listed in [`ExportSummary::refused`] and the export goes on. A
/// full disk or an unusable database stops it with an error. The export
/// ends with a `syncfs` of the destination, so a finished export is
/// durable.
///
/// `dest` must not contain `out_dir`: otherwise a name such as
/// `shard-00.sqlite` could overwrite the database being read.
pub fn export(out_dir: &Path, dest: &Path, layout: Layout) -> Result<ExportSummary, PutError> {
    let dbs = shard_databases(out_dir)?;
    if dbs.is_empty() {
        return Err(PutError::Fatal(format!(
            "no shard-*.sqlite databases in {out_dir:?}"
        )));
    }
    let mut sink = DirSink::open(dest, layout)?;
    if let (Ok(out), Ok(dest_real)) = (out_dir.canonicalize(), dest.canonicalize()) {
        if out.starts_with(&dest_real) {
            return Err(PutError::Fatal(format!(
                "cannot export into {dest:?}: it contains the databases in {out_dir:?}"
            )));
        }
    }
    let mut summary = ExportSummary::default();
    for db in &dbs {
        export_one(db, &mut sink, &mut summary)?;
    }
    sink.commit()?;
    sink.sync_file_system()?;
    Ok(summary)
}

fn export_one(db: &Path, sink: &mut DirSink, summary: &mut ExportSummary) -> Result<(), PutError> {
    let conn = open_read(db)?;
    let fail = |e: rusqlite::Error| db_error(Some(&conn), &e, format_args!("cannot read {db:?}"));
    let mut stmt = conn
        .prepare("SELECT name, size, data FROM files")
        .map_err(fail)?;
    let mut rows = stmt.query([]).map_err(fail)?;
    while let Some(row) = rows.next().map_err(fail)? {
        let name_value = row.get_ref(0).map_err(fail)?;
        let name = match name_value {
            ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
                Ok(name) => name,
                Err(_) => {
                    let why = format!("unsafe name: not UTF-8 (in {db:?})");
                    summary.refused.push((render(name_value), why));
                    continue;
                }
            },
            other => {
                let why = format!("name is not text (in {db:?})");
                summary.refused.push((render(other), why));
                continue;
            }
        };
        let data = match row.get_ref(2).map_err(fail)? {
            ValueRef::Blob(b) | ValueRef::Text(b) => b,
            other => {
                let why = format!("data is {} (in {db:?})", render(other));
                summary.refused.push((name.to_string(), why));
                continue;
            }
        };
        match row.get_ref(1).map_err(fail)? {
            ValueRef::Integer(n) if u64::try_from(n) == Ok(data.len() as u64) => {}
            other => {
                let why = format!(
                    "size column says {} but the data has {} bytes (in {db:?})",
                    render(other),
                    data.len()
                );
                summary.refused.push((name.to_string(), why));
                continue;
            }
        }
        match sink.put(name, data) {
            Ok(()) => {
                summary.files += 1;
                summary.bytes += data.len() as u64;
            }
            Err(PutError::File(why)) => summary.refused.push((name.to_string(), why)),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the bytes of file `name` to `w`; `Ok(false)` if it is not there.
///
/// If `out_dir` holds shard databases, they are searched (in shard order)
/// and nothing else is. Otherwise `out_dir` is taken as a dir sink:
/// `OUT/<name>`, then `OUT/ab/cd/<name>`, each opened beneath `OUT` as the
/// dir sink opens them (`RESOLVE_BENEATH`, or the walk without `openat2`).
/// A name the sinks would refuse is an error
/// ([`PutError::File`]), since it can never have been stored.
pub fn cat(out_dir: &Path, name: &str, w: &mut dyn Write) -> Result<bool, PutError> {
    check_name(name)?;
    Reserved::default().check(None, name)?;
    let dbs = shard_databases(out_dir)?;
    if !dbs.is_empty() {
        for db in &dbs {
            let conn = open_read(db)?;
            let found: Option<Vec<u8>> = conn
                .query_row("SELECT data FROM files WHERE name = ?1", [name], |row| {
                    Ok(match row.get_ref(0)? {
                        ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
                        _ => Vec::new(),
                    })
                })
                .optional()
                .map_err(|e| db_error(Some(&conn), &e, format_args!("cannot read {db:?}")))?;
            if let Some(data) = found {
                w.write_all(&data).map_err(write_error)?;
                return Ok(true);
            }
        }
        return Ok(false);
    }

    let root = nix::fcntl::open(
        out_dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| PutError::Fatal(format!("cannot open {out_dir:?}: {e}")))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    let root = unsafe { OwnedFd::from_raw_fd(root) };
    let (resolve, _) = probe_fd(root.as_raw_fd())
        .map_err(|e| PutError::Fatal(format!("cannot open {out_dir:?}: {e}")))?;
    let prefix = bulkget_names::fanout_prefix(name);
    let fanout = format!("{}/{name}", String::from_utf8_lossy(&prefix));
    for rel in [name, fanout.as_str()] {
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
        let fd = match open_beneath(resolve, root.as_raw_fd(), rel, flags, 0) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => continue,
            Err(e) => {
                return Err(os_error(
                    e,
                    format_args!("cannot open {}", crate::show(name)),
                ))
            }
        };
        let st = nix::sys::stat::fstat(fd.as_raw_fd())
            .map_err(|e| os_error(e, format_args!("cannot stat {}", crate::show(name))))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        let mut file = std::fs::File::from(fd);
        std::io::copy(&mut file, w).map_err(write_error)?;
        return Ok(true);
    }
    Ok(false)
}

fn write_error(e: std::io::Error) -> PutError {
    PutError::Fatal(format!("cannot copy the file out: {e}"))
}

/// The number of rows in all the shard databases of `out_dir` (0 if there
/// are none). A name in two databases counts twice; see [`ExportSummary`].
pub fn count_rows(out_dir: &Path) -> Result<u64, PutError> {
    let mut total = 0u64;
    for db in shard_databases(out_dir)? {
        let conn = open_read(&db)?;
        let n: i64 = conn
            .query_row("SELECT count(*) FROM files", [], |row| row.get(0))
            .map_err(|e| db_error(Some(&conn), &e, format_args!("cannot count {db:?}")))?;
        total += n as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteSink;
    use std::fs;

    #[test]
    fn shard_databases_are_found_in_shard_order() {
        let tmp = tempfile::tempdir().unwrap();
        for f in [
            "shard-10.sqlite",
            "shard-02.sqlite",
            "shard-02.sqlite-wal",
            "shard-02.sqlite-shm",
            "shard-.sqlite",
            "shard-x1.sqlite",
            "other.sqlite",
            "shard-100.sqlite",
        ] {
            fs::write(tmp.path().join(f), b"").unwrap();
        }
        let found: Vec<String> = shard_databases(tmp.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            found,
            ["shard-02.sqlite", "shard-10.sqlite", "shard-100.sqlite"]
        );
        assert!(shard_databases(&tmp.path().join("missing"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn sqlite_round_trip_through_put_commit_export_and_cat() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let mut expected = Vec::new();
        for shard in 0..3u32 {
            let mut sink = SqliteSink::open(&out, shard).unwrap();
            for i in 0..40 {
                let name = format!("s{shard}/file-{i:03}");
                let body = format!("{name} body").repeat(i % 5);
                sink.put(&name, body.as_bytes()).unwrap();
                if i % 7 == 6 {
                    sink.commit().unwrap();
                }
                expected.push((name, body));
            }
            sink.commit().unwrap();
        }
        assert_eq!(count_rows(&out).unwrap(), 120);

        for layout in [Layout::Flat, Layout::Fanout] {
            let dest = tmp.path().join(format!("dest-{layout:?}"));
            let summary = export(&out, &dest, layout).unwrap();
            assert_eq!(summary.files, 120);
            assert!(summary.refused.is_empty(), "{:?}", summary.refused);
            let bytes: usize = expected.iter().map(|(_, b)| b.len()).sum();
            assert_eq!(summary.bytes, bytes as u64);
            for (name, body) in &expected {
                let path = match layout {
                    Layout::Flat => dest.join(name),
                    Layout::Fanout => {
                        let p = bulkget_names::fanout_prefix(name);
                        dest.join(std::str::from_utf8(&p).unwrap()).join(name)
                    }
                };
                assert_eq!(fs::read_to_string(path).unwrap(), *body);
                // cat finds it both in the databases and in the export.
                let mut a = Vec::new();
                assert!(cat(&out, name, &mut a).unwrap());
                assert_eq!(a, body.as_bytes());
                let mut b = Vec::new();
                assert!(cat(&dest, name, &mut b).unwrap());
                assert_eq!(b, body.as_bytes());
            }
        }
        // Reading left nothing beside the databases.
        let mut left: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["shard-00.sqlite", "shard-01.sqlite", "shard-02.sqlite"]
        );
    }

    #[test]
    fn cat_says_when_a_name_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = Vec::new();
        // An empty dir sink.
        assert!(!cat(tmp.path(), "missing", &mut w).unwrap());
        // A dir sink holding a directory of that name.
        fs::create_dir(tmp.path().join("d")).unwrap();
        assert!(!cat(tmp.path(), "d", &mut w).unwrap());
        assert!(!cat(tmp.path(), "d/e/f", &mut w).unwrap());
        // A sqlite output.
        let mut sink = SqliteSink::open(tmp.path(), 0).unwrap();
        sink.put("present", b"x").unwrap();
        sink.commit().unwrap();
        assert!(!cat(tmp.path(), "missing", &mut w).unwrap());
        assert!(w.is_empty());
        // A name that can never have been stored.
        assert!(matches!(
            cat(tmp.path(), "../x", &mut w),
            Err(PutError::File(_))
        ));
    }

    #[test]
    fn cat_does_not_follow_links_out() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(tmp.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), out.join("link")).unwrap();
        let mut w = Vec::new();
        assert!(cat(&out, "link", &mut w).is_err());
        assert!(w.is_empty());
    }

    #[test]
    fn export_refuses_hostile_rows_and_keeps_going() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        let out = base.join("out");
        let dest = base.join("dest");
        let mut sink = SqliteSink::open(&out, 0).unwrap();
        sink.put("good-0", b"zero").unwrap();
        sink.commit().unwrap();
        drop(sink);

        // Rows the sink would never write, inserted behind its back.
        let conn = Connection::open(out.join("shard-00.sqlite")).unwrap();
        conn.execute_batch(
            "INSERT INTO files VALUES ('../escape', 4, 0, x'65766976');
             INSERT INTO files VALUES ('/tmp/abs', 4, 0, x'65766976');
             INSERT INTO files VALUES ('a//b', 4, 0, x'65766976');
             INSERT INTO files VALUES ('.bulkget/lock', 4, 0, x'65766976');
             INSERT INTO files VALUES (CAST(x'ff2f78' AS TEXT), 4, 0, x'65766976');
             INSERT INTO files VALUES ('wrong-size', 99, 0, x'65766976');
             INSERT INTO files VALUES ('good-1', 3, 0, x'6f6e65');",
        )
        .unwrap();
        drop(conn);

        // A second database with no constraints at all.
        let conn = Connection::open(out.join("shard-01.sqlite")).unwrap();
        conn.execute_batch(
            "CREATE TABLE files(name, size, fetched_at, data);
             INSERT INTO files VALUES (x'2e2e2f78', 1, 0, x'00');
             INSERT INTO files VALUES (42, 1, 0, x'00');
             INSERT INTO files VALUES ('null-data', 0, 0, NULL);
             INSERT INTO files VALUES ('good-2', 3, 0, 'two');",
        )
        .unwrap();
        drop(conn);

        let before: Vec<_> = fs::read_dir(base)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let summary = export(&out, &dest, Layout::Flat).unwrap();
        assert_eq!(summary.files, 3, "{summary:?}");
        assert_eq!(summary.refused.len(), 9, "{:#?}", summary.refused);
        let refused: Vec<&str> = summary.refused.iter().map(|(n, _)| n.as_str()).collect();
        for name in [
            "../escape",
            "/tmp/abs",
            "a//b",
            ".bulkget/lock",
            "wrong-size",
            "null-data",
            "42",
        ] {
            assert!(refused.contains(&name), "{name} not in {refused:?}");
        }
        assert_eq!(fs::read(dest.join("good-0")).unwrap(), b"zero");
        assert_eq!(fs::read(dest.join("good-1")).unwrap(), b"one");
        assert_eq!(fs::read(dest.join("good-2")).unwrap(), b"two");
        // Nothing appeared next to dest, and dest holds only the good files.
        let mut after: Vec<_> = fs::read_dir(base)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        after.retain(|n| n != "dest");
        assert_eq!(after.len(), before.len());
        let mut in_dest: Vec<_> = fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        in_dest.sort();
        assert_eq!(in_dest, ["good-0", "good-1", "good-2"]);
    }

    #[test]
    fn export_will_not_write_over_its_own_databases() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = SqliteSink::open(tmp.path(), 0).unwrap();
        sink.put("shard-00.sqlite", b"clobber").unwrap();
        sink.commit().unwrap();
        drop(sink);
        assert!(matches!(
            export(tmp.path(), tmp.path(), Layout::Flat),
            Err(PutError::Fatal(_))
        ));
        assert_eq!(count_rows(tmp.path()).unwrap(), 1);
    }

    #[test]
    fn export_of_nothing_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(export(tmp.path(), &tmp.path().join("d"), Layout::Flat).is_err());
        assert_eq!(count_rows(tmp.path()).unwrap(), 0);
    }
}
