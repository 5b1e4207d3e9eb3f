//! The generated bindings of `wit/plugin.wit`, quarantined: plugin authors
//! use the curated types of the crate root; the export macro and the glue
//! in `__private` use these.

wit_bindgen::generate!({
    path: "wit",
    world: "sdk-plugin",
    pub_export_macro: true,
    default_bindings_module: "weir_plugin_sdk::bindings",
});
