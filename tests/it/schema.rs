//! Config schemas (contract 0.2.5): a plugin's config is checked against
//! the schema it declares before `init`, every mismatch reported with the
//! plugin, the key path and the reason; `weir plugin schema` prints a
//! module's schema; `weir config schema` prints gateway.toml's.

use std::process::Command;

use weir_tests::{TestGateway, fixture, weir_binary, workspace_root};

fn run(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = Command::new(weir_binary()).args(args).output().expect("run weir");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn weir_check_reports_every_schema_error_of_a_builtin_plugin_with_its_key_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = "[plugins.greet]\nmodule = \"add_header.wasm\"\n\
                config = { name = 5, to = \"sideways\", colour = \"red\" }\n\n\
                [plugins.ok]\nmodule = \"add_header.wasm\"\nconfig = { name = \"x-a\", value = \"b\" }\n";
    TestGateway::prepare(dir.path(), "", body, &["add_header.wasm"]);
    let config = dir.path().join("gateway.toml");
    let (ok, _, err) = run(&["check".as_ref(), "--config".as_ref(), config.as_os_str()]);
    assert!(!ok, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("plugin `greet`")).collect();
    let has = |path: &str, reason: &str| lines.iter().any(|l| l.contains(&format!(": {path}: ")) && l.contains(reason));
    assert!(has("config.name", "is not of type \"string\""), "{err}");
    assert!(has("config.to", "sideways"), "{err}");
    assert!(has("config.colour", "unknown key"), "{err}");
    assert!(has("config", "\"value\" is a required property"), "{err}");
    assert_eq!(lines.len(), 4, "one line per mismatch:\n{err}");
    // Each line names the file and the line of the plugin's config.
    assert!(lines.iter().all(|l| l.contains("gateway.toml:") && l.contains("(add_header.wasm)")), "{err}");
    assert!(!err.contains("plugin `ok`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_breaks_a_schema_is_refused_and_the_old_config_serves() {
    let up = weir_tests::Upstream::start("backend").await;
    let route = format!(
        "[upstreams.backend]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"backend\"\nchain = [\"greet\"]\n\n",
        up.addr
    );
    let good = format!(
        "{route}[plugins.greet]\nmodule = \"add_header.wasm\"\nconfig = {{ name = \"x-hi\", value = \"1\" }}\n"
    );
    let gw = TestGateway::start(&good, &["add_header.wasm"]).await;
    assert_eq!(gw.get("/").await.seen("x-hi").as_deref(), Some("1"));
    gw.write_config(&good.replace("value = \"1\"", "value = \"1\", apend = true"));
    let error = gw.wait_reload_error().await;
    assert!(error.contains("plugin `greet`") && error.contains("config.apend: unknown key"), "{error}");
    assert_eq!(gw.get("/").await.seen("x-hi").as_deref(), Some("1"), "the last good config serves");
    gw.shutdown().await;
}

#[test]
fn weir_plugin_schema_prints_what_a_module_declares() {
    let module = fixture("add_header.wasm");
    let (ok, out, err) = run(&["plugin".as_ref(), "schema".as_ref(), module.as_os_str()]);
    assert!(ok, "{err}");
    let schema: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    for key in ["name", "value", "to", "append"] {
        assert!(schema["properties"][key]["description"].is_string(), "{key}: {schema}");
    }
    assert_eq!(schema["additionalProperties"], false);

    // Every built-in plugin ships one.
    for m in ["anomaly.wasm", "auth.wasm", "ext_authz.wasm", "rate_limit.wasm", "transform.wasm"] {
        let (ok, out, err) = run(&["plugin".as_ref(), "schema".as_ref(), fixture(m).as_os_str()]);
        assert!(ok, "{m}: {err}");
        let schema: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(schema["type"], "object", "{m}");
    }

    // A module built before contract 0.2.5 declares none, and says so.
    let old = workspace_root().join("tests/fixtures/add_header-wit-0.2.0.wasm");
    let (ok, _, err) = run(&["plugin".as_ref(), "schema".as_ref(), old.as_os_str()]);
    assert!(!ok);
    assert!(err.contains("declares no config schema"), "{err}");
    // Not a module at all.
    let (ok, _, err) = run(&["plugin".as_ref(), "schema".as_ref(), workspace_root().join("README.md").as_os_str()]);
    assert!(!ok && err.contains("README.md"), "{err}");
}

#[test]
fn weir_config_schema_prints_the_gateway_toml_schema() {
    let (ok, out, err) = run(&["config".as_ref(), "schema".as_ref()]);
    assert!(ok, "{err}");
    let schema: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(schema, weir_config::schema());
    for section in ["server", "runtime", "upstreams", "plugins", "routes", "recorder"] {
        assert!(schema["properties"][section].is_object(), "{section}");
    }
}
