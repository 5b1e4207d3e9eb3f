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

/// The optional exports, `streaming` (contract `0.2.4`) and `describe`
/// (`0.2.5`): bound from the `sdk-plugin` world, reusing the types above,
/// and looked up per module and interface (`GuestIndices::new` fails for a
/// module without that export).
mod optional_exports {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sdk-plugin",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "weir:plugin/types": super::generated::weir::plugin::types,
            "weir:plugin/log": super::generated::weir::plugin::log,
            "weir:plugin/clock": super::generated::weir::plugin::clock,
            "weir:plugin/state": super::generated::weir::plugin::state,
            "weir:plugin/request-local": super::generated::weir::plugin::request_local,
            "weir:plugin/metrics": super::generated::weir::plugin::metrics,
            "weir:plugin/events": super::generated::weir::plugin::events,
            "weir:plugin/outbound": super::generated::weir::plugin::outbound,
            "weir:plugin/chain-data": super::generated::weir::plugin::chain_data,
            "weir:plugin/handler": super::generated::exports::weir::plugin::handler,
        },
    });
}

pub use generated::weir::plugin::types::{Action, BodyAction, Header, Phases, Reply};
pub(crate) use generated::weir::plugin::{
    chain_data, clock, events, log, metrics, outbound, request_local, state, types,
};
pub(crate) use generated::{Plugin as PluginWorld, PluginPre};
pub(crate) use optional_exports::exports::weir::plugin::describe::GuestIndices as DescribeIndices;
pub use optional_exports::exports::weir::plugin::streaming::{ChunkAction, StreamPhases};
pub(crate) use optional_exports::exports::weir::plugin::streaming::{
    Guest as StreamingGuest, GuestIndices as StreamingIndices,
};

/// The `request` resource: its data is the lent request in the store
/// (see `heads`).
#[allow(unreachable_pub)] // `bindgen!` re-exports it with `pub use`.
pub struct RequestRes;
/// The `response` resource: its data is the lent response in the store.
#[allow(unreachable_pub)]
pub struct ResponseRes;
