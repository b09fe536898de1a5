//! A micro-benchmark of put rates, for docs/BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p bulkget-sink --example sink_bench -- [FILES] [BASE_DIR] [REPEATS] [ONLY]
//! ```
//!
//! Each case writes FILES (default 100,000) files of 100 bytes into a fresh
//! temporary directory under BASE_DIR (default the system temporary
//! directory), REPEATS times (default 3), and prints every rate and the
//! median wall-clock rate, with the median CPU time (user + system) per
//! file. Only the puts and commits are timed: not making the names, not
//! removing the files afterwards, and no syncfs (the coordinator's syncfs
//! before a checkpoint is a separate cost). ONLY, if given, runs only the
//! cases whose label contains it (e.g. `flat`, `sqlite`).
//!
//! The last two cases compare the SQLite table shapes (`WITHOUT ROWID`
//! against a rowid table with its primary-key index) on 200,000 inserts,
//! in ascending name order (as a listing delivers them) and in hashed order.

use std::path::Path;
use std::time::Instant;

use bulkget_sink::{DirSink, Layout, NullSink, Sink, SqliteSink};

const BATCH: usize = 256;

fn main() {
    let mut args = std::env::args().skip(1);
    let files: usize = args.next().map_or(100_000, |a| a.parse().expect("FILES"));
    let base = args.next().map_or_else(std::env::temp_dir, Into::into);
    let repeats: usize = args.next().map_or(3, |a| a.parse().expect("REPEATS"));
    // Only the cases whose label contains this text.
    let only = args.next().unwrap_or_default();
    let body = [b'x'; 100];
    let names: Vec<String> = (0..files).map(|i| format!("file-{i:09}")).collect();

    println!(
        "{files} files of {} bytes into {} ({}), {repeats} runs each",
        body.len(),
        base.display(),
        fs_type(&base)
    );
    println!(
        "{:<36} {:>12} {:>10} {:>10}   runs (files/s)",
        "case", "files/s", "µs/file", "CPU µs"
    );

    type Make = Box<dyn Fn(&Path) -> Box<dyn Sink>>;
    let cases: Vec<(&str, Make)> = vec![
        ("null", Box::new(|_| Box::new(NullSink::new()))),
        (
            "dir flat, direct",
            Box::new(|d| Box::new(DirSink::open(d, Layout::Flat).unwrap())),
        ),
        (
            "dir flat, temp+rename",
            Box::new(|d| {
                Box::new(
                    DirSink::open(d, Layout::Flat)
                        .unwrap()
                        .with_atomic_rename(true),
                )
            }),
        ),
        (
            "dir fanout, direct",
            Box::new(|d| Box::new(DirSink::open(d, Layout::Fanout).unwrap())),
        ),
        (
            "dir fanout, temp+rename",
            Box::new(|d| {
                Box::new(
                    DirSink::open(d, Layout::Fanout)
                        .unwrap()
                        .with_atomic_rename(true),
                )
            }),
        ),
        (
            "dir fanout, direct, dirs exist",
            Box::new(|d| {
                make_prefix_dirs(d);
                Box::new(DirSink::open(d, Layout::Fanout).unwrap())
            }),
        ),
        (
            "dir fanout, temp+rename, dirs exist",
            Box::new(|d| {
                make_prefix_dirs(d);
                Box::new(
                    DirSink::open(d, Layout::Fanout)
                        .unwrap()
                        .with_atomic_rename(true),
                )
            }),
        ),
        (
            "sqlite WITHOUT ROWID, 256/commit",
            Box::new(|d| Box::new(SqliteSink::open(d, 0).unwrap())),
        ),
        (
            "sqlite rowid table, 256/commit",
            Box::new(|d| {
                Box::new(SqliteSink::open_with_schema(&d.join("shard-00.sqlite"), false).unwrap())
            }),
        ),
    ];
    for (label, make) in &cases {
        if label.contains(only.as_str()) {
            run(label, repeats, &base, &names, &body, make);
        }
    }

    // The table-shape comparison on 200,000 rows.
    let n = 200_000;
    let ascending: Vec<String> = (0..n).map(|i| format!("file-{i:09}")).collect();
    let mut hashed = ascending.clone();
    hashed.sort_by_key(|name| bulkget_names::stable_hash(name));
    for (order, names) in [("ascending", &ascending), ("hashed order", &hashed)] {
        for without_rowid in [true, false] {
            let label = format!(
                "sqlite {} 200k {order}",
                if without_rowid {
                    "WITHOUT ROWID"
                } else {
                    "rowid"
                }
            );
            let make = move |d: &Path| -> Box<dyn Sink> {
                Box::new(
                    SqliteSink::open_with_schema(&d.join("shard-00.sqlite"), without_rowid)
                        .unwrap(),
                )
            };
            if label.contains(only.as_str()) {
                run(&label, repeats, &base, names, &body, &make);
            }
        }
    }
}

/// User plus system CPU time of this process so far. The CPU time per file
/// is steadier than the wall-clock rate when other work shares the machine.
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    tv(usage.user_time()) + tv(usage.system_time())
}

/// Creates all 65,536 fan-out leaf directories, as a long run has after
/// its first few million files.
fn make_prefix_dirs(dir: &Path) {
    for i in 0..65_536u32 {
        let leaf = format!("{:02x}/{:02x}", i >> 8, i & 0xff);
        std::fs::create_dir_all(dir.join(leaf)).unwrap();
    }
}

/// The bytes of the SQLite files in `dir` (database, WAL, shared memory).
fn sqlite_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".sqlite"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

fn run(
    label: &str,
    repeats: usize,
    base: &Path,
    names: &[String],
    body: &[u8],
    make: &dyn Fn(&Path) -> Box<dyn Sink>,
) {
    let mut rates = Vec::new();
    let mut db_bytes = 0;
    let mut cpu = Vec::new();
    for _ in 0..repeats {
        let dir = tempfile::tempdir_in(base).unwrap();
        let mut sink = make(dir.path());
        let cpu_start = cpu_seconds();
        let start = Instant::now();
        for chunk in names.chunks(BATCH) {
            for name in chunk {
                sink.put(name, body).unwrap();
            }
            sink.commit().unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        cpu.push((cpu_seconds() - cpu_start) / names.len() as f64 * 1e6);
        drop(sink);
        rates.push(names.len() as f64 / secs);
        db_bytes = sqlite_bytes(dir.path());
    }
    let mut sorted = rates.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = sorted[sorted.len() / 2];
    let runs: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    let size = if db_bytes > 0 {
        format!(
            "   ({:.1} MB of SQLite files after close)",
            db_bytes as f64 / 1e6
        )
    } else {
        String::new()
    };
    cpu.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{label:<36} {median:>12.0} {:>10.2} {:>10.2}   {}{size}",
        1e6 / median,
        cpu[cpu.len() / 2],
        runs.join(" ")
    );
}

/// The file system type of `path`, from /proc/self/mounts (longest matching
/// mount point).
fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(dev), Some(point), Some(kind)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let longer = match &best {
            Some((len, _)) => point.len() >= *len,
            None => true,
        };
        if path.starts_with(point) && longer {
            best = Some((point.len(), format!("{kind} on {dev}, mounted at {point}")));
        }
    }
    best.map_or_else(|| "unknown file system".to_string(), |(_, s)| s)
}
