//! The JSON Schema of `gateway.toml`, derived from the config structs.
//!
//! Editors (taplo, Even Better TOML) use it to complete keys, show their
//! documentation and flag mistakes as you type. The structs derive
//! [`schemars::JsonSchema`] next to `Deserialize`; what serde attributes
//! say (`deny_unknown_fields`, `rename_all`, `untagged`, defaults) becomes
//! the schema's, and the `///` comments become its descriptions. Values
//! read by a function of their own (durations, sizes, socket addresses)
//! are described by the stand-in types of this module, which say in JSON
//! Schema what those functions accept.

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::transform::{Transform, transform_subschemas};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::Value;

use crate::GatewayConfig;

/// The JSON Schema (draft 2020-12) of a whole `gateway.toml`, as TOML
/// read into JSON: tables are objects, arrays are arrays.
///
/// It is derived from [`GatewayConfig`] and the types it holds, so it
/// names every key the parser accepts, with its type, default and
/// documentation, and refuses what the parser refuses: unknown keys
/// (`additionalProperties: false`), wrong types, unknown enum values,
/// durations, sizes and addresses that do not parse. A few checks that
/// `weir check` makes when it loads a config are in it too (ranges such as
/// `retry.tries` 1 to 10, plugin names, `health.path` starting with `/`).
/// Checks between keys (a route's `upstream` must exist, `targets` or
/// `targets_file`) and of files are not.
///
/// The document has a `title` and a `$schema`, no `$id`: it is meant to be
/// saved next to the config (`weir config schema > gateway.schema.json`)
/// and named from it (`#:schema ./gateway.schema.json`). Print it with
/// `serde_json::to_string_pretty`.
pub fn schema() -> Value {
    let generator = SchemaSettings::draft2020_12().with_transform(TomlValues).into_generator();
    let generated = generator.into_root_schema_for::<GatewayConfig>().to_value();
    // The document's own keys first, as a reader expects them.
    let mut root = serde_json::Map::new();
    root.insert("$schema".into(), generated["$schema"].clone());
    root.insert("title".into(), "weir gateway.toml".into());
    if let Value::Object(rest) = generated {
        for (k, v) in rest {
            if k != "$id" && k != "title" {
                root.entry(k).or_insert(v);
            }
        }
    }
    Value::Object(root)
}

/// The schema of a duration string, as `humantime::parse_duration` reads
/// it: one or more spans, each a number (with an optional fraction) and a
/// unit, optionally separated by spaces; or `"0"` alone.
pub(crate) struct DurationString;

/// The units `humantime` knows.
const DURATION_UNITS: &str = "nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|\
                              minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|\
                              months|month|M|years|year|yrs|yr|y";

/// The pattern of [`DurationString`].
fn duration_pattern() -> String {
    // A number: digits (spaces between them are skipped by humantime), then
    // an optional fraction with at least one digit.
    let number = r"[0-9][0-9\s]*(\.[0-9\s]*[0-9][0-9\s]*)?";
    format!(r"^(0|\s*({number}({DURATION_UNITS})\s*)+)$")
}

impl JsonSchema for DurationString {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn schema_id() -> Cow<'static, str> {
        "weir_config::Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit, e.g. \"50ms\", \"10s\", \"1m\", \"1h 30m\", \"1.5s\". \
                            Units: ns, us (µs), ms, s (sec), m (min), h (hr), d (day), w (week), M (month), y (year).",
            "pattern": duration_pattern(),
            "examples": ["50ms", "10s", "5m", "1h 30m"],
        })
    }
}

/// The schema of a size string, as [`crate::parse_byte_size`] reads it.
pub(crate) struct ByteSizeString;

/// The pattern of [`ByteSizeString`].
const BYTE_SIZE_PATTERN: &str = r"^\s*[0-9]+\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$";

impl JsonSchema for ByteSizeString {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn schema_id() -> Cow<'static, str> {
        "weir_config::ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A size in bytes, as a string: a number and an optional unit, B, KB (1000), KiB (1024), \
                            MB, MiB, GB or GiB, e.g. \"512KiB\", \"16MiB\", \"1GB\". A bare TOML integer is refused.",
            "pattern": BYTE_SIZE_PATTERN,
            "examples": ["512KiB", "16MiB", "1GB"],
        })
    }
}

/// The schema of a listener address: what `SocketAddr`'s `FromStr`
/// accepts, an IP address and a port (no host name).
pub(crate) struct SocketAddrString;

/// The pattern of [`SocketAddrString`]: IPv4 `a.b.c.d:port` or IPv6
/// `[addr%scope]:port`. Octet values and the port's range are left to the
/// parser.
const SOCKET_ADDR_PATTERN: &str = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.]+(%[0-9]+)?\]):[0-9]+$";

impl JsonSchema for SocketAddrString {
    fn schema_name() -> Cow<'static, str> {
        "SocketAddr".into()
    }

    fn schema_id() -> Cow<'static, str> {
        "weir_config::SocketAddr".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "An IP address and a port, e.g. \"127.0.0.1:8080\", \"0.0.0.0:8443\", \"[::1]:8080\"; \
                            port 0 picks a free one. A host name (\"localhost:8080\") is refused.",
            "pattern": SOCKET_ADDR_PATTERN,
        })
    }
}

/// The pattern of a plugin instance or aggregate part name ([`crate::valid_name`]).
pub(crate) const NAME_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// The pattern of a target address: `host:port`, the port required, no
/// `user@` (what the upstream loader accepts, loosely: the host itself is
/// checked there).
pub(crate) const TARGET_PATTERN: &str = r"^[^@/\s]+:[0-9]+$";

/// The pattern of `hash_on`: `client_ip`, `header:NAME` (an HTTP header
/// name) or `cookie:NAME`.
pub(crate) const HASH_ON_PATTERN: &str = r"^(client_ip|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|cookie:.+)$";

/// Makes the generated schema say what TOML can hold:
///
/// * TOML has no null: `Option<T>` is "the key may be absent" (every such
///   field has a serde default), so `null` is taken out of the types
///   schemars allows for it, and a `null` default is dropped.
/// * Defaults of durations and sizes are written as the strings the
///   parser reads (`"30s"`, `"64MiB"`), not as the Rust values
///   (`{"secs": 30, "nanos": 0}`, `67108864`).
#[derive(Clone)]
struct TomlValues;

impl Transform for TomlValues {
    fn transform(&mut self, schema: &mut Schema) {
        if let Some(obj) = schema.as_object_mut() {
            if obj.get("default").is_some_and(Value::is_null) {
                obj.remove("default");
            }
            if let Some(Value::Array(types)) = obj.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    obj.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(values)) = obj.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
            if let Some(Value::Array(any_of)) = obj.get_mut("anyOf") {
                any_of.retain(|s| s.get("type").is_none_or(|t| t != "null"));
                if any_of.len() == 1 {
                    // `{"anyOf": [S]}` (with siblings such as a description) is S.
                    let only = any_of.remove(0);
                    obj.remove("anyOf");
                    if let Value::Object(only) = only {
                        for (k, v) in only {
                            obj.entry(k).or_insert(v);
                        }
                    }
                }
            }
            // schemars marks Rust integer and float types with formats of its
            // own (`uint32`, `double`, ...) that validators and editors do not
            // know; what they mean is said with bounds instead.
            if let Some(format) = obj.get("format").and_then(Value::as_str).map(str::to_owned) {
                let max = match format.as_str() {
                    "uint8" => Some(u64::from(u8::MAX)),
                    "uint16" => Some(u64::from(u16::MAX)),
                    "uint32" => Some(u64::from(u32::MAX)),
                    _ => None,
                };
                if let Some(max) = max {
                    obj.entry("maximum").or_insert(max.into());
                }
                if format.starts_with("uint") || format.starts_with("int") || format == "double" || format == "float" {
                    obj.remove("format");
                }
            }
            let reference = obj.get("$ref").and_then(Value::as_str).map(str::to_owned);
            if let (Some(reference), Some(default)) = (reference, obj.get_mut("default")) {
                if reference.ends_with("/Duration") {
                    if let Some(d) = duration_from_value(default) {
                        *default = humantime::format_duration(d).to_string().into();
                    }
                } else if reference.ends_with("/ByteSize")
                    && let Some(n) = default.as_u64()
                {
                    *default = format_byte_size(n).into();
                }
            }
        }
        transform_subschemas(self, schema);
    }
}

/// A `Duration` as serde writes it, `{"secs": S, "nanos": N}`.
fn duration_from_value(v: &Value) -> Option<std::time::Duration> {
    let secs = v.get("secs")?.as_u64()?;
    let nanos = u32::try_from(v.get("nanos")?.as_u64()?).ok()?;
    Some(std::time::Duration::new(secs, nanos))
}

/// `n` bytes in the largest binary unit that divides it: 67108864 →
/// `"64MiB"`, 1000 → `"1000B"`.
fn format_byte_size(n: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n != 0 && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n}B")
}
