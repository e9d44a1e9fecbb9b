//! The chain: every plugin's request phase in order, then (after the cache
//! and the upstream) every response phase in reverse. A plugin that fails is
//! handled per its `on_error`: `deny` fails the request, `skip` goes on as
//! if it had answered "continue, no changes".

use std::collections::HashSet;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use http::{request, response, HeaderMap, StatusCode};
use tracing::Instrument;

use super::bindings::types::{self, RequestAction};
use super::convert;
use super::instance::{Answer, Call};
use super::state::{LogSink, PLUGIN_LOGS};
use super::view::View;
use super::{Plugin, PluginError};
use crate::access_log::{Decision, PluginRun};
use crate::canonical::{self, Canonical, PathOptions};
use crate::config::{OnError, PropertyLimits};
use crate::otel::RequestTrace;

/// One request as it flows through the chain: the request head the upstream
/// will see, plus the typed facts plugins read and set.
pub struct Exchange {
    pub id: String,
    pub route: Option<String>,
    pub scheme: &'static str,
    pub authority: String,
    pub head: request::Parts,
    pub connection: types::ConnectionInfo,
    pub properties: Vec<(String, types::Value)>,
    pub upstream: Option<String>,
    pub cache: Option<types::CacheDirectives>,
    /// How many plugin callouts led to this request (`weir-hop`, read and
    /// removed at admission): a plugin's own callouts go one deeper.
    pub hops: u8,
    /// The buffered request body, when a plugin asked for it.
    pub body: Option<Bytes>,
    /// Whether the request carried credentials as the client sent it:
    /// `Authorization`, or a header a plugin consumed (removed). The cache
    /// judges storability on this, not on the headers the chain left.
    pub credentialed: bool,
    /// Where each plugin call's time and decision is recorded, when the
    /// access log wants them (shared with the response-phase snapshot).
    pub runs: Option<Runs>,
}

/// The plugin calls of one request, in order.
pub type Runs = Arc<std::sync::Mutex<Vec<PluginRun>>>;

impl Exchange {
    /// A copy for the response phase, without the body.
    pub fn snapshot(&self) -> Exchange {
        Exchange {
            id: self.id.clone(),
            route: self.route.clone(),
            scheme: self.scheme,
            authority: self.authority.clone(),
            head: self.head.clone(),
            connection: self.connection.clone(),
            properties: self.properties.clone(),
            upstream: self.upstream.clone(),
            cache: self.cache.clone(),
            hops: self.hops,
            body: None,
            credentialed: self.credentialed,
            runs: self.runs.clone(),
        }
    }

    /// The WIT view of this request, as much of it as `view` asks for.
    fn to_wit(&self, with_body: bool, view: &View) -> types::Request {
        types::Request {
            id: self.id.clone(),
            route: self.route.clone(),
            method: self.head.method.as_str().to_owned(),
            scheme: self.scheme.to_owned(),
            authority: self.authority.clone(),
            path: self.head.uri.path().to_owned(),
            query: self.head.uri.query().map(str::to_owned),
            headers: view.request_headers.of(&self.head.headers),
            connection: view.connection.then(|| self.connection.clone()),
            upstream: self.upstream.clone(),
            properties: self.properties_for(view),
            body: if with_body {
                self.body.as_ref().map(|b| b.to_vec())
            } else {
                None
            },
        }
    }

    /// The properties, if `view` asks for them.
    fn properties_for(&self, view: &View) -> types::Properties {
        if view.properties {
            self.properties.clone()
        } else {
            Vec::new()
        }
    }
}

/// What the request phase decided.
pub enum RequestOutcome {
    /// Every plugin said continue: forward the request.
    Continue,
    /// A plugin answered locally. The `plugins_ran` plugins before it still get
    /// their response phase.
    Respond {
        plugins_ran: usize,
        response: http::Response<Bytes>,
    },
}

/// The response head (and buffered body) given to the response phase.
pub struct ResponseState {
    pub head: response::Parts,
    pub body: Option<Bytes>,
}

/// An ordered list of loaded plugins.
pub struct Chain {
    plugins: Vec<Arc<Plugin>>,
    upstreams: HashSet<String>,
    /// A path a plugin sets is canonicalised as the client's was.
    paths: PathOptions,
    properties: PropertyLimits,
}

impl Chain {
    pub fn new(
        plugins: Vec<Arc<Plugin>>,
        upstreams: HashSet<String>,
        paths: PathOptions,
        properties: PropertyLimits,
    ) -> Chain {
        Chain {
            plugins,
            upstreams,
            paths,
            properties,
        }
    }

    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    /// The plugins, in chain order.
    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Whether any plugin asked to read the request body.
    pub fn wants_request_body(&self) -> bool {
        self.plugins.iter().any(|p| p.info.request_body)
    }

    /// Whether any of the first `plugins_ran` plugins has a response phase.
    pub fn has_response_phase(&self, plugins_ran: usize) -> bool {
        self.plugins[..plugins_ran.min(self.plugins.len())]
            .iter()
            .any(|p| p.info.on_response)
    }

    /// Whether any of the first `plugins_ran` plugins asked to read the response body.
    pub fn wants_response_body(&self, plugins_ran: usize) -> bool {
        self.plugins[..plugins_ran.min(self.plugins.len())]
            .iter()
            .any(|p| p.info.response_body)
    }

    /// Run the request phase. `Err` only when a `deny` plugin failed.
    pub async fn request_phase(&self, ex: &mut Exchange) -> Result<RequestOutcome, PluginError> {
        for (index, plugin) in self.plugins.iter().enumerate() {
            if !plugin.info.on_request {
                continue;
            }
            let span = tracing::debug_span!("on_request", plugin = %plugin.name);
            let started = Timed::start(ex);
            let req = ex.to_wit(plugin.info.request_body, &plugin.view);
            let answer = started
                .run(plugin.invoke(&ex.id, ex.hops, Call::Request(req)))
                .instrument(span)
                .await;
            let action = match answer {
                Ok(Answer::Request(action)) => action,
                Ok(_) => continue,
                Err(err) => {
                    record(ex, plugin, "request", &started, failed(plugin));
                    policy(plugin, err)?;
                    continue;
                }
            };
            match action {
                RequestAction::Continue(changes) => match self.apply_request_changes(ex, changes) {
                    Ok(()) => record(ex, plugin, "request", &started, Decision::Continue),
                    Err(message) => {
                        record(ex, plugin, "request", &started, failed(plugin));
                        policy(plugin, bad_output(plugin, message))?
                    }
                },
                RequestAction::Respond(local) => match local_response(local) {
                    Ok(response) => {
                        let decision = Decision::Respond(response.status().as_u16());
                        record(ex, plugin, "request", &started, decision);
                        return Ok(RequestOutcome::Respond {
                            plugins_ran: index,
                            response,
                        });
                    }
                    Err(message) => {
                        record(ex, plugin, "request", &started, failed(plugin));
                        policy(plugin, bad_output(plugin, message))?
                    }
                },
            }
        }
        Ok(RequestOutcome::Continue)
    }

    /// Run the response phase of the first `plugins_ran` plugins, last first.
    pub async fn response_phase(
        &self,
        ex: &Exchange,
        plugins_ran: usize,
        resp: &mut ResponseState,
    ) -> Result<(), PluginError> {
        let plugins_ran = plugins_ran.min(self.plugins.len());
        // Only a 0.1.0 guest is sent the request again, as it always was.
        let mut req = None;
        for plugin in self.plugins[..plugins_ran].iter().rev() {
            if !plugin.info.on_response {
                continue;
            }
            let span = tracing::debug_span!("on_response", plugin = %plugin.name);
            let req = match plugin.response_takes_request() {
                true => Some(&*req.get_or_insert_with(|| ex.to_wit(false, &View::everything()))),
                false => None,
            };
            let head = types::ResponseHead {
                request_id: ex.id.clone(),
                status: resp.head.status.as_u16(),
                headers: plugin.view.response_headers.of(&resp.head.headers),
                properties: ex.properties_for(&plugin.view),
                body: if plugin.info.response_body {
                    resp.body.as_ref().map(|b| b.to_vec())
                } else {
                    None
                },
            };
            let started = Timed::start(ex);
            let answer = started
                .run(plugin.invoke(&ex.id, ex.hops, Call::Response(head, req)))
                .instrument(span)
                .await;
            match answer {
                Ok(Answer::Response(changes)) => match apply_response_changes(resp, changes) {
                    Ok(()) => record(ex, plugin, "response", &started, Decision::Continue),
                    Err(message) => {
                        record(ex, plugin, "response", &started, failed(plugin));
                        policy(plugin, bad_output(plugin, message))?;
                    }
                },
                Ok(_) => {}
                Err(err) => {
                    record(ex, plugin, "response", &started, failed(plugin));
                    policy(plugin, err)?
                }
            }
        }
        Ok(())
    }

    fn apply_request_changes(
        &self,
        ex: &mut Exchange,
        changes: types::RequestChanges,
    ) -> Result<(), String> {
        // Check everything first: a rejected answer must change nothing.
        let method = changes
            .method
            .as_deref()
            .map(convert::check_method)
            .transpose()?;
        let path = match changes.path.as_deref() {
            None => None,
            Some(path) => match canonical::path(path, self.paths) {
                Canonical::Path(canonical) => Some(canonical),
                Canonical::Redirect(_) => {
                    return Err(format!("path {path:?} is ambiguous"));
                }
                Canonical::Refused(why) => return Err(format!("path {path:?}: {why}")),
            },
        };
        let path_and_query = if path.is_some() || changes.query.is_some() {
            let path = path.as_deref().unwrap_or(ex.head.uri.path());
            let query = match &changes.query {
                Some(q) => Some(q.as_str()),
                None => ex.head.uri.query(),
            };
            Some(convert::check_path_and_query(path, query)?)
        } else {
            None
        };
        let ops = convert::check_header_ops(changes.headers)?;
        if let Some(name) = &changes.upstream {
            if !self.upstreams.contains(name) {
                return Err(format!("unknown upstream {name:?}"));
            }
        }
        if changes.body.is_some() && ex.body.is_none() {
            return Err("replaced the body without asking to buffer it".into());
        }
        let properties = merged_properties(&ex.properties, changes.properties, self.properties)?;

        if let Some(method) = method {
            ex.head.method = method;
        }
        if let Some(pq) = path_and_query {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(pq);
            ex.head.uri =
                http::Uri::from_parts(parts).map_err(|e| format!("invalid path rewrite: {e}"))?;
        }
        if !ops.is_empty() {
            // A plugin that removes a header the client sent has consumed
            // it (an API key, a session token): from here on the request
            // counts as authenticated, whatever the upstream sees.
            let consumed = ops.iter().any(|op| {
                matches!(op, convert::CheckedOp::Remove(name) if ex.head.headers.contains_key(name))
            });
            apply_header_ops(&mut ex.head.headers, ops)?;
            ex.credentialed |= consumed;
        }
        if let Some(upstream) = changes.upstream {
            ex.upstream = Some(upstream);
        }
        if let Some(properties) = properties {
            ex.properties = properties;
        }
        if let Some(cache) = changes.cache {
            ex.cache = Some(cache);
        }
        if let Some(body) = changes.body {
            ex.body = Some(Bytes::from(body));
        }
        Ok(())
    }
}

/// Up to this many properties held and set together, a merge scans (at
/// most 16 × 16 name comparisons); beyond, it indexes by name.
const LINEAR_MERGE: usize = 16;

/// The request's properties with a plugin's merged in (same name
/// replaces), or why the result would break a cap. `None`: nothing set.
/// Sizes are checked before anything is merged, and a merge of more than
/// a few is one pass over a name index, so an answer with many properties
/// costs the host linear time, never quadratic.
fn merged_properties(
    current: &[(String, types::Value)],
    set: Vec<(String, types::Value)>,
    limits: PropertyLimits,
) -> Result<Option<Vec<(String, types::Value)>>, String> {
    if set.is_empty() {
        return Ok(None);
    }
    if set.len() > limits.max_count {
        return Err(format!(
            "{} properties in one answer (at most {})",
            set.len(),
            limits.max_count
        ));
    }
    for (name, value) in &set {
        let size = property_size(name, value);
        if size > limits.max_bytes {
            return Err(format!(
                "property {:?} is {size} bytes (at most {})",
                super::printable(name, 64),
                limits.max_bytes
            ));
        }
    }
    let mut merged = current.to_vec();
    if current.len().saturating_add(set.len()) <= LINEAR_MERGE {
        // A request's few properties: a scan beats building an index.
        for (name, value) in set {
            match merged.iter_mut().find(|(held, _)| *held == name) {
                Some(slot) => slot.1 = value,
                None => merged.push((name, value)),
            }
        }
    } else {
        let mut index: std::collections::HashMap<String, usize> = merged
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.clone(), i))
            .collect();
        for (name, value) in set {
            match index.get(&name) {
                Some(&i) => merged[i].1 = value,
                None => {
                    index.insert(name.clone(), merged.len());
                    merged.push((name, value));
                }
            }
        }
    }
    if merged.len() > limits.max_count {
        return Err(format!(
            "{} properties on the request (at most {})",
            merged.len(),
            limits.max_count
        ));
    }
    let total: usize = merged.iter().map(|(n, v)| property_size(n, v)).sum();
    if total > limits.max_total_bytes {
        return Err(format!(
            "properties total {total} bytes (at most {})",
            limits.max_total_bytes
        ));
    }
    Ok(Some(merged))
}

/// What a property costs the host to hold, roughly: name plus value.
fn property_size(name: &str, value: &types::Value) -> usize {
    name.len()
        + match value {
            types::Value::Text(text) => text.len(),
            types::Value::Bytes(bytes) => bytes.len(),
            types::Value::Texts(texts) => texts.iter().map(|t| t.len() + 8).sum(),
            types::Value::Integer(_) | types::Value::Float(_) | types::Value::Flag(_) => 8,
        }
}

fn apply_response_changes(
    resp: &mut ResponseState,
    changes: types::ResponseChanges,
) -> Result<(), String> {
    let status = changes.status.map(convert::check_status).transpose()?;
    let ops = convert::check_header_ops(changes.headers)?;
    if changes.body.is_some() && resp.body.is_none() {
        return Err("replaced the body without asking to buffer it".into());
    }
    if !ops.is_empty() {
        apply_header_ops(&mut resp.head.headers, ops)?;
    }
    if let Some(status) = status {
        resp.head.status = status;
    }
    if let Some(body) = changes.body {
        resp.body = Some(Bytes::from(body));
    }
    Ok(())
}

/// A map this much below `http`'s limit (`HeaderMap` holds at most
/// 24,576 entries) cannot outgrow it with as many operations again.
const IN_PLACE_HEADERS: usize = 16_384;

/// Apply a plugin's checked header operations, all or none. Each one was
/// checked already; all that can still fail is the map outgrowing what
/// `http` holds, which a map and its operations far below that limit
/// cannot do, so those (every real request) are changed in place and
/// only the rest on a copy.
fn apply_header_ops(headers: &mut HeaderMap, ops: Vec<convert::CheckedOp>) -> Result<(), String> {
    if headers.len().saturating_add(ops.len()) <= IN_PLACE_HEADERS {
        return convert::apply_header_ops(headers, ops);
    }
    let mut copy = headers.clone();
    convert::apply_header_ops(&mut copy, ops)?;
    *headers = copy;
    Ok(())
}

fn local_response(local: types::Response) -> Result<http::Response<Bytes>, String> {
    let status: StatusCode = convert::check_status(local.status)?;
    let headers: HeaderMap = convert::check_header_list(local.headers)?;
    let mut response = http::Response::new(Bytes::from(local.body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

fn bad_output(plugin: &Plugin, message: String) -> PluginError {
    let err = PluginError::BadOutput {
        plugin: plugin.name.clone(),
        message: super::printable(&message, super::MAX_MESSAGE_BYTES),
    };
    plugin.metrics().counter_add(
        "weir_plugin_errors_total",
        &[("plugin", &plugin.name), ("kind", err.kind())],
        1,
    );
    tracing::warn!(plugin = %plugin.name, error = %err, "plugin answer rejected");
    err
}

/// Apply the plugin's `on_error` policy: `Ok` means go on without it.
/// Time a plugin call in its histogram, and note it for the access log
/// if that keeps a record.
fn record(ex: &Exchange, plugin: &Plugin, phase: &'static str, timed: &Timed, decision: Decision) {
    let elapsed = timed.started.elapsed();
    let histogram = usize::from(phase != "request");
    plugin.durations[histogram].observe(elapsed.as_secs_f64());
    if let Some(runs) = &ex.runs {
        let run = PluginRun {
            plugin: plugin.name.as_str().into(),
            phase,
            start: std::time::SystemTime::now()
                .checked_sub(elapsed)
                .unwrap_or(std::time::UNIX_EPOCH),
            micros: elapsed.as_micros() as u64,
            decision,
            logs: timed
                .logs
                .as_ref()
                .map(|logs| {
                    std::mem::take(&mut *logs.lock().unwrap_or_else(PoisonError::into_inner))
                })
                .unwrap_or_default(),
        };
        runs.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(run);
    }
}

/// One plugin call being timed and, when its request is traced, the log
/// lines it writes (for its span).
struct Timed {
    started: Instant,
    logs: Option<LogSink>,
}

impl Timed {
    fn start(ex: &Exchange) -> Timed {
        let traced = ex.runs.is_some() && ex.head.extensions.get::<Arc<RequestTrace>>().is_some();
        Timed {
            started: Instant::now(),
            logs: traced.then(LogSink::default),
        }
    }

    /// Run the call, its log lines going to this call's sink if it has one.
    /// Always scoped, with or without a sink: a `match` over the two would
    /// hold the call's future twice over.
    fn run<F: std::future::Future>(&self, call: F) -> impl std::future::Future<Output = F::Output> {
        PLUGIN_LOGS.scope(self.logs.clone(), call)
    }
}

/// What a failed call amounts to, by the plugin's `on_error`.
fn failed(plugin: &Plugin) -> Decision {
    match plugin.on_error {
        OnError::Deny => Decision::Denied,
        OnError::Skip => Decision::Skipped,
    }
}

fn policy(plugin: &Plugin, err: PluginError) -> Result<(), PluginError> {
    match plugin.on_error {
        OnError::Deny => Err(err),
        OnError::Skip => {
            tracing::debug!(plugin = %plugin.name, "on_error = skip: going on without it");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> types::Value {
        types::Value::Text(s.to_owned())
    }

    fn props(names: impl IntoIterator<Item = String>, value: &str) -> Vec<(String, types::Value)> {
        names.into_iter().map(|n| (n, text(value))).collect()
    }

    /// The scan (few properties) and the index (many) merge alike: a set
    /// name replaces in place, a new one goes last, a name set twice in
    /// one answer keeps its last value.
    #[test]
    fn merging_scans_few_and_indexes_many_alike() {
        let limits = PropertyLimits::default();
        for held in [2usize, 40] {
            let current = props((0..held).map(|i| format!("p{i}")), "old");
            let mut set = props(["p1".to_owned(), "new".to_owned()], "v1");
            set.push(("new".to_owned(), text("v2")));
            let merged = merged_properties(&current, set, limits)
                .expect("within limits")
                .expect("something set");
            let shown: Vec<(&str, &str)> = merged
                .iter()
                .map(|(name, value)| match value {
                    types::Value::Text(text) => (name.as_str(), text.as_str()),
                    _ => panic!("only text was set"),
                })
                .collect();
            assert_eq!(shown.len(), held + 1, "{held} held");
            assert_eq!(shown[0], ("p0", "old"));
            assert_eq!(shown[1], ("p1", "v1"));
            assert_eq!(shown[held], ("new", "v2"));
        }
    }
}
