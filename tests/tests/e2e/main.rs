//! Weir end to end: the real proxy, real upstreams, real compiled plugins,
//! over real sockets. One binary, one module per capability.

mod access_log;
mod admin;
mod admin_ctl;
mod cache;
mod cache_rfc;
mod canonical_request;
mod chain;
mod cli;
mod dashboard;
mod example_demo;
mod failures;
mod fairness;
mod hardening;
mod kv_bounds;
mod kv_redis;
mod metrics_bounds;
mod observability;
mod outbound_bounds;
mod plugin_auth;
mod plugin_bounds;
mod plugin_cache_policy;
mod plugin_cors;
mod plugin_hostile;
mod plugin_inspector;
mod plugin_rate_limit;
mod plugin_request_id;
mod plugin_router;
mod plugin_security_headers;
mod plugin_tagger;
mod proxying;
mod reload;
mod routes;
mod scaffold;
mod tls;
mod traces;
mod upstreams;
mod working_dir;

// Fails to compile if a plugin in plugins/ has no `plugin_<name>` module.
include!(concat!(env!("OUT_DIR"), "/every_plugin_tested.rs"));
