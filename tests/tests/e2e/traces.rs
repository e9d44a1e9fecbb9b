//! OpenTelemetry traces: a real OTLP/HTTP protobuf receiver gets the span
//! tree of each sampled request (server span → a span per plugin call and
//! per upstream attempt), and the upstream is told which attempt called it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message;
use weir_tests::{client, hostile_plugin, respond, tagger_plugin, TestProxy, Upstream};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver keeping every span it is sent.
async fn collector() -> (Upstream, Arc<Mutex<Vec<Span>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    let server = Upstream::serve(move |req| {
        let kept = kept.clone();
        async move {
            assert_eq!(req.uri().path(), "/v1/traces");
            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let export = ExportTraceServiceRequest::decode(body).expect("an OTLP export");
            for resource in export.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .and_then(|a| a.value.clone());
                assert!(
                    matches!(service.and_then(|v| v.value), Some(Value::StringValue(s)) if s == "weir-e2e")
                );
                for scope in resource.scope_spans {
                    kept.lock().unwrap().extend(scope.spans);
                }
            }
            respond(200, "")
        }
    })
    .await;
    (server, spans)
}

/// The spans of one trace, once `count` of them have arrived.
async fn spans_of(spans: &Mutex<Vec<Span>>, trace: &str, count: usize) -> Vec<Span> {
    for _ in 0..400 {
        let found: Vec<Span> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| hex(&s.trace_id) == trace)
            .cloned()
            .collect();
        if found.len() >= count {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let all: Vec<String> = spans
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    panic!("fewer than {count} spans of {trace}; received {all:?}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value)
}

/// An upstream answering 503 to its first request and 200 after, keeping
/// the `traceparent` of each.
async fn flaky() -> (Upstream, Arc<Mutex<Vec<Option<String>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let kept = seen.clone();
    let upstream = Upstream::serve(move |req| {
        let traceparent = req
            .headers()
            .get("traceparent")
            .map(|v| v.to_str().unwrap().to_owned());
        kept.lock().unwrap().push(traceparent);
        let first = calls.fetch_add(1, Ordering::SeqCst) == 0 && req.uri().path() == "/retry";
        async move {
            if first {
                respond(503, "busy")
            } else {
                respond(200, "fine")
            }
        }
    })
    .await;
    (upstream, seen)
}

fn config(collector: &Upstream, upstream: &Upstream) -> String {
    format!(
        "chain = [\"tag\"]\ndefault_upstream = \"up\"\n{}\
         [upstreams.up]\nendpoints = [\"{}\"]\nretries = 1\nmax_fails = 100\n\
         [traces]\nendpoint = \"http://{}/v1/traces\"\nservice_name = \"weir-e2e\"\nbatch_delay_ms = 20\n",
        tagger_plugin("tag", "t", ""),
        upstream.addr,
        collector.addr,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_request_exports_its_span_tree_and_continues_the_clients_trace() {
    let (otlp, spans) = collector().await;
    let (upstream, seen) = flaky().await;
    let proxy = TestProxy::start(&config(&otlp, &upstream)).await;

    let response = client()
        .get(proxy.url("/retry?q=1"))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "fine");

    // server + tagger request and response + two attempts.
    let trace = spans_of(&spans, TRACE, 5).await;
    let named = |prefix: &str| -> Vec<&Span> {
        trace
            .iter()
            .filter(|s| s.name.starts_with(prefix))
            .collect()
    };
    let servers: Vec<&Span> = trace
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(servers.len(), 1, "{trace:#?}");
    let server = servers[0];
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN);
    assert_eq!(
        attribute(server, "url.path"),
        Some(Value::StringValue("/retry".into()))
    );
    assert_eq!(
        attribute(server, "http.response.status_code"),
        Some(Value::IntValue(200))
    );

    let plugins = named("plugin tag ");
    let phases: Vec<_> = plugins.iter().map(|s| s.name.as_str()).collect();
    assert!(
        phases.contains(&"plugin tag request") && phases.contains(&"plugin tag response"),
        "{phases:?}"
    );
    for plugin in &plugins {
        assert_eq!(plugin.parent_span_id, server.span_id);
        assert_eq!(
            attribute(plugin, "weir.decision"),
            Some(Value::StringValue("continue".into()))
        );
    }

    let mut attempts = named("upstream up");
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(attempts.len(), 2, "{trace:#?}");
    let statuses: Vec<_> = attempts
        .iter()
        .map(|s| attribute(s, "http.response.status_code"))
        .collect();
    assert_eq!(
        statuses,
        [Some(Value::IntValue(503)), Some(Value::IntValue(200))]
    );
    for (n, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt.parent_span_id, server.span_id);
        assert_eq!(attempt.kind, SpanKind::Client as i32);
        assert_eq!(
            attribute(attempt, "weir.attempt"),
            Some(Value::IntValue(n as i64 + 1))
        );
    }
    // Each attempt told the upstream it was the caller.
    let told: Vec<Option<String>> = attempts
        .iter()
        .map(|a| Some(format!("00-{TRACE}-{}-01", hex(&a.span_id))))
        .collect();
    assert_eq!(*seen.lock().unwrap(), told);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsampled_parent_is_forwarded_untouched_and_exports_nothing() {
    let (otlp, spans) = collector().await;
    let (upstream, seen) = flaky().await;
    let proxy = TestProxy::start(&config(&otlp, &upstream)).await;

    let unsampled = format!("00-{TRACE}-{CLIENT_SPAN}-00");
    let response = client()
        .get(proxy.url("/quiet"))
        .header("traceparent", &unsampled)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();

    // A request without a traceparent starts a sampled trace of its own.
    let response = client().get(proxy.url("/loud")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let started = seen.lock().unwrap()[1].clone().expect("a traceparent");
    let parts: Vec<&str> = started.split('-').collect();
    assert_eq!(parts.len(), 4, "{started}");
    assert_ne!(parts[1], TRACE);
    assert_eq!(parts[3], "01");
    // Spans leave in order: once the second request's are in, the first's
    // would have been too.
    spans_of(&spans, parts[1], 4).await;

    assert_eq!(seen.lock().unwrap()[0].as_deref(), Some(unsampled.as_str()));
    let leaked = spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| hex(&s.trace_id) == TRACE)
        .count();
    assert_eq!(leaked, 0, "an unsampled request was exported");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_traceparent_starts_a_new_trace_and_is_replaced() {
    let (otlp, spans) = collector().await;
    let (upstream, seen) = flaky().await;
    let proxy = TestProxy::start(&config(&otlp, &upstream)).await;
    let response = client()
        .get(proxy.url("/x"))
        .header("traceparent", "00-not-a-trace-01")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let sent = seen.lock().unwrap()[0].clone().expect("a traceparent");
    let trace = sent.split('-').nth(1).expect("a trace id").to_owned();
    let exported = spans_of(&spans, &trace, 4).await;
    let server = exported
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("a server span");
    assert!(server.parent_span_id.is_empty(), "a root span");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_log_lines_become_its_spans_events_up_to_a_cap() {
    let (otlp, spans) = collector().await;
    let (upstream, _seen) = flaky().await;
    let noisy = |count: u32| {
        format!(
            "{}count = {count}\nsize = 40\ntrigger_prefix = \"/\"\n",
            hostile_plugin(
                "noisy",
                "log-flood",
                "log_burst = 200\nlog_lines_per_second = 1000"
            ),
        )
    };
    let body = config(&otlp, &upstream)
        .replace("chain = [\"tag\"]", "chain = [\"noisy\", \"tag\"]")
        + &noisy(3);
    let proxy = TestProxy::start(&body).await;
    let response = client()
        .get(proxy.url("/few"))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let trace = spans_of(&spans, TRACE, 5).await;
    let noisy_span = trace
        .iter()
        .find(|s| s.name == "plugin noisy request")
        .unwrap_or_else(|| panic!("no noisy span in {trace:#?}"));
    assert_eq!(noisy_span.events.len(), 3, "{noisy_span:#?}");
    for event in &noisy_span.events {
        let level = event.attributes.iter().find(|a| a.key == "log.level");
        assert!(level.is_some(), "{event:#?}");
        // Cut and escaped as on stderr: no raw newline forges a line.
        assert!(!event.name.contains('\n'), "{:?}", event.name);
        assert!(event.time_unix_nano >= noisy_span.start_time_unix_nano);
    }
    let tag_span = trace
        .iter()
        .find(|s| s.name == "plugin tag request")
        .expect("the tagger's span");
    assert!(tag_span.events.is_empty(), "another plugin's lines leaked");
    drop(proxy);

    // A flood keeps only the first lines of the call.
    let flood = "5bf92f3577b34da6a3ce929d0e0e4736";
    let body =
        config(&otlp, &upstream).replace("chain = [\"tag\"]", "chain = [\"noisy\"]") + &noisy(150);
    let proxy = TestProxy::start(&body).await;
    let response = client()
        .get(proxy.url("/many"))
        .header("traceparent", format!("00-{flood}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    response.bytes().await.unwrap();
    let trace = spans_of(&spans, flood, 3).await;
    let noisy_span = trace
        .iter()
        .find(|s| s.name == "plugin noisy request")
        .expect("the noisy span");
    assert_eq!(noisy_span.events.len(), 32);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_access_log_on_both_see_every_plugin_call_and_share_the_trace_id() {
    let (otlp, spans) = collector().await;
    let (upstream, _seen) = flaky().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let body = format!(
        "{}[access_log]\npath = {:?}\n",
        config(&otlp, &upstream),
        log.display().to_string()
    );
    let proxy = TestProxy::start(&body).await;
    let response = client()
        .get(proxy.url("/both"))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();

    let trace = spans_of(&spans, TRACE, 4).await;
    let plugin_spans = trace
        .iter()
        .filter(|s| s.name.starts_with("plugin tag "))
        .count();
    assert_eq!(plugin_spans, 2, "{trace:#?}");
    let mut line = String::new();
    for _ in 0..200 {
        line = std::fs::read_to_string(&log).unwrap_or_default();
        if !line.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let entry: serde_json::Value = serde_json::from_str(line.trim()).expect("a JSON line");
    assert_eq!(entry["trace_id"], TRACE);
    assert_eq!(
        entry["plugins"].as_array().map(Vec::len),
        Some(2),
        "{entry}"
    );
}
