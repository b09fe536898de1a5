//! TLS for `--tls`: certificates made at start with rcgen, and the rustls
//! server configuration.
//!
//! The server makes a certificate authority and a server certificate signed
//! by it, for `localhost`, `127.0.0.1`, `::1` and the bound address. The
//! authority, not the server certificate, is what `--cert-out` writes: a
//! client that trusts it (`--cacert`) is in the position of a client that
//! trusts a real CA, and `--cert-fault` can then serve an expired or
//! misnamed certificate from the same trusted authority, which a client
//! must still refuse. Everything is new on every start; the keys never
//! leave the process except the client key of `--mtls-dir`, which exists
//! to be handed to a client.
//!
//! ALPN offers `h2` and `http/1.1` (`http/1.1` alone with `--http1-only`).
//! rustls's default server session cache and TLS 1.3 tickets let a client
//! resume; [`crate::ServerStats::tls_resumed`] counts the resumptions.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::args::{CertFault, ServerArgs};

/// The names of `--mtls-dir`'s files.
pub const MTLS_CA_FILE: &str = "ca.pem";
pub const MTLS_CERT_FILE: &str = "client.pem";
pub const MTLS_KEY_FILE: &str = "client-key.pem";

/// The only name a `--cert-fault wrong-name` certificate is valid for.
pub const WRONG_NAME: &str = "wrong.invalid";

/// The TLS side of a running server.
pub(crate) struct ServerTls {
    pub(crate) acceptor: TlsAcceptor,
    /// The certificate authority that signed the server's certificate.
    pub(crate) ca_pem: String,
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// A certificate authority with the given common name.
fn authority(common_name: &str) -> io::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(|e| tls_error("generating a CA key", e))?;
    CertifiedIssuer::self_signed(params, key).map_err(|e| tls_error("making a CA", e))
}

/// A leaf certificate for `names` (DNS names or IP addresses) and `usage`,
/// signed by `ca`, with its private key.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    common_name: &str,
    names: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
    fault: Option<CertFault>,
) -> io::Result<(Certificate, KeyPair)> {
    let mut params =
        CertificateParams::new(names).map_err(|e| tls_error("certificate names", e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    if fault == Some(CertFault::Expired) {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().map_err(|e| tls_error("generating a key", e))?;
    let cert = params
        .signed_by(&key, ca)
        .map_err(|e| tls_error("signing a certificate", e))?;
    Ok((cert, key))
}

/// The names the server certificate is valid for: the loopback names, and
/// the bound address if it is another specific one.
fn server_names(addr: IpAddr, fault: Option<CertFault>) -> Vec<String> {
    if fault == Some(CertFault::WrongName) {
        return vec![WRONG_NAME.to_owned()];
    }
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !addr.is_unspecified() && !addr.is_loopback() {
        names.push(addr.to_string());
    }
    names
}

/// Writes `contents` to `path` through a temporary file and a rename, so a
/// reader never sees half a file. `mode` is the new file's permission bits.
fn write_file(path: &Path, contents: &str, mode: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The rustls provider: ring, named explicitly so that no process-wide
/// default has to be installed.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes the certificates, writes `--cert-out` and `--mtls-dir`, and builds
/// the acceptor; `None` without `--tls`. `bound` is the address the server
/// listens on (which `--port 0` and `--addr` decide).
pub(crate) fn setup(args: &ServerArgs, bound: IpAddr) -> io::Result<Option<ServerTls>> {
    if !args.tls {
        return Ok(None);
    }
    let ca = authority("bulkget-server test CA")?;
    let (cert, key) = leaf(
        &ca,
        "bulkget-server",
        server_names(bound, args.cert_fault),
        ExtendedKeyUsagePurpose::ServerAuth,
        args.cert_fault,
    )?;
    let ca_pem = ca.pem();
    if let Some(path) = &args.cert_out {
        write_file(path, &ca_pem, 0o644).map_err(|e| with_path(path, e))?;
    }

    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("TLS versions", e))?;
    let builder = match &args.mtls_dir {
        None => builder.with_no_client_auth(),
        Some(dir) => {
            let client_ca = authority("bulkget-server test client CA")?;
            let (client_cert, client_key) = leaf(
                &client_ca,
                "bulkget test client",
                Vec::new(),
                ExtendedKeyUsagePurpose::ClientAuth,
                None,
            )?;
            fs::create_dir_all(dir).map_err(|e| with_path(dir, e))?;
            let files = [
                (MTLS_CA_FILE, client_ca.pem(), 0o644),
                (MTLS_CERT_FILE, client_cert.pem(), 0o644),
                // The key is a secret even in a test: only its owner reads it.
                (MTLS_KEY_FILE, client_key.serialize_pem(), 0o600),
            ];
            for (name, contents, mode) in files {
                let path = dir.join(name);
                write_file(&path, &contents, mode).map_err(|e| with_path(&path, e))?;
            }
            let mut roots = RootCertStore::empty();
            roots
                .add(client_ca.der().clone())
                .map_err(|e| tls_error("the client CA", e))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| tls_error("the client verifier", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = builder
        .with_single_cert(vec![cert.der().clone()], key)
        .map_err(|e| tls_error("the server certificate", e))?;
    config.alpn_protocols = if args.http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Ok(Some(ServerTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        ca_pem,
    }))
}
