//! `[server.tls]` (TLS on a second proxy listener) and an upstream's `tls`
//! (TLS to its targets). Files are PEM, relative to the config file; they
//! are read on every load, so a renewed certificate is picked up by a
//! reload (the watcher reloads when one of them changes).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::duration;
use crate::json_schema::{DurationString, SocketAddrString};

/// `[server.tls]`: a TLS listener beside the cleartext one, with its
/// certificates (chosen by SNI) and, optionally, client certificates
/// (mutual TLS).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// Address of the TLS listener (HTTP/1.1 and HTTP/2 by ALPN). Read at
    /// start, like `listen`.
    #[schemars(with = "SocketAddrString")]
    pub listen: SocketAddr,
    /// Certificates with their keys. The one whose names (subject
    /// alternative names, `*.` wildcards included) match the client's SNI
    /// is presented; the first one when none matches or the client sent no
    /// SNI.
    #[schemars(with = "Vec<CertificateConfig>")]
    pub certificates: Vec<Spanned<CertificateConfig>>,
    /// Oldest protocol version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Protocols offered by ALPN, in order of preference.
    #[serde(default = "defaults::alpn")]
    #[schemars(with = "Vec<String>")]
    pub alpn: Vec<Spanned<String>>,
    /// CA certificates (PEM) that client certificates must chain to; no
    /// client certificates are asked for without it.
    #[serde(default)]
    #[schemars(with = "PathBuf")]
    pub client_ca: Option<Spanned<PathBuf>>,
    /// With `client_ca`: `"required"` (default) refuses a handshake without
    /// a valid client certificate; `"optional"` lets it through with none
    /// (a presented certificate must still be valid).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Send the verified client certificate's subject upstream in
    /// `x-forwarded-client-cert` (`Subject="…";Hash=<sha256 of the DER>`).
    /// A client's own `x-forwarded-client-cert` is always removed.
    #[serde(default)]
    pub forward_client_cert: bool,
    /// Time allowed for the TLS handshake.
    #[serde(default = "defaults::handshake_timeout", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub handshake_timeout: Duration,
}

/// One certificate chain and its private key.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file: the leaf certificate first, then intermediates.
    pub cert: PathBuf,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `min_version = "1.2" | "1.3"`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// `client_auth = "required" | "optional"`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No valid client certificate, no connection.
    #[default]
    Required,
    /// A client certificate is asked for, not required.
    Optional,
}

/// An upstream's `tls`: `true` (verify against the system's roots) or a
/// table.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum UpstreamTls {
    /// `tls = true`: TLS with the defaults; `false`: cleartext.
    Enabled(bool),
    /// `tls = { ... }`
    Settings(UpstreamTlsConfig),
}

impl UpstreamTls {
    /// The settings, when TLS is on.
    pub fn settings(&self) -> Option<UpstreamTlsConfig> {
        match self {
            UpstreamTls::Enabled(false) => None,
            UpstreamTls::Enabled(true) => Some(UpstreamTlsConfig::default()),
            UpstreamTls::Settings(s) => Some(s.clone()),
        }
    }
}

/// `tls = { ca = "...", server_name = "...", cert = "...", key = "..." }`:
/// TLS to an upstream's targets, with settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// CA certificates (PEM) the targets' certificates must chain to;
    /// the system's trusted roots if absent.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and verified in the target's certificate; by
    /// default the host name of the first target (or the target's IP
    /// address when targets are addresses).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Client certificate chain (PEM) presented to targets that ask.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM); required with `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// An upstream's `protocol = "auto" | "h1" | "h2"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/2 when TLS negotiates it by ALPN, HTTP/1.1 otherwise.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    H1,
    /// HTTP/2 only: by ALPN over TLS, with prior knowledge (h2c) in
    /// cleartext. gRPC upstreams need it.
    H2,
}

mod defaults {
    use std::time::Duration;

    use toml::Spanned;

    pub(super) fn alpn() -> Vec<Spanned<String>> {
        ["h2", "http/1.1"].into_iter().map(|p| Spanned::new(0..0, p.to_owned())).collect()
    }

    pub(super) fn handshake_timeout() -> Duration {
        Duration::from_secs(10)
    }
}
