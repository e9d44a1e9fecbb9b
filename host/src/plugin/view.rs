//! What a plugin is given: its interest declaration (`plugin-info`),
//! checked once at load and applied to every call. Lowering values into the
//! guest is most of what a call costs, so what a plugin does not read is
//! never built.

use http::header::{HeaderMap, HeaderName};

use super::bindings::types::{self, HeaderInterest};
use super::convert;

/// Most header names one interest may list.
pub const MAX_NAMED_HEADERS: usize = 64;

/// Which headers of a message a plugin gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Headers {
    All,
    Named(Vec<HeaderName>),
}

impl Headers {
    fn new(interest: &HeaderInterest, which: &str) -> Result<Headers, String> {
        let HeaderInterest::Named(names) = interest else {
            return Ok(Headers::All);
        };
        if names.len() > MAX_NAMED_HEADERS {
            return Err(format!(
                "{which}: {} header names (at most {MAX_NAMED_HEADERS})",
                names.len()
            ));
        }
        let mut parsed: Vec<HeaderName> = Vec::with_capacity(names.len());
        for name in names {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{which}: invalid header name {name:?}"))?;
            if !parsed.contains(&name) {
                parsed.push(name);
            }
        }
        Ok(Headers::Named(parsed))
    }

    /// The header list for the guest.
    pub fn of(&self, headers: &HeaderMap) -> types::Headers {
        match self {
            Headers::All => convert::headers_to_wit(headers),
            Headers::Named(names) => names
                .iter()
                .flat_map(|name| {
                    headers
                        .get_all(name)
                        .iter()
                        .map(move |value| convert::header_to_wit(name, value))
                })
                .collect(),
        }
    }
}

/// A plugin's view of the request and the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub request_headers: Headers,
    pub response_headers: Headers,
    pub connection: bool,
    pub properties: bool,
}

impl View {
    /// Everything: what a plugin sees before its info is known.
    pub fn everything() -> View {
        View {
            request_headers: Headers::All,
            response_headers: Headers::All,
            connection: true,
            properties: true,
        }
    }

    /// The view a plugin's info declares, or why it is refused.
    pub fn new(info: &types::PluginInfo) -> Result<View, String> {
        Ok(View {
            request_headers: Headers::new(&info.request_headers, "request-headers")?,
            response_headers: Headers::new(&info.response_headers, "response-headers")?,
            connection: info.connection,
            properties: info.properties,
        })
    }
}
