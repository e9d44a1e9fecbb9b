//! The one place the `weir:plugin` world is bound. Plugins never touch this
//! module directly: the crate root re-exports what they need, and
//! [`export_plugin!`](crate::export_plugin) calls the generated `export!`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
    // `export_plugin!` expands in the plugin's crate, so the generated
    // `export!` macro must be usable from there.
    pub_export_macro: true,
    // Lets tests compare whole answers with `assert_eq!`.
    additional_derives: [PartialEq],
});
