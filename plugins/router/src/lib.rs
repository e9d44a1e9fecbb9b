//! `router` — ordered routing rules for Weir, first match wins.
//!
//! A rule matches on any combination of host (exact or `*.example.com`;
//! case-insensitive, port ignored), path prefix (whole segments), path
//! pattern (`/users/{id}/orders/*`, `/static/**`), method list and header
//! conditions (present, or equal to a value). Its action forwards to a named
//! upstream (optionally rewriting a path prefix, query kept), redirects
//! (`location` from a template), or answers with a fixed status and body.
//! Nothing matched: the `default_upstream`, or a 404 JSON answer.
//!
//! The matched rule's name goes down the chain as the text property
//! `route` (and, with `route_header`, to the upstream as a header), so rate
//! limiting or caching can key on it.
//!
//! Paths arrive canonical from the host (escapes, dot segments and repeated
//! slashes resolved, ambiguous spellings refused before any plugin runs), so
//! the router matches `req.path` as it is and forwards it unchanged unless a
//! rule rewrites it; configured prefixes and pattern literals must be
//! written canonically too, or the config is refused. Path matching is
//! case-sensitive; a rule with `path_case_insensitive = true` compares its
//! `path_prefix`, `path_pattern` and rewrite prefix in any ASCII case.
//!
//! When to use the host's `[[routes]]` instead: for static routing — a
//! different chain, upstream, plugin config, cache switch or limits per
//! host and path — `[[routes]]` in `proxy.toml` is indexed (1,000 routes
//! match in well under a microsecond), runs before any plugin, gives each
//! route its own chain, and names the route in `request.route` and in the
//! metrics. Use this plugin for what the host does not do: decisions that
//! depend on what earlier plugins found (a property such as the tenant),
//! prefix rewrites, redirects and fixed answers.
//!
//! ```toml
//! [plugins.router.config]
//! default_upstream = "web"
//! route_header = "x-route"
//!
//! [[plugins.router.config.rules]]
//! name = "api"
//! host = "*.example.com"
//! path_prefix = "/api/v1"
//! methods = ["GET", "POST"]
//! headers = [{ name = "x-tenant" }, { name = "x-beta", equals = "1" }]
//! upstream = "api"
//! rewrite = { replace_prefix = "/api/v1", with = "/v1" }
//!
//! [[plugins.router.config.rules]]
//! name = "old-docs"
//! path_prefix = "/old-docs"
//! path_case_insensitive = true            # also /Old-Docs, /OLD-DOCS/x
//! redirect = { status = 308, location = "https://docs.example.com{rest}{query}" }
//!
//! [[plugins.router.config.rules]]
//! name = "blocked"
//! path_pattern = "/internal/**"
//! respond = { status = 404, body = "not found" }
//! ```
//!
//! Upstream names are the host's: a name missing from `[upstreams]` fails
//! the plugin call for requests that reach that rule.

mod config;
mod path;

use serde_json::json;
use weir_plugin::{Action, Changes, Info, Plugin, Request, Response};

use config::{Config, HostMatch, Piece, Rule};

/// The request facts rules look at, computed once per request.
struct Facts<'a> {
    req: &'a Request,
    host: String,
}

impl Rule {
    fn matches(&self, facts: &Facts) -> bool {
        let host_ok = match &self.host {
            None => true,
            Some(HostMatch::Exact(name)) => facts.host == *name,
            Some(HostMatch::Subdomain(suffix)) => {
                facts.host.len() > suffix.len() && facts.host.ends_with(suffix.as_str())
            }
        };
        host_ok
            && self
                .path_prefix
                .as_ref()
                .is_none_or(|prefix| prefix.matches(&facts.req.path))
            && self
                .path_pattern
                .as_ref()
                .is_none_or(|pattern| pattern.matches(&facts.req.path))
            && (self.methods.is_empty() || self.methods.contains(&facts.req.method))
            && self.headers.iter().all(|condition| {
                facts.req.headers.iter().any(|(name, value)| {
                    *name == condition.name
                        && condition.equals.as_ref().is_none_or(|want| value == want)
                })
            })
    }
}

/// Forward to `upstream`, with `path` when it changed (the query is kept
/// as the client sent it).
fn forward(path: Option<String>, upstream: &str) -> Changes {
    let changes = Action::next().upstream(upstream);
    match path {
        Some(path) => changes.path(path),
        None => changes,
    }
}

fn location(pieces: &[Piece], rule: &Rule, facts: &Facts) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Scheme => out.push_str(&facts.req.scheme),
            Piece::Host => out.push_str(&facts.host),
            Piece::Path => out.push_str(&facts.req.path),
            Piece::Rest => {
                // Config checking guarantees the rule has a prefix, and it
                // matched. `/old` alone redirects to the bare target, not
                // to `target/`.
                let rest = rule
                    .path_prefix
                    .as_ref()
                    .and_then(|prefix| prefix.rest(&facts.req.path));
                out.push_str(rest.unwrap_or(""));
            }
            Piece::Query => {
                if let Some(query) = facts.req.query.as_deref().filter(|q| !q.is_empty()) {
                    out.push('?');
                    out.push_str(query);
                }
            }
        }
    }
    out
}

struct Router;

impl Plugin for Router {
    type Config = Config;

    /// Reads only the headers its rules test, no connection fact, no property.
    fn info(config: &Config) -> Info {
        let names = config
            .rules
            .iter()
            .flat_map(|rule| rule.headers.iter().map(|condition| condition.name.clone()));
        Info::request_phase()
            .request_headers(names)
            .connection(false)
            .properties(false)
    }

    fn on_request(config: &Config, req: &Request) -> Action {
        let facts = Facts {
            host: path::host_of(&req.authority),
            req,
        };

        let Some(rule) = config.rules.iter().find(|rule| rule.matches(&facts)) else {
            return match &config.default_upstream {
                Some(upstream) => {
                    let mut changes = forward(None, upstream);
                    // A client must not be able to claim a route.
                    if let Some(name) = &config.route_header {
                        changes = changes.remove_header(name);
                    }
                    changes.into()
                }
                None => Action::respond(404)
                    .json(&json!({ "error": "no route" }))
                    .into(),
            };
        };

        match &rule.action {
            config::Action::Forward { upstream, rewrite } => {
                let path = rewrite
                    .as_ref()
                    .and_then(|rewrite| rewrite.prefix.replace(&req.path, &rewrite.with))
                    .filter(|rewritten| *rewritten != req.path);
                let mut changes = forward(path, upstream);
                if let Some(name) = &config.route_header {
                    changes = changes.set_header(name, &rule.name);
                }
                changes.set_property("route", rule.name.as_str()).into()
            }
            config::Action::Redirect {
                status,
                location: pieces,
            } => Action::respond(*status)
                .header("location", location(pieces, rule, &facts))
                .into(),
            config::Action::Respond {
                status,
                body,
                content_type,
            } => {
                let content_type = content_type
                    .as_deref()
                    .or((!body.is_empty()).then_some("text/plain; charset=utf-8"));
                let response = Response::new(*status).body(body.as_bytes());
                match content_type {
                    Some(content_type) => response.header("content-type", content_type),
                    None => response,
                }
                .into()
            }
        }
    }
}

weir_plugin::export_plugin!(Router);

#[cfg(test)]
mod tests {
    use weir_plugin::testing::{self, request};
    use weir_plugin::{Action, Plugin, Value};

    use super::Router;

    const CONFIG: &str = r#"{
        "default_upstream": "web",
        "route_header": "x-route",
        "rules": [
            {"name": "api", "host": "*.example.com", "path_prefix": "/api/v1",
             "upstream": "api", "rewrite": {"replace_prefix": "/api/v1", "with": "/v1"}},
            {"name": "old", "path_prefix": "/old",
             "redirect": {"status": 308, "location": "https://new.example{rest}{query}"}},
            {"name": "gone", "path_pattern": "/internal/**", "respond": {"status": 410}}
        ]
    }"#;

    fn answer(req: weir_plugin::Request) -> Action {
        let config = testing::config::<Router>(CONFIG);
        Router::on_request(&config, &req)
    }

    #[test]
    fn keeps_the_contract() {
        let requests = [
            request("GET", "/api/v1/users")
                .authority("a.example.com")
                .build(),
            request("GET", "/old/page?x=1").build(),
            request("GET", "/internal/x").build(),
            request("GET", "/api/v10/x")
                .authority("a.example.com")
                .build(),
            request("GET", "/OLD/x").build(),
            request("GET", "/").header("x-route", "forged").build(),
        ];
        testing::check_conformance::<Router>(CONFIG, &requests);
    }

    #[test]
    fn forwards_with_the_rewritten_path_and_route() {
        let req = request("GET", "/api/v1/users")
            .authority("a.example.com:8443")
            .build();
        let Action::Continue(changes) = answer(req) else {
            panic!("expected a forward");
        };
        assert_eq!(changes.upstream.as_deref(), Some("api"));
        assert_eq!(changes.path.as_deref(), Some("/v1/users"));
        assert_eq!(
            changes.properties,
            vec![("route".to_string(), Value::Text("api".into()))]
        );
    }

    #[test]
    fn redirects_and_answers() {
        let Action::Respond(redirect) = answer(request("GET", "/old/a?b=c").build()) else {
            panic!("expected a redirect");
        };
        assert_eq!(redirect.status, 308);
        assert_eq!(
            redirect.headers,
            vec![("location".into(), "https://new.example/a?b=c".into())]
        );
        let Action::Respond(gone) = answer(request("GET", "/internal/x").build()) else {
            panic!("expected a local answer");
        };
        assert_eq!((gone.status, gone.headers.len()), (410, 0));
        let Action::Respond(bare) = answer(request("GET", "/old").build()) else {
            panic!("expected a redirect");
        };
        assert_eq!(
            bare.headers,
            vec![("location".into(), "https://new.example".into())]
        );
    }

    /// Where `req` goes: the upstream and the path change, if any.
    fn forwarded(config: &str, req: weir_plugin::Request) -> (Option<String>, Option<String>) {
        match Router::on_request(&testing::config::<Router>(config), &req) {
            Action::Continue(changes) => (changes.upstream, changes.path),
            Action::Respond(response) => panic!("answered {}", response.status),
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let api = |path: &str| request("GET", path).authority("a.example.com").build();
        let web = (Some("web".to_string()), None);
        assert_eq!(forwarded(CONFIG, api("/api/v10/x")), web);
        assert_eq!(forwarded(CONFIG, api("/api/v1x")), web);
        assert_eq!(forwarded(CONFIG, request("GET", "/older").build()), web);
        assert_eq!(
            forwarded(CONFIG, api("/api/v1")),
            (Some("api".to_string()), Some("/v1".to_string()))
        );
    }

    #[test]
    fn paths_are_matched_and_forwarded_as_the_host_gave_them() {
        // The host canonicalises paths before the chain; the router has no
        // second opinion. A path that is not canonical (the host would have
        // resolved or refused it) is neither rewritten nor matched as if it
        // were.
        for path in ["/docs/~user", "/x/../api/v1/users", "/API/v1/users"] {
            let req = request("GET", path).authority("a.example.com").build();
            assert_eq!(
                forwarded(CONFIG, req),
                (Some("web".to_string()), None),
                "{path}"
            );
        }
    }

    #[test]
    fn rules_may_match_paths_in_any_case() {
        let config = r#"{"rules": [
            {"name": "api", "path_prefix": "/api", "path_case_insensitive": true,
             "upstream": "api", "rewrite": {"strip_prefix": "/api"}},
            {"name": "static", "path_pattern": "/Static/**", "path_case_insensitive": true,
             "upstream": "cdn"},
            {"name": "exact", "path_prefix": "/Exact", "upstream": "exact"}
        ], "default_upstream": "web"}"#;
        let go = |path: &str| forwarded(config, request("GET", path).build());
        let to = |upstream: &str, path: Option<&str>| {
            (Some(upstream.to_string()), path.map(str::to_string))
        };
        assert_eq!(go("/API/Users"), to("api", Some("/Users")));
        assert_eq!(go("/Api"), to("api", Some("/")));
        assert_eq!(go("/APIARY"), to("web", None));
        assert_eq!(go("/STATIC/a.css"), to("cdn", None));
        assert_eq!(go("/Exact/x"), to("exact", None));
        assert_eq!(go("/exact/x"), to("web", None));
    }

    #[test]
    fn prefixes_no_canonical_path_could_match_are_refused() {
        let cases = [
            (
                r#"{"name":"a","path_prefix":"/a//b","upstream":"u"}"#,
                r#"path_prefix "/a//b" is not a canonical path"#,
            ),
            (
                r#"{"name":"a","path_prefix":"/%61pi","upstream":"u"}"#,
                "%61 is an escaped unreserved character",
            ),
            (
                r#"{"name":"a","path_pattern":"/x/../**","upstream":"u"}"#,
                r#"path_pattern "/x/../**": segment "..""#,
            ),
            (
                r#"{"name":"a","upstream":"u","rewrite":{"strip_prefix":"/a;b"}}"#,
                r#"rewrite.strip_prefix "/a;b" is not a canonical path"#,
            ),
            (
                r#"{"name":"a","upstream":"u","rewrite":{"replace_prefix":"/a","with":"/b/../c"}}"#,
                r#"rewrite.with "/b/../c" is not a canonical path"#,
            ),
        ];
        for (rule, expected) in cases {
            let message =
                testing::check_config_rejected::<Router>(&format!(r#"{{"rules":[{rule}]}}"#));
            assert!(message.contains("rules[0] (\"a\")"), "{message}");
            assert!(
                message.contains(expected),
                "expected {expected:?} in {message}"
            );
        }
    }
}
