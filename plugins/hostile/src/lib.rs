//! `hostile` — a test-only plugin that misbehaves on purpose so the tests can
//! prove Weir contains it. It misbehaves only for requests whose path starts
//! with `trigger_prefix` (default `/boom`), so the same plugin keeps serving
//! every other request and the tests can show that only the bad request
//! failed.
//!
//! `mode`: `trap` (panic → wasm trap), `loop` (spin forever: the deadline must
//! stop it), `memory` (grow memory until the cap refuses), `ok` (behave).
//! `phase`: `request` (default) or `response`.

use serde::Deserialize;

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
});

use exports::weir::plugin::guest::Guest;
use weir::plugin::config;
use weir::plugin::types::{
    PluginInfo, Request, RequestAction, RequestChanges, ResponseChanges, ResponseHead,
};

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Trap,
    Loop,
    Memory,
    Ok,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Default)]
#[serde(rename_all = "lowercase")]
enum Phase {
    #[default]
    Request,
    Response,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: Mode,
    #[serde(default)]
    phase: Phase,
    #[serde(default = "default_prefix")]
    trigger_prefix: String,
}

fn default_prefix() -> String {
    "/boom".into()
}

fn config() -> Config {
    serde_json::from_str(&config::get()).expect("config accepted at load")
}

fn misbehave(mode: Mode) {
    match mode {
        Mode::Trap => panic!("hostile plugin: deliberate trap"),
        Mode::Loop => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Mode::Memory => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 16 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Mode::Ok => {}
    }
}

struct Hostile;

impl Guest for Hostile {
    fn validate_config(config: String) -> Result<PluginInfo, String> {
        serde_json::from_str::<Config>(&config).map_err(|e| e.to_string())?;
        Ok(PluginInfo {
            on_request: true,
            on_response: true,
            request_body: false,
            response_body: false,
        })
    }

    fn on_request(req: Request) -> RequestAction {
        let config = config();
        if config.phase == Phase::Request && req.path.starts_with(&config.trigger_prefix) {
            misbehave(config.mode);
        }
        RequestAction::Continue(RequestChanges {
            method: None,
            path: None,
            query: None,
            headers: Vec::new(),
            upstream: None,
            properties: Vec::new(),
            cache: None,
            body: None,
        })
    }

    fn on_response(req: Request, _resp: ResponseHead) -> ResponseChanges {
        let config = config();
        if config.phase == Phase::Response && req.path.starts_with(&config.trigger_prefix) {
            misbehave(config.mode);
        }
        ResponseChanges {
            status: None,
            headers: Vec::new(),
            body: None,
        }
    }
}

export!(Hostile);
