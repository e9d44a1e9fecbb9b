//! `weir-plugin` — write Weir plugins in Rust without touching the bindings.
//!
//! A plugin is a type implementing [`Plugin`]: a config type deserialised
//! with serde from the plugin's table in `proxy.toml`, and one function per
//! phase, each with a default that changes nothing. [`export_plugin!`] turns
//! it into the `weir:plugin` component exports.
//!
//! ```
//! use serde::Deserialize;
//! use weir_plugin::{Action, Info, Plugin, Request};
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     header: String,
//! }
//!
//! struct Stamp;
//!
//! impl Plugin for Stamp {
//!     type Config = Config;
//!
//!     fn info(_: &Config) -> Info {
//!         Info::request_phase()
//!     }
//!
//!     fn on_request(config: &Config, req: &Request) -> Action {
//!         Action::next().set_header(&config.header, &req.id).into()
//!     }
//! }
//!
//! weir_plugin::export_plugin!(Stamp);
//! ```
//!
//! The host imports are wrapped in [`kv`], [`clock`], [`log`] and
//! [`metrics`]. Built natively (for `cargo test`) they run against
//! in-process stand-ins, so a plugin's phases can be unit tested with
//! [`testing`]; only [`http_client`] and the host's config need the real
//! host.
//!
//! `req.path` arrives canonical (the host decodes, dot-segment-resolves and
//! checks it before the first plugin runs): match it as it is, with
//! [`PathPrefix`] for segment-wise prefixes, and never normalise it again.

#![forbid(unsafe_code)]

#[doc(hidden)]
pub mod bindings;

mod answer;
pub mod clock;
pub mod kv;
pub mod log;
pub mod metrics;
pub mod path;
mod request;
pub mod testing;

pub use answer::{deny, json_error};
pub use bindings::weir::plugin::http_client;
pub use bindings::weir::plugin::types::{
    CacheDirectives, ConnectionInfo, HeaderInterest, HeaderOp, HttpVersion, PluginInfo as Info,
    RequestAction as Action, RequestChanges as Changes, Response, ResponseChanges, ResponseHead,
    TlsInfo, Value,
};
pub use path::PathPrefix;
pub use request::Request;

/// Headers the host owns (they frame the message or the connection): a
/// plugin that sets or removes one fails its call. Mirrors the host's list
/// in `host/src/plugin/convert.rs`.
pub const HOST_OWNED_HEADERS: [&str; 10] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
];

use serde::de::DeserializeOwned;

/// A Weir plugin. Every function is called without `self`: the plugin's state
/// is its parsed config (parsed once per instance) and the host's KV.
pub trait Plugin {
    /// The plugin's config table, as serde reads it from JSON. Use
    /// `#[serde(deny_unknown_fields)]` so typos are refused at load, and
    /// `#[serde(try_from = "RawConfig")]` when the table is checked and
    /// compiled into something else.
    type Config: DeserializeOwned + Send + Sync + 'static;

    /// Which phases to call and which bodies to buffer, given an accepted
    /// config. Asked once at load time.
    fn info(config: &Self::Config) -> Info;

    /// Checks serde cannot express. An `Err` refuses the config: Weir does not
    /// start (or keeps the previous chain on reload) and prints the message.
    /// Default: accept.
    fn validate(config: &Self::Config) -> Result<(), String> {
        let _ = config;
        Ok(())
    }

    /// The request phase, in chain order. Default: continue unchanged.
    fn on_request(config: &Self::Config, req: &Request) -> Action {
        let _ = (config, req);
        Action::next().into()
    }

    /// The response phase, in reverse chain order. It is not given the
    /// request: what it needs of it, the request phase keeps as properties
    /// (given here when [`Info::properties`] is on). Default: no changes.
    fn on_response(config: &Self::Config, resp: &ResponseHead) -> ResponseChanges {
        let _ = (config, resp);
        ResponseChanges::default()
    }
}

/// Exports a [`Plugin`] as the component's `guest` interface.
///
/// The config is parsed from the host's JSON and checked by
/// [`Plugin::validate`] in `validate-config` (errors become the refusal
/// message), and parsed again once per instance for the phases: a pooled
/// instance parses it on its first request only.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            struct WeirGuest;

            impl WeirGuest {
                fn config() -> &'static <$plugin as $crate::Plugin>::Config {
                    static CONFIG: ::std::sync::OnceLock<<$plugin as $crate::Plugin>::Config> =
                        ::std::sync::OnceLock::new();
                    $crate::__private::instance_config::<$plugin>(&CONFIG)
                }
            }

            impl $crate::bindings::exports::weir::plugin::guest::Guest for WeirGuest {
                fn validate_config(config: String) -> Result<$crate::Info, String> {
                    $crate::__private::validate_config::<$plugin>(&config)
                }

                fn on_request(req: $crate::Request) -> $crate::Action {
                    <$plugin as $crate::Plugin>::on_request(Self::config(), &req)
                }

                fn on_response(resp: $crate::ResponseHead) -> $crate::ResponseChanges {
                    <$plugin as $crate::Plugin>::on_response(Self::config(), &resp)
                }
            }

    $crate::bindings::export!(WeirGuest with_types_in $crate::bindings);
        };
    };
}

/// What [`export_plugin!`] expands to calls; not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::sync::OnceLock;

    use serde::de::DeserializeOwned;

    use crate::{Info, Plugin};

    /// Parses and checks a config the way `validate-config` does.
    pub fn parse_config<P: Plugin>(json: &str) -> Result<P::Config, String> {
        let config = from_json(json)?;
        P::validate(&config)?;
        Ok(config)
    }

    pub fn from_json<C: DeserializeOwned>(json: &str) -> Result<C, String> {
        serde_json::from_str(json).map_err(|e| without_position(&e))
    }

    pub fn validate_config<P: Plugin>(json: &str) -> Result<Info, String> {
        parse_config::<P>(json).map(|config| P::info(&config))
    }

    pub fn instance_config<P: Plugin>(cell: &'static OnceLock<P::Config>) -> &'static P::Config {
        cell.get_or_init(|| {
            let json = crate::bindings::weir::plugin::config::get();
            // `validate-config` accepted this exact text at load time, so
            // failing here means the host broke its promise.
            parse_config::<P>(&json).unwrap_or_else(|e| panic!("config changed under us: {e}"))
        })
    }

    /// serde_json's message without " at line L column C": the JSON is the
    /// host's rendering of a TOML table, so a position in it points nowhere
    /// the operator can look.
    fn without_position(error: &serde_json::Error) -> String {
        let message = error.to_string();
        let suffix = format!(" at line {} column {}", error.line(), error.column());
        match message.strip_suffix(&suffix) {
            Some(stripped) => stripped.to_string(),
            None => message,
        }
    }
}
