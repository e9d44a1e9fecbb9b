//! The host's metric families appear after traffic and move when they
//! should: request and upstream latency histograms, upstream outcomes,
//! plugin call time, cache results and size, open connections, reloads and
//! the build; and the whole scrape passes `promtool check metrics`.

use weir_tests::{admin_section, client, respond, tagger_plugin, TestProxy, Upstream, ADMIN_TOKEN};

async fn scrape(proxy: &TestProxy) -> String {
    let response = client()
        .get(proxy.admin_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The value of the sample whose name and labels are exactly `series`.
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{scrape}"))
}

fn config(up: &Upstream, extra: &str) -> String {
    format!(
        "default_upstream = \"up\"\n{}\n[upstreams.down]\nendpoints = [\"127.0.0.1:1\"]\nretries = 0\n\
         [cache]\ncapacity_bytes = 1048576\n{}{}\n\
         [[routes]]\nname = \"api\"\nprefix = \"/api\"\nchain = [\"tagger\"]\n\
         [[routes]]\nname = \"broken\"\nprefix = \"/broken\"\nupstream = \"down\"\n{extra}",
        up.toml("up"),
        admin_section(),
        tagger_plugin("tagger", "t", ""),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_host_family_appears_and_moves_with_traffic() {
    let up = Upstream::serve(|req| async move {
        let mut response = respond(200, "ok");
        if req.uri().path().contains("cached") {
            response
                .headers_mut()
                .insert("cache-control", "max-age=60".parse().unwrap());
        }
        response
    })
    .await;
    let proxy = TestProxy::start(&config(&up, "")).await;
    let before = scrape(&proxy).await;
    assert!(before.contains("weir_build_info{version=\""), "{before}");
    assert!(value(&before, "weir_last_reload_success_timestamp_seconds") > 1.7e9);

    for _ in 0..3 {
        assert_eq!(
            client()
                .get(proxy.url("/api/cached"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        client()
            .get(proxy.url("/broken/x"))
            .send()
            .await
            .unwrap()
            .status(),
        502
    );
    client().get(proxy.url("/elsewhere")).send().await.unwrap();
    // A good reload and a broken one.
    proxy.reload().await.expect("the same config reloads");
    proxy.rewrite(&config(
        &up,
        "[[routes]]\nname = \"bad\"\nchain = [\"nope\"]\n",
    ));
    assert!(proxy.reload().await.is_err());

    let after = scrape(&proxy).await;
    assert_eq!(
        value(&after, "weir_request_duration_seconds_count{route=\"api\"}"),
        3.0
    );
    assert_eq!(
        value(
            &after,
            "weir_request_duration_seconds_count{route=\"broken\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&after, "weir_request_duration_seconds_count{route=\"\"}"),
        1.0
    );
    assert!(value(&after, "weir_request_duration_seconds_sum{route=\"api\"}") > 0.0);
    // Two reached the upstream: the first cached miss and /elsewhere.
    assert_eq!(
        value(
            &after,
            "weir_upstream_request_duration_seconds_count{upstream=\"up\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &after,
            "weir_upstream_requests_total{upstream=\"up\",outcome=\"2xx\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &after,
            "weir_upstream_requests_total{upstream=\"down\",outcome=\"error\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "weir_plugin_call_duration_seconds_count{plugin=\"tagger\",phase=\"request\"}"
        ),
        3.0
    );
    assert_eq!(
        value(&after, "weir_cache_requests_total{result=\"hit\"}"),
        2.0
    );
    // The first /api/cached and /elsewhere (the failed /broken has none).
    assert_eq!(
        value(&after, "weir_cache_requests_total{result=\"miss\"}"),
        2.0
    );
    assert_eq!(value(&after, "weir_cache_entries"), 1.0);
    assert!(value(&after, "weir_cache_bytes") > 0.0);
    let listener = proxy.all_addrs()[0];
    assert!(
        after.contains(&format!(
            "weir_connections_active{{listener=\"{listener}\",protocol=\"http1\"}}"
        )),
        "{after}"
    );
    assert_eq!(
        value(&after, "weir_plugin_pool_idle_instances{plugin=\"tagger\"}"),
        0.0
    );
    assert_eq!(
        value(&after, "weir_plugin_calls_in_flight{plugin=\"tagger\"}"),
        0.0
    );
    assert_eq!(
        value(&after, "weir_reloads_total{outcome=\"success\"}"),
        1.0
    );
    assert_eq!(
        value(&after, "weir_reloads_total{outcome=\"failure\"}"),
        1.0
    );

    weir_tests::assert_promtool_accepts(&after);
}

/// Polls the scrape until `series` reads `want` (gauges move as
/// connection tasks finish, a moment after the client is done).
async fn until(proxy: &TestProxy, series: &str, want: f64) {
    let mut last = String::new();
    for _ in 0..200 {
        last = scrape(proxy).await;
        if last.lines().find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        }) == Some(want)
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("{series} never read {want}:\n{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn open_connections_are_counted_by_protocol_once_they_speak() {
    let up = Upstream::serve(|_req| async move { respond(200, "ok") }).await;
    let proxy = TestProxy::start(&config(&up, "")).await;
    let listener = proxy.all_addrs()[0];
    let series = |protocol: &str| {
        format!("weir_connections_active{{listener=\"{listener}\",protocol=\"{protocol}\"}}")
    };

    // Connected, silent: pending.
    let silent = tokio::net::TcpStream::connect(listener).await.unwrap();
    until(&proxy, &series("pending"), 1.0).await;

    // An h2c client's connection stays open after its request.
    let h2 = weir_tests::h2c_client();
    let response = h2.get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    response.bytes().await.unwrap();
    until(&proxy, &series("h2"), 1.0).await;
    until(&proxy, &series("pending"), 1.0).await;

    drop(silent);
    drop(h2);
    until(&proxy, &series("pending"), 0.0).await;
    until(&proxy, &series("h2"), 0.0).await;
}
