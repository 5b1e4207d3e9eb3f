//! What the gateway tells its operators: Prometheus metrics (each area's
//! handles resolved once per snapshot), the dashboard's live series, the
//! access log, trace context and OTLP span export, and plugin events.
//! Everything here is written to from the request path and read by the
//! admin API; nothing here calls back into the request path.

pub(crate) mod access_log;
pub(crate) mod events;
pub(crate) mod live;
pub(crate) mod metrics;
pub(crate) mod recorder;
pub(crate) mod trace;
