//! The `config` table as written in `gateway.toml`. Deserialising checks
//! shapes and names unknown keys; `crate::Transform::new` checks values.
//! The same structs give the JSON Schema the plugin declares
//! (`Plugin::config_schema`): their `///` comments are its descriptions.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;

/// The whole table.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "transform config",
    description = "The `config` table of `transform.wasm`: rewrite requests (headers, path, query, JSON body) and \
                   responses (headers, JSON body, status). Every key is optional."
)]
pub(crate) struct Settings {
    /// Edits of the request.
    #[serde(default)]
    pub(crate) request: RequestSettings,
    /// Edits of the response.
    #[serde(default)]
    pub(crate) response: ResponseSettings,
    /// Largest JSON body transformed, in either direction: a number of bytes
    /// above 0, or a size string like `"512KiB"` or `"1MiB"` (units B, KB,
    /// KiB, MB, MiB, GB, GiB).
    #[serde(default)]
    #[schemars(extend("default" = "1MiB"))]
    pub(crate) max_body: Option<Size>,
}

/// Edits of the request on its way upstream: `headers`, `path`, `query`
/// and `body`.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestSettings {
    /// Header edits.
    #[serde(default)]
    pub(crate) headers: HeaderSettings,
    /// Path rewrite.
    #[serde(default)]
    pub(crate) path: PathSettings,
    /// Query parameter edits.
    #[serde(default)]
    pub(crate) query: QuerySettings,
    /// JSON body edits.
    #[serde(default)]
    pub(crate) body: BodySettings,
}

/// Edits of the response on its way back: `headers`, `body` and
/// `status_map`.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResponseSettings {
    /// Header edits.
    #[serde(default)]
    pub(crate) headers: HeaderSettings,
    /// JSON body edits.
    #[serde(default)]
    pub(crate) body: BodySettings,
    /// Status code mapping, upstream status → status sent, e.g. `{ "404" = 200, "5xx" = 503 }`. Keys are exact
    /// codes (`"404"`, 100-599) or classes (`"1xx"` to `"5xx"`); an exact code wins over its class. Targets are
    /// 200-599.
    #[serde(default)]
    #[schemars(schema_with = "status_map_schema")]
    pub(crate) status_map: BTreeMap<String, u16>,
}

/// Header edits, applied remove → rename → set → add. Header names are
/// case-insensitive; the gateway's framing and hop-by-hop headers cannot be
/// named.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderSettings {
    /// Header names to remove (all values).
    #[serde(default)]
    pub(crate) remove: Vec<String>,
    /// `from = "to"` (header names): move all values of `from` to `to`, replacing `to`'s. Renames must not chain
    /// or share a target.
    #[serde(default)]
    pub(crate) rename: BTreeMap<String, String>,
    /// Header name → a template or a list of templates (`"{header.x-user}"`, `"{path.id}"`, `"{client_ip}"`, …):
    /// replace all values with these.
    #[serde(default)]
    pub(crate) set: BTreeMap<String, OneOrMany>,
    /// Header name → a template or a list of templates: append these values, keeping the existing ones.
    #[serde(default)]
    pub(crate) add: BTreeMap<String, OneOrMany>,
}

/// Path rewrite, applied strip_prefix → regex/replace → add_prefix.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct PathSettings {
    /// Remove this leading path, on a segment boundary (literal text, starting with `/`): `"/api"` turns
    /// `/api/users` into `/users`.
    #[serde(default)]
    pub(crate) strip_prefix: Option<String>,
    /// A regex (regex-lite syntax, matched against the percent-encoded path): every match is replaced by
    /// `replace`. Needs `replace`.
    #[serde(default)]
    pub(crate) regex: Option<String>,
    /// The replacement for `regex`: a template with captures (`$1`, `${1}`, `${name}`, `$$` for `$`) and `{source}`
    /// values. Needs `regex`.
    #[serde(default)]
    pub(crate) replace: Option<String>,
    /// Put this in front of the path: a template starting with `/`, e.g. `"/v2"`.
    #[serde(default)]
    pub(crate) add_prefix: Option<String>,
}

/// Query parameter edits, applied remove → rename → set → add. Names and
/// values are written plain (not percent-encoded).
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuerySettings {
    /// Parameter names to remove (all occurrences).
    #[serde(default)]
    pub(crate) remove: Vec<String>,
    /// `from = "to"`: rename every occurrence, replacing any `to`.
    #[serde(default)]
    pub(crate) rename: BTreeMap<String, String>,
    /// Parameter name → a template or a list of templates: replace all occurrences with these values.
    #[serde(default)]
    pub(crate) set: BTreeMap<String, OneOrMany>,
    /// Parameter name → a template or a list of templates: append these parameters.
    #[serde(default)]
    pub(crate) add: BTreeMap<String, OneOrMany>,
}

/// JSON body edits, applied remove → rename → set, on bodies labelled as
/// JSON. Pointers follow RFC 6901 (`""` is the whole document, `/a/0/b`).
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct BodySettings {
    /// JSON pointers of the values to remove.
    #[serde(default)]
    pub(crate) remove: Vec<String>,
    /// `"/from" = "/to"` (JSON pointers): move a value.
    #[serde(default)]
    pub(crate) rename: BTreeMap<String, String>,
    /// `"/pointer" = value`: a string is a template rendered to a JSON string; any other value (number, boolean,
    /// array, table) is inserted as literal JSON. `-` appends to an array.
    #[serde(default)]
    pub(crate) set: BTreeMap<String, serde_json::Value>,
}

/// `"value"` or `["value", ...]`.
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// One schema with both types rather than an `anyOf`, so that a mismatch is
/// reported for what it is (`items` only applies to lists).
impl JsonSchema for OneOrMany {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "OneOrMany".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A template, or a list of templates (one value each).",
            "type": ["string", "array"],
            "items": { "type": "string" },
        })
    }
}

/// `status_map`: code or class → a target status.
fn status_map_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": { "type": "integer", "minimum": 200, "maximum": 599 },
    })
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl OneOrMany {
    pub(crate) fn values(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

/// A byte count: `1048576` or `"1MiB"`.
pub(crate) enum Size {
    Bytes(u64),
    Text(String),
}

/// A number of bytes above 0 or a size string, in one schema (`minimum`
/// only applies to numbers).
impl JsonSchema for Size {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["integer", "string"], "minimum": 1 })
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of bytes or a size like \"1MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size::Bytes(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v).map(Size::Bytes).map_err(|_| E::custom(format!("size {v} is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Size, E> {
                Ok(Size::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Size {
    /// Units as in the gateway's own config: B, KB, KiB, MB, MiB, GB, GiB.
    pub(crate) fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(n) => Ok(*n),
            Size::Text(s) => {
                let t = s.trim();
                let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
                let (num, unit) = t.split_at(split);
                let mult: u64 = match unit.trim() {
                    "" | "B" => 1,
                    "KB" => 1000,
                    "KiB" => 1 << 10,
                    "MB" => 1000 * 1000,
                    "MiB" => 1 << 20,
                    "GB" => 1000 * 1000 * 1000,
                    "GiB" => 1 << 30,
                    _ => 0,
                };
                num.parse::<u64>()
                    .ok()
                    .filter(|_| mult > 0)
                    .and_then(|n| n.checked_mul(mult))
                    .ok_or_else(|| format!("invalid size {s:?}: expected bytes or e.g. \"512KiB\", \"1MiB\""))
            }
        }
    }
}
