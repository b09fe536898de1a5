//! Writes the test server's dataset as static files, so that any web server
//! can serve the same API (scripts/bench.sh serves it with nginx):
//!
//! ```text
//! static_tree DIR [bulkget-server dataset flags: --files N --page-size P --file-size B --seed S]
//! ```
//!
//! - `DIR/pages/first`: the first page (`GET /list`);
//! - `DIR/pages/<marker>`: the page a `NextMarker` of `<marker>` asks for
//!   (`GET /list?next-marker=<marker>`; markers are 24 hex digits);
//! - `DIR/files/<name>`: each file's bytes (`GET /get/<name>`).
//!
//! The pages are byte for byte what `bulkget-server` answers with the same
//! flags, and so are the files, so a run against the static tree can be
//! checked like one against the server. Only plain names (`file-{i:010}`)
//! are written: tricky and hostile names are not file names a web server can
//! serve as they are, and faults are the test server's alone.

use bulkget_server::{content, Dataset, ServerArgs};
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or_else(|| {
        anyhow::anyhow!("usage: static_tree DIR [--files N --page-size P --file-size B --seed S]")
    })?);
    let server = ServerArgs::parse_from(std::iter::once("bulkget-server".to_string()).chain(args));
    anyhow::ensure!(
        !server.tricky && !server.hostile_names,
        "only plain names can be written as a static tree"
    );
    let dataset = Dataset::from_args(&server);
    let pages = dir.join("pages");
    let files = dir.join("files");
    std::fs::create_dir_all(&pages)?;
    std::fs::create_dir_all(&files)?;
    let mut body = Vec::new();
    for page in 0..dataset.pages() {
        let names: Vec<String> = dataset.page_names(page).collect();
        let mut json = serde_json::json!({ "FileNames": names });
        if page + 1 < dataset.pages() {
            json["NextMarker"] = dataset.marker(page + 1).into();
        }
        body.clear();
        serde_json::to_writer(&mut body, &json)?;
        let file = if page == 0 {
            "first".to_string()
        } else {
            dataset.marker(page)
        };
        std::fs::write(pages.join(file), &body)?;
        for name in names {
            std::fs::write(files.join(&name), content(&name, dataset.file_size()))?;
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "static_tree: {} files in {} pages under {}",
        dataset.len(),
        dataset.pages(),
        dir.display()
    )?;
    Ok(())
}
