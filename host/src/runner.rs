//! Turning a validated [`Config`] into a serving proxy: load every plugin
//! into a [`Generation`], bind the listeners, serve until told to stop.
//! The binary and the end-to-end tests both start Weir through here.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cache::ResponseCache;
use crate::config::{Config, KvSettings};
use crate::kv::{KvStore, MemoryKv, RedisKv};
use crate::metrics::Metrics;
use crate::plugin::{Chain, Plugin, PluginError, Runtime};
use crate::proxy::{Generation, Proxy};
use crate::server;
use crate::tls::ReloadingConfig;
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
}

/// Process-wide pieces that outlive a configuration generation.
#[derive(Clone)]
pub struct Weir {
    pub runtime: Runtime,
    pub kv: Arc<dyn KvStore>,
    pub metrics: Metrics,
}

impl Weir {
    pub fn new(config: &Config) -> Result<Weir, StartError> {
        let runtime = Runtime::new(&config.runtime).map_err(|e| StartError::Plugins(vec![e]))?;
        let kv: Arc<dyn KvStore> = match &config.kv {
            KvSettings::Memory => Arc::new(MemoryKv::default()),
            KvSettings::Redis {
                url,
                prefix,
                timeout,
            } => Arc::new(RedisKv::new(url, prefix, *timeout).map_err(StartError::Kv)?),
        };
        Ok(Weir {
            runtime,
            kv,
            metrics: Metrics::default(),
        })
    }

    /// Load every plugin of the chain: compile, link, `validate-config`.
    /// Reports every broken plugin, not just the first.
    pub async fn load(&self, config: Config) -> Result<Generation, StartError> {
        let mut plugins = Vec::new();
        let mut errors = Vec::new();
        for spec in &config.chain {
            match Plugin::load(&self.runtime, spec, self.kv.clone(), self.metrics.clone()).await {
                Ok(plugin) => {
                    tracing::info!(plugin = %spec.name, file = %spec.file.display(), "plugin loaded");
                    plugins.push(Arc::new(plugin));
                }
                Err(err) => errors.push(err),
            }
        }
        if !errors.is_empty() {
            return Err(StartError::Plugins(errors));
        }
        let upstreams =
            Upstreams::new(&config.upstreams, &self.metrics).map_err(StartError::Tls)?;
        let names: HashSet<String> = upstreams.names().map(str::to_owned).collect();
        Ok(Generation {
            chain: Chain::new(plugins, names),
            upstreams,
            cache: config
                .cache
                .clone()
                .map(|settings| Arc::new(ResponseCache::new(settings))),
            config,
        })
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
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stop accepting, let in-flight requests finish (within the grace
    /// period), and wait for the listeners to close.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// Wait until the listeners stop (after a shutdown signal elsewhere).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    /// A handle that can trigger shutdown from elsewhere.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Load the config's plugins, bind every listener and start serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let weir = Weir::new(&config)?;
    let listeners = config.listeners.clone();
    let admin = config.admin;
    let limits = config.limits.clone();
    let generation = weir.load(config).await?;
    let proxy = Arc::new(Proxy::new(generation, weir.metrics.clone()));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut addrs = Vec::new();
    // One budget of connections shared by every listener.
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    for spec in listeners {
        let tls = match spec.tls {
            Some(tls) => {
                let config = ReloadingConfig::new(tls).map_err(StartError::Tls)?;
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
    if let Some(addr) = admin {
        let listener = server::bind(addr).await?;
        let bound = listener.local_addr()?;
        tracing::info!(address = %bound, "admin listening");
        admin_addr = Some(bound);
        let proxy = proxy.clone();
        let mut stopped = stopped.clone();
        tasks.spawn(async move {
            let signal = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            crate::admin::serve(listener, proxy, signal).await;
        });
    }
    Ok(Running {
        addrs,
        admin_addr,
        proxy,
        weir,
        stop,
        tasks,
    })
}
