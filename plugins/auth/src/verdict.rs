//! Outcomes, and the responses a denial becomes (RFC 6750 §3).

use std::borrow::Cow;
use std::rc::Rc;

use serde::Serialize;
use weir_plugin_sdk::prelude::*;

/// Headers to set on an accepted request.
pub(crate) type Grant = Rc<[(HeaderName, HeaderValue)]>;

/// The decision for one credential.
#[derive(Clone, Debug)]
pub(crate) enum Verdict {
    /// Accepted; set these headers.
    Allow(Grant),
    /// Refused.
    Deny(Denial),
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Denial {
    /// No credential at all: `401`, a challenge without error code (§3.1).
    Missing,
    /// A malformed request, e.g. the credential sent twice: `400 invalid_request`.
    BadRequest(&'static str),
    /// A token that is malformed, badly signed, expired or not for us:
    /// `401 invalid_token`.
    InvalidToken(Cow<'static, str>),
    /// An API key that matches no configured key: `401`.
    InvalidApiKey,
    /// A valid token without the required scopes: `403 insufficient_scope`
    /// with the `scope` attribute.
    InsufficientScope { scope: Rc<str> },
    /// A valid token without a required claim (or value): `403 insufficient_scope`.
    MissingClaim(Rc<str>),
    /// The identity provider is needed to decide and cannot be reached:
    /// `503 temporarily_unavailable`, with `Retry-After`.
    Unavailable(Cow<'static, str>),
}

impl Denial {
    /// The metric counted for this denial (after `auth_denied`).
    pub(crate) fn metric(&self) -> &'static str {
        match self {
            Denial::Missing => "auth_denied_missing",
            Denial::BadRequest(_) => "auth_denied_bad_request",
            Denial::InvalidToken(_) | Denial::InvalidApiKey => "auth_denied_invalid",
            Denial::InsufficientScope { .. } | Denial::MissingClaim(_) => "auth_denied_forbidden",
            Denial::Unavailable(_) => "auth_denied_unavailable",
        }
    }
}

/// Which challenges to send, and the realm.
pub(crate) struct Challenges {
    pub(crate) realm: String,
    pub(crate) bearer: bool,
    pub(crate) api_key: bool,
    /// The API-key locations, named in the `ApiKey` challenge.
    pub(crate) api_key_hint: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl Challenges {
    /// The response for `denial`.
    pub(crate) fn reply(&self, denial: &Denial) -> Reply {
        let realm = quote(&self.realm);
        let (status, error, description): (StatusCode, &str, &str) = match denial {
            Denial::Missing => (StatusCode::UNAUTHORIZED, "unauthorized", "credentials are required"),
            Denial::BadRequest(d) => (StatusCode::BAD_REQUEST, "invalid_request", d),
            Denial::InvalidToken(d) => (StatusCode::UNAUTHORIZED, "invalid_token", d),
            Denial::InvalidApiKey => (StatusCode::UNAUTHORIZED, "invalid_api_key", "the API key is not valid"),
            Denial::InsufficientScope { .. } => {
                (StatusCode::FORBIDDEN, "insufficient_scope", "the token lacks a required scope")
            }
            Denial::MissingClaim(d) => (StatusCode::FORBIDDEN, "insufficient_scope", d),
            Denial::Unavailable(d) => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", d),
        };
        let mut reply = Reply::json(status, &Body { error, error_description: description });
        match denial {
            Denial::Missing => {
                if self.bearer {
                    reply = reply.header("www-authenticate", &format!("Bearer realm={realm}"));
                }
                if self.api_key {
                    reply = reply.header("www-authenticate", &self.api_key_challenge());
                }
            }
            Denial::InvalidApiKey => reply = reply.header("www-authenticate", &self.api_key_challenge()),
            // Not the client's fault: no challenge, come back shortly.
            Denial::Unavailable(_) => reply = reply.header("retry-after", "5"),
            Denial::BadRequest(_) if !self.bearer => {
                reply = reply.header("www-authenticate", &self.api_key_challenge())
            }
            Denial::InsufficientScope { scope } => {
                reply = reply.header(
                    "www-authenticate",
                    &format!(
                        "Bearer realm={realm}, error=\"{error}\", error_description={}, scope={}",
                        quote(description),
                        quote(scope)
                    ),
                );
            }
            _ => {
                reply = reply.header(
                    "www-authenticate",
                    &format!("Bearer realm={realm}, error=\"{error}\", error_description={}", quote(description)),
                );
            }
        }
        reply.header("cache-control", "no-store")
    }

    fn api_key_challenge(&self) -> String {
        format!("ApiKey realm={}, {}", quote(&self.realm), self.api_key_hint)
    }
}

/// `text` as an HTTP quoted-string.
pub(crate) fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}
