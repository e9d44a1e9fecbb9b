//! The only `bindgen!` site: host-side types and traits generated from
//! `wit/plugin.wit`. No logic lives here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: {
        // These reach the network (Redis, outbound HTTP): async on the host,
        // still blocking from the guest's point of view.
        "weir:plugin/kv": async,
        "weir:plugin/http-client": async,
        default: tracing,
    },
    exports: {
        default: async,
    },
});

pub use self::exports::weir::plugin::guest;
pub use self::weir::plugin::types;
