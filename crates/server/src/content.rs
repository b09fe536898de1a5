//! File content, derived from the name alone.
//!
//! The byte stream of a name is counter based rather than a running
//! xorshift: 8-byte block `k` is `splitmix64(key + (k + 1) * φ)` with
//! `key = bulkget_names::stable_hash(name)`, little endian. Any byte range can
//! therefore be produced on its own, which is what lets streamed bodies (slow,
//! truncated, oversized) send exactly the bytes of [`content`] without ever
//! holding the whole file.

use bulkget_names::stable_hash;

/// The golden-ratio increment of splitmix64.
pub(crate) const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's finaliser: a cheap bijection that spreads every input bit
/// over the whole word. Used for content, markers and fault selection.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn block(key: u64, k: u64) -> [u8; 8] {
    mix64(key.wrapping_add(k.wrapping_add(1).wrapping_mul(GOLDEN))).to_le_bytes()
}

/// The content key of `name`: the seed of its byte stream.
pub fn content_key(name: &str) -> u64 {
    stable_hash(name)
}

/// Fills `buf` with the bytes at `offset..offset + buf.len()` of the stream
/// whose key is `key` (see [`content_key`]).
pub fn fill_content_at(key: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut rest = buf;
    // An unaligned start takes the tail of its block.
    let skew = (pos % 8) as usize;
    if skew != 0 && !rest.is_empty() {
        let b = block(key, pos / 8);
        let n = (8 - skew).min(rest.len());
        rest[..n].copy_from_slice(&b[skew..skew + n]);
        rest = &mut rest[n..];
        pos += n as u64;
    }
    let mut k = pos / 8;
    let mut chunks = rest.chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&block(key, k));
        k += 1;
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let n = tail.len();
        tail.copy_from_slice(&block(key, k)[..n]);
    }
}

/// Fills `buf` with the first `buf.len()` bytes of `name`'s content, without
/// allocating.
pub fn fill_content(name: &str, buf: &mut [u8]) {
    fill_content_at(content_key(name), 0, buf);
}

/// The content of `name` when its file is `size` bytes long. A longer file's
/// content starts with a shorter one's.
pub fn content(name: &str, size: usize) -> Vec<u8> {
    let mut buf = vec![0; size];
    fill_content(name, &mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_deterministic_and_depends_on_the_name() {
        assert_eq!(
            content("file-0000000001", 100),
            content("file-0000000001", 100)
        );
        assert_ne!(
            content("file-0000000001", 100),
            content("file-0000000002", 100)
        );
        assert_eq!(content("x", 0), Vec::<u8>::new());
        // Pinned so that a change of the stream, which would invalidate data
        // other crates' tests may have recorded, fails here first.
        assert_eq!(
            content("file-0000000000", 8),
            block(stable_hash("file-0000000000"), 0)
        );
    }

    #[test]
    fn any_range_matches_the_whole() {
        let whole = content("some name", 1000);
        let key = content_key("some name");
        for (offset, len) in [
            (0, 1000),
            (1, 7),
            (3, 64),
            (8, 8),
            (13, 987),
            (999, 1),
            (500, 0),
        ] {
            let mut part = vec![0; len];
            fill_content_at(key, offset as u64, &mut part);
            assert_eq!(part, whole[offset..offset + len], "{offset}+{len}");
        }
    }

    #[test]
    fn content_looks_random() {
        let bytes = content("file-0000000007", 1 << 16);
        let mut counts = [0u32; 256];
        for b in &bytes {
            counts[*b as usize] += 1;
        }
        // 65,536 bytes over 256 values: 256 each on average.
        assert!(
            counts.iter().all(|&c| (150..370).contains(&c)),
            "{counts:?}"
        );
    }
}
