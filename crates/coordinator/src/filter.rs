//! `--include` and `--exclude`: which listed names a run fetches, and
//! `bulkget list` prints.
//!
//! The rule, in one place: a name is kept when no `--include` is given or
//! one of them matches it, and no `--exclude` matches it. Globs are
//! globset's, with its defaults: `*` and `?` match `/` as well, so `*.jpg`
//! keeps `a/b.jpg` too. The scheduler applies the filter to each page after
//! dropping repeats and before the unsafe-name check, so an excluded name
//! is neither fetched nor failed, only counted (`names_excluded`).

use crate::args::FilterArgs;
use globset::{Glob, GlobSet, GlobSetBuilder};

/// The compiled `--include` and `--exclude` globs.
#[derive(Debug, Clone)]
pub struct NameFilter {
    /// `None` when no `--include` was given: every name is included.
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl NameFilter {
    /// Compiles the globs; an error names the glob that is not valid.
    pub fn new(args: &FilterArgs) -> Result<NameFilter, String> {
        let include = if args.include.is_empty() {
            None
        } else {
            Some(build("--include", &args.include)?)
        };
        Ok(NameFilter {
            include,
            exclude: build("--exclude", &args.exclude)?,
        })
    }

    /// Whether no glob was given, so that every name is kept.
    pub fn is_empty(&self) -> bool {
        self.include.is_none() && self.exclude.is_empty()
    }

    /// Whether the name is fetched.
    pub fn keeps(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|set| set.is_match(name)) && !self.exclude.is_match(name)
    }
}

fn build(flag: &str, globs: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for g in globs {
        set.add(Glob::new(g).map_err(|e| format!("{flag} {g:?}: {e}"))?);
    }
    set.build().map_err(|e| format!("{flag}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> NameFilter {
        NameFilter::new(&FilterArgs {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn no_globs_keep_everything() {
        let f = filter(&[], &[]);
        assert!(f.is_empty());
        assert!(!filter(&[], &["x"]).is_empty() && !filter(&["x"], &[]).is_empty());
        assert!(f.keeps("a") && f.keeps("x/y.jpg") && f.keeps(""));
    }

    #[test]
    fn any_include_keeps_and_any_exclude_drops() {
        let f = filter(&["*.jpg", "docs/**"], &["*-tmp.jpg", "docs/private/*"]);
        assert!(f.keeps("a.jpg"));
        // `*` matches `/` (globset's default), as documented in --help.
        assert!(f.keeps("photos/2024/a.jpg"));
        assert!(f.keeps("docs/readme.txt"));
        assert!(!f.keeps("a.png"));
        assert!(!f.keeps("a-tmp.jpg"), "an exclude wins over an include");
        assert!(!f.keeps("docs/private/key"));
        let only_exclude = filter(&[], &["file-00000000[0-4]?"]);
        assert!(!only_exclude.keeps("file-0000000042"));
        assert!(only_exclude.keeps("file-0000000050"));
    }

    #[test]
    fn a_bad_glob_is_named() {
        let e = NameFilter::new(&FilterArgs {
            include: vec![],
            exclude: vec!["a[".into()],
        })
        .unwrap_err();
        assert!(e.starts_with("--exclude \"a[\": "), "{e}");
    }
}
