//! Listing pages as JSON, and the listing faults.
//!
//! A page is rendered on demand from its number. When several
//! `--list-fault` kinds hit the same page, a body-replacing fault wins in
//! this order: `html`, `invalid-json`, `missing-names`, `wrong-type`; the
//! others (`loop`, `huge`, `duplicates`, `next-file`, `long-marker`)
//! combine. `fail-once`
//! comes before all of them, and is decided by the service because it is
//! the one listing fault with state.

use std::io::Write;

use crate::args::{ListFault, ServerArgs};
use crate::body::ServerBody;
use crate::dataset::{Dataset, HUGE_EXTRA_NAMES};
use crate::faults::FaultKind;

/// The page-level settings of the listing faults.
#[derive(Debug, Clone)]
pub(crate) struct ListFaults {
    kinds: Vec<ListFault>,
    page: u64,
}

/// A rendered page: status, content type, body, and the faults it carries
/// (for the stats).
pub(crate) struct Page {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: ServerBody,
    pub(crate) faults: Vec<FaultKind>,
}

/// The length of the marker `--list-fault long-marker` hands out.
pub const LONG_MARKER_BYTES: usize = 20 << 20;

const HTML_ERROR: &str = "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n\
<body><h1>Bad Gateway</h1><p>The upstream server did not answer in time. Please try again \
later.</p></body></html>\n";

fn json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing JSON to a Vec cannot fail");
}

impl ListFaults {
    pub(crate) fn new(args: &ServerArgs) -> ListFaults {
        ListFaults {
            kinds: args.list_fault.clone(),
            page: args.list_fault_page,
        }
    }

    /// Whether `kind` applies to `page`. `next-file` applies to every page.
    pub(crate) fn hits(&self, page: u64, kind: ListFault) -> bool {
        self.kinds.contains(&kind) && (page == self.page || kind == ListFault::NextFile)
    }

    /// Renders page `page` of `dataset`.
    pub(crate) fn render(&self, dataset: &Dataset, page: u64) -> Page {
        let hits = |kind| self.hits(page, kind);
        let mut faults = Vec::new();
        let marker_key = if hits(ListFault::NextFile) {
            faults.push(FaultKind::ListNextFile);
            "NextFile"
        } else {
            "NextMarker"
        };
        let next = if hits(ListFault::Loop) {
            faults.push(FaultKind::ListLoop);
            // Back to the previous page, which leads here again; pages 0 and
            // 1 have no earlier marker the client has seen, so they point to
            // themselves.
            Some(if page >= 2 { page - 1 } else { page })
        } else {
            (page + 1 < dataset.pages()).then_some(page + 1)
        };
        // What follows the list: `]`, the marker if there is a next page, `}`.
        let mut marker = Vec::with_capacity(64);
        if let Some(next) = next {
            write!(marker, "\"{marker_key}\":").unwrap();
            let mut value = dataset.marker(next);
            if hits(ListFault::LongMarker) {
                faults.push(FaultKind::ListLongMarker);
                value.extend(std::iter::repeat_n('x', LONG_MARKER_BYTES - value.len()));
            }
            json_string(&mut marker, &value);
        }

        if hits(ListFault::Html) {
            faults.push(FaultKind::ListHtml);
            return Page {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: ServerBody::full(HTML_ERROR),
                faults,
            };
        }

        if hits(ListFault::MissingNames) {
            faults.push(FaultKind::ListMissingNames);
            // Keep the marker, so that a client that treats a missing list as
            // empty goes on and silently loses this page.
            return json_page([&b"{"[..], &marker, b"}"].concat(), faults);
        }

        let duplicates = page > 0 && hits(ListFault::Duplicates);
        if duplicates {
            faults.push(FaultKind::ListDuplicates);
        }
        let names = duplicates
            .then(|| own_names(dataset, page - 1))
            .into_iter()
            .flatten()
            .chain(own_names(dataset, page));

        if hits(ListFault::WrongType) {
            faults.push(FaultKind::ListWrongType);
            // The same names, joined into one string instead of a list.
            let joined = names.collect::<Vec<_>>().join(",");
            let mut body = b"{\"FileNames\":".to_vec();
            json_string(&mut body, &joined);
            if !marker.is_empty() {
                body.push(b',');
                body.extend_from_slice(&marker);
            }
            body.push(b'}');
            return json_page(body, faults);
        }

        let (start, end) = dataset.page_range(page);
        let mut out = Vec::with_capacity((end - start) as usize * 24 + 64);
        out.extend_from_slice(b"{\"FileNames\":[");
        let mut count = 0u64;
        for name in names {
            if count > 0 {
                out.push(b',');
            }
            json_string(&mut out, &name);
            count += 1;
        }
        let mut tail = b"]".to_vec();
        if !marker.is_empty() {
            tail.push(b',');
            tail.extend_from_slice(&marker);
        }
        tail.push(b'}');

        if hits(ListFault::InvalidJson) {
            faults.push(FaultKind::ListInvalidJson);
            // Cut off in the middle of the list, as a proxy that gives up
            // half-way would.
            out.truncate(out.len().div_ceil(2).max(14));
            out.extend_from_slice(b"\n<!-- upstream timeout -->");
            return json_page(out, faults);
        }

        if dataset.is_huge_page(page) {
            faults.push(FaultKind::ListHuge);
            let body = ServerBody::huge_list(out, 0..HUGE_EXTRA_NAMES, count > 0, tail);
            return Page {
                status: 200,
                content_type: "application/json",
                body,
                faults,
            };
        }

        out.extend_from_slice(&tail);
        json_page(out, faults)
    }
}

/// The names page `page` lists itself: its slice of the dataset and, on
/// page 0, the extra names (the huge page's extra names are streamed
/// separately).
fn own_names(dataset: &Dataset, page: u64) -> impl Iterator<Item = String> + '_ {
    let (start, end) = dataset.page_range(page);
    let extras: &[String] = if page == 0 {
        dataset.first_page_extras()
    } else {
        &[]
    };
    (start..end)
        .map(|i| dataset.name(i))
        .chain(extras.iter().cloned())
}

fn json_page(body: Vec<u8>, faults: Vec<FaultKind>) -> Page {
    Page {
        status: 200,
        content_type: "application/json",
        body: ServerBody::full(body),
        faults,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::Value;

    fn setup(faults: &[ListFault]) -> (Dataset, ListFaults) {
        let args = ServerArgs {
            files: 25,
            page_size: 10,
            list_fault: faults.to_vec(),
            ..ServerArgs::default()
        };
        (Dataset::from_args(&args), ListFaults::new(&args))
    }

    async fn body(page: Page) -> Vec<u8> {
        page.body.collect().await.unwrap().to_bytes().to_vec()
    }

    async fn json(lf: &ListFaults, d: &Dataset, page: u64) -> Value {
        serde_json::from_slice(&body(lf.render(d, page)).await).unwrap()
    }

    #[tokio::test]
    async fn pages_chain_through_markers() {
        let (d, lf) = setup(&[]);
        let p0 = json(&lf, &d, 0).await;
        assert_eq!(p0["FileNames"].as_array().unwrap().len(), 10);
        assert_eq!(p0["FileNames"][0], "file-0000000000");
        let m = p0["NextMarker"].as_str().unwrap();
        assert_eq!(d.markers.decode(m), Some(1));
        let p2 = json(&lf, &d, 2).await;
        assert_eq!(p2["FileNames"].as_array().unwrap().len(), 5);
        assert!(p2.get("NextMarker").is_none());
    }

    #[tokio::test]
    async fn each_fault_shapes_its_page() {
        let (d, lf) = setup(&[ListFault::WrongType]);
        assert!(json(&lf, &d, 1).await["FileNames"].is_string());
        assert!(json(&lf, &d, 0).await["FileNames"].is_array());

        let (d, lf) = setup(&[ListFault::MissingNames]);
        let p = json(&lf, &d, 1).await;
        assert!(p.get("FileNames").is_none() && p["NextMarker"].is_string());

        let (d, lf) = setup(&[ListFault::InvalidJson]);
        let raw = body(lf.render(&d, 1)).await;
        assert!(serde_json::from_slice::<Value>(&raw).is_err());

        let (d, lf) = setup(&[ListFault::Html]);
        let page = lf.render(&d, 1);
        assert_eq!(page.content_type, "text/html; charset=utf-8");
        assert!(String::from_utf8(body(page).await)
            .unwrap()
            .contains("<html>"));

        let (d, lf) = setup(&[ListFault::Loop]);
        let p = json(&lf, &d, 1).await;
        assert_eq!(d.markers.decode(p["NextMarker"].as_str().unwrap()), Some(1));

        let (d, lf) = setup(&[ListFault::Duplicates]);
        let p = json(&lf, &d, 1).await;
        let names = p["FileNames"].as_array().unwrap();
        assert_eq!(names.len(), 20);
        assert_eq!(names[0], "file-0000000000");
        assert_eq!(names[10], "file-0000000010");

        let (d, lf) = setup(&[ListFault::LongMarker]);
        let p = json(&lf, &d, 1).await;
        let m = p["NextMarker"].as_str().unwrap();
        assert_eq!(m.len(), LONG_MARKER_BYTES);
        assert!(m.starts_with(&d.marker(2)));
        assert_eq!(json(&lf, &d, 0).await["NextMarker"], d.marker(1));

        let (d, lf) = setup(&[ListFault::NextFile]);
        for page in 0..2 {
            let p = json(&lf, &d, page).await;
            assert!(p.get("NextMarker").is_none() && p["NextFile"].is_string());
        }
    }

    #[tokio::test]
    async fn the_huge_page_streams_every_extra_name() {
        let (d, lf) = setup(&[ListFault::Huge]);
        let p = json(&lf, &d, 1).await;
        let names = p["FileNames"].as_array().unwrap();
        assert_eq!(names.len() as u64, 10 + HUGE_EXTRA_NAMES);
        assert_eq!(names[10], "huge-0000000");
        assert_eq!(d.markers.decode(p["NextMarker"].as_str().unwrap()), Some(2));
    }

    #[tokio::test]
    async fn names_are_json_escaped() {
        let args = ServerArgs {
            files: 0,
            hostile_names: true,
            ..ServerArgs::default()
        };
        let (d, lf) = (Dataset::from_args(&args), ListFaults::new(&args));
        let p = json(&lf, &d, 0).await;
        let names: Vec<&str> = p["FileNames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert!(names.contains(&"nul\0byte"));
        assert!(names.contains(&"..\\win"));
    }
}
