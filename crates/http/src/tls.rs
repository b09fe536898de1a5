//! TLS for HTTPS services: the rustls client configuration built from the
//! command line's options, and what a TLS failure means to a user.
//!
//! # Trust
//!
//! By default a server's certificate must chain to a root of the operating
//! system's trust store, read with `rustls-native-certs` (on Linux the
//! bundle that the `ca-certificates` package maintains, or the file and
//! directory named by `SSL_CERT_FILE` and `SSL_CERT_DIR`). That crate rather
//! than `webpki-roots`, which compiles Mozilla's list into the binary,
//! because a company's or a private service's CA that an administrator has
//! added to the system store is then trusted without a flag, as it is by
//! curl and the system's other programs, and because the list follows the
//! system's updates instead of bulkget's releases.
//!
//! [`TlsOptions::cacert`] (`--cacert FILE`) replaces the system roots with
//! the certificates in FILE, as curl's `--cacert` does. A client
//! certificate and its key (`--client-cert`, `--client-key`) are offered to
//! servers that ask for one (mutual TLS). [`TlsOptions::insecure`]
//! (`--insecure`) accepts any server certificate and ignores `--cacert`; the
//! caller prints [`INSECURE_WARNING`] on every run that uses it.
//!
//! # One configuration per process
//!
//! A `ClientConfig` carries rustls's default session store
//! (`Resumption::default()`: up to 256 sessions in memory, TLS 1.3 tickets
//! and TLS 1.2 session ids). Build it once per process with
//! [`client_config`] and give every connection a clone of the `Arc`: a
//! reconnect to the same server then resumes its session, an abbreviated
//! handshake without sending or checking the certificate chain again. A
//! config per connection would start every handshake from nothing.
//!
//! # Failures
//!
//! [`classify`] turns a rustls error into a sentence that names the problem
//! (unknown issuer, name mismatch, expiry, a refused client certificate,
//! no common protocol) and says whether it is permanent: a certificate or
//! protocol problem repeats on every attempt, so it is not retried; other
//! TLS errors (a corrupted record, a dropped handshake) may be the network
//! and are. [`find_tls_error`] digs the rustls error out of the I/O and
//! hyper errors that carry it.
//!
//! A TLS 1.3 server checks a client certificate after the client's side of
//! the handshake is over, so its refusal arrives with the first read, not
//! from the handshake. Through hyper a request then often sees only
//! "canceled" (its connection died under it) or a broken pipe (its write
//! raced the server's close, and the alert was never read), and h2 keeps
//! only the rustls error's text. So the transport names it itself
//! (`transport::Connected::tls_failure`): it keeps the first lasting TLS
//! error any read meets, and after a write that fails on a reset it reads
//! what the socket still holds into rustls to find the alert; a request
//! that failed reports that error first.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, PeerIncompatible,
    RootCertStore, SignatureScheme,
};

/// What the user asked for about TLS; the defaults verify against the
/// system's roots and offer no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Trust only the CA certificates in this PEM file (`--cacert`).
    pub cacert: Option<PathBuf>,
    /// A PEM certificate chain to offer for mutual TLS (`--client-cert`).
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert` (`--client-key`).
    pub client_key: Option<PathBuf>,
    /// Accept any server certificate (`--insecure`).
    pub insecure: bool,
    /// What ALPN offers: `h2` too unless `--http-version 1.1` was asked.
    pub alpn: Alpn,
}

/// The warning for every run with [`TlsOptions::insecure`].
pub const INSECURE_WARNING: &str = "--insecure: server certificates are not verified; \
     anyone on the network path can read and change what is fetched";

/// The application protocols offered by ALPN, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alpn {
    /// `http/1.1` only.
    #[default]
    Http1,
    /// `h2`, then `http/1.1`.
    Http2AndHttp1,
}

impl Alpn {
    /// What to offer: `h2` and `http/1.1` when HTTP/2 is allowed.
    pub fn offer(http2_allowed: bool) -> Alpn {
        if http2_allowed {
            Alpn::Http2AndHttp1
        } else {
            Alpn::Http1
        }
    }

    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::Http2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// A TLS option that cannot be used: a file that cannot be read or holds
/// no usable certificate or key, or options that do not fit together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfigError(String);

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for TlsConfigError {}

/// The rustls provider: ring, named explicitly so that no process-wide
/// default has to be installed and no other provider can be picked up.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the one client configuration of a process (see the module
/// documentation on sharing it).
pub fn client_config(
    options: &TlsOptions,
    alpn: Alpn,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError(format!("TLS protocol versions: {e}")))?;
    let builder = if options.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        let roots = match &options.cacert {
            Some(path) => roots_from_file(path)?,
            None => system_roots()?,
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match (&options.client_cert, &options.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, "the client certificate file (--client-cert)")?;
            let key = private_key(key)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                TlsConfigError(format!(
                    "the client certificate {} and key cannot be used together: {e}",
                    cert.display()
                ))
            })?
        }
        (Some(_), None) => {
            return Err(TlsConfigError(
                "--client-cert needs --client-key (the certificate's private key)".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(TlsConfigError(
                "--client-key needs --client-cert (the certificate it belongs to)".into(),
            ))
        }
    };
    config.alpn_protocols = alpn.protocols();
    Ok(Arc::new(config))
}

/// The roots of the operating system's trust store.
fn system_roots() -> Result<RootCertStore, TlsConfigError> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::debug!("reading the system's trusted certificates: {error}");
    }
    let mut roots = RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::debug!("{ignored} certificates of the system store are not usable roots");
    }
    if roots.is_empty() {
        return Err(TlsConfigError(
            "no trusted root certificate found in the system's store (on Debian and Ubuntu, \
             install the ca-certificates package); or name the server's CA with --cacert FILE"
                .into(),
        ));
    }
    Ok(roots)
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let what = "the CA file (--cacert)";
    let mut roots = RootCertStore::empty();
    for (i, cert) in certificates(path, what)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            TlsConfigError(format!(
                "{what} {}: certificate {} is not usable as a trust anchor: {e}",
                path.display(),
                i + 1
            ))
        })?;
    }
    Ok(roots)
}

/// Reads a PEM file, saying which option named it if that fails.
fn read_pem_file(path: &Path, what: &str) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path)
        .map_err(|e| TlsConfigError(format!("cannot read {what} {}: {e}", path.display())))
}

/// What is wrong with a PEM file, in words.
fn describe_pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a PEM block has no end line (expected {})",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "a PEM block starts with a malformed line ({})",
            String::from_utf8_lossy(line)
        ),
        pem::Error::Base64Decode(why) => format!("a PEM block is not valid base64 ({why})"),
        other => other.to_string(),
    }
}

/// Every certificate in a PEM file; at least one.
fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let bytes = read_pem_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsConfigError(format!(
                "{what} {} is not valid PEM: {}",
                path.display(),
                describe_pem_error(&e)
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError(format!(
            "{what} {} holds no certificate (a PEM block '-----BEGIN CERTIFICATE-----')",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let what = "the client key file (--client-key)";
    let bytes = read_pem_file(path, what)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound => {
                "it holds no private key (a PEM block '-----BEGIN PRIVATE KEY-----')".to_owned()
            }
            other => format!("it is not valid PEM: {}", describe_pem_error(&other)),
        };
        TlsConfigError(format!("{what} {}: {why}", path.display()))
    })
}

/// `--insecure`: any certificate is accepted. The handshake's signatures
/// are still checked against the certificate presented, which costs
/// nothing and keeps the handshake itself well-formed.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The kind of a TLS failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsProblem {
    /// The server's certificate does not chain to a trusted root.
    UnknownIssuer,
    /// The server's certificate is not valid for the host name in the URL.
    NameMismatch,
    /// The server's certificate has expired.
    Expired,
    /// The server's certificate is not valid yet.
    NotYetValid,
    /// Another problem with the server's certificate (revoked, bad
    /// signature, wrong purpose, malformed).
    BadCertificate,
    /// The server refused our client certificate, or wanted one and got
    /// none.
    ClientCertificateRefused,
    /// No protocol version, cipher suite or application protocol in common.
    Incompatible,
    /// Anything else: may be the network, so worth another attempt.
    Other,
}

/// A classified TLS failure: its kind and a sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure {
    pub problem: TlsProblem,
    pub message: String,
}

impl TlsFailure {
    /// Whether every attempt will fail the same way, so none should be
    /// retried: all but [`TlsProblem::Other`].
    pub fn is_permanent(&self) -> bool {
        self.problem != TlsProblem::Other
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn date(time: UnixTime) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(time.as_secs());
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Names the problem behind a rustls error, and whether it is permanent.
pub fn classify(error: &rustls::Error) -> TlsFailure {
    use TlsProblem::*;
    let (problem, message) = match error {
        rustls::Error::InvalidCertificate(cert) => classify_certificate(cert),
        rustls::Error::AlertReceived(alert) => classify_alert(*alert),
        rustls::Error::PeerIncompatible(why) => (
            Incompatible,
            match why {
                PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::SupportedVersionsExtensionRequired => {
                    "the server speaks no TLS version in common with bulkget (1.2 or 1.3)"
                        .to_owned()
                }
                other => {
                    format!("the server has no TLS parameters in common with bulkget ({other:?})")
                }
            },
        ),
        rustls::Error::NoApplicationProtocol => (
            Incompatible,
            "the server accepts none of the offered HTTP versions (ALPN)".to_owned(),
        ),
        rustls::Error::NoCertificatesPresented => (
            BadCertificate,
            "the server presented no certificate".to_owned(),
        ),
        other => (Other, format!("TLS error: {other}")),
    };
    TlsFailure { problem, message }
}

fn classify_certificate(error: &CertificateError) -> (TlsProblem, String) {
    use TlsProblem::*;
    match error {
        CertificateError::UnknownIssuer => (
            UnknownIssuer,
            "the server's certificate is signed by an unknown issuer: no root it chains to is \
             trusted (the system's store, or the --cacert file when one is given)"
                .to_owned(),
        ),
        CertificateError::NotValidForNameContext { expected, presented } => (
            NameMismatch,
            format!(
                "the server's certificate does not match the name {} (it is for {})",
                expected.to_str(),
                if presented.is_empty() {
                    "no name at all".to_owned()
                } else {
                    presented
                        .iter()
                        .map(|name| bare_name(name))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        ),
        CertificateError::NotValidForName => (
            NameMismatch,
            "the server's certificate does not match the host name of the URL".to_owned(),
        ),
        CertificateError::ExpiredContext { time, not_after } => (
            Expired,
            format!(
                "the server's certificate expired on {} (it is now {})",
                date(*not_after),
                date(*time)
            ),
        ),
        CertificateError::Expired => (Expired, "the server's certificate has expired".to_owned()),
        CertificateError::NotValidYetContext { time, not_before } => (
            NotYetValid,
            format!(
                "the server's certificate is not valid before {} (it is now {}; is the clock right?)",
                date(*not_before),
                date(*time)
            ),
        ),
        CertificateError::NotValidYet => (
            NotYetValid,
            "the server's certificate is not valid yet (is the clock right?)".to_owned(),
        ),
        CertificateError::Revoked => (
            BadCertificate,
            "the server's certificate has been revoked".to_owned(),
        ),
        other => (
            BadCertificate,
            format!("the server's certificate is not acceptable: {other:?}"),
        ),
    }
}

/// A name as the verifier presents it (`DnsName("example.com")`,
/// `IpAddress(127.0.0.1)`) without the wrapping.
fn bare_name(presented: &str) -> &str {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|rest| rest.strip_suffix(')'))
        })
        .unwrap_or(presented)
}

fn classify_alert(alert: AlertDescription) -> (TlsProblem, String) {
    use AlertDescription as A;
    use TlsProblem::*;
    match alert {
        A::CertificateRequired => (
            ClientCertificateRefused,
            "the server requires a client certificate (--client-cert and --client-key)".to_owned(),
        ),
        A::BadCertificate
        | A::UnsupportedCertificate
        | A::CertificateRevoked
        | A::CertificateExpired
        | A::CertificateUnknown
        | A::UnknownCA
        | A::AccessDenied
        | A::NoCertificate => (
            ClientCertificateRefused,
            format!("the server refused the client certificate (TLS alert {alert:?})"),
        ),
        A::HandshakeFailure
        | A::ProtocolVersion
        | A::InsufficientSecurity
        | A::NoApplicationProtocol => (
            Incompatible,
            format!(
                "the server ended the TLS handshake (alert {alert:?}): no protocol version, \
                 cipher or HTTP version in common, or it wants a client certificate"
            ),
        ),
        other => (Other, format!("the server sent the TLS alert {other:?}")),
    }
}

/// The rustls error in an error's chain of sources, if there is one: in
/// an I/O error from a TLS stream, or in a hyper error that wraps one.
pub fn find_tls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An io::Error's `source` is the source of the error it wraps, not
        // that error itself, so the wrapped one is looked at here.
        if let Some(inner) = error.downcast_ref::<io::Error>().and_then(|e| e.get_ref()) {
            if let Some(tls) = find_tls_error(inner) {
                return Some(tls);
            }
        }
        // The same holds for an HTTP/2 connection's IO error: its `source`
        // skips the io::Error that carries the TLS alert.
        if let Some(io) = error
            .downcast_ref::<h2::Error>()
            .and_then(h2::Error::get_io)
        {
            if let Some(tls) = io.get_ref().and_then(|inner| find_tls_error(inner)) {
                return Some(tls);
            }
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConnection, ServerConfig, ServerConnection};

    type Ca = CertifiedIssuer<'static, KeyPair>;

    fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// A leaf certificate for `names` signed by `ca`, as (cert PEM, key PEM).
    fn leaf(
        ca: &Ca,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn server_leaf(ca: &Ca, names: &[&str]) -> (String, String) {
        leaf(ca, names, ExtendedKeyUsagePurpose::ServerAuth, false)
    }

    /// A directory with files written in it.
    struct Files(tempfile::TempDir);

    impl Files {
        fn new() -> Files {
            Files(tempfile::tempdir().unwrap())
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    fn trusting(files: &Files, ca: &Ca) -> TlsOptions {
        TlsOptions {
            cacert: Some(files.write("ca.pem", &ca.pem())),
            ..TlsOptions::default()
        }
    }

    fn server_config(cert_pem: &str, key_pem: &str, client_ca: Option<&Ca>) -> Arc<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.der().clone()).unwrap();
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A whole handshake in memory, then one byte of application data each
    /// way (a TLS 1.3 server checks a client certificate after the client
    /// thinks it is done). Returns the client's error if it had one, else
    /// the server's, else the client connection.
    fn handshake(
        client: &Arc<ClientConfig>,
        server: &Arc<ServerConfig>,
        name: &str,
    ) -> Result<ClientConnection, rustls::Error> {
        use std::io::{Read, Write};
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut c = ClientConnection::new(Arc::clone(client), name).unwrap();
        let mut s = ServerConnection::new(Arc::clone(server)).unwrap();
        c.writer().write_all(b"c").unwrap();
        let mut server_error = None;
        for _ in 0..10 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            let mut slice = &wire[..];
            while !slice.is_empty() {
                s.read_tls(&mut slice).unwrap();
                if let Err(e) = s.process_new_packets() {
                    server_error.get_or_insert(e);
                    break;
                }
            }
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            let mut slice = &wire[..];
            while !slice.is_empty() {
                c.read_tls(&mut slice).unwrap();
                c.process_new_packets()?;
            }
            if let Some(e) = server_error {
                return Err(e);
            }
            let mut byte = [0];
            if !c.is_handshaking() && !s.is_handshaking() && s.reader().read(&mut byte).is_ok() {
                return Ok(c);
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn a_pem_ca_written_by_rcgen_is_trusted_and_alpn_is_as_asked() {
        let files = Files::new();
        let ca = ca("test CA");
        let (cert, key) = server_leaf(&ca, &["localhost", "127.0.0.1"]);
        let server = server_config(&cert, &key, None);
        for (alpn, expected) in [
            (Alpn::Http2AndHttp1, &b"h2"[..]),
            (Alpn::Http1, b"http/1.1"),
        ] {
            let client = client_config(&trusting(&files, &ca), alpn).unwrap();
            for name in ["localhost", "127.0.0.1"] {
                let conn = handshake(&client, &server, name).unwrap();
                assert_eq!(conn.alpn_protocol(), Some(expected));
            }
        }
    }

    #[test]
    fn the_system_store_is_the_default_and_does_not_trust_a_private_ca() {
        // This machine (and CI, which runs on the same kind) has the
        // ca-certificates bundle; a system without one gets a clear error.
        let client = match client_config(&TlsOptions::default(), Alpn::Http1) {
            Ok(client) => client,
            Err(e) => {
                assert!(e.to_string().contains("--cacert"), "{e}");
                return;
            }
        };
        let ca = ca("private CA");
        let (cert, key) = server_leaf(&ca, &["localhost"]);
        let err = handshake(&client, &server_config(&cert, &key, None), "localhost").unwrap_err();
        assert_eq!(classify(&err).problem, TlsProblem::UnknownIssuer);
    }

    #[test]
    fn bad_pem_and_unreadable_files_give_clear_errors() {
        let files = Files::new();
        let error = |options: TlsOptions| {
            client_config(&options, Alpn::Http1)
                .unwrap_err()
                .to_string()
        };
        let cacert = |path: PathBuf| TlsOptions {
            cacert: Some(path),
            ..TlsOptions::default()
        };

        let missing = files.0.path().join("missing.pem");
        let e = error(cacert(missing.clone()));
        assert!(e.starts_with("cannot read the CA file (--cacert)"), "{e}");
        assert!(e.contains(&missing.display().to_string()), "{e}");

        let e = error(cacert(files.write("empty.pem", "just some text\n")));
        assert!(e.contains("holds no certificate"), "{e}");

        let pem = ca("x").pem();
        let cut = files.write("cut.pem", &pem[..pem.len() - 30]);
        let e = error(cacert(cut));
        assert!(
            e.contains("is not valid PEM: a PEM block has no end line"),
            "{e}"
        );

        let garbled = pem.replacen("M", "*", 3);
        let e = error(cacert(files.write("garbled.pem", &garbled)));
        assert!(e.contains("is not valid PEM"), "{e}");

        let ca = ca("client CA");
        let (cert, _) = leaf(&ca, &[], ExtendedKeyUsagePurpose::ClientAuth, false);
        let cert = files.write("client.pem", &cert);
        let e = error(TlsOptions {
            client_cert: Some(cert.clone()),
            ..trusting(&files, &ca)
        });
        assert!(e.contains("--client-cert needs --client-key"), "{e}");
        let e = error(TlsOptions {
            client_cert: Some(cert.clone()),
            client_key: Some(cert.clone()),
            ..trusting(&files, &ca)
        });
        assert!(
            e.contains("(--client-key)") && e.contains("holds no private key"),
            "{e}"
        );
        // A key that belongs to another certificate.
        let (_, other_key) = leaf(&ca, &[], ExtendedKeyUsagePurpose::ClientAuth, false);
        let e = error(TlsOptions {
            client_cert: Some(cert),
            client_key: Some(files.write("other-key.pem", &other_key)),
            ..trusting(&files, &ca)
        });
        assert!(e.contains("cannot be used together"), "{e}");
    }

    #[test]
    fn certificate_problems_are_named_and_permanent() {
        let files = Files::new();
        let trusted = ca("trusted CA");
        let client = client_config(&trusting(&files, &trusted), Alpn::Http1).unwrap();
        let failure = |cert: (String, String), name: &str| {
            let server = server_config(&cert.0, &cert.1, None);
            let failure = classify(&handshake(&client, &server, name).unwrap_err());
            assert!(failure.is_permanent(), "{failure:?}");
            failure
        };

        let unknown = failure(server_leaf(&ca("stranger CA"), &["localhost"]), "localhost");
        assert_eq!(unknown.problem, TlsProblem::UnknownIssuer);
        assert!(unknown.message.contains("unknown issuer"), "{unknown}");

        let misnamed = failure(server_leaf(&trusted, &["wrong.invalid"]), "localhost");
        assert_eq!(misnamed.problem, TlsProblem::NameMismatch);
        assert!(
            misnamed
                .message
                .ends_with("does not match the name localhost (it is for wrong.invalid)"),
            "{misnamed}"
        );
        let by_ip = failure(
            server_leaf(&trusted, &["localhost", "127.0.0.2"]),
            "127.0.0.1",
        );
        assert_eq!(by_ip.problem, TlsProblem::NameMismatch, "{by_ip}");
        assert!(
            by_ip.message.ends_with("(it is for localhost, 127.0.0.2)"),
            "{by_ip}"
        );

        let expired = failure(
            leaf(
                &trusted,
                &["localhost"],
                ExtendedKeyUsagePurpose::ServerAuth,
                true,
            ),
            "localhost",
        );
        assert_eq!(expired.problem, TlsProblem::Expired);
        assert!(
            expired.message.contains("expired on 2001-01-01"),
            "{expired}"
        );

        // A client certificate used as a server certificate.
        let wrong_use = failure(
            leaf(
                &trusted,
                &["localhost"],
                ExtendedKeyUsagePurpose::ClientAuth,
                false,
            ),
            "localhost",
        );
        assert_eq!(wrong_use.problem, TlsProblem::BadCertificate, "{wrong_use}");
    }

    #[test]
    fn insecure_accepts_any_certificate() {
        let client = client_config(
            &TlsOptions {
                insecure: true,
                // Ignored, not read: --insecure wins.
                cacert: Some(PathBuf::from("/nonexistent/ca.pem")),
                ..TlsOptions::default()
            },
            Alpn::Http2AndHttp1,
        )
        .unwrap();
        let stranger = ca("stranger CA");
        for cert in [
            server_leaf(&stranger, &["wrong.invalid"]),
            leaf(
                &stranger,
                &["localhost"],
                ExtendedKeyUsagePurpose::ServerAuth,
                true,
            ),
        ] {
            let server = server_config(&cert.0, &cert.1, None);
            handshake(&client, &server, "localhost").unwrap();
        }
    }

    #[test]
    fn mutual_tls_offers_the_client_certificate_and_a_refusal_is_named() {
        let files = Files::new();
        let server_ca = ca("server CA");
        let client_ca = ca("client CA");
        let (cert, key) = server_leaf(&server_ca, &["localhost"]);
        let server = server_config(&cert, &key, Some(&client_ca));

        let (client_cert, client_key) =
            leaf(&client_ca, &[], ExtendedKeyUsagePurpose::ClientAuth, false);
        let with_cert = TlsOptions {
            client_cert: Some(files.write("client.pem", &client_cert)),
            client_key: Some(files.write("client-key.pem", &client_key)),
            ..trusting(&files, &server_ca)
        };
        let client = client_config(&with_cert, Alpn::Http1).unwrap();
        handshake(&client, &server, "localhost").unwrap();

        let without = client_config(&trusting(&files, &server_ca), Alpn::Http1).unwrap();
        let failure = classify(&handshake(&without, &server, "localhost").unwrap_err());
        assert_eq!(
            failure.problem,
            TlsProblem::ClientCertificateRefused,
            "{failure}"
        );
        assert!(failure.is_permanent());
        assert!(failure.message.contains("--client-cert"), "{failure}");

        // A certificate from another CA is refused too.
        let (stranger_cert, stranger_key) = leaf(
            &ca("stranger CA"),
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            false,
        );
        let stranger = client_config(
            &TlsOptions {
                client_cert: Some(files.write("stranger.pem", &stranger_cert)),
                client_key: Some(files.write("stranger-key.pem", &stranger_key)),
                ..trusting(&files, &server_ca)
            },
            Alpn::Http1,
        )
        .unwrap();
        let failure = classify(&handshake(&stranger, &server, "localhost").unwrap_err());
        assert_eq!(
            failure.problem,
            TlsProblem::ClientCertificateRefused,
            "{failure}"
        );
    }

    #[test]
    fn other_tls_errors_are_transient() {
        for error in [
            rustls::Error::DecryptError,
            rustls::Error::AlertReceived(AlertDescription::InternalError),
            rustls::Error::General("x".into()),
        ] {
            let failure = classify(&error);
            assert_eq!(failure.problem, TlsProblem::Other);
            assert!(!failure.is_permanent(), "{error:?}");
        }
        let incompatible = classify(&rustls::Error::AlertReceived(
            AlertDescription::ProtocolVersion,
        ));
        assert_eq!(incompatible.problem, TlsProblem::Incompatible);
        assert!(incompatible.is_permanent());
    }

    /// An error that wraps another, as hyper's does.
    #[derive(Debug)]
    struct Wrapper(Box<dyn StdError + Send + Sync>);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapper")
        }
    }

    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn the_rustls_error_is_found_inside_io_and_wrapping_errors() {
        let tls = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        // What tokio-rustls returns.
        let io = io::Error::new(io::ErrorKind::InvalidData, tls.clone());
        assert_eq!(find_tls_error(&io), Some(&tls));
        let wrapped = Wrapper(Box::new(io));
        assert_eq!(find_tls_error(&wrapped), Some(&tls));
        let twice = Wrapper(Box::new(Wrapper(Box::new(tls.clone()))));
        assert_eq!(find_tls_error(&twice), Some(&tls));
        let plain = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(find_tls_error(&Wrapper(Box::new(plain))), None);
    }
}
