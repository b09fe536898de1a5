//! Listing markers: opaque-looking, unforgeable enough, free to check.
//!
//! A marker is 24 lowercase hex digits: the page number XOR a key derived
//! from the seed, scrambled by splitmix64's finaliser (a bijection, so it can
//! be undone; 16 digits), then a 32-bit check value of the page number under
//! a second key (8 digits). Decoding unscrambles and recomputes the check, so a forged, mistyped or other-seed marker is refused without the
//! server remembering anything. A client must treat markers as opaque; this
//! shape only makes that easy to get wrong in a visible way.

use crate::content::{mix64, GOLDEN};

/// Encodes and checks the markers of one dataset.
#[derive(Debug, Clone)]
pub struct Markers {
    key: u64,
    check_key: u64,
    pages: u64,
}

impl Markers {
    /// Markers for a listing of `pages` pages under `seed`.
    pub fn new(seed: u64, pages: u64) -> Markers {
        Markers {
            key: mix64(seed ^ 0x6d61_726b_6572_2d6b),
            check_key: mix64(seed.wrapping_add(GOLDEN) ^ 0x6368_6563_6b2d_6b79),
            pages,
        }
    }

    fn check(&self, page: u64) -> u32 {
        (mix64(page ^ self.check_key) >> 32) as u32
    }

    /// The marker that asks for `page`.
    pub fn encode(&self, page: u64) -> String {
        format!("{:016x}{:08x}", mix64(page ^ self.key), self.check(page))
    }

    /// The page `marker` asks for, or `None` if the server never handed it
    /// out (malformed, forged, from another seed or past the last page).
    pub fn decode(&self, marker: &str) -> Option<u64> {
        let bytes = marker.as_bytes();
        if bytes.len() != 24 || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let page = unmix64(u64::from_str_radix(&marker[..16], 16).ok()?) ^ self.key;
        let check = u32::from_str_radix(&marker[16..], 16).ok()?;
        (check == self.check(page) && page < self.pages).then_some(page)
    }
}

/// The multiplicative inverse of an odd `a` modulo 2^64, by Newton's
/// iteration (each step doubles the number of correct low bits).
const fn inverse(a: u64) -> u64 {
    let mut x = a; // Correct to 3 bits for any odd a.
    let mut i = 0;
    while i < 5 {
        x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
        i += 1;
    }
    x
}

/// The inverse of [`mix64`].
fn unmix64(mut z: u64) -> u64 {
    const INV1: u64 = inverse(0xBF58_476D_1CE4_E5B9);
    const INV2: u64 = inverse(0x94D0_49BB_1331_11EB);
    z ^= (z >> 31) ^ (z >> 62);
    z = z.wrapping_mul(INV2);
    z ^= (z >> 27) ^ (z >> 54);
    z = z.wrapping_mul(INV1);
    z ^ (z >> 30) ^ (z >> 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmix_inverts_mix() {
        for x in [0, 1, 2, u64::MAX, 0x1234_5678_9abc_def0, GOLDEN] {
            assert_eq!(unmix64(mix64(x)), x);
        }
    }

    #[test]
    fn markers_round_trip() {
        let m = Markers::new(7, 1_000_000);
        for page in [0, 1, 2, 999, 123_456, 999_999] {
            let marker = m.encode(page);
            assert_eq!(marker.len(), 24);
            assert_eq!(m.decode(&marker), Some(page), "{marker}");
        }
    }

    #[test]
    fn forged_markers_are_refused() {
        let m = Markers::new(0, 100);
        let good = m.encode(5);
        assert_eq!(m.decode(""), None);
        assert_eq!(m.decode("5"), None);
        assert_eq!(m.decode(&good.to_uppercase()), None);
        assert_eq!(m.decode(&good[..23]), None);
        assert_eq!(m.decode(&format!("{good}0")), None);
        // Changing any one digit breaks the check.
        for i in 0..good.len() {
            let mut forged = good.clone().into_bytes();
            forged[i] = if forged[i] == b'0' { b'1' } else { b'0' };
            let forged = String::from_utf8(forged).unwrap();
            assert_eq!(m.decode(&forged), None, "{forged}");
        }
        // A genuine marker past the last page, or from another seed, is
        // refused too.
        assert_eq!(m.decode(&Markers::new(0, 1000).encode(100)), None);
        assert_eq!(m.decode(&Markers::new(1, 100).encode(5)), None);
    }

    #[test]
    fn markers_do_not_look_like_page_numbers() {
        let m = Markers::new(0, 10);
        let (a, b) = (m.encode(1), m.encode(2));
        assert_ne!(a[..16], b[..16]);
        assert_ne!(a[16..], b[16..]);
    }
}
