//! `inspector` — a test-only plugin that makes the typed facts a plugin
//! receives visible to the upstream, as `x-inspect-*` request headers: the
//! connection info (client address, HTTP version, TLS version, SNI, ALPN,
//! verified client certificate subject and SANs), the scheme, authority,
//! path and `Host` header it was shown, the request id, the route and every
//! property set by earlier plugins, and the names of the headers it was
//! given. Tests use it to prove those facts reach plugins intact.
//!
//! Its config is its interest declaration (every key optional):
//! `{"headers": ["a", "b"], "connection": false, "properties": false,
//! "response": true, "response_headers": ["c"]}`. With `response`, its
//! response phase reports the request id, the response header names and
//! the properties it was given as `x-inspect-response-*` response headers.

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
});

use exports::weir::plugin::guest::Guest;
use serde::Deserialize;
use weir::plugin::types::{
    HeaderInterest, HeaderOp, HttpVersion, PluginInfo, Request, RequestAction, RequestChanges,
    ResponseChanges, ResponseHead, Value,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    headers: Option<Vec<String>>,
    #[serde(default = "yes")]
    connection: bool,
    #[serde(default = "yes")]
    properties: bool,
    #[serde(default)]
    response: bool,
    response_headers: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

fn interest(names: Option<Vec<String>>) -> HeaderInterest {
    names.map_or(HeaderInterest::All, HeaderInterest::Named)
}

fn names(headers: &[(String, String)]) -> String {
    let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
    names.join(",")
}

fn properties(props: &[(String, Value)]) -> String {
    let props: Vec<String> = props
        .iter()
        .map(|(name, value)| format!("{name}={}", text(value)))
        .collect();
    props.join(";")
}

fn text(value: &Value) -> String {
    match value {
        Value::Text(text) => text.clone(),
        Value::Integer(n) => n.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Flag(b) => b.to_string(),
        Value::Bytes(bytes) => format!("{} bytes", bytes.len()),
        Value::Texts(list) => list.join("|"),
    }
}

/// Header values must be visible ASCII; escape anything else (and only
/// that, so paths and addresses arrive byte for byte).
fn printable(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c.to_string()
            } else {
                c.escape_default().to_string()
            }
        })
        .collect()
}

struct Inspector;

impl Guest for Inspector {
    fn validate_config(config: String) -> Result<PluginInfo, String> {
        let config: Config = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        Ok(PluginInfo {
            on_request: true,
            on_response: config.response,
            request_body: false,
            response_body: false,
            request_headers: interest(config.headers),
            response_headers: interest(config.response_headers),
            connection: config.connection,
            properties: config.properties,
        })
    }

    fn on_request(req: Request) -> RequestAction {
        let mut facts = vec![
            ("scheme", req.scheme.clone()),
            ("authority", req.authority.clone()),
            ("path", req.path.clone()),
            (
                "host-header",
                req.headers
                    .iter()
                    .filter(|(name, _)| name == "host")
                    .map(|(_, value)| value.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("request-id", req.id.clone()),
            ("route", req.route.clone().unwrap_or_default()),
        ];
        facts.push(("headers", names(&req.headers)));
        if let Some(conn) = &req.connection {
            facts.push(("client", format!("{}:{}", conn.client_ip, conn.client_port)));
            facts.push(("local", format!("{}:{}", conn.local_ip, conn.local_port)));
            let version = match conn.http_version {
                HttpVersion::Http10 => "1.0",
                HttpVersion::Http11 => "1.1",
                HttpVersion::Http2 => "2",
                HttpVersion::Http3 => "3",
            };
            facts.push(("http-version", version.to_owned()));
        }
        if let Some(tls) = req.connection.as_ref().and_then(|conn| conn.tls.as_ref()) {
            facts.push(("tls-version", tls.version.clone()));
            facts.push(("sni", tls.sni.clone().unwrap_or_default()));
            facts.push(("alpn", tls.alpn.clone().unwrap_or_default()));
            facts.push((
                "client-subject",
                tls.client_cert_subject.clone().unwrap_or_default(),
            ));
            facts.push(("client-sans", tls.client_cert_sans.join(",")));
        }
        facts.push(("properties", properties(&req.properties)));
        let headers = facts
            .into_iter()
            .map(|(name, value)| HeaderOp::Set((format!("x-inspect-{name}"), printable(&value))))
            .collect();
        RequestAction::Continue(RequestChanges {
            method: None,
            path: None,
            query: None,
            headers,
            upstream: None,
            properties: Vec::new(),
            cache: None,
            body: None,
        })
    }

    fn on_response(resp: ResponseHead) -> ResponseChanges {
        let facts = [
            ("request-id", resp.request_id.clone()),
            ("headers", names(&resp.headers)),
            ("properties", properties(&resp.properties)),
        ];
        ResponseChanges {
            status: None,
            headers: facts
                .into_iter()
                .map(|(name, value)| {
                    HeaderOp::Set((format!("x-inspect-response-{name}"), printable(&value)))
                })
                .collect(),
            body: None,
        }
    }
}

export!(Inspector);
