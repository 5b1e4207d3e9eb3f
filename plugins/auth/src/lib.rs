//! `auth.wasm`: authenticate requests with JWT bearer tokens and/or API keys.
//!
//! * **JWT** (RFC 7519): HS256/384/512, RS256/384/512, PS256/384/512,
//!   ES256/384, with keys from secrets, PEM public keys or a JWKS document
//!   in the config, and/or an identity provider's JWKS URL (`remote`:
//!   fetched through the `outbound` capability, shared through host state,
//!   following rotations, served stale when the provider is down).
//!   The accepted algorithms come from the keys (`alg: none` never
//!   verifies, an HMAC secret never verifies an RSA token); `kid` picks the
//!   key. `exp`/`nbf` (with leeway), `iss`, `aud`, required
//!   scopes and claims are checked; chosen claims are forwarded as headers.
//! * **Opaque tokens** introspected at the provider (RFC 7662,
//!   `introspect`), answers cached by token hash; the same claim rules.
//! * **API keys** from a header, query parameter or cookie, stored plain or
//!   as SHA-256 digests, compared in constant time; the consumer's name is
//!   forwarded as a header.
//!
//! Headers the plugin sets (`x-auth-sub` by default) are always removed
//! from the incoming request first, also when spelled with `_` for `-`
//! (`x_auth_sub`), so clients cannot spoof an identity.
//! A missing or bad credential is answered `401` with `WWW-Authenticate`
//! (RFC 6750), a valid token lacking a scope or claim `403`; bodies are
//! JSON `{"error", "error_description"}`.
//!
//! ```toml
//! [plugins.auth]
//! module = "auth.wasm"
//!
//! [plugins.auth.config]
//! realm = "api"
//! strip_credential = true
//!
//! [plugins.auth.config.jwt]
//! issuers = ["https://id.example.com/"]
//! audiences = ["orders"]
//! required_scopes = ["orders:read"]
//! forward_claims = { sub = "x-auth-sub", email = "x-auth-email" }
//! jwks = '{"keys": [{"kty": "EC", "kid": "2024-06", "crv": "P-256", "x": "…", "y": "…"}]}'
//!
//! [plugins.auth.config.api_keys]
//! from = [{ header = "x-api-key" }]
//! keys = [
//!   { name = "billing-batch", sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8" },
//! ]
//! ```
//!
//! Every configured location is read: a request carries at most one
//! credential (the same string in several locations counts once), checked
//! as a token if it is in a `jwt.from` location, else as an API key;
//! different credentials in two locations, or one location given twice,
//! are a `400`, so an upstream can never read an unchecked one.
//! See `README.md` beside this crate for every key and the exact rules.

mod alg;
mod apikey;
mod cache;
mod config;
mod introspect;
mod jwt;
mod keys;
mod remote;
mod source;
mod verdict;

use std::borrow::Cow;

use weir_plugin_sdk::prelude::*;

use crate::apikey::ApiKeys;
use crate::config::{Settings, same_header};
use crate::jwt::Jwt;
use crate::source::Source;
use crate::verdict::{Challenges, Denial, Grant, Verdict};

struct Auth {
    jwt: Option<Jwt>,
    api_keys: Option<ApiKeys>,
    strip_credential: bool,
    allow_missing: bool,
    /// Every header the plugin sets; removed from every incoming request.
    managed: Vec<HeaderName>,
    challenges: Challenges,
}

impl Auth {
    /// The grant for the request's credential; `Ok(None)` for a request
    /// without one when `allow_missing` is set.
    fn decide(&self, req: &Request, cx: &Context) -> Result<Option<Grant>, Denial> {
        match self.credential(req)? {
            Some(Credential::Token(jwt, token)) => match jwt.check(&token, cx) {
                Verdict::Allow(grant) => Ok(Some(grant)),
                Verdict::Deny(denial) => Err(denial),
            },
            Some(Credential::Key(api_keys, key)) => api_keys.check(&key).map(Some),
            None if self.allow_missing => Ok(None),
            None => Err(Denial::Missing),
        }
    }

    /// The request's one credential. Every configured location is read:
    /// credentials in several locations are a `400` unless they are the
    /// same string for the same method, so that an upstream reading any of
    /// those locations sees what was checked here.
    fn credential<'a, 'r>(&'a self, req: &'r Request) -> Result<Option<Credential<'a, 'r>>, Denial> {
        let mut found: Option<Credential<'a, 'r>> = None;
        let mut keep = |new: Credential<'a, 'r>| match &found {
            None => {
                found = Some(new);
                Ok(())
            }
            Some(old) if old.same(&new) => Ok(()),
            Some(_) => Err(Denial::BadRequest("credentials in more than one location")),
        };
        if let Some(jwt) = &self.jwt {
            for source in &jwt.sources {
                if let Some(token) = source.extract(req)? {
                    keep(Credential::Token(jwt, token))?;
                }
            }
        }
        if let Some(api_keys) = &self.api_keys {
            for source in &api_keys.sources {
                if let Some(key) = source.extract(req)? {
                    keep(Credential::Key(api_keys, key))?;
                }
            }
        }
        Ok(found)
    }

    fn all_sources(&self) -> impl Iterator<Item = &Source> {
        let jwt = self.jwt.iter().flat_map(|j| &j.sources);
        jwt.chain(self.api_keys.iter().flat_map(|a| &a.sources))
    }

    /// Incoming headers that spell a managed header: the same name, or the
    /// same once `_` is read as `-` (`x_auth_sub`), as CGI/WSGI-style
    /// upstreams fold both into `HTTP_X_AUTH_SUB`.
    fn spoofed(&self, req: &Request) -> Vec<HeaderName> {
        req.headers()
            .keys()
            .filter(|name| self.managed.iter().any(|m| same_header(name.as_str(), m.as_str())))
            .cloned()
            .collect()
    }
}

/// A credential found in the request, with the method that checks it.
enum Credential<'a, 'r> {
    Token(&'a Jwt, Cow<'r, str>),
    Key(&'a ApiKeys, Cow<'r, str>),
}

impl Credential<'_, '_> {
    /// The same method and the same string.
    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Credential::Token(_, a), Credential::Token(_, b)) | (Credential::Key(_, a), Credential::Key(_, b)) => {
                a == b
            }
            _ => false,
        }
    }
}

impl Plugin for Auth {
    fn config_schema() -> Option<String> {
        weir_plugin_sdk::schema_for::<Settings>()
    }

    fn new(config: &Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        let c = settings.compile().map_err(Error::internal)?;
        Ok(Auth {
            jwt: c.jwt,
            api_keys: c.api_keys,
            strip_credential: c.strip_credential,
            allow_missing: c.allow_missing,
            managed: c.managed,
            challenges: c.challenges,
        })
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    fn on_request(&self, req: &mut Request, cx: &Context) -> Result<Action> {
        let grant = match self.decide(req, cx) {
            Ok(grant) => grant,
            Err(denial) => {
                cx.counter_add("auth_denied", 1);
                cx.counter_add(denial.metric(), 1);
                return Ok(Action::Respond(self.challenges.reply(&denial)));
            }
        };
        // Identity headers come from this plugin only. The edits go one by
        // one (the map was read to find the spellings, not to be sent back
        // whole: working out what changed in it cost more than the plugin's
        // own checks).
        for h in &self.spoofed(req) {
            req.remove_header(h)?;
        }
        if let Some(grant) = &grant
            && !grant.is_empty()
        {
            for (name, value) in grant.iter() {
                req.set_header(name, value.as_bytes())?;
            }
            // The same identity for the plugins after this one, under the
            // header's name (`x-auth-sub`), whatever the upstream is sent.
            for (name, value) in grant.iter() {
                cx.publish(name.as_str(), value.as_bytes());
            }
        }
        if self.strip_credential {
            for source in self.all_sources() {
                source.strip(req)?;
            }
        }
        cx.counter_add(if grant.is_some() { "auth_ok" } else { "auth_anonymous" }, 1);
        Ok(Action::Continue)
    }
}

weir_plugin_sdk::export_plugin!(Auth);

#[cfg(test)]
mod tests;
