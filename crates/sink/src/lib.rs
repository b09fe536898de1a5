//! Where a worker puts the files it fetches.
//!
//! A *sink* stores whole files by name. There are three kinds, chosen with
//! `--sink` and opened with [`open`]:
//!
//! - **dir** ([`DirSink`]): one ordinary file per name. With
//!   [`Layout::Flat`] the name `a/b` lands at `OUT/a/b`; with
//!   [`Layout::Fanout`] it lands at `OUT/xx/yy/a/b`, where `xx/yy` comes from
//!   [`bulkget_names::fanout_prefix`], a stable hash of the name. Fan-out
//!   spreads 10^9 files over 65,536 leaf directories (about 15,000 entries
//!   each), so no single directory lock or directory index becomes the
//!   bottleneck.
//! - **sqlite** ([`SqliteSink`]): one database per shard,
//!   `OUT/shard-KK.sqlite` (two digits, more when the shard number needs
//!   them), in WAL mode with a single table
//!   `files(name TEXT PRIMARY KEY, size, fetched_at, data BLOB) WITHOUT ROWID`.
//!   This is the packed sink for the billion-file case, where the file system
//!   would run out of inodes or spend most of its time creating them.
//!   `bulkget export` ([`export`]) unpacks it into a directory and
//!   `bulkget cat` ([`cat`]) prints one file.
//! - **null** ([`NullSink`]): keeps nothing and counts, to benchmark the
//!   engine alone.
//!
//! # Durability contract
//!
//! A worker acknowledges a batch only after every name in it was `put` (or
//! failed) and `commit` returned. What the two calls promise:
//!
//! - [`Sink::put`] returning `Ok` means the bytes were handed to the kernel
//!   (dir) or to the open SQLite transaction (sqlite). Nothing is fsynced:
//!   `put` runs on a single-threaded event loop once per file, and one fsync
//!   per 100-byte file would cost more than everything else together.
//! - [`Sink::commit`] returning `Ok` means every earlier `put` survives the
//!   *process* crashing. For the dir sink this is already true after `put`
//!   (the data is in the page cache), so `commit` does nothing. For the
//!   SQLite sink it commits the open transaction; until then a crash loses the
//!   whole transaction and never leaves half of one.
//! - Surviving a *machine* crash is the coordinator's job: it calls
//!   `syncfs(2)` on the output file system before it writes each checkpoint.
//!   That flushes the dir sink's files and the SQLite write-ahead logs alike
//!   (the databases run with `synchronous=NORMAL`, which does not sync the
//!   WAL at commit). Every batch after the last checkpoint is fetched again
//!   on resume, and every write is idempotent (`O_TRUNC`, `INSERT OR
//!   REPLACE`), so a torn or lost write after a power cut is repaired, not
//!   counted.
//!
//! # Safety rules
//!
//! Names come from the server and are untrusted. Every sink except null
//! refuses a name that [`bulkget_names::check`] refuses (an empty component,
//! `.` or `..`, a NUL byte, a component over 255 bytes, an absolute path) and
//! a name that would land in the state directory ([`Reserved`]: the run's
//! real state directory wherever it is inside `OUT`, and always
//! [`STATE_DIR_NAME`], compared without regard to case): a hostile name
//! must not overwrite the checkpoint or the lock. The refusal is a
//! [`PutError::File`], which the worker records in `failed.jsonl`; the
//! sqlite sink refuses exactly the same names so both sinks report the same
//! failures and every database can be exported.
//!
//! The check is not the only line of defence: the dir sink opens every path
//! with `openat2(2)` and `RESOLVE_BENEATH` relative to a descriptor of `OUT`,
//! and creates missing parent directories one component at a time beneath
//! it, so neither `..`, an absolute path, nor a symbolic link already inside
//! `OUT` (say `OUT/evil -> /etc`) can make it write anywhere outside `OUT`.
//! [`export`] writes through the same dir sink, so a hostile database cannot
//! escape the destination either.

use std::fmt;
use std::path::Path;

pub use bulkget_protocol::{Layout, Resolve, SinkKind};

mod dir;
mod export;
mod null;
mod space;
mod sqlite;

pub use dir::{probe_resolve, DirSink};
pub use export::{cat, count_rows, export, shard_databases, ExportSummary};
pub use null::NullSink;
pub use space::{free_space, Space};
pub use sqlite::{shard_db_path, SqliteSink, SCHEMA_VERSION};

/// The name of the default state directory inside the output directory. No
/// sink writes a name whose first component is this (see [`Reserved`]).
pub use bulkget_protocol::STATE_DIR_NAME;

/// The paths inside the output directory that no sink writes under: the
/// state directory's. The one place that decides whether a name would land
/// in the state directory.
///
/// Two paths are reserved: the run's real state directory, relative to
/// `OUT`, when it is inside `OUT` (`--state-dir OUT/st` reserves `st`), and
/// always [`STATE_DIR_NAME`], the default one, so that a later run without
/// `--state-dir` does not find server files where its lock and checkpoint
/// go. Components are compared without regard to case (Unicode lowercase),
/// so `.BULKGET/lock` is refused as well: on a case-folding file system it
/// is the same file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// Each reserved path as its components, lowercased.
    paths: Vec<Vec<String>>,
}

impl Default for Reserved {
    /// Only the default state directory, [`STATE_DIR_NAME`].
    fn default() -> Reserved {
        Reserved::new(None)
    }
}

impl Reserved {
    /// [`STATE_DIR_NAME`], and `state_dir`: the state directory's path
    /// relative to the output directory (`"st"`, `"a/b"`), as
    /// [`state_dir_within`] gives it, when it is inside.
    pub fn new(state_dir: Option<&str>) -> Reserved {
        let lower = |path: &str| -> Vec<String> {
            path.split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(|c| c.chars().flat_map(char::to_lowercase).collect())
                .collect()
        };
        let mut paths = vec![lower(STATE_DIR_NAME)];
        if let Some(extra) = state_dir.map(lower) {
            if !extra.is_empty() && !paths.contains(&extra) {
                paths.push(extra);
            }
        }
        Reserved { paths }
    }

    /// Refuses `name` if the path it is stored at, `prefix/name` (the
    /// fan-out directories, if any, then the name), is a reserved path or
    /// lies under one.
    pub(crate) fn check(&self, prefix: Option<&str>, name: &str) -> Result<(), PutError> {
        for reserved in &self.paths {
            let mut components = prefix
                .into_iter()
                .flat_map(|p| p.split('/'))
                .chain(name.split('/'));
            let under = reserved
                .iter()
                .all(|r| components.next().is_some_and(|c| same_component(c, r)));
            if under {
                return Err(PutError::File(format!(
                    "unsafe name: {:?} is reserved for the state directory: {}",
                    reserved.join("/"),
                    show(name)
                )));
            }
        }
        Ok(())
    }
}

/// Whether component `got` is `lower` (already lowercased) regardless of
/// case. ASCII, the usual case, is compared without converting anything.
fn same_component(got: &str, lower: &str) -> bool {
    if got.is_ascii() && lower.is_ascii() {
        return got.eq_ignore_ascii_case(lower);
    }
    got.chars().flat_map(char::to_lowercase).eq(lower.chars())
}

/// The state directory's path relative to the output directory, when it is
/// inside it, for [`Reserved::new`]; `None` when it is elsewhere. Both
/// directories must exist: they are compared as the kernel resolves them,
/// symbolic links and `..` included. A state directory that *is* the output
/// directory is refused, since no name could be kept out of it.
pub fn state_dir_within(out_dir: &Path, state_dir: &Path) -> Result<Option<String>, String> {
    let resolve = |p: &Path| {
        p.canonicalize()
            .map_err(|e| format!("cannot resolve {}: {e}", p.display()))
    };
    let (out, state) = (resolve(out_dir)?, resolve(state_dir)?);
    if out == state {
        return Err(format!(
            "the state directory {} is the output directory itself; \
             give --state-dir a directory of its own (inside OUT or elsewhere)",
            state_dir.display()
        ));
    }
    Ok(state
        .strip_prefix(&out)
        .ok()
        // A name is UTF-8, so no name can reach a path that is not.
        .and_then(|rel| rel.to_str())
        .map(str::to_string))
}

/// Stores whole files by name. See the crate documentation for what `put`
/// and `commit` promise.
///
/// Every sink is `Send`, so a worker may move its sink to another thread
/// (say, into `spawn_blocking`); none is `Sync`, and none needs to be.
pub trait Sink: Send {
    /// Stores one whole file, replacing any earlier file of that name.
    ///
    /// Called on a single-threaded event loop for every file, so it is cheap:
    /// no per-call allocation beyond what the OS needs, and no fsync.
    fn put(&mut self, name: &str, body: &[u8]) -> Result<(), PutError>;

    /// Makes every `put` so far as durable as an acknowledgement needs.
    ///
    /// Dir and null: nothing (the coordinator calls `syncfs` before each
    /// checkpoint). SQLite: commits the open transaction; the next `put`
    /// opens a new one.
    fn commit(&mut self) -> Result<(), PutError>;

    /// Whether a file of this name is already stored, whole: what a
    /// refresh (`bulkget fetch --refresh`) asks before it fetches a name.
    /// Called once per listed name on the worker's event loop, so it is one
    /// lookup: no listing of the sink, and nothing kept in memory.
    ///
    /// A name the sink would refuse is not stored (`false`); fetching it
    /// then fails as it always does. The default, for sinks that keep
    /// nothing, is `false`.
    fn contains(&mut self, name: &str) -> Result<bool, PutError> {
        let _ = name;
        Ok(false)
    }
}

/// Why a `put` (or opening, committing, exporting) failed. The three kinds
/// tell the worker what to do next; the text names the file and the OS or
/// SQLite error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutError {
    /// This one file cannot be stored (an unsafe name, a name that conflicts
    /// with an existing directory or file such as `a` vs `a/b`,
    /// `ENAMETOOLONG`...). The run goes on; the name is reported failed with
    /// this reason.
    File(String),
    /// The output file system is full (`ENOSPC`, `EDQUOT`, `SQLITE_FULL`).
    /// The run must stop cleanly.
    NoSpace(String),
    /// Anything else that makes this sink unusable (`EIO`, `EROFS`, a
    /// corrupt database...).
    Fatal(String),
}

impl PutError {
    /// The message without the kind.
    pub fn message(&self) -> &str {
        match self {
            PutError::File(m) | PutError::NoSpace(m) | PutError::Fatal(m) => m,
        }
    }
}

impl fmt::Display for PutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for PutError {}

/// Opens the sink a worker of shard `shard` writes into.
///
/// `layout` and `resolve` matter only to the dir sink; `shard` only to the
/// sqlite sink; `reserved` to both. With `whole_only` (a refresh) the dir
/// sink writes each file to a temporary name and renames it into place, so
/// that a file exists under its name only whole: a refresh skips every
/// name it finds ([`Sink::contains`]), and a worker killed halfway through
/// a write must not leave a short file that looks fetched. SQLite rows are
/// whole anyway (transactions).
/// The output directory is created if it does not exist.
pub fn open(
    kind: SinkKind,
    layout: Layout,
    out_dir: &Path,
    shard: u32,
    reserved: &Reserved,
    resolve: Resolve,
    whole_only: bool,
) -> Result<Box<dyn Sink>, PutError> {
    Ok(match kind {
        SinkKind::Dir => Box::new(
            DirSink::open_with(out_dir, layout, resolve)?
                .with_reserved(reserved.clone())
                .with_atomic_rename(whole_only),
        ),
        SinkKind::Sqlite => {
            Box::new(SqliteSink::open(out_dir, shard)?.with_reserved(reserved.clone()))
        }
        SinkKind::Null => Box::new(NullSink::new()),
    })
}

/// The rule for the name itself that every storing sink applies:
/// [`bulkget_names::check`]. Where the name lands is checked too, against
/// [`Reserved`].
pub(crate) fn check_name(name: &str) -> Result<(), PutError> {
    if let Err(why) = bulkget_names::check(name) {
        return Err(PutError::File(format!("{why}: {}", show(name))));
    }
    Ok(())
}

/// A name as it appears in a message: quoted and escaped (it may hold control
/// characters) and cut short (it may be kilobytes long).
pub(crate) fn show(name: &str) -> String {
    const MAX: usize = 120;
    if name.len() <= MAX {
        format!("{name:?}")
    } else {
        let mut end = MAX;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}... ({} bytes)", &name[..end], name.len())
    }
}

/// Sorts an OS error into the three kinds. `what` says what was being done
/// and to which file, e.g. `cannot create "a/b"`.
pub(crate) fn os_error(errno: nix::errno::Errno, what: fmt::Arguments<'_>) -> PutError {
    use nix::errno::Errno;
    match errno {
        Errno::ENOSPC | Errno::EDQUOT => PutError::NoSpace(format!("{what}: {errno}")),
        // The file system is unusable, or this process is: these say nothing
        // about the one file, and every later put would fail the same way,
        // so going on would only fill failed.jsonl with the same reason.
        Errno::EROFS
        | Errno::EIO
        | Errno::EMFILE
        | Errno::ENFILE
        | Errno::ENOMEM
        | Errno::EBADF
        | Errno::ESTALE
        | Errno::ENOSYS => PutError::Fatal(format!("{what}: {errno}")),
        // RESOLVE_BENEATH refused to leave the output directory: a symbolic
        // link (or, were the name check ever wrong, `..`) points outside.
        Errno::EXDEV => PutError::File(format!(
            "{what}: the path leads outside the output directory ({errno})"
        )),
        _ => PutError::File(format!("{what}: {errno}")),
    }
}

/// [`os_error`] for a `std::io::Error`.
pub(crate) fn io_error(err: &std::io::Error, what: fmt::Arguments<'_>) -> PutError {
    match err.raw_os_error() {
        Some(code) => os_error(nix::errno::Errno::from_raw(code), what),
        None => PutError::File(format!("{what}: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_sorted_into_kinds() {
        use nix::errno::Errno;
        let k = |e| os_error(e, format_args!("cannot create \"x\""));
        assert!(matches!(k(Errno::ENOSPC), PutError::NoSpace(_)));
        assert!(matches!(k(Errno::EDQUOT), PutError::NoSpace(_)));
        assert!(matches!(k(Errno::EROFS), PutError::Fatal(_)));
        assert!(matches!(k(Errno::EIO), PutError::Fatal(_)));
        assert!(matches!(k(Errno::ENAMETOOLONG), PutError::File(_)));
        assert!(matches!(k(Errno::ENOTDIR), PutError::File(_)));
        let msg = k(Errno::ENOSPC).to_string();
        assert!(msg.contains("\"x\"") && msg.contains("ENOSPC"), "{msg}");
    }

    #[test]
    fn the_state_directory_is_reserved() {
        let r = Reserved::default();
        let refused = |r: &Reserved, prefix, name| matches!(r.check(prefix, name), Err(PutError::File(m)) if m.contains("reserved for the state directory"));
        assert!(refused(&r, None, ".bulkget/checkpoint.json"));
        assert!(refused(&r, None, ".bulkget"));
        assert!(refused(&r, None, ".BULKGET/x"));
        assert!(refused(&r, None, ".BulkGet/lock"));
        assert_eq!(r.check(None, "x/.bulkget"), Ok(()));
        assert_eq!(r.check(None, ".bulkgetx"), Ok(()));
        assert_eq!(r.check(None, "st/run.json"), Ok(()));

        // The real state directory, wherever it is inside OUT, and still
        // the default one.
        let r = Reserved::new(Some("a/St"));
        for name in [
            "a/st",
            "a/st/run.json",
            "A/ST/lock",
            "a/sT/shards/shard-00.json",
        ] {
            assert!(refused(&r, None, name), "{name}");
        }
        assert!(refused(&r, None, ".bulkget/lock"));
        for name in ["a", "a/stx", "st/run.json", "b/a/st/x", "a/s/t"] {
            assert_eq!(r.check(None, name), Ok(()), "{name}");
        }
        // Where the fan-out layout puts a name is what counts.
        let r = Reserved::new(Some("ab/cd/st"));
        assert!(refused(&r, Some("ab/cd"), "st/lock"));
        assert!(refused(&r, Some("AB/CD"), "ST"));
        assert_eq!(r.check(Some("ab/ce"), "st/lock"), Ok(()));
        assert_eq!(r.check(None, "st/lock"), Ok(()));
        // Beyond ASCII: Unicode lowercase on both sides.
        let r = Reserved::new(Some("ÉTAT"));
        assert!(refused(&r, None, "état/lock"));
        assert!(refused(&r, None, "ÉtAt/lock"));
        assert_eq!(r.check(None, "etat/lock"), Ok(()));
    }

    #[test]
    fn the_state_directory_is_found_relative_to_out_or_refused_as_out() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir_all(out.join("a/st")).unwrap();
        std::fs::create_dir_all(tmp.path().join("elsewhere")).unwrap();
        let within = |state: &Path| state_dir_within(&out, state);
        assert_eq!(within(&out.join("a/st")), Ok(Some("a/st".into())));
        // The kernel's resolution counts, not the spelling.
        assert_eq!(within(&out.join("a/../a/st")), Ok(Some("a/st".into())));
        std::os::unix::fs::symlink(out.join("a"), tmp.path().join("link")).unwrap();
        assert_eq!(within(&tmp.path().join("link/st")), Ok(Some("a/st".into())));
        assert_eq!(within(&tmp.path().join("elsewhere")), Ok(None));
        let e = within(&out.join("a/..")).unwrap_err();
        assert!(e.contains("is the output directory itself"), "{e}");
    }

    #[test]
    fn long_names_are_cut_short_in_messages() {
        let long = "é".repeat(200);
        let shown = show(&long);
        assert!(shown.len() < 200 && shown.contains("400 bytes"), "{shown}");
    }

    #[test]
    fn open_gives_each_kind() {
        let tmp = tempfile::tempdir().unwrap();
        for kind in [SinkKind::Dir, SinkKind::Sqlite, SinkKind::Null] {
            let out = tmp.path().join(format!("{kind:?}"));
            let mut sink = open(
                kind,
                Layout::Flat,
                &out,
                3,
                &Reserved::default(),
                Resolve::Openat2,
                false,
            )
            .unwrap();
            sink.put("f", b"body").unwrap();
            sink.commit().unwrap();
        }
        assert_eq!(std::fs::read(tmp.path().join("Dir/f")).unwrap(), b"body");
        assert!(tmp.path().join("Sqlite/shard-03.sqlite").exists());
        assert_eq!(count_rows(&tmp.path().join("Sqlite")).unwrap(), 1);
        assert!(!tmp.path().join("Null").exists());
    }
}

/// `Sink::contains`, which a refresh asks of every listed name.
#[cfg(test)]
mod contains_tests {
    use super::*;

    /// Each storing sink finds exactly the names it stored, in either
    /// layout and either way of resolving paths; names it would refuse,
    /// directories, symbolic links and missing parents are not stored
    /// files; the null sink stores nothing.
    #[test]
    fn each_sink_finds_what_it_stored() {
        let tmp = tempfile::tempdir().unwrap();
        let cases = [
            (SinkKind::Dir, Layout::Flat, Resolve::Openat2),
            (SinkKind::Dir, Layout::Fanout, Resolve::Openat2),
            (SinkKind::Dir, Layout::Flat, Resolve::Walk),
            (SinkKind::Dir, Layout::Fanout, Resolve::Walk),
            (SinkKind::Sqlite, Layout::Flat, Resolve::Openat2),
        ];
        for (i, (kind, layout, resolve)) in cases.into_iter().enumerate() {
            let out = tmp.path().join(format!("{i}"));
            let mut sink = open(kind, layout, &out, 0, &Reserved::default(), resolve, true)
                .unwrap_or_else(|e| panic!("{kind:?} {layout:?} {resolve:?}: {e}"));
            let what = format!("{kind:?} {layout:?} {resolve:?}");
            for name in ["a", "d/b", "d/e/c"] {
                assert!(!sink.contains(name).unwrap(), "{what}: {name}");
                sink.put(name, b"body").unwrap();
            }
            sink.commit().unwrap();
            for name in ["a", "d/b", "d/e/c"] {
                assert!(sink.contains(name).unwrap(), "{what}: {name}");
            }
            for name in [
                "d",
                "d/e",
                "a/x",
                "x/y",
                "../a",
                "",
                ".bulkget/lock",
                "nope",
            ] {
                assert!(!sink.contains(name).unwrap(), "{what}: {name:?}");
            }
            if kind == SinkKind::Dir && layout == Layout::Flat {
                std::os::unix::fs::symlink(out.join("a"), out.join("link")).unwrap();
                assert!(
                    !sink.contains("link").unwrap(),
                    "{what}: a link is not a file"
                );
                // The temporary files of the rename are gone.
                assert!(!std::fs::read_dir(&out).unwrap().any(|e| e
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("tmp")));
            }
        }
        let mut null = NullSink::new();
        null.put("a", b"x").unwrap();
        assert!(!null.contains("a").unwrap());
    }
}

/// A full disk, for real: a tiny tmpfs mounted for the test. Mounting needs
/// privileges; without them the tests say so and pass.
#[cfg(test)]
mod no_space_tests {
    use super::*;
    use nix::mount::{mount, umount2, MntFlags, MsFlags};

    struct Tmpfs {
        dir: tempfile::TempDir,
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            // Unmount before TempDir removes the (then empty) mount point.
            let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
        }
    }

    fn tmpfs(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let options = format!("size={size},mode=0755");
        match mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        ) {
            Ok(()) => Some(Tmpfs { dir }),
            Err(e) => {
                eprintln!("note: skipping the full-disk test: cannot mount a tmpfs: {e}");
                None
            }
        }
    }

    #[test]
    fn a_full_disk_stops_the_dir_sink() {
        for (layout, atomic) in [
            (Layout::Flat, false),
            (Layout::Flat, true),
            (Layout::Fanout, false),
        ] {
            let Some(fs) = tmpfs("64k") else { return };
            let mut sink = DirSink::open(fs.dir.path(), layout)
                .unwrap()
                .with_atomic_rename(atomic);
            let body = [b'x'; 100];
            let mut stored = 0;
            let err = loop {
                match sink.put(&format!("f{stored}"), &body) {
                    Ok(()) => stored += 1,
                    Err(e) => break e,
                }
                assert!(stored < 100_000, "a 64 KiB file system never filled up");
            };
            eprintln!(
                "dir sink {layout:?} atomic={atomic} on a full tmpfs after {stored} files: {err}"
            );
            match err {
                PutError::NoSpace(msg) => assert!(msg.contains("ENOSPC"), "{msg}"),
                other => panic!("{layout:?} atomic={atomic}: {other:?}"),
            }
            assert!(stored > 0);
            // The failed put left no empty or partial file behind.
            if layout == Layout::Flat {
                let files = std::fs::read_dir(fs.dir.path()).unwrap().count();
                assert_eq!(files, stored, "{layout:?} atomic={atomic}");
            }
        }
    }

    #[test]
    fn a_full_disk_stops_the_sqlite_sink() {
        let Some(fs) = tmpfs("256k") else { return };
        let mut sink = SqliteSink::open(fs.dir.path(), 0).unwrap();
        let body = [b'y'; 1000];
        let mut committed = 0u64;
        let mut i = 0u64;
        let err = 'fill: loop {
            for _ in 0..10 {
                if let Err(e) = sink.put(&format!("f{i}"), &body) {
                    break 'fill e;
                }
                i += 1;
            }
            match sink.commit() {
                Ok(()) => committed = i,
                Err(e) => break e,
            }
            assert!(i < 100_000, "a 256 KiB file system never filled up");
        };
        eprintln!("sqlite sink on a full tmpfs after {committed} committed rows: {err}");
        assert!(matches!(err, PutError::NoSpace(_)), "{err:?}");
        assert!(committed > 0);
        drop(sink);
        // Everything committed before the disk filled up is still there,
        // and nothing of the failed transaction.
        assert_eq!(count_rows(fs.dir.path()).unwrap(), committed);
    }
}
