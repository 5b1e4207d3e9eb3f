//! The [`Transcoder`]: the loaded descriptors, the selected services' HTTP
//! bindings and the options, built once per configuration load and shared
//! (behind an `Arc`) by every request of the route.

use http::Method;
use prost_reflect::{DescriptorPool, MethodDescriptor};

use crate::descriptors::{DEFAULT_MAX_DESCRIPTOR_SIZE, LoadError, decode_descriptor_set, select_services};
use crate::frame::DEFAULT_MAX_MESSAGE_SIZE;
use crate::router::{self, Route};
use crate::rules;

/// JSON mapping options, for both directions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonOptions {
    /// Print fields that have their default value (`0`, `""`, `false`,
    /// empty lists and maps) instead of omitting them, like protobuf's
    /// `always_print_primitive_fields`. Unset message fields stay omitted.
    pub emit_defaults: bool,
    /// Use the `.proto` field names (`customer_id`) instead of lowerCamelCase
    /// JSON names (`customerId`) in responses. Requests accept both always.
    pub preserve_proto_field_names: bool,
    /// Accept and drop JSON request fields the message does not have,
    /// instead of answering 400 naming the field.
    pub ignore_unknown_fields: bool,
    /// Accept and drop query parameters that name no bindable field, instead
    /// of answering 400 naming the parameter.
    pub ignore_unknown_query_parameters: bool,
}

/// What to build a [`Transcoder`] from, besides the descriptor bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscoderConfig {
    /// Full names of the services to expose (`shop.v1.Orders`).
    pub services: Vec<String>,
    /// Cap on the descriptor set's size ([`DEFAULT_MAX_DESCRIPTOR_SIZE`]).
    pub max_descriptor_size: usize,
    /// Cap on one upstream response message ([`DEFAULT_MAX_MESSAGE_SIZE`]).
    pub max_response_message_size: usize,
    /// JSON options.
    pub json: JsonOptions,
}

impl TranscoderConfig {
    /// A config for `services` with the default caps and JSON options.
    pub fn new<S: Into<String>>(services: impl IntoIterator<Item = S>) -> Self {
        Self {
            services: services.into_iter().map(Into::into).collect(),
            max_descriptor_size: DEFAULT_MAX_DESCRIPTOR_SIZE,
            max_response_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            json: JsonOptions::default(),
        }
    }
}

/// A routable gRPC method.
#[derive(Clone)]
pub(crate) struct MethodEntry {
    pub(crate) descriptor: MethodDescriptor,
    /// `/package.Service/Method`.
    pub(crate) grpc_path: String,
}

/// JSON/HTTP ↔ gRPC transcoder for a set of services.
///
/// Build it at configuration load with [`Transcoder::new`]; then per request
/// call [`route`](Self::route) and work with the [`RouteMatch`].
#[derive(Clone)]
pub struct Transcoder {
    pool: DescriptorPool,
    methods: Vec<MethodEntry>,
    routes: Vec<Route>,
    config: TranscoderConfig,
}

/// A binding as listed by [`Transcoder::routes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// The HTTP method.
    pub http_method: Method,
    /// The path template as written (`/v1/orders/{id}`).
    pub pattern: String,
    /// The gRPC method it calls, as `/package.Service/Method`.
    pub grpc_path: String,
}

impl Transcoder {
    /// Loads a `FileDescriptorSet` and compiles the HTTP bindings of the
    /// services named in `config`.
    ///
    /// Every method of a selected service gets the fallback binding `POST
    /// /package.Service/Method` (whole JSON body), plus its `google.api.http`
    /// rules if it has any. Client-streaming and bidirectional methods are
    /// not routed; one that has an HTTP rule is an error. Errors: a set over
    /// the size cap or not decodable, an unknown service, a rule with a bad
    /// template or naming a field that does not exist, two methods binding
    /// the same method and template.
    pub fn new(descriptor_set: &[u8], config: TranscoderConfig) -> Result<Self, LoadError> {
        let pool = decode_descriptor_set(descriptor_set, config.max_descriptor_size)?;
        Self::from_pool(pool, config)
    }

    /// Like [`new`](Self::new), from an already decoded pool
    /// (`max_descriptor_size` is then unused).
    pub fn from_pool(pool: DescriptorPool, config: TranscoderConfig) -> Result<Self, LoadError> {
        let services = select_services(&pool, &config.services)?;
        let mut methods = Vec::new();
        let mut declared = Vec::new();
        let mut fallbacks = Vec::new();
        for service in &services {
            for method in service.methods() {
                let grpc_path = format!("/{}/{}", service.full_name(), method.name());
                let method_name = grpc_path.trim_start_matches('/').to_owned();
                let invalid = |reason: String| LoadError::InvalidRule { method: method_name.clone(), reason };
                let bindings = rules::declared_bindings(&method).map_err(invalid)?;
                if method.is_client_streaming() {
                    if !bindings.is_empty() {
                        return Err(LoadError::ClientStreaming { method: method_name });
                    }
                    continue;
                }
                let index = methods.len();
                declared.extend(bindings.into_iter().map(|binding| Route { method: index, binding }));
                let fallback = rules::fallback_binding(&method).map_err(invalid)?;
                fallbacks.push(Route { method: index, binding: fallback });
                methods.push(MethodEntry { descriptor: method, grpc_path });
            }
        }
        let mut routes = declared;
        routes.extend(fallbacks);
        check_duplicates(&routes, &methods)?;
        Ok(Self { pool, methods, routes, config })
    }

    /// Matches a request. `path` is the URI path (still percent-encoded, as
    /// `Uri::path` gives it) and `query` the raw query string
    /// (`Uri::query`). `None` when no binding matches: the gateway answers
    /// 404 (or 405 when the path matched under another method — see
    /// [`path_matches_any_method`](Self::path_matches_any_method)).
    pub fn route(&self, method: &Method, path: &str, query: Option<&str>) -> Option<RouteMatch<'_>> {
        let (route, raw_values) = router::find(&self.routes, method, path)?;
        let entry = self.methods.get(route.method)?;
        Some(RouteMatch { transcoder: self, entry, route, raw_values, query: query.map(str::to_owned) })
    }

    /// Whether `path` matches a binding under some HTTP method (to tell 405
    /// from 404).
    pub fn path_matches_any_method(&self, path: &str) -> bool {
        self.routes.iter().any(|r| router::find(std::slice::from_ref(r), &r.binding.http_method, path).is_some())
    }

    /// Every binding, annotations first then the fallbacks, for listings and
    /// `weir check` output.
    pub fn routes(&self) -> impl Iterator<Item = RouteInfo> + '_ {
        self.routes.iter().filter_map(|r| {
            let entry = self.methods.get(r.method)?;
            Some(RouteInfo {
                http_method: r.binding.http_method.clone(),
                pattern: r.binding.pattern.clone(),
                grpc_path: entry.grpc_path.clone(),
            })
        })
    }

    /// The descriptor pool (message types for error details, `Any`, …).
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &TranscoderConfig {
        &self.config
    }
}

impl std::fmt::Debug for Transcoder {
    // The pool's own Debug prints every descriptor; keep logs readable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder")
            .field("services", &self.config.services)
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

fn check_duplicates(routes: &[Route], methods: &[MethodEntry]) -> Result<(), LoadError> {
    for (i, a) in routes.iter().enumerate() {
        for b in &routes[..i] {
            if a.binding.http_method == b.binding.http_method && a.binding.template == b.binding.template {
                let name = |r: &Route| methods.get(r.method).map(|m| m.grpc_path.trim_start_matches('/').to_owned());
                return Err(LoadError::DuplicateRoute {
                    first: name(b).unwrap_or_default(),
                    second: name(a).unwrap_or_default(),
                    route: format!("{} {}", a.binding.http_method, a.binding.pattern),
                });
            }
        }
    }
    Ok(())
}

impl std::fmt::Debug for MethodEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.grpc_path)
    }
}

/// A request matched to a gRPC method by [`Transcoder::route`].
///
/// Build the upstream request with [`encode_request`](Self::encode_request)
/// (in `request.rs`) and read the answer with
/// [`response_transcoder`](Self::response_transcoder) (in `response.rs`).
#[derive(Debug, Clone)]
pub struct RouteMatch<'t> {
    pub(crate) transcoder: &'t Transcoder,
    pub(crate) entry: &'t MethodEntry,
    pub(crate) route: &'t Route,
    /// Raw (percent-encoded) path variable values, in the binding's order.
    pub(crate) raw_values: Vec<String>,
    pub(crate) query: Option<String>,
}

impl RouteMatch<'_> {
    /// The upstream request path: `/package.Service/Method`.
    pub fn grpc_path(&self) -> &str {
        &self.entry.grpc_path
    }

    /// The gRPC method.
    pub fn method(&self) -> &MethodDescriptor {
        &self.entry.descriptor
    }

    /// Whether the method streams its responses (answered as NDJSON).
    pub fn is_server_streaming(&self) -> bool {
        self.entry.descriptor.is_server_streaming()
    }

    /// The matched template as written (`/v1/orders/{id}`).
    pub fn pattern(&self) -> &str {
        &self.route.binding.pattern
    }

    /// The path variables as (field path, raw percent-encoded value) pairs.
    pub fn path_variables(&self) -> impl Iterator<Item = (&str, &str)> {
        self.route.binding.variables.iter().zip(&self.raw_values).map(|(v, raw)| (v.path.as_str(), raw.as_str()))
    }

    /// Whether the binding takes a request body (`body: "*"` or a field).
    /// Without one the gateway need not read the body: it is ignored.
    pub fn expects_body(&self) -> bool {
        !matches!(self.route.binding.body, rules::Body::None)
    }
}

#[cfg(test)]
mod tests;
