//! The listeners' metric families: connections open and TLS handshakes,
//! registered by this area into the gateway's registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsHandshake {
    result: &'static str,
    version: &'static str,
    alpn: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcceptError {
    kind: &'static str,
}

/// The listener families.
#[derive(Clone)]
pub(crate) struct ListenerMetrics {
    connections: Gauge,
    tls_handshakes: Family<TlsHandshake, Counter>,
    accept_errors: Family<AcceptError, Counter>,
}

impl ListenerMetrics {
    /// Register the families into `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let connections = Gauge::default();
        registry.register("connections_open", "Downstream connections open on the proxy listener", connections.clone());
        let tls_handshakes = Family::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes on the TLS listener by result (ok, failed, timeout), version and ALPN protocol",
            tls_handshakes.clone(),
        );
        let accept_errors = Family::default();
        registry.register(
            "accept_errors",
            "Failed accept() calls by kind: fd_exhausted (EMFILE, ENFILE), no_memory, other",
            accept_errors.clone(),
        );
        Self { connections, tls_handshakes, accept_errors }
    }

    /// An accept() failed.
    pub(crate) fn accept_error(&self, kind: &'static str) {
        self.accept_errors.get_or_create(&AcceptError { kind }).inc();
    }

    /// Count a TLS handshake; `version` and `alpn` are empty when it failed.
    pub(crate) fn tls_handshake(&self, result: &'static str, version: &'static str, alpn: &'static str) {
        self.tls_handshakes.get_or_create(&TlsHandshake { result, version, alpn }).inc();
    }

    /// A downstream connection opened (`true`) or closed.
    pub(crate) fn connection(&self, open: bool) {
        if open {
            self.connections.inc();
        } else {
            self.connections.dec();
        }
    }
}
