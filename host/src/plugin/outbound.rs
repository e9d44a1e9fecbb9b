//! Outbound HTTP for plugins (`http-client.fetch`), bounded by the host:
//!
//! * **Where.** Only to `scheme://host:port` destinations the plugin's
//!   `allow_hosts` lists (`outbound/allow.rs`); an entry without a port
//!   allows only the scheme's default port. A name is resolved here, every
//!   address it resolves to is checked, and the connection goes to a
//!   checked address (no second lookup, so no DNS-rebinding window).
//!   Loopback, private, link-local, CGNAT and unspecified addresses
//!   (`outbound/address.rs`) and Weir's own listeners are refused — unless
//!   the entry names that literal IP, the operator's explicit escape hatch.
//! * **How much.** At most `max_outbound_concurrency` calls in flight per
//!   plugin (beyond it a call fails at once), a deadline, a response size
//!   cap. Redirects are never followed: a `3xx` is the plugin's answer.
//! * **How deep.** Every callout carries [`HOP_HEADER`], one more than the
//!   request it was made for; Weir refuses requests deeper than
//!   [`MAX_HOPS`] (`508`), and a plugin on such a request cannot call out
//!   at all. A plugin that calls Weir itself stops after a few requests.
//!
//! Refusals are `not-allowed` errors naming the reason, counted as
//! `weir_plugin_outbound_refused_total{plugin,reason}`.

mod address;
mod allow;
#[cfg(test)]
mod tests;

pub use address::{classify, Class};
pub use allow::{parse_host, AllowEntry, Host, HostError, Scheme};

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

use super::bindings::v0_2::weir::plugin::http_client::{
    FetchError, OutboundRequest, OutboundResponse,
};
use super::throttle::Throttle;
use crate::config::UpstreamTls;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::tls::TlsError;

/// How many plugin callouts led to a request: absent on a client's
/// request, `N + 1` on a callout made while serving a request at `N`.
pub const HOP_HEADER: HeaderName = HeaderName::from_static("weir-hop");

/// The deepest a request may be. A client request (0) may lead to callouts
/// at 1, 2 and 3; a plugin serving a request at 3 cannot call out, and a
/// request arriving deeper is refused with `508 Loop Detected`.
pub const MAX_HOPS: u8 = 3;

/// Read and remove [`HOP_HEADER`] from an incoming request: how many
/// callouts deep it is (0 without the header). Deeper than [`MAX_HOPS`] is
/// a loop (`508`); a value that is not a number is a `400`. Removed so
/// that neither plugins nor the upstream see or forge it: the host sets it
/// on callouts itself.
pub fn take_hops(headers: &mut HeaderMap) -> Result<u8, ProxyError> {
    let mut deepest: u64 = 0;
    for value in headers.get_all(&HOP_HEADER) {
        let text = value
            .to_str()
            .map_err(|_| ProxyError::BadRequest("invalid weir-hop header"))?;
        for item in text.split(',') {
            let item = item.trim();
            // Digits only: `u64::from_str` would also take a `+`.
            let hops = item
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| item.parse::<u64>().ok())
                .flatten()
                .ok_or(ProxyError::BadRequest("invalid weir-hop header"))?;
            deepest = deepest.max(hops);
        }
    }
    headers.remove(&HOP_HEADER);
    if deepest > u64::from(MAX_HOPS) {
        return Err(ProxyError::LoopDetected {
            hops: deepest,
            max: MAX_HOPS,
        });
    }
    Ok(deepest as u8)
}

/// `max_outbound_concurrency`: calls in flight per plugin.
pub const CONCURRENCY_RANGE: RangeInclusive<usize> = 1..=1024;
/// `outbound_timeout_ms`: the longest a call may take.
pub const TIMEOUT_MS_RANGE: RangeInclusive<u64> = 1..=60_000;
/// `max_outbound_response_bytes`: the largest body handed back.
pub const RESPONSE_BYTES_RANGE: RangeInclusive<usize> = 1..=64 << 20;

/// One plugin's outbound bounds, from its `[plugins.NAME]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `allow_hosts`: where calls may go. Empty: nowhere.
    pub allow: Vec<AllowEntry>,
    /// `max_outbound_concurrency`.
    pub max_concurrency: usize,
    /// `outbound_timeout_ms`: the deadline of a call that names none, and
    /// the cap on one that does. The plugin's own `timeout_ms` still bounds
    /// the whole call it is made from.
    pub timeout: Duration,
    /// `max_outbound_response_bytes`.
    pub max_response_bytes: usize,
    /// `outbound_ca`: the PEM CAs https destinations are verified against;
    /// `None`: the system roots, as for HTTPS upstreams.
    pub ca: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            allow: Vec::new(),
            max_concurrency: 16,
            timeout: Duration::from_secs(5),
            max_response_bytes: 4 << 20,
            ca: None,
        }
    }
}

/// Weir's own listening addresses (proxy and admin). Plugins are loaded
/// before the listeners are bound (a port 0 is only known then), so this
/// is filled in once they are.
#[derive(Debug, Clone, Default)]
pub struct OwnListeners(Arc<RwLock<Vec<SocketAddr>>>);

impl OwnListeners {
    pub fn set(&self, addrs: Vec<SocketAddr>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = addrs;
    }

    /// Whether connecting to `dest` would reach one of the listeners; a
    /// listener on `0.0.0.0`/`::` is reached through any local address.
    pub fn contains(&self, dest: SocketAddr) -> bool {
        let dest_ip = dest.ip().to_canonical();
        let listeners = self.0.read().unwrap_or_else(PoisonError::into_inner);
        listeners.iter().any(|own| {
            own.port() == dest.port()
                && (own.ip().to_canonical() == dest_ip
                    || (own.ip().is_unspecified() && is_local(dest_ip)))
        })
    }
}

/// Whether `ip` belongs to this machine: only then can a socket bind it.
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Why the host refused a call: the `reason` label of the refusal counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No `allow_hosts` entry allows the scheme, host and port.
    NotListed,
    /// The host is, or resolves to, an address outbound calls may not
    /// reach, or is an ambiguous spelling of an IP address.
    Address,
    /// `max_outbound_concurrency` calls are already in flight.
    Concurrency,
    /// The request being served is already [`MAX_HOPS`] callouts deep.
    HopLimit,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::NotListed => "not_listed",
            Refusal::Address => "address",
            Refusal::Concurrency => "concurrency",
            Refusal::HopLimit => "hop_limit",
        }
    }
}

/// How a call ended, short of a response.
enum Failure {
    /// By policy: counted, and a `not-allowed` error for the plugin.
    Refused(Refusal, String),
    /// By the request or the network.
    Failed(FetchError),
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure::Failed(FetchError::InvalidRequest(message.into()))
}

fn connect_failed(message: impl Into<String>) -> Failure {
    Failure::Failed(FetchError::Connect(message.into()))
}

/// Where a call goes, read strictly from its URL.
struct Target {
    scheme: Scheme,
    host: Host,
    port: u16,
    path_and_query: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, Failure> {
        let uri: Uri = url
            .parse()
            .map_err(|e| invalid(format!("url {url:?}: {e}")))?;
        let scheme = uri
            .scheme_str()
            .and_then(Scheme::parse)
            .ok_or_else(|| invalid(format!("url {url:?}: only http:// and https:// URLs")))?;
        let authority = uri
            .authority()
            .ok_or_else(|| invalid(format!("url {url:?} has no host")))?;
        if authority.as_str().contains('@') {
            return Err(invalid(
                "credentials in the URL are not supported; send an Authorization header",
            ));
        }
        let host = parse_host(&authority.host().to_ascii_lowercase()).map_err(|e| match e {
            HostError::Invalid { .. } => invalid(e.to_string()),
            HostError::NonCanonical { .. } | HostError::EmbedsV4 { .. } => {
                Failure::Refused(Refusal::Address, e.to_string())
            }
        })?;
        let port = match authority.port() {
            None => scheme.default_port(),
            Some(port) => port
                .as_str()
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| invalid(format!("url {url:?}: port is not 1-65535")))?,
        };
        let path_and_query = match uri.path_and_query().map(|pq| pq.as_str()) {
            None | Some("") => "/".to_owned(),
            Some(pq) => pq.to_owned(),
        };
        Ok(Target {
            scheme,
            host,
            port,
            path_and_query,
        })
    }

    /// The `Host` header: the scheme's default port left out.
    fn authority(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.host.to_string()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
    }
}

/// A byte stream to a destination: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

/// One plugin's outbound client, shared by all its instances.
pub struct Client {
    plugin: String,
    allow: Vec<AllowEntry>,
    timeout: Duration,
    max_response_bytes: usize,
    max_concurrency: usize,
    permits: Semaphore,
    /// Built only when an entry allows https.
    tls: Option<TlsConnector>,
    own: OwnListeners,
    metrics: Metrics,
    refusals: Throttle,
}

impl Client {
    pub fn new(
        plugin: &str,
        settings: &Settings,
        own: OwnListeners,
        metrics: Metrics,
    ) -> Result<Client, TlsError> {
        let https = settings
            .allow
            .iter()
            .any(|entry| entry.scheme != Some(Scheme::Http));
        let tls = if https {
            // The same trust rules as an HTTPS upstream: the configured CA
            // or the system roots, TLS 1.2/1.3; no client certificate.
            let mut config = crate::tls::client_config(&UpstreamTls {
                ca: settings.ca.clone(),
                server_name: None,
                client_cert: None,
                client_key: None,
            })?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Client {
            plugin: plugin.to_owned(),
            allow: settings.allow.clone(),
            timeout: settings.timeout,
            max_response_bytes: settings.max_response_bytes,
            max_concurrency: settings.max_concurrency,
            permits: Semaphore::new(settings.max_concurrency),
            tls,
            own,
            metrics,
            refusals: Throttle::default(),
        })
    }

    /// Make one call for a request `hops` callouts deep.
    pub async fn fetch(
        &self,
        req: OutboundRequest,
        hops: u8,
    ) -> Result<OutboundResponse, FetchError> {
        match self.try_fetch(req, hops).await {
            Ok(response) => Ok(response),
            Err(Failure::Failed(err)) => Err(err),
            Err(Failure::Refused(reason, message)) => {
                self.metrics.counter_add(
                    "weir_plugin_outbound_refused_total",
                    &[("plugin", &self.plugin), ("reason", reason.label())],
                    1,
                );
                if let Some(left_out) = self.refusals.allow() {
                    tracing::warn!(
                        plugin = %self.plugin,
                        reason = reason.label(),
                        left_out,
                        "outbound call refused: {message}"
                    );
                }
                Err(FetchError::NotAllowed(message))
            }
        }
    }

    async fn try_fetch(&self, req: OutboundRequest, hops: u8) -> Result<OutboundResponse, Failure> {
        let target = Target::parse(&req.url)?;
        let listed = self
            .allow
            .iter()
            .any(|entry| entry.allows(target.scheme, &target.host, target.port));
        if !listed {
            return Err(Failure::Refused(
                Refusal::NotListed,
                format!(
                    "{target} is not in allow_hosts (an entry without a port allows only \
                     the scheme's default port)"
                ),
            ));
        }
        if hops >= MAX_HOPS {
            return Err(Failure::Refused(
                Refusal::HopLimit,
                format!(
                    "the request being served is already {hops} plugin callouts deep \
                     (the limit is {MAX_HOPS}): is a plugin calling Weir itself?"
                ),
            ));
        }
        let _permit = self.permits.try_acquire().map_err(|_| {
            Failure::Refused(
                Refusal::Concurrency,
                format!(
                    "{} outbound calls already in flight (max_outbound_concurrency)",
                    self.max_concurrency
                ),
            )
        })?;
        let timeout = req
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(self.timeout)
            .min(self.timeout);
        let request = build_request(req, &target, hops + 1)?;
        let call = async {
            let addrs = self.destinations(&target).await?;
            let io = self.connect(&target, &addrs).await?;
            exchange(io, request, self.max_response_bytes)
                .await
                .map_err(Failure::Failed)
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| Failure::Failed(FetchError::Timeout))?
    }

    /// The addresses to try, each checked.
    async fn destinations(&self, target: &Target) -> Result<Vec<SocketAddr>, Failure> {
        let name = match &target.host {
            // Listed literally (it matched an entry): the operator named
            // this very address, the one way to reach loopback or a
            // private network.
            Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, target.port)]),
            Host::Name(name) => name,
        };
        if name == "localhost" || name.ends_with(".localhost") {
            // RFC 6761: loopback, whatever a resolver would say.
            return Err(Failure::Refused(
                Refusal::Address,
                format!(
                    "{name} is this machine (loopback); only an allow_hosts entry naming \
                     the literal IP (\"127.0.0.1:{}\") may reach it",
                    target.port
                ),
            ));
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), target.port))
            .await
            .map_err(|e| connect_failed(format!("resolving {name}: {e}")))?
            .collect();
        if found.is_empty() {
            return Err(connect_failed(format!("{name} has no address")));
        }
        self.check_resolved(name, &found)?;
        Ok(found)
    }

    /// Every address a name resolved to, not just the first: a name whose
    /// answers mix a public and a private address is refused outright.
    fn check_resolved(&self, name: &str, found: &[SocketAddr]) -> Result<(), Failure> {
        for addr in found {
            let class = classify(addr.ip());
            if !class.is_public() {
                return Err(Failure::Refused(
                    Refusal::Address,
                    format!(
                        "{name} resolves to {}, a {class} address; only an allow_hosts \
                         entry naming that literal IP (\"{}\") may reach it",
                        addr.ip(),
                        Host::Ip(addr.ip().to_canonical())
                    ),
                ));
            }
            if self.own.contains(*addr) {
                return Err(Failure::Refused(
                    Refusal::Address,
                    format!("{name} resolves to {addr}, one of Weir's own listeners"),
                ));
            }
        }
        Ok(())
    }

    /// Connect to the first checked address that answers; TLS for https.
    async fn connect(&self, target: &Target, addrs: &[SocketAddr]) -> Result<Box<dyn Io>, Failure> {
        let mut tcp = None;
        let mut last_error = String::new();
        for addr in addrs {
            match TcpStream::connect(*addr).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(e) => last_error = format!("{addr}: {e}"),
            }
        }
        let tcp = tcp.ok_or_else(|| connect_failed(format!("{target}: {last_error}")))?;
        // Small requests go out at once, not after Nagle's wait.
        let _ = tcp.set_nodelay(true);
        if target.scheme == Scheme::Http {
            return Ok(Box::new(tcp));
        }
        let Some(tls) = &self.tls else {
            // Not reached: an entry allowing https builds the connector.
            return Err(connect_failed("no TLS client configured"));
        };
        let name = match &target.host {
            Host::Name(name) => ServerName::try_from(name.clone())
                .map_err(|e| invalid(format!("server name {name:?}: {e}")))?,
            Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        };
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| connect_failed(format!("TLS handshake with {target}: {e}")))?;
        Ok(Box::new(stream))
    }
}

/// The request as sent: the plugin's method, headers and body, with the
/// headers the host owns replaced.
fn build_request(
    req: OutboundRequest,
    target: &Target,
    hop: u8,
) -> Result<Request<Full<Bytes>>, Failure> {
    let method = Method::from_bytes(req.method.as_bytes())
        .map_err(|_| invalid(format!("method {:?}", req.method)))?;
    if method == Method::CONNECT {
        return Err(invalid("CONNECT is not supported"));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in req.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("header name {name:?}")))?;
        let value =
            HeaderValue::from_str(&value).map_err(|_| invalid(format!("header {name} value")))?;
        headers.append(name, value);
    }
    // The host owns framing, the authority and the hop count: a plugin's
    // own values would desynchronise the message from its body, address a
    // virtual host other than the one allow_hosts names, or reset the
    // loop guard.
    crate::headers::strip_hop_by_hop(&mut headers);
    for name in [header::CONTENT_LENGTH, header::HOST, header::TE, HOP_HEADER] {
        headers.remove(name);
    }
    let host = HeaderValue::from_str(&target.authority())
        .map_err(|_| invalid(format!("host {}", target.host)))?;
    headers.insert(header::HOST, host);
    headers.insert(HOP_HEADER, HeaderValue::from(u16::from(hop)));
    let body = Bytes::from(req.body);
    if !body.is_empty() || matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let uri = Uri::try_from(target.path_and_query.as_str())
        .map_err(|e| invalid(format!("path {:?}: {e}", target.path_and_query)))?;
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(request)
}

/// One HTTP/1.1 exchange on a fresh connection. hyper never follows
/// redirects: a `3xx` comes back to the plugin as it is.
async fn exchange(
    io: Box<dyn Io>,
    request: Request<Full<Bytes>>,
    limit: usize,
) -> Result<OutboundResponse, FetchError> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| FetchError::Protocol(format!("handshake: {e}")))?;
    // Driven here, not spawned: when the call's deadline drops this
    // future, the connection goes with it instead of lingering in a task.
    let mut conn = Some(Box::pin(conn));
    let work = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| FetchError::Protocol(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    FetchError::Protocol(format!(
                        "response body larger than {limit} bytes (max_outbound_response_bytes)"
                    ))
                } else {
                    FetchError::Protocol(format!("response body: {e}"))
                }
            })?
            .to_bytes();
        Ok(OutboundResponse {
            status: parts.status.as_u16(),
            headers: crate::plugin::convert::headers_to_wit(&parts.headers),
            body: body.to_vec(),
        })
    };
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        // A finished connection is dropped, never polled again; its end
        // wakes a response still waiting with an error.
        let ended = conn
            .as_mut()
            .is_some_and(|driver| driver.as_mut().poll(cx).is_ready());
        if ended {
            conn = None;
        }
        work.as_mut().poll(cx)
    })
    .await
}
