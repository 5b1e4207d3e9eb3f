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

const ROUTE: &str = "[[routes]]\nname = \"shop\"\npath_prefix = \"/\"\nupstream = \"shop\"\n";

#[test]
fn grpc_transcode_takes_its_keys_and_defaults() {
    let c = parse(&format!(
        "{MINIMAL}{ROUTE}grpc_transcode = {{ descriptors = \"protos/shop.pb\", services = [\"shop.v1.Orders\"], \
         emit_defaults = true, max_descriptor_size = \"1MiB\" }}\ngrpc_web = true\n"
    ))
    .expect("valid");
    let r = c.routes[0].get_ref();
    let t = r.grpc_transcode.as_ref().expect("set").get_ref();
    assert_eq!(t.descriptors, PathBuf::from("protos/shop.pb"));
    assert_eq!(t.services, ["shop.v1.Orders"]);
    assert!(t.emit_defaults && !t.preserve_proto_field_names && !t.ignore_unknown_fields);
    assert_eq!(t.max_descriptor_size, 1 << 20);
    assert_eq!(r.grpc_web, Some(GrpcWebConfig::default()));
    assert!(t.check().is_ok());

    let plain = parse(&format!("{MINIMAL}{ROUTE}")).expect("valid");
    assert!(plain.routes[0].get_ref().grpc_transcode.is_none() && plain.routes[0].get_ref().grpc_web.is_none());
    let off = parse(&format!("{MINIMAL}{ROUTE}grpc_web = false\n")).expect("valid");
    assert_eq!(off.routes[0].get_ref().grpc_web, None);
}

#[test]
fn grpc_web_takes_cors_settings() {
    let c = parse(&format!(
        "{MINIMAL}{ROUTE}grpc_web = {{ cors = {{ allow_origins = [\"https://app.example.com\"], max_age = \"10m\", \
         expose_headers = [\"x-trace\"] }} }}\n"
    ))
    .expect("valid");
    let cors = c.routes[0].get_ref().grpc_web.clone().and_then(|w| w.cors).expect("cors");
    assert_eq!(cors.allow_origins, ["https://app.example.com"]);
    assert_eq!(cors.max_age, Some(Duration::from_secs(600)));
    assert_eq!(cors.allow_headers, None);
    assert_eq!(cors.expose_headers, ["x-trace"]);
    assert!(cors.check().is_ok());
}

#[test]
fn bad_translation_settings_are_explained() {
    let e = err(&format!(
        "{MINIMAL}{ROUTE}grpc_transcode = {{ descriptors = \"a.pb\", services = [\"a.B\"], emit_default = true }}\n"
    ));
    assert!(e.starts_with("gateway.toml:7:") && e.contains("unknown field `emit_default`"), "{e}");
    let e = err(&format!("{MINIMAL}{ROUTE}grpc_transcode = {{ services = [\"a.B\"] }}\n"));
    assert!(e.starts_with("gateway.toml:7:") && e.contains("missing field `descriptors`"), "{e}");
    let e = err(&format!(
        "{MINIMAL}{ROUTE}grpc_transcode = {{ descriptors = \"a.pb\", services = [\"a.B\"], max_descriptor_size = \"big\" }}\n"
    ));
    assert!(e.contains("invalid size \"big\""), "{e}");
    let e = err(&format!("{MINIMAL}{ROUTE}grpc_web = 3\n"));
    assert!(e.starts_with("gateway.toml:7:") && e.contains("expected true, false or a table"), "{e}");
    let e = err(&format!("{MINIMAL}{ROUTE}grpc_web = {{ cors = {{ allow_origin = [\"*\"] }} }}\n"));
    assert!(e.starts_with("gateway.toml:7:") && e.contains("unknown field `allow_origin`"), "{e}");

    // Settings that parse but do not go together.
    let check = |text: &str| {
        let c = parse(&format!("{MINIMAL}{ROUTE}{text}\n")).expect("parses");
        let r = c.routes[0].get_ref();
        let t = r.grpc_transcode.as_ref().map(|t| t.get_ref().check());
        let w = r.grpc_web.as_ref().and_then(|w| w.cors.as_ref()).map(CorsConfig::check);
        t.or(w).expect("one set").expect_err("must be refused")
    };
    assert_eq!(
        check("grpc_transcode = { descriptors = \"a.pb\", services = [] }"),
        "grpc_transcode: `services` must name at least one service, such as \"package.Service\""
    );
    assert_eq!(
        check("grpc_web = { cors = { allow_origins = [] } }"),
        "grpc_web.cors: `allow_origins` must name at least one origin, or \"*\""
    );
    assert_eq!(
        check("grpc_web = { cors = { allow_origins = [\"*\"], allow_credentials = true } }"),
        "grpc_web.cors: `allow_credentials` cannot go with the \"*\" origin: browsers refuse it"
    );
    assert_eq!(
        check("grpc_web = { cors = { allow_origins = [\"app.example.com\"] } }"),
        "grpc_web.cors: origin \"app.example.com\" must be \"scheme://host[:port]\" or \"*\""
    );
}
