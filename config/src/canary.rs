//! `[plugins.NAME] canary = { ... }`: a second version of a plugin that
//! takes a share of the traffic, compared with the stable version and
//! rolled back automatically when it does worse.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use crate::duration;
use crate::json_schema::DurationString;

/// `canary = { module = "auth-2.wasm", percent = 10 }`: that share of the
/// route's requests runs `module`, with the plugin's own config, limits and
/// failure policy; the rest runs the stable module. The gateway compares
/// the two over `rollback.window` and stops routing to the canary when it
/// does worse than `rollback` allows.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// The canary's module: a file name in `plugins_dir` or an `oci://`
    /// reference (pulled with the plugin's `registry` settings).
    pub module: String,
    /// If set, the canary module's sha256 (hex) must match, as the plugin's
    /// own `sha256` pins the stable module.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Share of requests that run the canary, in percent: 0 to 100,
    /// fractions allowed (`0.5`).
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: f64,
    /// How a request is assigned: `"client"` (by client address, so one
    /// client stays on one version), `"request"` (each request drawn on its
    /// own), `"header:NAME"` (by a request header's value, as the chain left
    /// it when it reaches the plugin) or `"data:PLUGIN.KEY"` (by a value an
    /// earlier plugin published, e.g. the authenticated user). Without the
    /// header or value, the client address decides.
    #[serde(default)]
    #[schemars(with = "String")]
    pub sticky: Sticky,
    /// When the gateway takes the canary back.
    #[serde(default)]
    pub rollback: RollbackConfig,
}

/// `rollback = { max_error_rate = 0.02, max_p99_ratio = 1.5, min_requests
/// = 200, window = "1m" }`: the canary is rolled back when, over the last
/// `window`, with at least `min_requests` calls of its own, its share of
/// failed calls (traps, deadline overruns, refused output, 5xx answers)
/// exceeds the stable version's by more than `max_error_rate`, or its p99
/// call time exceeds `max_p99_ratio` times the stable version's.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackConfig {
    /// Failure share the canary may have above the stable version's (0 to
    /// 1): `0.02` allows 2 points more.
    #[serde(default = "max_error_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: f64,
    /// The canary's p99 call time may be at most this many times the
    /// stable version's (at least 1); no latency rule if absent.
    #[serde(default)]
    pub max_p99_ratio: Option<f64>,
    /// Calls the canary must have had in the window before it is judged
    /// (and the stable version too, for the latency rule).
    #[serde(default = "min_requests")]
    #[schemars(range(min = 1))]
    pub min_requests: u64,
    /// The window the two versions are compared over (1s to 1h).
    #[serde(default = "window", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub window: Duration,
}

impl Default for RollbackConfig {
    fn default() -> Self {
        Self { max_error_rate: max_error_rate(), max_p99_ratio: None, min_requests: min_requests(), window: window() }
    }
}

fn max_error_rate() -> f64 {
    0.01
}

fn min_requests() -> u64 {
    100
}

fn window() -> Duration {
    Duration::from_secs(60)
}

/// How requests are assigned to the canary: the same key always gets the
/// same version (while the percent stays the same).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Sticky {
    /// By the client's address (IP, not port).
    #[default]
    Client,
    /// Each request drawn on its own.
    Request,
    /// By this request header's value (lower-case name).
    Header(String),
    /// By the value plugin `.0` published under key `.1`.
    Chain(String, String),
}

impl Sticky {
    /// Parse `client`, `request`, `header:NAME` or `data:PLUGIN.KEY`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "client" => Ok(Sticky::Client),
            "request" => Ok(Sticky::Request),
            _ => {
                if let Some(name) = s.strip_prefix("header:") {
                    let name = name.to_ascii_lowercase();
                    let valid = !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                    return if valid {
                        Ok(Sticky::Header(name))
                    } else {
                        Err(format!("{name:?} is not a header name"))
                    };
                }
                if let Some(rest) = s.strip_prefix("data:") {
                    return match rest.split_once('.') {
                        Some((plugin, key)) if crate::valid_name(plugin) && !key.is_empty() => {
                            Ok(Sticky::Chain(plugin.to_owned(), key.to_owned()))
                        }
                        _ => Err(format!("sticky = \"data:{rest}\" must be data:PLUGIN.KEY")),
                    };
                }
                Err(format!("sticky = {s:?} is not one of client, request, header:NAME, data:PLUGIN.KEY"))
            }
        }
    }
}

impl fmt::Display for Sticky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sticky::Client => f.write_str("client"),
            Sticky::Request => f.write_str("request"),
            Sticky::Header(h) => write!(f, "header:{h}"),
            Sticky::Chain(p, k) => write!(f, "data:{p}.{k}"),
        }
    }
}

impl<'de> Deserialize<'de> for Sticky {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Sticky::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl CanaryConfig {
    /// What is wrong with the settings serde cannot check, if anything.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=100.0).contains(&self.percent) {
            return Err(format!("percent must be 0 to 100, not {}", self.percent));
        }
        let r = &self.rollback;
        if !(0.0..=1.0).contains(&r.max_error_rate) {
            return Err(format!("rollback.max_error_rate must be 0 to 1, not {}", r.max_error_rate));
        }
        if let Some(ratio) = r.max_p99_ratio
            && !(ratio >= 1.0 && ratio.is_finite())
        {
            return Err(format!("rollback.max_p99_ratio must be at least 1, not {ratio}"));
        }
        if r.min_requests == 0 {
            return Err("rollback.min_requests must be at least 1".into());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&r.window) {
            return Err(format!("rollback.window must be 1s to 1h, not {:?}", r.window));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_forms_parse_and_print_back() {
        for (text, sticky) in [
            ("client", Sticky::Client),
            ("request", Sticky::Request),
            ("header:X-User", Sticky::Header("x-user".into())),
            ("data:auth.x-auth-sub", Sticky::Chain("auth".into(), "x-auth-sub".into())),
        ] {
            assert_eq!(Sticky::parse(text), Ok(sticky.clone()), "{text}");
            assert_eq!(Sticky::parse(&sticky.to_string()), Ok(sticky));
        }
        for bad in ["", "cookie", "header:", "header:a b", "data:auth", "data:.key", "data:a/b.c"] {
            assert!(Sticky::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let ok = CanaryConfig {
            module: "v2.wasm".into(),
            sha256: None,
            percent: 10.0,
            sticky: Sticky::Client,
            rollback: RollbackConfig::default(),
        };
        assert_eq!(ok.check(), Ok(()));
        let with = |f: &dyn Fn(&mut CanaryConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.check().expect_err("refused")
        };
        assert!(with(&|c| c.percent = -1.0).contains("percent"));
        assert!(with(&|c| c.percent = f64::NAN).contains("percent"));
        assert!(with(&|c| c.rollback.max_error_rate = 1.5).contains("max_error_rate"));
        assert!(with(&|c| c.rollback.max_p99_ratio = Some(0.5)).contains("max_p99_ratio"));
        assert!(with(&|c| c.rollback.min_requests = 0).contains("min_requests"));
        assert!(with(&|c| c.rollback.window = Duration::from_millis(10)).contains("window"));
    }
}
