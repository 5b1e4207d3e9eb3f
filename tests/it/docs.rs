//! The documentation's TOML examples cannot drift from the gateway.
//!
//! Every block fenced as ```` ```toml ```` in `README.md`, `docs/src/**/*.md`
//! and `plugins/*/README.md` is checked with weir's own parser (a
//! `{{#include FILE}}` line inside a block is replaced by the file, as
//! mdbook does). The fence's info string says what the block is:
//!
//! * **whole config**: a `toml` block whose `[server]` has `listen` (which
//!   every `gateway.toml` must have). It is loaded
//!   as `weir check` loads a file, with [`weir::Gateway::load`]: parsed, then
//!   every upstream, plugin and route built, each plugin instantiated from
//!   the modules the test suite builds and given its `config`. Only what
//!   ties the file to a machine is changed: `plugins_dir` points at the
//!   built modules, a relative `[access_log] target` goes to a temporary
//!   folder, and `[runtime] max_instances` is 64 unless the block sets it.
//! * **fragment**: any other `toml` block (only `[plugins.auth]`, only
//!   `[upstreams.x]`, a `[[routes]]` entry, `[server.tls]`, ...). It is
//!   merged (a TOML table merge) into a base config with a `[server]`
//!   `listen` address, and with `module` for a `[plugins.NAME]` that has
//!   none (the module of the `plugins/X/README.md` the block is in); the
//!   result is parsed, so an unknown or misspelled key, a wrong type or a
//!   bad value fails. The plugin instances it declares are then loaded with
//!   the built modules, so a wrong key in a plugin's own `config` fails too
//!   (a module the suite does not build fails, unless it is one of
//!   [`EXAMPLE_MODULES`], the reader's own plugins in the plugin guide, or
//!   an `oci://` reference, which would need the registry: a plugin whose
//!   module or canary module is one of those is parsed, not loaded).
//!   The rest is parsed, not loaded: a fragment may name upstreams,
//!   certificates or files that it does not show.
//! * ```` ```toml targets-file ````: a `targets_file` (the `targets` and
//!   `backup` of an upstream). It is written to a file and loaded as an
//!   upstream's `targets_file`.
//! * ```` ```toml cargo ````: a plugin's `Cargo.toml`. It must be TOML and
//!   list, in `[dependencies]` or `[dev-dependencies]`, every crate the Rust
//!   examples of the plugin guide (`docs/src/plugins/writing.md`) use
//!   besides the SDK. (Those examples are doc tests of `weir-plugin-sdk`.)
//! * ```` ```toml invalid ````: an example of a mistake. The check above
//!   must **fail** for it. This is the only way for a block to opt out.
//!
//! `docs/src/about.md` describes the same rules for writers.

use std::path::{Path, PathBuf};

use weir_tests::{fixtures, workspace_root};

/// One fenced `toml` block.
struct Block {
    /// The Markdown file, relative to the workspace root.
    file: PathBuf,
    /// Line of the opening fence (1-based).
    line: usize,
    /// The info string's words after `toml` (`invalid`, `cargo`, ...).
    flags: Vec<String>,
    text: String,
}

impl Block {
    fn at(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// The Markdown files whose examples are checked.
fn documents() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = vec![PathBuf::from("README.md")];
    let mut dirs = vec![PathBuf::from("docs/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(root.join(&dir)).expect("read docs/src").flatten() {
            let rel = dir.join(entry.file_name());
            if entry.file_type().expect("file type").is_dir() {
                dirs.push(rel);
            } else if rel.extension().is_some_and(|e| e == "md") {
                files.push(rel);
            }
        }
    }
    for entry in std::fs::read_dir(root.join("plugins")).expect("read plugins/").flatten() {
        let readme = PathBuf::from("plugins").join(entry.file_name()).join("README.md");
        if root.join(&readme).exists() {
            files.push(readme);
        }
    }
    files.sort();
    files
}

/// A fence: its backtick count and info string, if `line` opens or closes one.
fn fence(line: &str) -> Option<(usize, &str)> {
    let trimmed = line.trim_start();
    let ticks = trimmed.bytes().take_while(|&b| b == b'`').count();
    let info = trimmed[ticks..].trim();
    // An info string may not contain backticks (that is inline code).
    (ticks >= 3 && !info.contains('`')).then_some((ticks, info))
}

/// Every fenced block of `file` as (line, info string, lines).
fn fenced_blocks(file: &Path) -> Vec<(usize, String, Vec<String>)> {
    let text = std::fs::read_to_string(workspace_root().join(file))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let mut blocks = Vec::new();
    let mut open: Option<(usize, usize, String, Vec<String>)> = None;
    for (i, line) in text.lines().enumerate() {
        match (&mut open, fence(line)) {
            (None, Some((ticks, info))) => open = Some((i + 1, ticks, info.to_owned(), Vec::new())),
            (Some((_, ticks, _, _)), Some((n, ""))) if n >= *ticks => {
                let (at, _, info, lines) = open.take().expect("open block");
                blocks.push((at, info, lines));
            }
            (Some((_, _, _, lines)), _) => lines.push(line.to_owned()),
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "{}: a fenced block is not closed", file.display());
    blocks
}

/// The `toml` blocks of `file`, with `{{#include FILE}}` lines expanded.
fn toml_blocks(file: &Path) -> Vec<Block> {
    let dir = workspace_root().join(file.parent().unwrap_or(Path::new("")));
    let mut out = Vec::new();
    for (line, info, lines) in fenced_blocks(file) {
        let mut words = info.split([' ', ',']).filter(|w| !w.is_empty());
        if words.next() != Some("toml") {
            continue;
        }
        let flags = words.map(str::to_owned).collect();
        let mut text = String::new();
        for l in lines {
            match l.trim().strip_prefix("{{#include ").and_then(|r| r.strip_suffix("}}")) {
                Some(inc) => {
                    let path = dir.join(inc.trim());
                    let included = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                        panic!("{}:{line}: cannot include {}: {e}", file.display(), path.display())
                    });
                    text.push_str(&included);
                }
                None => {
                    text.push_str(&l);
                    text.push('\n');
                }
            }
        }
        out.push(Block { file: file.to_owned(), line, flags, text });
    }
    out
}

// ---- TOML through weir's own types ----------------------------------------
//
// This crate has no direct `toml` dependency: the TOML table type is the one
// weir's schema uses for a plugin's `config` (`toml::Table`), reached through
// that field. Tables are edited as JSON (`serde_json`, with its key order).

/// `text.parse()` into the type of `field`'s value.
fn parse_like<T, F>(_field: F, text: &str) -> Result<T, String>
where
    F: Fn(&weir_config::PluginConfig) -> Option<&T>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    text.parse::<T>().map_err(|e| e.to_string())
}

/// `value`, typed like `_like`.
fn typed_like<T>(_like: &T, value: T) -> T {
    value
}

/// A TOML document as a JSON object.
fn toml_to_json(text: &str) -> Result<serde_json::Value, String> {
    let table = parse_like(|p: &weir_config::PluginConfig| p.config.as_ref().map(|c| c.get_ref()), text)?;
    serde_json::to_value(&table).map_err(|e| e.to_string())
}

/// A JSON object as a TOML document.
fn json_to_toml(value: &serde_json::Value) -> String {
    let empty = parse_like(|p: &weir_config::PluginConfig| p.config.as_ref().map(|c| c.get_ref()), "")
        .expect("an empty document is TOML");
    let table = typed_like(&empty, serde_json::from_value(value.clone()).expect("a JSON object is a TOML table"));
    table.to_string()
}

/// Merge `from` into `into`: tables key by key, arrays (of tables: `[[routes]]`)
/// appended, anything else replaced.
fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (serde_json::Value::Array(a), serde_json::Value::Array(b)) => a.extend(b),
        (slot, v) => *slot = v,
    }
}

// ---- the checks -------------------------------------------------------------

/// Where the built plugins are, as a `plugins_dir` value.
fn plugins_dir() -> String {
    fixtures().to_str().expect("a UTF-8 path").to_owned()
}

/// Modules in examples that stand for the reader's own plugin: a fragment
/// naming one is parsed, but that plugin is not loaded.
const EXAMPLE_MODULES: &[&str] = &["my_plugin.wasm"];

/// Whether a parsed block is a whole config rather than a fragment.
fn is_whole(doc: &serde_json::Value) -> bool {
    doc.pointer("/server/listen").is_some()
}

/// The base every fragment is merged into.
fn base() -> serde_json::Value {
    serde_json::json!({
        "server": { "listen": "127.0.0.1:0", "plugins_dir": plugins_dir() },
        "runtime": { "max_instances": 64 },
    })
}

/// The module a `[plugins.NAME]` without `module` stands for: the plugin
/// whose README the block is in.
fn module_of(file: &Path) -> Option<String> {
    let mut parts = file.iter().map(|p| p.to_str().unwrap_or_default());
    match (parts.next(), parts.next(), parts.next()) {
        (Some("plugins"), Some(crate_dir), Some("README.md")) => Some(format!("{}.wasm", crate_dir.replace('-', "_"))),
        _ => None,
    }
}

/// Parse `config` as a `gateway.toml` with weir's parser.
fn parse(config: &serde_json::Value) -> Result<(), String> {
    let text = json_to_toml(config);
    weir_config::Source::from_text("gateway.toml", text.clone())
        .parse()
        .map(drop)
        .map_err(|e| format!("{e}\n--- as parsed:\n{text}"))
}

/// Load `config` as `weir check` does, from a file in `dir`.
async fn load(config: &serde_json::Value, dir: &Path) -> Result<(), String> {
    let text = json_to_toml(config);
    let path = dir.join("gateway.toml");
    std::fs::write(&path, &text).expect("write config");
    match weir::Gateway::load(&path).await {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{e}\n--- as loaded:\n{text}")),
    }
}

/// Check a whole config or a fragment; `Err` says why it is wrong.
async fn check_config(block: &Block) -> Result<(), String> {
    let mut doc = toml_to_json(&block.text)?;
    let dir = tempfile::tempdir().expect("tempdir");
    if is_whole(&doc) {
        // A whole config: loaded as `weir check` would.
        doc["server"]["plugins_dir"] = plugins_dir().into();
        if doc.pointer("/runtime/max_instances").is_none() {
            merge(&mut doc, serde_json::json!({ "runtime": { "max_instances": 64 } }));
        }
        if let Some(target) = doc.pointer_mut("/access_log/target")
            && !matches!(target.as_str(), Some("stdout" | "stderr"))
        {
            *target = dir.path().join("access.log").to_str().expect("UTF-8").into();
        }
        return load(&doc, dir.path()).await;
    }
    // A fragment: merged into the base and parsed.
    if let Some(plugins) = doc.get_mut("plugins").and_then(|p| p.as_object_mut()) {
        for (name, plugin) in plugins.iter_mut() {
            if plugin.get("module").is_none() {
                let module = module_of(&block.file)
                    .ok_or_else(|| format!("[plugins.{name}] has no `module`, and none can be inferred here"))?;
                plugin["module"] = module.into();
            }
        }
    }
    let mut config = base();
    merge(&mut config, doc.clone());
    parse(&config)?;
    // Its plugin instances, loaded: each plugin checks its own `config`.
    let mut plugins = doc.get("plugins").cloned().unwrap_or_default();
    if let Some(plugins) = plugins.as_object_mut() {
        // A canary's module counts too.
        let example =
            |m: &serde_json::Value| m.as_str().is_some_and(|m| EXAMPLE_MODULES.contains(&m) || m.starts_with("oci://"));
        plugins.retain(|_, p| !example(&p["module"]) && !example(&p["canary"]["module"]));
        if !plugins.is_empty() {
            // The upstreams their `outbound` lists name, so those load too
            // (as stand-ins: nothing is sent at load).
            let mut upstreams = serde_json::Map::new();
            for name in plugins.values().filter_map(|p| p["outbound"].as_array()).flatten() {
                if let Some(name) = name.as_str() {
                    upstreams.insert(name.to_owned(), serde_json::json!({ "targets": ["127.0.0.1:9"] }));
                }
            }
            let mut only_plugins = base();
            merge(&mut only_plugins, serde_json::json!({ "plugins": plugins, "upstreams": upstreams }));
            load(&only_plugins, dir.path()).await?;
        }
    }
    Ok(())
}

/// A targets file, loaded as an upstream's `targets_file`.
async fn check_targets_file(block: &Block) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("workers.toml"), &block.text).expect("write targets file");
    let mut config = base();
    merge(&mut config, serde_json::json!({ "upstreams": { "workers": { "targets_file": "workers.toml" } } }));
    load(&config, dir.path()).await
}

/// Crates the Rust examples of the plugin guide use besides the SDK.
fn crates_used_by_the_guide() -> Vec<&'static str> {
    let guide = PathBuf::from("docs/src/plugins/writing.md");
    let rust: Vec<String> = fenced_blocks(&guide)
        .into_iter()
        .filter(|(_, info, _)| info.split([' ', ',']).next() == Some("rust"))
        .map(|(_, _, lines)| lines.join("\n"))
        .collect();
    assert!(!rust.is_empty(), "the plugin guide has Rust examples");
    let mut used = Vec::new();
    for krate in ["serde", "serde_json", "http"] {
        let path = format!("{krate}::");
        let uses = rust.iter().any(|block| {
            // `http` through the SDK's re-export is not a dependency.
            let reexported = krate == "http"
                && (block.contains("weir_plugin_sdk::http") || block.contains("weir_plugin_sdk::{http"));
            let named = block.match_indices(&path).any(|(i, _)| {
                let before = block[..i].chars().next_back();
                !before.is_some_and(|c| c == ':' || c == '_' || c.is_alphanumeric())
            });
            named && !reexported
        });
        if uses {
            used.push(krate);
        }
    }
    used
}

/// A plugin's `Cargo.toml`: TOML, with the SDK and every crate the guide uses.
fn check_cargo(block: &Block) -> Result<(), String> {
    let manifest = toml_to_json(&block.text)?;
    let listed = |krate: &str| {
        ["dependencies", "dev-dependencies"].iter().any(|t| manifest.get(*t).and_then(|d| d.get(krate)).is_some())
    };
    let mut missing: Vec<&str> = crates_used_by_the_guide().into_iter().filter(|k| !listed(k)).collect();
    if !listed("weir-plugin-sdk") {
        missing.push("weir-plugin-sdk");
    }
    if missing.is_empty() { Ok(()) } else { Err(format!("the Rust examples use crates it does not list: {missing:?}")) }
}

async fn check(block: &Block) -> Result<(), String> {
    if block.has("cargo") {
        check_cargo(block)
    } else if block.has("targets-file") {
        check_targets_file(block).await
    } else {
        check_config(block).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_toml_example_in_the_docs_is_a_valid_config() {
    let mut failures = Vec::new();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for file in documents() {
        for block in toml_blocks(&file) {
            let kind = if block.has("invalid") {
                "invalid"
            } else if block.has("cargo") {
                "cargo"
            } else if block.has("targets-file") {
                "targets-file"
            } else if toml_to_json(&block.text).is_ok_and(|d| is_whole(&d)) {
                "whole"
            } else {
                "fragment"
            };
            *counts.entry(kind).or_default() += 1;
            match (check(&block).await, block.has("invalid")) {
                (Ok(()), false) | (Err(_), true) => {}
                (Err(e), false) => failures.push(format!("{}: {e}", block.at())),
                (Ok(()), true) => failures.push(format!("{}: marked `invalid`, but it is accepted", block.at())),
            }
        }
    }
    eprintln!("toml blocks checked: {counts:?}");
    assert!(failures.is_empty(), "{} example(s) in the docs are wrong:\n\n{}", failures.len(), failures.join("\n\n"));
    // The book and README have examples of each kind; a parser change that
    // stopped finding them would otherwise pass quietly.
    for kind in ["whole", "fragment", "cargo", "targets-file", "invalid"] {
        assert!(counts.get(kind).is_some_and(|&n| n > 0), "no `{kind}` block found: {counts:?}");
    }
}

#[test]
fn fences_and_includes_are_read_as_mdbook_reads_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("inc.toml"), "[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n").expect("write");
    std::fs::write(
        dir.path().join("doc.md"),
        "text ```` ```toml ```` inline\n\n```toml invalid\n[nope]\n```\n\n```rust\nfn main() {}\n```\n\n\
         ````toml\n```\n{{#include inc.toml}}\n````\n",
    )
    .expect("write");
    // An absolute path is read as it is (documents() gives relative ones).
    let blocks = toml_blocks(&dir.path().join("doc.md"));
    assert_eq!(blocks.len(), 2);
    assert!(blocks[0].has("invalid") && blocks[0].line == 3, "{:?}", blocks[0].flags);
    assert_eq!(blocks[1].text, "```\n[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n");
}
