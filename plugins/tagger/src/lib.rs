//! `tagger` — the sample Weir plugin that exercises the contract end to end.
//!
//! On the way in it sets configured request headers, denies configured path
//! prefixes (whole segments: `/admin` denies `/admin/x`, not
//! `/administrator`) with a local 403, appends its tag to `x-weir-chain`, and passes
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
use serde_json::json;
use weir_plugin::{log, Action, Info, PathPrefix, Plugin, Request, ResponseChanges, ResponseHead};

/// The plugin's config table from `proxy.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tag: String,
    #[serde(default)]
    request_headers: BTreeMap<String, String>,
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
    #[serde(default)]
    deny_prefixes: Vec<String>,
}

/// The config with its prefixes checked, read through [`RawConfig`].
#[derive(Deserialize)]
#[serde(try_from = "RawConfig")]
struct Config {
    /// This plugin's name in `x-weir-chain` and the `chain` property.
    tag: String,
    request_headers: BTreeMap<String, String>,
    response_headers: BTreeMap<String, String>,
    /// Whole segments: `/admin` denies `/admin/x`, not `/administrator`.
    deny_prefixes: Vec<PathPrefix>,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Config, String> {
        let deny_prefixes = raw
            .deny_prefixes
            .iter()
            .enumerate()
            .map(|(i, prefix)| {
                PathPrefix::new(prefix).map_err(|e| format!("deny_prefixes[{i}]: {e}"))
            })
            .collect::<Result<_, String>>()?;
        Ok(Config {
            tag: raw.tag,
            request_headers: raw.request_headers,
            response_headers: raw.response_headers,
            deny_prefixes,
        })
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

struct Tagger;

impl Plugin for Tagger {
    type Config = Config;

    /// Reads no header and no connection fact: only the `chain` property.
    fn info(_: &Config) -> Info {
        Info::both_phases()
            .request_headers(std::iter::empty::<String>())
            .response_headers(std::iter::empty::<String>())
            .connection(false)
    }

    fn validate(config: &Config) -> Result<(), String> {
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
        Ok(())
    }

    fn on_request(config: &Config, req: &Request) -> Action {
        if let Some(prefix) = config
            .deny_prefixes
            .iter()
            .find(|prefix| prefix.matches(&req.path))
        {
            log::info(format!("denying {} (prefix {prefix})", req.path));
            return Action::respond(403)
                .header("x-weir-denied-by", &config.tag)
                .json(&json!({ "error": "forbidden" }))
                .into();
        }

        let mut chain = req.property_texts("chain").unwrap_or_default().to_vec();
        let mut changes = Action::next();
        for (name, value) in &config.request_headers {
            changes = changes.set_header(name, value);
        }
        changes = changes
            .append_header("x-weir-chain", &config.tag)
            .set_header(format!("x-weir-saw-{}", config.tag), chain.join(","));
        chain.push(config.tag.clone());
        changes.set_property("chain", chain).into()
    }

    fn on_response(config: &Config, _resp: &ResponseHead) -> ResponseChanges {
        let mut changes = ResponseChanges::new();
        for (name, value) in &config.response_headers {
            changes = changes.set_header(name, value);
        }
        changes.append_header("x-weir-chain", &config.tag)
    }
}

weir_plugin::export_plugin!(Tagger);

#[cfg(test)]
mod tests {
    use weir_plugin::testing::{self, request};
    use weir_plugin::{Action, Plugin, Value};

    use super::Tagger;

    const CONFIG: &str =
        r#"{"tag":"edge","request_headers":{"X-Env":"demo"},"deny_prefixes":["/admin"]}"#;

    #[test]
    fn keeps_the_contract() {
        let requests = [
            request("GET", "/").build(),
            request("GET", "/admin/users").build(),
            request("POST", "/a")
                .property("chain", vec!["a".to_string()])
                .build(),
        ];
        testing::check_conformance::<Tagger>(CONFIG, &requests);
    }

    #[test]
    fn refuses_bad_tags_and_prefixes() {
        let message = testing::check_config_rejected::<Tagger>(r#"{"tag":"a b"}"#);
        assert!(
            message.contains("must be a non-empty HTTP token"),
            "{message}"
        );
        let message =
            testing::check_config_rejected::<Tagger>(r#"{"tag":"a","deny_prefixes":["admin"]}"#);
        assert!(message.contains("must start with '/'"), "{message}");
    }

    #[test]
    fn extends_the_chain_property() {
        let config = testing::config::<Tagger>(CONFIG);
        let req = request("GET", "/")
            .property("chain", vec!["a".to_string()])
            .build();
        let Action::Continue(changes) = Tagger::on_request(&config, &req) else {
            panic!("expected the request to go on");
        };
        let chain = Value::Texts(vec!["a".into(), "edge".into()]);
        assert_eq!(changes.properties, vec![("chain".to_string(), chain)]);
    }

    #[test]
    fn denies_configured_prefixes() {
        let config = testing::config::<Tagger>(CONFIG);
        let Action::Respond(response) =
            Tagger::on_request(&config, &request("GET", "/admin/x").build())
        else {
            panic!("expected a local answer");
        };
        assert_eq!(response.status, 403);
        assert_eq!(response.body, br#"{"error":"forbidden"}"#);
    }

    #[test]
    fn denied_prefixes_cover_whole_segments_only() {
        let config = testing::config::<Tagger>(CONFIG);
        let denied = |path: &str| {
            matches!(
                Tagger::on_request(&config, &request("GET", path).build()),
                Action::Respond(_)
            )
        };
        assert!(denied("/admin"));
        assert!(denied("/admin/"));
        assert!(!denied("/administrator"));
        assert!(!denied("/adminx/y"));
        assert!(!denied("/ADMIN"));
        let message =
            testing::check_config_rejected::<Tagger>(r#"{"tag":"a","deny_prefixes":["/a//b"]}"#);
        assert!(
            message.contains(r#"deny_prefixes[0]: "/a//b" is not a canonical path"#),
            "{message}"
        );
    }
}
