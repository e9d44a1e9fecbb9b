//! The only `bindgen!` sites: host-side types and traits generated from
//! `wit/plugin.wit` (`weir:plugin@0.2.0`) and `wit/0.1.0/plugin.wit`. No
//! logic lives here; `compat.rs` answers the 0.1.0 imports with the 0.2.0
//! implementations.

/// The current contract: everything in the host speaks its types.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        imports: {
            // These reach the network (Redis, outbound HTTP): async on the
            // host, still blocking from the guest's point of view.
            "weir:plugin/kv": async,
            "weir:plugin/http-client": async,
            default: tracing,
        },
        exports: {
            default: async,
        },
    });
}

/// `weir:plugin@0.1.0`, still loaded. Its records are its own (0.2.0's
/// request and plugin info differ); `compat.rs` converts them.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "plugin",
        imports: {
            "weir:plugin/kv": async,
            "weir:plugin/http-client": async,
            default: tracing,
        },
        exports: {
            default: async,
        },
    });
}

pub use v0_2::exports::weir::plugin::guest;
pub use v0_2::weir::plugin::types;
