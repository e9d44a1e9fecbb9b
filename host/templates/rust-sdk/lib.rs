//! `{{name}}`: a Weir plugin.
//!
//! Request phase: sets the request header `x-hello` to the configured
//! message, so the upstream sees it. Response phase: sets `x-plugin:
//! {{name}}` on the answer.

use serde::Deserialize;
use weir_plugin::{Action, Info, Plugin, Request, ResponseChanges, ResponseHead};

/// The `[plugins.{{name}}.config]` table. Unknown keys are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_message")]
    message: String,
}

fn default_message() -> String {
    "hello from {{name}}".into()
}

struct MyPlugin;

impl Plugin for MyPlugin {
    type Config = Config;

    /// Given nothing it does not read: no header, connection or property.
    fn info(_: &Config) -> Info {
        Info::both_phases()
            .request_headers(std::iter::empty::<String>())
            .response_headers(std::iter::empty::<String>())
            .connection(false)
            .properties(false)
    }

    /// Runs once at load: `Err` makes Weir refuse to start.
    fn validate(config: &Config) -> Result<(), String> {
        if config.message.is_empty() || config.message.chars().any(char::is_control) {
            return Err("message must be non-empty text without control characters".into());
        }
        Ok(())
    }

    fn on_request(config: &Config, _req: &Request) -> Action {
        Action::next().set_header("x-hello", &config.message).into()
    }

    fn on_response(_: &Config, _resp: &ResponseHead) -> ResponseChanges {
        ResponseChanges::new().set_header("x-plugin", "{{name}}")
    }
}

weir_plugin::export_plugin!(MyPlugin);
