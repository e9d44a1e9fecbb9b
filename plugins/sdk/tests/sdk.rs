//! The SDK from a plugin's point of view: a separate crate that exports a
//! plugin with `export_plugin!` (so the macro is proven to expand outside
//! the SDK) and tests it natively.

use serde::Deserialize;
use weir_plugin::testing::{self, request};
use weir_plugin::{
    deny, json_error, kv, Action, CacheDirectives, HeaderOp, Info, Plugin, Request,
    ResponseChanges, ResponseHead, Value,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    greeting: String,
    #[serde(default)]
    echo_body: bool,
}

struct Greeter;

impl Plugin for Greeter {
    type Config = Config;

    fn info(config: &Config) -> Info {
        let info = Info::both_phases();
        match config.echo_body {
            true => info.with_request_body(),
            false => info,
        }
    }

    fn validate(config: &Config) -> Result<(), String> {
        match config.greeting.is_empty() {
            true => Err("greeting must not be empty".into()),
            false => Ok(()),
        }
    }

    fn on_request(config: &Config, req: &Request) -> Action {
        if req.path == "/deny" {
            return deny(403, "not here").into();
        }
        Action::next()
            .set_header("X-Greeting", &config.greeting)
            .set_property("greeted", true)
            .into()
    }

    fn on_response(_: &Config, resp: &ResponseHead) -> ResponseChanges {
        match resp.header("content-type") {
            Some(_) => ResponseChanges::new().append_header("x-greeted", "yes"),
            None => ResponseChanges::new(),
        }
    }
}

weir_plugin::export_plugin!(Greeter);

/// Uses every default of the trait.
struct Quiet;

impl Plugin for Quiet {
    type Config = serde_json::Value;

    fn info(_: &serde_json::Value) -> Info {
        Info::request_phase()
    }
}

const CONFIG: &str = r#"{"greeting":"hello"}"#;

#[test]
fn the_greeter_keeps_the_contract() {
    let requests = [
        request("GET", "/").build(),
        request("POST", "/deny").build(),
    ];
    testing::check_conformance::<Greeter>(CONFIG, &requests);
}

#[test]
fn defaults_change_nothing() {
    let req = request("GET", "/").build();
    let config = testing::config::<Quiet>("{}");
    assert_eq!(Quiet::on_request(&config, &req), Action::next().into());
    let head = ResponseHead {
        request_id: req.id.clone(),
        status: 200,
        headers: vec![],
        properties: vec![],
        body: None,
    };
    assert_eq!(
        Quiet::on_response(&config, &head),
        ResponseChanges::default()
    );
}

#[test]
fn config_errors_are_refusals_without_json_positions() {
    let message = testing::check_config_rejected::<Greeter>(r#"{"greting":"hi"}"#);
    assert!(message.starts_with("unknown field `greting`"), "{message}");
    assert!(!message.contains("line 1"), "{message}");
    let message = testing::check_config_rejected::<Greeter>(r#"{"greeting":""}"#);
    assert_eq!(message, "greeting must not be empty");
    testing::check_unknown_keys_rejected::<Greeter>(CONFIG);
}

#[test]
fn info_comes_from_the_config() {
    assert_eq!(
        testing::validate::<Greeter>(CONFIG),
        Ok(Info::both_phases())
    );
    let info = testing::validate::<Greeter>(r#"{"greeting":"hi","echo_body":true}"#).unwrap();
    assert!(info.on_request && info.on_response && info.request_body && !info.response_body);
}

#[test]
fn request_accessors() {
    let req = request("GET", "/p?a=1&b&a=2&c=%20")
        .header("Accept", "text/html")
        .header("accept", "application/json")
        .client_ip("203.0.113.7")
        .property("user", "ann")
        .property("scopes", vec!["read".to_string()])
        .property("n", 3_i64)
        .build();
    assert_eq!(req.path, "/p");
    assert_eq!(req.header("ACCEPT"), Some("text/html"));
    assert_eq!(
        req.headers("accept").collect::<Vec<_>>(),
        ["text/html", "application/json"]
    );
    assert_eq!(req.header("missing"), None);
    assert_eq!(req.query_param("a"), Some("1"));
    assert_eq!(req.query_param("b"), Some(""));
    assert_eq!(req.query_param("c"), Some("%20"), "values stay encoded");
    assert_eq!(req.query_param("d"), None);
    assert_eq!(req.client_ip(), Some("203.0.113.7"));
    assert_eq!(req.property_text("user"), Some("ann"));
    assert_eq!(req.property_text("n"), None);
    assert_eq!(req.property("n").and_then(Value::as_integer), Some(3));
    assert_eq!(
        req.property_texts("scopes"),
        Some(&["read".to_string()][..])
    );
    assert_eq!(Request::builder("GET", "/").build().query, None);
}

#[test]
fn values_render_as_text() {
    assert_eq!(Value::from("a").to_string(), "a");
    assert_eq!(Value::from(-4_i64).to_string(), "-4");
    assert_eq!(Value::from(true).to_string(), "true");
    assert_eq!(
        Value::from(vec!["a".to_string(), "b".to_string()]).to_string(),
        "a,b"
    );
    assert_eq!(Value::from(vec![1_u8, 2]).to_string(), "[1, 2]");
}

#[test]
fn changes_keep_their_order_and_lower_case_names() {
    let Action::Continue(changes) = Action::next()
        .set_header("X-A", "1")
        .append_header("x-b", "2")
        .remove_header("X-C")
        .upstream("api")
        .path("/v2")
        .query("")
        .cache(CacheDirectives::default().ttl_cap(5).key_part("t=1"))
        .into()
    else {
        unreachable!()
    };
    assert_eq!(
        changes.headers,
        vec![
            HeaderOp::Set(("x-a".into(), "1".into())),
            HeaderOp::Append(("x-b".into(), "2".into())),
            HeaderOp::Remove("x-c".into()),
        ]
    );
    assert_eq!(changes.upstream.as_deref(), Some("api"));
    assert_eq!(changes.path.as_deref(), Some("/v2"));
    assert_eq!(changes.query.as_deref(), Some(""));
    let cache = changes.cache.unwrap();
    assert_eq!((cache.bypass, cache.ttl_cap), (false, Some(5)));
    assert_eq!(cache.extra_key, ["t=1"]);
    assert!(CacheDirectives::bypass().bypass);
}

#[test]
fn local_answers() {
    let response = Action::respond(404).json(&serde_json::json!({ "error": "no route" }));
    assert_eq!(response.body, br#"{"error":"no route"}"#);
    assert_eq!(
        response.headers,
        [("content-type".to_string(), "application/json".to_string())]
    );

    let error = json_error(401, "invalid_token", "expired");
    assert_eq!(error.status, 401);
    assert_eq!(
        error.body,
        br#"{"error":"invalid_token","detail":"expired"}"#
    );
    assert!(error
        .headers
        .contains(&("cache-control".into(), "no-store".into())));

    assert_eq!(
        deny(403, "x").body,
        br#"{"error":"forbidden","detail":"x"}"#
    );
    assert_eq!(
        deny(429, "x").body,
        br#"{"error":"too_many_requests","detail":"x"}"#
    );
    let text = Action::respond(200).text("hi");
    assert_eq!(text.body, b"hi");
}

#[test]
fn the_native_kv_honours_ttls_on_the_test_clock() {
    testing::clear_kv();
    testing::set_now_ms(Some(10_000));
    kv::set("a", b"1", Some(1_000)).unwrap();
    assert_eq!(kv::get("a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(kv::increment("a", 2, None).unwrap(), 3);
    testing::set_now_ms(Some(11_000));
    assert_eq!(kv::get("a").unwrap(), None, "expired");

    assert_eq!(kv::increment("n", 1, Some(500)).unwrap(), 1);
    kv::set("text", b"x", None).unwrap();
    assert!(matches!(
        kv::increment("text", 1, None),
        Err(kv::KvError::NotAnInteger)
    ));

    assert!(kv::compare_and_swap("c", None, b"1", None).unwrap());
    assert!(!kv::compare_and_swap("c", None, b"2", None).unwrap());
    assert!(kv::compare_and_swap("c", Some(b"1"), b"2", None).unwrap());
    kv::delete("c").unwrap();
    assert_eq!(kv::get("c").unwrap(), None);
    testing::set_now_ms(None);
}

/// A plugin breaking the contract, to prove the checks catch it.
struct Sloppy;

impl Plugin for Sloppy {
    type Config = Config;

    fn info(_: &Config) -> Info {
        Info::request_phase()
    }

    fn on_request(_: &Config, _: &Request) -> Action {
        Action::next().path("no-slash").into()
    }
}

#[test]
#[should_panic(expected = "must start with /")]
fn conformance_catches_a_bad_path() {
    testing::check_conformance::<Sloppy>(CONFIG, &[request("GET", "/").build()]);
}

#[test]
#[should_panic(expected = "line break")]
fn conformance_catches_header_injection() {
    testing::check_action(&Action::respond(200).header("x-a", "1\r\nx-b: 2").into());
}
