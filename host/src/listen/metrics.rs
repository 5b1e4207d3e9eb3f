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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// The listener families.
#[derive(Clone)]
pub(crate) struct ListenerMetrics {
    connections: Gauge,
    tls_handshakes: Family<TlsHandshake, Counter>,
    accept_errors: Family<AcceptError, Counter>,
    shed: Family<Reason, Counter>,
    refused: Family<Reason, Counter>,
    accepted: Family<Worker, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Worker {
    worker: String,
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
        let shed = Family::default();
        registry.register(
            "connections_shed",
            "Connections closed before sending a complete request head, to make room at a cap (max_connections, per_ip)",
            shed.clone(),
        );
        let refused = Family::default();
        registry.register(
            "connections_refused",
            "Connections closed at once because their address was at max_connections_per_ip (per_ip)",
            refused.clone(),
        );
        let accepted = Family::default();
        registry.register(
            "connections_accepted",
            "Downstream connections admitted, by worker (one per event loop with --reuse-port; 0 otherwise)",
            accepted.clone(),
        );
        Self { connections, tls_handshakes, accept_errors, shed, refused, accepted }
    }

    /// The counter of connections admitted by `worker`.
    pub(crate) fn accepted(&self, worker: usize) -> Counter {
        self.accepted.get_or_create(&Worker { worker: worker.to_string() }).clone()
    }

    /// An accept() failed.
    pub(crate) fn accept_error(&self, kind: &'static str) {
        self.accept_errors.get_or_create(&AcceptError { kind }).inc();
    }

    /// Count a TLS handshake; `version` and `alpn` are empty when it failed.
    pub(crate) fn tls_handshake(&self, result: &'static str, version: &'static str, alpn: &'static str) {
        self.tls_handshakes.get_or_create(&TlsHandshake { result, version, alpn }).inc();
    }

    /// A connection shed to make room at a cap.
    pub(crate) fn connection_shed(&self, reason: &'static str) {
        self.shed.get_or_create(&Reason { reason }).inc();
    }

    /// A connection refused at a cap.
    pub(crate) fn connection_refused(&self, reason: &'static str) {
        self.refused.get_or_create(&Reason { reason }).inc();
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
