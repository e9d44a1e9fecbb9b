//! Upstream HTTP/1.1 connections: connect (TCP, then TLS for HTTPS pools),
//! keep idle ones per endpoint, at most `max_connections_per_endpoint` open
//! per endpoint, and drive each exchange inside the task of the request
//! that owns it.
//!
//! hyper's connection future is not spawned as a task of its own: the
//! request polls it while waiting for the response head, and the response
//! body polls it while streaming. A request then costs no hop between tasks
//! (the legacy pooled client took three or four per request, a quarter of
//! the proxy's own CPU time per request in the profile). Once the body has
//! ended, the connection goes back to its endpoint's idle list; a body
//! dropped early closes it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;

use crate::body::Body;

/// How long an idle connection is kept before it is closed (the
/// upstream's own keep-alive timeout is usually longer: nginx's 75 s).
const IDLE_FOR: Duration = Duration::from_secs(60);

/// How long connections beyond `max_idle_per_endpoint` are kept idle
/// before they are closed. Closing each as it comes back would close a
/// burst's connections only to open as many again for the next burst (at
/// 1,000 busy clients, 2,000 connections closed in 15 s: BENCHMARKS.md,
/// "Soak"); HAProxy likewise purges its surplus idle connections over
/// `pool-purge-delay`. The surplus stays bounded by
/// `max_connections_per_endpoint`: every connection, idle or busy, holds
/// one of its places.
const SURPLUS_IDLE_FOR: Duration = Duration::from_secs(2);

/// How often an endpoint with idle connections closes the stale ones when
/// no request comes to do it.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A byte stream to an upstream: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

type Driver = http1::Connection<TokioIo<Box<dyn Io>>, Body>;

/// One open connection: the handle requests are sent on, and the future
/// that does the I/O. Always boxed (about 700 bytes, most of it hyper's
/// connection state): a request's future, its response body and the idle
/// list then move a pointer, not the connection.
pub struct Conn {
    sender: http1::SendRequest<Body>,
    /// `None` once the connection has ended: a finished driver must not be
    /// polled again.
    driver: Option<Driver>,
    /// Why the driver ended, if it failed.
    failed: Option<hyper::Error>,
    /// Its place among the endpoint's open connections, given back when
    /// the connection is dropped.
    _open: OwnedSemaphorePermit,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// The connection could not be opened within the connect timeout.
    ConnectTimeout,
    /// The connection could not be opened (refused, unreachable, TLS).
    Connect(String),
    /// The exchange on an open connection failed.
    Http(hyper::Error),
    /// The upstream closed the connection without answering.
    Closed,
    /// The endpoint had `max_connections_per_endpoint` open and none came
    /// free within the connect timeout; nothing was sent.
    Saturated,
}

/// Opens connections to one pool's endpoints.
pub struct Connector {
    connect_timeout: Duration,
    tls: Option<Tls>,
}

struct Tls {
    connector: TlsConnector,
    /// Overrides the name sent in SNI and checked in the certificate.
    server_name: Option<ServerName<'static>>,
}

impl Connector {
    pub fn plain(connect_timeout: Duration) -> Connector {
        Connector {
            connect_timeout,
            tls: None,
        }
    }

    pub fn tls(
        connect_timeout: Duration,
        mut config: rustls::ClientConfig,
        server_name: Option<ServerName<'static>>,
    ) -> Connector {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Connector {
            connect_timeout,
            tls: Some(Tls {
                connector: TlsConnector::from(Arc::new(config)),
                server_name,
            }),
        }
    }

    async fn connect(
        &self,
        authority: &Authority,
        open: OwnedSemaphorePermit,
    ) -> Result<Box<Conn>, ExchangeError> {
        let tcp =
            tokio::time::timeout(self.connect_timeout, TcpStream::connect(authority.as_str()))
                .await
                .map_err(|_| ExchangeError::ConnectTimeout)?
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::TimedOut => ExchangeError::ConnectTimeout,
                    _ => ExchangeError::Connect(e.to_string()),
                })?;
        // Small requests and answers go out at once, not after Nagle's wait.
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let name = match &tls.server_name {
                    Some(name) => name.clone(),
                    // An IPv6 literal comes bracketed in an authority.
                    None => ServerName::try_from(
                        authority
                            .host()
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .to_owned(),
                    )
                    .map_err(|e| ExchangeError::Connect(format!("server name: {e}")))?,
                };
                let handshake = tls.connector.connect(name, tcp);
                let stream = tokio::time::timeout(self.connect_timeout, handshake)
                    .await
                    .map_err(|_| ExchangeError::ConnectTimeout)?
                    .map_err(|e| ExchangeError::Connect(format!("TLS handshake: {e}")))?;
                Box::new(stream)
            }
        };
        let (sender, driver) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(ExchangeError::Http)?;
        Ok(Box::new(Conn {
            sender,
            driver: Some(driver),
            failed: None,
            _open: open,
        }))
    }
}

/// One endpoint's connections: the idle ones, most recently used last, and
/// the places for open ones.
pub struct IdleConns {
    idle: Mutex<Idle>,
    /// `max_idle_per_endpoint`: idle connections kept past
    /// `SURPLUS_IDLE_FOR`.
    max_idle: usize,
    /// One permit per connection that may be open (idle or busy).
    open: Arc<Semaphore>,
    /// Signalled when a connection goes back to the idle list.
    returned: Notify,
}

#[derive(Default)]
struct Idle {
    /// Each with the moment it went idle, the oldest first.
    conns: Vec<(Box<Conn>, Instant)>,
    /// A sweeper task is running for this list (it runs while the list is
    /// not empty).
    swept: bool,
}

/// Idle connections taken off the list, to be closed once its lock is
/// released (closing hundreds of a burst's sockets under it would stall
/// every request to the endpoint).
type Closing = Vec<(Box<Conn>, Instant)>;

impl Idle {
    /// Take off those idle past `IDLE_FOR`, and those beyond `max_idle`
    /// idle past `SURPLUS_IDLE_FOR`. The oldest are first (checkout takes
    /// the newest), so the stale ones are a prefix.
    fn take_stale(&mut self, max_idle: usize, now: Instant) -> Closing {
        let surplus = self.conns.len().saturating_sub(max_idle);
        let stale = self
            .conns
            .iter()
            .enumerate()
            .take_while(|(place, (_, since))| {
                let idle = now.saturating_duration_since(*since);
                idle >= IDLE_FOR || (*place < surplus && idle >= SURPLUS_IDLE_FOR)
            })
            .count();
        self.conns.drain(..stale).collect()
    }

    /// Take off those the upstream closed.
    fn take_ended(&mut self) -> Closing {
        self.conns
            .extract_if(.., |(conn, _)| !conn.is_open())
            .collect()
    }
}

/// What a request that found no idle connection may do.
enum Room {
    /// Open a connection in this place.
    Open(OwnedSemaphorePermit),
    /// A connection went back to the idle list: look again.
    Returned,
    /// Neither happened before the deadline.
    Full,
}

impl IdleConns {
    pub fn new(max_open: usize, max_idle: usize) -> IdleConns {
        IdleConns {
            idle: Mutex::default(),
            max_idle,
            open: Arc::new(Semaphore::new(max_open.clamp(1, Semaphore::MAX_PERMITS))),
            returned: Notify::new(),
        }
    }

    /// Connections open to the endpoint now, idle and busy.
    pub fn open_count(&self, max_open: usize) -> usize {
        max_open.saturating_sub(self.open.available_permits())
    }

    /// A place to open a connection, or a returned one to look for, once
    /// either comes before `deadline`.
    async fn room(&self, deadline: tokio::time::Instant) -> Room {
        if let Ok(permit) = self.open.clone().try_acquire_owned() {
            return Room::Open(permit);
        }
        tokio::select! {
            permit = self.open.clone().acquire_owned() => match permit {
                Ok(permit) => Room::Open(permit),
                // Never closed; were it, nothing could be opened.
                Err(_closed) => Room::Full,
            },
            () = self.returned.notified() => Room::Returned,
            () = tokio::time::sleep_until(deadline) => Room::Full,
        }
    }

    /// An idle connection still open and ready for a request, if any.
    fn checkout(&self) -> Option<Box<Conn>> {
        loop {
            let (mut conn, since) = self.lock().conns.pop()?;
            if since.elapsed() < IDLE_FOR && conn.is_open() {
                return Some(conn);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keep a connection that finished its exchange, unless keeping idle
    /// connections is off (`max_idle_per_endpoint = 0`).
    fn put_back(self: &Arc<Self>, conn: Box<Conn>) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.lock();
        let now = Instant::now();
        let closing = idle.take_stale(self.max_idle, now);
        idle.conns.push((conn, now));
        // The first connection back since the list was last empty starts
        // a sweeper; the rest find one running. Outside a runtime (never,
        // in the proxy) nothing sweeps: the stale ones are closed as
        // connections come back.
        let sweeper = if idle.swept {
            None
        } else {
            let runtime = tokio::runtime::Handle::try_current().ok();
            idle.swept = runtime.is_some();
            runtime
        };
        drop(idle);
        self.returned.notify_one();
        drop(closing);
        if let Some(runtime) = sweeper {
            runtime.spawn(sweep_while_idle(Arc::downgrade(self)));
        }
    }
}

/// Close an endpoint's stale idle connections every `SWEEP_EVERY` while it
/// has any, so a burst's surplus is closed even if no request follows it,
/// and those the upstream closed (its keep-alive timeout) do not hold a
/// socket and a place under the cap until a request finds them. Ends when
/// the list is empty (the next connection put back starts another) or the
/// endpoint is gone (a reload replaced it).
async fn sweep_while_idle(conns: Weak<IdleConns>) {
    let mut running = Sweeping(conns.clone());
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(conns) = conns.upgrade() else {
            return;
        };
        let mut idle = conns.lock();
        // The ended ones first: they must not count among those kept.
        let mut closing = idle.take_ended();
        closing.extend(idle.take_stale(conns.max_idle, Instant::now()));
        let empty = idle.conns.is_empty();
        if empty {
            // Under the lock: a connection put back from now on starts
            // the next sweeper.
            idle.swept = false;
            running.0 = Weak::new();
        }
        drop(idle);
        drop(closing);
        if empty {
            return;
        }
    }
}

/// A running sweeper's mark. Should its task end before it finds the list
/// empty (its runtime shut down), the next connection put back starts
/// another.
struct Sweeping(Weak<IdleConns>);

impl Drop for Sweeping {
    fn drop(&mut self) {
        if let Some(conns) = self.0.upgrade() {
            conns.lock().swept = false;
        }
    }
}

impl Conn {
    /// Whether the connection can take a request: the upstream has not
    /// closed it (polling the driver reads any close or stray bytes) and
    /// hyper has finished the previous exchange.
    fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.poll_driver(&mut cx);
        self.driver.is_some() && self.sender.is_ready()
    }

    /// Let the connection do its I/O; note when it ends.
    fn poll_driver(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = &mut self.driver {
            if let Poll::Ready(result) = Pin::new(driver).poll(cx) {
                self.driver = None;
                self.failed = result.err();
            }
        }
    }
}

/// Send `request` (origin-form URI, `Host` set) to an endpoint over an idle
/// connection, or a new one; answer with the response whose body carries
/// the connection home when it ends.
pub async fn exchange(
    connector: &Connector,
    authority: &Authority,
    home: Arc<IdleConns>,
    request: Request<Body>,
) -> Result<Response<Body>, ExchangeError> {
    let mut request = request;
    let deadline = tokio::time::Instant::now() + connector.connect_timeout;
    let open = loop {
        // An idle connection the upstream closed meanwhile refuses the
        // request before sending any of it; try the next one, then a new
        // one.
        while let Some(mut conn) = home.checkout() {
            match drive(&mut conn, request).await {
                Ok(response) => return Ok(with_home(response, conn, home)),
                Err(TryError::Unsent(returned)) => request = *returned,
                Err(TryError::Failed(err)) => return Err(err),
            }
        }
        // At the cap, wait for a connection to close or to come back.
        match home.room(deadline).await {
            Room::Open(open) => break open,
            Room::Returned => continue,
            Room::Full => return Err(ExchangeError::Saturated),
        }
    };
    // Boxed: connecting (TCP, TLS, hyper's handshake) is the largest
    // state of an exchange and the rarest; inline it would enlarge every
    // request's future.
    let mut conn = Box::pin(connector.connect(authority, open)).await?;
    match drive(&mut conn, request).await {
        Ok(response) => Ok(with_home(response, conn, home)),
        Err(TryError::Unsent(_)) => Err(ExchangeError::Connect(
            "connection closed before the request was sent".into(),
        )),
        Err(TryError::Failed(err)) => Err(err),
    }
}

enum TryError {
    /// Boxed: the request is far larger than the other variant.
    Unsent(Box<Request<Body>>),
    Failed(ExchangeError),
}

/// Poll the connection and the response future together until the response
/// head arrives or the connection fails.
async fn drive(conn: &mut Conn, request: Request<Body>) -> Result<Response<Incoming>, TryError> {
    let Conn {
        sender,
        driver,
        failed,
        ..
    } = conn;
    let mut response = std::pin::pin!(sender.try_send_request(request));
    std::future::poll_fn(|cx| {
        if let Some(running) = driver {
            if let Poll::Ready(result) = Pin::new(running).poll(cx) {
                *driver = None;
                *failed = result.err();
            }
        }
        if let Poll::Ready(result) = response.as_mut().poll(cx) {
            return Poll::Ready(result.map_err(|mut err| match err.take_message() {
                Some(request) => TryError::Unsent(Box::new(request)),
                None => TryError::Failed(ExchangeError::Http(err.into_error())),
            }));
        }
        if driver.is_some() {
            return Poll::Pending;
        }
        // The connection ended without answering.
        Poll::Ready(Err(TryError::Failed(match failed.take() {
            Some(err) => ExchangeError::Http(err),
            None => ExchangeError::Closed,
        })))
    })
    .await
}

/// The upstream closed the connection before the response (or its body)
/// was complete.
#[derive(Debug, thiserror::Error)]
#[error("upstream closed the connection before the response was complete")]
pub struct Closed;

fn with_home(
    response: Response<Incoming>,
    conn: Box<Conn>,
    home: Arc<IdleConns>,
) -> Response<Body> {
    response.map(|body| {
        use http_body_util::BodyExt;
        PooledBody {
            body,
            conn: Some(conn),
            home,
            ended: false,
        }
        .boxed()
    })
}

/// A response body that keeps its connection's I/O going while it streams,
/// and returns the connection to the idle list when it ends.
struct PooledBody {
    body: Incoming,
    /// `None` once the connection has ended or gone home.
    conn: Option<Box<Conn>>,
    home: Arc<IdleConns>,
    /// The body has yielded its end.
    ended: bool,
}

impl PooledBody {
    /// Return the connection to the idle list if the body is complete.
    /// The server may stop polling after the last frame (it reads
    /// `is_end_stream`) or never poll an empty body, so this also runs on
    /// drop; an incomplete body closes the connection instead.
    fn go_home(&mut self) {
        if let Some(conn) = self.conn.take() {
            if conn.driver.is_some() && (self.ended || self.body.is_end_stream()) {
                self.home.put_back(conn);
            }
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        self.go_home();
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = crate::body::BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(conn) = &mut this.conn {
            conn.poll_driver(cx);
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.ended = true;
                this.go_home();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                this.conn = None;
                Poll::Ready(Some(Err(Box::new(err))))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Pending => match &mut this.conn {
                Some(conn) if conn.driver.is_some() => Poll::Pending,
                // Nothing can arrive any more: the connection is gone.
                Some(conn) => {
                    let err: crate::body::BodyError = match conn.failed.take() {
                        Some(err) => Box::new(err),
                        None => Box::new(Closed),
                    };
                    this.conn = None;
                    Poll::Ready(Some(Err(err)))
                }
                None => Poll::Ready(Some(Err(Box::new(Closed)))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
