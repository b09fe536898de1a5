//! Names packed into one buffer.

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A list of names kept as one string and the end of each name in it.
///
/// A name costs its bytes and four more, where in a `Vec<String>` it costs
/// a 24-byte `String` and a heap block of at least 32 bytes besides. The
/// coordinator keeps list pages and the batches cut from them this way, so a
/// page of 2,000,000 short names takes about its own size in memory instead
/// of four times as much (ARCHITECTURE.md, "Memory").
///
/// It encodes as a sequence of strings, exactly like a `Vec<String>`, so a
/// batch the coordinator sends as `Names` a worker decodes as `Vec<String>`.
/// The names of one list hold at most 4 GiB in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    text: String,
    /// `ends[i]` is where name `i` ends in `text`; it starts where name
    /// `i - 1` ends.
    ends: Vec<u32>,
}

impl Names {
    pub fn new() -> Names {
        Names::default()
    }

    /// Room for `names` names of `bytes` bytes in all.
    pub fn with_capacity(names: usize, bytes: usize) -> Names {
        Names {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(names),
        }
    }

    /// Appends `name`, or says that the list would go over 4 GiB.
    pub fn try_push(&mut self, name: &str) -> Result<(), TooLong> {
        let end = u32::try_from(self.text.len() + name.len()).map_err(|_| TooLong)?;
        self.text.push_str(name);
        self.ends.push(end);
        Ok(())
    }

    /// Appends `name`.
    ///
    /// # Panics
    /// If the list would go over 4 GiB: callers bound what they push (a
    /// batch by `MAX_BATCH_COST`).
    pub fn push(&mut self, name: &str) {
        self.try_push(name).expect("a list of names over 4 GiB");
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes of every name together.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Name `i`.
    ///
    /// # Panics
    /// If `i` is out of range, like a slice.
    pub fn get(&self, i: usize) -> &str {
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize,
        };
        &self.text[start..self.ends[i] as usize]
    }

    /// The names in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(move |i| self.get(i))
    }

    /// Empties the list, keeping its memory.
    pub fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }
}

impl std::ops::Index<usize> for Names {
    type Output = str;
    fn index(&self, i: usize) -> &str {
        self.get(i)
    }
}

impl<S: AsRef<str>> FromIterator<S> for Names {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Names {
        let mut names = Names::new();
        for name in iter {
            names.push(name.as_ref());
        }
        names
    }
}

/// A list of names would hold over 4 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

impl fmt::Display for TooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("names of over 4 GiB in all")
    }
}

impl std::error::Error for TooLong {}

impl Serialize for Names {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Names {
    /// Reads a sequence of strings straight into the buffer: no `String` is
    /// allocated per name.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Names, D::Error> {
        struct SeqVisitor;
        impl<'de> Visitor<'de> for SeqVisitor {
            type Value = Names;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Names, A::Error> {
                // A hint from the input is not trusted for more than a little.
                let mut names = Names::with_capacity(seq.size_hint().unwrap_or(0).min(4096), 0);
                while seq.next_element_seed(Append(&mut names))?.is_some() {}
                Ok(names)
            }
        }
        deserializer.deserialize_seq(SeqVisitor)
    }
}

/// Deserializes one string onto the end of a [`Names`].
struct Append<'a>(&'a mut Names);

impl<'de> DeserializeSeed<'de> for Append<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Append<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.try_push(v).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_their_order_and_bytes() {
        let list = ["a", "", "é b/c", "x"];
        let names: Names = list.iter().collect();
        assert_eq!(names.len(), 4);
        assert_eq!(names.iter().collect::<Vec<_>>(), list);
        assert_eq!(&names[2], "é b/c");
        assert_eq!(names.text_len(), 1 + 2 + 4 + 1);
        assert!(Names::new().is_empty());
    }

    #[test]
    fn names_encode_like_a_vec_of_strings() {
        let list = vec!["a".to_string(), String::new(), "é".repeat(200)];
        let names: Names = list.iter().collect();
        let config = bincode::config::standard();
        let packed = bincode::serde::encode_to_vec(&names, config).unwrap();
        assert_eq!(
            packed,
            bincode::serde::encode_to_vec(&list, config).unwrap()
        );
        let (back, _): (Names, usize) = bincode::serde::decode_from_slice(&packed, config).unwrap();
        assert_eq!(back, names);
    }
}
