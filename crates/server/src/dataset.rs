//! The synthetic dataset: names, pages and what each name serves.
//!
//! Nothing here is stored per name. A name is computed from its index, and a
//! requested name is resolved by parsing the index back out of it and
//! regenerating the name to compare, so lookups are O(1) and memory does not
//! grow with `--files`.
//!
//! * Plain names are `file-{i:010}` (`file-0000000042`).
//! * Tricky names (`--tricky`) come in groups of [`TRICKY_VARIANTS`]: name
//!   `i` is variant `i % 18` of group `g = i / 18`, and every variant embeds
//!   `g` as the only run of ten or more ASCII digits (`{g:010}`). A lookup
//!   reads that run and compares the name with the 18 variants of group `g`.
//! * With `--listing-variant V` (V > 0), the pages from
//!   `--listing-variant-page` on list other names: dataset name `i` there is
//!   spelled as name `i + V * files` would be, so the listing changed
//!   between two runs as a real service's may, with the same markers and
//!   page lengths. A lookup maps such a spelling back to `i`.
//! * Extra names, listed after the dataset names of their page and not
//!   counted in `--files`: the hostile names, the `--extra-name`s and the `--oversize-name`,
//!   `--liar-name` and `--offhost-redirect-name` on page 0, and with
//!   `--list-fault huge` the names `huge-{j:07}`, `j < 2,000,000`, on the
//!   fault page. Extra names win over dataset names in a lookup.

use crate::args::{ListFault, ServerArgs};
use crate::content::content;
use crate::faults::{FaultPlan, NameFaults};
use crate::markers::Markers;

/// Tricky names come in groups of this many variants.
pub const TRICKY_VARIANTS: u64 = 18;

/// Extra names a `--list-fault huge` page lists.
pub const HUGE_EXTRA_NAMES: u64 = 2_000_000;

/// The unsafe names `--hostile-names` lists on page 0, in listing order.
/// All are served like any name; a careful client writes none of them except
/// `..\win`, which is an odd but safe name on Linux.
pub fn hostile_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "../escape",
        "../../etc/passwd-x",
        "/abs/path",
        "a/../../b",
        "a//b",
        "",
        ".",
        "..",
        "x/.",
        "nul\0byte",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // One component of 256 bytes, one over NAME_MAX.
    names.push(format!("long-component-{}", "x".repeat(256 - 15)));
    names.push("..\\win".to_owned());
    names.push("dir/".to_owned());
    // Unsafe, and made to forge a line of bulkget's stderr and to rewrite
    // the terminal (erase the line, reverse the text) if printed raw.
    names.push(
        "../forged\nbulkget: failed: \"innocent\": HTTP 404 Not Found\r\u{1b}[2K\u{202e}"
            .to_owned(),
    );
    names
}

/// What a name resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// Dataset name number `i`.
    Indexed(u64),
    /// An extra name served like a dataset name but without hashed faults
    /// (hostile and huge names).
    Extra,
    /// `--oversize-name`, this many bytes.
    Oversize(u64),
    /// `--liar-name`.
    Liar,
    /// `--offhost-redirect-name`.
    OffhostRedirect,
}

/// The dataset of one server: every name, page and content, derived from the
/// arguments.
#[derive(Debug, Clone)]
pub struct Dataset {
    files: u64,
    page_size: u64,
    file_size: usize,
    tricky: bool,
    pages: u64,
    /// `--listing-variant`: 0, or the multiple of `files` added to the
    /// number a name is spelled with on the pages it changes.
    variant: u64,
    /// The first page the variant changes.
    variant_page: u64,
    hostile: Vec<String>,
    /// `--extra-name`: served like dataset files.
    extra: Vec<String>,
    oversize: Option<(String, u64)>,
    liar: Option<String>,
    offhost: Option<String>,
    /// The extra names of page 0, in listing order.
    first_page_extras: Vec<String>,
    huge_page: Option<u64>,
    pub(crate) markers: Markers,
    pub(crate) plan: FaultPlan,
}

impl Dataset {
    /// The dataset `args` describe.
    pub fn from_args(args: &ServerArgs) -> Dataset {
        let pages = args.files.div_ceil(args.page_size).max(1);
        let hostile = if args.hostile_names {
            hostile_names()
        } else {
            Vec::new()
        };
        let oversize = args
            .oversize_name
            .clone()
            .map(|name| (name, args.oversize_bytes));
        let mut first_page_extras = hostile.clone();
        first_page_extras.extend(args.extra_name.iter().cloned());
        first_page_extras.extend(oversize.iter().map(|(name, _)| name.clone()));
        first_page_extras.extend(args.liar_name.iter().cloned());
        first_page_extras.extend(args.offhost_redirect_name.iter().cloned());
        Dataset {
            files: args.files,
            page_size: args.page_size,
            file_size: args.file_size,
            tricky: args.tricky,
            pages,
            variant: args.listing_variant,
            variant_page: args.listing_variant_page,
            hostile,
            extra: args.extra_name.clone(),
            oversize,
            liar: args.liar_name.clone(),
            offhost: args.offhost_redirect_name.clone(),
            first_page_extras,
            // A fault page past the end is never listed, so its extra names
            // are not served either.
            huge_page: (args.list_fault.contains(&ListFault::Huge) && args.list_fault_page < pages)
                .then_some(args.list_fault_page),
            markers: Markers::new(args.seed, pages),
            plan: FaultPlan::new(args),
        }
    }

    /// The number of dataset names (`--files`), extra names not included.
    pub fn len(&self) -> u64 {
        self.files
    }

    /// Whether the dataset has no names (extra names may still be listed).
    pub fn is_empty(&self) -> bool {
        self.files == 0
    }

    /// The size of every dataset file.
    pub fn file_size(&self) -> usize {
        self.file_size
    }

    /// The number of listing pages (at least one, even when empty).
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The marker that asks for `page`, as a `NextMarker` hands it out.
    pub fn marker(&self, page: u64) -> String {
        self.markers.encode(page)
    }

    /// Dataset name number `i` (`i < len()`).
    pub fn name(&self, i: u64) -> String {
        self.spelling(self.spelled_as(i))
    }

    /// The number name `i` is spelled with: `i` itself, or under
    /// `--listing-variant` on the pages it changes, `i + V * files`.
    fn spelled_as(&self, i: u64) -> u64 {
        if self.variant > 0 && i / self.page_size >= self.variant_page {
            i.saturating_add(self.variant.saturating_mul(self.files))
        } else {
            i
        }
    }

    fn spelling(&self, n: u64) -> String {
        if self.tricky {
            tricky_name(n)
        } else {
            plain_name(n)
        }
    }

    /// The index of a dataset name, or `None` for any other string.
    pub fn index_of(&self, name: &str) -> Option<u64> {
        let n = if self.tricky {
            parse_tricky(name)?
        } else {
            parse_plain(name)?
        };
        let i = match n.checked_sub(self.variant.saturating_mul(self.files)) {
            Some(i) if self.variant > 0 && n >= self.files => i,
            _ => n,
        };
        (i < self.files && self.spelled_as(i) == n).then_some(i)
    }

    /// The names page `page` lists, without the repetitions of `--list-fault
    /// duplicates`.
    pub fn page_names(&self, page: u64) -> impl Iterator<Item = String> + '_ {
        let (start, end) = self.page_range(page);
        let extras: &[String] = if page == 0 {
            &self.first_page_extras
        } else {
            &[]
        };
        let huge = if self.huge_page == Some(page) {
            0..HUGE_EXTRA_NAMES
        } else {
            0..0
        };
        (start..end)
            .map(|i| self.name(i))
            .chain(extras.iter().cloned())
            .chain(huge.map(huge_name))
    }

    /// The dataset indices page `page` lists.
    pub(crate) fn page_range(&self, page: u64) -> (u64, u64) {
        let start = page.saturating_mul(self.page_size).min(self.files);
        let end = start.saturating_add(self.page_size).min(self.files);
        (start, end)
    }

    /// Whether `page` carries the 2,000,000 `huge-` names.
    pub(crate) fn is_huge_page(&self, page: u64) -> bool {
        self.huge_page == Some(page)
    }

    /// The extra names of page 0.
    pub(crate) fn first_page_extras(&self) -> &[String] {
        &self.first_page_extras
    }

    /// Every listed name once, in listing order, extra names included.
    pub fn listed_names(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.pages).flat_map(move |page| self.page_names(page))
    }

    /// What `name` resolves to, or `None` if it is not served at all.
    pub(crate) fn lookup(&self, name: &str) -> Option<Served> {
        if self.offhost.as_deref() == Some(name) {
            return Some(Served::OffhostRedirect);
        }
        if self.liar.as_deref() == Some(name) {
            return Some(Served::Liar);
        }
        if let Some((oversize, bytes)) = &self.oversize {
            if oversize == name {
                return Some(Served::Oversize(*bytes));
            }
        }
        if self.hostile.iter().chain(&self.extra).any(|h| h == name) {
            return Some(Served::Extra);
        }
        if self.huge_page.is_some() && parse_huge(name).is_some() {
            return Some(Served::Extra);
        }
        self.index_of(name).map(Served::Indexed)
    }

    /// The faults `name` gets, or `None` if it is not served at all. Dataset
    /// names get the hashed faults; extra names only an exact
    /// `--crash-name`.
    pub fn faults(&self, name: &str) -> Option<NameFaults> {
        let served = self.lookup(name)?;
        Some(self.faults_of(name, served, bulkget_names::stable_hash(name)))
    }

    pub(crate) fn faults_of(&self, name: &str, served: Served, hash: u64) -> NameFaults {
        match served {
            Served::Indexed(i) => self.plan.indexed(name, hash, i),
            _ => self.plan.extra(name),
        }
    }

    /// The bytes a successful `GET` of `name` returns, or `None` if it never
    /// succeeds: unknown names, `--gone-rate` names, the liar and the
    /// off-host redirect.
    pub fn expected_content(&self, name: &str) -> Option<Vec<u8>> {
        let served = self.lookup(name)?;
        match served {
            Served::Liar | Served::OffhostRedirect => None,
            Served::Oversize(bytes) => Some(content(name, bytes as usize)),
            Served::Extra => Some(content(name, self.file_size)),
            Served::Indexed(_) => {
                let faults = self.faults_of(name, served, bulkget_names::stable_hash(name));
                (!faults.gone).then(|| content(name, self.file_size))
            }
        }
    }
}

/// Plain name number `i`.
pub fn plain_name(i: u64) -> String {
    format!("file-{i:010}")
}

fn parse_plain(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("file-")?;
    let i = parse_digits(digits)?;
    // Regenerating rejects other spellings of the same number
    // (`file-42`, `file-+0000000042`).
    (plain_name(i) == name).then_some(i)
}

fn huge_name(j: u64) -> String {
    format!("huge-{j:07}")
}

fn parse_huge(name: &str) -> Option<u64> {
    let j = parse_digits(name.strip_prefix("huge-")?)?;
    (j < HUGE_EXTRA_NAMES && huge_name(j) == name).then_some(j)
}

fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Tricky name number `i`: variant `i % 18` of group `i / 18`.
pub fn tricky_name(i: u64) -> String {
    tricky_variant(i / TRICKY_VARIANTS, i % TRICKY_VARIANTS)
}

fn pad_to(mut s: String, len: usize, with: char) -> String {
    while s.len() + with.len_utf8() <= len {
        s.push(with);
    }
    s
}

fn tricky_variant(g: u64, v: u64) -> String {
    // Subdirectories spread over a few names so that directories are shared
    // between files, as in a real tree.
    let d = g % 8;
    match v {
        0 => format!(" leading space {g:010}"),
        1 => format!("trailing space {g:010} "),
        2 => format!("inner  two  spaces {g:010}.txt"),
        // "café" composed (NFC) and decomposed (NFD): equal to a human,
        // different bytes, so both must be kept.
        3 => format!("caf\u{e9} {g:010}"),
        4 => format!("cafe\u{301} {g:010}"),
        // A literal `%`, an escape that decodes to `A` if a layer decodes
        // twice, and an escape that is malformed if decoded at all.
        5 => format!("percent 100% {g:010} %41%zz%"),
        // `+` is a space only in form data, never in a path.
        6 => format!("plus+{g:010}+plus and space"),
        7 => format!("q?{g:010}#frag&a=b;c=d"),
        // A literal `%2F` must not become a directory separator.
        8 => format!("literal%2F{g:010}%252F"),
        // Exactly 255 bytes, with two-byte characters so that counting
        // characters instead of bytes goes wrong.
        9 => pad_to(pad_to(format!("long-{g:010}-"), 200, '\u{e9}'), 255, 'x'),
        // Differ only in case: two files on Linux, a collision on a
        // case-insensitive file system.
        10 => format!("Case-{g:010}"),
        11 => format!("case-{g:010}"),
        12 => format!("dir-{d}/sub/file-{g:010}"),
        // A 255-byte component below a directory: the whole name is longer
        // than 255 bytes and still safe.
        13 => format!(
            "dir-{d}/long/{}",
            pad_to(format!("component-{g:010}-"), 255, 'y')
        ),
        14 => format!("emoji \u{1F600} \u{65E5}\u{672C}\u{8A9E} {g:010}"),
        15 => format!("quote\"{g:010}\"back\\slash"),
        16 => format!("-dash-{g:010}..."),
        _ => format!("...{g:010}"),
    }
}

/// The first run of ten or more ASCII digits in `name`, as a number.
fn embedded_group(name: &str) -> Option<u64> {
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i - start >= 10 {
                return name[start..i].parse().ok();
            }
        } else {
            i += 1;
        }
    }
    None
}

fn parse_tricky(name: &str) -> Option<u64> {
    let g = embedded_group(name)?;
    let base = g.checked_mul(TRICKY_VARIANTS)?;
    (0..TRICKY_VARIANTS)
        .find(|&v| tricky_variant(g, v) == name)
        .and_then(|v| base.checked_add(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkget_names::{check, url_decode, url_encode};

    fn dataset(args: ServerArgs) -> Dataset {
        Dataset::from_args(&args)
    }

    #[test]
    fn plain_names_round_trip() {
        let d = dataset(ServerArgs {
            files: 1000,
            ..ServerArgs::default()
        });
        assert_eq!(d.name(42), "file-0000000042");
        for i in 0..1000 {
            assert_eq!(d.index_of(&d.name(i)), Some(i));
        }
        for bad in [
            "file-1000",
            "file-0000001000",
            "file-42",
            "file-00000000042",
            "file-+000000042",
            "file-",
            "File-0000000042",
            "file-0000000042 ",
        ] {
            assert_eq!(d.index_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tricky_names_round_trip_and_are_safe() {
        let n = 20 * TRICKY_VARIANTS;
        let d = dataset(ServerArgs {
            files: n,
            tricky: true,
            ..ServerArgs::default()
        });
        let mut seen = std::collections::HashSet::new();
        let far = (0..TRICKY_VARIANTS).map(|v| 999_999_999 * TRICKY_VARIANTS + v);
        for i in (0..n).chain(far) {
            let name = tricky_name(i);
            assert_eq!(parse_tricky(&name), Some(i), "{name:?}");
            assert_eq!(check(&name), Ok(()), "{name:?}");
            assert_eq!(url_decode(&url_encode(&name)).as_deref(), Some(&*name));
            assert!(seen.insert(name));
        }
        assert_eq!(d.index_of(&tricky_name(n)), None);
        assert_eq!(d.index_of("caf\u{e9} 0000000000 "), None);
        assert_eq!(d.index_of("file-0000000000"), None);
    }

    #[test]
    fn tricky_names_cover_the_hard_cases() {
        let names: Vec<String> = (0..TRICKY_VARIANTS).map(tricky_name).collect();
        let any = |f: &dyn Fn(&str) -> bool| names.iter().any(|n| f(n));
        assert!(any(&|n| n.starts_with(' ')));
        assert!(any(&|n| n.ends_with(' ')));
        assert!(any(&|n| n.contains("  ")));
        assert!(any(&|n| n.contains("caf\u{e9}")) && any(&|n| n.contains("cafe\u{301}")));
        for c in ["%", "+", "#", "?", "&", ";", "=", "%2F", "/", "\"", "\\"] {
            assert!(any(&|n| n.contains(c)), "{c}");
        }
        assert!(any(&|n| n.len() == 255));
        assert!(any(
            &|n| n.split('/').any(|c| c.len() == 255) && n.len() > 255
        ));
        assert!(names.contains(&"Case-0000000000".to_owned()));
        assert!(names.contains(&"case-0000000000".to_owned()));
    }

    #[test]
    fn hostile_names_are_unsafe_except_the_backslash() {
        for name in hostile_names() {
            assert_eq!(check(&name).is_ok(), name == "..\\win", "{name:?}");
        }
    }

    #[test]
    fn pages_cover_the_dataset_once_plus_extras() {
        let d = dataset(ServerArgs {
            files: 25,
            page_size: 10,
            hostile_names: true,
            liar_name: Some("liar".into()),
            oversize_name: Some("big".into()),
            oversize_bytes: 1000,
            offhost_redirect_name: Some("away".into()),
            ..ServerArgs::default()
        });
        assert_eq!(d.pages(), 3);
        let listed: Vec<String> = d.listed_names().collect();
        let extras = hostile_names().len() + 3;
        assert_eq!(listed.len(), 25 + extras);
        assert_eq!(listed[10], hostile_names()[0]);
        assert_eq!(d.page_names(2).count(), 5);
        assert_eq!(d.expected_content("liar"), None);
        assert_eq!(d.expected_content("away"), None);
        assert_eq!(d.expected_content("big").map(|c| c.len()), Some(1000));
        assert_eq!(d.expected_content("../escape").map(|c| c.len()), Some(100));
        assert_eq!(d.expected_content("file-0000000025"), None);
        assert_eq!(
            d.expected_content("file-0000000024"),
            Some(content("file-0000000024", 100))
        );
    }

    #[test]
    fn a_listing_variant_changes_the_names_of_its_pages_only() {
        let args = ServerArgs {
            files: 25,
            page_size: 10,
            ..ServerArgs::default()
        };
        let plain = dataset(args.clone());
        let changed = dataset(ServerArgs {
            listing_variant: 1,
            listing_variant_page: 1,
            ..args.clone()
        });
        assert_eq!(changed.pages(), plain.pages());
        for page in 0..3 {
            assert_eq!(changed.marker(page), plain.marker(page));
            let (a, b): (Vec<String>, Vec<String>) = (
                plain.page_names(page).collect(),
                changed.page_names(page).collect(),
            );
            assert_eq!(a.len(), b.len());
            if page == 0 {
                assert_eq!(a, b);
            } else {
                assert!(a.iter().all(|n| !b.contains(n)), "page {page}: {b:?}");
            }
        }
        assert_eq!(changed.name(10), "file-0000000035");
        for i in 0..25 {
            assert_eq!(changed.index_of(&changed.name(i)), Some(i));
            assert!(changed.expected_content(&changed.name(i)).is_some());
        }
        // Spellings the variant replaced are not served, nor are numbers
        // past it.
        assert_eq!(changed.index_of("file-0000000010"), None);
        assert_eq!(changed.index_of("file-0000000025"), None);
        assert_eq!(changed.index_of("file-0000000030"), None);
        assert_eq!(changed.index_of("file-0000000050"), None);
        // Tricky names change the same way and stay safe.
        let tricky = dataset(ServerArgs {
            tricky: true,
            listing_variant: 2,
            listing_variant_page: 1,
            ..args
        });
        for i in 0..25 {
            let name = tricky.name(i);
            assert_eq!(tricky.index_of(&name), Some(i), "{name:?}");
            assert_eq!(check(&name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn an_empty_dataset_has_one_empty_page() {
        let d = dataset(ServerArgs {
            files: 0,
            ..ServerArgs::default()
        });
        assert_eq!(d.pages(), 1);
        assert_eq!(d.listed_names().count(), 0);
    }

    #[test]
    fn huge_names_are_listed_and_served() {
        let d = dataset(ServerArgs {
            files: 30,
            page_size: 10,
            list_fault: vec![ListFault::Huge],
            ..ServerArgs::default()
        });
        assert_eq!(d.page_names(1).count() as u64, 10 + HUGE_EXTRA_NAMES);
        assert_eq!(d.page_names(1).nth(10).as_deref(), Some("huge-0000000"));
        assert!(d.expected_content("huge-1999999").is_some());
        assert!(d.expected_content("huge-2000000").is_none());
    }

    #[test]
    fn gone_names_have_no_content() {
        let d = dataset(ServerArgs {
            files: 1000,
            gone_rate: 0.1,
            ..ServerArgs::default()
        });
        let gone = (0..1000)
            .filter(|&i| d.expected_content(&d.name(i)).is_none())
            .count();
        assert!((50..150).contains(&gone), "{gone}");
    }
}
