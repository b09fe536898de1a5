//! `STATE/checkpoint.json`: one serde type family, used by the coordinator
//! that writes the file (its scheduler records into these types) and by
//! every reader (`bulkget status`, scripts), and the one function that
//! parses the file, versions included.
//!
//! The coordinator writes it durably (fsync of the file and its directory)
//! every `--checkpoint-interval` seconds and at exit, after `failed.jsonl`
//! and the output file system are synced. `docs/STATS.md` documents every
//! field.
//!
//! Unlike the stats files, the checkpoint decides what a resume skips, so
//! its required fields are required: a file without them is damaged, not
//! old. The versioning rule is the schema's ([`crate::schema`]).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The version of `checkpoint.json` this bulkget writes. Version 2 added
/// the fingerprint of each page after the position (`done_after`), so a
/// resume can tell a page the server lists differently; version 1
/// checkpoints are still read (see [`parse`]).
pub const CHECKPOINT_VERSION: u32 = 2;

/// Where listing starts or resumes. On the wire, serde's external tagging:
/// `"Start"`, `{"Marker": "..."}` or `"Done"`.
///
/// No `Unknown` variant: a position is only ever read from a file whose
/// version this bulkget knows, where every position is one of these, and a
/// resume must not guess where to list from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListPosition {
    /// At `GET /list`: nothing was fully acknowledged yet.
    Start,
    /// At `GET /list?next-marker=MARKER`: the earliest page not fully
    /// acknowledged.
    Marker(String),
    /// After the last page: nothing is left to list.
    Done,
}

/// Counters. `files_ok`, `files_failed` and `bytes` count every
/// acknowledgement up to the checkpoint, wherever its page is;
/// `names_listed`, `names_excluded` and `pages_done` count the pages
/// completed before the position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub files_ok: u64,
    pub files_failed: u64,
    pub bytes: u64,
    pub names_listed: u64,
    pub pages_done: u64,
    /// Retried attempts the workers reported with their acknowledgements.
    /// Absent from older checkpoints.
    #[serde(default)]
    pub retries: u64,
    /// Names a refresh found in the sink already and did not fetch; they
    /// are in neither `files_ok` nor `files_failed`. Absent from older
    /// checkpoints.
    #[serde(default)]
    pub files_present: u64,
    /// Names the `--include` and `--exclude` filters left out (not in
    /// `names_listed`). Absent from older checkpoints.
    #[serde(default)]
    pub names_excluded: u64,
}

/// Which names of the pages from a checkpoint's position on are done, so a
/// resume skips them. Offsets count pages from the position's page
/// (offset 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneAfter {
    /// Pages whose every name is done, as runs of consecutive offsets.
    pub complete: Vec<CompleteRun>,
    /// Pages partly done.
    pub partial: Vec<PartialPage>,
}

impl DoneAfter {
    /// Pages after the position whose every name is done.
    pub fn complete_pages(&self) -> u64 {
        self.complete
            .iter()
            .map(|r| r.fingerprints.len() as u64)
            .sum()
    }

    /// The pages this records, complete or partly done.
    pub fn pages(&self) -> u64 {
        self.complete_pages() + self.partial.len() as u64
    }
}

/// Consecutive complete pages: offsets `first`, `first + 1`, ..., one per
/// fingerprint, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompleteRun {
    pub first: u64,
    pub fingerprints: Vec<PageFingerprint>,
}

/// A partly done page: its length and fingerprint when listed, and a bitmap
/// of done names (name `i` is bit `i % 64` of word `i / 64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialPage {
    /// Pages after the position's page (0: that page itself).
    pub offset: u64,
    /// Names on the page when it was listed.
    pub len: u32,
    pub fingerprint: PageFingerprint,
    pub done: Vec<u64>,
}

/// A fingerprint of the names a page listed, in order (repeats and unsafe
/// names included), so that a resume can tell whether the server lists a
/// page as it did before. 64 bits: two different pages match with
/// probability about 2^-64. Written as 16 hex digits, which every JSON
/// reader keeps exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageFingerprint(pub u64);

impl Serialize for PageFingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{:016x}", self.0))
    }
}

impl<'de> Deserialize<'de> for PageFingerprint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match u64::from_str_radix(&text, 16) {
            Ok(v) if text.len() == 16 => Ok(PageFingerprint(v)),
            _ => Err(serde::de::Error::custom(format!(
                "page fingerprint {text:?} is not 16 hex digits"
            ))),
        }
    }
}

/// `checkpoint.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub schema_version: u32,
    /// Where the next run lists from: the earliest page not fully
    /// acknowledged.
    pub position: ListPosition,
    /// Counters (see [`Totals`]).
    pub totals: Totals,
    /// Which names from `position` on are done already; a resume skips them.
    #[serde(default)]
    pub done_after: DoneAfter,
    /// The length in bytes of `failed.jsonl` that belongs to the
    /// acknowledgements counted; a resume truncates the file to it.
    pub failed_len: u64,
    /// The listing is done and every file acknowledged: nothing to resume.
    pub complete: bool,
    /// The run is a refresh (`bulkget fetch --refresh`): it fetches only
    /// the names not in the sink yet, and a resume of it does the same.
    /// Absent from older checkpoints: not a refresh.
    #[serde(default)]
    pub refresh: bool,
    /// When the checkpoint was taken, RFC 3339 UTC with milliseconds.
    pub updated_at: String,
}

/// A checkpoint as [`parse`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// In this version's terms. `schema_version` is the file's.
    pub checkpoint: Checkpoint,
    /// Pages after the position that an older file recorded as done but
    /// that this version cannot trust (version 1 did not record what they
    /// listed): they are left out of `done_after`, so a resume fetches them
    /// again.
    pub pages_dropped: u64,
}

/// Why [`parse`] refused a checkpoint.
#[derive(Debug)]
pub enum ParseError {
    /// Not a checkpoint of a version this bulkget knows how to read.
    Damaged(serde_json::Error),
    /// Written by a newer bulkget: its meaning may have changed, so it is
    /// not guessed at.
    Newer(u32),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Damaged(e) => write!(f, "{e}"),
            ParseError::Newer(v) => write!(
                f,
                "checkpoint version {v}, newer than this bulkget understands \
                 ({CHECKPOINT_VERSION})"
            ),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses `checkpoint.json`.
///
/// A version 1 checkpoint recorded which pages after its position were done
/// but not what they listed, so a resume could not tell a page the server
/// now lists differently and would skip names it never fetched. Such a
/// checkpoint is read without its `done_after` (counted in
/// [`Parsed::pages_dropped`]): every page from its position on is listed
/// and fetched again. A checkpoint of a newer version is refused.
pub fn parse(bytes: &[u8]) -> Result<Parsed, ParseError> {
    #[derive(Deserialize)]
    struct Version {
        schema_version: u32,
    }
    /// The fields of version 1 that version 2 kept as they were.
    #[derive(Deserialize)]
    struct CheckpointV1 {
        position: ListPosition,
        totals: Totals,
        #[serde(default)]
        done_after: DoneAfterV1,
        failed_len: u64,
        complete: bool,
        updated_at: String,
    }
    #[derive(Deserialize, Default)]
    struct DoneAfterV1 {
        complete: Vec<(u64, u64)>,
        partial: Vec<serde::de::IgnoredAny>,
    }
    let version = serde_json::from_slice::<Version>(bytes).map_err(ParseError::Damaged)?;
    match version.schema_version {
        CHECKPOINT_VERSION => Ok(Parsed {
            checkpoint: serde_json::from_slice(bytes).map_err(ParseError::Damaged)?,
            pages_dropped: 0,
        }),
        1 => {
            let old: CheckpointV1 = serde_json::from_slice(bytes).map_err(ParseError::Damaged)?;
            let pages_dropped = if old.complete {
                0
            } else {
                old.done_after
                    .complete
                    .iter()
                    .map(|&(a, b)| b.saturating_sub(a))
                    .sum::<u64>()
                    + old.done_after.partial.len() as u64
            };
            Ok(Parsed {
                checkpoint: Checkpoint {
                    schema_version: 1,
                    position: old.position,
                    totals: old.totals,
                    done_after: DoneAfter::default(),
                    failed_len: old.failed_len,
                    complete: old.complete,
                    refresh: false,
                    updated_at: old.updated_at,
                },
                pages_dropped,
            })
        }
        newer => Err(ParseError::Newer(newer)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_externally_tagged() {
        let p = |json: &str| serde_json::from_str::<ListPosition>(json).unwrap();
        assert_eq!(p(r#""Start""#), ListPosition::Start);
        assert_eq!(p(r#""Done""#), ListPosition::Done);
        assert_eq!(p(r#"{"Marker":"m-1"}"#), ListPosition::Marker("m-1".into()));
        assert!(serde_json::from_str::<ListPosition>(r#""Elsewhere""#).is_err());
    }

    #[test]
    fn versions() {
        let v2 = br#"{"schema_version":2,"position":{"Marker":"x"},"totals":{"files_ok":5,
            "files_failed":1,"bytes":500,"names_listed":6,"pages_done":2},
            "done_after":{"complete":[{"first":1,"fingerprints":["00000000000000aa",
            "00000000000000bb"]}],"partial":[{"offset":0,"len":10,
            "fingerprint":"00000000000000cc","done":[1]}]},
            "failed_len":40,"complete":false,"updated_at":"t"}"#;
        let p = parse(v2).unwrap();
        assert_eq!(p.pages_dropped, 0);
        assert_eq!(p.checkpoint.totals.retries, 0, "absent: zero");
        assert_eq!(p.checkpoint.done_after.complete_pages(), 2);
        assert_eq!(p.checkpoint.done_after.pages(), 3);
        assert_eq!(
            p.checkpoint.done_after.partial[0].fingerprint,
            PageFingerprint(0xcc)
        );
        let back = serde_json::to_value(&p.checkpoint).unwrap();
        let orig: serde_json::Value = serde_json::from_slice(v2).unwrap();
        assert_eq!(back["done_after"], orig["done_after"]);

        let v1 = br#"{"schema_version":1,"position":"Start","totals":{"files_ok":5,
            "files_failed":0,"bytes":5,"names_listed":0,"pages_done":0},
            "done_after":{"complete":[[1,3]],"partial":[{"offset":0,"len":3,"done":[5]}]},
            "failed_len":0,"complete":false,"updated_at":"t"}"#;
        let p = parse(v1).unwrap();
        assert_eq!(p.pages_dropped, 3);
        assert_eq!(p.checkpoint.schema_version, 1);
        assert_eq!(p.checkpoint.done_after, DoneAfter::default());

        assert!(matches!(
            parse(br#"{"schema_version":3}"#),
            Err(ParseError::Newer(3))
        ));
        assert!(matches!(
            parse(br#"{"schema_version":2,"position":"Start"}"#),
            Err(ParseError::Damaged(_))
        ));
        assert!(matches!(
            parse(
                br#"{"schema_version":2,"position":{"Marker":"m"},"totals":{"files_ok":0,
                "files_failed":0,"bytes":0,"names_listed":0,"pages_done":0},
                "done_after":{"complete":[],"partial":[{"offset":0,"len":1,
                "fingerprint":"xyz","done":[]}]},"failed_len":0,"complete":false,
                "updated_at":"t"}"#
            ),
            Err(ParseError::Damaged(_))
        ));
    }
}
