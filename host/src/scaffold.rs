//! `weir plugin new`: a plugin crate of its own, outside any weir checkout,
//! from a template — a working plugin with native tests, a README, the
//! build command for `wasm32-wasip2` and a `gateway.toml` snippet.
//!
//! The templates (`host/templates/plugin/*.rs`) are compiled and tested by
//! the test suite through this command (`tests/it/scaffold.rs`).

use std::path::{Path, PathBuf};

/// What `weir plugin new` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    /// Edit request and response heads.
    Headers,
    /// Check an API key; 401 without one, 403 for an unknown one; publish
    /// the client for later plugins.
    Auth,
    /// Check a buffered JSON body, then edit the request head.
    Body,
}

impl Template {
    fn source(self) -> &'static str {
        match self {
            Template::Headers => include_str!("../templates/plugin/headers.rs"),
            Template::Auth => include_str!("../templates/plugin/auth.rs"),
            Template::Body => include_str!("../templates/plugin/body.rs"),
        }
    }

    fn config(self) -> &'static str {
        match self {
            Template::Headers => r#"{ header = "x-hello", value = "world" }"#,
            Template::Auth => r#"{ keys = { "k-123" = "alice" } }"#,
            Template::Body => r#"{ field = "id" }"#,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Template::Headers => "headers",
            Template::Auth => "auth",
            Template::Body => "body",
        }
    }
}

/// Why a plugin crate was not written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// Not a crate name.
    #[error("{0:?} is not a plugin name: use lowercase letters, digits, `-` and `_`, starting with a letter")]
    Name(String),
    /// The folder exists and is not empty.
    #[error("{} already exists and is not empty", .0.display())]
    Exists(PathBuf),
    /// `--sdk` is not the SDK.
    #[error("--sdk {}: no weir-plugin-sdk crate there (its Cargo.toml)", .0.display())]
    Sdk(PathBuf),
    /// Writing failed.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The SDK version the scaffold depends on by default: the contract this
/// gateway speaks (the SDK's version is its contract's).
pub fn sdk_version() -> &'static str {
    include_str!("../../wit/plugin.wit")
        .lines()
        .find_map(|l| l.trim().strip_prefix("package weir:plugin@"))
        .map_or("0.2", |v| v.trim_end_matches(';'))
}

/// A scaffolded crate.
#[derive(Debug)]
pub struct Scaffolded {
    /// Its folder.
    pub dir: PathBuf,
    /// The module file its build produces, e.g. `my_plugin.wasm`.
    pub module: String,
}

/// Write plugin crate `name` from `template` into `parent/name`, depending
/// on the SDK at `sdk` (a path) or else on the registry's version.
pub fn new_plugin(
    name: &str,
    template: Template,
    parent: &Path,
    sdk: Option<&Path>,
) -> Result<Scaffolded, ScaffoldError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64;
    if !valid {
        return Err(ScaffoldError::Name(name.to_owned()));
    }
    let dir = parent.join(name);
    if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(ScaffoldError::Exists(dir));
    }
    let sdk_dep = match sdk {
        Some(path) => {
            let path = std::fs::canonicalize(path).map_err(|_| ScaffoldError::Sdk(path.to_owned()))?;
            let manifest = std::fs::read_to_string(path.join("Cargo.toml")).unwrap_or_default();
            if !manifest.contains("name = \"weir-plugin-sdk\"") {
                return Err(ScaffoldError::Sdk(path));
            }
            format!("{{ path = {:?} }}", path.display().to_string())
        }
        None => format!("\"{}\"", sdk_version()),
    };
    let module = format!("{}.wasm", name.replace('-', "_"));
    let fill = |text: &str| text.replace("__NAME__", name).replace("__MODULE__", &module);
    let files: [(&str, String); 6] = [
        ("Cargo.toml", cargo_toml(name, &sdk_dep)),
        (".cargo/config.toml", CARGO_CONFIG.to_owned()),
        (".gitignore", "/target\n".to_owned()),
        ("src/lib.rs", fill(template.source())),
        ("gateway.snippet.toml", fill(&snippet(template))),
        ("README.md", fill(&readme(template))),
    ];
    for (file, text) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ScaffoldError::Write { path: parent.to_owned(), source: e })?;
        }
        std::fs::write(&path, text).map_err(|e| ScaffoldError::Write { path, source: e })?;
    }
    Ok(Scaffolded { dir, module })
}

fn cargo_toml(name: &str, sdk: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
# cdylib: the .wasm the gateway loads; rlib: `cargo test` runs it natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
weir-plugin-sdk = {sdk}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"
# The JSON Schema of the `config` table (`Plugin::config_schema`), derived
# from the struct it is parsed into.
schemars = "1"

# Small modules: they are compiled once by the gateway, but read, hashed and
# kept by it (and by a registry) on every change.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true

# A crate of its own, even when created inside another workspace.
[workspace]
"#
    )
}

const CARGO_CONFIG: &str = r#"# `cargo wasm`: the plugin as the gateway loads it, in
# target/wasm32-wasip2/release/ (`rustup target add wasm32-wasip2` once).
# `cargo test` stays native: the SDK's harness runs the plugin in-process.
[alias]
wasm = "build --release --target wasm32-wasip2"
"#;

fn snippet(t: Template) -> String {
    format!(
        r#"# Add to gateway.toml; copy __MODULE__ into the gateway's plugins_dir.
# The gateway picks up both changes live.
[plugins.__NAME__]
module = "__MODULE__"
config = {}

[[routes]]
name = "__NAME__-demo"
path_prefix = "/"
upstream = "backend"
chain = ["__NAME__"]
"#,
        t.config()
    )
}

fn readme(t: Template) -> String {
    format!(
        r#"# __NAME__

A [weir](https://example.invalid/weir) gateway plugin, from the `{}`
template of `weir plugin new`. What it does is said at the top of
`src/lib.rs`.

```sh
cargo test                     # the plugin's tests, natively (the SDK's harness)
cargo wasm                     # → target/wasm32-wasip2/release/__MODULE__
cp target/wasm32-wasip2/release/__MODULE__ <plugins_dir>/
weir check --config gateway.toml
```

`gateway.snippet.toml` names the plugin and puts it in a route's chain.
The gateway reloads live when the module or the config changes; the
plugin's calls, errors and latency are in `/admin/plugins` and on the
dashboard. The API reference is the `weir-plugin-sdk` rustdoc
(`cargo doc --open`); the guide is the book's "Writing plugins" chapter.
"#,
        t.name()
    )
}

/// What to do next, printed after scaffolding.
pub fn next_steps(s: &Scaffolded, shown_dir: &Path) -> String {
    format!(
        "created {dir}\n\nnext:\n  cd {dir}\n  cargo test          # the plugin's tests, natively\n  cargo wasm          # builds target/wasm32-wasip2/release/{m}\n  cp target/wasm32-wasip2/release/{m} <plugins_dir>/\n  then add gateway.snippet.toml to your gateway.toml (picked up live)\n\nlater:\n  weir plugin schema target/wasm32-wasip2/release/{m}   # its config schema\n  weir check --config gateway.toml                     # config checked against it\n  weir plugin replay REC.json --config gateway.toml    # a recorded failure, again\n",
        dir = shown_dir.display(),
        m = s.module
    )
}
