//! `inspector` — a test-only plugin that makes the typed facts a plugin
//! receives visible to the upstream, as `x-inspect-*` request headers: the
//! connection info (client address, HTTP version, TLS version, SNI, ALPN,
//! verified client certificate subject and SANs), the scheme, authority,
//! path and `Host` header it was shown, the request id, the route and every
//! property set by earlier plugins. Tests use it to prove those
//! facts reach plugins intact.

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
});

use exports::weir::plugin::guest::Guest;
use weir::plugin::types::{
    HeaderOp, HttpVersion, PluginInfo, Request, RequestAction, RequestChanges, ResponseChanges,
    ResponseHead, Value,
};

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
        if config.trim() != "{}" {
            return Err("inspector takes no configuration".into());
        }
        Ok(PluginInfo {
            on_request: true,
            on_response: false,
            request_body: false,
            response_body: false,
        })
    }

    fn on_request(req: Request) -> RequestAction {
        let conn = &req.connection;
        let mut facts = vec![
            ("client", format!("{}:{}", conn.client_ip, conn.client_port)),
            ("local", format!("{}:{}", conn.local_ip, conn.local_port)),
            (
                "http-version",
                match conn.http_version {
                    HttpVersion::Http10 => "1.0",
                    HttpVersion::Http11 => "1.1",
                    HttpVersion::Http2 => "2",
                    HttpVersion::Http3 => "3",
                }
                .to_owned(),
            ),
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
        if let Some(tls) = &conn.tls {
            facts.push(("tls-version", tls.version.clone()));
            facts.push(("sni", tls.sni.clone().unwrap_or_default()));
            facts.push(("alpn", tls.alpn.clone().unwrap_or_default()));
            facts.push((
                "client-subject",
                tls.client_cert_subject.clone().unwrap_or_default(),
            ));
            facts.push(("client-sans", tls.client_cert_sans.join(",")));
        }
        let properties: Vec<String> = req
            .properties
            .iter()
            .map(|(name, value)| format!("{name}={}", text(value)))
            .collect();
        facts.push(("properties", properties.join(";")));
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

    fn on_response(_req: Request, _resp: ResponseHead) -> ResponseChanges {
        ResponseChanges {
            status: None,
            headers: Vec::new(),
            body: None,
        }
    }
}

export!(Inspector);
