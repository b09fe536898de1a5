//! The file-creation floor: how fast this machine creates small files,
//! with nothing else in the way. `scripts/bench.sh` compares the dir sink
//! with it.
//!
//! ```text
//! cargo run --release -p bulkget-sink --example create_floor -- \
//!     [--fanout] [--openat2] [--threads T] [--size B] [--sync] FILES DIR
//! ```
//!
//! Creates FILES files `file-{i:010}` (the test server's names) of B bytes
//! (default 100) in DIR (created if missing; it should be empty) with
//! `openat(O_WRONLY|O_CREAT|O_TRUNC)`, one `write` and `close` each, and
//! prints one line: `create_floor files=… layout=… threads=… secs=…
//! files_per_sec=… [sync_secs=…]`.
//!
//! - `--fanout`: files go to `DIR/ab/cd/NAME`, where `ab/cd` is
//!   `bulkget_names::fanout_prefix`, the dir sink's fan-out. A leaf
//!   directory is created (`mkdirat` of `ab`, then of `ab/cd`, `EEXIST` is
//!   fine) the first time a thread needs it, as the dir sink does, and that
//!   is timed: with 65,536 leaves, small runs spend much of their time there.
//! - `--openat2`: open with `openat2(RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS)`
//!   like the dir sink, instead of plain `openat`, to price that check.
//! - `--threads T`: T threads split the names (thread t takes i ≡ t mod T),
//!   all in the same tree, as T workers do.
//! - `--sync`: after creating, `syncfs(2)` the file system and report its
//!   time apart (`sync_secs`). `bulkget fetch` ends with a syncfs before its
//!   last checkpoint, so a fair floor for a whole run is secs + sync_secs.
//!
//! Only creation is timed: not making the names, not removing the files.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Instant;

fn usage() -> ! {
    eprintln!("usage: create_floor [--fanout] [--openat2] [--threads T] [--size B] FILES DIR");
    std::process::exit(2)
}

fn main() {
    let mut fanout = false;
    let mut use_openat2 = false;
    let mut sync = false;
    let mut threads = 1usize;
    let mut size = 100usize;
    let mut pos = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--fanout" => fanout = true,
            "--openat2" => use_openat2 = true,
            "--sync" => sync = true,
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--size" => {
                size = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "-h" | "--help" => usage(),
            _ => pos.push(a),
        }
    }
    if pos.len() != 2 || threads == 0 {
        usage();
    }
    let files: u64 = pos[0].parse().unwrap_or_else(|_| usage());
    let dir = PathBuf::from(&pos[1]);
    std::fs::create_dir_all(&dir).expect("create DIR");
    let cdir = CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: a plain open of a NUL-terminated path.
    let root = unsafe {
        libc::open(
            cdir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    assert!(
        root >= 0,
        "open {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );

    let body = vec![b'x'; size];
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let body = &body;
            s.spawn(move || {
                create(
                    root,
                    t as u64,
                    threads as u64,
                    files,
                    fanout,
                    use_openat2,
                    body,
                )
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let synced = if sync {
        let t = Instant::now();
        // SAFETY: root is an open descriptor.
        let rc = unsafe { libc::syncfs(root) };
        assert_eq!(rc, 0, "syncfs: {}", std::io::Error::last_os_error());
        format!(" sync_secs={:.3}", t.elapsed().as_secs_f64())
    } else {
        String::new()
    };
    println!(
        "create_floor files={files} layout={} open={} threads={threads} secs={secs:.3} files_per_sec={:.0}{synced}",
        if fanout { "fanout" } else { "flat" },
        if use_openat2 { "openat2" } else { "openat" },
        files as f64 / secs
    );
}

fn create(
    root: i32,
    first: u64,
    step: u64,
    files: u64,
    fanout: bool,
    use_openat2: bool,
    body: &[u8],
) {
    let mut known = vec![0u64; 1024]; // one bit per fan-out leaf
    let mut path: Vec<u8> = Vec::with_capacity(64);
    let mut i = first;
    while i < files {
        path.clear();
        let name = format!("file-{i:010}");
        if fanout {
            let prefix = bulkget_names::fanout_prefix(&name);
            let leaf =
                hex(prefix[0]) << 12 | hex(prefix[1]) << 8 | hex(prefix[3]) << 4 | hex(prefix[4]);
            if known[leaf / 64] & (1 << (leaf % 64)) == 0 {
                mkdir(root, &prefix[..2]);
                mkdir(root, &prefix);
                known[leaf / 64] |= 1 << (leaf % 64);
            }
            path.extend_from_slice(&prefix);
            path.push(b'/');
        }
        path.extend_from_slice(name.as_bytes());
        path.push(0);
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
        let fd = if use_openat2 {
            // SAFETY: open_how is plain data; all-zero is its default.
            let mut how: libc::open_how = unsafe { std::mem::zeroed() };
            how.flags = flags as u64;
            how.mode = 0o644;
            how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
            // SAFETY: path is NUL-terminated; how is a valid open_how.
            unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    root,
                    path.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                ) as i32
            }
        } else {
            // SAFETY: path is NUL-terminated.
            unsafe { libc::openat(root, path.as_ptr().cast(), flags, 0o644) }
        };
        assert!(
            fd >= 0,
            "create {}: {}",
            String::from_utf8_lossy(&path),
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is open; body is a valid buffer.
        let n = unsafe { libc::write(fd, body.as_ptr().cast(), body.len()) };
        assert_eq!(
            n,
            body.len() as isize,
            "write: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        i += step;
    }
}

fn hex(b: u8) -> usize {
    (b as char).to_digit(16).unwrap_or(0) as usize
}

fn mkdir(root: i32, rel: &[u8]) {
    let c = CString::new(rel).unwrap();
    // SAFETY: c is NUL-terminated.
    let rc = unsafe { libc::mkdirat(root, c.as_ptr(), 0o755) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EEXIST),
            "mkdir {}: {e}",
            String::from_utf8_lossy(rel)
        );
    }
}
