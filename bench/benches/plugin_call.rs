//! One plugin call through the runtime, without the network: borrow a
//! pooled instance, call `on-request` with a small head, return it.
//!
//! Run with `cargo bench --bench plugin_call -p weir-bench` after building
//! the plugins (`scripts/demo.sh` or `scripts/test.sh` does).

use std::sync::Arc;

use weir_plugin_host::LoadedPlugin;

fn main() {
    divan::main();
}

struct Setup {
    rt: tokio::runtime::Runtime,
    plugin: Arc<LoadedPlugin>,
    _gateway: weir::Gateway,
    _dir: tempfile::TempDir,
}

fn setup(isolation: &str) -> Setup {
    setup_with(
        "add_header.wasm",
        &format!("config = {{ name = \"x-bench\", value = \"1\" }}\nisolation = \"{isolation}\""),
    )
}

/// Plugin `p` running `module` with `keys` (TOML lines of its section).
fn setup_with(module: &str, keys: &str) -> Setup {
    let wasm = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release").join(module);
    assert!(wasm.exists(), "build the plugins first: {} is missing", wasm.display());
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("plugins")).expect("mkdir");
    std::fs::copy(&wasm, dir.path().join("plugins").join(module)).expect("copy");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nwatch = false\n[runtime]\nmax_instances = 16\n\
         [plugins.p]\nmodule = \"{module}\"\n{keys}\n"
    );
    std::fs::write(dir.path().join("gateway.toml"), config).expect("write");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let gateway = rt.block_on(weir::Gateway::load(dir.path().join("gateway.toml"))).expect("load");
    let plugin = gateway.plugin("p").expect("plugin p");
    Setup { rt, plugin, _gateway: gateway, _dir: dir }
}

#[divan::bench]
fn on_request_pooled(bencher: divan::Bencher<'_, '_>) {
    let s = setup("pool");
    bencher.bench_local(|| {
        s.rt.block_on(s.plugin.probe_on_request("/users/42", &[("user-agent", "bench"), ("accept", "*/*")]))
            .expect("call")
    });
}

#[divan::bench]
fn on_request_fresh_instance(bencher: divan::Bencher<'_, '_>) {
    let s = setup("request");
    bencher.bench_local(|| {
        s.rt.block_on(s.plugin.probe_on_request("/users/42", &[("user-agent", "bench"), ("accept", "*/*")]))
            .expect("call")
    });
}

/// `probe` reading `reads` headers one by one: the difference between 0
/// and 32 reads, over 32, is the cost of one `request.header` host call.
#[divan::bench(args = [0, 32])]
fn header_reads(bencher: divan::Bencher<'_, '_>, reads: u32) {
    let s = setup_with("probe.wasm", &format!("config = {{ header_reads = {reads} }}"));
    bencher.bench_local(|| {
        s.rt.block_on(s.plugin.probe_on_request("/users/42", &[("user-agent", "bench"), ("accept", "*/*")]))
            .expect("call")
    });
}
