//! Where a credential is read from: a header, a query parameter or a cookie.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use weir_plugin_sdk::http;
use weir_plugin_sdk::prelude::*;

use crate::verdict::Denial;

/// One credential location, as configured: `{ header = "x-api-key" }`,
/// `{ query = "access_token" }` or `{ cookie = "session" }`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum SourceConfig {
    Header(String),
    Query(String),
    Cookie(String),
}

/// A table with exactly one of `header`, `query` and `cookie`: what serde
/// reads for the enum, written as one object schema rather than the
/// derived `oneOf`, so that a mismatch (`{ body = "t" }`) is reported at
/// its key instead of as "no alternative matched".
impl JsonSchema for SourceConfig {
    fn schema_name() -> Cow<'static, str> {
        "Location".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Where a credential is read: `{ header = \"NAME\" }`, `{ query = \"NAME\" }` or \
                            `{ cookie = \"NAME\" }`, exactly one of them.",
            "type": "object",
            "properties": {
                "header": {
                    "description": "A request header's name, e.g. `\"x-api-key\"`; in `authorization` only the \
                                    `Bearer` scheme is a token, in any other header the whole value is.",
                    "type": "string",
                },
                "query": {
                    "description": "A query parameter's name, written decoded (without `%`).",
                    "type": "string",
                },
                "cookie": {
                    "description": "A cookie's name, written decoded (without `%`).",
                    "type": "string",
                },
            },
            "additionalProperties": false,
            "minProperties": 1,
            "maxProperties": 1,
        })
    }
}

/// A validated location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A header. For `authorization` the `Bearer` scheme is required (a
    /// value with another scheme is not ours); for any other header the
    /// whole value is the credential (a `Bearer ` prefix is tolerated).
    Header(HeaderName),
    Query(String),
    Cookie(String),
}

impl Source {
    pub(crate) fn from_config(c: &SourceConfig) -> Result<Source, String> {
        match c {
            SourceConfig::Header(name) => {
                let parsed = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("`{name}` is not a valid header name"))?;
                Ok(Source::Header(parsed))
            }
            // Names are compared percent-decoded: written decoded here.
            SourceConfig::Query(name) | SourceConfig::Cookie(name) if name.contains('%') => {
                let what = if matches!(c, SourceConfig::Query(_)) { "query parameter" } else { "cookie" };
                Err(format!("`{name}` is not a valid {what} name (write it decoded, without `%`)"))
            }
            SourceConfig::Query(name) => {
                if name.is_empty() || name.contains(['&', '=', '#', ' ']) {
                    return Err(format!("`{name}` is not a valid query parameter name"));
                }
                Ok(Source::Query(name.clone()))
            }
            SourceConfig::Cookie(name) => {
                let token = |b: u8| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b);
                if name.is_empty() || !name.bytes().all(token) {
                    return Err(format!("`{name}` is not a valid cookie name"));
                }
                Ok(Source::Cookie(name.clone()))
            }
        }
    }

    /// How the location is named in an `ApiKey` challenge.
    pub(crate) fn hint(&self) -> String {
        match self {
            Source::Header(n) => format!("header=\"{n}\""),
            Source::Query(n) => format!("query=\"{n}\""),
            Source::Cookie(n) => format!("cookie=\"{n}\""),
        }
    }

    /// The credential at this location: `Ok(None)` if there is none, an
    /// error if it is given more than once.
    pub(crate) fn extract<'r>(&self, req: &'r Request) -> Result<Option<Cow<'r, str>>, Denial> {
        match self {
            Source::Header(name) => {
                let mut values = req.headers().get_all(name).iter();
                let Some(value) = values.next() else { return Ok(None) };
                if values.next().is_some() {
                    return Err(Denial::BadRequest("the credential header is repeated"));
                }
                let value = value.to_str().map_err(|_| Denial::BadRequest("the credential header is not ASCII"))?;
                let credential = if name == http::header::AUTHORIZATION {
                    match value.split_once(' ') {
                        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
                        _ if value.eq_ignore_ascii_case("bearer") => "",
                        _ => return Ok(None),
                    }
                } else {
                    match value.split_once(' ') {
                        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
                        _ => value.trim(),
                    }
                };
                Ok((!credential.is_empty()).then_some(Cow::Borrowed(credential)))
            }
            Source::Query(name) => {
                let Some(query) = req.query() else { return Ok(None) };
                let mut found = None;
                for pair in query.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if is_named(k, name) {
                        if found.is_some() {
                            return Err(Denial::BadRequest("the credential parameter is repeated"));
                        }
                        found = Some(v);
                    }
                }
                Ok(found.filter(|v| !v.is_empty()).map(percent_decode))
            }
            Source::Cookie(name) => {
                let Some(value) = cookie(req, name)? else { return Ok(None) };
                let value = std::str::from_utf8(value)
                    .map_err(|_| Denial::BadRequest("the credential cookie is not UTF-8"))?
                    .trim_matches('"');
                Ok((!value.is_empty()).then_some(Cow::Borrowed(value)))
            }
        }
    }

    /// Whether a credential of ours is at this location (used to strip it).
    fn present(&self, req: &Request) -> bool {
        !matches!(self.extract(req), Ok(None))
    }

    /// Remove the credential at this location, if any, leaving the rest of
    /// the request (other query parameters, other cookies) intact.
    pub(crate) fn strip(&self, req: &mut Request) -> Result<()> {
        if !self.present(req) {
            return Ok(());
        }
        match self {
            Source::Header(name) => req.remove_header(name)?,
            Source::Query(name) => {
                let kept: Vec<&str> = req
                    .query()
                    .unwrap_or_default()
                    .split('&')
                    .filter(|pair| !is_named(pair.split_once('=').map_or(*pair, |(k, _)| k), name))
                    .collect();
                let uri =
                    if kept.is_empty() { req.path().to_owned() } else { format!("{}?{}", req.path(), kept.join("&")) };
                req.set_uri(&uri)?;
            }
            Source::Cookie(name) => {
                let cookies: Vec<HeaderValue> = req
                    .headers()
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| {
                        let kept: Vec<&[u8]> = cookie_pairs(v.as_bytes())
                            .filter(|(k, _, _)| !is_named_bytes(k, name))
                            .map(|(_, _, pair)| pair)
                            .collect();
                        (!kept.is_empty()).then(|| HeaderValue::from_bytes(&kept.join(&b"; "[..])).ok()).flatten()
                    })
                    .collect();
                req.remove_header(http::header::COOKIE)?;
                for c in cookies {
                    req.append_header(http::header::COOKIE, c.as_bytes())?;
                }
            }
        }
        Ok(())
    }
}

/// The value of the cookie called `name` in the request's `Cookie`
/// header(s), as bytes (a header with non-ASCII bytes is read too, as an
/// upstream would); a `400` if the name occurs more than once, so that no
/// upstream can read another occurrence than the one checked here.
fn cookie<'r>(req: &'r Request, name: &str) -> Result<Option<&'r [u8]>, Denial> {
    let mut found = None;
    for header in req.headers().get_all(http::header::COOKIE) {
        for (k, v, _) in cookie_pairs(header.as_bytes()) {
            if is_named_bytes(k, name) {
                if found.is_some() {
                    return Err(Denial::BadRequest("the credential cookie is repeated"));
                }
                found = Some(v);
            }
        }
    }
    Ok(found)
}

/// The `name=value` pairs of one `Cookie` header: `(name, value, pair)`,
/// name and value trimmed of whitespace (as lenient parsers do), `pair`
/// as written. A piece without `=` is a name with an empty value.
fn cookie_pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8], &[u8])> {
    header.split(|b| *b == b';').map(<[u8]>::trim_ascii).filter(|pair| !pair.is_empty()).map(|pair| {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        (k.trim_ascii(), v.trim_ascii(), pair)
    })
}

/// Whether a query parameter name as written (`access%5Ftoken`) is `name`
/// once percent-decoded. (`+` is kept: a configured name has no space, so
/// this also covers decoders that read `+` as a space.)
fn is_named(raw: &str, name: &str) -> bool {
    percent_decode(raw) == name
}

/// [`is_named`] for a cookie name (bytes; a non-UTF-8 name is never ours).
fn is_named_bytes(raw: &[u8], name: &str) -> bool {
    std::str::from_utf8(raw).is_ok_and(|raw| is_named(raw, name))
}

/// Decode `%XX` escapes (a `+` stays a `+`: API keys and tokens never
/// contain spaces). Invalid escapes are kept as they are.
fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(Some(h)), Some(Some(l))) =
                (bytes.get(i + 1).map(|b| hex(*b)), bytes.get(i + 2).map(|b| hex(*b)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(text),
    }
}
