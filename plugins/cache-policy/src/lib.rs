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
//! Rules match by path prefix, whole segments (`/api` covers `/api/x`, not
//! `/apiary`), on the canonical path the host hands over; first match wins;
//! no match leaves the host's defaults untouched.

use serde::Deserialize;
use weir_plugin::{Action, CacheDirectives, Info, PathPrefix, Plugin, Request};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    rules: Vec<Rule>,
}

/// The config with each rule's prefix checked, read through [`RawConfig`].
#[derive(Deserialize)]
#[serde(try_from = "RawConfig")]
struct Config {
    rules: Vec<(PathPrefix, Rule)>,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Config, String> {
        let rules = raw
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| match PathPrefix::new(&rule.prefix) {
                Ok(prefix) => Ok((prefix, rule)),
                Err(e) => Err(format!("rules[{i}].prefix {e}")),
            })
            .collect::<Result<_, String>>()?;
        Ok(Config { rules })
    }
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

impl Rule {
    fn directives(&self, req: &Request) -> CacheDirectives {
        let mut cache = CacheDirectives::default().share_authenticated(self.share_authenticated);
        cache.bypass = self.bypass;
        cache.ttl_cap = self.ttl_cap;
        for name in &self.key_properties {
            let value = req.property(name).map(ToString::to_string);
            cache = cache.key_part(format!("{name}={}", value.unwrap_or_default()));
        }
        for name in &self.key_headers {
            let values: Vec<&str> = req.headers(name).collect();
            cache = cache.key_part(format!("{name}:{}", values.join(",")));
        }
        cache
    }
}

struct CachePolicy;

impl Plugin for CachePolicy {
    type Config = Config;

    /// Reads only the headers and properties its rules mix into keys.
    fn info(config: &Config) -> Info {
        let rules = || config.rules.iter().map(|(_, rule)| rule);
        Info::request_phase()
            .request_headers(rules().flat_map(|rule| rule.key_headers.iter().cloned()))
            .connection(false)
            .properties(rules().any(|rule| !rule.key_properties.is_empty()))
    }

    fn validate(config: &Config) -> Result<(), String> {
        for (i, (_, rule)) in config.rules.iter().enumerate() {
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
        Ok(())
    }

    fn on_request(config: &Config, req: &Request) -> Action {
        let rule = config
            .rules
            .iter()
            .find_map(|(prefix, rule)| prefix.matches(&req.path).then_some(rule));
        match rule {
            Some(rule) => Action::next().cache(rule.directives(req)).into(),
            None => Action::next().into(),
        }
    }
}

weir_plugin::export_plugin!(CachePolicy);

#[cfg(test)]
mod tests {
    use weir_plugin::testing::{self, request};
    use weir_plugin::{Action, CacheDirectives, Plugin};

    use super::CachePolicy;

    const CONFIG: &str = r#"{"rules":[
        {"prefix":"/api/private","bypass":true},
        {"prefix":"/api","ttl_cap":30,"key_properties":["tenant"],"key_headers":["accept-language"]}
    ]}"#;

    fn cache_of(req: weir_plugin::Request) -> Option<CacheDirectives> {
        let config = testing::config::<CachePolicy>(CONFIG);
        match CachePolicy::on_request(&config, &req) {
            Action::Continue(changes) => changes.cache,
            Action::Respond(_) => panic!("cache-policy never answers itself"),
        }
    }

    #[test]
    fn keeps_the_contract() {
        let requests = [
            request("GET", "/api/private/x").build(),
            request("GET", "/api/x").property("tenant", "acme").build(),
            request("GET", "/elsewhere").build(),
        ];
        testing::check_conformance::<CachePolicy>(CONFIG, &requests);
    }

    #[test]
    fn first_matching_rule_decides() {
        assert_eq!(
            cache_of(request("GET", "/api/private/x").build()),
            Some(CacheDirectives::bypass())
        );
        let req = request("GET", "/api/x")
            .property("tenant", "acme")
            .header("accept-language", "en")
            .header("accept-language", "fr")
            .build();
        let expected = CacheDirectives::default()
            .ttl_cap(30)
            .key_part("tenant=acme")
            .key_part("accept-language:en,fr");
        assert_eq!(cache_of(req), Some(expected));
        assert_eq!(cache_of(request("GET", "/other").build()), None);
    }

    #[test]
    fn prefixes_cover_whole_segments_only() {
        assert_eq!(
            cache_of(request("GET", "/api/private").build()),
            Some(CacheDirectives::bypass())
        );
        // `/api/privateer` is not under `/api/private`: the `/api` rule.
        let under_api = cache_of(request("GET", "/api/privateer").build());
        assert_eq!(under_api.map(|cache| cache.bypass), Some(false));
        assert_eq!(cache_of(request("GET", "/apiary").build()), None);
        let message =
            testing::check_config_rejected::<CachePolicy>(r#"{"rules":[{"prefix":"/a/../b"}]}"#);
        assert!(
            message.contains(r#"rules[0].prefix "/a/../b" is not a canonical path"#),
            "{message}"
        );
    }

    #[test]
    fn bypass_with_key_parts_is_refused() {
        let message = testing::check_config_rejected::<CachePolicy>(
            r#"{"rules":[{"prefix":"/a","bypass":true,"ttl_cap":5}]}"#,
        );
        assert!(message.contains("rules[0]: bypass = true"), "{message}");
    }
}
