//! `[[routes]] grpc_transcode = { ... }` and `grpc_web = ...`: protocol
//! translation on a route. JSON/HTTP clients reach gRPC methods through the
//! `google.api.http` rules of a compiled descriptor set, and browsers speak
//! gRPC-Web; the upstream speaks gRPC either way.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::json_schema::{ByteSizeString, DurationString};
use crate::{byte_size, optional_duration};

/// Default cap on a descriptor set's size: 16 MiB.
pub const DEFAULT_MAX_DESCRIPTOR_SIZE: u64 = 16 << 20;

/// `grpc_transcode = { descriptors = "protos/shop.pb", services =
/// ["shop.v1.Orders"] }`: the route answers JSON/HTTP requests by calling the
/// gRPC methods the services' `google.api.http` rules bind (and `POST
/// /package.Service/Method` for every method), over HTTP/2 to the route's
/// upstream, which must have `protocol = "h2"`. Requests that are already
/// gRPC pass through untouched.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcTranscodeConfig {
    /// A compiled `FileDescriptorSet` with its imports (`protoc
    /// --include_imports --descriptor_set_out=...`, `buf build -o ...`),
    /// relative to the config file; read again on every reload.
    pub descriptors: PathBuf,
    /// Full names of the services the route exposes (`"shop.v1.Orders"`);
    /// at least one.
    pub services: Vec<String>,
    /// Print fields that hold their default value (`0`, `""`, `false`,
    /// empty lists) in answers instead of leaving them out.
    #[serde(default)]
    pub emit_defaults: bool,
    /// Answer with the `.proto` field names (`customer_id`) instead of
    /// lowerCamelCase (`customerId`); requests accept both.
    #[serde(default)]
    pub preserve_proto_field_names: bool,
    /// Drop JSON request fields the message does not have, instead of
    /// answering 400 naming the field.
    #[serde(default)]
    pub ignore_unknown_fields: bool,
    /// Drop query parameters that name no field, instead of answering 400
    /// naming the parameter.
    #[serde(default)]
    pub ignore_unknown_query_parameters: bool,
    /// Largest descriptor file accepted.
    #[serde(default = "max_descriptor_size", deserialize_with = "byte_size")]
    #[schemars(with = "ByteSizeString")]
    pub max_descriptor_size: u64,
}

fn max_descriptor_size() -> u64 {
    DEFAULT_MAX_DESCRIPTOR_SIZE
}

impl GrpcTranscodeConfig {
    /// What is wrong with the settings taken together, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.services.is_empty() {
            return Err("grpc_transcode: `services` must name at least one service, such as \"package.Service\"".into());
        }
        if self.descriptors.as_os_str().is_empty() {
            return Err("grpc_transcode: `descriptors` must name a file".into());
        }
        Ok(())
    }
}

/// `grpc_web = true` or `grpc_web = { cors = { ... } }`: the route accepts
/// gRPC-Web (`application/grpc-web[+proto]` and the base64
/// `application/grpc-web-text[+proto]`) and calls its upstream with gRPC
/// over HTTP/2 (`protocol = "h2"`); the trailers go back in the body.
/// `false`, or no key, leaves gRPC-Web requests to pass through as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcWebConfig {
    /// Cross-origin access for browsers: the gateway answers preflight
    /// `OPTIONS` requests itself and adds the CORS headers to answers.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
}

/// `cors = { allow_origins = ["https://app.example.com"] }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed (`"https://app.example.com"`, exact, or `"*"` for
    /// any); a request from another origin gets no CORS headers, so the
    /// browser refuses it.
    pub allow_origins: Vec<String>,
    /// Request headers a browser may send; by default the ones gRPC-Web
    /// clients use (`content-type`, `x-grpc-web`, `x-user-agent`,
    /// `grpc-timeout`, `authorization`).
    #[serde(default)]
    pub allow_headers: Option<Vec<String>>,
    /// Response headers the page may read besides `grpc-status` and
    /// `grpc-message` (always exposed).
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer
    /// (`access-control-max-age`); not sent if absent.
    #[serde(default, deserialize_with = "optional_duration")]
    #[schemars(with = "DurationString")]
    pub max_age: Option<Duration>,
    /// Allow cookies and HTTP authentication
    /// (`access-control-allow-credentials: true`); not with `"*"` origins.
    #[serde(default)]
    pub allow_credentials: bool,
}

/// The request headers gRPC-Web clients send, allowed when `allow_headers`
/// is not given.
pub const DEFAULT_CORS_HEADERS: &[&str] =
    &["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "authorization"];

impl CorsConfig {
    /// What is wrong with the settings taken together, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.allow_origins.is_empty() {
            return Err("grpc_web.cors: `allow_origins` must name at least one origin, or \"*\"".into());
        }
        if self.allow_credentials && self.allow_origins.iter().any(|o| o == "*") {
            return Err("grpc_web.cors: `allow_credentials` cannot go with the \"*\" origin: browsers refuse it".into());
        }
        if let Some(o) = self.allow_origins.iter().find(|o| *o != "*" && !o.contains("://")) {
            return Err(format!("grpc_web.cors: origin {o:?} must be \"scheme://host[:port]\" or \"*\""));
        }
        Ok(())
    }
}

/// `grpc_web = true | false | { ... }` (the JSON Schema of the key).
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Only its schema is used.
pub(crate) enum GrpcWebSetting {
    /// `true`: accept gRPC-Web, no CORS; `false`: off.
    Switch(bool),
    /// Accept gRPC-Web with these settings.
    Settings(GrpcWebConfig),
}

/// Reads `grpc_web = true | false | { ... }`: `false` is `None`.
pub(crate) fn grpc_web<'de, D: Deserializer<'de>>(d: D) -> Result<Option<GrpcWebConfig>, D::Error> {
    struct Setting;
    impl<'de> Visitor<'de> for Setting {
        type Value = Option<GrpcWebConfig>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("true, false or a table such as { cors = { allow_origins = [\"https://app.example.com\"] } }")
        }
        fn visit_bool<E: de::Error>(self, on: bool) -> Result<Self::Value, E> {
            Ok(on.then(GrpcWebConfig::default))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            GrpcWebConfig::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(Setting)
}
