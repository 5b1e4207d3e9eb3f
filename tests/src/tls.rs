//! TLS for the tests: a throwaway CA and certificates made at test time
//! (rcgen), written as PEM files; and a client that reports what a
//! handshake with the gateway gave.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::Reply;

/// A certificate authority of the test's own, in `dir`.
pub struct Pki {
    /// Where its files go.
    pub dir: PathBuf,
    name: String,
    params: CertificateParams,
    key: KeyPair,
    der: Vec<u8>,
}

/// A certificate issued by a [`Pki`], with its key.
#[derive(Clone)]
pub struct Issued {
    /// PEM certificate file.
    pub cert: PathBuf,
    /// PEM key file.
    pub key: PathBuf,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

impl Pki {
    /// A new CA named `name`; its certificate is written to `{name}-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("weir test CA {name}"));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).expect("self-signed CA");
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).expect("write CA");
        Self { dir: dir.to_owned(), name: name.to_owned(), params, key, der: cert.der().to_vec() }
    }

    /// The CA certificate file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// Issue a certificate with common name `cn` and DNS/IP subject
    /// alternative names `names`, for servers or (with `client`) clients,
    /// written to `{stem}.pem` and `{stem}-key.pem`.
    pub fn issue(&self, stem: &str, cn: &str, names: &[&str], client: bool) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.distinguished_name.push(DnType::OrganizationName, "Weir Tests");
        params.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        let issued = Issued {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}-key.pem")),
            der: cert.der().to_vec(),
        };
        crate::write_atomic(&issued.cert, cert.pem().as_bytes());
        crate::write_atomic(&issued.key, key.serialize_pem().as_bytes());
        issued
    }

    /// Roots holding this CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.der.clone())).expect("add CA");
        roots
    }

    /// A server config presenting `issued` (ALPN `h2`, `http/1.1`), asking
    /// for client certificates from `clients` when given.
    pub fn server_config(&self, issued: &Issued, clients: Option<&Pki>) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match clients {
            None => builder.with_no_client_auth(),
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider)
                    .build()
                    .expect("client verifier"),
            ),
        };
        let mut config = builder.with_single_cert(certs(&issued.cert), key(&issued.key)).expect("server cert");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path).expect("cert file").collect::<Result<_, _>>().expect("certs")
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).expect("key file")
}

/// What a handshake with a TLS server gave.
#[derive(Debug)]
pub struct Handshake {
    /// `TLSv1_3`, `TLSv1_2`.
    pub version: String,
    /// The protocol agreed by ALPN.
    pub alpn: Option<String>,
    /// The certificate the server presented, DER.
    pub leaf: Vec<u8>,
}

/// A TLS client trusting `ca`, presenting `client` when given, offering
/// `alpn`; `max_tls12` caps it at TLS 1.2.
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
}

impl TlsClient {
    /// A client trusting `ca`.
    pub fn new(ca: &Pki, client: Option<&Issued>, alpn: &[&str], max_tls12: bool) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] =
            if max_tls12 { &[&rustls::version::TLS12] } else { &[&rustls::version::TLS13, &rustls::version::TLS12] };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(ca.roots());
        let mut config = match client {
            Some(c) => builder.with_client_auth_cert(certs(&c.cert), key(&c.key)).expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Self { config: Arc::new(config) }
    }

    /// Handshake with `addr` asking for `sni`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        sni: &str,
    ) -> Result<(Handshake, tokio_rustls::client::TlsStream<tokio::net::TcpStream>), String> {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // With TLS 1.3 a refused client certificate shows on the first read:
        // make the server speak (a request follows in `get`).
        let (_, c) = tls.get_ref();
        let shake = Handshake {
            version: format!("{:?}", c.protocol_version().expect("version")),
            alpn: c.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
            leaf: c.peer_certificates().and_then(|certs| certs.first()).map(|d| d.to_vec()).unwrap_or_default(),
        };
        let _ = tokio::io::AsyncWriteExt::flush(&mut tls).await;
        Ok((shake, tls))
    }

    /// `GET path` over a new connection to `addr` (SNI `sni`), in HTTP/2
    /// when ALPN says so.
    pub async fn get(&self, addr: SocketAddr, sni: &str, path: &str) -> Result<(Handshake, Reply), String> {
        let (shake, tls) = self.connect(addr, sni).await?;
        let req = Request::get(format!("https://{sni}{path}")).body(Full::new(Bytes::new())).expect("request");
        let io = TokioIo::new(tls);
        let resp = if shake.alpn.as_deref() == Some("h2") {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2: {e}"))?;
            tokio::spawn(conn);
            send.send_request(req).await
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("h1: {e}"))?;
            tokio::spawn(conn);
            let mut req = req;
            let host = http::HeaderValue::try_from(sni).map_err(|e| e.to_string())?;
            req.headers_mut().insert(http::header::HOST, host);
            *req.uri_mut() = path.parse().map_err(|e: http::uri::InvalidUri| e.to_string())?;
            send.send_request(req).await
        }
        .map_err(|e| format!("request: {e}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((shake, Reply { status: parts.status, headers: parts.headers, body }))
    }
}
