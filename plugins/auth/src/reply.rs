//! The one place denials become responses: 401 with challenges for missing
//! or bad credentials, 403 for a valid identity a rule does not admit.
//! Bodies are short JSON naming the failed check, never internals.

use weir_plugin::{json_error, Response};

use crate::config::{Config, Method};

pub enum Denial {
    /// No credential for any enabled method.
    Missing,
    /// A credential was presented and did not check out.
    Invalid {
        method: Method,
        detail: &'static str,
    },
    /// Authenticated, but a rule for this path wants a scope it lacks.
    MissingScope { method: Method, scope: String },
    /// Authenticated, but a rule for this path wants a claim it lacks.
    MissingClaim { claim: String },
}

impl Denial {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Denial::Missing => "missing",
            Denial::Invalid { .. } => "invalid",
            Denial::MissingScope { .. } | Denial::MissingClaim { .. } => "forbidden",
        }
    }
}

pub fn deny(config: &Config, denial: &Denial) -> Response {
    let realm = &config.realm;
    let (status, challenges, error, detail) = match denial {
        Denial::Missing => (
            401,
            config
                .methods
                .iter()
                .map(|method| challenge(*method, realm, None))
                .collect(),
            "unauthorized",
            "credentials required".to_string(),
        ),
        Denial::Invalid { method, detail } => {
            let error = match method {
                Method::ApiKey => "invalid_api_key",
                Method::Basic => "invalid_credentials",
                Method::Jwt => "invalid_token",
            };
            let params = format!("error=\"{error}\", error_description=\"{detail}\"");
            let params = (*method == Method::Jwt).then_some(params.as_str());
            (
                401,
                vec![challenge(*method, realm, params)],
                error,
                detail.to_string(),
            )
        }
        Denial::MissingScope { method, scope } => {
            // RFC 6750 §3.1: a bearer client learns which scope to ask for.
            let challenges = if *method == Method::Jwt {
                let params = format!("error=\"insufficient_scope\", scope=\"{scope}\"");
                vec![challenge(Method::Jwt, realm, Some(&params))]
            } else {
                vec![]
            };
            (
                403,
                challenges,
                "insufficient_scope",
                format!("requires scope {scope}"),
            )
        }
        Denial::MissingClaim { claim } => {
            (403, vec![], "forbidden", format!("requires claim {claim}"))
        }
    };
    challenges
        .into_iter()
        .fold(json_error(status, error, &detail), |response, challenge| {
            response.header("www-authenticate", challenge)
        })
}

fn challenge(method: Method, realm: &str, params: Option<&str>) -> String {
    let scheme = match method {
        Method::Jwt => "Bearer",
        Method::Basic => "Basic",
        // No registered scheme exists for API keys; this one at least tells
        // a client where the key goes.
        Method::ApiKey => "ApiKey",
    };
    let mut challenge = format!("{scheme} realm=\"{realm}\"");
    if method == Method::Basic {
        challenge.push_str(", charset=\"UTF-8\"");
    }
    if let Some(params) = params {
        challenge.push_str(", ");
        challenge.push_str(params);
    }
    challenge
}
