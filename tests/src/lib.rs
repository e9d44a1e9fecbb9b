//! Helpers for Weir's end-to-end tests: start the real proxy (the `weir`
//! library, on port 0) with a config written to a temp dir, start real
//! upstream servers on port 0, and talk to both over real sockets.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub use weir::body::{self as body, Body};

/// Paths of the compiled plugins (built by `build.rs`).
pub mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
}

/// Where compiled plugins are cached between tests, so each plugin is
/// compiled once per test run rather than once per test.
fn shared_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("target")
        .join("weir-test-cache")
}

/// The runtime section every test config gets: small pools (many proxies
/// run at once in one test process) and the shared compilation cache.
pub fn runtime_section() -> String {
    format!(
        "[runtime]\ncache_dir = {:?}\nmax_instances = 64\nmax_memory_mb = 128\n",
        shared_cache_dir().display().to_string()
    )
}

/// The admin bearer token test configs use (a test-only value).
pub const ADMIN_TOKEN: &str = "weir-e2e-admin-token-0123456789";

/// An `[admin]` section on port 0 with [`ADMIN_TOKEN`] in a token file.
pub fn admin_section() -> String {
    let file = shared_cache_dir()
        .parent()
        .unwrap_or(Path::new("."))
        .join("weir-test-admin.token");
    if std::fs::read_to_string(&file).ok().as_deref() != Some(ADMIN_TOKEN) {
        std::fs::write(&file, ADMIN_TOKEN).expect("write admin token file");
    }
    format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = {:?}\n",
        file.display().to_string()
    )
}

/// Write a config to a fresh temp dir and validate it, as `weir` would.
/// `body` is everything but `[[listeners]]` and `[runtime]`, which are added.
pub fn config_file(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("proxy.toml");
    write_config(&path, body);
    (dir, path)
}

fn write_config(path: &Path, body: &str) {
    // A body's own `[runtime]` keys join the test's runtime section (TOML
    // allows one table of a name).
    let (body, runtime_keys) = split_runtime(body);
    // Top-level keys of `body` must precede any table, so the test
    // listener goes after it: a body's own [[listeners]] come first.
    let text = format!(
        "{body}\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\n{}{runtime_keys}",
        runtime_section()
    );
    std::fs::write(path, text).expect("write proxy.toml");
}

/// `body` without its `[runtime]` table, and that table's keys.
fn split_runtime(body: &str) -> (String, String) {
    let mut rest = String::new();
    let mut runtime = String::new();
    let mut in_runtime = false;
    for line in body.lines() {
        if line.trim_start().starts_with('[') {
            in_runtime = line.trim() == "[runtime]";
            if in_runtime {
                continue;
            }
        }
        let to = if in_runtime { &mut runtime } else { &mut rest };
        to.push_str(line);
        to.push('\n');
    }
    (rest, runtime)
}

/// A running Weir proxy on an ephemeral port.
pub struct TestProxy {
    /// The plain HTTP listener [`config_file`] adds (the last one).
    pub addr: SocketAddr,
    addrs: Vec<SocketAddr>,
    /// The admin listener, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    running: Option<weir::Running>,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestProxy {
    /// Start Weir with this config (see [`config_file`]). Panics with the
    /// config or plugin errors if it does not start.
    pub async fn start(body: &str) -> TestProxy {
        match TestProxy::try_start(body).await {
            Ok(proxy) => proxy,
            Err(err) => panic!("weir did not start:\n{err}"),
        }
    }

    pub async fn try_start(body: &str) -> Result<TestProxy, String> {
        let (dir, path) = config_file(body);
        let config = weir::Config::load(&path).map_err(|e| e.to_string())?;
        let running = weir::start(config).await.map_err(|e| e.to_string())?;
        Ok(TestProxy {
            addr: running.addrs[running.addrs.len() - 1],
            addrs: running.addrs.clone(),
            admin: running.admin_addr,
            running: Some(running),
            path,
            _dir: dir,
        })
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// Every listener, in config order ([`config_file`]'s is last).
    pub fn all_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn admin_url(&self, path_and_query: &str) -> String {
        let admin = self.admin.expect("config has no [admin]");
        format!("http://{admin}{path_and_query}")
    }

    /// `GET /api/v1/{what}` of the admin API, with the token (the config
    /// needs [`admin_section`]).
    pub async fn admin_api(&self, what: &str) -> serde_json::Value {
        let body = client()
            .get(self.admin_url(&format!("/api/v1/{what}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin API answers")
            .text()
            .await
            .expect("admin API body");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// The admin API's status of plugin `name` (`GET /api/v1/plugins`;
    /// the config needs [`admin_section`]).
    pub async fn plugin_status(&self, name: &str) -> serde_json::Value {
        let plugins = self.admin_api("plugins").await;
        plugins["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no plugin {name} in {plugins}"))
    }

    pub fn metrics(&self) -> &weir::metrics::Metrics {
        self.running
            .as_ref()
            .map(|r| r.proxy.metrics())
            .expect("proxy running")
    }

    /// What the KV store holds (the memory backend; `None` for Redis),
    /// after its pending expiry and eviction work has run.
    pub fn kv_usage(&self) -> Option<weir::kv::KvUsage> {
        self.running.as_ref().and_then(|r| r.weir.kv.usage())
    }

    /// Write a new config body to the proxy's file, without reloading
    /// (the file watcher, or [`TestProxy::reload`], picks it up).
    pub fn rewrite(&self, body: &str) {
        write_config(&self.path, body);
    }

    /// Reload the proxy from its file, as SIGHUP would.
    pub async fn reload(&self) -> Result<(), String> {
        let running = self.running.as_ref().expect("proxy running");
        running.reload().await.map_err(|e| e.to_string())
    }

    /// Graceful shutdown: stop accepting, drain in-flight requests.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    /// Trigger shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        if let Some(running) = &self.running {
            let _ = running.stopper().send(true);
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            let _ = running.stopper().send(true);
        }
    }
}

/// A real upstream HTTP server on an ephemeral port.
pub struct Upstream {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Upstream {
    /// Weir's own demo upstream (`weir echo`).
    pub async fn echo() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(weir::echo::serve(listener, async move {
            let _ = stopped.await;
        }));
        Upstream {
            addr,
            stop: Some(stop),
        }
    }

    /// An upstream answering with `handler`, HTTP/1.1 and h2c. Dropping it
    /// closes the listener and every open connection, like a killed server.
    pub async fn serve<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let (kill, killed) = tokio::sync::watch::channel(false);
        let handler = Arc::new(handler);
        tokio::spawn(async move {
            let _kill = kill;
            let mut stopped = stopped;
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                    _ = &mut stopped => return,
                };
                let handler = handler.clone();
                let mut killed = killed.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        // The accept loop ended: drop the connection.
                        _ = killed.changed() => {}
                    }
                });
            }
        });
        Upstream {
            addr,
            stop: Some(stop),
        }
    }

    /// `[upstreams.NAME]` pointing at this server.
    pub fn toml(&self, name: &str) -> String {
        format!("[upstreams.{name}]\nendpoints = [\"{}\"]\n", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An address nothing listens on (bound, then released).
pub async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// reqwest is built without a bundled crypto provider (no C toolchain
/// needed); install rustls' ring provider once.
fn ensure_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP/1.1 client with no connection reuse surprises.
pub fn client() -> reqwest::Client {
    ensure_crypto();
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .build()
        .expect("client")
}

/// An HTTP/2 cleartext (prior knowledge) client.
/// A `/metrics` scrape of the admin listener at `url`, with [`ADMIN_TOKEN`].
pub async fn scrape(url: &str) -> String {
    client()
        .get(url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("scrape {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("scrape {url}: {e}"))
}

pub fn h2c_client() -> reqwest::Client {
    ensure_crypto();
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .expect("client")
}

/// Send raw bytes and read the whole answer (until the server closes or
/// `Connection: close` ends it). For input a client library would refuse.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Parse the JSON the echo upstream answers with.
pub fn echo_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not echo JSON ({e}): {text}"))
}

/// The values of one header in an echo answer.
pub fn echoed_header(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A response with this status and body.
pub fn respond(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(weir::body::full(body));
    *response.status_mut() = http::StatusCode::from_u16(status).expect("status");
    response
}

/// The TOML for a `tagger` plugin named `name` with tag `tag`.
pub fn tagger_plugin(name: &str, tag: &str, extra_config: &str) -> String {
    format!(
        "[plugins.{name}]\nfile = {file:?}\n[plugins.{name}.config]\ntag = {tag:?}\n{extra_config}\n",
        file = artifacts::TAGGER
    )
}

/// The TOML for a `hostile` plugin named `name`.
pub fn hostile_plugin(name: &str, mode: &str, extra: &str) -> String {
    format!(
        "[plugins.{name}]\nfile = {file:?}\n{extra}\n[plugins.{name}.config]\nmode = {mode:?}\n",
        file = artifacts::HOSTILE
    )
}

/// The real binary running `weir run`, its log (stderr) and its address.
pub struct WeirProcess {
    pub child: tokio::process::Child,
    /// The first listener's `IP:PORT`, read from the "listening" log line.
    pub address: String,
    /// What it logged before it listened.
    pub startup: Vec<String>,
    /// The rest of its log, line by line.
    pub log: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
}

/// Start `binary run --config config` (pass `env!("CARGO_BIN_EXE_weir-e2e")`)
/// with an info-level, colourless log, and wait until it listens.
pub async fn run_weir_binary(binary: &str, config: &Path) -> WeirProcess {
    let mut command = tokio::process::Command::new(binary);
    command.args(["run", "--config"]).arg(config);
    spawn_weir(command).await
}

/// Start a prepared `weir run` command (arguments and working directory
/// set by the caller) with an info-level, colourless log, and wait until
/// it listens.
pub async fn spawn_weir(mut command: tokio::process::Command) -> WeirProcess {
    use tokio::io::AsyncBufReadExt;
    let mut child = command
        .env("WEIR_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn weir");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut log = tokio::io::BufReader::new(stderr).lines();
    let mut startup = Vec::new();
    let address = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(line) = log.next_line().await.expect("read log") {
            if let Some((_, address)) = line.split_once(" listening address=") {
                let address = address.split_whitespace().next().unwrap_or_default();
                return address.to_owned();
            }
            startup.push(line);
        }
        panic!("weir exited before listening:\n{}", startup.join("\n"));
    })
    .await
    .expect("weir listens");
    WeirProcess {
        child,
        address,
        startup,
        log,
    }
}

/// Assert that `promtool check metrics` (Debian's `prometheus`, installed
/// by scripts/test.sh) accepts a scrape: it parses it (duplicate labels, a
/// family split in two, a bad name fail) and lints it (help text, counter
/// suffixes).
pub fn assert_promtool_accepts(scrape: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (scripts/test.sh installs Debian's prometheus)");
    promtool
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(scrape.as_bytes())
        .expect("write the scrape to promtool");
    let output = promtool.wait_with_output().expect("promtool ran");
    assert!(
        output.status.success(),
        "promtool check metrics: {}\n{}{}\n--- scrape ---\n{scrape}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}
