use std::fmt;

/// The service's base URL, parsed once.
///
/// Only `http://` is supported: the service of the brief sits on the same
/// network, and TLS would cost more CPU per 100-byte file than everything
/// else together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
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
    /// Parses `http://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<Endpoint, UrlError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            if url.starts_with("https://") {
                UrlError(format!("{url}: https is not supported; use http://"))
            } else {
                UrlError(format!("{url}: the URL must start with http://"))
            }
        })?;
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
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| UrlError(format!("{url}: invalid host or port")))?;
        Ok(Endpoint {
            authority: format!("{host}:{port}"),
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// The address to connect to, as `(host, port)` for `TcpStream::connect`.
    pub fn connect_target(&self) -> (String, u16) {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        (host.to_string(), self.port)
    }

    /// Whether an absolute URL points at this same server (scheme, host and
    /// port), so that a redirect to it may be followed.
    pub fn same_origin(&self, url: &str) -> bool {
        let Some(rest) = url.strip_prefix("http://") else {
            return false;
        };
        let authority = match rest.find(['/', '?', '#']) {
            Some(i) => &rest[..i],
            None => rest,
        };
        self.is_authority(authority)
    }

    /// Whether `authority` (`host[:port]`, port 80 if absent) names this
    /// server's host and port.
    pub fn is_authority(&self, authority: &str) -> bool {
        match split_host_port(authority) {
            Some((host, port)) => host.eq_ignore_ascii_case(&self.host) && port == self.port,
            None => false,
        }
    }

    /// The base URL back as text, for messages and `run.json`.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.prefix)
    }
}

fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let host = &authority[..=end];
        return match &authority[end + 1..] {
            "" => Some((host, 80)),
            p => Some((host, p.strip_prefix(':')?.parse().ok()?)),
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Some((h, p.parse().ok()?)),
        Some(_) => None,
        None => Some((authority, 80)),
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
            "https://h",
            "ftp://h",
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
}
