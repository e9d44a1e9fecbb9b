//! Which contract version a component targets, and calls into either.
//!
//! A component is matched against the newest contract first: one that
//! exports `weir:plugin/guest@0.2.0` gets 0.2.0's imports, one that exports
//! `guest@0.1.0` gets 0.1.0's. Everything past this module speaks 0.2.0's
//! records: a 0.1.0 guest's are converted here (`compat::records`), and its
//! plugin info reads as an interest in everything.

use wasmtime::component::InstancePre;
use wasmtime::Store;

use super::bindings::{types, v0_1, v0_2};
use super::compat::records;
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

    /// Whether the response phase must be given the request too (0.1.0's
    /// `on-response` takes it; 0.2.0's does not).
    pub fn response_takes_request(&self) -> bool {
        matches!(self, Pre::V0_1(_))
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
            Guest::V0_1(guest) => Ok(guest
                .weir_plugin_guest()
                .call_validate_config(store, config)
                .await?
                .map(records::plugin_info)),
        }
    }

    pub async fn on_request(
        &self,
        store: &mut Store<HostState>,
        req: types::Request,
    ) -> wasmtime::Result<types::RequestAction> {
        match self {
            Guest::V0_2(guest) => guest.weir_plugin_guest().call_on_request(store, &req).await,
            Guest::V0_1(guest) => {
                let req = records::into_request(req);
                let action = guest
                    .weir_plugin_guest()
                    .call_on_request(store, &req)
                    .await?;
                Ok(records::request_action(action))
            }
        }
    }

    /// The response phase; `req` is given when `response_takes_request`.
    pub async fn on_response(
        &self,
        store: &mut Store<HostState>,
        resp: types::ResponseHead,
        req: Option<&types::Request>,
    ) -> wasmtime::Result<types::ResponseChanges> {
        match self {
            Guest::V0_2(guest) => {
                guest
                    .weir_plugin_guest()
                    .call_on_response(store, &resp)
                    .await
            }
            Guest::V0_1(guest) => {
                let Some(req) = req else {
                    return Err(wasmtime::Error::msg(
                        "a weir:plugin@0.1.0 response phase needs the request",
                    ));
                };
                let changes = guest
                    .weir_plugin_guest()
                    .call_on_response(store, &records::request(req), &records::response_head(resp))
                    .await?;
                Ok(records::response_changes(changes))
            }
        }
    }
}
