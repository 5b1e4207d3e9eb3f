//! Whole-gateway tests: the real gateway on loopback, real upstream servers,
//! real `.wasm` plugins built from `plugins/` and `tests/plugins/`.
//!
//! One test binary (faster to link than one per file); one module per area.

mod aggregate;
mod anomaly;
mod auth;
mod canary;
mod chain;
mod cli;
mod cluster;
mod dashboard;
mod docs;
mod ext_authz;
mod fleet;
mod framing;
mod fuzz_corpus;
mod grpc;
mod hardening;
mod house;
mod http2;
mod idp;
mod last_good;
mod mission;
mod observability;
mod oci;
mod outbound;
mod pool;
mod rate_limit;
mod recorder;
mod reload;
mod resilience;
mod routing;
mod sandbox;
mod scaffold;
mod schema;
mod streaming;
mod tls;
mod transcode;
mod transform;
mod websocket;
