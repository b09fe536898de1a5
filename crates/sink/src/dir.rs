//! The dir sink: one ordinary file per name under the output directory.
//!
//! # Why files are written in place
//!
//! By default a put opens the final path with `O_TRUNC` and writes the body
//! straight into it; it does not write a temporary file and rename it over
//! the final name. A crash in the middle of a batch can therefore leave a
//! partial (or empty) file behind. That is harmless here: a batch is
//! acknowledged only after every file in it was written, the checkpoint only
//! moves past acknowledged batches (after a `syncfs`), and resume fetches
//! every unacknowledged batch again, whose `O_TRUNC` open replaces whatever
//! the crash left. Temp-file + rename would cost an extra directory
//! operation per file (and, done safely, an extra `openat2` of the parent
//! directory) to protect a state that resume repairs anyway. It also would
//! not give power-loss atomicity without an fsync per file, which we never
//! do. The rename variant is still here, behind
//! [`DirSink::with_atomic_rename`], so the benchmark can measure both.
//!
//! # Why nothing escapes the output directory
//!
//! Every open goes through `openat2(2)` relative to a descriptor of the
//! output directory with `RESOLVE_BENEATH`, which makes the kernel refuse
//! (with `EXDEV`) any resolution that would leave that directory, whether by
//! `..`, an absolute path or a symbolic link, including symbolic links that
//! were already inside the directory. Missing parent directories are created
//! one component at a time: `mkdirat` of a single component relative to a
//! parent descriptor that was itself opened with `RESOLVE_BENEATH`, so
//! `mkdirat` never resolves a path that could lead elsewhere.
//!
//! Where `openat2` is missing (Linux before 5.6) or forbidden (some
//! container sandboxes answer `EPERM` or `ENOSYS`), [`probe_resolve`] says
//! so once and the sink walks instead ([`Resolve::Walk`]): one `openat(2)`
//! per component, relative to the descriptor of the directory reached so
//! far, each with `O_NOFOLLOW` (intermediate components also with
//! `O_DIRECTORY`), after refusing an absolute path and any `..`. That
//! follows no symbolic link at all, so it is stricter than
//! `RESOLVE_BENEATH` (a link that stays inside `OUT` is refused too), and
//! just as unable to leave `OUT`.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use nix::NixPath;

use crate::{check_name, io_error, os_error, show, Layout, PutError, Reserved, Resolve, Sink};

/// Flags for opening a file to (re)write it. `O_NONBLOCK` has no effect on
/// regular files; it is there so that a FIFO someone left in the output
/// directory makes the open fail (`ENXIO`) instead of blocking the event
/// loop forever.
fn file_flags() -> OFlag {
    OFlag::O_WRONLY
        | OFlag::O_CREAT
        | OFlag::O_TRUNC
        | OFlag::O_CLOEXEC
        | OFlag::O_NOCTTY
        | OFlag::O_NONBLOCK
}

/// Flags for opening a directory only to resolve paths relative to it.
fn dir_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
}

const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// How many times an `openat2` that failed with `EAGAIN` is retried. With
/// `RESOLVE_BENEATH` the kernel returns `EAGAIN` when a concurrent rename
/// elsewhere on the file system kept it from proving that a `..` stayed
/// beneath the root; names never hold `..`, so this is rare twice over.
const EAGAIN_RETRIES: u32 = 16;

/// Opens `path` relative to `dirfd` without ever leaving `dirfd`, the way
/// `resolve` says: [`openat2_beneath`] or [`open_walk`].
pub(crate) fn open_beneath<P: ?Sized + NixPath>(
    resolve: Resolve,
    dirfd: RawFd,
    path: &P,
    flags: OFlag,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    match resolve {
        Resolve::Openat2 => openat2_beneath(dirfd, path, flags, mode),
        Resolve::Walk => path.with_nix_path(|p| open_walk(dirfd, p.to_bytes(), flags, mode))?,
    }
}

/// Whether `openat2` with `RESOLVE_BENEATH` works on the directory `dirfd`:
/// [`Resolve::Openat2`] if it does, [`Resolve::Walk`] with the reason if
/// the kernel lacks it (`ENOSYS`), a sandbox forbids it (`EPERM`, or
/// `ENOSYS` from a seccomp filter) or does not know its flags (`EINVAL`,
/// `E2BIG`); any other error is the directory's, not `openat2`'s.
pub(crate) fn probe_fd(dirfd: RawFd) -> Result<(Resolve, Option<Errno>), Errno> {
    match openat2_beneath(dirfd, c".", dir_flags(), 0) {
        Ok(_) => Ok((Resolve::Openat2, None)),
        Err(e @ (Errno::ENOSYS | Errno::EPERM | Errno::EINVAL | Errno::E2BIG)) => {
            Ok((Resolve::Walk, Some(e)))
        }
        Err(e) => Err(e),
    }
}

/// Probes once how paths can be resolved beneath `dir` (see [`probe_fd`]):
/// the coordinator calls this before it starts any worker, and the workers
/// use what it found. The second value is why `openat2` cannot be used,
/// for the log.
pub fn probe_resolve(dir: &Path) -> Result<(Resolve, Option<String>), PutError> {
    let root = open_dir(dir)?;
    let (resolve, why) = probe_fd(root.as_raw_fd()).map_err(|e| {
        PutError::Fatal(format!(
            "cannot resolve paths beneath the output directory {dir:?}: {e}"
        ))
    })?;
    Ok((resolve, why.map(|e| format!("{e}: {}", e.desc()))))
}

/// Opens a directory to resolve paths beneath it; `O_RDONLY` rather than
/// `O_PATH` so the descriptor also serves `syncfs`.
fn open_dir(dir: &Path) -> Result<OwnedFd, PutError> {
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| PutError::Fatal(format!("cannot open output directory {dir:?}: {e}")))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` beneath `dirfd` one component at a time, for hosts without
/// `openat2`: an absolute path or a `..` component is refused with `EXDEV`
/// (as `RESOLVE_BENEATH` refuses them), every directory on the way is
/// opened with `O_PATH | O_DIRECTORY | O_NOFOLLOW` relative to the one
/// before, and the last component with `flags | O_NOFOLLOW`. A symbolic
/// link anywhere is therefore refused (`ENOTDIR` on the way, `ELOOP` at the
/// end), never followed. Empty and `.` components stay where they are.
fn open_walk(dirfd: RawFd, path: &[u8], flags: OFlag, mode: u32) -> Result<OwnedFd, Errno> {
    if path.first() == Some(&b'/') {
        return Err(Errno::EXDEV);
    }
    let through = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut held: Option<OwnedFd> = None;
    let mut rest = path;
    loop {
        let (component, next) = match rest.iter().position(|&b| b == b'/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if component == b".." {
            return Err(Errno::EXDEV);
        }
        let at = held.as_ref().map_or(dirfd, AsRawFd::as_raw_fd);
        match next {
            Some(next) => {
                if !component.is_empty() && component != b"." {
                    held = Some(openat_retrying(at, component, through, 0)?);
                }
                rest = next;
            }
            None => {
                let last: &[u8] = if component.is_empty() {
                    b"."
                } else {
                    component
                };
                return openat_retrying(at, last, flags | OFlag::O_NOFOLLOW, mode);
            }
        }
    }
}

/// `openat` of one component, retried on `EINTR`.
fn openat_retrying(dirfd: RawFd, name: &[u8], flags: OFlag, mode: u32) -> Result<OwnedFd, Errno> {
    loop {
        match nix::fcntl::openat(Some(dirfd), name, flags, Mode::from_bits_truncate(mode)) {
            // SAFETY: openat returned a new descriptor that nothing else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// `openat2(dirfd, path, flags, mode, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`,
/// retried on `EINTR` and (a few times) on `EAGAIN`.
fn openat2_beneath<P: ?Sized + NixPath>(
    dirfd: RawFd,
    path: &P,
    flags: OFlag,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut again = 0;
    loop {
        match openat2(dirfd, path, how) {
            // SAFETY: openat2 returned a new descriptor that nothing else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) if again < EAGAIN_RETRIES => again += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `buf`, retrying on `EINTR` and after short writes.
fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            // A regular file never accepts zero bytes of a non-empty write
            // without an error; treat it as an I/O error rather than spin.
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `body` into the new file and closes it, reporting close errors
/// (on NFS, say, a full disk may only show at close).
fn write_and_close(fd: OwnedFd, body: &[u8]) -> Result<(), Errno> {
    write_all(fd.as_fd(), body)?;
    match nix::unistd::close(fd.into_raw_fd()) {
        // On Linux the descriptor is gone even when close reports EINTR;
        // retrying could close a descriptor another open just received.
        Ok(()) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The output directory's descriptor and how paths beneath it are resolved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Root {
    pub fd: RawFd,
    pub resolve: Resolve,
}

impl Root {
    /// Opens `path` beneath this directory.
    pub(crate) fn open<P: ?Sized + NixPath>(
        self,
        path: &P,
        flags: OFlag,
        mode: u32,
    ) -> Result<OwnedFd, Errno> {
        open_beneath(self.resolve, self.fd, path, flags, mode)
    }

    /// The same resolution beneath another directory (one opened beneath
    /// this one).
    fn at(self, fd: RawFd) -> Root {
        Root { fd, ..self }
    }
}

/// A directory that could not be created or opened, and why.
struct DirError<'a> {
    errno: Errno,
    dir: &'a [u8],
}

impl DirError<'_> {
    fn into_put_error(self, name: &str) -> PutError {
        let dir = String::from_utf8_lossy(self.dir);
        os_error(
            self.errno,
            format_args!("cannot create directory {dir:?} for {}", show(name)),
        )
    }
}

/// Creates every component of `dir` (a relative path of safe components)
/// beneath `root`, one at a time. Components that already exist are fine as
/// long as they are directories beneath `root`.
fn make_dirs(root: Root, dir: &[u8]) -> Result<(), DirError<'_>> {
    let mut parent: Option<OwnedFd> = None;
    let mut start = 0;
    loop {
        let end = dir[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(dir.len(), |i| start + i);
        let at = parent.as_ref().map_or(root.fd, AsRawFd::as_raw_fd);
        loop {
            // A single component relative to a directory opened beneath the
            // root: mkdirat resolves nothing that could lead outside, and it
            // does not follow a symbolic link in the last component (it
            // reports EEXIST, and the open below then refuses the link).
            match mkdirat(
                Some(at),
                &dir[start..end],
                Mode::from_bits_truncate(DIR_MODE),
            ) {
                Ok(()) | Err(Errno::EEXIST) => break,
                Err(Errno::EINTR) => {}
                Err(errno) => {
                    return Err(DirError {
                        errno,
                        dir: &dir[..end],
                    })
                }
            }
        }
        // Open what is there now, relative to the root and beneath it: this
        // checks that it is a directory that does not lead outside, and is
        // the parent for the next component.
        let fd = root
            .open(&dir[..end], dir_flags(), 0)
            .map_err(|errno| DirError {
                errno,
                dir: &dir[..end],
            })?;
        if end == dir.len() {
            return Ok(());
        }
        parent = Some(fd);
        start = end + 1;
    }
}

/// Removes a file left behind by a failed put, as far as that is safely
/// possible. Best effort: the put has already failed with a better error.
fn unlink_beneath(root: Root, rel: &CStr) {
    let bytes = rel.to_bytes();
    match bytes.iter().rposition(|&b| b == b'/') {
        None => {
            let _ = unlinkat(Some(root.fd), rel, UnlinkatFlags::NoRemoveDir);
        }
        Some(i) => {
            if let Ok(parent) = root.open(&bytes[..i], dir_flags(), 0) {
                let _ = unlinkat(
                    Some(parent.as_raw_fd()),
                    &bytes[i + 1..],
                    UnlinkatFlags::NoRemoveDir,
                );
            }
        }
    }
}

/// The index (0..65,536) of a fan-out prefix `b"ab/cd"`.
fn prefix_index(prefix: &[u8; 5]) -> usize {
    fn hex(b: u8) -> usize {
        match b {
            b'0'..=b'9' => (b - b'0') as usize,
            b'a'..=b'f' => (b - b'a' + 10) as usize,
            b'A'..=b'F' => (b - b'A' + 10) as usize,
            _ => 0,
        }
    }
    hex(prefix[0]) << 12 | hex(prefix[1]) << 8 | hex(prefix[3]) << 4 | hex(prefix[4])
}

/// Writes each file as `OUT/<name>` or `OUT/ab/cd/<name>`. See the module
/// documentation for why files are written in place and why nothing can
/// escape `OUT`.
pub struct DirSink {
    /// The output directory. Every path is resolved beneath it.
    root: OwnedFd,
    /// How paths beneath `root` are resolved.
    resolve: Resolve,
    layout: Layout,
    atomic_rename: bool,
    /// The relative path of the current file, NUL-terminated. Reused so a
    /// put allocates nothing.
    path: Vec<u8>,
    /// The temporary file name for the rename variant, NUL-terminated. The
    /// pid makes it unique among the workers writing into one directory.
    tmp_name: Vec<u8>,
    /// One bit per fan-out prefix known to exist (65,536 bits, 8 KiB), so a
    /// put in a known prefix is one openat2, one write and one close.
    prefixes: Box<[u64; 1024]>,
    /// Where the state directory is: no name is written there.
    reserved: Reserved,
}

impl std::fmt::Debug for DirSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirSink")
            .field("root", &self.root)
            .field("resolve", &self.resolve)
            .field("layout", &self.layout)
            .field("atomic_rename", &self.atomic_rename)
            .field(
                "known_prefixes",
                &self.prefixes.iter().map(|w| w.count_ones()).sum::<u32>(),
            )
            .finish_non_exhaustive()
    }
}

impl DirSink {
    /// Opens (creating it if needed) the output directory `dir`, resolving
    /// paths beneath it as [`probe_resolve`] finds they can be.
    pub fn open(dir: &Path, layout: Layout) -> Result<DirSink, PutError> {
        create_out_dir(dir)?;
        let (resolve, _) = probe_resolve(dir)?;
        DirSink::open_with(dir, layout, resolve)
    }

    /// Opens (creating it if needed) the output directory `dir`, resolving
    /// paths beneath it as `resolve` says (a worker: as the coordinator's
    /// probe found; a test: either way).
    ///
    /// Fails with [`PutError::Fatal`] if the directory cannot be opened or
    /// `resolve` does not work here (`openat2` needs Linux 5.6 or later).
    pub fn open_with(dir: &Path, layout: Layout, resolve: Resolve) -> Result<DirSink, PutError> {
        create_out_dir(dir)?;
        let root = open_dir(dir)?;
        // Fail here, once and clearly, rather than on every put.
        open_beneath(resolve, root.as_raw_fd(), c".", dir_flags(), 0).map_err(|e| {
            PutError::Fatal(match resolve {
                Resolve::Openat2 => format!(
                    "cannot use openat2 with RESOLVE_BENEATH on {dir:?} \
                     (Linux 5.6 or later is needed): {e}"
                ),
                Resolve::Walk => format!("cannot open {dir:?}: {e}"),
            })
        })?;
        Ok(DirSink {
            root,
            resolve,
            layout,
            atomic_rename: false,
            path: Vec::with_capacity(512),
            tmp_name: format!(".bulkget-tmp.{}\0", std::process::id()).into_bytes(),
            prefixes: Box::new([0; 1024]),
            reserved: Reserved::default(),
        })
    }

    /// Refuses the names that would land where `reserved` says the state
    /// directory is (by default only `OUT/.bulkget`).
    pub fn with_reserved(mut self, reserved: Reserved) -> DirSink {
        self.reserved = reserved;
        self
    }

    /// Chooses between writing in place (`false`, the default) and writing a
    /// temporary file in the same directory and renaming it over the name
    /// (`true`). The rename variant exists to be measured against; see the
    /// module documentation. A crash can leave `.bulkget-tmp.<pid>` files
    /// behind in the rename variant.
    pub fn with_atomic_rename(mut self, on: bool) -> DirSink {
        self.atomic_rename = on;
        self
    }

    /// Flushes the whole output file system (`syncfs(2)`).
    pub(crate) fn sync_file_system(&self) -> Result<(), PutError> {
        // SAFETY: syncfs only reads the descriptor, which self keeps open.
        let rc = unsafe { libc::syncfs(self.root.as_raw_fd()) };
        Errno::result(rc)
            .map(drop)
            .map_err(|e| os_error(e, format_args!("cannot sync the output file system")))
    }
}

fn create_out_dir(dir: &Path) -> Result<(), PutError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| fatal_io(&e, format_args!("cannot create output directory {dir:?}")))
}

fn fatal_io(err: &std::io::Error, what: std::fmt::Arguments<'_>) -> PutError {
    match io_error(err, what) {
        PutError::File(m) => PutError::Fatal(m),
        other => other,
    }
}

impl Sink for DirSink {
    fn put(&mut self, name: &str, body: &[u8]) -> Result<(), PutError> {
        check_name(name)?;
        // The name is refused as the flat layout and the sqlite sink refuse
        // it, so every sink fails the same names, and also where fan-out
        // puts it, should the state directory be inside a fan-out
        // directory.
        self.reserved.check(None, name)?;
        let prefix = (self.layout == Layout::Fanout).then(|| bulkget_names::fanout_prefix(name));
        if let Some(p) = &prefix {
            let p = std::str::from_utf8(p).expect("a fan-out prefix is hex digits");
            self.reserved.check(Some(p), name)?;
        }
        let root = Root {
            fd: self.root.as_raw_fd(),
            resolve: self.resolve,
        };
        self.path.clear();
        if let Some(prefix) = prefix {
            let (word, bit) = {
                let i = prefix_index(&prefix);
                (i / 64, 1u64 << (i % 64))
            };
            if self.prefixes[word] & bit == 0 {
                make_dirs(root, &prefix).map_err(|e| e.into_put_error(name))?;
                self.prefixes[word] |= bit;
            }
            self.path.extend_from_slice(&prefix);
            self.path.push(b'/');
        }
        self.path.extend_from_slice(name.as_bytes());
        self.path.push(0);
        let rel = CStr::from_bytes_with_nul(&self.path)
            .map_err(|_| PutError::File(format!("unsafe name: NUL byte: {}", show(name))))?;
        if self.atomic_rename {
            put_renamed(root, rel, &self.tmp_name, name, body)
        } else {
            put_direct(root, rel, name, body)
        }
    }

    fn commit(&mut self) -> Result<(), PutError> {
        // Nothing to do: the data is in the page cache, which survives the
        // process; the coordinator's syncfs makes it survive the machine.
        Ok(())
    }

    /// Whether a regular file is at the name's path, resolved beneath OUT
    /// as `put` resolves it (a symbolic link there is not a stored file).
    /// One `O_PATH` open and one `fstat`; no directory is created.
    fn contains(&mut self, name: &str) -> Result<bool, PutError> {
        if check_name(name).is_err() || self.reserved.check(None, name).is_err() {
            return Ok(false);
        }
        self.path.clear();
        if self.layout == Layout::Fanout {
            let prefix = bulkget_names::fanout_prefix(name);
            let p = std::str::from_utf8(&prefix).expect("a fan-out prefix is hex digits");
            if self.reserved.check(Some(p), name).is_err() {
                return Ok(false);
            }
            self.path.extend_from_slice(&prefix);
            self.path.push(b'/');
        }
        self.path.extend_from_slice(name.as_bytes());
        self.path.push(0);
        let Ok(rel) = CStr::from_bytes_with_nul(&self.path) else {
            return Ok(false);
        };
        let root = Root {
            fd: self.root.as_raw_fd(),
            resolve: self.resolve,
        };
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match root.open(rel, flags, 0) {
            Ok(fd) => {
                let stat = nix::sys::stat::fstat(fd.as_raw_fd())
                    .map_err(|e| os_error(e, format_args!("cannot inspect {}", show(name))))?;
                Ok(stat.st_mode & libc::S_IFMT == libc::S_IFREG)
            }
            // Missing, or a parent that is a file, a link or not there:
            // nothing stored under this name.
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV) => Ok(false),
            Err(e) => Err(os_error(e, format_args!("cannot look up {}", show(name)))),
        }
    }
}

/// Opens `rel` beneath `root` for writing, creating missing parent
/// directories once if the first attempt says they are missing.
fn create_file(root: Root, rel: &CStr, name: &str) -> Result<OwnedFd, PutError> {
    match root.open(rel, file_flags(), FILE_MODE) {
        Ok(fd) => Ok(fd),
        Err(Errno::ENOENT) => {
            // With O_CREAT, ENOENT means a parent directory is missing.
            let bytes = rel.to_bytes();
            if let Some(i) = bytes.iter().rposition(|&b| b == b'/') {
                make_dirs(root, &bytes[..i]).map_err(|e| e.into_put_error(name))?;
            }
            root.open(rel, file_flags(), FILE_MODE)
                .map_err(|e| os_error(e, format_args!("cannot create {}", show(name))))
        }
        Err(e) => Err(os_error(e, format_args!("cannot create {}", show(name)))),
    }
}

/// The default: write straight into the final file.
fn put_direct(root: Root, rel: &CStr, name: &str, body: &[u8]) -> Result<(), PutError> {
    let fd = create_file(root, rel, name)?;
    write_and_close(fd, body).map_err(|e| {
        // Do not leave a truncated file that looks like a real one. (After
        // a crash such a file can remain; resume overwrites it.)
        unlink_beneath(root, rel);
        os_error(e, format_args!("cannot write {}", show(name)))
    })
}

/// The measured alternative: write `.bulkget-tmp.<pid>` in the final
/// directory, then rename it over the final name.
fn put_renamed(
    root: Root,
    rel: &CStr,
    tmp_name: &[u8],
    name: &str,
    body: &[u8],
) -> Result<(), PutError> {
    let tmp = CStr::from_bytes_with_nul(tmp_name).expect("the temporary name is NUL-terminated");
    let bytes = rel.to_bytes_with_nul();
    // rename has no RESOLVE_BENEATH, so it only ever gets single components
    // relative to a directory that was opened beneath the root.
    let (parent, last) = match bytes.iter().rposition(|&b| b == b'/') {
        None => (None, rel),
        Some(i) => {
            let dir = &bytes[..i];
            let fd = match root.open(dir, dir_flags(), 0) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    make_dirs(root, dir).map_err(|e| e.into_put_error(name))?;
                    root.open(dir, dir_flags(), 0).map_err(|e| {
                        os_error(
                            e,
                            format_args!("cannot open the directory of {}", show(name)),
                        )
                    })?
                }
                Err(e) => {
                    return Err(os_error(
                        e,
                        format_args!("cannot open the directory of {}", show(name)),
                    ))
                }
            };
            let last = CStr::from_bytes_with_nul(&bytes[i + 1..]).expect("rel is NUL-terminated");
            (Some(fd), last)
        }
    };
    let at = parent.as_ref().map_or(root.fd, AsRawFd::as_raw_fd);
    let fd = root
        .at(at)
        .open(tmp, file_flags(), FILE_MODE)
        .map_err(|e| {
            os_error(
                e,
                format_args!("cannot create a temporary file for {}", show(name)),
            )
        })?;
    if let Err(e) = write_and_close(fd, body) {
        let _ = unlinkat(Some(at), tmp, UnlinkatFlags::NoRemoveDir);
        return Err(os_error(e, format_args!("cannot write {}", show(name))));
    }
    // renameat does not follow a symbolic link in either last component: a
    // link at the final name is replaced, not written through.
    if let Err(e) = nix::fcntl::renameat(Some(at), tmp, Some(at), last) {
        let _ = unlinkat(Some(at), tmp, UnlinkatFlags::NoRemoveDir);
        return Err(os_error(
            e,
            format_args!("cannot rename into {}", show(name)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    /// A scratch area: `base/out` is the output directory, `base/outside`
    /// is somewhere a put must never reach.
    struct Scratch {
        _tmp: tempfile::TempDir,
        base: PathBuf,
        out: PathBuf,
        outside: PathBuf,
    }

    fn scratch() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let out = base.join("out");
        let outside = base.join("outside");
        fs::create_dir(&out).unwrap();
        fs::create_dir(&outside).unwrap();
        Scratch {
            _tmp: tmp,
            base,
            out,
            outside,
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Every walk of a tree, as relative paths, sorted.
    fn tree(dir: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                if e.file_type().unwrap().is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    /// Both ways of resolving paths: every test of what a put may reach
    /// runs with each, so both are proven never to write outside OUT.
    const RESOLVES: [Resolve; 2] = [Resolve::Openat2, Resolve::Walk];

    /// A sink of each resolution, writing in place and renaming.
    fn sinks(out: &Path, layout: Layout) -> Vec<DirSink> {
        let mut all = Vec::new();
        for resolve in RESOLVES {
            for atomic in [false, true] {
                all.push(
                    DirSink::open_with(out, layout, resolve)
                        .unwrap()
                        .with_atomic_rename(atomic),
                );
            }
        }
        all
    }

    fn fanout_path(name: &str) -> String {
        let p = bulkget_names::fanout_prefix(name);
        format!("{}/{name}", std::str::from_utf8(&p).unwrap())
    }

    #[test]
    fn flat_and_fanout_writes_land_at_the_right_paths() {
        for (resolve, atomic) in RESOLVES.into_iter().flat_map(|r| [(r, false), (r, true)]) {
            let s = scratch();
            let flat = s.out.join("flat");
            let fan = s.out.join("fan");
            let mut f = DirSink::open_with(&flat, Layout::Flat, resolve)
                .unwrap()
                .with_atomic_rename(atomic);
            let mut g = DirSink::open_with(&fan, Layout::Fanout, resolve)
                .unwrap()
                .with_atomic_rename(atomic);
            for i in 0..50 {
                let name = format!("file-{i:03}");
                let body = format!("body of {name}");
                f.put(&name, body.as_bytes()).unwrap();
                g.put(&name, body.as_bytes()).unwrap();
            }
            f.commit().unwrap();
            g.commit().unwrap();
            for i in 0..50 {
                let name = format!("file-{i:03}");
                let body = format!("body of {name}");
                assert_eq!(fs::read_to_string(flat.join(&name)).unwrap(), body);
                assert_eq!(
                    fs::read_to_string(fan.join(fanout_path(&name))).unwrap(),
                    body
                );
            }
            assert_eq!(listing(&flat).len(), 50);
            // Fan-out: only two-hex-digit directories at the top.
            for top in listing(&fan) {
                assert_eq!(top.len(), 2, "{top}");
                assert!(top.bytes().all(|b| b.is_ascii_hexdigit()));
            }
            // The rename variant leaves no temporary file behind.
            assert!(!tree(&s.out).iter().any(|p| p.contains(".bulkget-tmp")));
        }
    }

    #[test]
    fn an_overwrite_truncates_a_longer_old_file() {
        let s = scratch();
        for layout in [Layout::Flat, Layout::Fanout] {
            for mut sink in sinks(&s.out, layout) {
                sink.put("f", b"a much longer first body").unwrap();
                sink.put("f", b"short").unwrap();
                let path = match layout {
                    Layout::Flat => s.out.join("f"),
                    Layout::Fanout => s.out.join(fanout_path("f")),
                };
                assert_eq!(fs::read(path).unwrap(), b"short");
            }
        }
    }

    #[test]
    fn nested_names_create_their_parents() {
        let s = scratch();
        for layout in [Layout::Flat, Layout::Fanout] {
            for (i, mut sink) in sinks(&s.out, layout).into_iter().enumerate() {
                let name = format!("d{i}/e/f/g");
                sink.put(&name, b"deep").unwrap();
                sink.put(&format!("d{i}/e/h"), b"sibling").unwrap();
                let path = match layout {
                    Layout::Flat => s.out.join(&name),
                    Layout::Fanout => s.out.join(fanout_path(&name)),
                };
                assert_eq!(fs::read(path).unwrap(), b"deep");
            }
        }
    }

    #[test]
    fn an_empty_body_makes_an_empty_file() {
        let s = scratch();
        for mut sink in sinks(&s.out, Layout::Flat) {
            sink.put("empty", b"x").unwrap();
            sink.put("empty", b"").unwrap();
            assert_eq!(fs::read(s.out.join("empty")).unwrap(), b"");
        }
    }

    #[test]
    fn unsafe_names_are_refused_and_nothing_is_created() {
        let s = scratch();
        let long = "x".repeat(256);
        let deep_long = format!("ok/{long}");
        let names: Vec<&str> = vec![
            "../x",
            "../outside/x",
            "/abs",
            "/tmp/abs",
            "a/../b",
            "a//b",
            "a/",
            "",
            ".",
            "..",
            "a/./b",
            "nul\0byte",
            &long,
            &deep_long,
            ".bulkget/checkpoint.json",
        ];
        let before = listing(&s.base);
        for layout in [Layout::Flat, Layout::Fanout] {
            for mut sink in sinks(&s.out, layout) {
                for name in &names {
                    match sink.put(name, b"evil") {
                        Err(PutError::File(msg)) => {
                            assert!(msg.starts_with("unsafe name"), "{name:?}: {msg}")
                        }
                        other => panic!("{name:?} gave {other:?}"),
                    }
                }
            }
        }
        assert_eq!(listing(&s.base), before);
        assert!(listing(&s.out).is_empty(), "{:?}", listing(&s.out));
        assert!(listing(&s.outside).is_empty());
    }

    #[test]
    fn symbolic_links_inside_out_cannot_lead_outside() {
        let s = scratch();
        symlink(&s.outside, s.out.join("evil")).unwrap();
        symlink("../outside", s.out.join("evil-relative")).unwrap();
        symlink(s.outside.join("target"), s.out.join("evil-file")).unwrap();
        symlink("/", s.out.join("root")).unwrap();
        for mut sink in sinks(&s.out, Layout::Flat) {
            for name in ["evil/x", "evil/new/x", "evil-relative/x", "root/tmp/x"] {
                match sink.put(name, b"evil") {
                    Err(PutError::File(msg)) => assert!(msg.contains(name), "{msg}"),
                    other => panic!("{name}: {other:?}"),
                }
            }
        }
        // A link as the last component: writing in place would follow it,
        // so RESOLVE_BENEATH (or O_NOFOLLOW) refuses; rename replaces the
        // link itself.
        for resolve in RESOLVES {
            let link = format!("evil-file-{resolve:?}");
            symlink(s.outside.join("target"), s.out.join(&link)).unwrap();
            let mut direct = DirSink::open_with(&s.out, Layout::Flat, resolve).unwrap();
            assert!(matches!(direct.put(&link, b"evil"), Err(PutError::File(_))));
            let mut renamed = direct.with_atomic_rename(true);
            renamed.put(&link, b"replaced").unwrap();
            let meta = fs::symlink_metadata(s.out.join(&link)).unwrap();
            assert!(meta.file_type().is_file());
        }
        assert!(listing(&s.outside).is_empty());

        // The same for a fan-out prefix directory replaced by a link.
        let name = "victim";
        let prefix = bulkget_names::fanout_prefix(name);
        let top = std::str::from_utf8(&prefix[..2]).unwrap();
        symlink(&s.outside, s.out.join(top)).unwrap();
        for mut sink in sinks(&s.out, Layout::Fanout) {
            assert!(matches!(sink.put(name, b"evil"), Err(PutError::File(_))));
        }
        assert!(listing(&s.outside).is_empty());
    }

    #[test]
    fn a_link_that_stays_inside_is_followed_by_openat2_and_refused_by_the_walk() {
        let s = scratch();
        fs::create_dir(s.out.join("real")).unwrap();
        symlink("real", s.out.join("alias")).unwrap();
        let mut sink = DirSink::open_with(&s.out, Layout::Flat, Resolve::Openat2).unwrap();
        sink.put("alias/x", b"ok").unwrap();
        assert_eq!(fs::read(s.out.join("real/x")).unwrap(), b"ok");
        // The walk follows no link at all: stricter, never looser.
        let mut sink = DirSink::open_with(&s.out, Layout::Flat, Resolve::Walk).unwrap();
        match sink.put("alias/y", b"no") {
            Err(PutError::File(msg)) => assert!(msg.contains("ENOTDIR"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert!(!s.out.join("real/y").exists());
    }

    #[test]
    fn both_resolutions_refuse_dot_dot_absolute_paths_and_links_below_the_name_check() {
        // `put` refuses such names before any open; this calls the opening
        // itself, the last line of defence, with what the check stops.
        let s = scratch();
        symlink(&s.outside, s.out.join("evil")).unwrap();
        fs::create_dir(s.out.join("sub")).unwrap();
        let outside = s.outside.join("abs");
        let absolute = outside.to_str().unwrap().to_string();
        let flags = file_flags();
        for resolve in RESOLVES {
            let root = DirSink::open_with(&s.out, Layout::Flat, resolve).unwrap();
            let root = root.root.as_raw_fd();
            for path in [
                "../outside/x",
                "sub/../../outside/x",
                absolute.as_str(),
                "evil/x",
                "./evil/x",
                "sub//../../x",
            ] {
                let got = open_beneath(resolve, root, path, flags, FILE_MODE);
                let errno = got.expect_err(path);
                assert!(
                    matches!(errno, Errno::EXDEV | Errno::ENOTDIR | Errno::ELOOP),
                    "{resolve:?} {path}: {errno}"
                );
            }
            // What stays inside is fine either way; a `..` that stays
            // inside only with openat2, which can prove it does.
            open_beneath(resolve, root, "sub/./inside", flags, FILE_MODE).unwrap();
            let back = open_beneath(resolve, root, "sub/../back", flags, FILE_MODE);
            assert_eq!(back.is_ok(), resolve == Resolve::Openat2, "{back:?}");
        }
        assert!(listing(&s.outside).is_empty(), "{:?}", listing(&s.outside));
        assert!(listing(&s.base).len() == 2);
    }

    /// Makes `openat2` fail with `errno` for the calling thread (and for
    /// nothing else: seccomp filters are per thread unless synchronised),
    /// as a kernel without it or a container sandbox does.
    fn deny_openat2_on_this_thread(errno: i32) {
        const OPENAT2: u32 = 437; // The same number on every architecture.
        let stmt = |code: u32, k: u32| libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let filter = [
            // Load the syscall number, at offset 0 of seccomp_data.
            stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: OPENAT2,
            },
            stmt(
                libc::BPF_RET | libc::BPF_K,
                libc::SECCOMP_RET_ERRNO | errno as u32,
            ),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: plain prctl calls with a filter that outlives them; the
        // kernel copies the program.
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            assert_eq!(
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog
                ),
                0,
                "{}",
                std::io::Error::last_os_error()
            );
        }
    }

    #[test]
    fn without_openat2_the_probe_chooses_the_walk_and_nothing_escapes() {
        for errno in [libc::ENOSYS, libc::EPERM] {
            std::thread::spawn(move || {
                let s = scratch();
                assert_eq!(probe_resolve(&s.out).unwrap(), (Resolve::Openat2, None));
                deny_openat2_on_this_thread(errno);
                let (resolve, why) = probe_resolve(&s.out).unwrap();
                assert_eq!(resolve, Resolve::Walk);
                let why = why.unwrap();
                assert!(
                    why.starts_with(Errno::from_raw(errno).to_string().as_str()),
                    "{why}"
                );
                // Openat2 itself is refused from now on, so a sink told to
                // use it fails at once, clearly, not on every put.
                let e = DirSink::open_with(&s.out, Layout::Flat, Resolve::Openat2).unwrap_err();
                assert!(e.to_string().contains("Linux 5.6"), "{e}");
                // The sink opened without being told probes and walks.
                symlink(&s.outside, s.out.join("evil")).unwrap();
                for layout in [Layout::Flat, Layout::Fanout] {
                    let mut sink = DirSink::open(&s.out, layout).unwrap();
                    assert_eq!(sink.resolve, Resolve::Walk);
                    sink.put("a/b/c", b"deep").unwrap();
                    sink.put("top", b"top").unwrap();
                }
                let mut flat = DirSink::open(&s.out, Layout::Flat).unwrap();
                assert!(matches!(flat.put("evil/x", b"no"), Err(PutError::File(_))));
                assert_eq!(fs::read(s.out.join("a/b/c")).unwrap(), b"deep");
                assert_eq!(fs::read(s.out.join(fanout_path("a/b/c"))).unwrap(), b"deep");
                assert!(listing(&s.outside).is_empty());
                // cat reads through the walk as well.
                let mut out = Vec::new();
                assert!(crate::cat(&s.out, "a/b/c", &mut out).unwrap());
                assert_eq!(out, b"deep");
            })
            .join()
            .unwrap();
        }
    }

    #[test]
    fn a_file_and_a_directory_of_one_name_conflict() {
        let s = scratch();
        for (i, mut sink) in sinks(&s.out, Layout::Flat).into_iter().enumerate() {
            let a = format!("a{i}");
            sink.put(&a, b"file").unwrap();
            match sink.put(&format!("{a}/b"), b"under a file") {
                Err(PutError::File(msg)) => assert!(msg.contains("ENOTDIR"), "{msg}"),
                other => panic!("{other:?}"),
            }
            let c = format!("c{i}");
            sink.put(&format!("{c}/d"), b"x").unwrap();
            match sink.put(&c, b"over a directory") {
                Err(PutError::File(msg)) => assert!(msg.contains(&c), "{msg}"),
                other => panic!("{other:?}"),
            }
            // The earlier files are intact and the run can go on.
            assert_eq!(fs::read(s.out.join(&a)).unwrap(), b"file");
            sink.put(&format!("after{i}"), b"ok").unwrap();
        }
    }

    #[test]
    fn a_fifo_does_not_block_a_put() {
        let s = scratch();
        nix::unistd::mkfifo(&s.out.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        for mut sink in sinks(&s.out, Layout::Flat).into_iter().step_by(2) {
            assert!(matches!(sink.put("fifo", b"x"), Err(PutError::File(_))));
        }
    }

    #[test]
    fn prefix_indices_cover_the_range() {
        assert_eq!(prefix_index(b"00/00"), 0);
        assert_eq!(prefix_index(b"ff/ff"), 65_535);
        assert_eq!(prefix_index(b"12/34"), 0x1234);
    }

    #[test]
    fn a_removed_fanout_directory_is_made_again() {
        let s = scratch();
        for mut sink in sinks(&s.out, Layout::Fanout) {
            sink.put("x", b"1").unwrap();
            fs::remove_dir_all(s.out.join(&fanout_path("x")[..2])).unwrap();
            sink.put("x", b"2").unwrap();
            assert_eq!(fs::read(s.out.join(fanout_path("x"))).unwrap(), b"2");
        }
    }
}
