//! Typed access to a plugin's `config` table.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Error, Result};

/// A plugin's `config` table from `gateway.toml`.
///
/// Read single keys with the `get_*` accessors, or the whole table into your
/// own `#[derive(Deserialize)]` struct with [`Config::parse`] (add
/// `#[serde(deny_unknown_fields)]` so typos are rejected at load).
#[derive(Debug, Clone, Default)]
pub struct Config {
    value: Value,
}

impl Config {
    /// A config from a JSON value (what the gateway hands over).
    pub fn from_json(value: Value) -> Self {
        Self { value }
    }

    pub(crate) fn from_json_str(json: &str) -> serde_json::Result<Self> {
        if json.trim().is_empty() {
            return Ok(Self::from_json(Value::Object(Default::default())));
        }
        serde_json::from_str(json).map(Self::from_json)
    }

    /// The whole table as JSON.
    pub fn as_json(&self) -> &Value {
        &self.value
    }

    /// Deserialize the whole table into `T`; the error names the bad key.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.value).map_err(|e| Error::internal(format!("invalid config: {e}")))
    }

    /// A key's raw value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key)
    }

    /// A string key (`None` if absent or not a string).
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// An integer key.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.as_i64()
    }

    /// A boolean key.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// A string key that must be present.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(Error::internal(format!("config key `{key}` must be a string, got {other}"))),
            None => Err(Error::internal(format!("config key `{key}` is required"))),
        }
    }
}
