//! Writing a JSON file so that a reader never sees half of it.
//!
//! The writer serialises into memory, writes a temporary file in the same
//! directory (`NAME.tmp.PID`) and renames it over the target. `rename(2)`
//! within one file system replaces the directory entry atomically, so a
//! reader that opens the path gets either the old file or the new one, whole.
//! The temporary name carries the pid so that two processes writing the same
//! path (an old worker still exiting while its replacement starts) never write
//! into the same temporary file; within one process, one writer per path is
//! assumed.
//!
//! [`write_json_atomic`] does not fsync: stats are advisory and rewritten
//! every second, and an fsync per second per shard would cost the disk more
//! than the stats are worth. After a power cut the file may be empty or old;
//! it is never torn. [`write_json_durable`] also syncs the file before the
//! rename and the directory after it, so that once it returns the new content
//! survives a crash; the checkpoint needs that.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The temporary file a write of `path` goes through: `path.tmp.<pid>`.
pub fn tmp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let mut tmp = name.to_os_string();
    tmp.push(format!(".tmp.{}", std::process::id()));
    Ok(path.with_file_name(tmp))
}

/// Writes `value` as pretty JSON to `path` by temporary file and rename, with
/// no fsync. Readers see the old file or the new one, never a mix.
pub fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> io::Result<()> {
    write_replacing(path, &to_json_bytes(value)?, false)
}

/// Like [`write_json_atomic`], and also fsyncs the file before the rename and
/// its directory after, so the new content is on disk when this returns.
pub fn write_json_durable<T: Serialize + ?Sized>(path: &Path, value: &T) -> io::Result<()> {
    write_replacing(path, &to_json_bytes(value)?, true)
}

/// Reads and parses a JSON file. `Ok(None)` if it does not exist (it may have
/// been removed between a directory listing and the open); a parse failure is
/// an `InvalidData` error naming the file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

fn to_json_bytes<T: Serialize + ?Sized>(value: &T) -> io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    // A final newline, so `cat` leaves the prompt on a line of its own.
    bytes.push(b'\n');
    Ok(bytes)
}

fn write_replacing(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let tmp = tmp_path(path)?;
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // Leave no temporary file behind; the error that matters is the
        // write's, not a failure to clean up after it.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        // The rename is only durable once the directory entry is.
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Payload {
        round: u64,
        // Lengths vary from round to round, so a reader that caught a file
        // half-rewritten would see JSON cut short or with a stale tail.
        filler: String,
    }

    #[test]
    fn a_concurrent_reader_never_sees_a_torn_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard-00.json");
        write_json_atomic(
            &path,
            &Payload {
                round: 0,
                filler: String::new(),
            },
        )
        .unwrap();

        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (path, done) = (path.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                let mut last_round = 0;
                // Read until the writer has finished, then once more.
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let bytes = fs::read(&path).expect("the path always exists");
                    let p: Payload = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                        panic!("torn read after {reads} reads: {e}: {:?}", bytes.len())
                    });
                    assert!(p.round >= last_round, "went back in time");
                    assert_eq!(p.filler.len() as u64, p.round * 7 % 4096);
                    last_round = p.round;
                    reads += 1;
                    if finished {
                        return (reads, last_round);
                    }
                }
            })
        };

        for round in 1..=2000u64 {
            let filler = "x".repeat((round * 7 % 4096) as usize);
            write_json_atomic(&path, &Payload { round, filler }).unwrap();
        }
        done.store(true, Ordering::Release);
        let (reads, last) = reader.join().unwrap();
        assert!(reads >= 1);
        assert_eq!(last, 2000);
        // Nothing but the file itself is left in the directory.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["shard-00.json"]);
    }

    #[test]
    fn durable_write_reads_back_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        write_json_durable(&path, &serde_json::json!({"marker": "a"})).unwrap();
        write_json_durable(&path, &serde_json::json!({"marker": "b"})).unwrap();
        let v: serde_json::Value = read_json(&path).unwrap().unwrap();
        assert_eq!(v["marker"], "b");
        assert!(fs::read_to_string(&path).unwrap().ends_with("}\n"));
        assert!(!tmp_path(&path).unwrap().exists());
    }

    #[test]
    fn failures_are_reported_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // The parent directory does not exist.
        let path = dir.path().join("missing").join("x.json");
        let e = write_json_atomic(&path, &1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        // The target is a directory: the rename fails, the temp file goes.
        let target = dir.path().join("d");
        fs::create_dir(target.join("").as_path()).unwrap();
        fs::write(target.join("inside"), b"x").unwrap();
        assert!(write_json_atomic(&target, &1).is_err());
        assert!(!tmp_path(&target).unwrap().exists());
        // Reading: absent is None, garbage is InvalidData naming the file.
        assert!(read_json::<u32>(&dir.path().join("nope.json"))
            .unwrap()
            .is_none());
        let bad = dir.path().join("bad.json");
        fs::write(&bad, b"{\"half\": ").unwrap();
        let e = read_json::<serde_json::Value>(&bad).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("bad.json"));
        assert!(tmp_path(Path::new("/")).is_err());
    }

    #[test]
    fn tmp_name() {
        let t = tmp_path(Path::new("/s/shards/shard-03.json")).unwrap();
        assert_eq!(
            t,
            Path::new(&format!(
                "/s/shards/shard-03.json.tmp.{}",
                std::process::id()
            ))
        );
    }
}
