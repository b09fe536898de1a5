use std::fmt;

/// The service's base URL, parsed once.
///
/// `http://` and `https://` (TLS through rustls, see [`crate::tls`]). Plain
/// HTTP stays the fast path for a service on the same network: TLS costs a
/// handshake per connection and a little CPU per file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://`: every connection speaks TLS.
    pub tls: bool,
    /// Host as written in the URL (a name, an IPv4 address, or `[v6]`).
    pub host: String,
    pub port: u16,
    /// `host:port`, sent as the `Host` header.
    pub authority: String,
    /// Path prefix without a trailing slash: `""` or `"/api"`.
    pub prefix: String,
}

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

impl Endpoint {
    /// Parses `http[s]://host[:port][/prefix]`; the host may be an IPv6
    /// literal in brackets (`http://[::1]:8080/api`).
    pub fn parse(url: &str) -> Result<Endpoint, UrlError> {
        let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (None, Some(rest)) => (true, rest),
            (None, None) => {
                return Err(UrlError(format!(
                    "{url}: the URL must start with http:// or https://"
                )))
            }
        };
        let default_port = if tls { 443 } else { 80 };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) {
            return Err(UrlError(format!(
                "{url}: the base URL must not have a query or fragment"
            )));
        }
        if authority.is_empty() || authority.contains('@') {
            return Err(UrlError(format!("{url}: missing or unsupported host")));
        }
        let (host, port) = split_host_port(authority, default_port)
            .ok_or_else(|| UrlError(format!("{url}: invalid host or port")))?;
        if host.starts_with('[')
            && host[1..host.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_err()
        {
            return Err(UrlError(format!("{url}: invalid IPv6 address {host}")));
        }
        Ok(Endpoint {
            tls,
            authority: format!("{host}:{port}"),
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// The address to connect to, as `(host, port)` for `TcpStream::connect`.
    pub fn connect_target(&self) -> (String, u16) {
        (self.bare_host().to_string(), self.port)
    }

    /// The host without the brackets of an IPv6 literal: what TLS checks
    /// the certificate against and what `NO_PROXY` is matched with.
    pub fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Whether an absolute URL points at this same server (scheme, host and
    /// port), so that a redirect to it may be followed.
    pub fn same_origin(&self, url: &str) -> bool {
        let Some(rest) = url
            .strip_prefix(self.scheme())
            .and_then(|r| r.strip_prefix("://"))
        else {
            return false;
        };
        let authority = match rest.find(['/', '?', '#']) {
            Some(i) => &rest[..i],
            None => rest,
        };
        self.is_authority(authority)
    }

    /// Whether `authority` (`host[:port]`, the scheme's port if absent)
    /// names this server's host and port.
    pub fn is_authority(&self, authority: &str) -> bool {
        let default_port = if self.tls { 443 } else { 80 };
        match split_host_port(authority, default_port) {
            Some((host, port)) => host.eq_ignore_ascii_case(&self.host) && port == self.port,
            None => false,
        }
    }

    /// The base URL back as text, for messages and `run.json`.
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme(), self.authority, self.prefix)
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let host = &authority[..=end];
        return match &authority[end + 1..] {
            "" => Some((host, default_port)),
            p => Some((host, p.strip_prefix(':')?.parse().ok()?)),
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Some((h, p.parse().ok()?)),
        Some(_) => None,
        None => Some((authority, default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ports_and_prefixes() {
        let e = Endpoint::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("127.0.0.1", 8080, "")
        );
        let e = Endpoint::parse("http://h/api/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("h", 80, "/api")
        );
        assert_eq!(e.authority, "h:80");
        let e = Endpoint::parse("http://[::1]:9/x").unwrap();
        assert_eq!(e.connect_target(), ("::1".to_string(), 9));
        assert_eq!(e.url(), "http://[::1]:9/x");
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        for bad in [
            "ftp://h",
            "http://[nope]:80",
            "http://[::1",
            "h:80",
            "http://",
            "http://h:x",
            "http://u@h",
            "http://h/?q",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn same_origin_compares_host_and_port() {
        let e = Endpoint::parse("http://127.0.0.1:8080/api").unwrap();
        assert!(e.same_origin("http://127.0.0.1:8080/other"));
        assert!(!e.same_origin("http://127.0.0.2:8080/api"));
        assert!(!e.same_origin("http://127.0.0.1:8081/api"));
        assert!(!e.same_origin("https://127.0.0.1:8080/api"));
    }

    #[test]
    fn https_defaults_to_port_443_and_is_its_own_origin() {
        let e = Endpoint::parse("https://example.com/api/").unwrap();
        assert!(e.tls);
        assert_eq!(
            (e.authority.as_str(), e.prefix.as_str()),
            ("example.com:443", "/api")
        );
        assert_eq!(e.url(), "https://example.com:443/api");
        assert!(e.is_authority("example.com"));
        assert!(e.same_origin("https://example.com:443/x"));
        assert!(!e.same_origin("http://example.com:443/x"));
        assert!(!Endpoint::parse("http://example.com").unwrap().tls);
    }

    #[test]
    fn ipv6_literals_keep_their_brackets_in_the_host_header_only() {
        let e = Endpoint::parse("http://[::1]:8080/api").unwrap();
        assert_eq!(e.authority, "[::1]:8080");
        assert_eq!(e.bare_host(), "::1");
        assert!(e.is_authority("[::1]:8080"));
        assert!(e.same_origin("http://[::1]:8080/get/a"));
        let e = Endpoint::parse("https://[2001:db8::1]/").unwrap();
        assert_eq!(e.authority, "[2001:db8::1]:443");
    }
}
