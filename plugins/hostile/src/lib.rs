//! `hostile` — a test-only plugin that misbehaves on purpose so the tests can
//! prove Weir contains it. It misbehaves only for requests whose path starts
//! with `trigger_prefix` (default `/boom`), so the same plugin keeps serving
//! every other request and the tests can show that only the bad request
//! failed.
//!
//! `mode` says how it misbehaves:
//! * runaway guests: `trap` (panic → wasm trap), `loop` (spin forever),
//!   `stack-overflow` (unbounded recursion on the wasm stack, or with
//!   `stack = "linear-memory"` on Rust's shadow stack in linear memory),
//!   `host-call-flood` (call host imports forever), `memory` (grow memory
//!   until the cap refuses);
//! * invalid answers: `bad-header-name`, `bad-header-value`,
//!   `forbidden-header` (the host-managed `header`, default
//!   `content-length`), `bad-status` (a local 99 in the request phase, 1000
//!   in the response phase), `huge-response` (a local response with a 50 MiB
//!   body, or 100 000 headers with `huge = "headers"`, the only kind the
//!   response phase can send);
//! * escape attempts that must be denied by the empty WASI context:
//!   `read-file`, `read-env`, `open-socket` (dials `address`). These never
//!   panic: they report what happened in an `x-hostile-result` response
//!   header, `denied: <errors>` or `LEAK <what leaked>`;
//! * `set-path`: rewrite the request path to `path`, byte for byte (the
//!   host must canonicalise it, or refuse an ambiguous one);
//! * `set-status` (response phase): change the status to `status` (the
//!   host must drop the content of a 204 or 304);
//! * host bounds: `log-flood` (`count` lines of `size` bytes per request,
//!   each trying to forge a host log line), `properties` (`count`
//!   properties of `size` bytes), `refuse-config` (refuse the config with
//!   `size` bytes of forgery);
//! * `metrics-flood` (request phase): record `series_per_request` counters
//!   never seen before (labelled with the request path) and, beside a valid
//!   histogram, gauge and counter, every kind of metric the host must refuse:
//!   a reserved `le` label, a 1 MiB label value, too many labels, a
//!   malformed name, a NaN, a name used as two types; and `errors_total`,
//!   the name of a host metric;
//! * `fetch`: call `http-client.fetch` on `url` (or on the request's
//!   `x-hostile-url` header, so one proxy can try many destinations),
//!   sending a forged `weir-hop: 0` and `Host: admin` the host must
//!   replace, and report in `x-hostile-result`: `status=<code>` (with
//!   ` location=<Location>`, ` bytes=<body length>` and, when the answer
//!   carried one, ` inner=[<its x-hostile-result>]`) or
//!   `error=<fetch-error case>: <message>`. Pointed at Weir itself, it
//!   calls itself until the host's hop limit stops it; `spin_before_ms`
//!   runs guest code that long first;
//! * host state: `kv-flood` sets `count` (default 100) unique keys of
//!   `value_bytes` (default 1024) each, then answers locally, reporting
//!   `set=N too-large=N other=N` in `x-hostile-result`; with
//!   `flood_at_load = true` it floods from `validate-config` too.
//!   `kv-claim` reads `key`, reports what it found in a request header
//!   `x-hostile-kv: <value> saw <found>` (appended, so several claimants
//!   on one request each add theirs), then stores `value` there;
//! * `ok`: behave.
//!
//! `phase`: `request` (default) or `response`.
//!
//! ```toml
//! [plugins.hostile]
//! file = "hostile.wasm"
//! timeout_ms = 50
//! [plugins.hostile.config]
//! mode = "open-socket"
//! address = "127.0.0.1:8080"
//! ```

use std::hint::black_box;

use serde::Deserialize;

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
});

use exports::weir::plugin::guest::Guest;
use weir::plugin::types::{
    HeaderInterest, HeaderOp, PluginInfo, Request, RequestAction, RequestChanges, Response,
    ResponseChanges, ResponseHead, Value,
};
use weir::plugin::{clock, config, http_client, kv, log, metrics};

/// The response header the escape attempts report in.
const RESULT_HEADER: &str = "x-hostile-result";

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    Trap,
    Loop,
    StackOverflow,
    HostCallFlood,
    Memory,
    BadHeaderName,
    BadHeaderValue,
    ForbiddenHeader,
    BadStatus,
    HugeResponse,
    ReadFile,
    ReadEnv,
    OpenSocket,
    SetPath,
    SetStatus,
    LogFlood,
    Properties,
    RefuseConfig,
    MetricsFlood,
    Fetch,
    KvFlood,
    KvClaim,
    Ok,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Default)]
#[serde(rename_all = "lowercase")]
enum Phase {
    #[default]
    Request,
    Response,
}

/// Where `stack-overflow` puts its frames.
#[derive(Deserialize, Clone, Copy, PartialEq, Default)]
#[serde(rename_all = "kebab-case")]
enum Stack {
    #[default]
    Wasm,
    LinearMemory,
}

/// What `huge-response` makes huge.
#[derive(Deserialize, Clone, Copy, PartialEq, Default)]
#[serde(rename_all = "lowercase")]
enum Huge {
    #[default]
    Body,
    Headers,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: Mode,
    #[serde(default)]
    phase: Phase,
    #[serde(default = "default_prefix")]
    trigger_prefix: String,
    /// `forbidden-header`: the host-managed header to set.
    #[serde(default = "default_forbidden")]
    header: String,
    /// `open-socket`: the `ip:port` to dial.
    address: Option<String>,
    #[serde(default)]
    stack: Stack,
    #[serde(default)]
    huge: Huge,
    /// `set-path`: the path to rewrite the request to, as given.
    path: Option<String>,
    /// `set-status`: the status to answer with.
    status: Option<u16>,
    /// `log-flood`: lines per request; `properties`: properties set;
    /// `kv-flood`: keys set per request.
    #[serde(default = "default_count")]
    count: u32,
    /// `log-flood`: bytes per line; `properties`: bytes per value;
    /// `refuse-config`: bytes of the refusal.
    #[serde(default = "default_size")]
    size: u32,
    /// `metrics-flood`: new series recorded per request.
    #[serde(default = "default_series_per_request")]
    series_per_request: u32,
    /// `fetch`: the URL to call when the request names none.
    url: Option<String>,
    /// `fetch`: the call's `timeout-ms`.
    fetch_timeout_ms: Option<u32>,
    /// `fetch`: run guest code this long (ms) before calling out, so the
    /// call holds a long-running turn when its callout starts.
    #[serde(default)]
    spin_before_ms: u64,
    /// `kv-flood`: the size of each value.
    #[serde(default = "default_value_bytes")]
    value_bytes: usize,
    /// `kv-flood`: flood from `validate-config` too (as `weir check` runs it).
    #[serde(default)]
    flood_at_load: bool,
    /// `kv-claim`: the key to read and write.
    key: Option<String>,
    /// `kv-claim`: the value to store.
    value: Option<String>,
}

fn default_count() -> u32 {
    100
}

fn default_size() -> u32 {
    100
}

/// A message that tries to forge a host log line (a newline, then text
/// shaped like one) and to recolour the terminal (ANSI escapes).
const FORGERY: &str =
    "hostile\n2026-12-01T00:00:00Z ERROR weir::runner: admin: auth DISABLED \u{1b}[32mok\u{1b}[0m";

fn padded(size: u32) -> String {
    let mut text = FORGERY.to_owned();
    while text.len() < size as usize {
        text.push('x');
    }
    text
}

fn default_series_per_request() -> u32 {
    200
}

fn default_value_bytes() -> usize {
    1024
}

fn default_prefix() -> String {
    "/boom".into()
}

fn default_forbidden() -> String {
    "content-length".into()
}

impl Config {
    fn parse(json: &str) -> Result<Config, String> {
        let config: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if config.mode == Mode::OpenSocket && config.address.is_none() {
            return Err("mode open-socket needs `address`".into());
        }
        if config.mode == Mode::RefuseConfig {
            return Err(padded(config.size));
        }
        if config.mode == Mode::SetStatus && config.status.is_none() {
            return Err("mode set-status needs `status`".into());
        }
        if config.mode == Mode::Fetch && config.url.is_none() {
            return Err("mode fetch needs `url`".into());
        }
        if config.mode == Mode::KvClaim && (config.key.is_none() || config.value.is_none()) {
            return Err("mode kv-claim needs `key` and `value`".into());
        }
        Ok(config)
    }

    fn get() -> Config {
        Config::parse(&config::get()).expect("config accepted at load")
    }
}

/// Misbehaviour that never returns: the host must stop it.
fn run_away(config: &Config) {
    match config.mode {
        Mode::Trap => panic!("hostile plugin: deliberate trap"),
        Mode::Loop => {
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        Mode::StackOverflow => {
            black_box(match config.stack {
                Stack::Wasm => recurse_on_wasm_stack(0),
                Stack::LinearMemory => recurse_in_linear_memory(0),
            });
        }
        Mode::HostCallFlood => flood_host_calls(),
        Mode::Memory => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 16 << 20]);
                black_box(&hoard);
            }
        }
        _ => {}
    }
}

/// Recursion whose base case is never reached (the compiler cannot know
/// that: it asks the host). Not a tail call (another host call follows the
/// recursive one), so it cannot become a loop. Its frames live on the wasm
/// stack, which the engine bounds (`max_wasm_stack`).
#[inline(never)]
fn recurse_on_wasm_stack(depth: u64) -> u64 {
    if clock::monotonic_ns() == u64::MAX {
        return depth;
    }
    let below = recurse_on_wasm_stack(depth + 1);
    below ^ clock::monotonic_ns()
}

/// The same, but every frame also holds an array in linear memory (Rust's
/// shadow stack), which overflows first: the shadow stack pointer wraps
/// below address 0, out of bounds.
#[inline(never)]
fn recurse_in_linear_memory(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let frame = black_box([depth; 16]);
    let below = recurse_in_linear_memory(black_box(depth + 1));
    below.wrapping_add(frame[(depth % 16) as usize])
}

/// Call cheap host imports forever. Each call returns promptly; only the
/// epoch check the guest runs between calls (on the loop back-edge) can end
/// this.
fn flood_host_calls() {
    let mut sum: u64 = 0;
    loop {
        log::log(log::Level::Trace, "hostile: flood");
        sum = black_box(sum.wrapping_add(clock::now_ms()));
    }
}

/// `metrics-flood`: what a plugin may try to make the host hold.
fn flood_metrics(config: &Config, path: &str) {
    let label = |name: &str, value: &str| (name.to_owned(), value.to_owned());
    // Valid: one histogram, one gauge, two counters.
    metrics::histogram_observe("flood_latency_seconds", &[], 0.003);
    metrics::gauge_set("flood_queue_depth", &[], 3.5);
    metrics::counter_add("errors_total", &[label("kind", "timeout")], 1);
    metrics::counter_add("flood_kind_total", &[], 1);
    // Refused.
    metrics::gauge_set("flood_kind_total", &[], 1.0);
    metrics::counter_add("flood_total", &[label("le", "7")], 1);
    let huge = "x".repeat(1 << 20);
    metrics::counter_add("flood_total", &[label("blob", &huge)], 1);
    let many: Vec<(String, String)> = (0..20).map(|i| label(&format!("l{i}"), "v")).collect();
    metrics::counter_add("flood_total", &many, 1);
    metrics::counter_add("bad-name", &[], 1);
    metrics::histogram_observe("flood_latency_seconds", &[], f64::NAN);
    // New series, until the host's cap refuses them.
    for i in 0..config.series_per_request {
        metrics::counter_add("flood_total", &[label("id", &format!("{path}-{i}"))], 1);
    }
}

fn unchanged() -> RequestChanges {
    RequestChanges {
        method: None,
        path: None,
        query: None,
        headers: Vec::new(),
        upstream: None,
        properties: Vec::new(),
        cache: None,
        body: None,
    }
}

/// The header operation an invalid-header mode sends.
fn bad_header(config: &Config) -> Option<HeaderOp> {
    let (name, value) = match config.mode {
        Mode::BadHeaderName => ("x-bad name\r\nx-injected", "1"),
        Mode::BadHeaderValue => ("x-hostile", "ok\r\nx-injected: 1"),
        Mode::ForbiddenHeader => (config.header.as_str(), "0"),
        _ => return None,
    };
    Some(HeaderOp::Set((name.to_owned(), value.to_owned())))
}

/// A local response too big to be reasonable.
fn huge_response(huge: Huge) -> Response {
    match huge {
        Huge::Body => Response {
            status: 200,
            headers: Vec::new(),
            body: vec![b'x'; 50 << 20],
        },
        Huge::Headers => Response {
            status: 200,
            headers: (0..100_000)
                .map(|i| (format!("x-huge-{i}"), "1".to_owned()))
                .collect(),
            body: Vec::new(),
        },
    }
}

/// Try to escape the sandbox and describe what happened.
fn escape(config: &Config) -> Option<String> {
    let attempts = match config.mode {
        Mode::ReadFile => read_files(),
        Mode::ReadEnv => read_env(),
        Mode::OpenSocket => open_sockets(config.address.as_deref().unwrap_or_default()),
        _ => return None,
    };
    let leaks: Vec<&String> = attempts.iter().filter_map(|a| a.as_ref().err()).collect();
    let text = if leaks.is_empty() {
        let denials: Vec<&str> = attempts
            .iter()
            .filter_map(|a| a.as_ref().ok().map(String::as_str))
            .collect();
        format!("denied: {}", denials.join("; "))
    } else {
        let leaks: Vec<&str> = leaks.into_iter().map(String::as_str).collect();
        format!("LEAK {}", leaks.join("; "))
    };
    Some(header_safe(&text))
}

/// One escape attempt: `Ok(why it was denied)` or `Err(what leaked)`.
type Attempt = Result<String, String>;

fn read_files() -> Vec<Attempt> {
    let read = |path: &str| match std::fs::read_to_string(path) {
        Ok(data) => Err(format!("read {path}: {}", first_line(&data))),
        Err(err) => Ok(format!("read {path}: {err}")),
    };
    let list = |path: &str| match std::fs::read_dir(path) {
        Ok(entries) => Err(format!("listed {path}: {} entries", entries.count())),
        Err(err) => Ok(format!("list {path}: {err}")),
    };
    let write = match std::fs::write("/tmp/hostile-was-here", b"1") {
        Ok(()) => Err("wrote /tmp/hostile-was-here".to_owned()),
        Err(err) => Ok(format!("write /tmp: {err}")),
    };
    vec![
        read("/etc/passwd"),
        read("etc/passwd"),
        list("/"),
        list("."),
        write,
    ]
}

fn read_env() -> Vec<Attempt> {
    let home = match std::env::var("HOME") {
        Ok(value) => Err(format!("HOME={value}")),
        Err(err) => Ok(format!("HOME: {err}")),
    };
    let vars: Vec<String> = std::env::vars().map(|(name, _)| name).collect();
    let vars = if vars.is_empty() {
        Ok("0 variables".to_owned())
    } else {
        Err(format!("variables {}", vars.join(",")))
    };
    let args: Vec<String> = std::env::args().collect();
    let args = if args.is_empty() {
        Ok("0 arguments".to_owned())
    } else {
        Err(format!("arguments {}", args.join(" ")))
    };
    let cwd = match std::env::current_dir() {
        Ok(dir) if dir.as_os_str() != "/" && !dir.as_os_str().is_empty() => {
            Err(format!("cwd {}", dir.display()))
        }
        Ok(dir) => Ok(format!("cwd {:?}", dir.display().to_string())),
        Err(err) => Ok(format!("cwd: {err}")),
    };
    vec![home, vars, args, cwd]
}

fn open_sockets(address: &str) -> Vec<Attempt> {
    use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
    let tcp = match TcpStream::connect(address) {
        Ok(_) => Err(format!("tcp connected to {address}")),
        Err(err) => Ok(format!("tcp {address}: {err}")),
    };
    let udp = match UdpSocket::bind("127.0.0.1:0").and_then(|s| s.send_to(b"hostile", address)) {
        Ok(sent) => Err(format!("udp sent {sent} bytes to {address}")),
        Err(err) => Ok(format!("udp {address}: {err}")),
    };
    let dns = match "localhost:80".to_socket_addrs() {
        Ok(mut found) => match found.next() {
            Some(addr) => Err(format!("resolved localhost to {addr}")),
            None => Ok("dns: no answer".to_owned()),
        },
        Err(err) => Ok(format!("dns: {err}")),
    };
    vec![tcp, udp, dns]
}

/// The request header that overrides `url` in `fetch` mode.
const URL_HEADER: &str = "x-hostile-url";

/// Set by the request phase when the response phase is to misbehave: the
/// `x-hostile-url` the request carried (empty: none).
const ARMED: &str = "hostile.armed";

fn url_header(req: &Request) -> Option<String> {
    req.headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(URL_HEADER))
        .map(|(_, value)| value.clone())
}

/// `fetch`: call out and describe the answer.
fn fetch(config: &Config, url: Option<String>) -> Option<String> {
    if config.mode != Mode::Fetch {
        return None;
    }
    let url = url.or_else(|| config.url.clone()).unwrap_or_default();
    let spin_until = clock::monotonic_ns().saturating_add(config.spin_before_ms * 1_000_000);
    while clock::monotonic_ns() < spin_until {
        black_box(());
    }
    let request = http_client::OutboundRequest {
        method: "GET".into(),
        url,
        // Forgeries the host must overwrite: a hop count reset to zero, and
        // another virtual host than the one allow-listed.
        headers: vec![
            ("weir-hop".into(), "0".into()),
            ("host".into(), "admin".into()),
        ],
        body: Vec::new(),
        timeout_ms: config.fetch_timeout_ms,
    };
    let text = match http_client::fetch(&request) {
        Ok(response) => {
            let header = |wanted: &str| {
                response
                    .headers
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
                    .map(|(_, value)| value.clone())
            };
            let mut text = format!("status={}", response.status);
            if let Some(location) = header("location") {
                text.push_str(&format!(" location={location}"));
            }
            text.push_str(&format!(" bytes={}", response.body.len()));
            if let Some(inner) = header(RESULT_HEADER) {
                text.push_str(&format!(" inner=[{inner}]"));
            }
            text
        }
        Err(http_client::FetchError::NotAllowed(why)) => format!("error=not-allowed: {why}"),
        Err(http_client::FetchError::InvalidRequest(why)) => {
            format!("error=invalid-request: {why}")
        }
        Err(http_client::FetchError::Connect(why)) => format!("error=connect: {why}"),
        Err(http_client::FetchError::Timeout) => "error=timeout".to_owned(),
        Err(http_client::FetchError::Protocol(why)) => format!("error=protocol: {why}"),
    };
    Some(header_safe(&text))
}

/// Set `count` keys no earlier call used, and tally how the host answered.
fn flood_kv(config: &Config) -> String {
    let value = vec![b'v'; config.value_bytes];
    // Unique across calls and instances: instances of one plugin share its
    // monotonic clock.
    let call = clock::monotonic_ns();
    let (mut set, mut too_large, mut other) = (0u32, 0u32, 0u32);
    for i in 0..config.count {
        match kv::set(&format!("flood-{call}-{i}"), &value, None) {
            Ok(()) => set += 1,
            Err(kv::KvError::TooLarge) => too_large += 1,
            Err(_) => other += 1,
        }
    }
    format!("set={set} too-large={too_large} other={other}")
}

/// Report what `key` held, then store `value` there.
fn claim_kv(config: &Config) -> HeaderOp {
    let key = config.key.as_deref().unwrap_or_default();
    let value = config.value.as_deref().unwrap_or_default();
    let found = match kv::get(key) {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(None) => "nothing".to_owned(),
        Err(err) => format!("error {err:?}"),
    };
    let stored = match kv::set(key, value.as_bytes(), None) {
        Ok(()) => String::new(),
        Err(err) => format!(", set failed: {err:?}"),
    };
    HeaderOp::Append((
        "x-hostile-kv".to_owned(),
        header_safe(&format!("{value} saw {found}{stored}")),
    ))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// Make `text` a valid header value: printable ASCII only, bounded length.
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(2000)
        .collect()
}

struct Hostile;

impl Guest for Hostile {
    fn validate_config(config: String) -> Result<PluginInfo, String> {
        let config = Config::parse(&config)?;
        if config.mode == Mode::KvFlood && config.flood_at_load {
            flood_kv(&config);
        }
        Ok(PluginInfo {
            on_request: true,
            on_response: true,
            request_body: false,
            response_body: false,
            request_headers: HeaderInterest::All,
            response_headers: HeaderInterest::All,
            connection: true,
            properties: true,
        })
    }

    fn on_request(req: Request) -> RequestAction {
        let config = Config::get();
        if !req.path.starts_with(&config.trigger_prefix) {
            return RequestAction::Continue(unchanged());
        }
        if config.phase == Phase::Response {
            // The response phase is not sent the request: arm it here.
            let url = url_header(&req).unwrap_or_default();
            return RequestAction::Continue(RequestChanges {
                properties: vec![(ARMED.to_owned(), Value::Text(url))],
                ..unchanged()
            });
        }
        run_away(&config);
        if let Some(op) = bad_header(&config) {
            return RequestAction::Continue(RequestChanges {
                headers: vec![op],
                ..unchanged()
            });
        }
        if let Some(result) = escape(&config).or_else(|| fetch(&config, url_header(&req))) {
            return RequestAction::Respond(Response {
                status: 200,
                headers: vec![(RESULT_HEADER.to_owned(), result)],
                body: Vec::new(),
            });
        }
        match config.mode {
            Mode::BadStatus => RequestAction::Respond(Response {
                status: 99,
                headers: Vec::new(),
                body: Vec::new(),
            }),
            Mode::HugeResponse => RequestAction::Respond(huge_response(config.huge)),
            Mode::KvFlood => RequestAction::Respond(Response {
                status: 200,
                headers: vec![(RESULT_HEADER.to_owned(), flood_kv(&config))],
                body: Vec::new(),
            }),
            Mode::KvClaim => RequestAction::Continue(RequestChanges {
                headers: vec![claim_kv(&config)],
                ..unchanged()
            }),
            Mode::SetPath => RequestAction::Continue(RequestChanges {
                path: config.path.clone(),
                ..unchanged()
            }),
            Mode::LogFlood => {
                let line = padded(config.size);
                for _ in 0..config.count {
                    log::log(log::Level::Warn, &line);
                }
                RequestAction::Continue(unchanged())
            }
            Mode::Properties => RequestAction::Continue(RequestChanges {
                properties: (0..config.count)
                    .map(|i| {
                        let value = "v".repeat(config.size as usize);
                        (format!("p{i}"), weir::plugin::types::Value::Text(value))
                    })
                    .collect(),
                ..unchanged()
            }),
            Mode::MetricsFlood => {
                flood_metrics(&config, &req.path);
                RequestAction::Continue(unchanged())
            }
            _ => RequestAction::Continue(unchanged()),
        }
    }

    fn on_response(resp: ResponseHead) -> ResponseChanges {
        let mut changes = ResponseChanges {
            status: None,
            headers: Vec::new(),
            body: None,
        };
        let config = Config::get();
        let armed = resp
            .properties
            .iter()
            .find_map(|(name, value)| match value {
                Value::Text(url) if name == ARMED => Some(url.clone()),
                _ => None,
            });
        let Some(url) = armed.filter(|_| config.phase == Phase::Response) else {
            return changes;
        };
        run_away(&config);
        if let Some(op) = bad_header(&config) {
            changes.headers.push(op);
        }
        if let Some(result) =
            escape(&config).or_else(|| fetch(&config, Some(url).filter(|u| !u.is_empty())))
        {
            changes
                .headers
                .push(HeaderOp::Set((RESULT_HEADER.to_owned(), result)));
        }
        match config.mode {
            Mode::BadStatus => changes.status = Some(1000),
            Mode::SetStatus => changes.status = config.status,
            Mode::HugeResponse if config.huge == Huge::Headers => {
                changes.headers = (0..100_000)
                    .map(|i| HeaderOp::Append((format!("x-huge-{i}"), "1".to_owned())))
                    .collect();
            }
            _ => {}
        }
        changes
    }
}

export!(Hostile);
