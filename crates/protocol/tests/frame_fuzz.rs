//! A deterministic stand-in for the `frame_decode` fuzz target (see
//! `fuzz/`), run by every `cargo test` on stable Rust: random bytes, valid
//! frames mutated (bit flips, insertions, deletions, overwritten length
//! prefixes) and cut short, fed to `frame::decode` for both directions'
//! messages and for the version frame that opens each direction.
//!
//! What must hold for any input: no panic and no huge allocation; `Ok(None)`
//! only when the buffer holds less than its announced frame; `Ok(Some)`
//! consumes exactly the announced frame, and the message re-encodes to a
//! frame that decodes to the same message (and re-encodes to the same
//! bytes).

use bulkget_protocol::frame::{self, FrameError, MAX_FRAME};
use bulkget_protocol::{Failure, FatalKind, ToCoordinator, ToWorker, Version, WorkerSettings};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// What decoding `input` as a `T` may do. Returns whether a message came out.
fn check<T>(input: &[u8]) -> bool
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    match frame::decode::<T>(input) {
        Ok(None) => {
            let complete = input.len() >= 4
                && input.len() >= 4 + u32::from_le_bytes(input[..4].try_into().unwrap()) as usize;
            assert!(
                !complete,
                "a whole frame was reported as partial: {input:?}"
            );
            false
        }
        Ok(Some((msg, used))) => {
            let len = u32::from_le_bytes(input[..4].try_into().unwrap()) as usize;
            assert_eq!(used, 4 + len, "{input:?}");
            let mut again = Vec::new();
            frame::encode(&msg, &mut again).expect("a decoded message re-encodes");
            let (back, used2) = frame::decode::<T>(&again)
                .expect("a re-encoded frame decodes")
                .expect("a re-encoded frame is whole");
            assert_eq!(used2, again.len());
            assert_eq!(back, msg);
            let mut third = Vec::new();
            frame::encode(&back, &mut third).unwrap();
            assert_eq!(third, again, "encoding is deterministic");
            true
        }
        Err(FrameError::TooLarge(n)) => {
            assert!(n > MAX_FRAME);
            false
        }
        Err(FrameError::Decode(why)) => {
            assert!(!why.is_empty());
            false
        }
        Err(e) => panic!("decode can only fail to decode: {e:?}"),
    }
}

fn samples() -> Vec<Vec<u8>> {
    let mut settings = WorkerSettings::for_test("http://h:1/api", "/out", "/state");
    settings.test_hooks.fail_start_shards = vec![1, 2];
    let to_worker = vec![
        ToWorker::Hello {
            shard: 3,
            generation: 70000,
            settings: Box::new(settings),
        },
        ToWorker::Batch {
            id: u64::MAX,
            names: vec!["a".into(), "é b/c".into(), String::new(), "x".repeat(300)],
        },
        ToWorker::Shutdown { drain: true },
    ];
    let to_coordinator = vec![
        ToCoordinator::Ready,
        ToCoordinator::BatchDone {
            id: 9,
            ok: 255,
            bytes: 1 << 40,
            retries: u32::MAX,
            present: 7,
            failures: vec![
                Failure::new("x", "HTTP 404 Not Found", Some(404)),
                Failure::new("../y", "unsafe name", None),
            ],
        },
        ToCoordinator::Fatal {
            kind: FatalKind::NoSpace,
            reason: "disk full".into(),
        },
    ];
    let mut out = Vec::new();
    let version = Version {
        protocol: 1,
        build: "0.1.0+5b17ed1b0a3afcb1b6466703fe8fdbfd11f4b052".into(),
    };
    let mut buf = Vec::new();
    frame::encode(&version, &mut buf).unwrap();
    out.push(buf);
    for m in &to_worker {
        let mut buf = Vec::new();
        frame::encode(m, &mut buf).unwrap();
        out.push(buf);
    }
    for m in &to_coordinator {
        let mut buf = Vec::new();
        frame::encode(m, &mut buf).unwrap();
        out.push(buf);
    }
    out
}

#[test]
fn decode_survives_random_mutated_and_truncated_frames() {
    let seeds = samples();
    let mut rng = Rng(0x00f2_a3e5_eed5_0001);
    let mut decoded = 0;
    for i in 0..60_000 {
        let mut input: Vec<u8> = match i % 6 {
            // Pure noise with a plausible length prefix.
            0 => {
                let n = rng.below(48);
                let mut v = (n as u32).to_le_bytes().to_vec();
                v.extend((0..n).map(|_| rng.next() as u8));
                v
            }
            // Two valid frames back to back.
            1 => [
                seeds[rng.below(seeds.len())].clone(),
                seeds[rng.below(seeds.len())].clone(),
            ]
            .concat(),
            _ => seeds[rng.below(seeds.len())].clone(),
        };
        for _ in 0..rng.below(4) {
            let at = rng.below(input.len() + 1);
            match rng.below(6) {
                0 if at < input.len() => input[at] ^= 1 << rng.below(8),
                1 if at < input.len() => {
                    input.remove(at);
                }
                2 => input.truncate(at),
                3 => input.insert(at, rng.next() as u8),
                // A payload grown or shrunk under a fixed prefix, or the
                // reverse: the prefix rewritten to the new length.
                4 if input.len() >= 4 => {
                    let len = (input.len() - 4) as u32;
                    input[..4].copy_from_slice(&len.to_le_bytes());
                }
                _ if at < input.len() => input[at] = [0, 0xff, 0xfb, 0xfc, 0xfd][rng.below(5)],
                _ => {}
            }
        }
        decoded += usize::from(check::<ToWorker>(&input));
        decoded += usize::from(check::<ToCoordinator>(&input));
        decoded += usize::from(check::<Version>(&input));
    }
    // The mutations leave enough frames whole that the success path is
    // exercised as well as the error paths.
    assert!(decoded > 5_000, "only {decoded} inputs decoded");
}

#[test]
fn lengths_that_claim_everything_allocate_nothing() {
    // A batch announcing 2^62 names, a string announcing 2^62 bytes: the
    // decoder must fail on the missing bytes, not reserve the claim.
    for payload in [
        // Batch (variant 1), id 0, then a u64 varint length of 2^62.
        vec![1u8, 0, 253, 0, 0, 0, 0, 0, 0, 0, 0x40],
        // Fatal (variant 2), kind Crash (0), reason of length 2^62.
        vec![2u8, 0, 253, 0, 0, 0, 0, 0, 0, 0, 0x40],
    ] {
        let mut input = (payload.len() as u32).to_le_bytes().to_vec();
        input.extend_from_slice(&payload);
        assert!(!check::<ToWorker>(&input));
        assert!(!check::<ToCoordinator>(&input));
    }
}

#[test]
fn the_fuzz_seed_corpus_still_decodes() {
    // `fuzz/seeds/frame_decode` is hand-written bincode; if the messages
    // change, the seeds must change with them or the fuzzer starts from
    // noise.
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/frame_decode");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let to_worker = matches!(
            name.as_str(),
            "hello" | "batch" | "shutdown" | "two" | "pace"
        );
        let ok = if name == "version" {
            check::<Version>(&bytes)
        } else if to_worker {
            check::<ToWorker>(&bytes)
        } else {
            check::<ToCoordinator>(&bytes)
        };
        assert!(ok, "{name} does not decode");
        seen += 1;
    }
    assert_eq!(seen, 11);
}
