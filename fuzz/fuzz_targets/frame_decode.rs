//! `frame::decode` on arbitrary bytes, as both directions' message types
//! and as the version frame that opens each direction:
//! the decoder of the bytes that arrive on a worker's or the coordinator's
//! socket.
//!
//! Holds: no panic, no abort, no huge allocation; `Ok(None)` only when the
//! buffer holds less than the announced frame; a decoded message consumed
//! exactly its frame, re-encodes, and the re-encoding decodes to the same
//! message and re-encodes to the same bytes.
#![no_main]

use bulkget_protocol::frame::{self, FrameError, MAX_FRAME};
use bulkget_protocol::{ToCoordinator, ToWorker, Version};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    let announced = data
        .get(..4)
        .map(|h| u32::from_le_bytes(h.try_into().unwrap()) as usize);
    match frame::decode::<T>(data) {
        Ok(None) => {
            assert!(announced.is_none_or(|len| data.len() < 4 + len));
        }
        Ok(Some((msg, used))) => {
            assert_eq!(Some(used), announced.map(|len| 4 + len));
            let mut again = Vec::new();
            frame::encode(&msg, &mut again).expect("a decoded message re-encodes");
            let (back, used2) = frame::decode::<T>(&again)
                .expect("a re-encoded frame decodes")
                .expect("a re-encoded frame is whole");
            assert_eq!(used2, again.len());
            assert_eq!(back, msg);
            let mut third = Vec::new();
            frame::encode(&back, &mut third).unwrap();
            assert_eq!(third, again);
        }
        Err(FrameError::TooLarge(n)) => assert!(n > MAX_FRAME),
        Err(FrameError::Decode(why)) => assert!(!why.is_empty()),
        Err(e) => panic!("decode can only fail to decode: {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    check::<ToWorker>(data);
    check::<ToCoordinator>(data);
    check::<Version>(data);
});
