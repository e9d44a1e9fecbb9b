//! `[[routes]]`: validated into [`RouteSpec`]s, each with its own chain of
//! [`PluginSpec`]s whose config is the plugin's table with the route's
//! overrides merged over it.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use toml::Spanned;

use super::file::{FileConfig, RouteFile};
use super::{check_name, list_or_none, PluginSpec, UpstreamSpec, Validator};
use crate::route::{HostMatch, Match, PathMatch};

/// One validated route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub matcher: Match,
    /// The route's chain, each plugin with its effective config.
    pub chain: Vec<PluginSpec>,
    /// Its upstream unless a plugin picks one (else `default_upstream`).
    pub upstream: Option<String>,
    pub cache: bool,
    pub max_request_body_bytes: u64,
    pub response_timeout: Option<Duration>,
}

/// Parses one of a route's path keys.
type PathParser = fn(&str) -> Result<PathMatch, String>;

/// Plugin specs as `[plugins.NAME]` defines them, built once per name
/// (`None`: the table is broken, already reported).
pub(super) type BaseSpecs = BTreeMap<String, Option<PluginSpec>>;

impl Validator<'_> {
    /// A list of plugin names (the top-level `chain`, or a route's) as
    /// specs. `key` names the list in errors, e.g. `routes[2].chain`.
    pub(super) fn plugin_list(
        &mut self,
        key: &str,
        entries: &[Spanned<String>],
        raw: &FileConfig,
        base: &mut BaseSpecs,
    ) -> Vec<PluginSpec> {
        let mut seen = HashSet::new();
        let mut chain = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let name = entry.get_ref();
            if !seen.insert(name.clone()) {
                self.fail(
                    Some(entry.span()),
                    format!("{key}[{i}]"),
                    format!("plugin {name:?} appears twice in the chain"),
                );
                continue;
            }
            let Some(plugin) = raw.plugins.get(name) else {
                let known: Vec<&str> = raw.plugins.keys().map(String::as_str).collect();
                self.fail(
                    Some(entry.span()),
                    format!("{key}[{i}]"),
                    format!(
                        "unknown plugin {name:?} (configured: {})",
                        list_or_none(&known)
                    ),
                );
                continue;
            };
            let spec = match base.get(name) {
                Some(spec) => spec.clone(),
                None => {
                    let spec = self.plugin(name, plugin);
                    base.insert(name.clone(), spec.clone());
                    spec
                }
            };
            chain.extend(spec);
        }
        chain
    }

    pub(super) fn routes(
        &mut self,
        raw: &FileConfig,
        base: &mut BaseSpecs,
        global: &[PluginSpec],
        upstreams: &BTreeMap<String, UpstreamSpec>,
    ) -> Vec<RouteSpec> {
        let mut names = HashSet::new();
        let mut routes: Vec<RouteSpec> = Vec::new();
        for (i, route) in raw.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            let name = route.name.get_ref();
            if let Err(why) = check_name(name) {
                self.fail(Some(route.name.span()), format!("{key}.name"), why);
            } else if !names.insert(name.clone()) {
                self.fail(
                    Some(route.name.span()),
                    format!("{key}.name"),
                    format!("route {name:?} is defined twice"),
                );
            }
            let Some(matcher) = self.route_match(&key, route) else {
                continue;
            };
            let mut chain = match &route.chain {
                Some(entries) => self.plugin_list(&format!("{key}.chain"), entries, raw, base),
                None => global.to_vec(),
            };
            self.apply_overrides(&key, route, &mut chain, raw);
            if let Some(upstream) = &route.upstream {
                self.check_upstream_ref(upstream, &format!("{key}.upstream"), upstreams);
            }
            if let Some(max) = route.max_request_body_bytes {
                self.route_range(&key, "max_request_body_bytes", max, 1..=1 << 40);
            }
            if let Some(ms) = route.response_timeout_ms {
                self.route_range(&key, "response_timeout_ms", ms, 1..=3_600_000);
            }
            routes.push(RouteSpec {
                name: name.clone(),
                matcher,
                chain,
                upstream: route.upstream.as_ref().map(|u| u.get_ref().clone()),
                cache: route.cache,
                max_request_body_bytes: route
                    .max_request_body_bytes
                    .unwrap_or(raw.limits.max_request_body_bytes),
                response_timeout: route.response_timeout_ms.map(Duration::from_millis),
            });
        }
        self.warn_shadowed(&routes);
        routes
    }

    fn route_range(
        &mut self,
        key: &str,
        field: &str,
        value: u64,
        range: std::ops::RangeInclusive<u64>,
    ) {
        if !range.contains(&value) {
            self.fail(
                None,
                format!("{key}.{field}"),
                format!("{value} is outside {}..={}", range.start(), range.end()),
            );
        }
    }

    fn route_match(&mut self, key: &str, route: &RouteFile) -> Option<Match> {
        let mut ok = true;
        let mut hosts = Vec::new();
        for (i, host) in route.hosts.iter().enumerate() {
            match HostMatch::parse(host.get_ref()) {
                Ok(host) => hosts.push(host),
                Err(why) => {
                    self.fail(Some(host.span()), format!("{key}.hosts[{i}]"), why);
                    ok = false;
                }
            }
        }
        let given: Vec<(&str, &Spanned<String>, PathParser)> = [
            ("path", route.path.as_ref(), PathMatch::exact as PathParser),
            ("prefix", route.prefix.as_ref(), PathMatch::prefix),
            ("pattern", route.pattern.as_ref(), PathMatch::pattern),
        ]
        .into_iter()
        .filter_map(|(field, value, parse)| value.map(|v| (field, v, parse)))
        .collect();
        let path = match given.as_slice() {
            [] => PathMatch::Any,
            [(field, value, parse)] => match parse(value.get_ref()) {
                Ok(path) => path,
                Err(why) => {
                    self.fail(Some(value.span()), format!("{key}.{field}"), why);
                    ok = false;
                    PathMatch::Any
                }
            },
            [_, (field, value, _), ..] => {
                self.fail(
                    Some(value.span()),
                    format!("{key}.{field}"),
                    "give one of path, prefix and pattern".into(),
                );
                ok = false;
                PathMatch::Any
            }
        };
        let mut methods = Vec::new();
        for (i, method) in route.methods.iter().enumerate() {
            let text = method.get_ref().to_ascii_uppercase();
            match http::Method::from_bytes(text.as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => {
                    self.fail(
                        Some(method.span()),
                        format!("{key}.methods[{i}]"),
                        format!("{:?} is not a method", method.get_ref()),
                    );
                    ok = false;
                }
            }
        }
        let mut headers = Vec::new();
        for (name, value) in &route.headers {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(header) => headers.push((header, value.clone())),
                Err(_) => {
                    self.fail(
                        None,
                        format!("{key}.headers.{name}"),
                        format!("{name:?} is not a header name"),
                    );
                    ok = false;
                }
            }
        }
        let query = route
            .query
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        ok.then_some(Match {
            hosts,
            path,
            methods,
            headers,
            query,
        })
    }

    /// `[routes.plugins.NAME]` merged over `[plugins.NAME.config]`.
    fn apply_overrides(
        &mut self,
        key: &str,
        route: &RouteFile,
        chain: &mut [PluginSpec],
        raw: &FileConfig,
    ) {
        for (name, table) in &route.plugins {
            let Some(spec) = chain.iter_mut().find(|spec| spec.name == *name) else {
                self.fail(
                    None,
                    format!("{key}.plugins.{name}"),
                    format!("plugin {name:?} is not in this route's chain"),
                );
                continue;
            };
            let mut config = raw
                .plugins
                .get(name)
                .map(|p| p.config.clone())
                .unwrap_or_default();
            merge(&mut config, table);
            match serde_json::to_string(&config) {
                Ok(json) => spec.config_json = json,
                Err(e) => self.fail(
                    None,
                    format!("{key}.plugins.{name}"),
                    format!("cannot be expressed as JSON: {e}"),
                ),
            }
        }
    }

    /// A route that an earlier one matches whenever it would is dead
    /// config: worth a warning, not a refusal.
    fn warn_shadowed(&mut self, routes: &[RouteSpec]) {
        for (j, later) in routes.iter().enumerate() {
            if let Some((i, earlier)) = routes[..j]
                .iter()
                .enumerate()
                .find(|(_, earlier)| earlier.matcher.covers(&later.matcher))
            {
                self.warnings.push(format!(
                    "routes[{j}] ({:?}) is never used: routes[{i}] ({:?}) matches every request it would",
                    later.name, earlier.name
                ));
            }
        }
    }
}

/// Deep-merge `over` into `base`: tables merge key by key, anything else
/// (arrays included) is replaced.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(over)) => merge(inner, over),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}
