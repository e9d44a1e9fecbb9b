//! Which contract version a component targets, and calls into either.
//!
//! A component is matched against the newest contract first: one that
//! exports `weir:plugin/guest@0.2.0` gets 0.2.0's imports, one that exports
//! `guest@0.1.0` gets 0.1.0's. Both versions' exports take and return the
//! same records (see `bindings.rs`), so everything past this module speaks
//! one set of types.

use wasmtime::component::InstancePre;
use wasmtime::Store;

use super::bindings::{types, v0_1, v0_2};
use super::state::HostState;

/// A linked component, ready to instantiate.
pub enum Pre {
    V0_2(v0_2::PluginPre<HostState>),
    V0_1(v0_1::PluginPre<HostState>),
}

/// One instance's exports.
pub enum Guest {
    V0_2(v0_2::Plugin),
    V0_1(v0_1::Plugin),
}

impl Pre {
    /// The contract `instance_pre`'s component exports, or why it exports
    /// neither.
    pub fn new(instance_pre: InstancePre<HostState>) -> Result<Pre, String> {
        match v0_2::PluginPre::new(instance_pre.clone()) {
            Ok(pre) => Ok(Pre::V0_2(pre)),
            Err(current) => v0_1::PluginPre::new(instance_pre)
                .map(Pre::V0_1)
                .map_err(|old| {
                    format!(
                        "the component exports neither weir:plugin/guest@0.2.0 ({current:#}) \
                         nor weir:plugin/guest@0.1.0 ({old:#})"
                    )
                }),
        }
    }

    /// The contract, as `weir:plugin@x.y.z`.
    pub fn version(&self) -> &'static str {
        match self {
            Pre::V0_2(_) => "weir:plugin@0.2.0",
            Pre::V0_1(_) => "weir:plugin@0.1.0",
        }
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        match self {
            Pre::V0_2(pre) => pre.engine(),
            Pre::V0_1(pre) => pre.engine(),
        }
    }

    pub async fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Guest> {
        Ok(match self {
            Pre::V0_2(pre) => Guest::V0_2(pre.instantiate_async(store).await?),
            Pre::V0_1(pre) => Guest::V0_1(pre.instantiate_async(store).await?),
        })
    }
}

impl Guest {
    pub async fn validate_config(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<types::PluginInfo, String>> {
        match self {
            Guest::V0_2(guest) => {
                guest
                    .weir_plugin_guest()
                    .call_validate_config(store, config)
                    .await
            }
            Guest::V0_1(guest) => {
                guest
                    .weir_plugin_guest()
                    .call_validate_config(store, config)
                    .await
            }
        }
    }

    pub async fn on_request(
        &self,
        store: &mut Store<HostState>,
        req: &types::Request,
    ) -> wasmtime::Result<types::RequestAction> {
        match self {
            Guest::V0_2(guest) => guest.weir_plugin_guest().call_on_request(store, req).await,
            Guest::V0_1(guest) => guest.weir_plugin_guest().call_on_request(store, req).await,
        }
    }

    pub async fn on_response(
        &self,
        store: &mut Store<HostState>,
        req: &types::Request,
        resp: &types::ResponseHead,
    ) -> wasmtime::Result<types::ResponseChanges> {
        match self {
            Guest::V0_2(guest) => {
                guest
                    .weir_plugin_guest()
                    .call_on_response(store, req, resp)
                    .await
            }
            Guest::V0_1(guest) => {
                guest
                    .weir_plugin_guest()
                    .call_on_response(store, req, resp)
                    .await
            }
        }
    }
}
