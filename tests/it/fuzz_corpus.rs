//! The fuzz corpora (`fuzz/corpus/TARGET/`), replayed through the same
//! entry points the fuzz targets call (`weir::fuzzing` and the `fuzzing` modules of `weir-config` and `weir-plugin-host`): every input a
//! fuzzer kept, and every crash it found (saved there once fixed), stays a
//! regression test without fuzzing in CI.

use weir_tests::workspace_root;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = workspace_root().join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "fuzz/corpus/{target}/{} fails", path.file_name().unwrap_or_default().display());
        n += 1;
    }
    assert!(n >= 3, "fuzz/corpus/{target} holds {n} inputs");
    eprintln!("fuzz corpus {target}: {n} inputs replayed");
}

#[test]
fn config_corpus() {
    replay("config", weir_config::fuzzing::config);
}

#[test]
fn router_corpus() {
    replay("router", weir::fuzzing::router);
}

#[test]
fn plugin_headers_corpus() {
    replay("plugin_headers", weir_plugin_host::fuzzing::plugin_headers);
}

#[test]
fn http1_corpus() {
    replay("http1", weir::fuzzing::http1);
}

#[test]
fn upstream_response_corpus() {
    replay("upstream_response", weir::fuzzing::upstream_response);
}
