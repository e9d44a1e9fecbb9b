//! `weir ctl`: the admin API (`/api/v1/`, see [`crate::admin`]) from a
//! terminal. It sends the admin token and, for an `https://` admin
//! listener, verifies it against `--ca` and presents `--cert`/`--key` when
//! the listener asks for a client certificate. Answers print as tables, or
//! as the API's JSON with `--json`. Part of the binary's edge: errors are
//! `anyhow`, for a person to read.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::config::UpstreamTls;

/// How to reach the admin listener.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The admin listener, `http://HOST:PORT` or `https://HOST:PORT`
    /// (default: `$WEIR_ADMIN_URL`, else `http://127.0.0.1:9901`).
    #[arg(long, env = "WEIR_ADMIN_URL", default_value = "http://127.0.0.1:9901")]
    admin: String,
    /// A file holding the admin token (default: `$WEIR_ADMIN_TOKEN`).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM CA bundle that signed the admin listener's certificate
    /// (default: the system roots).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// PEM client certificate chain, for an admin listener that requires one.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of `--cert`.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// The name to verify the admin certificate for (default: the URL's host).
    #[arg(long)]
    server_name: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// Version, uptime, listeners, reloads.
    Status,
    /// Routes with their upstream and chain.
    Routes,
    /// Loaded plugins: contract, pool, calls in flight, errors.
    Plugins,
    /// Upstream pools and each endpoint's health.
    Upstreams,
    /// Cache statistics, or `cache purge`.
    Cache {
        #[command(subcommand)]
        command: Option<CacheCommand>,
    },
    /// Reload the configuration; a broken one is refused with its errors
    /// and the running configuration keeps serving.
    Reload,
    /// Stop sending new requests to one endpoint (`--undo` resumes).
    Drain {
        upstream: String,
        /// `host:port`, as configured.
        endpoint: String,
        #[arg(long)]
        undo: bool,
    },
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// Remove one key or every key under a prefix.
    Purge {
        #[arg(long, conflicts_with = "prefix", required_unless_present = "prefix")]
        key: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
    },
}

/// Run one `weir ctl` command; `Ok(false)` when the API refused it (its
/// message is already printed).
pub async fn run(args: CtlArgs) -> anyhow::Result<bool> {
    let (method, path, query) = request_of(&args.command);
    let uri = format!("{}/api/v1/{path}{query}", args.admin.trim_end_matches('/'));
    let token = token(&args)?;
    let (status, body) = send(&args, method, &uri, token.as_deref()).await?;
    let succeeded = status.is_success();
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        // The listener's own refusals (token, Host) are plain text.
        Err(_) if !succeeded => {
            serde_json::json!({ "error": String::from_utf8_lossy(&body).trim() })
        }
        Err(err) => bail!("{uri} answered {status} with something not JSON: {err}"),
    };
    let text = if args.json {
        format!("{}\n", serde_json::to_string_pretty(&value)?)
    } else if succeeded {
        render(&args.command, &value)
    } else {
        refusal(status, &value)
    };
    write_out(succeeded, &text)?;
    Ok(succeeded)
}

/// Method, path under `/api/v1/` and query (with its `?`) of a command.
fn request_of(command: &CtlCommand) -> (http::Method, &'static str, String) {
    use http::Method;
    match command {
        CtlCommand::Status => (Method::GET, "status", String::new()),
        CtlCommand::Routes => (Method::GET, "routes", String::new()),
        CtlCommand::Plugins => (Method::GET, "plugins", String::new()),
        CtlCommand::Upstreams => (Method::GET, "upstreams", String::new()),
        CtlCommand::Cache { command: None } => (Method::GET, "cache", String::new()),
        CtlCommand::Cache {
            command: Some(CacheCommand::Purge { key, prefix }),
        } => {
            let query = match (key, prefix) {
                (Some(key), _) => format!("?key={}", encode(key)),
                (None, Some(prefix)) => format!("?prefix={}", encode(prefix)),
                (None, None) => String::new(),
            };
            (Method::POST, "cache/purge", query)
        }
        CtlCommand::Reload => (Method::POST, "reload", String::new()),
        CtlCommand::Drain {
            upstream,
            endpoint,
            undo,
        } => (
            Method::POST,
            "upstreams/drain",
            format!(
                "?upstream={}&endpoint={}{}",
                encode(upstream),
                encode(endpoint),
                if *undo { "&undo=true" } else { "" }
            ),
        ),
    }
}

/// Percent-encode a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn token(args: &CtlArgs) -> anyhow::Result<Option<String>> {
    let token = match &args.token_file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the token file {}", file.display()))?,
        ),
        None => std::env::var("WEIR_ADMIN_TOKEN").ok(),
    };
    Ok(token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()))
}

/// One request over a fresh HTTP/1.1 connection, TLS when the URL says so.
async fn send(
    args: &CtlArgs,
    method: http::Method,
    uri: &str,
    token: Option<&str>,
) -> anyhow::Result<(http::StatusCode, Bytes)> {
    let parsed: http::Uri = uri.parse().with_context(|| format!("{uri} is not a URL"))?;
    let https = match parsed.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => bail!(
            "--admin must start with http:// or https://, not {:?}",
            args.admin
        ),
    };
    let authority = parsed.authority().context("--admin has no host")?.clone();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("cannot connect to the admin listener {authority}"))?;
    let mut request = http::Request::builder()
        .method(method)
        .uri(parsed.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority.as_str());
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::new()))?;
    if https {
        let spec = UpstreamTls {
            ca: args.ca.clone(),
            server_name: None,
            client_cert: args.cert.clone(),
            client_key: args.key.clone(),
        };
        let config = crate::tls::client_config(&spec)?;
        let name = args.server_name.clone().unwrap_or_else(|| host.to_owned());
        let name = rustls::pki_types::ServerName::try_from(name.clone())
            .with_context(|| format!("{name:?} is not a server name"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with the admin listener {authority} failed"))?;
        exchange(TokioIo::new(stream), request).await
    } else {
        exchange(TokioIo::new(tcp), request).await
    }
}

async fn exchange<I>(
    io: I,
    request: http::Request<Full<Bytes>>,
) -> anyhow::Result<(http::StatusCode, Bytes)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .context("the admin listener closed the connection")?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .context("the admin listener closed the connection (is a client certificate needed?)")?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

fn write_out(succeeded: bool, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    if succeeded {
        std::io::stdout().lock().write_all(text.as_bytes())?;
    } else {
        std::io::stderr().lock().write_all(text.as_bytes())?;
    }
    Ok(())
}

fn refusal(status: http::StatusCode, value: &Value) -> String {
    let message = value["error"].as_str().unwrap_or("no reason given");
    let mut text = format!("refused ({status}): {message}\n");
    if let Some(serving) = value["serving"].as_str() {
        text.push_str(&format!("still serving {serving}\n"));
    }
    text
}

/// A JSON value as a table cell.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(fields) if fields.is_empty() => "-".into(),
        Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let lines = std::iter::once(headers.iter().map(|h| h.to_string()).collect()).chain(rows);
    for row in lines {
        let padded: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `key: value` lines of an object's fields.
fn fields(value: &Value) -> String {
    let mut out = String::new();
    if let Value::Object(fields) = value {
        for (key, value) in fields {
            out.push_str(&format!("{key}: {}\n", cell(value)));
        }
    }
    out
}

fn rows<'a>(value: &'a Value, list: &str) -> impl Iterator<Item = &'a Value> {
    value[list].as_array().into_iter().flatten()
}

/// A successful answer, for a person.
fn render(command: &CtlCommand, value: &Value) -> String {
    let pick = |row: &Value, keys: &[&str]| keys.iter().map(|k| cell(&row[*k])).collect();
    match command {
        CtlCommand::Status | CtlCommand::Cache { command: None } => fields(value),
        CtlCommand::Routes => table(
            &["ROUTE", "UPSTREAM", "CACHE", "PLUGINS"],
            rows(value, "routes")
                .map(|r| {
                    let mut row: Vec<String> = pick(r, &["name", "upstream", "cache", "plugins"]);
                    if r["name"].is_null() {
                        row[0] = "(fallback)".into();
                    }
                    row
                })
                .collect(),
        ),
        CtlCommand::Plugins => table(
            &[
                "PLUGIN",
                "CONTRACT",
                "STRATEGY",
                "IDLE",
                "IN-FLIGHT",
                "MAX",
                "TIMEOUT-MS",
                "ERRORS",
                "ROUTES",
            ],
            rows(value, "plugins")
                .map(|p| {
                    let mut row: Vec<String> = pick(
                        p,
                        &[
                            "name",
                            "contract",
                            "strategy",
                            "pool_idle",
                            "in_flight",
                            "max_concurrency",
                            "timeout_ms",
                            "errors",
                        ],
                    );
                    let routes: Vec<String> = p["routes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| r.as_str().unwrap_or("(fallback)").to_owned())
                        .collect();
                    row.push(routes.join(","));
                    row
                })
                .collect(),
        ),
        CtlCommand::Upstreams => table(
            &["UPSTREAM", "ENDPOINT", "STATE", "OUTSTANDING", "FAILURES"],
            rows(value, "upstreams")
                .flat_map(|u| {
                    rows(u, "endpoints").map(move |e| {
                        let mut row = vec![cell(&u["name"])];
                        row.extend(pick(
                            e,
                            &["address", "state", "outstanding", "consecutive_failures"],
                        ));
                        row
                    })
                })
                .collect(),
        ),
        CtlCommand::Cache { command: Some(_) } => match value["purged"].as_u64() {
            Some(n) => format!("purged {n}\n"),
            None => "purging\n".into(),
        },
        CtlCommand::Reload => "reloaded\n".into(),
        CtlCommand::Drain {
            upstream,
            endpoint,
            undo,
        } => {
            let what = if *undo { "resumed" } else { "draining" };
            format!("{upstream} {endpoint}: {what}\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_table_pads_columns_to_their_widest_cell() {
        let text = table(
            &["A", "LONGER"],
            vec![
                vec!["wide cell".into(), "x".into()],
                vec!["y".into(), "z".into()],
            ],
        );
        assert_eq!(text, "A          LONGER\nwide cell  x\ny          z\n");
    }

    #[test]
    fn upstreams_print_one_row_per_endpoint() {
        let value = json!({"upstreams": [{"name": "api", "endpoints": [
            {"address": "10.0.0.1:80", "state": "up", "outstanding": 2, "consecutive_failures": 0},
            {"address": "10.0.0.2:80", "state": "draining", "outstanding": 0, "consecutive_failures": 1},
        ]}]});
        let text = render(&CtlCommand::Upstreams, &value);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[2].starts_with("api") && lines[2].contains("10.0.0.2:80"));
        assert!(lines[2].contains("draining"));
    }

    #[test]
    fn a_refused_reload_names_its_reason_and_what_still_serves() {
        let value = json!({"reloaded": false, "error": "routes[0]: bad", "serving": "the previous configuration"});
        let text = refusal(http::StatusCode::UNPROCESSABLE_ENTITY, &value);
        assert!(text.contains("routes[0]: bad"), "{text}");
        assert!(
            text.contains("still serving the previous configuration"),
            "{text}"
        );
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("http://a/b?c=d e"), "http://a/b%3Fc%3Dd%20e");
    }
}
