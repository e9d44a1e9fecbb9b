//! The listener: accepts connections, serves HTTP/1.1 and h2c on the same
//! port (hyper-util's auto builder), enforces the head-size and head-read
//! limits, and drains in-flight requests on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::proxy::{ConnMeta, Proxy};
use crate::tls::{tls_info, ReloadingConfig};

/// Serve `listener` until `shutdown` resolves, then stop accepting and give
/// in-flight requests up to `limits.shutdown_grace` to finish. With `tls`,
/// connections are TLS-terminated first (handshake bounded by the
/// head-read timeout).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limits: Limits,
    tls: Option<Arc<ReloadingConfig>>,
    connections: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
) {
    let local = match listener.local_addr() {
        Ok(addr) => addr,
        Err(err) => {
            tracing::error!(error = %err, "listener has no local address");
            return;
        }
    };
    let builder = Arc::new(connection_builder(&limits));
    let listener_label = local.to_string();
    let active = Arc::new(ConnectionGauges::new(&proxy, &listener_label));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            proxy
                .metrics()
                .counter_add("weir_connections_refused_total", &[], 1);
            tokio::spawn(refuse(stream, tls.is_some()));
            continue;
        };
        let meta = ConnMeta {
            client,
            local,
            tls: None,
        };
        let connection = Connection {
            builder: builder.clone(),
            proxy: proxy.clone(),
            watcher: graceful.watcher(),
            _permit: permit,
            active: Arc::new(Active::open(active.clone())),
        };
        match &tls {
            None => {
                tokio::spawn(connection.serve(stream, meta));
            }
            Some(tls) => {
                let acceptor = TlsAcceptor::from(tls.current());
                let handshake_timeout = limits.header_read_timeout;
                let failures = proxy.metrics().counter_handle(
                    "weir_tls_handshake_failures_total",
                    &[("listener", &listener_label)],
                );
                tokio::spawn(async move {
                    let accepted =
                        tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await;
                    match accepted {
                        Ok(Ok(stream)) => {
                            let meta = ConnMeta {
                                tls: Some(tls_info(stream.get_ref().1)),
                                ..meta
                            };
                            connection.serve(stream, meta).await;
                        }
                        Ok(Err(err)) => {
                            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::debug!(client = %client, error = %err, "TLS handshake failed");
                        }
                        Err(_) => {
                            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::debug!(client = %client, "TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    tracing::info!(address = %local, "draining in-flight requests");
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period elapsed; closing remaining connections");
    }
}

/// What one accepted connection needs to be served.
struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    proxy: Arc<Proxy>,
    watcher: Watcher,
    /// Holds one of `max_connections` until the connection ends.
    _permit: OwnedSemaphorePermit,
    active: Arc<Active>,
}

/// A listener's `weir_connections_active` series, one per protocol.
struct ConnectionGauges([crate::metrics::Gauge; 3]);

/// Indexes into [`ConnectionGauges`].
const PENDING: u8 = 0;
const HTTP1: u8 = 1;
const H2: u8 = 2;

impl ConnectionGauges {
    fn new(proxy: &Proxy, listener: &str) -> ConnectionGauges {
        let host = proxy.metrics().host();
        ConnectionGauges(["pending", "http1", "h2"].map(|p| host.connections(listener, p)))
    }
}

/// One open connection in `weir_connections_active`, counted as `pending`
/// until its first request names the protocol, until dropped.
struct Active {
    gauges: Arc<ConnectionGauges>,
    protocol: std::sync::atomic::AtomicU8,
}

impl Active {
    fn open(gauges: Arc<ConnectionGauges>) -> Active {
        gauges.0[usize::from(PENDING)].inc();
        Active {
            gauges,
            protocol: std::sync::atomic::AtomicU8::new(PENDING),
        }
    }

    /// A request arrived: the first one moves the connection from
    /// `pending` to its protocol. Later ones cost one relaxed load.
    fn saw(&self, version: http::Version) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.protocol.load(Relaxed) != PENDING {
            return;
        }
        let protocol = if version == http::Version::HTTP_2 {
            H2
        } else {
            HTTP1
        };
        if self
            .protocol
            .compare_exchange(PENDING, protocol, Relaxed, Relaxed)
            .is_ok()
        {
            self.gauges.0[usize::from(PENDING)].dec();
            self.gauges.0[usize::from(protocol)].inc();
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let protocol = self.protocol.load(std::sync::atomic::Ordering::Relaxed);
        self.gauges.0[usize::from(protocol)].dec();
    }
}

/// Over `max_connections`: answer a plain-HTTP client with a `503` it can
/// read, then close. (A TLS client is closed: answering would cost a
/// handshake, which is what the limit protects.)
async fn refuse(mut stream: TcpStream, tls: bool) {
    if !tls {
        let body = "503 Service Unavailable: too many connections\n";
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            stream.write_all(response.as_bytes()),
        )
        .await;
        let _ = stream.shutdown().await;
    }
}

impl Connection {
    async fn serve<I>(self, io: I, meta: ConnMeta)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let client = meta.client;
        let meta = Arc::new(meta);
        let proxy = self.proxy;
        let active = self.active;
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            active.saw(req.version());
            let proxy = proxy.clone();
            let meta = meta.clone();
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, &meta).await) }
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        if let Err(err) = self.watcher.watch(connection).await {
            tracing::debug!(client = %client, error = %err, "connection ended with error");
        }
    }
}

fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_pending_reset_streams.max(1) * 50)
        .keep_alive_interval(Duration::from_secs(30));
    builder
}

/// Bind a listener, naming the address on failure.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Bounds of a small internal HTTP service.
#[derive(Debug, Clone, Copy)]
pub struct SimpleLimits {
    pub header_read_timeout: Option<Duration>,
    pub max_header_bytes: usize,
    pub max_connections: usize,
}

impl Default for SimpleLimits {
    fn default() -> Self {
        SimpleLimits {
            header_read_timeout: Some(Duration::from_secs(10)),
            max_header_bytes: 64 << 10,
            max_connections: 1024,
        }
    }
}

/// Serve a small internal HTTP service (the admin listener, `weir echo`)
/// until `shutdown` resolves: HTTP/1.1 or h2c, `handler` per request, with
/// a head-read timeout, a head-size cap and a connection cap (beyond it a
/// connection is closed at once).
pub async fn serve_simple<F, Fut>(
    listener: TcpListener,
    name: &'static str,
    handler: F,
    limits: SimpleLimits,
    tls: Option<Arc<ReloadingConfig>>,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<crate::body::Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(limits.max_header_bytes.max(8192));
    if let Some(timeout) = limits.header_read_timeout {
        builder.http1().header_read_timeout(timeout);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(service = name, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(service = name, "connection refused: at max_connections");
            drop(stream);
            continue;
        };
        let builder = builder.clone();
        let handler = handler.clone();
        let acceptor = tls.as_ref().map(|tls| TlsAcceptor::from(tls.current()));
        let handshake_timeout = limits
            .header_read_timeout
            .unwrap_or(Duration::from_secs(10));
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let response = handler(req);
                async move { Ok::<_, std::convert::Infallible>(response.await) }
            });
            let served = match acceptor {
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(service = name, client = %client, error = %err, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(service = name, client = %client, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(err) = served {
                tracing::debug!(service = name, error = %err, "connection error");
            }
        });
    }
}
