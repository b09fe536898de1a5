//! The build id of the running executable, which [`crate::Version`] carries.
//!
//! It is the package version and the GNU build id that the linker writes
//! into the executable (`.note.gnu.build-id`, a hash of the linked output):
//! two builds of different code have different ids, and a rebuild of the
//! same code by the same toolchain has the same. It is read once per process
//! from `/proc/self/exe`, which names the image the process runs even after
//! the file it was started from has been replaced or deleted, so it is the
//! id of the code that runs, not of whatever is on disk now. Only the ELF
//! and program headers and the note segments are read, a few KB.
//!
//! An executable linked without a build id note (the linker flag
//! `--build-id` is the default on common Linux toolchains, but not on all)
//! gets a 64-bit FNV-1a hash of the whole file instead, computed once per
//! process.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

/// `PT_NOTE`: a program header for a segment of notes.
const PT_NOTE: u32 = 4;
/// The note type of a GNU build id, in notes named "GNU".
const NT_GNU_BUILD_ID: u32 = 3;
/// Note segments longer than this are not read: build id notes are tens of
/// bytes, and a corrupt header must not make us allocate much.
const MAX_NOTES: u64 = 64 << 10;

/// This process's build id, e.g. `0.1.0+5b17ed1b0a3afcb1b6466703fe8fdbfd11f4b052`.
pub fn build_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let image = File::open("/proc/self/exe").ok();
        let id = image
            .as_ref()
            .and_then(|f| gnu_build_id(f).or_else(|| fnv_of_file(f)))
            .unwrap_or_else(|| "unknown".to_string());
        format!("{}+{id}", env!("CARGO_PKG_VERSION"))
    })
}

/// The GNU build id of a 64-bit little-endian ELF file, in hex, if it has
/// one.
pub fn gnu_build_id(file: &File) -> Option<String> {
    let mut header = [0u8; 64];
    file.read_exact_at(&mut header, 0).ok()?;
    // ELFCLASS64, ELFDATA2LSB: the executables this project is built for.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let phoff = u64_at(&header, 0x20)?;
    let phentsize = u64::from(u16_at(&header, 0x36)?);
    let phnum = u64::from(u16_at(&header, 0x38)?);
    if phentsize < 56 || phnum > 4096 {
        return None;
    }
    let mut headers = vec![0u8; (phentsize * phnum) as usize];
    file.read_exact_at(&mut headers, phoff).ok()?;
    for ph in headers.chunks_exact(phentsize as usize) {
        if u32_at(ph, 0)? != PT_NOTE {
            continue;
        }
        let (offset, size, align) = (u64_at(ph, 8)?, u64_at(ph, 32)?, u64_at(ph, 48)?);
        if size > MAX_NOTES {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        file.read_exact_at(&mut notes, offset).ok()?;
        if let Some(id) = find_gnu_build_id(&notes, if align == 8 { 8 } else { 4 }) {
            return Some(id.iter().map(|b| format!("{b:02x}")).collect());
        }
    }
    None
}

/// The descriptor of the first GNU build id note in a note segment whose
/// entries are padded to `align` bytes.
fn find_gnu_build_id(mut notes: &[u8], align: usize) -> Option<&[u8]> {
    let pad = |n: usize| n.checked_add(align - 1).map(|n| n / align * align);
    while notes.len() >= 12 {
        let namesz = u32_at(notes, 0)? as usize;
        let descsz = u32_at(notes, 4)? as usize;
        let kind = u32_at(notes, 8)?;
        // Offsets from the note's start, which is itself aligned: the
        // descriptor and the next note start at the next multiple of
        // `align` (so a header of 12 bytes and a 4-byte name leave the
        // descriptor at 16 with either alignment).
        let name_end = 12usize.checked_add(namesz)?;
        let desc_start = pad(name_end)?;
        let desc_end = desc_start.checked_add(descsz)?;
        if desc_end > notes.len() || name_end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && notes[12..name_end] == *b"GNU\0" && descsz > 0 {
            return Some(&notes[desc_start..desc_end]);
        }
        let next = pad(desc_end)?;
        notes = notes.get(next..)?;
    }
    None
}

/// A 64-bit FNV-1a hash of the whole file, in hex, prefixed `fnv-`.
fn fnv_of_file(file: &File) -> Option<String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut buf, offset).ok()?;
        if n == 0 {
            return Some(format!("fnv-{hash:016x}"));
        }
        offset += n as u64;
        for &b in &buf[..n] {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn note(name: &[u8], kind: u32, desc: &[u8], align: usize) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize((12 + name.len()).div_ceil(align) * align, 0);
        n.extend_from_slice(desc);
        n.resize(n.len().div_ceil(align) * align, 0);
        n
    }

    /// A minimal ELF64 file: a header, two program headers (a load segment
    /// and a note segment) and the notes.
    fn elf(notes: &[u8], align: u64) -> File {
        let mut f = tempfile::tempfile().unwrap();
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = 2;
        header[5] = 1;
        header[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        header[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        header[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        let mut load = vec![0u8; 56];
        load[..4].copy_from_slice(&1u32.to_le_bytes());
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&PT_NOTE.to_le_bytes());
        ph[8..16].copy_from_slice(&(64u64 + 112).to_le_bytes());
        ph[32..40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        ph[48..56].copy_from_slice(&align.to_le_bytes());
        f.write_all(&[header, load, ph, notes.to_vec()].concat())
            .unwrap();
        f
    }

    #[test]
    fn finds_the_gnu_build_id_among_other_notes() {
        let id = [0x5b, 0x17, 0xed, 0x1b, 0x0a];
        for align in [4usize, 8] {
            let notes = [
                note(b"GNU\0", 5, &[1, 2, 3, 4, 5, 6, 7, 8, 9], align),
                note(b"Go\0\0", NT_GNU_BUILD_ID, &[9; 20], align),
                note(b"GNU\0", NT_GNU_BUILD_ID, &id, align),
            ]
            .concat();
            assert_eq!(find_gnu_build_id(&notes, align), Some(&id[..]), "{align}");
            let f = elf(&notes, align as u64);
            assert_eq!(gnu_build_id(&f).as_deref(), Some("5b17ed1b0a"));
        }
    }

    #[test]
    fn files_without_a_build_id_have_none_and_corrupt_notes_do_not_panic() {
        let other = note(b"GNU\0", 1, &[0; 16], 4);
        assert_eq!(gnu_build_id(&elf(&other, 4)), None);
        // A note announcing more bytes than the segment holds.
        let mut cut = note(b"GNU\0", NT_GNU_BUILD_ID, &[7; 20], 4);
        cut[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(find_gnu_build_id(&cut, 4), None);
        assert_eq!(gnu_build_id(&elf(&cut, 4)), None);
        // Not an ELF file at all.
        let mut text = tempfile::tempfile().unwrap();
        text.write_all(b"#!/bin/sh\nexit 99\n").unwrap();
        assert_eq!(gnu_build_id(&text), None);
    }

    #[test]
    fn the_hash_fallback_tells_files_apart() {
        let file = |bytes: &[u8]| {
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(bytes).unwrap();
            f
        };
        let a = fnv_of_file(&file(b"one build")).unwrap();
        let b = fnv_of_file(&file(b"another build")).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, fnv_of_file(&file(b"one build")).unwrap());
    }

    #[test]
    fn the_build_id_names_the_version_and_is_computed_once() {
        let id = build_id();
        assert!(
            id.starts_with(concat!(env!("CARGO_PKG_VERSION"), "+")),
            "{id}"
        );
        assert!(!id.ends_with("+unknown"), "{id}");
        assert!(std::ptr::eq(id, build_id()));
    }
}
