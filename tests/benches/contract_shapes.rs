//! Which shape should `weir:plugin@0.2.0` give a plugin the request in?
//! (issue #15). One request with 20 headers, of which the plugin reads two
//! plus the path, in three shapes (`bench/shapes/wit/shapes.wit`):
//!
//! - **records**: the whole request as one record, every header lowered
//!   (what 0.1.0 does);
//! - **interest**: the same record, but the host lowers only what the
//!   plugin declared at load time: its two headers, no connection facts;
//! - **lazy**: a `request` resource the plugin reads through host calls.
//!
//! Each in a Rust, a JavaScript (componentize-js) and a Python
//! (componentize-py) guest doing the same work, on a warm instance. Each
//! iteration builds what the guest gets from an `http::request::Parts`, calls,
//! and turns the answer into a `HeaderMap` — what a request would pay.
//!
//! Run: `cargo bench -p weir-tests --bench contract_shapes` (builds the
//! guests first with `bench/shapes/build.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod shapes {
    wasmtime::component::bindgen!({
        path: "../bench/shapes/wit",
        world: "shapes",
        exports: { default: async },
        with: { "weir:shapes/lazy.request": super::LazyRequest },
    });
}

use shapes::exports::weir::shapes::guest::Changes;
use shapes::weir::shapes::{lazy, types};

/// The host side of the lazy `request` resource: the request itself.
pub struct LazyRequest(http::request::Parts);

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl State {
    fn request(&self, handle: &Resource<LazyRequest>) -> &http::request::Parts {
        &self
            .table
            .get(handle)
            .expect("the guest holds a live handle")
            .0
    }
}

impl lazy::Host for State {}
impl types::Host for State {}

impl lazy::HostRequest for State {
    fn method(&mut self, req: Resource<LazyRequest>) -> String {
        self.request(&req).method.as_str().to_owned()
    }

    fn path(&mut self, req: Resource<LazyRequest>) -> String {
        self.request(&req).uri.path().to_owned()
    }

    fn authority(&mut self, req: Resource<LazyRequest>) -> String {
        let head = self.request(&req);
        head.uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default()
    }

    fn header(&mut self, req: Resource<LazyRequest>, name: String) -> Option<String> {
        self.request(&req)
            .headers
            .get(name.as_str())
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    }

    fn headers(&mut self, req: Resource<LazyRequest>) -> types::Headers {
        headers_to_wit(self.request(&req).headers.iter())
    }

    fn client_ip(&mut self, _req: Resource<LazyRequest>) -> String {
        "127.0.0.1".to_owned()
    }

    fn drop(&mut self, req: Resource<LazyRequest>) -> wasmtime::Result<()> {
        self.table.delete(req)?;
        Ok(())
    }
}

fn headers_to_wit<'a>(
    headers: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) -> types::Headers {
    headers
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The request every shape is given: 20 headers, two of them the plugin's.
fn request_parts() -> http::request::Parts {
    let mut builder = http::Request::builder()
        .method("GET")
        .uri("/api/v1/orders/42?expand=items")
        .header("host", "shop.example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        )
        .header("accept", "application/json")
        .header("accept-language", "en-GB,en;q=0.7")
        .header("accept-encoding", "gzip, deflate, br")
        .header("x-api-key", "demo-key-0123456789");
    for i in 0..14 {
        builder = builder.header(
            format!("x-extra-{i:02}"),
            format!("value number {i}, padded"),
        );
    }
    let (parts, ()) = builder.body(()).expect("request").into_parts();
    assert_eq!(parts.headers.len(), 20);
    parts
}

/// The record of shapes (a) and (b); `only` is the interest declaration.
fn record(head: &http::request::Parts, only: Option<&[HeaderName]>) -> types::Request {
    let headers = match only {
        None => headers_to_wit(head.headers.iter()),
        Some(names) => headers_to_wit(
            names
                .iter()
                .flat_map(|name| head.headers.get_all(name).iter().map(move |v| (name, v))),
        ),
    };
    let connection = only.is_none().then(|| types::ConnectionInfo {
        client_ip: "127.0.0.1".into(),
        client_port: 40000,
        local_ip: "127.0.0.1".into(),
        local_port: 8080,
    });
    types::Request {
        id: "01JDQ3V9Z8K7M2N4P6R8T0W2Y4".into(),
        route: None,
        method: head.method.as_str().to_owned(),
        scheme: "http".into(),
        authority: "shop.example.com".into(),
        path: head.uri.path().to_owned(),
        query: head.uri.query().map(str::to_owned),
        headers,
        connection,
        upstream: None,
        properties: Vec::new(),
    }
}

/// The answer applied, as the chain would.
fn apply(changes: Changes) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(changes.set_headers.len());
    for (name, value) in changes.set_headers {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("guest header name");
        let value = HeaderValue::from_str(&value).expect("guest header value");
        out.insert(name, value);
    }
    out
}

struct Guest {
    store: Store<State>,
    shapes: shapes::Shapes,
    interest: Vec<HeaderName>,
}

impl Guest {
    async fn load(engine: &Engine, linker: &Linker<State>, path: &Path) -> Guest {
        let component = Component::from_file(engine, path)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let mut store = Store::new(
            engine,
            State {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        store.set_epoch_deadline(u64::MAX / 2);
        let shapes = shapes::Shapes::instantiate_async(&mut store, &component, linker)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let interest = shapes
            .weir_shapes_guest()
            .call_interest(&mut store)
            .await
            .expect("interest")
            .iter()
            .map(|name| HeaderName::from_bytes(name.as_bytes()).expect("header name"))
            .collect();
        Guest {
            store,
            shapes,
            interest,
        }
    }

    /// Shape (a), or (b) with `interest`.
    async fn record_call(&mut self, head: &http::request::Parts, interest: bool) -> HeaderMap {
        let req = record(head, interest.then_some(self.interest.as_slice()));
        let guest = self.shapes.weir_shapes_guest();
        let changes = guest.call_on_request(&mut self.store, &req).await;
        apply(changes.expect("call"))
    }

    async fn records(&mut self, head: &http::request::Parts) -> HeaderMap {
        self.record_call(head, false).await
    }

    async fn interest(&mut self, head: &http::request::Parts) -> HeaderMap {
        self.record_call(head, true).await
    }

    async fn lazy(&mut self, head: http::request::Parts) -> (HeaderMap, http::request::Parts) {
        let handle = self
            .store
            .data_mut()
            .table
            .push(LazyRequest(head))
            .expect("table");
        let borrowed = Resource::new_borrow(handle.rep());
        let guest = self.shapes.weir_shapes_guest();
        let changes = guest
            .call_on_request_lazy(&mut self.store, borrowed)
            .await
            .expect("call");
        let LazyRequest(head) = self.store.data_mut().table.delete(handle).expect("handle");
        (apply(changes), head)
    }
}

/// Builds the guests once per bench run; the toolchains are the samples'.
fn guests() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace");
    let out = root.join("target").join("shapes").join("guests");
    let status = Command::new(root.join("bench/shapes/build.sh"))
        .arg(&out)
        .status()
        .expect("run bench/shapes/build.sh");
    assert!(status.success(), "bench/shapes/build.sh failed");
    out
}

fn bench(c: &mut Criterion) {
    let dir = guests();
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    let engine = Engine::new(&config).expect("engine");
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
    shapes::Shapes::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state)
        .expect("link");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");

    let mut group = c.benchmark_group("contract_shapes");
    for lang in ["rust", "js", "python"] {
        let path = dir.join(format!("{lang}.wasm"));
        let mut guest = rt.block_on(Guest::load(&engine, &linker, &path));
        let head = request_parts();

        // The three shapes must answer alike before they are timed.
        let expected = rt.block_on(guest.records(&head));
        assert_eq!(expected["x-client"], "demo-key-0123456789", "{lang}");
        assert_eq!(rt.block_on(guest.interest(&head)), expected, "{lang}");
        let (lazy, head) = rt.block_on(guest.lazy(head));
        assert_eq!(lazy, expected, "{lang}");

        group.bench_function(format!("{lang}/records"), |b| {
            b.iter(|| rt.block_on(guest.records(&head)))
        });
        group.bench_function(format!("{lang}/interest"), |b| {
            b.iter(|| rt.block_on(guest.interest(&head)))
        });
        let mut slot = Some(head);
        group.bench_function(format!("{lang}/lazy"), |b| {
            b.iter(|| {
                let (answer, head) =
                    rt.block_on(guest.lazy(slot.take().expect("the request is back")));
                slot = Some(head);
                answer
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
