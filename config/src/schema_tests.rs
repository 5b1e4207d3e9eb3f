//! The JSON Schema of `gateway.toml` ([`schema`]) against the parser: the
//! configs the parser accepts (the demo's, one with every section, the
//! book's) are valid, mistakes are refused at the key that is wrong, and
//! durations, sizes and addresses are read alike by both.

use std::net::SocketAddr;

use serde_json::{Value, json};

use super::*;

/// A validator of the schema, checked against the 2020-12 meta-schema.
fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema()).expect("the schema is a valid 2020-12 schema")
}

/// TOML text as the JSON document editors validate: `toml::Value`, through
/// serde.
fn toml_to_json(text: &str) -> Value {
    let value: toml::Value = toml::from_str(text).unwrap_or_else(|e| panic!("not TOML: {e}\n{text}"));
    serde_json::to_value(value).expect("TOML is JSON")
}

/// Every violation, as (instance path, message).
fn violations(validator: &jsonschema::Validator, doc: &Value) -> Vec<(String, String)> {
    validator.iter_errors(doc).map(|e| (e.instance_path().to_string(), e.to_string())).collect()
}

/// The schema must accept `text`, and so must the parser.
fn assert_valid(validator: &jsonschema::Validator, at: &str, text: &str) {
    let found = violations(validator, &toml_to_json(text));
    assert!(found.is_empty(), "{at}: the schema refuses it: {found:#?}\n{text}");
    if let Err(e) = Source::from_text("gateway.toml", text).parse() {
        panic!("{at}: the parser refuses it: {e}\n{text}");
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate is in the workspace").to_owned()
}

const MINIMAL: &str = "[server]\nlisten = \"127.0.0.1:8080\"\n";

#[test]
fn the_schema_is_a_titled_2020_12_document() {
    let s = schema();
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(s["title"], "weir gateway.toml");
    assert!(s.get("$id").is_none(), "no $id: the file is saved and named locally");
    assert!(jsonschema::meta::is_valid(&s));
    assert_eq!(s["required"], json!(["server"]));
    for section in ["server", "runtime", "state", "events", "access_log", "limits", "tracing"] {
        assert!(s["properties"][section]["description"].is_string(), "[{section}] has no description");
    }
    let text = serde_json::to_string(&s).expect("JSON");
    // TOML has no null, and schemars' integer formats mean nothing to editors.
    assert!(!text.contains("\"null\""), "null is allowed somewhere");
    fn formats(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(f)) = o.get("format") {
                    out.push(f.clone());
                }
                o.values().for_each(|v| formats(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| formats(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    formats(&s, &mut found);
    assert!(found.is_empty(), "formats left: {found:?}");
    // Every duration is the string schema, never `std::time::Duration`'s `{secs, nanos}`.
    assert!(!text.contains("\"secs\""), "a Duration field lacks #[schemars(with = \"DurationString\")]");
    assert_eq!(s["$defs"]["Duration"]["type"], "string");
    assert_eq!(s["$defs"]["ByteSize"]["type"], "string");
}

/// Every object schema with `properties` refuses other keys, as
/// `deny_unknown_fields` does; the one exception is a weighted target
/// (`{ address, weight }`), a struct variant of an untagged enum that
/// serde reads without that check.
#[test]
fn every_table_is_closed_as_the_parser_is() {
    fn walk(at: &str, v: &Value, open: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if o.contains_key("properties") && o.get("additionalProperties") != Some(&json!(false)) {
                    open.push(at.to_owned());
                }
                for (k, v) in o {
                    walk(&format!("{at}/{k}"), v, open);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(&format!("{at}/{i}"), v, open);
                }
            }
            _ => {}
        }
    }
    let mut open = Vec::new();
    walk("", &schema(), &mut open);
    assert_eq!(open, ["/$defs/TargetConfig/anyOf/1"]);
    // That is what the parser does with an unknown key there.
    let text = format!("{MINIMAL}[upstreams.u]\ntargets = [{{ address = \"127.0.0.1:1\", wieght = 2 }}]\n");
    assert_valid(&validator(), "weighted target", &text);
}

#[test]
fn the_demo_config_is_valid() {
    let path = workspace_root().join("examples/gateway.toml");
    let text = std::fs::read_to_string(&path).expect("read examples/gateway.toml");
    assert_valid(&validator(), "examples/gateway.toml", &text);
}

/// Every section and the main nested tables, from the book's examples.
const EVERY_SECTION: &str = r#"
[server]
listen = "0.0.0.0:8080"
admin_listen = "127.0.0.1:9901"
admin_token = "s3cret"
plugins_dir = "plugins"
watch = false
header_read_timeout = "5s"
drain_timeout = "1m"
max_connections = 20000
max_connections_per_ip = 256
max_buffered_body = "2MiB"
state_dir = "/var/lib/weir"

[server.tls]
listen = "[::]:8443"
certificates = [
  { cert = "certs/api.pem", key = "certs/api-key.pem" },
  { cert = "certs/wild.pem", key = "certs/wild-key.pem" },
]
min_version = "1.3"
alpn = ["h2", "http/1.1"]
client_ca = "certs/clients-ca.pem"
client_auth = "optional"
forward_client_cert = true
handshake_timeout = "10s"

[runtime]
max_instances = 200
max_memory = "512MiB"
max_idle_per_plugin = 16
compile_cache = "cache"
max_module_size = "32MiB"

[state]
backend = "redis"
url = "redis://127.0.0.1:6379"
key_prefix = "edge:"
timeout = "50ms"
retry_interval = "1s"
max_entries = 100000

[events]
webhook = "http://127.0.0.1:9003/weir-events"
min_severity = "critical"
timeout = "2s"
queue = 512

[access_log]
enabled = true
target = "logs/access.log"
format = "logfmt"
sample = 0.1
query = true

[limits]
max_request_body = "10MB"
max_header_count = 64
max_header_bytes = "32KiB"
max_uri_bytes = "4KiB"
request_buffer = "128KiB"
max_response_header_bytes = "64KiB"

[recorder]
enabled = true
dir = "recordings"
max_recordings = 500
max_body = "16KiB"
on = ["trap", "deadline", "error", "5xx"]
redact = true
redact_headers = ["x-api-key"]

[tracing]
otlp_endpoint = "http://127.0.0.1:4318/v1/traces"
sample = 0.05
service_name = "edge"
batch = 256
queue = 2048
interval = "500ms"
timeout = "5s"

[upstreams.users]
targets = [{ address = "10.0.0.1:8080", weight = 3 }, "10.0.0.2:8080"]
backup = ["10.9.0.1:8080"]
dns_refresh = "10s"
dns_family = "ipv4"
balance = "hash"
hash_on = "cookie:session"
connect_timeout = "1s"
timeout = "10s"
total_timeout = "5s"
retry = { tries = 3, on = ["connect", "timeout", "reset"], statuses = [502, 503], backoff = "25ms", max_backoff = "250ms", budget = 0.2, min_concurrent = 3 }
health = { path = "/healthz", interval = "2s", timeout = "500ms", healthy_threshold = 2, unhealthy_threshold = 3, host = "users.internal" }
outlier = { enabled = true, consecutive_failures = 5, base_ejection = "10s", max_ejection = "300s", max_ejected_percent = 50 }
protocol = "h1"
tls = { ca = "certs/internal-ca.pem", server_name = "api.internal", cert = "certs/gw.pem", key = "certs/gw-key.pem" }

[upstreams.users.breaker]
max_requests = 200
max_pending = 50
max_connections = 64
error_rate = 0.5
min_requests = 20
window = "10s"
open_for = "5s"
probes = 3

[upstreams.users.pool]
max_idle = 64
idle_timeout = "30s"
max_age = "10m"

[upstreams.search]
targets = ["search.internal:9000"]
balance = "least_outstanding"
protocol = "h2"
tls = true

[upstreams.workers]
targets_file = "workers.json"

[plugins.auth]
module = "auth.wasm"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
failure = "open"
isolation = "request"
outbound = ["users"]
limits = { memory = "16MiB", deadline = "50ms", outbound_body = "256KiB", outbound_calls = 4 }
crash_loop = { after = 3, backoff = "2s", max_backoff = "1m" }
[plugins.auth.config]
realm = "orders"
strip_credential = true
[plugins.auth.config.jwt]
keys = [{ kid = "demo", secret = "weir-demo-secret-of-at-least-32-bytes!", algs = ["HS256"] }]

[plugins.greet]
module = "add_header.wasm"
config = { name = "x-greeting", value = "hello" }

[[routes]]
name = "users"
host = "*.example.com"
path_prefix = "/users"
methods = ["GET", "POST"]
kind = "proxy"
upstream = "users"
chain = ["auth", "greet"]
websocket = false
websocket_idle_timeout = "60s"
grpc_transcode = { descriptors = "protos/shop.pb", services = ["shop.v1.Orders"], emit_defaults = true, preserve_proto_field_names = false, ignore_unknown_fields = false, ignore_unknown_query_parameters = false, max_descriptor_size = "16MiB" }
grpc_web = { cors = { allow_origins = ["https://app.example.com"], allow_headers = ["content-type", "x-grpc-web"], expose_headers = ["x-trace"], max_age = "10m", allow_credentials = true } }

[routes.cache]
max_size = "256MiB"
max_entry = "2MiB"
default_ttl = "0s"
stale_if_error = "10m"

[[routes]]
name = "warehouse"
kind = "aggregate"
path = "/warehouse/{id}"
methods = ["GET"]
chain = ["auth"]
forward_headers = ["x-tenant"]
merge = "deep"

[[routes.parts]]
name = "stock"
upstream = "users"
path = "/stock/{path.id}"
required = true

[[routes.parts]]
name = "price"
upstream = "search"
method = "POST"
path = "/price/{path.id}?currency={query.currency}"
headers = { "x-tenant" = "{header.x-tenant}" }
timeout = "300ms"
cache = { stale_if_error = "10m" }

[[routes]]
name = "summary"
kind = "aggregate"
path = "/summary/{id}"
template = { id = "${path.id}", stock = "${stock.count}", tags = ["a", "${query.tag}"], n = 1 }

[[routes.parts]]
name = "stock"
upstream = "users"
path = "/stock/{path.id}"
"#;

#[test]
fn a_config_with_every_section_is_valid() {
    assert_valid(&validator(), "every section", EVERY_SECTION);
    // Each top-level key the schema knows is in it.
    let doc = toml_to_json(EVERY_SECTION);
    let s = schema();
    let known = s["properties"].as_object().expect("properties");
    for key in known.keys() {
        assert!(doc.get(key).is_some(), "the config lacks [{key}]");
    }
}

// ---- the book's examples ---------------------------------------------------

/// The Markdown files of the book, and README.md.
fn documents() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read docs/src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A fence: its backtick count and info string, if `line` opens or closes one
/// (an info string with a backtick is inline code, not a fence).
fn fence(line: &str) -> Option<(usize, &str)> {
    let trimmed = line.trim_start();
    let ticks = trimmed.bytes().take_while(|&b| b == b'`').count();
    let info = trimmed[ticks..].trim();
    (ticks >= 3 && !info.contains('`')).then_some((ticks, info))
}

/// The ```` ```toml ```` blocks of `file` as (line, info string, text), with
/// `{{#include FILE}}` lines replaced by the file (relative to `file`).
fn toml_blocks(file: &Path) -> Vec<(usize, String, String)> {
    let text = std::fs::read_to_string(file).expect("read a Markdown file");
    let dir = file.parent().expect("a folder");
    let mut blocks = Vec::new();
    // The open block: its line, fence length, info string and text so far.
    let mut open: Option<(usize, usize, String, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match (open.as_mut(), fence(line)) {
            (None, Some((ticks, info))) => open = Some((i + 1, ticks, info.to_owned(), String::new())),
            (None, None) => {}
            (Some((_, ticks, _, _)), Some((n, ""))) if n >= *ticks => {
                let (at, _, info, body) = open.take().expect("open");
                if info.split([' ', ',']).next() == Some("toml") {
                    blocks.push((at, info, body));
                }
            }
            (Some((_, _, _, body)), _) => {
                match line.trim().strip_prefix("{{#include ").and_then(|r| r.strip_suffix("}}")) {
                    Some(inc) => {
                        let path = dir.join(inc.trim());
                        let included = std::fs::read_to_string(&path)
                            .unwrap_or_else(|e| panic!("{}: cannot include {}: {e}", file.display(), path.display()));
                        body.push_str(&included);
                        body.push('\n');
                    }
                    None => {
                        body.push_str(line);
                        body.push('\n');
                    }
                }
            }
        }
    }
    assert!(open.is_none(), "{}: a fenced block is not closed", file.display());
    blocks
}

/// Merge `from` into `into`: tables key by key, arrays appended.
fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => a.extend(b),
        (slot, v) => *slot = v,
    }
}

/// Every whole config in the book (a `toml` block whose `[server]` has
/// `listen`) is valid, and so is every fragment once it is put in a
/// minimal config, as `tests/it/docs.rs` checks them with the parser.
#[test]
fn the_books_examples_are_valid() {
    let validator = validator();
    let (mut whole, mut fragments) = (0, 0);
    for file in documents() {
        for (line, info, text) in toml_blocks(&file) {
            if ["invalid", "cargo", "targets-file"].iter().any(|skip| info.contains(skip)) {
                continue;
            }
            let at = format!("{}:{line}", file.strip_prefix(workspace_root()).unwrap_or(&file).display());
            let mut doc = toml_to_json(&text);
            if doc.pointer("/server/listen").is_some() {
                whole += 1;
                assert_valid(&validator, &at, &text);
                continue;
            }
            fragments += 1;
            // A fragment's `[plugins.NAME]` may leave `module` to the reader.
            if let Some(plugins) = doc.get_mut("plugins").and_then(Value::as_object_mut) {
                for plugin in plugins.values_mut() {
                    if plugin.get("module").is_none() {
                        plugin["module"] = "plugin.wasm".into();
                    }
                }
            }
            let mut config = json!({ "server": { "listen": "127.0.0.1:0" } });
            merge(&mut config, doc);
            let found = violations(&validator, &config);
            assert!(found.is_empty(), "{at}: the schema refuses it: {found:#?}\n{text}");
            let as_toml = toml::to_string(&config).expect("a JSON object is TOML");
            if let Err(e) = Source::from_text("gateway.toml", as_toml.clone()).parse() {
                panic!("{at}: the parser refuses it: {e}\n{as_toml}");
            }
        }
    }
    eprintln!("checked {whole} whole configs and {fragments} fragments");
    assert!(whole >= 2, "only {whole} whole configs found in the book");
    assert!(fragments >= 10, "only {fragments} fragments found in the book");
}

// ---- mistakes ----------------------------------------------------------------

/// `text` is refused by the schema at `path` with a message containing
/// `says`, and (unless `loader_only`) by the parser too.
fn assert_refused(validator: &jsonschema::Validator, text: &str, path: &str, says: &str, loader_only: bool) {
    let found = violations(validator, &toml_to_json(text));
    assert!(
        found.iter().any(|(p, m)| p == path && m.contains(says)),
        "expected a violation at {path} saying {says:?}, got {found:#?}\n{text}"
    );
    if !loader_only {
        assert!(Source::from_text("gateway.toml", text).parse().is_err(), "the parser accepts it:\n{text}");
    }
}

#[test]
fn mistakes_are_refused_at_their_key() {
    let v = validator();
    let upstream = "[upstreams.users]\ntargets = [\"127.0.0.1:9001\"]\n";
    // An unknown key in [server]: the table is at fault, the key is named.
    assert_refused(&v, &format!("{MINIMAL}lisen = 1\n"), "/server", "lisen", false);
    assert_refused(
        &v,
        "[server]\nlisten = \"127.0.0.1:8080\"\nplugin_dir = \"plugins\"\n",
        "/server",
        "plugin_dir",
        false,
    );
    // A wrong type, and an address the parser cannot read.
    assert_refused(&v, "[server]\nlisten = 5\n", "/server/listen", "not of type", false);
    assert_refused(&v, "[server]\nlisten = \"localhost:8080\"\n", "/server/listen", "does not match", false);
    // [server] itself is required; an unknown section is refused.
    assert_refused(&v, "[upstreams.users]\ntargets = [\"127.0.0.1:9001\"]\n", "", "\"server\" is a required", false);
    assert_refused(&v, &format!("{MINIMAL}[upstream.users]\n"), "", "upstream", false);
    // An unknown key in an upstream, and in one of its tables.
    assert_refused(&v, &format!("{MINIMAL}{upstream}tiemout = \"1s\"\n"), "/upstreams/users", "tiemout", false);
    assert_refused(
        &v,
        &format!("{MINIMAL}{upstream}retry = {{ tries = 2, on_status = [502] }}\n"),
        "/upstreams/users/retry",
        "on_status",
        false,
    );
    // Bad durations and sizes.
    assert_refused(
        &v,
        &format!("{MINIMAL}{upstream}timeout = \"soon\"\n"),
        "/upstreams/users/timeout",
        "does not match",
        false,
    );
    assert_refused(&v, &format!("{MINIMAL}{upstream}timeout = 30\n"), "/upstreams/users/timeout", "not of type", false);
    assert_refused(
        &v,
        &format!("{MINIMAL}[limits]\nmax_request_body = \"16 parsecs\"\n"),
        "/limits/max_request_body",
        "does not match",
        false,
    );
    assert_refused(
        &v,
        &format!("{MINIMAL}[limits]\nmax_request_body = 1048576\n"),
        "/limits/max_request_body",
        "not of type",
        false,
    );
    // Unknown enum values.
    assert_refused(
        &v,
        &format!("{MINIMAL}[plugins.p]\nmodule = \"a.wasm\"\nfailure = \"sideways\"\n"),
        "/plugins/p/failure",
        "",
        false,
    );
    assert_refused(&v, &format!("{MINIMAL}{upstream}balance = \"random\"\n"), "/upstreams/users/balance", "", false);
    assert_refused(
        &v,
        &format!("{MINIMAL}{upstream}retry = {{ on = [\"connect\", \"5xx\"] }}\n"),
        "/upstreams/users/retry/on/1",
        "",
        false,
    );
    assert_refused(
        &v,
        &format!("{MINIMAL}[server.tls]\nlisten = \"0.0.0.0:8443\"\ncertificates = []\nmin_version = 1.3\n"),
        "/server/tls/min_version",
        "",
        false,
    );
    // A route and a part: unknown keys, a missing required key.
    assert_refused(
        &v,
        &format!("{MINIMAL}[[routes]]\nname = \"r\"\nupstreams = \"users\"\n"),
        "/routes/0",
        "upstreams",
        false,
    );
    assert_refused(
        &v,
        &format!(
            "{MINIMAL}[[routes]]\nname = \"r\"\nkind = \"aggregate\"\n[[routes.parts]]\nname = \"a\"\nupstream = \"u\"\n"
        ),
        "/routes/0/parts/0",
        "\"path\" is a required",
        false,
    );
    // What `weir check` refuses when it loads the config, said by the schema too.
    assert_refused(
        &v,
        &format!("{MINIMAL}{upstream}retry = {{ tries = 11 }}\n"),
        "/upstreams/users/retry/tries",
        "maximum",
        true,
    );
    assert_refused(
        &v,
        &format!("{MINIMAL}{upstream}breaker = {{ error_rate = 0.0 }}\n"),
        "/upstreams/users/breaker/error_rate",
        "",
        true,
    );
    assert_refused(
        &v,
        &format!("{MINIMAL}{upstream}health = {{ path = \"healthz\" }}\n"),
        "/upstreams/users/health/path",
        "",
        true,
    );
    assert_refused(
        &v,
        &format!("{MINIMAL}[upstreams.u]\ntargets = [{{ address = \"10.0.0.1:80\", weight = 0 }}]\n"),
        "/upstreams/u/targets/0",
        "",
        true,
    );
    assert_refused(
        &v,
        &format!("{MINIMAL}[upstreams.u]\ntargets = [\"10.0.0.1\"]\n"),
        "/upstreams/u/targets/0",
        "",
        true,
    );
    assert_refused(
        &v,
        &format!("{MINIMAL}{upstream}balance = \"hash\"\nhash_on = \"ip\"\n"),
        "/upstreams/users/hash_on",
        "",
        true,
    );
    assert_refused(&v, &format!("{MINIMAL}[plugins.\"my plugin\"]\nmodule = \"a.wasm\"\n"), "/plugins", "", true);
    assert_refused(&v, &format!("{MINIMAL}[access_log]\nsample = 10\n"), "/access_log/sample", "maximum", true);
}

// ---- values read by functions of their own -----------------------------------

/// A validator of one of the schema's `$defs`, alone.
fn def_validator(name: &str) -> jsonschema::Validator {
    let def = schema()["$defs"][name].clone();
    assert!(def.is_object(), "no $defs/{name}");
    jsonschema::draft202012::new(&def).expect("a valid schema")
}

#[test]
fn durations_are_read_alike() {
    let v = def_validator("Duration");
    // Left out, as no pattern can say them: numbers too large for a u64 of
    // nanoseconds or seconds, and fractions finer than a nanosecond
    // ("0.5ns"): the schema accepts them, humantime does not.
    for s in [
        "0", "0s", "30s", "50ms", "1m", "10m", "1h", "1h 30m", "1h30m", "2h 37min", "1.5s", "4.2s", " 5s ", "5 s",
        "12 3s", "2 days", "1week", "3 weeks", "1M", "12months", "1y", "17nsec", "163µs", "31millis", "300secs", "1hr",
        "", " ", "0 ", "00", "5", "10 sec 5", "s", "-1s", "+1s", "1.s", ".5s", "1..s", "5x", "5 S", "1mss", "1s,2s",
        "1_000ms", "1e3ms", "1 h 2", "1s2", "ms5",
    ] {
        let schema_says = v.is_valid(&json!(s));
        let parser_says = humantime::parse_duration(s).is_ok();
        assert_eq!(schema_says, parser_says, "{s:?}: schema {schema_says}, humantime {parser_says}");
    }
}

#[test]
fn sizes_are_read_alike() {
    let v = def_validator("ByteSize");
    // Left out: numbers too large for a u64 of bytes.
    for s in [
        "0",
        "512",
        "16MiB",
        "1GB",
        "12 KiB",
        " 1 GiB ",
        "64KiB",
        "8KB",
        "3B",
        "7 MB",
        "MiB",
        "",
        "16 parsecs",
        "1.5MiB",
        "-1",
        "+1",
        "1kb",
        "1KIB",
        "1 TiB",
        "1 B B",
        "0x10",
        "1_000",
    ] {
        let schema_says = v.is_valid(&json!(s));
        let parser_says = parse_byte_size(s).is_some();
        assert_eq!(schema_says, parser_says, "{s:?}: schema {schema_says}, parser {parser_says}");
    }
}

#[test]
fn socket_addresses_are_read_alike() {
    let v = def_validator("SocketAddr");
    // Left out: octets over 255 and ports over 65535 ("300.1.1.1:80"),
    // and malformed IPv6 made of the right characters ("[:::]:80"), which
    // the pattern lets through and the parser refuses.
    for s in [
        "127.0.0.1:8080",
        "0.0.0.0:0",
        "[::1]:8080",
        "[::]:8443",
        "[fe80::1%2]:80",
        "[::ffff:10.0.0.1]:80",
        "localhost:8080",
        "127.0.0.1",
        "::1:80",
        "[::1]",
        "127.0.0.1:",
        "http://127.0.0.1:80",
        " 127.0.0.1:80",
        "",
    ] {
        let schema_says = v.is_valid(&json!(s));
        let parser_says = s.parse::<SocketAddr>().is_ok();
        assert_eq!(schema_says, parser_says, "{s:?}: schema {schema_says}, parser {parser_says}");
    }
}

// ---- defaults ------------------------------------------------------------------

/// Every `default` in the schema, as (definition, key, default, the
/// property's schema).
fn defaults() -> Vec<(String, String, Value, Value)> {
    let s = schema();
    let mut out = Vec::new();
    let mut objects: Vec<(String, &Value)> = vec![("(root)".to_owned(), &s)];
    objects.extend(s["$defs"].as_object().expect("$defs").iter().map(|(k, v)| (k.clone(), v)));
    while let Some((name, obj)) = objects.pop() {
        if let Some(variants) = obj.get("anyOf").and_then(Value::as_array) {
            objects.extend(variants.iter().map(|v| (name.clone(), v)));
        }
        for (key, prop) in obj.get("properties").and_then(Value::as_object).into_iter().flatten() {
            if let Some(default) = prop.get("default") {
                out.push((name.clone(), key.clone(), default.clone(), prop.clone()));
            }
        }
    }
    out
}

/// Defaults are written as a config would write them (`"30s"`, not
/// `{"secs": 30}`; `"64MiB"`, not `67108864`), so each is valid against
/// its own key's schema and an editor can insert it as it is.
#[test]
fn defaults_are_values_the_key_accepts() {
    let defs = schema()["$defs"].clone();
    let all = defaults();
    assert!(all.len() > 80, "only {} defaults", all.len());
    for (def, key, default, prop) in &all {
        let mut standalone = prop.clone();
        standalone["$defs"] = defs.clone();
        let v = jsonschema::draft202012::new(&standalone).expect("a valid schema");
        let found = violations(&v, default);
        assert!(found.is_empty(), "{def}.{key}: default {default} is refused: {found:?}");
    }
    let find = |def: &str, key: &str| {
        all.iter().find(|(d, k, _, _)| d == def && k == key).map(|(_, _, v, _)| v.clone()).unwrap_or_default()
    };
    assert_eq!(find("ServerConfig", "drain_timeout"), json!("30s"));
    assert_eq!(find("RouteConfig", "websocket_idle_timeout"), json!("5m"));
    assert_eq!(find("PluginLimits", "deadline"), json!("100ms"));
    assert_eq!(find("LimitsConfig", "max_request_body"), json!("64MiB"));
    assert_eq!(find("LimitsConfig", "max_uri_bytes"), json!("8KiB"));
    assert_eq!(find("RuntimeConfig", "compile_cache"), json!(true));
    assert_eq!(find("ListenerTlsConfig", "alpn"), json!(["h2", "http/1.1"]));
    assert_eq!(find("RetryConfig", "on"), json!(["connect"]));
    assert_eq!(find("UpstreamConfig", "balance"), json!("round_robin"));
    assert_eq!(find("TargetConfig", "weight"), json!(1));
}

/// A config that spells out every default the schema gives parses to the
/// same values as one that leaves them all out: the schema's defaults are
/// the parser's.
#[test]
fn defaults_are_the_parsers() {
    let all = defaults();
    let table = |def: &str| -> Value {
        Value::Object(all.iter().filter(|(d, ..)| d == def).map(|(_, k, v, _)| (k.clone(), v.clone())).collect())
    };
    let mut server = table("ServerConfig");
    server["listen"] = "127.0.0.1:8080".into();
    let mut upstream = table("UpstreamConfig");
    upstream["targets"] = json!(["127.0.0.1:9001", { "address": "127.0.0.1:9002" }]);
    for (key, def) in
        [("retry", "RetryConfig"), ("outlier", "OutlierConfig"), ("breaker", "BreakerConfig"), ("pool", "PoolConfig")]
    {
        upstream[key] = table(def);
    }
    upstream["targets"][1]["weight"] = table("TargetConfig")["weight"].clone();
    let mut health = table("HealthConfig");
    health["path"] = "/healthz".into();
    upstream["health"] = health;
    let mut plugin = table("PluginConfig");
    plugin["module"] = "a.wasm".into();
    plugin["limits"] = table("PluginLimits");
    plugin["crash_loop"] = table("CrashLoopConfig");
    let mut route = table("RouteConfig");
    route["name"] = "r".into();
    route["upstream"] = "u".into();
    route["cache"] = table("CacheConfig");
    let mut tls = table("ListenerTlsConfig");
    tls["listen"] = "127.0.0.1:8443".into();
    tls["certificates"] = json!([]);
    server["tls"] = tls;
    let spelled = json!({
        "server": server,
        "runtime": table("RuntimeConfig"),
        "state": table("StateConfig"),
        "events": table("EventsConfig"),
        "access_log": table("AccessLogConfig"),
        "limits": table("LimitsConfig"),
        "tracing": table("TracingConfig"),
        "upstreams": { "u": upstream },
        "plugins": { "p": plugin },
        "routes": [route],
    });
    assert!(violations(&validator(), &spelled).is_empty());
    let text = toml::to_string(&spelled).expect("TOML");
    let full = Source::from_text("gateway.toml", text.clone()).parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
    let bare = Source::from_text(
        "gateway.toml",
        "[server]\nlisten = \"127.0.0.1:8080\"\n[server.tls]\nlisten = \"127.0.0.1:8443\"\ncertificates = []\n\
         [state]\n[access_log]\n[tracing]\n\
         [upstreams.u]\ntargets = [\"127.0.0.1:9001\", { address = \"127.0.0.1:9002\" }]\nhealth = { path = \"/healthz\" }\n\
         [plugins.p]\nmodule = \"a.wasm\"\n[[routes]]\nname = \"r\"\nupstream = \"u\"\ncache = {}\n",
    )
    .parse()
    .expect("valid");
    // The parsed types have no common equality, but their debug output is
    // the whole value; spans differ, so compare what they hold.
    let strip = |c: &GatewayConfig| {
        let s = format!("{c:#?}");
        s.lines().filter(|l| !l.trim_start().starts_with("span:")).collect::<Vec<_>>().join("\n")
    };
    assert_eq!(strip(&full), strip(&bare));
}
