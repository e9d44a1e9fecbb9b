//! OpenTelemetry traces, when `[traces]` is configured (off by default: a
//! proxy without it never builds a span).
//!
//! A request continues the client's W3C `traceparent` (and its sampled
//! flag) or starts a trace, head-sampled at `traces.sample`. A sampled
//! request gets a server span; each plugin call becomes a child span
//! (plugin, phase, decision, and the lines the plugin logged during the
//! call as its events) and so does each upstream attempt (upstream,
//! endpoint, attempt number, status), so retries show as siblings. The
//! upstream is sent a `traceparent` naming its attempt's span; `tracestate`
//! passes through as the client sent it. Unsampled requests are forwarded
//! with the client's headers untouched.
//!
//! Spans go through the SDK's batch processor (its own thread, a bounded
//! queue that drops when full) to an OTLP/HTTP protobuf exporter, which
//! sends with Weir's hyper client on the proxy's runtime.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span,
};

use crate::access_log::{Decision, PluginRun};

/// `[traces]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// OTLP/HTTP traces URL (`http://…/v1/traces`).
    pub endpoint: String,
    pub service_name: String,
    /// Share of new traces recorded (a parent's decision is followed).
    pub sample: f64,
    pub max_queue_spans: usize,
    pub max_batch_spans: usize,
    pub batch_delay: Duration,
    pub export_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("traces: cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// The tracer of a running proxy.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// The longest `url.path` attribute, in bytes.
const MAX_PATH_ATTRIBUTE: usize = 1024;

impl Traces {
    /// Start the exporter; its batches are sent on `runtime`.
    pub fn start(
        settings: &TraceSettings,
        runtime: tokio::runtime::Handle,
    ) -> Result<Traces, TraceError> {
        let client = ExportClient {
            runtime,
            client: Client::builder(TokioExecutor::new()).build_http(),
            timeout: settings.export_timeout,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.export_timeout)
            .build()
            .map_err(|e| TraceError::Exporter(e.to_string()))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(settings.max_queue_spans)
            .with_max_export_batch_size(settings.max_batch_spans)
            .with_scheduled_delay(settings.batch_delay)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sample,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("weir");
        Ok(Traces { provider, tracer })
    }

    /// The server span of a request, when it is sampled.
    pub fn begin(
        &self,
        req: &http::Request<impl Sized>,
        request_id: &str,
    ) -> Option<Arc<RequestTrace>> {
        let parent = match incoming_parent(req.headers()) {
            Some(parent) => Context::new().with_remote_span_context(parent),
            None => Context::new(),
        };
        let method = req.method().as_str().to_owned();
        let span = self
            .tracer
            .span_builder(method.clone())
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method),
                KeyValue::new("weir.request_id", request_id.to_owned()),
                KeyValue::new("network.protocol.version", protocol_version(req.version())),
            ])
            .start_with_context(&self.tracer, &parent);
        if !span.span_context().is_sampled() {
            return None;
        }
        let context = span.span_context().clone();
        Some(Arc::new(RequestTrace {
            tracer: self.tracer.clone(),
            method: req.method().as_str().to_owned(),
            children: Context::new().with_remote_span_context(context.clone()),
            span: Mutex::new(Some(span)),
        }))
    }

    /// Export what is queued, waiting up to the export timeout. Blocking.
    pub fn shutdown(&self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::debug!(error = %err, "trace exporter shutdown");
        }
    }
}

/// The spans of one sampled request.
pub struct RequestTrace {
    tracer: SdkTracer,
    method: String,
    /// The context whose span is the server span: the parent of the rest.
    children: Context,
    /// Taken when the request ends.
    span: Mutex<Option<Span>>,
}

impl RequestTrace {
    /// The trace's id, for the access log.
    pub fn trace_id(&self) -> String {
        self.children.span().span_context().trace_id().to_string()
    }

    /// The request as admitted: its canonical path, authority and route.
    pub fn admitted(&self, authority: &str, path: &str, route: Option<&str>) {
        let mut guard = self.span.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(span) = guard.as_mut() else { return };
        let path = crate::plugin::printable(path, MAX_PATH_ATTRIBUTE);
        span.set_attribute(KeyValue::new("url.path", path));
        span.set_attribute(KeyValue::new("server.address", authority.to_owned()));
        if let Some(route) = route {
            span.set_attribute(KeyValue::new("http.route", route.to_owned()));
            span.update_name(format!("{} {route}", self.method));
        }
    }

    /// Start the span of one upstream attempt.
    pub fn attempt(&self, upstream: &str, endpoint: &str, attempt: u32) -> Attempt {
        let span = self
            .tracer
            .span_builder(format!("upstream {upstream}"))
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("weir.upstream", upstream.to_owned()),
                KeyValue::new("server.address", endpoint.to_owned()),
                KeyValue::new("weir.attempt", i64::from(attempt) + 1),
            ])
            .start_with_context(&self.tracer, &self.children);
        Attempt { span }
    }

    /// End the request: its plugin calls become child spans, and the
    /// server span ends with the response status.
    pub fn finish(&self, status: u16, runs: &[PluginRun]) {
        let Some(mut span) = self
            .span
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        for run in runs {
            self.plugin_span(run);
        }
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.set_status(Status::error(format!("{status}")));
        }
        span.end();
    }

    fn plugin_span(&self, run: &PluginRun) {
        let end = run.start + Duration::from_micros(run.micros);
        let mut span = self
            .tracer
            .span_builder(format!("plugin {} {}", run.plugin, run.phase))
            .with_kind(SpanKind::Internal)
            .with_start_time(run.start)
            .with_attributes([
                KeyValue::new("weir.plugin", run.plugin.to_string()),
                KeyValue::new("weir.phase", run.phase),
                KeyValue::new("weir.decision", run.decision.to_string()),
            ])
            .start_with_context(&self.tracer, &self.children);
        for line in &run.logs {
            span.add_event_with_timestamp(
                line.message.clone(),
                line.at,
                vec![KeyValue::new("log.level", line.level)],
            );
        }
        if matches!(run.decision, Decision::Denied | Decision::Skipped) {
            span.set_status(Status::error("plugin failed"));
        }
        span.end_with_timestamp(end);
    }
}

/// One upstream attempt's span, from before the request is sent until its
/// response head (or failure).
pub struct Attempt {
    span: Span,
}

impl Attempt {
    /// Name this attempt as the upstream's parent.
    pub fn propagate(&self, headers: &mut HeaderMap) {
        let context = self.span.span_context();
        let value = format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert("traceparent", value);
        }
    }

    /// End with the upstream's status, or why there was none.
    pub fn finish(mut self, outcome: Result<u16, &str>) {
        match outcome {
            Ok(status) => {
                self.span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                if status >= 500 {
                    self.span.set_status(Status::error(format!("{status}")));
                }
            }
            Err(reason) => {
                self.span
                    .set_attribute(KeyValue::new("error.type", reason.to_owned()));
                self.span.set_status(Status::error(reason.to_owned()));
            }
        }
        self.span.end();
    }
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The client's `traceparent` (W3C Trace Context, version 00 or a later
/// one read as 00), with `tracestate` when it parses. Malformed: `None`,
/// and the request starts a trace of its own.
fn incoming_parent(headers: &HeaderMap) -> Option<SpanContext> {
    let mut values = headers.get_all("traceparent").iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |text: &str, len: usize| {
        text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    // Version ff is invalid; 00 has exactly four fields.
    if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !(hex(trace, 32) && hex(span, 16) && hex(flags, 2)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & 1);
    let state = headers
        .get("tracestate")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// The exporter's HTTP client: Weir's hyper client, driven on the proxy's
/// runtime (the batch processor calls it from a thread of its own).
#[derive(Debug)]
struct ExportClient {
    runtime: tokio::runtime::Handle,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// The largest collector answer read.
const MAX_EXPORT_RESPONSE_BYTES: usize = 1 << 20;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let sent = self.runtime.spawn(async move {
            let exchange = async {
                let response = client.request(request.map(Full::new)).await?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_EXPORT_RESPONSE_BYTES)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err("the OTLP export timed out".into()),
            }
        });
        sent.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(value: &str) -> Option<SpanContext> {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_str(value).unwrap());
        incoming_parent(&headers)
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_its_sampled_flag() {
        let sampled = parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            sampled.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sampled.is_sampled() && sampled.is_remote());
        let unsampled = parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parent(bad).is_none(), "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(parent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
    }
}
