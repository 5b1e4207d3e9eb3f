//! Components: compiled once per distinct module (by sha256) and kept
//! across snapshots, and checked against the contract this host speaks.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use wasmtime::component::Component;

use crate::engine::PluginEngine;

/// The `weir:plugin` series this host links (semver-compatible versions:
/// any `0.2.x`).
pub(crate) const CONTRACT_SERIES: &str = "0.2.";

/// Compiled components by module sha256, so an unchanged module is not
/// compiled again on reload.
#[derive(Default)]
pub(crate) struct Compiled {
    by_sha256: Mutex<HashMap<String, Component>>,
}

impl Compiled {
    /// Compile `bytes` unless a component with the same hash is cached.
    /// Compilation runs on a blocking thread: it is CPU-heavy and must not
    /// stall request handling. `Err` is the compiler's first line.
    pub(crate) async fn get_or_compile(
        &self,
        engine: &Arc<PluginEngine>,
        sha256: &str,
        bytes: Vec<u8>,
    ) -> Result<Component, String> {
        if let Some(c) = self.by_sha256.lock().unwrap_or_else(|p| p.into_inner()).get(sha256) {
            return Ok(c.clone());
        }
        let engine = engine.clone();
        let component = tokio::task::spawn_blocking(move || engine.compile(&bytes))
            .await
            .map_err(|e| format!("compiler task failed: {e}"))?
            .map_err(|e| format!("{e:#}").lines().next().unwrap_or_default().to_owned())?;
        self.by_sha256.lock().unwrap_or_else(|p| p.into_inner()).insert(sha256.to_owned(), component.clone());
        Ok(component)
    }

    /// Drop the components of modules no snapshot uses any more.
    pub(crate) fn retain(&self, used: &HashSet<String>) {
        self.by_sha256.lock().unwrap_or_else(|p| p.into_inner()).retain(|sha, _| used.contains(sha));
    }
}

/// Why a component cannot be a plugin of this host, when it was built
/// against another series of the contract.
pub(crate) fn contract_mismatch(engine: &wasmtime::Engine, component: &Component) -> Option<String> {
    contract_version(engine, component).filter(|v| !v.starts_with(CONTRACT_SERIES)).map(|v| {
        format!(
            "module was built against weir:plugin@{v}, this gateway speaks weir:plugin@{CONTRACT_SERIES}x: \
             rebuild it with the matching weir-plugin-sdk"
        )
    })
}

/// The `weir:plugin` version a component was built against, read from the
/// names of its imports and exports.
fn contract_version(engine: &wasmtime::Engine, component: &Component) -> Option<String> {
    let ty = component.component_type();
    let names: Vec<String> =
        ty.exports(engine).map(|(n, _)| n.to_owned()).chain(ty.imports(engine).map(|(n, _)| n.to_owned())).collect();
    names.iter().find_map(|n| n.strip_prefix("weir:plugin/")?.split_once('@').map(|(_, v)| v.to_owned()))
}

/// Whether a component imports the interface `name` (any version).
pub(crate) fn imports_interface(engine: &wasmtime::Engine, component: &Component, name: &str) -> bool {
    component.component_type().imports(engine).any(|(n, _)| n.split('@').next() == Some(name))
}
