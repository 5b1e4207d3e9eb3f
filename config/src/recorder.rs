//! `[recorder]`: the flight recorder (off without the section).

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::byte_size;
use crate::json_schema::ByteSizeString;

/// `[recorder]`: when a plugin call goes wrong, the gateway writes what the
/// plugin was given (the request head, and the body up to `max_body` in a
/// body phase), which plugin and module, the outcome and its timing, to a
/// bounded ring of files. `weir plugin replay` runs a module on one of them
/// offline. Off without this section.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecorderConfig {
    /// Record (set `false` to pause it and keep the section).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Folder of the recordings, relative to the config file; made if
    /// missing.
    #[serde(default = "recordings_dir")]
    pub dir: PathBuf,
    /// Recordings kept: the oldest goes when a new one would exceed it
    /// (1 to 10000).
    #[serde(default = "max_recordings")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_recordings: usize,
    /// Most body bytes kept per recording (the rest is cut, and the cut
    /// noted).
    #[serde(default = "max_body", deserialize_with = "byte_size")]
    #[schemars(with = "ByteSizeString")]
    pub max_body: u64,
    /// What is recorded: `trap` (the plugin trapped or returned something
    /// the gateway refused), `deadline` (it overran its deadline), `error`
    /// (it answered with a 5xx, as an SDK `Err` does), `5xx` (the request
    /// ended with a 5xx from the upstream or the gateway, recorded as the
    /// route's chain received it).
    #[serde(default = "default_triggers")]
    pub on: Vec<Trigger>,
    /// Replace the values of credentials headers (`authorization`,
    /// `proxy-authorization`, `cookie`, `set-cookie`, and
    /// `redact_headers`) with `[redacted]`.
    #[serde(default = "yes")]
    pub redact: bool,
    /// More headers to redact (lower case), e.g. `["x-api-key"]`.
    #[serde(default)]
    pub redact_headers: Vec<String>,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: recordings_dir(),
            max_recordings: max_recordings(),
            max_body: max_body(),
            on: default_triggers(),
            redact: true,
            redact_headers: Vec::new(),
        }
    }
}

/// What makes the recorder write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema, serde::Serialize)]
pub enum Trigger {
    /// The plugin trapped, or returned output the gateway refused.
    #[serde(rename = "trap")]
    Trap,
    /// The plugin overran its deadline.
    #[serde(rename = "deadline")]
    Deadline,
    /// The plugin answered with a 5xx (an SDK `Err`).
    #[serde(rename = "error")]
    Error,
    /// The request ended with a 5xx.
    #[serde(rename = "5xx")]
    Status5xx,
}

fn yes() -> bool {
    true
}

fn recordings_dir() -> PathBuf {
    PathBuf::from("recordings")
}

fn max_recordings() -> usize {
    100
}

fn max_body() -> u64 {
    64 * 1024
}

fn default_triggers() -> Vec<Trigger> {
    vec![Trigger::Trap, Trigger::Deadline, Trigger::Error]
}
