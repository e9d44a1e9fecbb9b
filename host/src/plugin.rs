//! The plugin runtime: loading components, running one call in an isolated,
//! bounded instance, and the chain that runs every plugin per phase.
//!
//! Lifecycle (the same words are used in WIT, spans and docs):
//! * **load** — compile (or fetch from the disk cache), link against the
//!   `weir:plugin` world into an `InstancePre`, and call `validate-config`
//!   once. Never on the request path.
//! * **request phase** — `on-request`, chain order.
//! * **response phase** — `on-response`, reverse chain order.

pub mod bindings;
pub mod chain;
mod compat;
mod contract;
pub mod convert;
pub mod engine;
mod instance;
pub mod outbound;
pub mod state;
mod throttle;
pub mod view;

pub use chain::{Chain, Exchange, RequestOutcome};
pub use engine::Runtime;
pub use instance::Plugin;

/// A plugin-supplied string made safe to print in a log line, `weir check`
/// output or an error: control characters (newlines, ANSI escapes, …) are
/// escaped so it can neither forge a host log line nor recolour a terminal,
/// and it is cut at `max` bytes with a marker saying how much was left out.
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 32);
    let mut rest = text;
    // Runs of plain text are copied whole: a plugin logging 4 KB lines
    // spent most of its log call pushing them a char at a time.
    while let Some(first) = rest.chars().next() {
        let room = max.saturating_sub(out.len());
        if room == 0 {
            out.push_str(&format!("…[{} more bytes]", rest.len()));
            break;
        }
        if needs_escape(first) {
            out.extend(first.escape_default());
            rest = &rest[first.len_utf8()..];
            continue;
        }
        let run = plain_run(rest);
        // Up to the room left, on a char boundary; a char that starts
        // within the room is kept whole.
        let mut take = run.min(room);
        while !rest.is_char_boundary(take) {
            take += 1;
        }
        out.push_str(&rest[..take]);
        rest = &rest[take..];
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// The length of `text`'s leading run of chars that need no escape.
///
/// Scans bytes, not chars: every char `needs_escape` accepts starts with a
/// byte below 0x20, 0x7f, 0xc2 (U+0080..U+009F) or 0xe2 (U+2028, U+2029),
/// so only those bytes are decoded. Each is ASCII or a UTF-8 lead byte, so
/// it sits on a char boundary.
fn plain_run(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(found) = bytes[from..]
        .iter()
        .position(|&b| b < 0x20 || b == 0x7f || b == 0xc2 || b == 0xe2)
    {
        let at = from + found;
        if text[at..].chars().next().is_some_and(needs_escape) {
            return at;
        }
        from = at + 1;
    }
    text.len()
}

#[cfg(test)]
mod printable_tests {
    use super::printable;

    /// The char-at-a-time definition `printable` must match.
    fn reference(text: &str, max: usize) -> String {
        let mut out = String::new();
        for (at, c) in text.char_indices() {
            if out.len() >= max {
                out.push_str(&format!("…[{} more bytes]", text.len() - at));
                break;
            }
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn matches_the_char_at_a_time_definition() {
        let texts = [
            "",
            "plain ascii text",
            "line\nbreak\tand \x1b[31mred\x1b[0m",
            "überall 日本語 \u{2028} sep \u{85} c1 \u{7f} del",
            "\n\n\n",
            "ééééééééé",
            "abc日本",
            // Lead bytes 0xc2 and 0xe2 of chars that need no escape.
            "£5 or €5… \u{a0}nbsp \u{2029}\u{2027}",
        ];
        for text in texts {
            for max in 0..=text.len() + 3 {
                assert_eq!(
                    printable(text, max),
                    reference(text, max),
                    "{text:?} at {max}"
                );
            }
        }
        let long = "x".repeat(5000);
        assert_eq!(printable(&long, 4096), reference(&long, 4096));
    }
}

/// Longest plugin-supplied message (a refusal, a trap, a bad answer) kept
/// in an error.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Why a plugin could not be loaded or a call failed. Every variant names
/// the plugin so logs and `weir check` say which one.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin runtime: {message}")]
    Runtime { message: String },
    #[error("{message}")]
    Load { message: String },
    #[error("plugin {plugin}: does not implement the weir:plugin@0.1.0 world: {message}")]
    Contract { plugin: String, message: String },
    #[error("plugin {plugin}: config refused: {message}")]
    Config { plugin: String, message: String },
    #[error("plugin {plugin}: trapped: {message}")]
    Trap { plugin: String, message: String },
    #[error("plugin {plugin}: exceeded its deadline of {timeout_ms} ms")]
    Timeout { plugin: String, timeout_ms: u64 },
    #[error("plugin {plugin}: exceeded its memory cap of {limit_mb} MiB")]
    MemoryLimit { plugin: String, limit_mb: u64 },
    #[error("plugin {plugin}: returned an invalid answer: {message}")]
    BadOutput { plugin: String, message: String },
    #[error("plugin {plugin}: no instance available: {message}")]
    Overload { plugin: String, message: String },
}

impl PluginError {
    /// A refused config, its message made printable.
    pub fn config(plugin: &str, message: &str) -> PluginError {
        PluginError::Config {
            plugin: plugin.to_owned(),
            message: printable(message, MAX_MESSAGE_BYTES),
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, PluginError::Timeout { .. })
    }

    pub fn is_overload(&self) -> bool {
        matches!(self, PluginError::Overload { .. })
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Runtime { .. } => "runtime",
            PluginError::Load { .. } => "load",
            PluginError::Contract { .. } => "contract",
            PluginError::Config { .. } => "config",
            PluginError::Trap { .. } => "trap",
            PluginError::Timeout { .. } => "timeout",
            PluginError::MemoryLimit { .. } => "memory",
            PluginError::BadOutput { .. } => "bad_output",
            PluginError::Overload { .. } => "overload",
        }
    }
}
