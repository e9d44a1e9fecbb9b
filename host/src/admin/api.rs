//! The JSON admin API under `/api/v1/`, which `weir ctl` speaks. Reads
//! (`GET`) show what is serving now; writes (`POST`) purge the cache,
//! reload the configuration and drain an endpoint. Every answer is a JSON
//! object; a refusal is `{"error": "..."}` with a 4xx or 5xx status.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};

use super::{query_param, Admin};
use crate::body::{self, Body};
use crate::plugin::Plugin;
use crate::proxy::Generation;

/// Answer an `/api/v1/...` request; `None` when no endpoint has that path.
pub(super) async fn handle(
    admin: &Admin,
    method: &Method,
    path: &str,
    query: &str,
) -> Option<http::Response<Body>> {
    let generation = admin.proxy.current();
    let response = match (method, path) {
        (&Method::GET, "status") => ok(status(admin, &generation)),
        (&Method::GET, "routes") => ok(routes(&generation)),
        (&Method::GET, "plugins") => ok(plugins(admin, &generation)),
        (&Method::GET, "upstreams") => ok(json!({ "upstreams": generation.upstreams.status() })),
        (&Method::GET, "cache") => ok(cache(admin, &generation)),
        (&Method::POST, _) if admin.settings.token.is_none() => error(
            StatusCode::FORBIDDEN,
            "changes need an admin token: set [admin] token_file or WEIR_ADMIN_TOKEN",
        ),
        (&Method::POST, "cache/purge") => purge(&generation, query),
        (&Method::POST, "reload") => reload(admin).await,
        (&Method::POST, "upstreams/drain") => drain(&generation, query),
        (_, "status" | "routes" | "plugins" | "upstreams" | "cache") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
        }
        (_, "cache/purge" | "reload" | "upstreams/drain") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "use POST")
        }
        _ => return None,
    };
    Some(response)
}

fn respond(status: StatusCode, value: &impl Serialize) -> http::Response<Body> {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    let mut response = http::Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn ok(value: Value) -> http::Response<Body> {
    respond(StatusCode::OK, &value)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> http::Response<Body> {
    respond(status, &json!({ "error": message.to_string() }))
}

/// Every plugin of the generation once, with the routes that run it (the
/// fallback chain is the route `null`).
fn loaded_plugins(generation: &Generation) -> Vec<(Arc<Plugin>, Vec<Option<String>>)> {
    let mut found: Vec<(Arc<Plugin>, Vec<Option<String>>)> = Vec::new();
    let routes = std::iter::once(&generation.fallback).chain(generation.routes.iter());
    for route in routes {
        for plugin in route.chain.plugins() {
            match found.iter_mut().find(|(p, _)| Arc::ptr_eq(p, plugin)) {
                Some((_, names)) => names.push(route.name.clone()),
                None => found.push((plugin.clone(), vec![route.name.clone()])),
            }
        }
    }
    found
}

/// Sum a host counter's series by one label's value, over the series
/// whose other labels match `filter`.
fn counts_by(
    admin: &Admin,
    name: &str,
    by: &str,
    filter: &[(&str, &str)],
) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for (labels, value) in admin.proxy.metrics().counters_named(name) {
        let matches = filter
            .iter()
            .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v));
        let key = labels.iter().find(|(k, _)| k == by).map(|(_, v)| v.clone());
        if let (true, Some(key)) = (matches, key) {
            *counts.entry(key).or_insert(0) += value;
        }
    }
    counts
}

fn status(admin: &Admin, generation: &Generation) -> Value {
    let config = &generation.config;
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": admin.started.elapsed().as_secs(),
        "config": config.path.display().to_string(),
        "last_reload_success_unix": admin.proxy.metrics().host().last_reload_success.get(),
        "reloads": counts_by(admin, "weir_reloads_total", "outcome", &[]),
        "listeners": config.listeners.iter().map(|l| json!({
            "address": l.address.to_string(),
            "tls": l.tls.is_some(),
        })).collect::<Vec<_>>(),
        "admin_tls": admin.settings.tls.is_some(),
        "routes": generation.routes.iter().count(),
        "plugins": loaded_plugins(generation).len(),
        "upstreams": generation.upstreams.names().collect::<Vec<_>>(),
        "cache": generation.cache.is_some(),
    })
}

fn routes(generation: &Generation) -> Value {
    let routes: Vec<Value> = std::iter::once(&generation.fallback)
        .chain(generation.routes.iter())
        .map(|route| {
            json!({
                "name": route.name,
                "upstream": route.upstream.as_ref().or(generation.config.default_upstream.as_ref()),
                "cache": route.cache && generation.cache.is_some(),
                "plugins": route.chain.plugins().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
                "max_request_body_bytes": route.max_request_body_bytes,
                "response_timeout_ms": route.response_timeout.map(|t| t.as_millis() as u64),
            })
        })
        .collect();
    json!({ "routes": routes })
}

fn plugins(admin: &Admin, generation: &Generation) -> Value {
    let plugins: Vec<Value> = loaded_plugins(generation)
        .into_iter()
        .map(|(plugin, routes)| {
            let errors = counts_by(
                admin,
                "weir_plugin_errors_total",
                "kind",
                &[("plugin", &plugin.name)],
            );
            let mut value = serde_json::to_value(plugin.status()).unwrap_or(Value::Null);
            if let Value::Object(fields) = &mut value {
                fields.insert("routes".into(), json!(routes));
                fields.insert("errors".into(), json!(errors));
            }
            value
        })
        .collect();
    json!({ "plugins": plugins })
}

fn cache(admin: &Admin, generation: &Generation) -> Value {
    let Some(cache) = &generation.cache else {
        return json!({ "enabled": false });
    };
    json!({
        "enabled": true,
        "entries": cache.entry_count(),
        "bytes": cache.weighted_size(),
        "capacity_bytes": generation.config.cache.as_ref().map(|c| c.capacity_bytes),
        "requests": counts_by(admin, "weir_cache_requests_total", "result", &[]),
    })
}

fn purge(generation: &Generation, query: &str) -> http::Response<Body> {
    let Some(cache) = &generation.cache else {
        return error(StatusCode::NOT_FOUND, "no cache configured");
    };
    if let Some(key) = query_param(query, "key") {
        let existed = cache.purge_key(&key);
        ok(json!({ "purged": u8::from(existed), "key": key }))
    } else if let Some(prefix) = query_param(query, "prefix") {
        match cache.purge_prefix(&prefix) {
            Ok(()) => ok(json!({ "purging": prefix })),
            Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err),
        }
    } else {
        error(StatusCode::BAD_REQUEST, "give ?key=K or ?prefix=P")
    }
}

/// Reload on the data path's runtime (health checkers and pools the new
/// generation starts belong there, not on the admin thread), and wait.
async fn reload(admin: &Admin) -> http::Response<Body> {
    let Some((reloader, runtime)) = &admin.reload else {
        return error(StatusCode::NOT_IMPLEMENTED, "this listener cannot reload");
    };
    let reloader = reloader.clone();
    match runtime.spawn(async move { reloader.reload().await }).await {
        Ok(Ok(())) => ok(json!({ "reloaded": true })),
        Ok(Err(err)) => respond(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "reloaded": false,
                "error": err.to_string(),
                "serving": "the previous configuration",
            }),
        ),
        Err(err) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reload did not run: {err}"),
        ),
    }
}

fn drain(generation: &Generation, query: &str) -> http::Response<Body> {
    let (Some(upstream), Some(endpoint)) = (
        query_param(query, "upstream"),
        query_param(query, "endpoint"),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "give ?upstream=NAME&endpoint=HOST:PORT",
        );
    };
    let undo = query_param(query, "undo").is_some_and(|v| v == "true" || v == "1");
    match generation
        .upstreams
        .set_draining(&upstream, &endpoint, !undo)
    {
        Ok(()) => ok(json!({ "upstream": upstream, "endpoint": endpoint, "draining": !undo })),
        Err(err) => error(StatusCode::NOT_FOUND, err),
    }
}

/// Each plugin's pool gauges for a scrape (a shared plugin once).
pub(super) fn plugin_gauges(generation: &Generation) -> Vec<(String, usize, usize)> {
    loaded_plugins(generation)
        .into_iter()
        .map(|(plugin, _)| (plugin.name.clone(), plugin.pool_idle(), plugin.in_flight()))
        .collect()
}
