//! The generated bindings for `wit/plugin.wit`, quarantined: the rest of
//! the host uses the curated names re-exported here.

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        imports: {
            // State calls may wait on a network backend: async on the host,
            // so a runtime thread is never blocked (the guest still sees a
            // plain call).
            "weir:plugin/state": async | trappable,
            // Outbound calls wait on an upstream: async too.
            "weir:plugin/outbound": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: {
            // The heads are lent from the request path; the resources only
            // name them (see `heads`, which implements their methods).
            "weir:plugin/types.request": super::RequestRes,
            "weir:plugin/types.response": super::ResponseRes,
        },
    });
}

pub use generated::weir::plugin::types::{Action, BodyAction, Header, Phases, Reply};
pub(crate) use generated::weir::plugin::{
    chain_data, clock, events, log, metrics, outbound, request_local, state, types,
};
pub(crate) use generated::{Plugin as PluginWorld, PluginPre};

/// The `request` resource: its data is the lent request in the store
/// (see `heads`).
#[allow(unreachable_pub)] // `bindgen!` re-exports it with `pub use`.
pub struct RequestRes;
/// The `response` resource: its data is the lent response in the store.
#[allow(unreachable_pub)]
pub struct ResponseRes;
