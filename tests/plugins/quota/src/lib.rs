//! `quota.wasm` and `quota_fixed.wasm`, test plugins for the flight
//! recorder and `weir plugin replay`: a plugin with a bug, and its fix.
//!
//! Both read the request header `header` (default `x-quota`) as a number
//! of remaining calls and pass `x-quota-left` (one less) to the upstream.
//! **The bug** (`quota`): a value that is not a number panics, so the
//! plugin traps. **The fix** (`quota-fixed`, the same source built with the
//! `fixed` feature): such a value is answered with `400`.
//!
//! `config = { header = "x-quota" }`

use serde::Deserialize;
use weir_plugin_sdk::prelude::*;

/// The `config` table.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The request header holding the remaining calls.
    #[serde(default = "default_header")]
    header: String,
}

fn default_header() -> String {
    "x-quota".into()
}

struct Quota {
    header: String,
}

impl Plugin for Quota {
    fn new(config: &Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        Ok(Quota { header: s.header })
    }

    fn config_schema() -> Option<String> {
        weir_plugin_sdk::schema_for::<Settings>()
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    fn on_request(&self, req: &mut Request, _cx: &Context) -> Result<Action> {
        let Some(value) = req.header(&self.header) else { return Ok(Action::Continue) };
        #[cfg(not(feature = "fixed"))]
        #[allow(clippy::unwrap_used)] // the bug this plugin exists to have
        let left: u64 = value.trim().parse().unwrap();
        #[cfg(feature = "fixed")]
        let Ok(left) = value.trim().parse::<u64>() else {
            return Ok(Action::Respond(
                Reply::new(StatusCode::BAD_REQUEST).body(format!("{} is not a number", self.header)),
            ));
        };
        req.set_header("x-quota-left", left.saturating_sub(1).to_string())?;
        Ok(Action::Continue)
    }
}

weir_plugin_sdk::export_plugin!(Quota);
