//! The chain: order in both phases, properties passed down, short-circuit.

use weir_tests::{client, echo_json, echoed_header, tagger_plugin, TestProxy, Upstream};

fn three_taggers(upstream: &Upstream, deny_in_b: bool) -> String {
    let deny = if deny_in_b {
        "deny_prefixes = [\"/stop\"]"
    } else {
        ""
    };
    format!(
        "default_upstream = \"up\"\nchain = [\"a\", \"b\", \"c\"]\n{}\n{}\n{}\n{}",
        upstream.toml("up"),
        tagger_plugin("a", "a", ""),
        tagger_plugin("b", "b", deny),
        tagger_plugin("c", "c", ""),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn request_phase_in_order_response_phase_in_reverse() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&three_taggers(&upstream, false)).await;
    let response = client().get(proxy.url("/order")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let way_out: Vec<&str> = response
        .headers()
        .get_all("x-weir-chain")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(way_out, ["c", "b", "a"]);
    let echo = echo_json(&response.text().await.unwrap());
    assert_eq!(echoed_header(&echo, "x-weir-chain"), ["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn properties_set_by_one_plugin_are_seen_by_the_next() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&three_taggers(&upstream, false)).await;
    let response = client().get(proxy.url("/props")).send().await.unwrap();
    let echo = echo_json(&response.text().await.unwrap());
    // Each tagger records the `chain` property it received from earlier ones.
    assert_eq!(echoed_header(&echo, "x-weir-saw-a"), [""]);
    assert_eq!(echoed_header(&echo, "x-weir-saw-b"), ["a"]);
    assert_eq!(echoed_header(&echo, "x-weir-saw-c"), ["a,b"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn respond_stops_the_chain_and_earlier_plugins_see_the_response() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&three_taggers(&upstream, true)).await;
    let response = client().get(proxy.url("/stop/here")).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.headers()["x-weir-denied-by"], "b");
    // Only `a` ran before `b` answered, so only `a` has a response phase.
    let way_out: Vec<&str> = response
        .headers()
        .get_all("x-weir-chain")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(way_out, ["a"]);
    assert_eq!(response.text().await.unwrap(), r#"{"error":"forbidden"}"#);

    // Other paths still go through all three.
    let response = client().get(proxy.url("/go")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}
