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
