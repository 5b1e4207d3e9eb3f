//! Plugin config schemas (contract `0.2.5`, the `describe` export): the
//! JSON Schema a plugin declares for its `config` table, and the check of a
//! table against it that runs before the plugin's `init`.
//!
//! Every mismatch is reported, each with the key path in the form an
//! operator finds in `gateway.toml` (`config.keys[0].secret`), so one run
//! of `weir check` shows them all. Only schemas whose references stay
//! inside the document are accepted: nothing is fetched.

use std::fmt;

use serde_json::Value;

/// One way a config table breaks its plugin's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Where, as `config.a.b[2]` (`config` for the table itself).
    pub path: String,
    /// Why, in the validator's words.
    pub reason: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// The schema a module declares (`None`: it declares none), by module
/// sha256: asked once per module, however many plugins it backs.
pub(crate) type SchemaCache = std::sync::Mutex<std::collections::HashMap<String, Option<std::sync::Arc<ModuleSchema>>>>;

/// A module's schema: its text and the compiled checker.
pub(crate) struct ModuleSchema {
    pub(crate) text: std::sync::Arc<str>,
    pub(crate) compiled: ConfigSchema,
}

/// A plugin's config schema, compiled.
pub(crate) struct ConfigSchema {
    validator: jsonschema::Validator,
}

/// At most this many mismatches are reported for one table; the count of
/// the rest is added.
const MAX_REPORTED: usize = 32;

impl ConfigSchema {
    /// Compile the schema a plugin returned. `Err` says why it is not one
    /// (not JSON, not a schema, a reference that would need fetching).
    pub(crate) fn compile(text: &str) -> Result<Self, String> {
        let schema: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let validator = jsonschema::options()
            .should_validate_formats(false)
            .build(&schema)
            .map_err(|e| format!("not a valid JSON Schema: {e}"))?;
        Ok(Self { validator })
    }

    /// Check the config table (as the JSON the plugin will get). `Err`
    /// lists every mismatch, in document order.
    pub(crate) fn check(&self, config_json: &str) -> Result<(), Vec<SchemaError>> {
        let config: Value = match serde_json::from_str(config_json) {
            Ok(v) => v,
            Err(e) => return Err(vec![SchemaError { path: "config".into(), reason: format!("not JSON: {e}") }]),
        };
        let mut errors: Vec<SchemaError> = Vec::new();
        for e in self.validator.iter_errors(&config) {
            let path = key_path(e.instance_path().as_str());
            match e.kind() {
                // One line per unknown key, at the key itself.
                jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                    for key in unexpected {
                        errors.push(SchemaError { path: join_key(&path, key), reason: "unknown key".into() });
                    }
                }
                _ => errors.push(SchemaError { path, reason: e.to_string() }),
            }
        }
        if errors.len() > MAX_REPORTED {
            let more = errors.len() - MAX_REPORTED;
            errors.truncate(MAX_REPORTED);
            errors.push(SchemaError { path: "config".into(), reason: format!("and {more} more mismatches") });
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// A JSON pointer into the config (`/keys/0/secret`) as the operator
/// writes it (`config.keys[0].secret`).
fn key_path(pointer: &str) -> String {
    let mut path = String::from("config");
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            path.push('[');
            path.push_str(&seg);
            path.push(']');
        } else {
            path = join_key(&path, &seg);
        }
    }
    path
}

/// `path.key`, or `path."key"` when the key is not a bare TOML key.
fn join_key(path: &str, key: &str) -> String {
    let bare = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare { format!("{path}.{key}") } else { format!("{path}.{key:?}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r##"{
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "keys": { "type": "array", "items": { "$ref": "#/$defs/Key" } },
            "mode": { "enum": ["a", "b"] }
        },
        "required": ["keys"],
        "additionalProperties": false,
        "$defs": {
            "Key": {
                "type": "object",
                "properties": { "secret": { "type": "string", "minLength": 4 } },
                "required": ["secret"],
                "additionalProperties": false
            }
        }
    }"##;

    fn check(config: &str) -> Vec<String> {
        let schema = ConfigSchema::compile(SCHEMA).expect("schema compiles");
        schema.check(config).err().unwrap_or_default().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_matching_table_passes() {
        assert!(check(r#"{"keys": [{"secret": "long enough"}], "mode": "a"}"#).is_empty());
    }

    #[test]
    fn every_mismatch_is_reported_with_its_key_path() {
        let errors = check(r#"{"keys": [{"secret": "x"}, {"secert": "abcd"}], "mode": "c", "extra": 1, "my key": 2}"#);
        assert!(errors.iter().any(|e| e.starts_with("config.keys[0].secret: ") && e.contains("shorter")), "{errors:?}");
        assert!(errors.iter().any(|e| e == "config.keys[1].secert: unknown key"), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("config.keys[1]: ") && e.contains("secret")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("config.mode: ")), "{errors:?}");
        assert!(errors.iter().any(|e| e == "config.extra: unknown key"), "{errors:?}");
        assert!(errors.iter().any(|e| e == "config.\"my key\": unknown key"), "{errors:?}");
        assert_eq!(errors.len(), 6, "{errors:?}");
    }

    #[test]
    fn a_missing_required_key_is_reported_at_its_table() {
        assert_eq!(check("{}"), vec![r#"config: "keys" is a required property"#.to_string()]);
    }

    #[test]
    fn what_is_not_a_schema_is_refused() {
        assert!(ConfigSchema::compile("{").err().unwrap_or_default().starts_with("not JSON"));
        let refused = ConfigSchema::compile(r#"{"type": 5}"#).err().unwrap_or_default();
        assert!(refused.starts_with("not a valid JSON Schema"), "{refused}");
        // A reference that would have to be fetched.
        let remote = ConfigSchema::compile(r#"{"$ref": "https://example.com/s.json"}"#).err().unwrap_or_default();
        assert!(!remote.is_empty());
    }

    #[test]
    fn too_many_mismatches_are_counted_not_listed() {
        let keys: Vec<String> = (0..40).map(|i| format!("\"k{i}\": 1")).collect();
        let errors = check(&format!("{{\"keys\": [], {}}}", keys.join(", ")));
        assert_eq!(errors.len(), MAX_REPORTED + 1, "{errors:?}");
        assert_eq!(errors.last().map(String::as_str), Some("config: and 8 more mismatches"));
    }
}
