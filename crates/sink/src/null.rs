//! The null sink: keeps nothing, so a benchmark measures the engine alone.

use crate::{PutError, Sink};

/// Counts what it is given and stores nothing.
///
/// It does not check names either: it stands for a sink that costs nothing,
/// and the name rules are measured with the sinks that need them.
#[derive(Debug, Default, Clone)]
pub struct NullSink {
    files: u64,
    bytes: u64,
}

impl NullSink {
    /// A sink that has been given nothing yet.
    pub fn new() -> NullSink {
        NullSink::default()
    }

    /// How many files `put` was given.
    pub fn files(&self) -> u64 {
        self.files
    }

    /// How many body bytes `put` was given.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Sink for NullSink {
    fn put(&mut self, _name: &str, body: &[u8]) -> Result<(), PutError> {
        self.files += 1;
        self.bytes += body.len() as u64;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), PutError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_counts() {
        let mut sink = NullSink::new();
        sink.put("a", b"123").unwrap();
        sink.put("b", b"45").unwrap();
        sink.commit().unwrap();
        assert_eq!((sink.files(), sink.bytes()), (2, 5));
    }
}
