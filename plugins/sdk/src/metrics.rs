//! Metrics on the host's admin endpoint, prefixed `weir_plugin_` and
//! labelled with the plugin's name. Built natively (tests), they are dropped.

#[cfg(target_arch = "wasm32")]
pub use crate::bindings::weir::plugin::metrics::{counter_add, gauge_set, histogram_observe};

#[cfg(not(target_arch = "wasm32"))]
pub use native::{counter_add, gauge_set, histogram_observe};

pub use crate::bindings::weir::plugin::metrics::Labels;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    pub fn counter_add(_name: &str, _labels: &[(String, String)], _delta: u64) {}

    pub fn gauge_set(_name: &str, _labels: &[(String, String)], _value: f64) {}

    pub fn histogram_observe(_name: &str, _labels: &[(String, String)], _value: f64) {}
}
