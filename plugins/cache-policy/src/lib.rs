//! `cache-policy` — per-route policy for Weir's response cache.
//!
//! The host applies HTTP caching semantics (RFC 9111); this plugin can only
//! narrow them per route: bypass the cache, cap the freshness lifetime, add
//! key parts (a property such as the tenant, or request headers), and — only
//! where the operator's `[cache] allow_shared_authenticated` permits — let
//! responses to authenticated requests be shared.
//!
//! ```toml
//! [plugins.cache.config]
//! [[plugins.cache.config.rules]]
//! prefix = "/api/private"
//! bypass = true
//! [[plugins.cache.config.rules]]
//! prefix = "/api"
//! ttl_cap = 30
//! key_properties = ["tenant"]
//! key_headers = ["accept-language"]
//! share_authenticated = true
//! ```
//!
//! Rules match by path prefix, first match wins; no match leaves the host's
//! defaults untouched.

use serde::Deserialize;

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
});

use exports::weir::plugin::guest::Guest;
use weir::plugin::config;
use weir::plugin::types::{
    CacheDirectives, PluginInfo, Request, RequestAction, RequestChanges, ResponseChanges,
    ResponseHead, Value,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    prefix: String,
    #[serde(default)]
    bypass: bool,
    /// Seconds; caps whatever lifetime the response declares.
    ttl_cap: Option<u32>,
    /// Per-request properties (set by earlier plugins) mixed into the key.
    #[serde(default)]
    key_properties: Vec<String>,
    /// Request headers mixed into the key.
    #[serde(default)]
    key_headers: Vec<String>,
    #[serde(default)]
    share_authenticated: bool,
}

impl Config {
    fn parse(json: &str) -> Result<Config, String> {
        let config: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        for (i, rule) in config.rules.iter().enumerate() {
            if !rule.prefix.starts_with('/') {
                return Err(format!(
                    "rules[{i}].prefix {:?} must start with '/'",
                    rule.prefix
                ));
            }
            if rule.bypass
                && (rule.ttl_cap.is_some()
                    || !rule.key_properties.is_empty()
                    || !rule.key_headers.is_empty())
            {
                return Err(format!(
                    "rules[{i}]: bypass = true cannot be combined with ttl_cap or key parts"
                ));
            }
        }
        Ok(config)
    }
}

fn property_text(req: &Request, name: &str) -> String {
    req.properties
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, value)| match value {
            Value::Text(text) => text.clone(),
            Value::Integer(n) => n.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Flag(b) => b.to_string(),
            Value::Texts(list) => list.join(","),
            Value::Bytes(bytes) => format!("{bytes:?}"),
        })
        .unwrap_or_default()
}

fn header_text(req: &Request, name: &str) -> String {
    let values: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect();
    values.join(",")
}

struct CachePolicy;

impl Guest for CachePolicy {
    fn validate_config(config: String) -> Result<PluginInfo, String> {
        Config::parse(&config)?;
        Ok(PluginInfo {
            on_request: true,
            on_response: false,
            request_body: false,
            response_body: false,
        })
    }

    fn on_request(req: Request) -> RequestAction {
        let config = Config::parse(&config::get()).unwrap_or(Config { rules: Vec::new() });
        let cache = config
            .rules
            .iter()
            .find(|rule| req.path.starts_with(&rule.prefix))
            .map(|rule| {
                let mut extra_key = Vec::new();
                for name in &rule.key_properties {
                    extra_key.push(format!("{name}={}", property_text(&req, name)));
                }
                for name in &rule.key_headers {
                    extra_key.push(format!("{name}:{}", header_text(&req, name)));
                }
                CacheDirectives {
                    bypass: rule.bypass,
                    ttl_cap: rule.ttl_cap,
                    extra_key,
                    share_authenticated: rule.share_authenticated,
                }
            });
        RequestAction::Continue(RequestChanges {
            method: None,
            path: None,
            query: None,
            headers: Vec::new(),
            upstream: None,
            properties: Vec::new(),
            cache,
            body: None,
        })
    }

    fn on_response(_req: Request, _resp: ResponseHead) -> ResponseChanges {
        ResponseChanges {
            status: None,
            headers: Vec::new(),
            body: None,
        }
    }
}

export!(CachePolicy);
