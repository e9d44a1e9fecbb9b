//! Metrics on the host's admin endpoint, as `weir_custom_<name>` labelled
//! with the plugin's name. The host drops (and counts) what it refuses: bad
//! names, reserved labels (`le`, `quantile`, `plugin`, `__…`), NaN, new
//! series past the plugin's cap — see docs/writing-plugins.md, "Metrics".
//! Built natively (tests), they are dropped.

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
