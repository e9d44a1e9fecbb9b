//! `{{name}}`: a Weir plugin.
//!
//! Request phase: sets the request header `x-hello` to the configured
//! message, so the upstream sees it. Response phase: sets `x-plugin:
//! {{name}}` on the answer.

wit_bindgen::generate!({ path: "wit", world: "plugin" });

use exports::weir::plugin::guest::Guest;
use serde::Deserialize;
use weir::plugin::config;
use weir::plugin::types::{
    HeaderInterest, HeaderOp, PluginInfo, Request, RequestAction, RequestChanges,
    ResponseChanges, ResponseHead,
};

/// The `[plugins.{{name}}.config]` table. Unknown keys are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_message")]
    message: String,
}

fn default_message() -> String {
    "hello from {{name}}".into()
}

fn parse(json: &str) -> Result<Config, String> {
    let config: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if config.message.is_empty() || config.message.chars().any(char::is_control) {
        return Err("message must be non-empty text without control characters".into());
    }
    Ok(config)
}

struct MyPlugin;

impl Guest for MyPlugin {
    /// Runs once at load: `Err` makes Weir refuse to start.
    fn validate_config(json: String) -> Result<PluginInfo, String> {
        parse(&json)?;
        Ok(PluginInfo {
            on_request: true,
            on_response: true,
            request_body: false,
            response_body: false,
            // Given nothing it does not read: no header, connection or property.
            request_headers: HeaderInterest::Named(vec![]),
            response_headers: HeaderInterest::Named(vec![]),
            connection: false,
            properties: false,
        })
    }

    fn on_request(_req: Request) -> RequestAction {
        // validate-config accepted this very text, so it parses.
        let config = parse(&config::get()).unwrap_or_else(|_| Config {
            message: default_message(),
        });
        RequestAction::Continue(RequestChanges {
            method: None,
            path: None,
            query: None,
            headers: vec![HeaderOp::Set(("x-hello".into(), config.message))],
            upstream: None,
            properties: vec![],
            cache: None,
            body: None,
        })
    }

    fn on_response(_resp: ResponseHead) -> ResponseChanges {
        ResponseChanges {
            status: None,
            headers: vec![HeaderOp::Set(("x-plugin".into(), "{{name}}".into()))],
            body: None,
        }
    }
}

export!(MyPlugin);
