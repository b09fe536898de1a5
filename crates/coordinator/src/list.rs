//! `bulkget list`: the listing alone, written as a manifest.
//!
//! It runs the same lister as `fetch` ([`crate::lister::run`]: retries,
//! `Retry-After`, loop detection, the page and marker limits), configured
//! from the same flags ([`crate::service`]), and the same filters
//! ([`crate::filter`]). Names are written as the service lists them, in
//! order, repeats included; only the format's escaping changes them (see
//! [`ListFormat`]). Pages and names are counted on stderr.
//!
//! With `-o FILE` the names go to `FILE.partial`, renamed to FILE once the
//! listing is complete, so FILE is never a manifest cut short; a listing
//! that fails leaves `FILE.partial` with the names listed before the
//! failure, and says so.

use crate::args::{ListArgs, ListFormat};
use crate::exit;
use crate::filter::NameFilter;
use crate::lister::{ListerWait, Page};
use crate::scheduler::ListPosition;
use bulkget_console::errln;
use bulkget_http::Endpoint;
use bulkget_report::format::{grouped, plural};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often a progress line is printed on stderr while listing.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Runs `bulkget list` and returns the process exit code.
pub fn list(args: ListArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("bulkget list: cannot start runtime: {e}");
            return exit::ERROR;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err((code, msg)) => {
            errln!("bulkget list: {msg}");
            code
        }
    }
}

/// Where the names go.
enum Sink {
    Stdout(BufWriter<io::StdoutLock<'static>>),
    File {
        out: BufWriter<File>,
        partial: PathBuf,
        path: PathBuf,
    },
}

impl Sink {
    fn open(output: Option<&Path>) -> Result<Sink, (i32, String)> {
        let Some(path) = output else {
            return Ok(Sink::Stdout(BufWriter::with_capacity(
                1 << 16,
                io::stdout().lock(),
            )));
        };
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = File::create(&partial).map_err(|e| {
            (
                exit::ERROR,
                format!("cannot create {}: {e}", partial.display()),
            )
        })?;
        Ok(Sink::File {
            out: BufWriter::with_capacity(1 << 16, file),
            partial,
            path: path.to_path_buf(),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File { out, .. } => out,
        }
    }
}

async fn run(args: ListArgs) -> Result<i32, (i32, String)> {
    let endpoint = Endpoint::parse(&args.url).map_err(|e| (exit::USAGE, e.to_string()))?;
    crate::config::check_service(&args.service)?;
    let filter = NameFilter::new(&args.filter).map_err(|e| (exit::USAGE, e))?;
    let connection = crate::service::connection_setup(&args.service, &endpoint)?;
    let config = crate::service::lister_config(&args.service, connection.transport);
    let mut sink = Sink::open(args.output.as_deref())?;

    // One page in the channel, as in `fetch`: the lister asks for the next
    // page while this one is written.
    let (tx, mut pages) = mpsc::channel(1);
    let lister = tokio::spawn(crate::lister::run(
        endpoint,
        ListPosition::Start,
        config,
        tx,
        Arc::new(ListerWait::default()),
    ));
    let started = Instant::now();
    let mut count = Counts::default();
    let mut last_progress = Instant::now();
    let mut failed = None;
    while let Some(page) = pages.recv().await {
        let page: Page = match page {
            Ok(p) => p,
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        };
        count.pages += 1;
        match write_page(sink.writer(), &page, args.format, &filter, &mut count) {
            Ok(()) => {}
            // The reader of stdout is gone (`bulkget list URL | head`): it
            // wants no more, so the listing stops, quietly, as ripgrep does.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                lister.abort();
                return Ok(exit::OK);
            }
            Err(e) => return Err((exit::ERROR, write_error(&sink, e))),
        }
        if !args.quiet && last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            errln!("bulkget list: {} so far", count.describe());
        }
    }
    if failed.is_none() && pages_ended_early(lister).await {
        failed = Some("the lister stopped unexpectedly".into());
    }
    match sink.writer().flush() {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(exit::OK),
        Err(e) => return Err((exit::ERROR, write_error(&sink, e))),
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(why) = failed {
        let kept = match &sink {
            Sink::File { partial, .. } => {
                format!("; the names listed before it are in {}", partial.display())
            }
            Sink::Stdout(_) => String::new(),
        };
        errln!("bulkget list: {why}");
        errln!(
            "bulkget list: stopped after {} in {elapsed:.1}s{kept} (exit {})",
            count.describe(),
            exit::LISTING_FAILED
        );
        return Ok(exit::LISTING_FAILED);
    }
    if let Sink::File {
        out, partial, path, ..
    } = &mut sink
    {
        out.get_ref()
            .sync_all()
            .and_then(|()| std::fs::rename(&*partial, &*path))
            .map_err(|e| {
                (
                    exit::ERROR,
                    format!("cannot complete {}: {e}", path.display()),
                )
            })?;
    }
    if !args.quiet {
        errln!(
            "bulkget list: {}, complete, in {elapsed:.1}s",
            count.describe()
        );
    }
    if count.unwritable > 0 {
        return Ok(exit::FILES_FAILED);
    }
    Ok(exit::OK)
}

/// Whether the lister's task ended without saying why (a panic): it sends
/// its error or the last page before it returns.
async fn pages_ended_early(lister: tokio::task::JoinHandle<()>) -> bool {
    lister.await.is_err()
}

fn write_error(sink: &Sink, e: io::Error) -> String {
    match sink {
        Sink::Stdout(_) => format!("cannot write to stdout: {e}"),
        Sink::File { partial, .. } => format!("cannot write to {}: {e}", partial.display()),
    }
}

#[derive(Debug, Default)]
struct Counts {
    pages: u64,
    names: u64,
    excluded: u64,
    /// Names `--format nul` cannot carry (they hold a NUL byte).
    unwritable: u64,
}

impl Counts {
    /// `12 pages, 12,000 names (300 excluded)`.
    fn describe(&self) -> String {
        let mut s = format!(
            "{}, {}",
            plural(self.pages, "page", "pages"),
            plural(self.names, "name", "names")
        );
        if self.excluded > 0 {
            s.push_str(&format!(" ({} excluded)", grouped(self.excluded)));
        }
        if self.unwritable > 0 {
            s.push_str(&format!(
                ", {} with a NUL byte left out",
                grouped(self.unwritable)
            ))
        }
        s
    }
}

/// Writes the names of `page` that `filter` keeps; counts them.
fn write_page(
    out: &mut dyn Write,
    page: &Page,
    format: ListFormat,
    filter: &NameFilter,
    count: &mut Counts,
) -> io::Result<()> {
    for name in page.names.iter() {
        if !filter.keeps(name) {
            count.excluded += 1;
            continue;
        }
        match format {
            ListFormat::Text => write_text(out, name)?,
            ListFormat::Jsonl => {
                serde_json::to_writer(&mut *out, name)?;
                out.write_all(b"\n")?;
            }
            ListFormat::Nul if name.contains('\0') => {
                errln!(
                    "bulkget list: left out {name:?}: a name with a NUL byte cannot be written NUL-separated (use --format jsonl)"
                );
                count.unwritable += 1;
                continue;
            }
            ListFormat::Nul => {
                out.write_all(name.as_bytes())?;
                out.write_all(b"\0")?;
            }
        }
        count.names += 1;
    }
    Ok(())
}

/// One name and a newline, escaped as `--format text` documents: a
/// backslash doubled, and every character Rust's `{:?}` escapes but quotes
/// escaped the same way (`\n`, `\u{1b}`, `\u{202e}`), so that a name is one
/// line, sends nothing to a terminal, and can be read back unambiguously.
fn write_text(out: &mut dyn Write, name: &str) -> io::Result<()> {
    // Most names are printable ASCII: written as they are.
    if name
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
    {
        out.write_all(name.as_bytes())?;
    } else {
        let escaped = crate::failure_log::escape_unprintable(&name.replace('\\', "\\\\"));
        out.write_all(escaped.as_bytes())?;
    }
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(name: &str) -> String {
        let mut out = Vec::new();
        write_text(&mut out, name).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_escapes_controls_and_backslashes_and_keeps_the_rest() {
        assert_eq!(text("file-0001"), "file-0001\n");
        assert_eq!(text("a\nb"), "a\\nb\n");
        assert_eq!(text("tab\there"), "tab\\there\n");
        assert_eq!(text("\u{1b}[31mred"), "\\u{1b}[31mred\n");
        assert_eq!(text("back\\slash"), "back\\\\slash\n");
        // A literal `\n` in a name stays distinct from a newline.
        assert_ne!(text("a\\nb"), text("a\nb"));
        assert_eq!(text("a\\nb"), "a\\\\nb\n");
        assert_eq!(text("é/\"quoted\" 'x'"), "é/\"quoted\" 'x'\n");
        assert_eq!(text("rtl\u{202e}txt"), "rtl\\u{202e}txt\n");
        assert_eq!(text("del\u{7f}"), "del\\u{7f}\n");
    }

    #[test]
    fn pages_are_written_in_each_format_with_the_filter() {
        let page = Page {
            names: ["a.jpg", "b\n.jpg", "c.png", "d\0.jpg"].iter().collect(),
            next: None,
        };
        let filter = NameFilter::new(&crate::args::FilterArgs {
            include: vec!["*.jpg".into()],
            exclude: vec![],
        })
        .unwrap();
        let mut runs = Vec::new();
        for format in [ListFormat::Text, ListFormat::Jsonl, ListFormat::Nul] {
            let mut out = Vec::new();
            let mut count = Counts::default();
            write_page(&mut out, &page, format, &filter, &mut count).unwrap();
            runs.push((out, count));
        }
        assert_eq!(runs[0].0, b"a.jpg\nb\\n.jpg\nd\\0.jpg\n");
        assert_eq!(
            runs[1].0,
            b"\"a.jpg\"\n\"b\\n.jpg\"\n\"d\\u0000.jpg\"\n".to_vec()
        );
        assert_eq!(runs[2].0, b"a.jpg\0b\n.jpg\0");
        assert_eq!((runs[0].1.names, runs[0].1.excluded), (3, 1));
        assert_eq!((runs[2].1.names, runs[2].1.unwritable), (2, 1));
        assert_eq!(
            runs[2].1.describe(),
            "0 pages, 2 names (1 excluded), 1 with a NUL byte left out"
        );
    }
}
