//! Resolving a URI reference against a base URI, as RFC 3986 section 5.2
//! says, for the `Location` of a redirect.
//!
//! A `Location` may be relative (`../blob/x`, `?page=2`, `//host/x`); a
//! client that joined it to the request path as text would ask for
//! `/get/../blob/x`, which a server may route differently from
//! `/blob/x`, or refuse. The algorithm here is the RFC's, step for step
//! (strict: a reference with a scheme is never read as relative), and its
//! tests are the RFC's own examples of section 5.4.

/// The five parts of a URI reference (RFC 3986 appendix B). A part that is
/// absent is `None`, which differs from present and empty (`http://h?`
/// has an empty query, `http://h` none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parts<'a> {
    pub scheme: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub fragment: Option<&'a str>,
}

/// Splits a URI reference the way the RFC's appendix B regular expression
/// `^(([^:/?#]+):)?(//([^/?#]*))?([^?#]*)(\?([^#]*))?(#(.*))?` does.
pub(crate) fn parse(s: &str) -> Parts<'_> {
    let (s, fragment) = match s.split_once('#') {
        Some((rest, f)) => (rest, Some(f)),
        None => (s, None),
    };
    let (s, query) = match s.split_once('?') {
        Some((rest, q)) => (rest, Some(q)),
        None => (s, None),
    };
    // A scheme is a non-empty run before the first ':' with no '/' in it.
    let (scheme, s) = match s.find([':', '/']) {
        Some(i) if i > 0 && s.as_bytes()[i] == b':' => (Some(&s[..i]), &s[i + 1..]),
        _ => (None, s),
    };
    let (authority, path) = match s.strip_prefix("//") {
        Some(rest) => {
            let end = rest.find('/').unwrap_or(rest.len());
            (Some(&rest[..end]), &rest[end..])
        }
        None => (None, s),
    };
    Parts {
        scheme,
        authority,
        path,
        query,
        fragment,
    }
}

/// Resolves `reference` against `base` (section 5.2.2, strict) and
/// recomposes the result (section 5.3).
pub(crate) fn resolve(base: &str, reference: &str) -> String {
    let b = parse(base);
    let r = parse(reference);
    let path: String;
    let (scheme, authority, query);
    if r.scheme.is_some() {
        scheme = r.scheme;
        authority = r.authority;
        path = remove_dot_segments(r.path);
        query = r.query;
    } else {
        scheme = b.scheme;
        if r.authority.is_some() {
            authority = r.authority;
            path = remove_dot_segments(r.path);
            query = r.query;
        } else {
            authority = b.authority;
            if r.path.is_empty() {
                path = b.path.to_string();
                query = r.query.or(b.query);
            } else {
                path = if r.path.starts_with('/') {
                    remove_dot_segments(r.path)
                } else {
                    remove_dot_segments(&merge(&b, r.path))
                };
                query = r.query;
            }
        }
    }
    let mut out = String::with_capacity(base.len() + reference.len());
    if let Some(s) = scheme {
        out.push_str(s);
        out.push(':');
    }
    if let Some(a) = authority {
        out.push_str("//");
        out.push_str(a);
    }
    out.push_str(&path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    if let Some(f) = r.fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Section 5.2.3: a relative path joined to the base's directory.
fn merge(base: &Parts<'_>, relative: &str) -> String {
    if base.authority.is_some() && base.path.is_empty() {
        return format!("/{relative}");
    }
    match base.path.rfind('/') {
        Some(i) => format!("{}{relative}", &base.path[..=i]),
        None => relative.to_string(),
    }
}

/// Section 5.2.4: removes `.` and `..` segments, literally as the RFC's
/// loop does (a `..` above the root is dropped).
pub(crate) fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut output = String::with_capacity(path.len());
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest;
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest;
        } else if input.starts_with("/./") {
            input = &input[2..];
        } else if input == "/." {
            input = "/";
        } else if input.starts_with("/../") {
            input = &input[3..];
            pop_segment(&mut output);
        } else if input == "/.." {
            input = "/";
            pop_segment(&mut output);
        } else if input == "." || input == ".." {
            input = "";
        } else {
            // The first segment, with its leading '/' if it has one, up to
            // (not including) the next '/'.
            let from = usize::from(input.starts_with('/'));
            let end = input[from..].find('/').map_or(input.len(), |i| from + i);
            output.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    output
}

/// Removes the last segment of `output` and the '/' before it, if any.
fn pop_segment(output: &mut String) {
    let cut = output.rfind('/').unwrap_or(0);
    output.truncate(cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://a/b/c/d;p?q";

    #[test]
    fn the_normal_examples_of_rfc_3986_section_5_4_1() {
        for (reference, want) in [
            ("g:h", "g:h"),
            ("g", "http://a/b/c/g"),
            ("./g", "http://a/b/c/g"),
            ("g/", "http://a/b/c/g/"),
            ("/g", "http://a/g"),
            ("//g", "http://g"),
            ("?y", "http://a/b/c/d;p?y"),
            ("g?y", "http://a/b/c/g?y"),
            ("#s", "http://a/b/c/d;p?q#s"),
            ("g#s", "http://a/b/c/g#s"),
            ("g?y#s", "http://a/b/c/g?y#s"),
            (";x", "http://a/b/c/;x"),
            ("g;x", "http://a/b/c/g;x"),
            ("g;x?y#s", "http://a/b/c/g;x?y#s"),
            ("", "http://a/b/c/d;p?q"),
            (".", "http://a/b/c/"),
            ("./", "http://a/b/c/"),
            ("..", "http://a/b/"),
            ("../", "http://a/b/"),
            ("../g", "http://a/b/g"),
            ("../..", "http://a/"),
            ("../../", "http://a/"),
            ("../../g", "http://a/g"),
        ] {
            assert_eq!(resolve(BASE, reference), want, "{reference:?}");
        }
    }

    #[test]
    fn the_abnormal_examples_of_rfc_3986_section_5_4_2() {
        for (reference, want) in [
            ("../../../g", "http://a/g"),
            ("../../../../g", "http://a/g"),
            ("/./g", "http://a/g"),
            ("/../g", "http://a/g"),
            ("g.", "http://a/b/c/g."),
            (".g", "http://a/b/c/.g"),
            ("g..", "http://a/b/c/g.."),
            ("..g", "http://a/b/c/..g"),
            ("./../g", "http://a/b/g"),
            ("./g/.", "http://a/b/c/g/"),
            ("g/./h", "http://a/b/c/g/h"),
            ("g/../h", "http://a/b/c/h"),
            ("g;x=1/./y", "http://a/b/c/g;x=1/y"),
            ("g;x=1/../y", "http://a/b/c/y"),
            ("g?y/./x", "http://a/b/c/g?y/./x"),
            ("g?y/../x", "http://a/b/c/g?y/../x"),
            ("g#s/./x", "http://a/b/c/g#s/./x"),
            ("g#s/../x", "http://a/b/c/g#s/../x"),
            // Strict: a reference with the base's scheme is not relative.
            ("http:g", "http:g"),
        ] {
            assert_eq!(resolve(BASE, reference), want, "{reference:?}");
        }
    }

    #[test]
    fn the_dot_segment_examples_of_section_5_2_4() {
        assert_eq!(remove_dot_segments("/a/b/c/./../../g"), "/a/g");
        assert_eq!(remove_dot_segments("mid/content=5/../6"), "mid/6");
    }

    #[test]
    fn parts_follow_appendix_b() {
        let p = parse("http://www.ics.uci.edu/pub/ietf/uri/#Related");
        assert_eq!(
            p,
            Parts {
                scheme: Some("http"),
                authority: Some("www.ics.uci.edu"),
                path: "/pub/ietf/uri/",
                query: None,
                fragment: Some("Related"),
            }
        );
        // A colon after a slash is in the path, not a scheme.
        assert_eq!(parse("a/b:c").scheme, None);
        assert_eq!(parse("?x:y").scheme, None);
        assert_eq!(parse("http://h?").query, Some(""));
    }
}
