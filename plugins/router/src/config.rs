//! The router's config: the file format (`Raw*`, straight from the JSON the
//! host passes) and the checked form the request phase uses. Every check
//! runs here, once, in `validate-config`; errors name the rule.

use serde::Deserialize;
use weir_plugin::path::check_canonical;
use weir_plugin::PathPrefix;

use crate::path::{self, Pattern};

// Headers the host owns; setting one fails the plugin call, so refuse it
// as `route_header` up front.
use weir_plugin::HOST_OWNED_HEADERS;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    rules: Vec<RawRule>,
    default_upstream: Option<String>,
    route_header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    host: Option<String>,
    path_prefix: Option<String>,
    path_pattern: Option<String>,
    /// Compare `path_prefix`, `path_pattern` and the rewrite prefix in any
    /// ASCII case.
    #[serde(default)]
    path_case_insensitive: bool,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: Vec<RawHeaderCondition>,
    upstream: Option<String>,
    rewrite: Option<RawRewrite>,
    redirect: Option<RawRedirect>,
    respond: Option<RawRespond>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderCondition {
    name: String,
    equals: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRewrite {
    strip_prefix: Option<String>,
    replace_prefix: Option<String>,
    with: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedirect {
    status: u16,
    location: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRespond {
    status: u16,
    #[serde(default)]
    body: String,
    content_type: Option<String>,
}

/// The checked config, read through [`RawConfig`].
#[derive(Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    pub rules: Vec<Rule>,
    pub default_upstream: Option<String>,
    /// Request header carrying the matched rule's name to the upstream.
    pub route_header: Option<String>,
}

pub struct Rule {
    pub name: String,
    pub host: Option<HostMatch>,
    pub path_prefix: Option<PathPrefix>,
    pub path_pattern: Option<Pattern>,
    /// Upper-case; empty means any method.
    pub methods: Vec<String>,
    pub headers: Vec<HeaderCondition>,
    pub action: Action,
}

pub enum HostMatch {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any subdomain, at any
    /// depth, but not `example.com` itself.
    Subdomain(String),
}

pub struct HeaderCondition {
    /// Lower-case, as the host hands header names over.
    pub name: String,
    /// `None`: the header is present with any value.
    pub equals: Option<String>,
}

pub enum Action {
    Forward {
        upstream: String,
        rewrite: Option<Rewrite>,
    },
    Redirect {
        status: u16,
        location: Vec<Piece>,
    },
    Respond {
        status: u16,
        body: String,
        content_type: Option<String>,
    },
}

/// Replace a leading path prefix (whole segments); stripping is replacing
/// with nothing.
pub struct Rewrite {
    pub prefix: PathPrefix,
    pub with: String,
}

/// A piece of a redirect `location` template.
#[derive(Debug, PartialEq)]
pub enum Piece {
    Text(String),
    /// `{scheme}`: "http" or "https", as the client used.
    Scheme,
    /// `{host}`: the request host, without the port.
    Host,
    /// `{path}`: the request path.
    Path,
    /// `{rest}`: the path below the rule's `path_prefix`.
    Rest,
    /// `{query}`: `?` and the query string, or nothing.
    Query,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Config, String> {
        if let Some(upstream) = &raw.default_upstream {
            check_upstream_name(upstream).map_err(|e| format!("default_upstream: {e}"))?;
        }
        let route_header = raw
            .route_header
            .map(|name| check_header_name(&name).map_err(|e| format!("route_header: {e}")))
            .transpose()?;
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rules.len());
        for (i, raw_rule) in raw.rules.into_iter().enumerate() {
            let context = format!("rules[{i}] ({:?})", raw_rule.name);
            let rule = Rule::parse(raw_rule).map_err(|e| format!("{context}: {e}"))?;
            if rules.iter().any(|r| r.name == rule.name) {
                return Err(format!("{context}: name is used by an earlier rule"));
            }
            rules.push(rule);
        }
        if rules.is_empty() && raw.default_upstream.is_none() {
            return Err("no rules and no default_upstream: every request would be 404".into());
        }
        Ok(Config {
            rules,
            default_upstream: raw.default_upstream,
            route_header,
        })
    }
}

impl Rule {
    fn parse(raw: RawRule) -> Result<Rule, String> {
        if raw.name.is_empty() {
            return Err("name must not be empty".into());
        }
        let host = raw.host.as_deref().map(HostMatch::parse).transpose()?;
        let case_insensitive = raw.path_case_insensitive;
        let paths =
            raw.path_prefix.is_some() || raw.path_pattern.is_some() || raw.rewrite.is_some();
        if case_insensitive && !paths {
            return Err(
                "path_case_insensitive needs a path_prefix, path_pattern or rewrite to apply to"
                    .into(),
            );
        }
        let path_prefix = raw
            .path_prefix
            .as_deref()
            .map(|prefix| path_prefix("path_prefix", prefix, case_insensitive))
            .transpose()?;
        let path_pattern = raw
            .path_pattern
            .as_deref()
            .map(|p| {
                Pattern::parse(p)
                    .map(|pattern| pattern.case_insensitive(case_insensitive))
                    .map_err(|e| format!("path_pattern {p:?}: {e}"))
            })
            .transpose()?;
        let methods = raw
            .methods
            .iter()
            .map(|m| {
                if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    Ok(m.to_ascii_uppercase())
                } else {
                    Err(format!("methods: {m:?} is not an HTTP method"))
                }
            })
            .collect::<Result<_, _>>()?;
        let headers = raw
            .headers
            .into_iter()
            .map(|h| {
                Ok(HeaderCondition {
                    name: check_header_name(&h.name).map_err(|e| format!("headers: {e}"))?,
                    equals: h.equals,
                })
            })
            .collect::<Result<_, String>>()?;
        let action = Action::parse(
            raw.upstream,
            raw.rewrite,
            raw.redirect,
            raw.respond,
            path_prefix.is_some(),
            case_insensitive,
        )?;
        Ok(Rule {
            name: raw.name,
            host,
            path_prefix,
            path_pattern,
            methods,
            headers,
            action,
        })
    }
}

impl HostMatch {
    fn parse(host: &str) -> Result<HostMatch, String> {
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(name) => (true, name),
            None => (false, host),
        };
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
        if !valid {
            return Err(format!(
                "host {host:?}: expected a host name like \"api.example.com\" or \"*.example.com\""
            ));
        }
        let name = path::host_of(name);
        Ok(if wildcard {
            HostMatch::Subdomain(format!(".{name}"))
        } else {
            HostMatch::Exact(name)
        })
    }
}

impl Action {
    fn parse(
        upstream: Option<String>,
        rewrite: Option<RawRewrite>,
        redirect: Option<RawRedirect>,
        respond: Option<RawRespond>,
        has_path_prefix: bool,
        case_insensitive: bool,
    ) -> Result<Action, String> {
        if rewrite.is_some() && upstream.is_none() {
            return Err("rewrite needs an upstream to forward to".into());
        }
        let action = match (upstream, redirect, respond) {
            (Some(upstream), None, None) => {
                check_upstream_name(&upstream).map_err(|e| format!("upstream: {e}"))?;
                Action::Forward {
                    upstream,
                    rewrite: rewrite
                        .map(|raw| Rewrite::parse(raw, case_insensitive))
                        .transpose()?,
                }
            }
            (None, Some(redirect), None) => {
                if !matches!(redirect.status, 301 | 302 | 303 | 307 | 308) {
                    return Err(format!(
                        "redirect status {} is not a redirect (use 301, 302, 303, 307 or 308)",
                        redirect.status
                    ));
                }
                let location = parse_template(&redirect.location)
                    .map_err(|e| format!("redirect location {:?}: {e}", redirect.location))?;
                if location.contains(&Piece::Rest) && !has_path_prefix {
                    return Err(
                        "redirect location uses {rest} but the rule has no path_prefix".into(),
                    );
                }
                Action::Redirect {
                    status: redirect.status,
                    location,
                }
            }
            (None, None, Some(respond)) => {
                if !(200..=599).contains(&respond.status) {
                    return Err(format!(
                        "respond status {} must be 200..=599",
                        respond.status
                    ));
                }
                if let Some(content_type) = &respond.content_type {
                    check_header_value(content_type)
                        .map_err(|e| format!("respond content_type: {e}"))?;
                }
                Action::Respond {
                    status: respond.status,
                    body: respond.body,
                    content_type: respond.content_type,
                }
            }
            (None, None, None) => {
                return Err("no action: set one of upstream, redirect or respond".into())
            }
            _ => {
                return Err(
                    "more than one action: set only one of upstream, redirect or respond".into(),
                )
            }
        };
        Ok(action)
    }
}

impl Rewrite {
    /// The rewrite prefix follows the rule's case sensitivity: a rule that
    /// matched `/API/x` case-insensitively must rewrite it too.
    fn parse(raw: RawRewrite, case_insensitive: bool) -> Result<Rewrite, String> {
        match (raw.strip_prefix, raw.replace_prefix, raw.with) {
            (Some(prefix), None, None) => Ok(Rewrite {
                prefix: path_prefix("rewrite.strip_prefix", &prefix, case_insensitive)?,
                with: String::new(),
            }),
            (None, Some(prefix), Some(with)) => {
                let prefix = path_prefix("rewrite.replace_prefix", &prefix, case_insensitive)?;
                // The upstream gets the rewritten path as it is: it must be
                // as canonical as the ones the host hands over.
                check_canonical(&with).map_err(|e| format!("rewrite.with {e}"))?;
                Ok(Rewrite { prefix, with })
            }
            (None, Some(_), None) => Err("rewrite.replace_prefix needs `with`".into()),
            _ => Err(
                "rewrite is either { strip_prefix = \"/a\" } or { replace_prefix = \"/a\", with = \"/b\" }"
                    .into(),
            ),
        }
    }
}

/// Split a `location` template into text and `{placeholder}`s.
fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    if template.is_empty() {
        return Err("must not be empty".into());
    }
    check_header_value(template)?;
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("'}' without '{'".into());
        }
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err("'{' without '}'".into());
        };
        let piece = match &rest[open + 1..open + close] {
            "scheme" => Piece::Scheme,
            "host" => Piece::Host,
            "path" => Piece::Path,
            "rest" => Piece::Rest,
            "query" => Piece::Query,
            other => {
                return Err(format!(
                    "unknown placeholder {{{other}}} (known: {{scheme}} {{host}} {{path}} {{rest}} {{query}})"
                ))
            }
        };
        pieces.push(piece);
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Ok(pieces)
}

/// A configured prefix, refused when no canonical request path could
/// match it (the host canonicalises paths before any plugin runs).
fn path_prefix(what: &str, prefix: &str, case_insensitive: bool) -> Result<PathPrefix, String> {
    PathPrefix::new(prefix)
        .map(|prefix| prefix.case_insensitive(case_insensitive))
        .map_err(|e| format!("{what} {e}"))
}

fn check_upstream_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("upstream name must not be empty".into());
    }
    Ok(())
}

fn check_header_name(name: &str) -> Result<String, String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    let name = name.to_ascii_lowercase();
    if HOST_OWNED_HEADERS.contains(&name.as_str()) {
        return Err(format!("{name:?} is managed by the host"));
    }
    Ok(name)
}

fn check_header_value(value: &str) -> Result<(), String> {
    if value
        .bytes()
        .any(|b| !(b == b'\t' || (b' '..=b'~').contains(&b)))
    {
        return Err("must be printable ASCII (percent-encode anything else)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(json: &str) -> String {
        match weir_plugin::testing::parse::<Config>(json) {
            Ok(_) => panic!("accepted {json}"),
            Err(e) => e,
        }
    }

    #[test]
    fn templates_split_into_pieces() {
        assert_eq!(
            parse_template("https://{host}/new{rest}{query}").unwrap(),
            [
                Piece::Text("https://".into()),
                Piece::Host,
                Piece::Text("/new".into()),
                Piece::Rest,
                Piece::Query
            ]
        );
        assert!(parse_template("https://x/{nope}").is_err());
        assert!(parse_template("https://x/{path").is_err());
        assert!(parse_template("https://x/}").is_err());
    }

    #[test]
    fn bad_rules_are_refused_with_their_name() {
        let e = refused(r#"{"rules":[{"name":"a"}]}"#);
        assert!(e.contains("rules[0] (\"a\"): no action"), "{e}");
        let e = refused(r#"{"rules":[{"name":"a","redirect":{"status":200,"location":"/"}}]}"#);
        assert!(e.contains("not a redirect"), "{e}");
        let e =
            refused(r#"{"rules":[{"name":"a","upstream":"u","rewrite":{"strip_prefix":"api"}}]}"#);
        assert!(e.contains("must start with '/'"), "{e}");
        let e = refused(r#"{"rules":[{"name":"a","upstream":"u","path_pattern":"/a/**/b"}]}"#);
        assert!(e.contains("path_pattern"), "{e}");
        let e = refused(r#"{"rules":[{"name":"a","upstream":"u"},{"name":"a","upstream":"u"}]}"#);
        assert!(e.contains("rules[1]"), "{e}");
        let e = refused(r#"{"route_header":"host","default_upstream":"u"}"#);
        assert!(e.contains("managed by the host"), "{e}");
        let e = refused(r#"{"rules":[{"name":"a","upstream":"u","path_case_insensitive":true}]}"#);
        assert!(
            e.contains("path_case_insensitive needs a path_prefix"),
            "{e}"
        );
        let e = refused(r#"{"rules":[{"name":"a","upstream":"u","hots":"x"}]}"#);
        assert!(e.contains("unknown field"), "{e}");
    }
}
