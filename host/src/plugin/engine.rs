//! The process-wide plugin runtime: one wasmtime [`Engine`] with the pooling
//! allocator and an on-disk compilation cache, one [`Linker`] with every host
//! import, and ONE epoch ticker thread that drives every call deadline.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy};

use super::bindings;
use super::state::HostState;
use super::PluginError;
use crate::config::RuntimeSettings;

/// How often the epoch advances. Deadlines are whole ticks, so a plugin's
/// `timeout_ms` is honoured to within one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The shared runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    _ticker: EpochTicker,
}

impl Runtime {
    pub fn new(settings: &RuntimeSettings) -> Result<Runtime, PluginError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // Keep guest stack overflows well inside the fiber stack.
        config.max_wasm_stack(512 * 1024);

        let mut pooling = wasmtime::PoolingAllocationConfig::default();
        pooling.total_component_instances(settings.max_instances);
        // A component may hold several core instances and memories (e.g.
        // JS and Python guests, or a preview-1 adapter).
        pooling.total_core_instances(settings.max_instances.saturating_mul(4));
        pooling.total_memories(settings.max_instances.saturating_mul(2));
        pooling.total_tables(settings.max_instances.saturating_mul(4));
        pooling.max_memory_size(settings.max_memory_bytes as usize);
        pooling.total_stacks(settings.max_instances);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));

        std::fs::create_dir_all(&settings.cache_dir).map_err(|e| PluginError::Runtime {
            message: format!(
                "cannot create cache dir {}: {e}",
                settings.cache_dir.display()
            ),
        })?;
        let mut cache_config = CacheConfig::new();
        cache_config.with_directory(&settings.cache_dir);
        let cache = Cache::new(cache_config).map_err(|e| PluginError::Runtime {
            message: format!("compilation cache: {e:#}"),
        })?;
        config.cache(Some(cache));

        let engine = Engine::new(&config).map_err(|e| PluginError::Runtime {
            message: format!("engine: {e:#}"),
        })?;
        let linker = Self::build_linker(&engine).map_err(|e| PluginError::Runtime {
            message: format!("linker: {e:#}"),
        })?;
        // Without the ticker no deadline would ever fire: refuse to start.
        let ticker = EpochTicker::start(engine.clone()).map_err(|e| PluginError::Runtime {
            message: format!("cannot start the epoch ticker thread: {e}"),
        })?;
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                _ticker: ticker,
            }),
        })
    }

    fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
        let mut linker = Linker::new(engine);
        // WASI is linked because every language's standard library imports
        // it, but the context grants nothing: no files, no env, no sockets.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| {
            state
        })?;
        Ok(linker)
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn linker(&self) -> &Linker<HostState> {
        &self.inner.linker
    }

    /// Compile (or fetch from the disk cache) a component.
    pub fn compile(&self, path: &Path) -> Result<Component, PluginError> {
        Component::from_file(&self.inner.engine, path).map_err(|e| PluginError::Load {
            message: format!("{}: not a valid component: {e:#}", path.display()),
        })
    }
}

/// The single thread that advances the engine's epoch. A ticker per request
/// would cost more than the requests; one per process costs nothing.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> std::io::Result<EpochTicker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
