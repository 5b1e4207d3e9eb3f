//! The `config` table as written in `gateway.toml`. Deserialising checks
//! shapes and names unknown keys; `crate::Transform::new` checks values.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole table.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// Edits of the request.
    #[serde(default)]
    pub(crate) request: RequestSettings,
    /// Edits of the response.
    #[serde(default)]
    pub(crate) response: ResponseSettings,
    /// Largest JSON body transformed: bytes, or a size like `"512KiB"`.
    /// Default 1 MiB.
    #[serde(default)]
    pub(crate) max_body: Option<Size>,
}

/// `request = { headers, path, query, body }`
#[derive(Deserialize, Default)]
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

/// `response = { headers, body, status_map }`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResponseSettings {
    /// Header edits.
    #[serde(default)]
    pub(crate) headers: HeaderSettings,
    /// JSON body edits.
    #[serde(default)]
    pub(crate) body: BodySettings,
    /// Status code mapping: `"404" = 200`, `"5xx" = 503`.
    #[serde(default)]
    pub(crate) status_map: BTreeMap<String, u16>,
}

/// Header edits, applied remove → rename → set → add.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderSettings {
    /// Names to remove (all values).
    #[serde(default)]
    pub(crate) remove: Vec<String>,
    /// `from = "to"`: move all values of `from` to `to`, replacing `to`'s.
    #[serde(default)]
    pub(crate) rename: BTreeMap<String, String>,
    /// Replace all values with these (templates).
    #[serde(default)]
    pub(crate) set: BTreeMap<String, OneOrMany>,
    /// Append these values (templates).
    #[serde(default)]
    pub(crate) add: BTreeMap<String, OneOrMany>,
}

/// Path rewrite, applied strip_prefix → regex/replace → add_prefix.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct PathSettings {
    /// Remove this leading path (on a segment boundary).
    #[serde(default)]
    pub(crate) strip_prefix: Option<String>,
    /// Replace every match of this pattern with `replace`.
    #[serde(default)]
    pub(crate) regex: Option<String>,
    /// Replacement for `regex` (`$1`, `${name}`, `{source}` templates).
    #[serde(default)]
    pub(crate) replace: Option<String>,
    /// Put this in front of the path (a template).
    #[serde(default)]
    pub(crate) add_prefix: Option<String>,
}

/// Query parameter edits, applied remove → rename → set → add.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuerySettings {
    /// Names to remove (all occurrences).
    #[serde(default)]
    pub(crate) remove: Vec<String>,
    /// `from = "to"`: rename every occurrence, replacing any `to`.
    #[serde(default)]
    pub(crate) rename: BTreeMap<String, String>,
    /// Replace all occurrences with these values (templates).
    #[serde(default)]
    pub(crate) set: BTreeMap<String, OneOrMany>,
    /// Append these values (templates).
    #[serde(default)]
    pub(crate) add: BTreeMap<String, OneOrMany>,
}

/// JSON body edits, applied remove → rename → set.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct BodySettings {
    /// JSON pointers to remove.
    #[serde(default)]
    pub(crate) remove: Vec<String>,
    /// `"/from" = "/to"`: move a value.
    #[serde(default)]
    pub(crate) rename: BTreeMap<String, String>,
    /// `"/pointer" = value`: a string is a template, anything else literal JSON.
    #[serde(default)]
    pub(crate) set: BTreeMap<String, serde_json::Value>,
}

/// `"value"` or `["value", ...]`.
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
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
