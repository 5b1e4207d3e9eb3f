//! Golden tests of the schema: bad input → the exact message and line.

use super::*;

fn parse(text: &str) -> Result<GatewayConfig, LoadErrors> {
    Source::from_text("gateway.toml", text).parse()
}

fn err(text: &str) -> String {
    parse(text).expect_err("must be rejected").to_string()
}

const MINIMAL: &str = "[server]\nlisten = \"127.0.0.1:8080\"\n";

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.server.plugins_dir, PathBuf::from("plugins"));
    assert!(c.server.admin_listen.is_none());
    assert_eq!(c.runtime.max_instances, 1000);
    assert!(c.routes.is_empty());
}

#[test]
fn full_example_parses() {
    let text = r#"
[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9901"
plugins_dir = "plugins"

[upstreams.users]
targets = ["127.0.0.1:9001", "127.0.0.1:9002"]

[plugins.greet]
module = "add_header.wasm"
config = { name = "x-greeting", value = "hello" }
failure = "closed"
limits = { memory = "16MiB", deadline = "50ms" }

[[routes]]
name = "users"
host = "api.example.com"
path_prefix = "/users"
methods = ["GET", "POST"]
upstream = "users"
chain = ["greet"]
"#;
    let c = parse(text).expect("valid");
    let greet = c.plugins["greet"].get_ref();
    assert_eq!(greet.limits.memory, 16 << 20);
    assert_eq!(greet.limits.deadline, Duration::from_millis(50));
    assert_eq!(greet.failure, FailurePolicy::Closed);
    assert_eq!(c.routes[0].get_ref().chain[0].get_ref(), "greet");
}

#[test]
fn unknown_key_names_line_and_key() {
    let e = err("[server]\nlisten = \"127.0.0.1:8080\"\nlisen = 1\n");
    assert!(e.starts_with("gateway.toml:3: unknown field `lisen`"), "{e}");
}

#[test]
fn syntax_error_has_line() {
    let e = err("[server]\nlisten = \"127.0.0.1:8080\n");
    assert!(e.starts_with("gateway.toml:2:"), "{e}");
}

#[test]
fn bad_values_are_explained() {
    let e = err(&format!("{MINIMAL}[plugins.p]\nmodule = \"a.wasm\"\nlimits = {{ memory = \"16 parsecs\" }}\n"));
    assert!(e.contains("gateway.toml:5:") && e.contains("invalid size \"16 parsecs\""), "{e}");
    let e = err(&format!("{MINIMAL}[plugins.p]\nmodule = \"a.wasm\"\nlimits = {{ deadline = \"soon\" }}\n"));
    assert!(e.contains("invalid duration \"soon\""), "{e}");
    let e = err(&format!("{MINIMAL}[plugins.p]\nmodule = \"a.wasm\"\nfailure = \"sideways\"\n"));
    assert!(e.contains("gateway.toml:5:") && e.contains("unknown variant `sideways`"), "{e}");
    let e = err("[server]\nlisten = \"localhost\"\n");
    assert!(e.contains("gateway.toml:2:") && e.contains("invalid socket address"), "{e}");
}

#[test]
fn byte_sizes() {
    assert_eq!(parse_byte_size("16MiB"), Some(16 << 20));
    assert_eq!(parse_byte_size("1GB"), Some(1_000_000_000));
    assert_eq!(parse_byte_size("512"), Some(512));
    assert_eq!(parse_byte_size("12 KiB"), Some(12 << 10));
    assert_eq!(parse_byte_size("MiB"), None);
    assert_eq!(parse_byte_size("99999999999999999999GiB"), None);
}

#[test]
fn compile_cache_takes_a_bool_or_a_folder() {
    let base = Path::new("/etc/weir");
    assert_eq!(parse(MINIMAL).expect("valid").runtime.compile_cache, CompileCache::Default(true));
    let off = parse(&format!("{MINIMAL}[runtime]\ncompile_cache = false\n")).expect("valid");
    assert_eq!(off.runtime.compile_cache.dir(base), None);
    let dir = parse(&format!("{MINIMAL}[runtime]\ncompile_cache = \"cache\"\n")).expect("valid");
    assert_eq!(dir.runtime.compile_cache.dir(base), Some(PathBuf::from("/etc/weir/cache")));
    assert!(err(&format!("{MINIMAL}[runtime]\ncompile_cache = 3\n")).contains("gateway.toml:4"));
}
