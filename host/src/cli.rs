//! The `weir` command line: `run`, `check`, `echo`, `ctl`, `plugin new|build`. The only place `anyhow`
//! is used: errors here are printed for a person, not matched on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::log_queue::{LogGuard, LogQueue, DEFAULT_MAX_BYTES, MIN_MAX_BYTES};
use crate::runner::{self, StartError, Weir};
use crate::scaffold::{self, JsEngine, Lang};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "An edge HTTP reverse proxy whose every policy is a WebAssembly component plugin"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given configuration until SIGINT or SIGTERM.
    Run {
        #[arg(long, short, default_value = "proxy.toml")]
        config: PathBuf,
        /// Runtime worker threads (default: one per CPU core).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Validate the configuration and every plugin (compile, check it
    /// implements the weir:plugin world, let it validate its config), then exit.
    Check {
        #[arg(long, short, default_value = "proxy.toml")]
        config: PathBuf,
    },
    /// A demo upstream that echoes each request as JSON.
    Echo {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Label for the `x-echo-upstream` response header.
        #[arg(long, default_value = "echo")]
        name: String,
    },
    /// Talk to a running Weir's admin API: status, routes, plugins,
    /// upstreams, cache (purge), reload, drain.
    Ctl(crate::ctl::CtlArgs),
    /// Start a plugin project from a template, or build one.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create DIR/NAME: sources, a README, and NAME.toml that serves the
    /// plugin in front of a `weir echo` upstream.
    New {
        /// Lower-case letters, digits and '-'.
        name: String,
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
        /// The engine of a JavaScript plugin: QuickJS (componentize-qjs),
        /// or SpiderMonkey (componentize-js) for more of the language at a
        /// higher cost per call.
        #[arg(long, value_enum, default_value_t = JsEngine::Quickjs)]
        js_engine: JsEngine,
        /// Where the project directory is created.
        #[arg(long, default_value = "plugins")]
        dir: PathBuf,
    },
    /// Compile the project in DIR into NAME.wasm beside it (or in --out).
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Directory for NAME.wasm (default: the project's parent).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Entry point of the `weir` binary.
pub fn main() -> ExitCode {
    // Held until the process ends: dropping it flushes what is queued.
    let _log_writer = match init_tracing() {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("weir: cannot start logging: {err}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Run { threads, .. } => *threads,
        _ => None,
    };
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(threads) = threads.filter(|&t| t > 1) {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("weir: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config, .. } => run(config).await,
            Command::Check { config } => check(config).await,
            Command::Echo { listen, name } => echo(listen, name).await,
            Command::Ctl(args) => Ok(if crate::ctl::run(args).await? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }),
            // Drives compilers in child processes; nothing async.
            Command::Plugin { command } => plugin(command),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("weir: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr from a thread of their own, through a queue bounded
/// in bytes (`WEIR_LOG_QUEUE_BYTES`, default 4 MiB) that drops lines when
/// full and counts them in `weir_log_dropped_total`: a slow or stuck
/// stderr (a full pipe, a terminal scrolled back) must never stall the
/// request that logs. With synchronous writes, a heavily logging plugin
/// behind an 8 MB/s reader pushed every request's latency past 250 ms.
///
/// Plugin log lines stop queueing at three quarters of that budget, so a
/// plugin's log flood cannot crowd out Weir's own lines.
///
/// Plugin log lines (target [`crate::plugin::state::LOG_TARGET`]) have a
/// formatter of their own that does not escape ANSI sequences again: the
/// host made them printable already, and the formatter's escaping writes
/// a char at a time (half the CPU of a plugin logging 4 KB lines).
/// Everything else keeps the formatter's escaping.
fn init_tracing() -> std::io::Result<LogGuard> {
    use crate::plugin::state::LOG_TARGET;
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{filter_fn, FilterExt};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter, Layer};
    let filter = || EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let max_bytes = match std::env::var("WEIR_LOG_QUEUE_BYTES") {
        Ok(value) => match value.trim().parse::<usize>() {
            Ok(bytes) if bytes >= MIN_MAX_BYTES => bytes,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "WEIR_LOG_QUEUE_BYTES={value:?}: expected a number of bytes, \
                         at least {MIN_MAX_BYTES} (default {DEFAULT_MAX_BYTES})"
                    ),
                ))
            }
        },
        Err(_) => DEFAULT_MAX_BYTES,
    };
    let (writer, guard) = LogQueue::start(std::io::stderr(), max_bytes)?;
    // Colour only for a person at a terminal: not into files, pipes or
    // journald, and never with NO_COLOR set.
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let host = fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer.clone())
        .with_filter(filter().and(filter_fn(|meta| meta.target() != LOG_TARGET)));
    // Plugin lines stop at three quarters of the queue: a plugin's log
    // flood leaves room for Weir's own warnings.
    let plugins = fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer.capped(max_bytes / 4 * 3))
        .with_ansi_sanitization(false)
        .with_filter(filter().and(filter_fn(|meta| meta.target() == LOG_TARGET)));
    let _ = tracing_subscriber::registry()
        .with(host)
        .with(plugins)
        .try_init();
    Ok(guard)
}

async fn run(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let running = match runner::start(config).await {
        Ok(running) => running,
        Err(err) => {
            eprintln!("{err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let stopper = running.stopper();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stopper.send(true);
    });
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let reloader = running.reloader();
        if let Ok(mut hangup) = signal(SignalKind::hangup()) {
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    match reloader.reload().await {
                        Ok(()) => tracing::info!("reloaded on SIGHUP"),
                        Err(err) => tracing::error!(
                            error = %err,
                            "reload refused; the previous configuration keeps serving"
                        ),
                    }
                }
            });
        }
        if let Some(log) = running.proxy.access_log().cloned() {
            if let Ok(mut usr1) = signal(SignalKind::user_defined1()) {
                tokio::spawn(async move {
                    while usr1.recv().await.is_some() {
                        log.reopen();
                        tracing::info!("access log reopened on SIGUSR1");
                    }
                });
            }
        }
    }
    running.wait().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn check(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut summary = format!(
        "{} plugins",
        config
            .plugin_specs()
            .iter()
            .map(|spec| &spec.name)
            .collect::<std::collections::HashSet<_>>()
            .len()
    );
    if !config.routes.is_empty() {
        summary.push_str(&format!(", {} routes", config.routes.len()));
    }
    for warning in &config.warnings {
        eprintln!("{}: warning: {warning}", path.display());
    }
    let weir = Weir::new(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    match weir.load(config).await {
        Ok(_) => {
            println!("{}: ok ({summary})", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(StartError::Plugins(errors)) => {
            for err in errors {
                eprintln!("{}: {err}", path.display());
            }
            Ok(ExitCode::FAILURE)
        }
        Err(err) => Err(err.into()),
    }
}

fn plugin(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::New {
            name,
            lang,
            js_engine,
            dir,
        } => {
            let project = scaffold::new_project(&name, lang, js_engine, &dir)?;
            println!("created {} ({lang} plugin)", project.display());
            println!("  build it:  weir plugin build {}", project.display());
            println!(
                "  serve it:  weir echo & weir run --config {}",
                project.join(format!("{name}.toml")).display()
            );
        }
        PluginCommand::Build { dir, out } => {
            let wasm = scaffold::build_project(&dir, out.as_deref())?;
            let bytes = std::fs::metadata(&wasm)
                .with_context(|| format!("no component at {}", wasm.display()))?
                .len();
            println!("built {} ({bytes} bytes)", wasm.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn echo(listen: SocketAddr, name: String) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(address = %listener.local_addr()?, "echo upstream listening");
    crate::echo::serve_named(listener, &name, shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
