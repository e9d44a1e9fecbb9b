//! `tagger` — the sample Weir plugin that exercises the contract end to end.
//!
//! On the way in it sets configured request headers, denies configured path
//! prefixes with a local 403, appends its tag to `x-weir-chain`, and passes
//! the list of tags seen so far down the chain as the typed property
//! `chain`. On the way out it sets configured response headers and appends
//! its tag to the response's `x-weir-chain`, so chain order is visible in
//! both phases.
//!
//! ```toml
//! [plugins.tagger]
//! file = "plugins/tagger.wasm"
//! config = { tag = "edge", request_headers = { x-env = "demo" }, deny_prefixes = ["/admin"] }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
});

use exports::weir::plugin::guest::Guest;
use weir::plugin::types::{
    HeaderOp, PluginInfo, Request, RequestAction, RequestChanges, Response, ResponseChanges,
    ResponseHead, Value,
};
use weir::plugin::{config, log};

/// The plugin's config table from `proxy.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// This plugin's name in `x-weir-chain` and the `chain` property.
    tag: String,
    #[serde(default)]
    request_headers: BTreeMap<String, String>,
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
    #[serde(default)]
    deny_prefixes: Vec<String>,
}

impl Config {
    fn parse(json: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if config.tag.is_empty() || !config.tag.bytes().all(is_token_byte) {
            return Err(format!(
                "tag {:?} must be a non-empty HTTP token (letters, digits, -_.)",
                config.tag
            ));
        }
        for name in config
            .request_headers
            .keys()
            .chain(config.response_headers.keys())
        {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(format!("header name {name:?} is not a valid HTTP token"));
            }
        }
        if let Some(bad) = config.deny_prefixes.iter().find(|p| !p.starts_with('/')) {
            return Err(format!("deny_prefixes entry {bad:?} must start with '/'"));
        }
        Ok(config)
    }

    /// The config of the running instance. `validate-config` accepted it at
    /// load time, so a failure here means the host broke its promise.
    fn current() -> Self {
        Self::parse(&config::get()).unwrap_or_else(|e| panic!("config changed under us: {e}"))
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

fn set_all(headers: &BTreeMap<String, String>) -> impl Iterator<Item = HeaderOp> + '_ {
    headers
        .iter()
        .map(|(name, value)| HeaderOp::Set((name.to_ascii_lowercase(), value.clone())))
}

struct Tagger;

impl Guest for Tagger {
    fn validate_config(config: String) -> Result<PluginInfo, String> {
        Config::parse(&config)?;
        Ok(PluginInfo {
            on_request: true,
            on_response: true,
            request_body: false,
            response_body: false,
        })
    }

    fn on_request(req: Request) -> RequestAction {
        let config = Config::current();
        if let Some(prefix) = config
            .deny_prefixes
            .iter()
            .find(|prefix| req.path.starts_with(prefix.as_str()))
        {
            log::log(
                log::Level::Info,
                &format!("denying {} (prefix {prefix})", req.path),
            );
            return RequestAction::Respond(Response {
                status: 403,
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("x-weir-denied-by".into(), config.tag.clone()),
                ],
                body: br#"{"error":"forbidden"}"#.to_vec(),
            });
        }

        let mut chain = req
            .properties
            .iter()
            .find_map(|(name, value)| match (name.as_str(), value) {
                ("chain", Value::Texts(tags)) => Some(tags.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let mut headers: Vec<HeaderOp> = set_all(&config.request_headers).collect();
        headers.push(HeaderOp::Append((
            "x-weir-chain".into(),
            config.tag.clone(),
        )));
        headers.push(HeaderOp::Set((
            format!("x-weir-saw-{}", config.tag),
            chain.join(","),
        )));
        chain.push(config.tag);

        RequestAction::Continue(RequestChanges {
            method: None,
            path: None,
            query: None,
            headers,
            upstream: None,
            properties: vec![("chain".into(), Value::Texts(chain))],
            cache: None,
            body: None,
        })
    }

    fn on_response(_req: Request, _resp: ResponseHead) -> ResponseChanges {
        let config = Config::current();
        let mut headers: Vec<HeaderOp> = set_all(&config.response_headers).collect();
        headers.push(HeaderOp::Append(("x-weir-chain".into(), config.tag)));
        ResponseChanges {
            status: None,
            headers,
            body: None,
        }
    }
}

export!(Tagger);
