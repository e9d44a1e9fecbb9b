//! `weir:plugin@0.1.0`'s imports, answered by the 0.2.0 implementations in
//! `state.rs`: a 0.1.0 plugin gets exactly what it always got, and there is
//! one implementation of each import to keep bounded and correct.
//!
//! 0.1.0 has no `kv.limit`, so no 0.1.0 call can fail with 0.2.0's
//! `invalid`; should one ever, it reaches the plugin as `unavailable`.

use super::bindings::v0_1::weir::plugin as old;
use super::bindings::v0_2::weir::plugin as new;
use super::state::HostState;

impl old::log::Host for HostState {
    fn log(&mut self, level: old::log::Level, message: String) {
        let level = match level {
            old::log::Level::Trace => new::log::Level::Trace,
            old::log::Level::Debug => new::log::Level::Debug,
            old::log::Level::Info => new::log::Level::Info,
            old::log::Level::Warn => new::log::Level::Warn,
            old::log::Level::Error => new::log::Level::Error,
        };
        new::log::Host::log(self, level, message);
    }
}

impl old::types::Host for HostState {}

impl old::config::Host for HostState {
    fn get(&mut self) -> String {
        new::config::Host::get(self)
    }
}

impl old::clock::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        new::clock::Host::now_ms(self)
    }

    fn monotonic_ns(&mut self) -> u64 {
        new::clock::Host::monotonic_ns(self)
    }
}

fn kv_error(err: new::kv::KvError) -> old::kv::KvError {
    match err {
        new::kv::KvError::Unavailable(why) | new::kv::KvError::Invalid(why) => {
            old::kv::KvError::Unavailable(why)
        }
        new::kv::KvError::NotAnInteger => old::kv::KvError::NotAnInteger,
        new::kv::KvError::TooLarge => old::kv::KvError::TooLarge,
    }
}

impl old::kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, old::kv::KvError> {
        new::kv::Host::get(self, key).await.map_err(kv_error)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), old::kv::KvError> {
        new::kv::Host::set(self, key, value, ttl_ms)
            .await
            .map_err(kv_error)
    }

    async fn delete(&mut self, key: String) -> Result<(), old::kv::KvError> {
        new::kv::Host::delete(self, key).await.map_err(kv_error)
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, old::kv::KvError> {
        new::kv::Host::increment(self, key, delta, ttl_ms)
            .await
            .map_err(kv_error)
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, old::kv::KvError> {
        new::kv::Host::compare_and_swap(self, key, expected, new, ttl_ms)
            .await
            .map_err(kv_error)
    }
}

impl old::metrics::Host for HostState {
    fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, delta: u64) {
        new::metrics::Host::counter_add(self, name, labels, delta);
    }

    fn gauge_set(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        new::metrics::Host::gauge_set(self, name, labels, value);
    }

    fn histogram_observe(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        new::metrics::Host::histogram_observe(self, name, labels, value);
    }
}

impl old::http_client::Host for HostState {
    async fn fetch(
        &mut self,
        req: old::http_client::OutboundRequest,
    ) -> Result<old::http_client::OutboundResponse, old::http_client::FetchError> {
        let req = new::http_client::OutboundRequest {
            method: req.method,
            url: req.url,
            headers: req.headers,
            body: req.body,
            timeout_ms: req.timeout_ms,
        };
        match new::http_client::Host::fetch(self, req).await {
            Ok(resp) => Ok(old::http_client::OutboundResponse {
                status: resp.status,
                headers: resp.headers,
                body: resp.body,
            }),
            Err(err) => Err(match err {
                new::http_client::FetchError::NotAllowed(why) => {
                    old::http_client::FetchError::NotAllowed(why)
                }
                new::http_client::FetchError::InvalidRequest(why) => {
                    old::http_client::FetchError::InvalidRequest(why)
                }
                new::http_client::FetchError::Connect(why) => {
                    old::http_client::FetchError::Connect(why)
                }
                new::http_client::FetchError::Timeout => old::http_client::FetchError::Timeout,
                new::http_client::FetchError::Protocol(why) => {
                    old::http_client::FetchError::Protocol(why)
                }
            }),
        }
    }
}

/// 0.1.0's records, to and from 0.2.0's (the host's). A 0.1.0 plugin
/// declares no interest: it is given everything, as it always was.
pub mod records {
    use super::new::types as new;
    use super::old::types as old;

    /// The 0.1.0 plugin info, read as 0.2.0's: every header, connection
    /// facts and properties.
    pub fn plugin_info(info: old::PluginInfo) -> new::PluginInfo {
        new::PluginInfo {
            on_request: info.on_request,
            on_response: info.on_response,
            request_body: info.request_body,
            response_body: info.response_body,
            request_headers: new::HeaderInterest::All,
            response_headers: new::HeaderInterest::All,
            connection: true,
            properties: true,
        }
    }

    /// The request phase's record, moved.
    pub fn into_request(req: new::Request) -> old::Request {
        old::Request {
            id: req.id,
            route: req.route,
            method: req.method,
            scheme: req.scheme,
            authority: req.authority,
            path: req.path,
            query: req.query,
            headers: req.headers,
            connection: req
                .connection
                .map(connection)
                .unwrap_or_else(unknown_connection),
            upstream: req.upstream,
            properties: req
                .properties
                .into_iter()
                .map(|(name, v)| (name, value_to_old(v)))
                .collect(),
            body: req.body,
        }
    }

    /// The response phase's request, shared by every 0.1.0 plugin of it.
    pub fn request(req: &new::Request) -> old::Request {
        into_request(req.clone())
    }

    fn unknown_connection() -> old::ConnectionInfo {
        old::ConnectionInfo {
            client_ip: String::new(),
            client_port: 0,
            local_ip: String::new(),
            local_port: 0,
            http_version: old::HttpVersion::Http11,
            tls: None,
        }
    }

    fn connection(info: new::ConnectionInfo) -> old::ConnectionInfo {
        old::ConnectionInfo {
            client_ip: info.client_ip,
            client_port: info.client_port,
            local_ip: info.local_ip,
            local_port: info.local_port,
            http_version: match info.http_version {
                new::HttpVersion::Http10 => old::HttpVersion::Http10,
                new::HttpVersion::Http11 => old::HttpVersion::Http11,
                new::HttpVersion::Http2 => old::HttpVersion::Http2,
                new::HttpVersion::Http3 => old::HttpVersion::Http3,
            },
            tls: info.tls.map(|tls| old::TlsInfo {
                version: tls.version,
                sni: tls.sni,
                alpn: tls.alpn,
                client_cert_subject: tls.client_cert_subject,
                client_cert_sans: tls.client_cert_sans,
            }),
        }
    }

    fn value_to_old(value: new::Value) -> old::Value {
        match value {
            new::Value::Text(v) => old::Value::Text(v),
            new::Value::Integer(v) => old::Value::Integer(v),
            new::Value::Float(v) => old::Value::Float(v),
            new::Value::Flag(v) => old::Value::Flag(v),
            new::Value::Bytes(v) => old::Value::Bytes(v),
            new::Value::Texts(v) => old::Value::Texts(v),
        }
    }

    fn value(value: old::Value) -> new::Value {
        match value {
            old::Value::Text(v) => new::Value::Text(v),
            old::Value::Integer(v) => new::Value::Integer(v),
            old::Value::Float(v) => new::Value::Float(v),
            old::Value::Flag(v) => new::Value::Flag(v),
            old::Value::Bytes(v) => new::Value::Bytes(v),
            old::Value::Texts(v) => new::Value::Texts(v),
        }
    }

    /// 0.1.0's response head: the host's, less what 0.2.0 added.
    pub fn response_head(head: new::ResponseHead) -> old::ResponseHead {
        old::ResponseHead {
            status: head.status,
            headers: head.headers,
            body: head.body,
        }
    }

    fn header_ops(ops: Vec<old::HeaderOp>) -> Vec<new::HeaderOp> {
        ops.into_iter()
            .map(|op| match op {
                old::HeaderOp::Set(pair) => new::HeaderOp::Set(pair),
                old::HeaderOp::Append(pair) => new::HeaderOp::Append(pair),
                old::HeaderOp::Remove(name) => new::HeaderOp::Remove(name),
            })
            .collect()
    }

    pub fn request_action(action: old::RequestAction) -> new::RequestAction {
        match action {
            old::RequestAction::Continue(changes) => {
                new::RequestAction::Continue(new::RequestChanges {
                    method: changes.method,
                    path: changes.path,
                    query: changes.query,
                    headers: header_ops(changes.headers),
                    upstream: changes.upstream,
                    properties: changes
                        .properties
                        .into_iter()
                        .map(|(name, v)| (name, value(v)))
                        .collect(),
                    cache: changes.cache.map(|cache| new::CacheDirectives {
                        bypass: cache.bypass,
                        ttl_cap: cache.ttl_cap,
                        extra_key: cache.extra_key,
                        share_authenticated: cache.share_authenticated,
                    }),
                    body: changes.body,
                })
            }
            old::RequestAction::Respond(resp) => new::RequestAction::Respond(new::Response {
                status: resp.status,
                headers: resp.headers,
                body: resp.body,
            }),
        }
    }

    pub fn response_changes(changes: old::ResponseChanges) -> new::ResponseChanges {
        new::ResponseChanges {
            status: changes.status,
            headers: header_ops(changes.headers),
            body: changes.body,
        }
    }
}
