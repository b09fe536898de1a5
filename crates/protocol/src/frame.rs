//! Length-prefixed bincode frames.
//!
//! A frame is a 4-byte little-endian payload length followed by the payload,
//! a bincode 2 (standard configuration) encoding of one message. The length
//! is checked against [`MAX_FRAME`] before anything is allocated, so a
//! corrupt or hostile peer cannot make the reader allocate gigabytes.
//!
//! A clean end of stream between frames is the end of the conversation
//! (`Ok(None)`); an end of stream inside a frame is an error.

use serde::{de::DeserializeOwned, Serialize};
use std::fmt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest payload accepted: far above any real batch (a batch of
/// 10,000 names of 255 bytes is 2.6 MB) and far below a harmful allocation.
/// No frame a run sends can be larger: batches are cut by
/// [`MAX_BATCH_COST`].
pub const MAX_FRAME: usize = 64 << 20;

/// The most a batch's names may cost in all ([`batch_cost`]). Half of
/// [`MAX_FRAME`], so every frame about a batch fits with room to spare: the
/// `Batch` that sends it, and the `BatchDone` or `BatchStalled` that report
/// every one of its names failed with a reason of the longest length kept.
pub const MAX_BATCH_COST: usize = MAX_FRAME / 2;

/// What a name costs in a batch's largest frame: its bytes, a reason of
/// [`crate::MAX_REASON_BYTES`], and a generous 32 bytes for the lengths,
/// the status and the position in `waiting` that bincode adds (at most 17).
/// The scheduler cuts batches so their names cost at most
/// [`MAX_BATCH_COST`], whatever `--batch-size` says.
pub fn batch_cost(name: &str) -> usize {
    name.len() + crate::MAX_REASON_BYTES + 32
}

const HEADER: usize = 4;

/// What can go wrong reading or writing a frame.
#[derive(Debug)]
pub enum FrameError {
    Io(std::io::Error),
    /// The peer announced a payload over [`MAX_FRAME`].
    TooLarge(usize),
    /// The stream ended inside a frame.
    Truncated,
    /// The payload is not a valid message.
    Decode(String),
    Encode(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "socket error: {e}"),
            FrameError::TooLarge(n) => {
                write!(f, "frame of {n} bytes is over the {MAX_FRAME}-byte limit")
            }
            FrameError::Truncated => write!(f, "stream ended inside a frame"),
            FrameError::Decode(e) => write!(f, "invalid frame: {e}"),
            FrameError::Encode(e) => write!(f, "cannot encode frame: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// bincode's standard configuration with a decoding limit. The limit is
/// what stops a length *inside* the payload from allocating: a string or a
/// list announces its length before its bytes, and without a limit bincode
/// reserves what is announced (a 20-byte frame could ask for 2^62 bytes and
/// abort the process). With it, everything one frame's decoding reserves
/// adds up to at most [`MAX_FRAME`].
fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME>,
> {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Appends one frame holding `msg` to `out`.
pub fn encode<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    bincode::serde::encode_into_std_write(msg, out, config())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - start - HEADER;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(FrameError::TooLarge(len));
    }
    out[start..start + HEADER].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Appends a frame holding `ToWorker::Batch { id, names }` without owning
/// the names. The coordinator keeps every unacknowledged batch (to resend it
/// after a crash), so borrowing here saves a copy of every name.
pub fn encode_batch(
    id: crate::BatchId,
    names: &crate::Names,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    encode(&ToWorkerRef::Batch { id, names }, out)
}

/// A borrowed mirror of [`crate::ToWorker`]. Serde encodes an enum variant
/// by its index, so the variants must stay in the same order as in
/// `ToWorker`; the `borrowed_batch_encodes_like_owned` test holds that.
#[derive(Serialize)]
enum ToWorkerRef<'a> {
    #[allow(dead_code)]
    Hello,
    Batch {
        id: crate::BatchId,
        names: &'a crate::Names,
    },
}

/// Decodes the first frame in `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame, and
/// `Ok(Some((msg, used)))` with the number of bytes the frame took. This is
/// the one parser of untrusted socket bytes; the fuzz target calls it.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[..HEADER].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < HEADER + len {
        return Ok(None);
    }
    let payload = &buf[HEADER..HEADER + len];
    let (msg, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != len {
        return Err(FrameError::Decode(format!(
            "{} trailing bytes after the message",
            len - used
        )));
    }
    Ok(Some((msg, HEADER + len)))
}

/// Reads frames from a byte stream, buffering as mini-redis's `Connection`
/// does: read into a buffer, decode whole frames, keep the rest.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Start of the undecoded bytes in `buf`; compacted lazily so that a
    /// burst of small frames costs one copy, not one per frame.
    start: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::with_capacity(64 << 10),
            start: 0,
        }
    }

    /// The next message, or `Ok(None)` on a clean end of stream.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        loop {
            if let Some((msg, used)) = decode(&self.buf[self.start..])? {
                self.start += used;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return Ok(Some(msg));
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            // Read straight into the vector's spare capacity, growing it
            // only as far as the frame being read needs.
            if self.buf.capacity() - self.buf.len() < 16 << 10 {
                self.buf.reserve(64 << 10);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }
}

/// Writes frames to a byte stream.
pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buf: Vec::with_capacity(16 << 10),
        }
    }

    /// Encodes and writes one message; flushed before returning.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        self.buf.clear();
        encode(msg, &mut self.buf)?;
        self.inner.write_all(&self.buf).await?;
        self.inner.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn samples() -> Vec<ToWorker> {
        vec![
            ToWorker::Hello {
                shard: 3,
                generation: 2,
                settings: Box::new(WorkerSettings::for_test("http://h:1/api", "/out", "/state")),
            },
            ToWorker::Batch {
                id: 7,
                names: vec!["a".into(), "é b/c".into(), String::new()],
            },
            ToWorker::Shutdown { drain: true },
        ]
    }

    #[test]
    fn round_trip_every_message() {
        let mut buf = Vec::new();
        for m in samples() {
            encode(&m, &mut buf).unwrap();
        }
        let done = ToCoordinator::BatchDone {
            id: 9,
            ok: 1,
            bytes: 100,
            retries: 3,
            present: 2,
            failures: vec![Failure::new("x", "HTTP 404", Some(404))],
        };
        let stalled = ToCoordinator::BatchStalled {
            id: 9,
            ok: 250,
            bytes: 25_000,
            retries: 6,
            present: 0,
            failures: vec![],
            waiting: vec![3, 17, 255],
        };
        for msg in [done, stalled] {
            let mut buf2 = Vec::new();
            encode(&msg, &mut buf2).unwrap();
            let (back, used): (ToCoordinator, usize) = decode(&buf2).unwrap().unwrap();
            assert_eq!(back, msg);
            assert_eq!(used, buf2.len());
        }

        let mut at = 0;
        for m in samples() {
            let (back, used): (ToWorker, usize) = decode(&buf[at..]).unwrap().unwrap();
            assert_eq!(back, m);
            at += used;
        }
        assert_eq!(at, buf.len());
    }

    #[test]
    fn the_version_frame_has_the_same_layout_in_every_build() {
        // Peers of different builds must read each other's version, so its
        // bytes are pinned: a u32 varint, then a length-prefixed string.
        let mut buf = Vec::new();
        let v = Version {
            protocol: 1,
            build: "0.1.0+ab".into(),
        };
        encode(&v, &mut buf).unwrap();
        assert_eq!(buf, b"\x0a\0\0\0\x01\x080.1.0+ab");
        let (back, used): (Version, usize) = decode(&buf).unwrap().unwrap();
        assert_eq!((back, used), (v, buf.len()));
    }

    #[test]
    fn borrowed_batch_encodes_like_owned() {
        let names = vec!["a".to_string(), "b c".to_string()];
        let mut owned = Vec::new();
        encode(
            &ToWorker::Batch {
                id: 5,
                names: names.clone(),
            },
            &mut owned,
        )
        .unwrap();
        let mut borrowed = Vec::new();
        encode_batch(5, &names.iter().collect(), &mut borrowed).unwrap();
        assert_eq!(owned, borrowed);
    }

    /// The frames about a batch as large as [`MAX_BATCH_COST`] allows fit a
    /// frame, even when every name fails with a reason cut to the longest
    /// kept: 300 KB reasons (a hostile `Location`) and `--batch-size 20000`
    /// once made a `BatchDone` over the limit.
    #[test]
    fn a_batch_cut_by_cost_fits_every_frame_about_it() {
        for name_len in [1, 100, 3840] {
            let mut names = crate::Names::new();
            let mut cost = 0;
            let mut i = 0usize;
            loop {
                let name = format!("{i:0name_len$}");
                if cost + batch_cost(&name) > MAX_BATCH_COST {
                    break;
                }
                cost += batch_cost(&name);
                names.push(&name);
                i += 1;
            }
            let mut buf = Vec::new();
            encode_batch(u64::MAX, &names, &mut buf).unwrap();
            assert!(buf.len() <= MAX_FRAME);
            // A reason cut to the longest kept.
            let reason = Failure::new("", "r".repeat(300_000), None).reason;
            assert_eq!(reason.len(), crate::MAX_REASON_BYTES);
            let failures: Vec<Failure> = names
                .iter()
                .map(|n| Failure::new(n, reason.clone(), Some(u16::MAX)))
                .collect();
            let done = ToCoordinator::BatchDone {
                id: u64::MAX,
                ok: u32::MAX,
                bytes: u64::MAX,
                retries: u32::MAX,
                present: u32::MAX,
                failures: failures.clone(),
            };
            let stalled = ToCoordinator::BatchStalled {
                id: u64::MAX,
                ok: u32::MAX,
                bytes: u64::MAX,
                retries: u32::MAX,
                present: u32::MAX,
                failures,
                waiting: (0..names.len() as u32).map(|w| w | 1 << 31).collect(),
            };
            for msg in [done, stalled] {
                buf.clear();
                encode(&msg, &mut buf).unwrap();
                assert!(
                    buf.len() <= MAX_BATCH_COST + 64,
                    "{} bytes for names of {name_len}",
                    buf.len()
                );
            }
        }
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut buf = Vec::new();
        encode(&samples()[1], &mut buf).unwrap();
        for cut in 0..buf.len() {
            assert!(
                decode::<ToWorker>(&buf[..cut]).unwrap().is_none(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let buf = (u32::MAX).to_le_bytes();
        assert!(matches!(
            decode::<ToWorker>(&buf),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn lengths_inside_a_payload_cannot_reserve_more_than_a_frame() {
        // Found by the frame_decode fuzz stand-in: `Fatal` (variant 2) with
        // kind 0 and a reason announcing 2^62 bytes made bincode reserve
        // them, and the process aborted. Now it is a decode error.
        let payload = [2u8, 0, 253, 0, 0, 0, 0, 0, 0, 0, 0x40];
        let mut buf = (payload.len() as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(&payload);
        assert!(matches!(
            decode::<ToCoordinator>(&buf),
            Err(FrameError::Decode(_))
        ));
        // A batch (variant 1) whose one name announces 2^40 bytes.
        let payload = [1u8, 0, 1, 253, 0, 0, 0, 0, 0, 1, 0, 0];
        let mut buf = (payload.len() as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(&payload);
        assert!(matches!(
            decode::<ToWorker>(&buf),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn garbage_payload_is_an_error_not_a_panic() {
        let mut buf = 3u32.to_le_bytes().to_vec();
        buf.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            decode::<ToWorker>(&buf),
            Err(FrameError::Decode(_))
        ));
    }

    #[tokio::test]
    async fn stream_eof_between_frames_is_clean_inside_is_error() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let mut w = FrameWriter::new(a);
        for m in samples() {
            w.send(&m).await.unwrap();
        }
        drop(w);
        let mut r = FrameReader::new(b);
        for m in samples() {
            assert_eq!(r.next::<ToWorker>().await.unwrap(), Some(m));
        }
        assert_eq!(r.next::<ToWorker>().await.unwrap(), None);

        let (mut a, b) = tokio::net::UnixStream::pair().unwrap();
        let mut buf = Vec::new();
        encode(&samples()[1], &mut buf).unwrap();
        a.write_all(&buf[..buf.len() - 1]).await.unwrap();
        drop(a);
        let mut r = FrameReader::new(b);
        assert!(matches!(
            r.next::<ToWorker>().await,
            Err(FrameError::Truncated)
        ));
    }
}
