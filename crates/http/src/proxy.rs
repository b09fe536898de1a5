//! Which proxy, if any, to tunnel through: `--proxy` and `--noproxy`, or
//! the environment as curl reads it.
//!
//! The environment: for an `https://` service `https_proxy`, then
//! `HTTPS_PROXY`; for `http://`, `http_proxy`, then `HTTP_PROXY`; then
//! `all_proxy`, `ALL_PROXY`. curl ignores the upper-case `HTTP_PROXY` (a CGI
//! program gets it from a request's `Proxy:` header); bulkget is never run
//! as CGI, and most tools read it, so it is read here. `no_proxy`, then
//! `NO_PROXY`: a comma-separated list of host names (matched with their
//! sub-domains; a leading dot is ignored), IP addresses, or `*` for all.
//! `--proxy ""` uses no proxy whatever the environment says.
//!
//! Only `http://` proxies are supported (the connection to the proxy is
//! plain TCP; what goes through the tunnel to an `https://` service is
//! TLS end to end). The URL's user and password become a
//! `Proxy-Authorization: Basic` value, held in memory only: [`Secret`]
//! never prints it.

use crate::Endpoint;
use std::fmt;

/// A value that must not be shown: printing it gives `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }
    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A proxy to tunnel through.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Host name or IP address, without brackets.
    pub host: String,
    pub port: u16,
    /// The `Proxy-Authorization` value, from the URL's user and password.
    pub authorization: Option<Secret>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl Proxy {
    /// `host:port`, never the credentials: for messages.
    pub fn describe(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Parses a proxy URL: `[http://][user[:password]@]host[:port]`, port
    /// 1080 by default as curl's.
    pub fn parse(url: &str) -> Result<Proxy, String> {
        let rest = match url.split_once("://") {
            None => url,
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "proxy scheme {scheme}:// is not supported; use an http:// proxy"
                ))
            }
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or("unclosed [ in the proxy URL")?;
            let port = match after {
                "" => 1080,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or("invalid port in the proxy URL")?,
            };
            (host.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| "invalid port in the proxy URL")?,
                ),
                None => (hostport.to_string(), 1080),
            }
        };
        if host.is_empty() {
            return Err("the proxy URL has no host".into());
        }
        let authorization = userinfo.map(|u| {
            let (user, password) = u.split_once(':').unwrap_or((u, ""));
            let plain = format!("{}:{}", percent_decode(user), percent_decode(password));
            Secret(format!("Basic {}", base64(plain.as_bytes())))
        });
        Ok(Proxy {
            host,
            port,
            authorization,
        })
    }
}

/// The proxy for `endpoint`: `flag` (`--proxy`) over the environment,
/// `noproxy` (`--noproxy`) over `NO_PROXY`. `env` reads a variable.
pub fn choose(
    endpoint: &Endpoint,
    flag: Option<&str>,
    noproxy: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, String> {
    let first = |names: &[&str]| names.iter().find_map(|n| env(n).filter(|v| !v.is_empty()));
    let url = match flag {
        Some(url) => Some(url.to_string()),
        None => {
            let scheme = if endpoint.tls {
                first(&["https_proxy", "HTTPS_PROXY"])
            } else {
                first(&["http_proxy", "HTTP_PROXY"])
            };
            scheme.or_else(|| first(&["all_proxy", "ALL_PROXY"]))
        }
    };
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let noproxy = match noproxy {
        Some(list) => Some(list.to_string()),
        None => first(&["no_proxy", "NO_PROXY"]),
    };
    if noproxy.is_some_and(|list| bypasses(&list, endpoint.bare_host())) {
        return Ok(None);
    }
    Proxy::parse(&url).map(Some)
}

/// The names of the variables [`choose`] reads: a worker's environment is
/// cleared of them, as the proxy (and its credentials) reach it through its
/// settings instead.
pub const ENV_VARS: &[&str] = &[
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// Whether a `NO_PROXY` list names `host`.
pub fn bypasses(list: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    list.split(',').map(str::trim).any(|entry| {
        let entry = entry
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_start_matches('.')
            .trim_end_matches('.');
        if entry == "*" {
            return true;
        }
        if entry.is_empty() {
            return false;
        }
        if host.eq_ignore_ascii_case(entry) {
            return true;
        }
        // A name matches its sub-domains; an IP address only itself.
        host.len() > entry.len()
            && host.as_bytes()[host.len() - entry.len() - 1] == b'.'
            && host[host.len() - entry.len()..].eq_ignore_ascii_case(entry)
            && host.parse::<std::net::IpAddr>().is_err()
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 with padding, for a Basic credential.
fn base64(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(A[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn proxy_urls_parse_with_credentials_kept_secret() {
        let p = Proxy::parse("http://us%3Aer:p%40ss@proxy.example:3128/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.example", 3128));
        // base64("us:er:p@ss")
        assert_eq!(
            p.authorization.as_ref().unwrap().expose(),
            "Basic dXM6ZXI6cEBzcw=="
        );
        assert!(!format!("{p:?}").contains("dXM6"));
        assert_eq!(format!("{:?}", p.authorization), "Some(<redacted>)");
        let p = Proxy::parse("10.0.0.1").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.authorization),
            ("10.0.0.1", 1080, None)
        );
        let p = Proxy::parse("http://[::1]:8888").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 8888));
        assert_eq!(p.describe(), "[::1]:8888");
        assert!(Proxy::parse("socks5://h:1").is_err());
        assert!(Proxy::parse("https://h:1").is_err());
        assert!(Proxy::parse("http://h:x").is_err());
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn the_environment_is_read_as_curl_does_and_flags_win() {
        let http = Endpoint::parse("http://files.example.com/api").unwrap();
        let https = Endpoint::parse("https://files.example.com/api").unwrap();
        let vars = env(&[
            ("http_proxy", "h:1"),
            ("HTTPS_PROXY", "s:2"),
            ("ALL_PROXY", "a:3"),
        ]);
        let host = |e: &Endpoint, flag: Option<&str>, np: Option<&str>| {
            choose(e, flag, np, &vars).unwrap().map(|p| p.describe())
        };
        assert_eq!(host(&http, None, None).as_deref(), Some("h:1"));
        assert_eq!(host(&https, None, None).as_deref(), Some("s:2"));
        assert_eq!(host(&http, Some("f:4"), None).as_deref(), Some("f:4"));
        assert_eq!(host(&http, Some(""), None), None);
        assert_eq!(host(&http, None, Some("example.com")), None);
        assert_eq!(host(&http, None, Some("other.com")).as_deref(), Some("h:1"));
        let all = env(&[("all_proxy", "a:3"), ("NO_PROXY", ".example.com")]);
        assert_eq!(choose(&https, None, None, &all).unwrap(), None);
        let all = env(&[("all_proxy", "a:3")]);
        assert_eq!(
            choose(&https, None, None, &all).unwrap().map(|p| p.port),
            Some(3)
        );
        assert_eq!(choose(&https, None, None, env(&[])).unwrap(), None);
    }

    #[test]
    fn no_proxy_matches_names_their_subdomains_and_addresses() {
        assert!(bypasses("*", "anything"));
        assert!(bypasses("localhost, 127.0.0.1", "127.0.0.1"));
        assert!(bypasses("example.com", "a.b.example.com"));
        assert!(bypasses(".example.com", "example.com"));
        assert!(bypasses("EXAMPLE.com", "example.COM"));
        assert!(!bypasses("example.com", "badexample.com"));
        assert!(!bypasses("0.0.1", "127.0.0.1"));
        assert!(bypasses("[::1]", "::1"));
        assert!(bypasses("::1", "::1"));
        assert!(!bypasses("", "h"));
    }
}
