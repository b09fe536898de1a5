//! The rules for file names that come from the server.
//!
//! A name is untrusted input. This crate is the one place that decides
//! whether a name may be written ([`check`]), how it is spelled in a request
//! path ([`push_url_encoded`]), and where it lands in a fan-out layout
//! ([`fanout_prefix`]). The sinks still open files with `RESOLVE_BENEATH`,
//! so a mistake here cannot escape the output directory; this check exists so
//! that unsafe names are reported clearly instead of failing obscurely.

use std::fmt;

/// The longest path component Linux file systems accept (`NAME_MAX`).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// The longest whole name accepted (`PATH_MAX` less room for the output
/// directory and a fan-out prefix).
pub const MAX_NAME_BYTES: usize = 3840;

/// Why a name was refused. The text is what `failed.jsonl` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsafe {
    Empty,
    Absolute,
    EmptyComponent,
    DotComponent,
    NulByte,
    ComponentTooLong,
    NameTooLong,
}

impl fmt::Display for Unsafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self {
            Unsafe::Empty => "empty name",
            Unsafe::Absolute => "absolute path",
            Unsafe::EmptyComponent => "empty path component",
            Unsafe::DotComponent => "'.' or '..' path component",
            Unsafe::NulByte => "NUL byte",
            Unsafe::ComponentTooLong => "path component over 255 bytes",
            Unsafe::NameTooLong => "name over 3840 bytes",
        };
        write!(f, "unsafe name: {why}")
    }
}

impl std::error::Error for Unsafe {}

/// Decides whether `name` may be written under the output directory.
///
/// A name is safe when every `/`-separated component is non-empty, is not
/// `.` or `..`, has no NUL byte and is at most 255 bytes long. A backslash is
/// an ordinary byte on Linux and is allowed.
pub fn check(name: &str) -> Result<(), Unsafe> {
    if name.is_empty() {
        return Err(Unsafe::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Unsafe::NameTooLong);
    }
    if name.as_bytes().contains(&0) {
        return Err(Unsafe::NulByte);
    }
    if name.starts_with('/') {
        return Err(Unsafe::Absolute);
    }
    for component in name.split('/') {
        match component {
            "" => return Err(Unsafe::EmptyComponent),
            "." | ".." => return Err(Unsafe::DotComponent),
            c if c.len() > MAX_COMPONENT_BYTES => return Err(Unsafe::ComponentTooLong),
            _ => {}
        }
    }
    Ok(())
}

/// Appends `name` to `out`, percent-encoding every byte outside RFC 3986's
/// unreserved set (`A-Z a-z 0-9 - . _ ~`). `/` is encoded too, so a name is
/// always exactly one path segment and the server decodes it back whole.
pub fn push_url_encoded(out: &mut String, name: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// Returns `name` percent-encoded as by [`push_url_encoded`].
pub fn url_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    push_url_encoded(&mut out, name);
    out
}

/// Decodes `%XX` escapes; `None` if an escape is malformed or the result is
/// not UTF-8. `+` is left as it is (paths are not form data).
pub fn url_decode(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = (*bytes.get(i + 1)? as char).to_digit(16)?;
            let lo = (*bytes.get(i + 2)? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A stable 64-bit hash: FNV-1a followed by murmur3's `fmix64` finaliser.
/// Stable across Rust versions and platforms, unlike `DefaultHasher`,
/// because fan-out paths must not move between runs. The finaliser matters:
/// FNV alone leaves the high bits nearly constant for short, similar names
/// such as `file-1`, `file-2`.
pub fn stable_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The two fan-out directory levels for `name`, as `"ab/cd"`: 65,536 leaf
/// directories, so 10^9 files make about 15,000 entries a directory.
pub fn fanout_prefix(name: &str) -> [u8; 5] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let h = stable_hash(name);
    let b = [(h >> 56) as u8, (h >> 48) as u8];
    [
        HEX[(b[0] >> 4) as usize],
        HEX[(b[0] & 15) as usize],
        b'/',
        HEX[(b[1] >> 4) as usize],
        HEX[(b[1] & 15) as usize],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_pass() {
        for name in [
            "a",
            "file-001",
            "dir/sub/file",
            " leading space",
            "trailing space ",
            "100%2F",
            "a\\b",
            "...",
            "..a",
            "é",
            &"x".repeat(255),
        ] {
            assert_eq!(check(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn unsafe_names_are_refused_with_their_reason() {
        let cases: &[(&str, Unsafe)] = &[
            ("", Unsafe::Empty),
            ("/etc/passwd", Unsafe::Absolute),
            ("../x", Unsafe::DotComponent),
            ("a/../b", Unsafe::DotComponent),
            (".", Unsafe::DotComponent),
            ("..", Unsafe::DotComponent),
            ("a/.", Unsafe::DotComponent),
            ("a//b", Unsafe::EmptyComponent),
            ("a/", Unsafe::EmptyComponent),
            ("a\0b", Unsafe::NulByte),
        ];
        for (name, why) in cases {
            assert_eq!(check(name), Err(*why), "{name:?}");
        }
        assert_eq!(check(&"x".repeat(256)), Err(Unsafe::ComponentTooLong));
        assert_eq!(check(&"x/".repeat(3000)), Err(Unsafe::NameTooLong));
    }

    #[test]
    fn url_encoding_round_trips_and_keeps_unreserved() {
        assert_eq!(url_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(
            url_encode("a b/c%2F+#?&;="),
            "a%20b%2Fc%252F%2B%23%3F%26%3B%3D"
        );
        assert_eq!(url_encode("é"), "%C3%A9");
        for name in ["a b", "100%2F", "é/ü", "+#?&;=", " x "] {
            assert_eq!(url_decode(&url_encode(name)).as_deref(), Some(name));
        }
        assert_eq!(url_decode("%zz"), None);
        assert_eq!(url_decode("%4"), None);
    }

    #[test]
    fn fanout_is_stable_and_spread() {
        // Pinned so that a change to the hash, which would move every file of
        // an existing fan-out tree, fails here first.
        assert_eq!(&fanout_prefix("file-0"), b"c7/b3");
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            seen.insert(fanout_prefix(&format!("file-{i}")));
        }
        // 1,000 names in 65,536 buckets collide about 7.6 times on average.
        assert!(seen.len() >= 980, "only {} distinct prefixes", seen.len());
    }
}
