//! TLS with rustls: the listener side (certificates chosen by SNI, ALPN,
//! TLS 1.2/1.3, optional client certificates) and the PEM loading the
//! upstream side shares.
//!
//! The listener's `rustls::ServerConfig` is part of the snapshot: it is
//! built from the files on every load, so a renewed certificate is served
//! after a reload (the watcher reloads when a certificate file changes), a
//! broken one is refused with the file and reason, and the last good one
//! keeps serving. Connections already open keep the config they started
//! with.
//!
//! Only the `ring` provider's suites are enabled: TLS 1.3 AES-GCM and
//! ChaCha20-Poly1305, and for TLS 1.2 only ECDHE key exchange with AEAD
//! ciphers. No 0-RTT data is accepted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};

use weir_config::files::{self, FileError};
use weir_config::{ClientAuth, ListenerTlsConfig, TlsVersion};
use weir_plugin_host::{ConnectionTls, sha256_hex};

/// Why TLS could not be set up from the configuration's files and
/// settings; every variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsSetupError {
    /// A certificate, key or CA file that cannot be used.
    #[error("{}: {problem}", .file.display())]
    File {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        problem: FileProblem,
    },
    /// A key that does not belong to its certificate.
    #[error("{} and {}: the key does not belong to the certificate ({reason})", .key.display(), .cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// rustls's reason.
        reason: String,
    },
    /// A client certificate rustls refuses.
    #[error("{} and {}: unusable client certificate: {reason}", .cert.display(), .key.display())]
    ClientCertificate {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
    /// `[server.tls]` without certificates.
    #[error("`certificates` is empty: a TLS listener needs at least one")]
    NoCertificates,
    /// Only one of `cert` and `key`.
    #[error("`cert` and `key` go together")]
    CertWithoutKey,
    /// An ALPN protocol weir does not serve.
    #[error("alpn: {0:?} is not a protocol weir serves (\"h2\", \"http/1.1\")")]
    Alpn(String),
    /// A `server_name` that is not a DNS name or an IP address.
    #[error("server_name {name:?}: not a valid name ({reason})")]
    ServerName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the protocol versions.
    #[error("protocol versions: {0}")]
    Versions(String),
    /// The system's trusted roots could not be read.
    #[error("{0}")]
    SystemRoots(String),
}

/// What is wrong with a certificate, key or CA file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileProblem {
    /// It cannot be read (or is not a regular file, or too large).
    #[error("{0}")]
    Read(FileError),
    /// Its PEM does not parse.
    #[error("not a valid PEM certificate file: {0}")]
    NotPem(String),
    /// It holds no certificate.
    #[error("no PEM certificate (-----BEGIN CERTIFICATE-----) in the file")]
    NoCertificate,
    /// Its `n`th certificate (from 1) is not X.509.
    #[error("certificate {0} is not valid X.509")]
    NotX509(usize),
    /// The served certificate does not parse.
    #[error("the certificate is not valid X.509: {0}")]
    Unparsable(String),
    /// It holds no usable private key.
    #[error("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {0}")]
    NoKey(String),
    /// The key is of a kind rustls cannot sign with.
    #[error("unusable key: {0}")]
    UnusableKey(String),
    /// A CA certificate rustls refuses as a root.
    #[error("not a usable CA certificate: {0}")]
    NotCa(String),
    /// The client-certificate verifier cannot be built from it.
    #[error("{0}")]
    Verifier(String),
}

fn file_error(file: &Path, problem: FileProblem) -> TlsSetupError {
    TlsSetupError::File { file: file.to_owned(), problem }
}

/// The crypto provider every TLS config uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Protocol versions from `min_version`.
pub(crate) fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    static BOTH: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];
    static ONLY_13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::Tls12 => &BOTH,
        TlsVersion::Tls13 => &ONLY_13,
    }
}

/// Every certificate in a PEM file, in order.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let bytes =
        files::read_bounded(path, files::MAX_SMALL_FILE, None).map_err(|e| file_error(path, FileProblem::Read(e)))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, FileProblem::NotPem(e.to_string())))?;
    if certs.is_empty() {
        return Err(file_error(path, FileProblem::NoCertificate));
    }
    for (i, c) in certs.iter().enumerate() {
        if x509_parser::parse_x509_certificate(c).is_err() {
            return Err(file_error(path, FileProblem::NotX509(i + 1)));
        }
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let bytes =
        files::read_bounded(path, files::MAX_SMALL_FILE, None).map_err(|e| file_error(path, FileProblem::Read(e)))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| file_error(path, FileProblem::NoKey(e.to_string())))
}

/// A root store from a PEM file of CA certificates.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    roots(load_certs(path)?, path)
}

/// A root store of CA certificates read from `path`.
pub(crate) fn roots(certs: Vec<CertificateDer<'static>>, path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| file_error(path, FileProblem::NotCa(e.to_string())))?;
    }
    Ok(roots)
}

/// A certificate chain with its key, checked to belong together.
pub(crate) fn certified_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsSetupError> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| file_error(key, FileProblem::UnusableKey(e.to_string())))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsSetupError::KeyMismatch {
        key: key.to_owned(),
        cert: cert.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(certified)
}

/// What `/admin/status` says about a served certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct CertificateInfo {
    /// The certificate file.
    pub(crate) file: PathBuf,
    /// Names it is served for (DNS and IP subject alternative names).
    pub(crate) names: Vec<String>,
    /// Subject.
    pub(crate) subject: String,
    /// Expiry, seconds since the Unix epoch.
    pub(crate) not_after: i64,
}

/// The TLS listener's settings in one snapshot.
pub(crate) struct ListenerTls {
    /// Where it listens (read at start).
    pub(crate) listen: SocketAddr,
    /// The rustls config handshakes use.
    pub(crate) config: Arc<ServerConfig>,
    /// Time allowed for a handshake.
    pub(crate) handshake_timeout: Duration,
    /// Add `x-forwarded-client-cert`.
    pub(crate) forward_client_cert: bool,
    /// The certificates, for the admin API.
    pub(crate) certificates: Vec<CertificateInfo>,
    /// Every file read, to be watched.
    pub(crate) files: Vec<PathBuf>,
}

impl ListenerTls {
    /// Build from `[server.tls]`; paths are relative to `base`. Each error
    /// names the file and what is wrong with it.
    pub(crate) fn build(cfg: &ListenerTlsConfig, base: &Path) -> Result<Self, TlsSetupError> {
        let provider = provider();
        let mut files = Vec::new();
        let mut by_name = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut first = None;
        let mut certificates = Vec::new();
        if cfg.certificates.is_empty() {
            return Err(TlsSetupError::NoCertificates);
        }
        for c in &cfg.certificates {
            let c = c.get_ref();
            let (cert, key) = (base.join(&c.cert), base.join(&c.key));
            files.push(cert.clone());
            files.push(key.clone());
            let certified = Arc::new(certified_key(&cert, &key, &provider)?);
            let info = describe(&certified.cert[0], &cert)?;
            for name in &info.names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_owned()).or_insert_with(|| certified.clone()),
                    None => by_name.entry(name).or_insert_with(|| certified.clone()),
                };
            }
            first.get_or_insert_with(|| certified.clone());
            certificates.push(info);
        }
        let resolver = BySni { by_name, wildcard, default: first.ok_or(TlsSetupError::NoCertificates)? };

        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions(cfg.min_version))
            .map_err(|e| TlsSetupError::Versions(e.to_string()))?;
        let builder = match &cfg.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let path = base.join(ca.get_ref());
                files.push(path.clone());
                let roots = Arc::new(load_roots(&path)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
                let verifier = match cfg.client_auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                let verifier = verifier.build().map_err(|e| file_error(&path, FileProblem::Verifier(e.to_string())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        let mut alpn = Vec::new();
        for p in &cfg.alpn {
            match p.get_ref().as_str() {
                "h2" | "http/1.1" => alpn.push(p.get_ref().as_bytes().to_vec()),
                other => return Err(TlsSetupError::Alpn(other.to_owned())),
            }
        }
        config.alpn_protocols = alpn;
        config.ignore_client_order = true;
        Ok(Self {
            listen: cfg.listen,
            config: Arc::new(config),
            handshake_timeout: cfg.handshake_timeout,
            forward_client_cert: cfg.forward_client_cert,
            certificates,
            files,
        })
    }
}

/// A certificate's names, subject and expiry.
fn describe(cert: &CertificateDer<'_>, file: &Path) -> Result<CertificateInfo, TlsSetupError> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| file_error(file, FileProblem::Unparsable(e.to_string())))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => names.push((*n).to_owned()),
                GeneralName::IPAddress(ip) => {
                    if let Ok(octets) = <[u8; 4]>::try_from(*ip) {
                        names.push(std::net::IpAddr::from(octets).to_string());
                    } else if let Ok(octets) = <[u8; 16]>::try_from(*ip) {
                        names.push(std::net::IpAddr::from(octets).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertificateInfo {
        file: file.to_owned(),
        names,
        subject: parsed.subject().to_string(),
        not_after: parsed.validity().not_after.timestamp(),
    })
}

/// Chooses the certificate by the client's SNI: an exact name, then a
/// `*.` wildcard for the name's parent, then the first certificate.
#[derive(Debug)]
struct BySni {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else { return Some(self.default.clone()) };
        let sni = sni.to_ascii_lowercase();
        let found = self
            .by_name
            .get(&sni)
            .or_else(|| sni.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)))
            .unwrap_or(&self.default);
        Some(found.clone())
    }
}

/// What the TLS handshake established, read off an accepted connection.
pub(crate) fn connection_tls(conn: &rustls::ServerConnection) -> ConnectionTls {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let alpn = match conn.alpn_protocol() {
        Some(b"h2") => Some("h2"),
        Some(b"http/1.1") => Some("http/1.1"),
        _ => None,
    };
    let leaf = conn.peer_certificates().and_then(|c| c.first());
    let client_subject =
        leaf.and_then(|c| x509_parser::parse_x509_certificate(c).ok().map(|(_, parsed)| parsed.subject().to_string()));
    let client_cert_sha256 = leaf.map(|c| sha256_hex(c));
    ConnectionTls {
        version,
        alpn,
        server_name: conn.server_name().map(str::to_owned),
        client_subject,
        client_cert_sha256,
    }
}
