//! Write plugins for the [weir](https://example.invalid/weir) API gateway in Rust.
//!
//! A plugin is a type implementing [`Plugin`], registered with
//! [`export_plugin!`] and built for `wasm32-wasip2`:
//!
//! ```
//! use weir_plugin_sdk::prelude::*;
//!
//! struct AddHeader { value: HeaderValue }
//!
//! impl Plugin for AddHeader {
//!     fn new(config: &Config) -> Result<Self> {
//!         Ok(Self { value: config.get_str("value").unwrap_or("hello").parse()? })
//!     }
//!     fn on_request(&self, req: &mut Request, _cx: &Context) -> Result<Action> {
//!         req.set_header("x-added", &self.value)?;
//!         Ok(Action::Continue)
//!     }
//! }
//!
//! weir_plugin_sdk::export_plugin!(AddHeader);
//! ```
//!
//! ```text
//! cargo build --release --target wasm32-wasip2   # → target/wasm32-wasip2/release/<crate>.wasm
//! ```
//!
//! # Phases
//!
//! | method               | runs when                        | default          | asked for by            |
//! |----------------------|----------------------------------|------------------|-------------------------|
//! | [`Plugin::new`]      | an instance is created           | (required)       | always                  |
//! | [`Plugin::on_request`] | a request head arrived         | continue         | [`Phases::REQUEST_HEADERS`] |
//! | [`Plugin::on_request_body`] | the whole request body is buffered (the head still editable) | continue | [`Phases::REQUEST_BODY`] |
//! | [`Plugin::on_response`] | the upstream's response head arrived | continue | [`Phases::RESPONSE_HEADERS`] |
//! | [`Plugin::on_response_body`] | the whole response body is buffered | continue | [`Phases::RESPONSE_BODY`] |
//! | [`Plugin::on_request_chunk`] | a chunk of the request body flows by | pass | [`Streams::REQUEST_BODY`] |
//! | [`Plugin::on_response_chunk`] | a chunk of the response body flows by | pass | [`Streams::RESPONSE_BODY`] |
//!
//! Request phases run in chain order; response phases in reverse chain
//! order. The heads stay in the gateway: [`Request`] and [`Response`] fetch
//! what the plugin reads and send edits as they are made (see the `head`
//! docs on [`Request`]). [`Plugin::phases`] says which phases the gateway calls: by default
//! both head phases, never the body phases (asking for a body phase makes the
//! gateway buffer that body, up to its configured limit).
//!
//! # State between requests
//!
//! The gateway keeps a pool of initialised instances of each plugin and lends
//! one to each request in turn (unless the route's plugin is configured with
//! `isolation = "request"`, which gives every request a fresh instance). So:
//!
//! * what [`Plugin::new`] derives from the configuration (parsed keys,
//!   compiled patterns) is computed once per instance and reused — put it in
//!   your plugin struct;
//! * a cache kept in the struct (through `RefCell`/`Cell`) is allowed, but
//!   it is per instance: another request may be served by another instance,
//!   and an instance is discarded after a trap or a deadline;
//! * anything that must be shared or must survive — counters, rate limit
//!   windows, baselines — belongs in the host's [`State`] (see
//!   [`Context::state`]), which all instances and, with Redis, all gateway
//!   nodes share. Never rely on globals for it.
//!
//! # Errors
//!
//! Every callback returns [`Result`]. An `Err` from [`Plugin::new`] rejects
//! the configuration (the gateway names the plugin and the reason). An `Err`
//! from a phase answers the client with the error's status (500 unless set
//! with [`Error::new`]) and a JSON body `{"error": "..."}`; a panic or trap is
//! handled by the gateway according to the plugin's `failure` policy.
//!
//! # Testing
//!
//! [`testing::Harness`] runs a plugin natively under `cargo test`, with an
//! in-memory host (state, logs, metrics, events), through the same
//! conversions the gateway uses.

#![warn(missing_docs)]

mod action;
mod config;
mod context;
mod convert;
mod error;
mod head;
mod host;
pub mod outbound;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[doc(hidden)]
pub mod __private;
#[doc(hidden)]
#[allow(missing_docs, unsafe_code, unreachable_pub, clippy::all)]
pub mod bindings;

#[cfg(test)]
mod tests;

/// The plugin author guide, the book's "Writing plugins" chapter
/// (`docs/src/plugins/writing.md`), included so that each of its Rust
/// examples is compiled and run as a doc test of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../docs/src/plugins/writing.md")]
pub mod author_guide {}

/// The metric-name rule, the one place it is stated: a plugin metric's
/// name ([`Context::counter_add`], [`Context::gauge_set`]) starts with a
/// lowercase ASCII letter, continues with lowercase letters, digits, `_`
/// and `.`, and is at most 64 bytes long. The gateway drops a metric whose
/// name breaks it (and keeps at most 32 names per plugin); so does the
/// test harness, so a test that counts on such a name fails.
///
/// ```
/// use weir_plugin_sdk::is_metric_name;
/// assert!(is_metric_name("cache.hits_2"));
/// assert!(!is_metric_name("Hits"));
/// assert!(!is_metric_name("bad-name"));
/// assert!(!is_metric_name(&"x".repeat(65)));
/// ```
pub fn is_metric_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// The JSON Schema of `T`, for [`Plugin::config_schema`] (feature
/// `schema`, on by default). Derive [`schemars::JsonSchema`] next to
/// `Deserialize` on your config struct (add `schemars = "1"` to your
/// dependencies); its `///` comments become the keys' descriptions, which
/// editors show.
///
/// ```
/// use serde::Deserialize;
/// use weir_plugin_sdk::prelude::*;
///
/// /// The `config` table of the greeting plugin.
/// #[derive(Deserialize, schemars::JsonSchema)]
/// #[serde(deny_unknown_fields)]
/// struct Settings {
///     /// The value of the `x-greeting` header.
///     greeting: String,
///     /// Also on responses.
///     #[serde(default)]
///     on_responses: bool,
/// }
///
/// struct Greet(Settings);
/// impl Plugin for Greet {
///     fn new(config: &Config) -> Result<Self> {
///         Ok(Greet(config.parse()?))
///     }
///     fn config_schema() -> Option<String> {
///         weir_plugin_sdk::schema_for::<Settings>()
///     }
/// }
///
/// let schema: serde_json::Value = serde_json::from_str(&Greet::config_schema().unwrap()).unwrap();
/// assert_eq!(schema["required"], serde_json::json!(["greeting"]));
/// assert_eq!(schema["additionalProperties"], false);
/// ```
///
/// TOML has no null, so an `Option` field's schema says what the key holds
/// when present (not "that or null"); a mismatch inside it is then reported
/// at its own key path rather than as "no alternative matched".
#[cfg(feature = "schema")]
pub fn schema_for<T: schemars::JsonSchema>() -> Option<String> {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with_transform(schemars::transform::RecursiveTransform(toml_values))
        .into_generator();
    serde_json::to_string(&generator.into_root_schema_for::<T>()).ok()
}

/// One node of a schema, without the nulls TOML cannot write: a `null`
/// default, `null` in a list of types, and `anyOf [X, null]` (which
/// becomes X).
#[cfg(feature = "schema")]
fn toml_values(schema: &mut schemars::Schema) {
    use serde_json::Value;
    let Some(node) = schema.as_object_mut() else { return };
    if node.get("default").is_some_and(Value::is_null) {
        node.remove("default");
    }
    if let Some(Value::Array(types)) = node.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = &types[..] {
            let only = only.clone();
            node.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(any)) = node.get("anyOf")
        && let [Value::Object(inner), null] = &any[..]
        && null.get("type").and_then(Value::as_str) == Some("null")
    {
        let inner = inner.clone();
        node.remove("anyOf");
        for (k, v) in inner {
            node.entry(k).or_insert(v);
        }
    }
}

#[cfg(feature = "schema")]
pub use schemars;

/// This crate's `README.md` (its page on a registry), included so that its
/// example is compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub mod crate_readme {}

/// The repository's `README.md`, included so that its plugin example is
/// compiled and run as a doc test of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub mod readme {}

pub use action::{Action, Reply};
pub use config::Config;
pub use context::{Context, Event, Level, Severity, State, StateError, ThrottleDecision};
pub use error::{Error, Result};
pub use head::{Body, Chunk, Request, Response, Tls};
pub use http;
pub use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
pub use outbound::{Callout, OutboundError};

/// The phases a plugin asks the gateway to call.
pub use bindings::weir::plugin::types::Phases;

/// The bodies a plugin takes chunk by chunk (contract `0.2.4`).
pub use bindings::exports::weir::plugin::streaming::StreamPhases as Streams;

/// Everything a plugin usually needs, in one `use`.
pub mod prelude {
    pub use crate::{
        Action, Body, Chunk, Config, Context, Error, Event, HeaderMap, HeaderName, HeaderValue, Level, Method, Phases,
        Plugin, Reply, Request, Response, Result, Severity, StateError, StatusCode, Streams,
    };
}

/// A gateway plugin.
///
/// Implement [`Plugin::new`] and whichever phases you need; the others
/// default to "continue unchanged". Register the type with
/// [`export_plugin!`].
pub trait Plugin: Sized + 'static {
    /// The JSON Schema of this plugin's `config` table, as JSON text
    /// (default: none, any table reaches [`Plugin::new`]).
    ///
    /// The gateway checks the table against it before calling `new`, and
    /// `weir check` reports every mismatch with the plugin's name, the key
    /// path and the reason; `weir plugin schema FILE.wasm` prints it, for
    /// the people writing the config. Derive it from the struct you parse
    /// the config into, so the two cannot disagree: see [`schema_for`].
    fn config_schema() -> Option<String> {
        None
    }

    /// Create an instance from its `config` table in `gateway.toml`.
    ///
    /// Runs once per instance, before any phase. Validate everything here:
    /// an `Err` rejects the gateway configuration with your message, so bad
    /// settings are caught by `weir check` and on reload, not on a request.
    fn new(config: &Config) -> Result<Self>;

    /// The phases the gateway calls, read once after [`Plugin::new`].
    ///
    /// Default: both head phases. Narrow it to save a call per request, and
    /// widen it to receive buffered bodies.
    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS
    }

    /// A request head arrived. Edit `req` in place and return
    /// [`Action::Continue`], or answer the client with [`Action::Respond`].
    fn on_request(&self, req: &mut Request, cx: &Context) -> Result<Action> {
        let _ = (req, cx);
        Ok(Action::Continue)
    }

    /// The whole request body is buffered (only with
    /// [`Phases::REQUEST_BODY`]). `body` may be replaced (the gateway fixes
    /// `content-length`), and the head may still be edited: check the body
    /// (a signature, a schema), then set a header for the upstream. Edits
    /// take effect on [`Action::Continue`].
    fn on_request_body(&self, req: &mut Request, body: &mut Body, cx: &Context) -> Result<Action> {
        let _ = (req, body, cx);
        Ok(Action::Continue)
    }

    /// The upstream's response head arrived. `req` is the request as it was
    /// sent upstream. Edit `resp` in place, or replace the whole response
    /// with [`Action::Respond`].
    fn on_response(&self, req: &Request, resp: &mut Response, cx: &Context) -> Result<Action> {
        let _ = (req, resp, cx);
        Ok(Action::Continue)
    }

    /// The whole response body is buffered (only with
    /// [`Phases::RESPONSE_BODY`]).
    fn on_response_body(&self, req: &Request, resp: &Response, body: &mut Body, cx: &Context) -> Result<Action> {
        let _ = (req, resp, body, cx);
        Ok(Action::Continue)
    }

    /// The bodies to take chunk by chunk as they flow, instead of buffered
    /// (default: none). The gateway then calls [`Plugin::on_request_chunk`]
    /// and [`Plugin::on_response_chunk`] for each chunk, and holds no more
    /// than the chunk in hand. Keep what spans chunks (a partial line) with
    /// [`Context::set_local`]: chunks may reach different instances.
    fn streams(&self) -> Streams {
        Streams::empty()
    }

    /// A chunk of the request body (only with [`Streams::REQUEST_BODY`]).
    /// Leave `chunk` alone to pass it on, [`Chunk::set`] or
    /// [`Chunk::clear`] it to change it; an `Err` cuts the body off (the
    /// upstream sees it end in an error). The heads are read-only.
    fn on_request_chunk(&self, req: &Request, chunk: &mut Chunk, cx: &Context) -> Result<()> {
        let _ = (req, chunk, cx);
        Ok(())
    }

    /// A chunk of the response body (only with [`Streams::RESPONSE_BODY`]),
    /// as [`Plugin::on_request_chunk`]; an `Err` cuts the response off.
    fn on_response_chunk(&self, req: &Request, resp: &Response, chunk: &mut Chunk, cx: &Context) -> Result<()> {
        let _ = (req, resp, chunk, cx);
        Ok(())
    }
}

/// Register a [`Plugin`] type as the component's exported handler.
///
/// Use it once, at the crate root of a `cdylib` crate:
///
/// ```
/// use weir_plugin_sdk::prelude::*;
///
/// struct Noop;
/// impl Plugin for Noop {
///     fn new(_: &Config) -> Result<Self> { Ok(Noop) }
/// }
///
/// weir_plugin_sdk::export_plugin!(Noop);
/// ```
///
/// A type that does not implement [`Plugin`] is rejected at compile time
/// with "the trait `Plugin` is not implemented for `...`".
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __WEIR_PLUGIN: ::std::cell::OnceCell<$plugin> =
                    const { ::std::cell::OnceCell::new() };
            }

            #[cfg(target_arch = "wasm32")]
            struct __WeirExport;

            #[cfg(target_arch = "wasm32")]
            impl $crate::__private::Guest for __WeirExport {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<$crate::__private::PluginInfo, ::std::string::String> {
                    __WEIR_PLUGIN.with(|slot| $crate::__private::init::<$plugin>(slot, &config))
                }
                fn on_request(req: &$crate::__private::WitRequest) -> $crate::__private::WitAction {
                    __WEIR_PLUGIN.with(|slot| $crate::__private::lend::on_request::<$plugin>(slot.get(), req))
                }
                fn on_request_body(
                    req: &$crate::__private::WitRequest,
                    body: ::std::vec::Vec<u8>,
                ) -> $crate::__private::WitBodyAction {
                    __WEIR_PLUGIN
                        .with(|slot| $crate::__private::lend::on_request_body::<$plugin>(slot.get(), req, body))
                }
                fn on_response(
                    req: &$crate::__private::WitRequest,
                    resp: &$crate::__private::WitResponse,
                ) -> $crate::__private::WitAction {
                    __WEIR_PLUGIN.with(|slot| $crate::__private::lend::on_response::<$plugin>(slot.get(), req, resp))
                }
                fn on_response_body(
                    req: &$crate::__private::WitRequest,
                    resp: &$crate::__private::WitResponse,
                    body: ::std::vec::Vec<u8>,
                ) -> $crate::__private::WitBodyAction {
                    __WEIR_PLUGIN
                        .with(|slot| $crate::__private::lend::on_response_body::<$plugin>(slot.get(), req, resp, body))
                }
            }

            #[cfg(target_arch = "wasm32")]
            impl $crate::__private::DescribeGuest for __WeirExport {
                fn config_schema() -> ::std::option::Option<::std::string::String> {
                    <$plugin as $crate::Plugin>::config_schema()
                }
            }

            #[cfg(target_arch = "wasm32")]
            impl $crate::__private::StreamingGuest for __WeirExport {
                fn streams() -> $crate::Streams {
                    __WEIR_PLUGIN.with(|slot| $crate::__private::streams::<$plugin>(slot.get()))
                }
                fn on_request_chunk(
                    req: &$crate::__private::WitRequest,
                    chunk: ::std::vec::Vec<u8>,
                    end: bool,
                ) -> $crate::__private::WitChunkAction {
                    __WEIR_PLUGIN
                        .with(|slot| $crate::__private::lend::on_request_chunk::<$plugin>(slot.get(), req, chunk, end))
                }
                fn on_response_chunk(
                    req: &$crate::__private::WitRequest,
                    resp: &$crate::__private::WitResponse,
                    chunk: ::std::vec::Vec<u8>,
                    end: bool,
                ) -> $crate::__private::WitChunkAction {
                    __WEIR_PLUGIN.with(|slot| {
                        $crate::__private::lend::on_response_chunk::<$plugin>(slot.get(), req, resp, chunk, end)
                    })
                }
            }

            #[cfg(target_arch = "wasm32")]
    $crate::__private::export!(__WeirExport with_types_in $crate::bindings);

            // Natively (for `cargo test`) there is nothing to export, and the
            // component export names are not valid native symbol names; this
            // still checks that the type implements `Plugin`.
            #[cfg(not(target_arch = "wasm32"))]
            let _ = |config: &str| __WEIR_PLUGIN.with(|slot| $crate::__private::init::<$plugin>(slot, config));
        };
    };
}
