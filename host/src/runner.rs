//! Turning a validated [`Config`] into a serving proxy: load every plugin
//! into a [`Generation`], bind the listeners, serve until told to stop.
//! The binary and the end-to-end tests both start Weir through here.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::cache::ResponseCache;
use crate::config::{Config, KvSettings, PluginSpec};
use crate::kv::{KvStore, MemoryKv, RedisKv};
use crate::metrics::Metrics;
use crate::otel::Traces;
use crate::plugin::outbound::OwnListeners;
use crate::plugin::{Chain, Plugin, PluginError, Runtime};
use crate::proxy::{Generation, Proxy, Route};
use crate::route::Router;
use crate::server;
use crate::tls::{ReloadingConfig, Versions};
use crate::upstream::Upstreams;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Plugins(Vec<PluginError>),
    #[error(transparent)]
    Bind(#[from] std::io::Error),
    #[error("kv: {0}")]
    Kv(crate::kv::KvError),
    #[error(transparent)]
    Tls(crate::tls::TlsError),
    #[error("{0}")]
    Config(crate::config::ConfigErrors),
    #[error(transparent)]
    AccessLog(crate::access_log::OpenError),
    #[error(transparent)]
    Traces(crate::otel::TraceError),
    /// A blocking step (file reads, parsing) panicked or was cancelled.
    #[error("loading failed: {0}")]
    Blocking(String),
}

/// Process-wide pieces that outlive a configuration generation.
#[derive(Clone)]
pub struct Weir {
    pub runtime: Runtime,
    pub kv: Arc<dyn KvStore>,
    pub metrics: Metrics,
    /// Where Weir listens, which plugins' callouts must not reach by name.
    pub listeners: OwnListeners,
    /// One reload at a time, whoever asks (SIGHUP, the file watcher, the
    /// admin API): two interleaved could swap in the older config last.
    reloading: Arc<tokio::sync::Mutex<()>>,
}

impl Weir {
    pub fn new(config: &Config) -> Result<Weir, StartError> {
        let runtime = Runtime::new(&config.runtime).map_err(|e| StartError::Plugins(vec![e]))?;
        let kv: Arc<dyn KvStore> = match &config.kv {
            // Bounded (`[kv]`): `weir check` loads plugins through here
            // too, so a `validate-config` flooding the store is held to the
            // same bounds as serving.
            KvSettings::Memory(limits) => Arc::new(MemoryKv::new(*limits)),
            KvSettings::Redis(settings) => {
                Arc::new(RedisKv::new(settings).map_err(StartError::Kv)?)
            }
        };
        Ok(Weir {
            runtime,
            kv,
            metrics: Metrics::new(config.metrics),
            listeners: OwnListeners::default(),
            reloading: Arc::default(),
        })
    }

    /// Load every plugin of the chain: compile, link, `validate-config`.
    /// Reports every broken plugin, not just the first.
    pub async fn load(&self, config: Config) -> Result<Generation, StartError> {
        self.load_next(config, None).await
    }

    /// Like [`Weir::load`], keeping the previous generation's response cache
    /// when its settings did not change (a reload need not go cold).
    pub async fn load_next(
        &self,
        config: Config,
        previous: Option<&Generation>,
    ) -> Result<Generation, StartError> {
        let plugins = self.load_plugins(&config).await?;
        // Reads CA files and the system roots: not on a request worker.
        let specs = config.upstreams.clone();
        let metrics = self.metrics.clone();
        let upstreams = tokio::task::spawn_blocking(move || Upstreams::new(&specs, &metrics))
            .await
            .map_err(|err| StartError::Blocking(err.to_string()))?
            .map_err(StartError::Tls)?;
        let names: HashSet<String> = upstreams.names().map(str::to_owned).collect();
        let chain_of = |specs: &[PluginSpec]| {
            let chain = specs
                .iter()
                .filter_map(|spec| plugins.get(&(&spec.name, &spec.config_json)).cloned())
                .collect();
            Arc::new(Chain::new(
                chain,
                names.clone(),
                config.proxy.paths,
                config.limits.properties,
            ))
        };
        let fallback = Route {
            name: None,
            chain: chain_of(&config.chain),
            upstream: None,
            cache: true,
            max_request_body_bytes: config.limits.max_request_body_bytes,
            response_timeout: None,
            requests: self.metrics.route_requests(None),
            duration: self.metrics.host().request_duration(None),
        };
        let routes: Vec<_> = config
            .routes
            .iter()
            .map(|spec| {
                let route = Route {
                    name: Some(spec.name.clone()),
                    chain: chain_of(&spec.chain),
                    upstream: spec.upstream.clone(),
                    cache: spec.cache,
                    max_request_body_bytes: spec.max_request_body_bytes,
                    response_timeout: spec.response_timeout,
                    requests: self.metrics.route_requests(Some(&spec.name)),
                    duration: self.metrics.host().request_duration(Some(&spec.name)),
                };
                (spec.matcher.clone(), route)
            })
            .collect();
        let has_plugins = !plugins.is_empty();
        self.metrics
            .keep_routes(&config.routes.iter().map(|r| r.name.as_str()).collect());
        Ok(Generation {
            routes: Router::new(routes),
            fallback,
            has_plugins,
            upstreams: Arc::new(upstreams),
            cache: config.cache.clone().map(|settings| {
                previous
                    .and_then(|p| p.cache.clone())
                    .filter(|cache| *cache.settings() == settings)
                    .unwrap_or_else(|| {
                        Arc::new(ResponseCache::new(settings).with_metrics(&self.metrics))
                    })
            }),
            config,
        })
    }

    /// Every plugin the config's chains use: each file compiled once, each
    /// distinct config of it validated once and given its own instances.
    async fn load_plugins<'c>(
        &self,
        config: &'c Config,
    ) -> Result<HashMap<(&'c String, &'c String), Arc<Plugin>>, StartError> {
        let mut components = HashMap::new();
        let mut plugins = HashMap::new();
        let mut errors = Vec::new();
        for spec in config.plugin_specs() {
            let component = match components.get(&spec.file) {
                Some(component) => component,
                None => match self.runtime.compile(&spec.file).await {
                    Ok(component) => components.entry(spec.file.clone()).or_insert(component),
                    Err(err) => {
                        errors.push(err);
                        continue;
                    }
                },
            };
            let (kv, metrics) = (self.kv.clone(), self.metrics.clone());
            match Plugin::load(&self.runtime, component, spec, kv, metrics, &self.listeners).await {
                Ok(plugin) => {
                    tracing::info!(plugin = %spec.name, file = %spec.file.display(), "plugin loaded");
                    plugins.insert((&spec.name, &spec.config_json), Arc::new(plugin));
                }
                Err(err) => errors.push(err),
            }
        }
        if errors.is_empty() {
            Ok(plugins)
        } else {
            Err(StartError::Plugins(errors))
        }
    }
}

/// A running proxy. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    /// The admin listener's address, when configured.
    pub admin_addr: Option<SocketAddr>,
    pub proxy: Arc<Proxy>,
    /// Keeps the engine and its epoch ticker alive while serving.
    pub weir: Weir,
    config_path: std::path::PathBuf,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    traces: Option<Arc<Traces>>,
}

impl Running {
    /// Stop accepting, let in-flight requests finish (within the grace
    /// period), and wait for the listeners to close.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.wait().await;
    }

    /// Wait until the listeners stop (after a shutdown signal elsewhere),
    /// then send the spans still queued.
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
        if let Some(traces) = self.traces.take() {
            let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        }
    }

    /// Reload `proxy.toml` and every plugin: compiled and validated aside,
    /// then swapped in atomically; in-flight requests finish on the old
    /// chain. On any error the old generation keeps serving. Listeners,
    /// the runtime, the KV backend and the metrics limits are fixed at
    /// start (restart to change them).
    pub async fn reload(&self) -> Result<(), StartError> {
        reload(&self.weir, &self.proxy, &self.config_path).await
    }

    /// A handle that reloads from elsewhere (signal handler, file watcher).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            weir: self.weir.clone(),
            proxy: self.proxy.clone(),
            config_path: self.config_path.clone(),
        }
    }

    /// A handle that can trigger shutdown from elsewhere.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Reloads a running proxy; see [`Running::reload`].
#[derive(Clone)]
pub struct Reloader {
    weir: Weir,
    proxy: Arc<Proxy>,
    config_path: std::path::PathBuf,
}

impl Reloader {
    pub async fn reload(&self) -> Result<(), StartError> {
        reload(&self.weir, &self.proxy, &self.config_path).await
    }

    /// Reload whenever the config file or a chain plugin's file changes,
    /// checking every `every`. Runs until aborted.
    pub async fn watch(self, every: std::time::Duration) {
        let mut seen = self.fingerprint();
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            let now = self.fingerprint();
            if now == seen {
                continue;
            }
            seen = now;
            match self.reload().await {
                Ok(()) => tracing::info!(config = %self.config_path.display(), "reloaded"),
                Err(err) => {
                    tracing::error!(error = %err, "reload refused; the previous configuration keeps serving")
                }
            }
        }
    }

    /// Modification times of the config and of every plugin it loads.
    fn fingerprint(&self) -> Vec<Option<std::time::SystemTime>> {
        let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let generation = self.proxy.current();
        std::iter::once(mtime(&self.config_path))
            .chain(
                generation
                    .config
                    .plugin_specs()
                    .into_iter()
                    .map(|spec| mtime(&spec.file)),
            )
            .collect()
    }
}

/// Reload, counted in `weir_reloads_total{outcome}`; a success also sets
/// `weir_last_reload_success_timestamp_seconds`.
async fn reload(weir: &Weir, proxy: &Proxy, path: &std::path::Path) -> Result<(), StartError> {
    let _one_at_a_time = weir.reloading.lock().await;
    let result = reload_once(weir, proxy, path).await;
    let outcome = if result.is_ok() { "success" } else { "failure" };
    weir.metrics
        .counter_add("weir_reloads_total", &[("outcome", outcome)], 1);
    if result.is_ok() {
        weir.metrics.note_load();
    }
    result
}

async fn reload_once(weir: &Weir, proxy: &Proxy, path: &std::path::Path) -> Result<(), StartError> {
    // Reading and parsing files is blocking work: not on a request worker.
    let owned = path.to_owned();
    let config = tokio::task::spawn_blocking(move || Config::load(&owned))
        .await
        .map_err(|err| StartError::Blocking(err.to_string()))?
        .map_err(StartError::Config)?;
    let current = proxy.current();
    if config.runtime != current.config.runtime {
        tracing::warn!("[runtime] changes take effect at the next restart");
    }
    if config.metrics != current.config.metrics {
        tracing::warn!("[metrics] changes take effect at the next restart");
    }
    if config.access_log != current.config.access_log {
        tracing::warn!("[access_log] changes take effect at the next restart");
    }
    if config.traces != current.config.traces {
        tracing::warn!("[traces] changes take effect at the next restart");
    }
    let listeners: Vec<_> = config.listeners.iter().map(|l| l.address).collect();
    let serving: Vec<_> = current.config.listeners.iter().map(|l| l.address).collect();
    if listeners != serving {
        tracing::warn!("[[listeners]] changes take effect at the next restart");
    }
    let generation = weir.load_next(config, Some(&current)).await?;
    proxy.swap(generation);
    Ok(())
}

/// Load the config's plugins, bind every listener and start serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let weir = Weir::new(&config)?;
    let listeners = config.listeners.clone();
    let config_path = config.path.clone();
    let reload_check = config.runtime.reload_check;
    let admin = config.admin.clone();
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let limits = config.limits.clone();
    let access_log = config.access_log.clone();
    let traces = match &config.traces {
        Some(settings) => Some(Arc::new(
            Traces::start(settings, tokio::runtime::Handle::current())
                .map_err(StartError::Traces)?,
        )),
        None => None,
    };
    let generation = weir.load(config).await?;
    weir.metrics.note_load();
    let mut proxy = Proxy::new(generation, weir.metrics.clone());
    if let Some(settings) = access_log {
        let log =
            AccessLog::start(settings, weir.metrics.clone()).map_err(StartError::AccessLog)?;
        proxy = proxy.with_access_log(Arc::new(log));
    }
    if let Some(traces) = &traces {
        proxy = proxy.with_traces(traces.clone());
    }
    let proxy = Arc::new(proxy);
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut addrs = Vec::new();
    // One budget of connections shared by every listener.
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    for spec in listeners {
        let tls = match spec.tls {
            Some(tls) => {
                let config =
                    ReloadingConfig::new(tls, Versions::Tls12And13).map_err(StartError::Tls)?;
                tasks.spawn(config.clone().watch_until(stopped.clone()));
                Some(config)
            }
            None => None,
        };
        let listener = server::bind(spec.address).await?;
        let bound = listener.local_addr()?;
        tracing::info!(address = %bound, "listening");
        addrs.push(bound);
        let proxy = proxy.clone();
        let limits = limits.clone();
        let connections = connections.clone();
        let mut stopped = stopped.clone();
        tasks.spawn(async move {
            let signal = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            server::serve(listener, proxy, limits, tls, connections, signal).await;
        });
    }
    let mut admin_addr = None;
    if let Some(settings) = admin {
        let tls = match &settings.tls {
            Some(spec) => {
                Some(ReloadingConfig::new(spec.clone(), Versions::Tls13).map_err(StartError::Tls)?)
            }
            None => None,
        };
        let listener = server::bind(settings.address).await?;
        let bound = listener.local_addr()?;
        tracing::info!(address = %bound, tls = tls.is_some(), "admin listening");
        admin_addr = Some(bound);
        let reloader = Reloader {
            weir: weir.clone(),
            proxy: proxy.clone(),
            config_path: config_path.clone(),
        };
        let admin = Admin::new(
            proxy.clone(),
            settings,
            Some((reloader, tokio::runtime::Handle::current())),
        );
        let finished = serve_admin_apart(
            listener.into_std()?,
            admin,
            tls,
            limits.clone(),
            stopped.clone(),
        )?;
        tasks.spawn(async move {
            let _ = finished.await;
        });
    }
    // Now known (port 0 included): plugins' callouts may not reach these by name.
    weir.listeners
        .set(addrs.iter().copied().chain(admin_addr).collect());
    let mut running = Running {
        addrs,
        admin_addr,
        config_path,
        proxy,
        weir,
        stop,
        tasks,
        traces,
    };
    if let Some(every) = reload_check {
        let watcher = running.reloader().watch(every);
        let mut stopped = running.stop.subscribe();
        running.tasks.spawn(async move {
            tokio::select! {
                () = watcher => {}
                _ = stopped.wait_for(|stop| *stop) => {}
            }
        });
    }
    Ok(running)
}

/// Serve the admin listener on a thread and runtime of its own, so that
/// health checks and scrapes answer even while plugin calls or a flood of
/// requests keep every request worker busy. Resolves when it has stopped.
fn serve_admin_apart(
    listener: std::net::TcpListener,
    admin: Admin,
    tls: Option<Arc<ReloadingConfig>>,
    limits: crate::config::Limits,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("weir-admin".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(error = %err, "admin listener: no runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(err) => {
                        tracing::error!(error = %err, "admin listener unusable");
                        return;
                    }
                };
                let signal = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                crate::admin::serve(listener, admin, tls, &limits, signal).await;
            });
            let _ = done.send(());
        })?;
    Ok(finished)
}
