//! Weir: an edge HTTP reverse proxy whose every policy is a WebAssembly
//! component plugin.
//!
//! Request path: [`server`] accepts → [`canonical`] fixes the one view of the
//! request → [`proxy`] runs the [`plugin`] chain's
//! request phase → [`upstream`] forwards → the chain's response phase →
//! client. [`config`] validates `proxy.toml` once; [`runner`] wires it all.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod body;
pub mod cache;
pub mod canonical;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod echo;
pub mod error;
pub mod headers;
pub mod kv;
pub mod log_queue;
pub mod metrics;
pub mod otel;
pub mod plugin;
pub mod proxy;
pub mod route;
pub mod runner;
pub mod scaffold;
pub mod server;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use runner::{start, Running, StartError, Weir};
