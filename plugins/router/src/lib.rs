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
//! limiting or caching can key on it. Paths are matched and forwarded
//! normalized (see [`path::normalize`]) so encodings cannot dodge a rule.
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

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
});

use exports::weir::plugin::guest::Guest;
use weir::plugin::types::{
    HeaderOp, PluginInfo, Request, RequestAction, RequestChanges, Response, ResponseChanges,
    ResponseHead, Value,
};

use config::{Action, Config, HostMatch, Piece, Rule};

/// The request facts rules look at, computed once per request.
struct Facts<'a> {
    req: &'a Request,
    host: String,
    path: String,
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
                .as_deref()
                .is_none_or(|prefix| path::has_prefix(&facts.path, prefix))
            && self
                .path_pattern
                .as_ref()
                .is_none_or(|pattern| pattern.matches(&facts.path))
            && (self.methods.is_empty() || self.methods.contains(&facts.req.method))
            && self.headers.iter().all(|condition| {
                facts.req.headers.iter().any(|(name, value)| {
                    *name == condition.name
                        && condition.equals.as_ref().is_none_or(|want| value == want)
                })
            })
    }
}

fn continue_with(
    path: Option<String>,
    upstream: String,
    headers: Vec<HeaderOp>,
    properties: Vec<(String, Value)>,
) -> RequestAction {
    RequestAction::Continue(RequestChanges {
        method: None,
        path,
        // `None` keeps the query as the client sent it.
        query: None,
        headers,
        upstream: Some(upstream),
        properties,
        cache: None,
        body: None,
    })
}

fn respond(status: u16, content_type: Option<&str>, body: Vec<u8>) -> RequestAction {
    let headers = content_type
        .map(|ct| vec![("content-type".to_owned(), ct.to_owned())])
        .unwrap_or_default();
    RequestAction::Respond(Response {
        status,
        headers,
        body,
    })
}

fn location(pieces: &[Piece], rule: &Rule, facts: &Facts) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Scheme => out.push_str(&facts.req.scheme),
            Piece::Host => out.push_str(&facts.host),
            Piece::Path => out.push_str(&facts.path),
            Piece::Rest => {
                // Config checking guarantees the rule has a prefix, and it
                // matched, so this strips it.
                let prefix = rule.path_prefix.as_deref().unwrap_or("");
                let rest = path::replace_prefix(&facts.path, prefix, "");
                // `/old` alone redirects to the bare target, not to `target/`.
                if rest != "/" || facts.path.ends_with('/') {
                    out.push_str(&rest);
                }
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

impl Guest for Router {
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
        // `validate-config` accepted this exact text at load time.
        let config = Config::parse(&weir::plugin::config::get())
            .unwrap_or_else(|e| panic!("config changed under us: {e}"));
        let facts = Facts {
            host: path::host_of(&req.authority),
            path: path::normalize(&req.path),
            req: &req,
        };
        // Forward the path the rules saw, unless it is what the client sent.
        let normalized = (facts.path != req.path).then(|| facts.path.clone());

        let Some(rule) = config.rules.iter().find(|rule| rule.matches(&facts)) else {
            return match config.default_upstream {
                Some(upstream) => {
                    // A client must not be able to claim a route.
                    let headers = config.route_header.into_iter().map(HeaderOp::Remove);
                    continue_with(normalized, upstream, headers.collect(), vec![])
                }
                None => respond(
                    404,
                    Some("application/json"),
                    br#"{"error":"no route"}"#.to_vec(),
                ),
            };
        };

        match &rule.action {
            Action::Forward { upstream, rewrite } => {
                let path = match rewrite {
                    Some(rewrite) => Some(path::replace_prefix(
                        &facts.path,
                        &rewrite.prefix,
                        &rewrite.with,
                    ))
                    .filter(|rewritten| *rewritten != req.path),
                    None => normalized,
                };
                let headers = config
                    .route_header
                    .map(|name| HeaderOp::Set((name, rule.name.clone())))
                    .into_iter()
                    .collect();
                let properties = vec![("route".to_owned(), Value::Text(rule.name.clone()))];
                continue_with(path, upstream.clone(), headers, properties)
            }
            Action::Redirect {
                status,
                location: pieces,
            } => RequestAction::Respond(Response {
                status: *status,
                headers: vec![("location".to_owned(), location(pieces, rule, &facts))],
                body: vec![],
            }),
            Action::Respond {
                status,
                body,
                content_type,
            } => {
                let content_type = content_type
                    .as_deref()
                    .or((!body.is_empty()).then_some("text/plain; charset=utf-8"));
                respond(*status, content_type, body.clone().into_bytes())
            }
        }
    }

    fn on_response(_req: Request, _resp: ResponseHead) -> ResponseChanges {
        ResponseChanges {
            status: None,
            headers: vec![],
            body: None,
        }
    }
}

export!(Router);
