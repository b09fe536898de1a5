//! `bulkget list`: the listing alone, in each format (issue 14, point 5).

use crate::util::*;
use std::process::Output;

/// A server whose first page lists the hostile names (a newline, a NUL, an
/// escape sequence, a backslash...) before 30 ordinary names.
fn hostile_server() -> Server {
    Server::start(&["--files", "30", "--page-size", "10", "--hostile-names"])
}

fn list(server: &Server, args: &[&str]) -> Output {
    let mut cmd = bulkget(&["list", &server.url]);
    cmd.args(args);
    cmd.output().expect("run bulkget list")
}

/// Reads back one line of `--format text`: the inverse of its escaping
/// (`\\`, `\n`, `\t`, `\r`, `\0`, `\u{...}`), written here independently of
/// bulkget's code.
fn unescape(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('u') => {
                assert_eq!(chars.next(), Some('{'), "{line:?}");
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
            }
            other => panic!("unknown escape \\{other:?} in {line:?}"),
        }
    }
    out
}

#[test]
fn text_is_one_escaped_name_a_line_in_listing_order() {
    let server = hostile_server();
    let output = list(&server, &[]);
    assert_code(&output, 0);
    let expected: Vec<String> = server.dataset().listed_names().collect();
    assert!(expected.iter().any(|n| n.contains('\n')));
    assert!(expected.iter().any(|n| n.contains('\u{1b}')));
    let stdout = text(&output.stdout);
    // No raw control character reaches the output but the line ends.
    assert!(
        !stdout.chars().any(|c| c.is_control() && c != '\n'),
        "{stdout:?}"
    );
    let lines: Vec<String> = stdout.lines().map(unescape).collect();
    assert_eq!(lines, expected);
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "bulkget list: 3 pages, {} names, complete",
            expected.len()
        )),
        "{stderr}"
    );
}

#[test]
fn jsonl_is_one_json_string_a_line_and_filters_apply() {
    let server = hostile_server();
    let output = list(
        &server,
        &["--format", "jsonl", "--exclude", "file-*", "--quiet"],
    );
    assert_code(&output, 0);
    let expected: Vec<String> = server
        .dataset()
        .listed_names()
        .filter(|n| !n.starts_with("file-"))
        .collect();
    let names: Vec<String> = text(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str::<String>(l).expect("a JSON string"))
        .collect();
    assert_eq!(names, expected);
    assert!(names.iter().any(|n| n.contains('\n') && n.contains('\r')));
    assert_eq!(text(&output.stderr), "", "--quiet prints nothing");
}

#[test]
fn nul_to_a_file_holds_every_name_a_nul_can_carry() {
    let server = hostile_server();
    let ws = Workspace::new();
    let file = ws.root.path().join("names.bin");
    let output = list(&server, &["--format", "nul", "-o", file.to_str().unwrap()]);
    // The one name holding a NUL cannot be written NUL-separated: it is
    // named on stderr, and the exit code says a name is missing.
    assert_code(&output, 3);
    assert_eq!(output.stdout, b"", "-o: nothing on stdout");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("left out \"nul\\0byte\": a name with a NUL byte"),
        "{stderr}"
    );
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.ends_with(b"\0"));
    let names: Vec<&[u8]> = bytes[..bytes.len() - 1].split(|&b| b == 0).collect();
    let expected: Vec<String> = server
        .dataset()
        .listed_names()
        .filter(|n| !n.contains('\0'))
        .collect();
    let expected: Vec<&[u8]> = expected.iter().map(|n| n.as_bytes()).collect();
    assert_eq!(names, expected);
    assert!(!ws.root.path().join("names.bin.partial").exists());
}

#[test]
fn a_failed_listing_exits_4_and_never_leaves_a_manifest_cut_short() {
    let server = Server::with_list_fault("loop");
    let ws = Workspace::new();
    let file = ws.root.path().join("names.txt");
    let output = list(&server, &["-o", file.to_str().unwrap()]);
    assert_code(&output, 4);
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("was already seen; the listing would loop"),
        "{stderr}"
    );
    assert!(
        !file.exists(),
        "FILE appears only when the listing is complete"
    );
    let partial = ws.root.path().join("names.txt.partial");
    assert!(
        stderr.contains(&format!(
            "the names listed before it are in {}",
            partial.display()
        )),
        "{stderr}"
    );
    // The page before the looping one: 250 names.
    let kept = std::fs::read_to_string(&partial).unwrap();
    assert_eq!(kept.lines().count(), 250);
    assert_eq!(kept.lines().next(), Some("file-0000000000"));
}

#[test]
fn list_sends_the_same_headers_as_fetch_and_says_when_they_are_refused() {
    let server = Server::start(&["--files", "20", "--require-header", "X-Token: s3cret"]);
    let output = list(&server, &[]);
    assert_code(&output, 4);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("authentication failed"), "{stderr}");
    let output = list(&server, &["-H", "X-Token: s3cret"]);
    assert_code(&output, 0);
    assert_eq!(text(&output.stdout).lines().count(), 20);
}

#[test]
fn a_closed_stdout_ends_the_listing_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    // More names than any pipe buffer holds, so that the writes after the
    // reader has gone fail.
    let server = Server::start(&["--files", "100000", "--page-size", "1000"]);
    let mut child = bulkget(&["list", &server.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader was dropped: `bulkget list URL | head -1`.
    assert_eq!(first, "file-0000000000\n");
    let output = child.wait_with_output().unwrap();
    assert_code(&output, 0);
    let stderr = text(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        server.stats()["requests"]["list"].as_u64().unwrap() < 100,
        "the listing stopped early"
    );
}
