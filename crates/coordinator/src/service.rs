//! How the service is reached: the connection settings of `-H`, TLS and
//! proxy flags, and the lister's configuration, built from [`ServiceArgs`]
//! in one place for `fetch` and `list`.

use crate::args::{HttpVersionArg, ServiceArgs};
use crate::config::ConfigError;
use crate::lister::ListerConfig;
use bulkget_console::MESSAGES;
use bulkget_http::{Backoff, Endpoint, Limits, Proto, Transport};
use bulkget_protocol::{ProxySettings, Secret, TlsSettings};
use std::time::Duration;

/// How every connection of the run is made, from the command line and the
/// environment: the lister's transport, and the same for the workers'
/// settings. Header values and proxy credentials live only here, in memory.
pub struct Connection {
    pub transport: Transport,
    pub headers: Vec<(String, Secret)>,
    pub tls: TlsSettings,
    pub proxy: Option<ProxySettings>,
}

impl Connection {
    /// The names of the headers given with `-H`, for run.json and messages.
    pub fn header_names(&self) -> Vec<String> {
        self.headers.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// Reads `-H`, the TLS options and the proxy, and builds the lister's
/// transport, so that an unreadable CA file or header file stops the run
/// before anything starts.
pub fn connection_setup(
    args: &ServiceArgs,
    endpoint: &Endpoint,
) -> Result<Connection, ConfigError> {
    let headers = crate::args::read_headers(&args.header).map_err(ConfigError::Service)?;
    let tls = TlsSettings {
        cacert: args.cacert.as_ref().map(|p| p.display().to_string()),
        client_cert: args.client_cert.as_ref().map(|p| p.display().to_string()),
        client_key: args.client_key.as_ref().map(|p| p.display().to_string()),
        insecure: args.insecure,
    };
    let tls_options = bulkget_http::tls::TlsOptions {
        cacert: args.cacert.clone(),
        client_cert: args.client_cert.clone(),
        client_key: args.client_key.clone(),
        insecure: args.insecure,
        alpn: bulkget_http::tls::Alpn::offer(
            bulkget_protocol::HttpVersion::from(args.http_version).allows_http2(),
        ),
    };
    if args.insecure && endpoint.tls {
        // On every run that uses it, even with --quiet: it is the one
        // thing about the run a user must not miss.
        tracing::warn!(
            target: MESSAGES,
            "bulkget: warning: {}",
            bulkget_http::tls::INSECURE_WARNING
        );
    }
    let proxy = bulkget_http::proxy::choose(
        endpoint,
        args.proxy.as_deref(),
        args.noproxy.as_deref(),
        |name| std::env::var(name).ok(),
    )
    .map_err(|e| ConfigError::Service(format!("proxy: {e}")))?;
    let transport = Transport::new(
        endpoint,
        Duration::from_millis(args.connect_timeout_ms),
        &tls_options,
        proxy.clone(),
        headers.clone(),
    )
    .map_err(|e| ConfigError::Service(e.to_string()))?;
    let headers = headers
        .into_iter()
        .map(|(name, value)| {
            let value = value.to_str().map(str::to_string).unwrap_or_default();
            (name.as_str().to_string(), Secret(value))
        })
        .collect();
    let proxy = proxy.map(|p| ProxySettings {
        host: p.host,
        port: p.port,
        authorization: p.authorization.map(|a| Secret(a.expose().to_string())),
    });
    Ok(Connection {
        transport,
        headers,
        tls,
        proxy,
    })
}

/// The lister's configuration: the page limits and timeouts, retries and
/// the protocol of the listing connection.
pub fn lister_config(args: &ServiceArgs, transport: Transport) -> ListerConfig {
    ListerConfig {
        transport,
        proto: match args.http_version {
            HttpVersionArg::Http2 => Proto::Http2,
            _ => Proto::Http1,
        },
        limits: Limits {
            first_byte: Duration::from_millis(args.first_byte_timeout_ms),
            idle: Duration::from_millis(args.idle_timeout_ms),
            max_body: args.max_page_size,
            max_redirects: 5,
            deadline: args.list_timeout,
        },
        max_attempts: args.max_attempts.max(1),
        backoff: Backoff {
            base: Duration::from_millis(args.retry_base_ms.max(1)),
            max: Duration::from_millis(args.retry_max_ms),
        },
    }
}
