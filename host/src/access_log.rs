//! The access log: one line per request, written when its response has
//! been sent (or the client went away), as JSON (the fields of Envoy's
//! access log, by name) or in the combined log format.
//!
//! Requests never wait on the disk. A line goes into a bounded queue; a
//! thread of its own writes the queue through a buffer. When the queue is
//! full the line is dropped and counted (`weir_access_log_dropped_total`).
//! [`AccessLog::reopen`] (on SIGUSR1) makes the writer reopen its file, so
//! logrotate can move it away.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::metrics::Metrics;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    /// The Apache/nginx combined format, for tools that read only that.
    Combined,
}

/// One JSON field, by the name it is written under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Timestamp,
    RequestId,
    TraceId,
    ClientIp,
    Method,
    Authority,
    Path,
    Protocol,
    Status,
    BytesIn,
    BytesOut,
    Route,
    Upstream,
    Endpoint,
    UpstreamMs,
    TotalMs,
    Cache,
    Plugins,
}

impl Field {
    pub const ALL: [Field; 18] = [
        Field::Timestamp,
        Field::RequestId,
        Field::TraceId,
        Field::ClientIp,
        Field::Method,
        Field::Authority,
        Field::Path,
        Field::Protocol,
        Field::Status,
        Field::BytesIn,
        Field::BytesOut,
        Field::Route,
        Field::Upstream,
        Field::Endpoint,
        Field::UpstreamMs,
        Field::TotalMs,
        Field::Cache,
        Field::Plugins,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Timestamp => "timestamp",
            Field::RequestId => "request_id",
            Field::TraceId => "trace_id",
            Field::ClientIp => "client_ip",
            Field::Method => "method",
            Field::Authority => "authority",
            Field::Path => "path",
            Field::Protocol => "protocol",
            Field::Status => "status",
            Field::BytesIn => "bytes_in",
            Field::BytesOut => "bytes_out",
            Field::Route => "route",
            Field::Upstream => "upstream",
            Field::Endpoint => "endpoint",
            Field::UpstreamMs => "upstream_ms",
            Field::TotalMs => "total_ms",
            Field::Cache => "cache",
            Field::Plugins => "plugins",
        }
    }

    pub fn parse(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub target: Target,
    pub format: Format,
    /// JSON fields, in this order.
    pub fields: Vec<Field>,
    /// The share of 1xx–3xx requests logged (0–1); 4xx and 5xx always are.
    pub sample: f64,
    /// Lines the queue holds before new ones are dropped.
    pub buffer_lines: usize,
}

/// What the client sent (path, method, authority, `User-Agent`,
/// `Referer`) is cut (and marked) past this many bytes in the log: so a
/// line is a few KiB at most, and `buffer_lines` bounds the queue's bytes
/// too (a `User-Agent` may otherwise be as long as the head allows).
pub const MAX_FIELD_BYTES: usize = 1024;

/// What one plugin call did, for the `plugins` field.
#[derive(Debug, Clone)]
pub struct PluginRun {
    pub plugin: Arc<str>,
    pub phase: &'static str,
    /// When the call began (a trace's plugin span starts here).
    pub start: std::time::SystemTime,
    pub micros: u64,
    /// `continue`, `respond:<status>`, `error:deny` or `error:skip`.
    pub decision: Decision,
    /// What the plugin logged during the call, kept only when the request
    /// is traced (they become its span's events).
    pub logs: Vec<PluginLog>,
}

/// One line a plugin logged, as the host let it through (cut, escaped).
#[derive(Debug, Clone)]
pub struct PluginLog {
    pub at: std::time::SystemTime,
    pub level: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Continue,
    Respond(u16),
    Denied,
    Skipped,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Continue => f.write_str("continue"),
            Decision::Respond(status) => write!(f, "respond:{status}"),
            Decision::Denied => f.write_str("error:deny"),
            Decision::Skipped => f.write_str("error:skip"),
        }
    }
}

/// Everything one line says about a request.
#[derive(Debug, Default)]
pub struct Entry {
    pub start: Option<SystemTime>,
    pub request_id: String,
    pub trace_id: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub endpoint: Option<String>,
    pub upstream_time: Option<Duration>,
    pub total_time: Duration,
    pub cache: Option<String>,
    pub plugins: Vec<PluginRun>,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
}

/// The access log of a running proxy.
pub struct AccessLog {
    settings: Settings,
    queue: SyncSender<String>,
    reopen: Arc<AtomicBool>,
    metrics: Metrics,
    sampled: AtomicU64,
}

/// Lines dropped because the writer could not keep up.
pub const DROPPED: &str = "weir_access_log_dropped_total";

#[derive(Debug, thiserror::Error)]
#[error("access_log.path {path}: {source}")]
pub struct OpenError {
    path: String,
    source: std::io::Error,
}

impl AccessLog {
    /// Open the target and start the writer thread.
    pub fn start(settings: Settings, metrics: Metrics) -> Result<AccessLog, OpenError> {
        let out = open(&settings.target)?;
        let (queue, lines) = mpsc::sync_channel::<String>(settings.buffer_lines.max(1));
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            target: settings.target.clone(),
            out,
            reopen: reopen.clone(),
        };
        std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || writer.run(lines))
            .map_err(|source| OpenError {
                path: "thread".into(),
                source,
            })?;
        Ok(AccessLog {
            settings,
            queue,
            reopen,
            metrics,
            sampled: AtomicU64::new(0),
        })
    }

    /// Whether a request with this status is logged (sampling applies to
    /// 1xx–3xx only; deterministic, every n-th).
    pub fn wants(&self, status: u16) -> bool {
        if status >= 400 || self.settings.sample >= 1.0 {
            return true;
        }
        if self.settings.sample <= 0.0 {
            return false;
        }
        let every = (1.0 / self.settings.sample).round().max(1.0) as u64;
        self.sampled
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(every)
    }

    /// Queue the line for `entry`; dropped (and counted) if the queue is
    /// full. Never blocks.
    pub fn log(&self, entry: &Entry) {
        let line = match self.settings.format {
            Format::Json => json_line(entry, &self.settings.fields),
            Format::Combined => combined_line(entry),
        };
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.counter_add(DROPPED, &[], 1);
            }
        }
    }

    /// Reopen the file (after logrotate moved it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

fn open(target: &Target) -> Result<Box<dyn Write + Send>, OpenError> {
    match target {
        Target::Stdout => Ok(Box::new(std::io::stdout())),
        Target::File(path) => {
            let file: File = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| OpenError {
                    path: path.display().to_string(),
                    source,
                })?;
            Ok(Box::new(file))
        }
    }
}

/// How long the writer lets lines gather after a write. The queue's
/// `buffer_lines` must hold what arrives meanwhile: 8192 lines is 800k
/// lines a second.
const GATHER: Duration = Duration::from_millis(10);

struct Writer {
    target: Target,
    out: Box<dyn Write + Send>,
    reopen: Arc<AtomicBool>,
}

impl Writer {
    fn run(self, lines: mpsc::Receiver<String>) {
        let Writer {
            target,
            out,
            reopen,
        } = self;
        let mut out = BufWriter::with_capacity(64 << 10, out);
        loop {
            match lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let _ = out.write_all(line.as_bytes());
                    // Write what is queued, then flush once.
                    while let Ok(line) = lines.try_recv() {
                        let _ = out.write_all(line.as_bytes());
                    }
                    let _ = out.flush();
                    // Let lines gather before the next write: a writer
                    // parked in `recv` is woken by every line a request
                    // queues, a context switch per request on a busy core.
                    // Asleep, it is not; the queue holds what arrives.
                    std::thread::sleep(GATHER);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
            if reopen.swap(false, Ordering::AcqRel) {
                let _ = out.flush();
                match open(&target) {
                    Ok(fresh) => out = BufWriter::with_capacity(64 << 10, fresh),
                    Err(err) => {
                        tracing::error!(error = %err, "access log reopen failed; writing to the old file")
                    }
                }
            }
        }
    }
}

fn json_str(out: &mut String, value: &str) {
    // serde_json's escaping: quotes, backslashes, controls.
    match serde_json::to_string(value) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

fn json_opt(out: &mut String, value: Option<&str>) {
    match value {
        Some(value) => json_str(out, value),
        None => out.push_str("null"),
    }
}

fn millis(duration: Duration) -> String {
    format!("{:.3}", duration.as_secs_f64() * 1000.0)
}

/// `value`, cut at [`MAX_FIELD_BYTES`] (on a char boundary) and marked
/// with `…`.
pub fn clipped(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_FIELD_BYTES {
        return value.into();
    }
    let mut end = MAX_FIELD_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end]).into()
}

fn timestamp(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// One JSON object and a newline.
pub fn json_line(entry: &Entry, fields: &[Field]) -> String {
    let mut out = String::with_capacity(512);
    out.push('{');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(field.name());
        out.push_str("\":");
        match field {
            Field::Timestamp => json_str(
                &mut out,
                &timestamp(entry.start.unwrap_or_else(SystemTime::now)),
            ),
            Field::RequestId => json_str(&mut out, &entry.request_id),
            Field::TraceId => json_opt(&mut out, entry.trace_id.as_deref()),
            Field::ClientIp => json_opt(
                &mut out,
                entry.client_ip.map(|ip| ip.to_string()).as_deref(),
            ),
            Field::Method => json_str(&mut out, &entry.method),
            Field::Authority => json_str(&mut out, &entry.authority),
            Field::Path => json_str(&mut out, &clipped(&entry.path)),
            Field::Protocol => json_str(&mut out, entry.protocol),
            Field::Status => {
                let _ = write!(out, "{}", entry.status);
            }
            Field::BytesIn => {
                let _ = write!(out, "{}", entry.bytes_in);
            }
            Field::BytesOut => {
                let _ = write!(out, "{}", entry.bytes_out);
            }
            Field::Route => json_opt(&mut out, entry.route.as_deref()),
            Field::Upstream => json_opt(&mut out, entry.upstream.as_deref()),
            Field::Endpoint => json_opt(&mut out, entry.endpoint.as_deref()),
            Field::UpstreamMs => match entry.upstream_time {
                Some(time) => out.push_str(&millis(time)),
                None => out.push_str("null"),
            },
            Field::TotalMs => out.push_str(&millis(entry.total_time)),
            Field::Cache => json_opt(&mut out, entry.cache.as_deref()),
            Field::Plugins => {
                out.push('[');
                for (j, run) in entry.plugins.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    out.push_str("{\"plugin\":");
                    json_str(&mut out, &run.plugin);
                    let _ = write!(
                        out,
                        ",\"phase\":\"{}\",\"us\":{},\"decision\":\"{}\"}}",
                        run.phase, run.micros, run.decision
                    );
                }
                out.push(']');
            }
        }
    }
    out.push_str("}\n");
    out
}

/// `client - - [time] "METHOD path protocol" status bytes "referer" "agent"`.
pub fn combined_line(entry: &Entry) -> String {
    let at = time::OffsetDateTime::from(entry.start.unwrap_or_else(SystemTime::now));
    let format = time::macros::format_description!(
        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
    );
    let when = at.format(&format).unwrap_or_default();
    let quoted = |value: Option<&str>| {
        value.map_or("-".to_owned(), |v| {
            v.chars()
                .map(|c| match c {
                    '"' => "\\\"".to_owned(),
                    c if c.is_control() => c.escape_default().to_string(),
                    c => c.to_string(),
                })
                .collect()
        })
    };
    format!(
        "{} - - [{when}] \"{} {} {}\" {} {} \"{}\" \"{}\"\n",
        entry.client_ip.map_or("-".to_owned(), |ip| ip.to_string()),
        entry.method,
        quoted(Some(&clipped(&entry.path))),
        entry.protocol,
        entry.status,
        entry.bytes_out,
        quoted(entry.referer.as_deref()),
        quoted(entry.user_agent.as_deref()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_is_one_valid_object_with_every_field() {
        let entry = Entry {
            request_id: "r1".into(),
            method: "GET".into(),
            path: format!("/\"quoted\"\n{}", "x".repeat(2000)),
            protocol: "HTTP/1.1",
            status: 200,
            plugins: vec![PluginRun {
                plugin: "auth".into(),
                phase: "request",
                start: std::time::SystemTime::UNIX_EPOCH,
                micros: 12,
                decision: Decision::Respond(401),
                logs: Vec::new(),
            }],
            ..Entry::default()
        };
        let line = json_line(&entry, &Field::ALL);
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        for field in Field::ALL {
            assert!(value.get(field.name()).is_some(), "{}", field.name());
        }
        assert_eq!(value["plugins"][0]["decision"], "respond:401");
        assert!(value["path"].as_str().unwrap().len() <= MAX_FIELD_BYTES + 3);
    }

    #[test]
    fn a_combined_line_quotes_what_the_client_sent() {
        let entry = Entry {
            client_ip: Some("10.0.0.1".parse().unwrap()),
            method: "GET".into(),
            path: "/a".into(),
            protocol: "HTTP/1.1",
            status: 404,
            bytes_out: 12,
            user_agent: Some("evil\" agent".into()),
            ..Entry::default()
        };
        let line = combined_line(&entry);
        assert!(line.starts_with("10.0.0.1 - - ["), "{line}");
        assert!(
            line.ends_with("] \"GET /a HTTP/1.1\" 404 12 \"-\" \"evil\\\" agent\"\n"),
            "{line}"
        );
    }
}
