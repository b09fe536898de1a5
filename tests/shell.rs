//! `bulkget completions` and the man pages (issue 14, point 9).

use crate::util::*;

#[test]
fn bash_completions_name_the_subcommands_and_their_flags() {
    let output = bulkget(&["completions", "bash"]).output().unwrap();
    assert_code(&output, 0);
    let script = text(&output.stdout);
    assert!(script.contains("complete -F _bulkget"), "{script}");
    for word in ["fetch", "list", "status", "export", "cat", "completions"] {
        assert!(script.contains(word), "{word} is not completed");
    }
    // The flags shared by fetch and list are completed for both.
    assert!(script.contains("--include") && script.contains("--max-page-size"));
    for shell in ["zsh", "fish"] {
        let output = bulkget(&["completions", shell]).output().unwrap();
        assert_code(&output, 0);
        assert!(text(&output.stdout).contains("list"), "{shell}");
    }
}

#[test]
fn man_generation_writes_roff_pages_for_bulkget_and_its_subcommands() {
    let ws = Workspace::new();
    let dir = ws.root.path().join("man");
    // What scripts/man.sh runs once the binary is built.
    let output = bulkget(&["man", dir.to_str().unwrap()]).output().unwrap();
    assert_code(&output, 0);
    let page = std::fs::read_to_string(dir.join("bulkget.1")).unwrap();
    assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
    assert!(page.contains(".TH bulkget 1"), "{page}");
    assert!(page.contains("fetch"), "{page}");
    let fetch = std::fs::read_to_string(dir.join("bulkget-fetch.1")).unwrap();
    assert!(fetch.contains(".TH bulkget-fetch 1"), "{fetch}");
    assert!(fetch.contains("\\-\\-resume"), "{fetch}");
    assert!(dir.join("bulkget-list.1").exists());
    // The hidden subcommands are not documented.
    assert!(!dir.join("bulkget-worker.1").exists());
    assert!(!dir.join("bulkget-man.1").exists());
}
