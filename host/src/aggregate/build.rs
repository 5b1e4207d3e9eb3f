//! Building an aggregate route from its `[[routes]]` table: every part,
//! template and merge rule checked at load, each problem reported with its
//! line.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use toml::Spanned;

use super::{Aggregate, Merge, Part, template};
use crate::cache::RouteCache;
use crate::upstream::Upstream;
use weir_config::valid_name;
use weir_config::{CacheConfig, LoadError, Merge as MergeConfig, RouteConfig, Source};

/// The aggregate of route `r` (`kind = "aggregate"`), or `None` with every
/// problem pushed to `errors`. `params` are the route path's parameters;
/// `upstream` finds an upstream by name (reporting an unknown one), `cache`
/// gives a part its cache (kept across reloads while its settings stay).
#[allow(clippy::too_many_arguments)]
pub(crate) fn from_config(
    src: &Source,
    r: &RouteConfig,
    params: &[&str],
    span: Range<usize>,
    max_body: usize,
    mut upstream: impl FnMut(&Spanned<String>, &mut Vec<LoadError>) -> Option<Arc<Upstream>>,
    cache: impl Fn(&str, &CacheConfig) -> Arc<RouteCache>,
    errors: &mut Vec<LoadError>,
) -> Option<Aggregate> {
    let before = errors.len();
    if let Some(u) = &r.upstream {
        errors.push(src.error(u.span(), format!("route `{}`: an aggregate route has `parts`, not `upstream`", r.name)));
    }
    if let Some(c) = &r.cache {
        errors.push(src.error(
            c.span(),
            format!("route `{}`: an aggregate route caches per part (`[[routes.parts]] cache`)", r.name),
        ));
    }
    if r.parts.is_empty() {
        errors.push(src.error(span.clone(), format!("route `{}`: an aggregate route needs `parts`", r.name)));
    }
    let mut parts = Vec::new();
    let mut names = HashSet::new();
    for p in &r.parts {
        let at = p.span();
        let p = p.get_ref();
        let fail = |msg: String| src.error(at.clone(), format!("route `{}` part `{}`: {msg}", r.name, p.name));
        if !valid_name(&p.name) {
            errors.push(fail("a part name must be 1 to 64 of [A-Za-z0-9_-]".into()));
        } else if !names.insert(p.name.as_str()) {
            errors.push(fail("the name is used twice".into()));
        }
        let method = match &p.method {
            None => http::Method::GET,
            Some(m) => match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => m,
                Err(_) => {
                    errors.push(fail(format!("invalid method {m:?}")));
                    continue;
                }
            },
        };
        let path = match template::Template::parse(p.path.get_ref()) {
            Ok(t) if p.path.get_ref().starts_with('/') => t,
            Ok(_) => {
                errors.push(
                    src.error(p.path.span(), format!("route `{}` part `{}`: path must start with '/'", r.name, p.name)),
                );
                continue;
            }
            Err(e) => {
                errors.push(src.error(p.path.span(), format!("route `{}` part `{}`: {e}", r.name, p.name)));
                continue;
            }
        };
        if let Some(missing) = path.path_params().find(|n| !params.contains(n)) {
            errors.push(src.error(
                p.path.span(),
                format!(
                    "route `{}` part `{}`: {{path.{missing}}} is not a parameter of the route's path \
                     (it has: {})",
                    r.name,
                    p.name,
                    if params.is_empty() { "none".to_owned() } else { params.join(", ") }
                ),
            ));
            continue;
        }
        let mut headers = Vec::new();
        for (name, value) in &p.headers {
            match (http::HeaderName::from_bytes(name.as_bytes()), template::Template::parse(value)) {
                (Ok(n), Ok(t)) => headers.push((n, t)),
                (Err(_), _) => errors.push(fail(format!("invalid header name {name:?}"))),
                (_, Err(e)) => errors.push(fail(format!("header {name}: {e}"))),
            }
        }
        if p.timeout.is_some_and(|t| t.is_zero()) {
            errors.push(fail("timeout must be above zero".into()));
        }
        let Some(upstream) = upstream(&p.upstream, errors) else { continue };
        let cache = p.cache.as_ref().map(|c| cache(&format!("{}/{}", r.name, p.name), c));
        parts.push(Part {
            name: p.name.as_str().into(),
            timeout: p.timeout.unwrap_or(upstream.timeout),
            upstream,
            method,
            path,
            headers,
            required: p.required,
            cache,
        });
    }
    let mut forward_headers = Vec::new();
    for h in &r.forward_headers {
        match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => forward_headers.push(n),
            Err(_) => errors.push(
                src.error(span.clone(), format!("route `{}`: forward_headers: invalid header name {h:?}", r.name)),
            ),
        }
    }
    let merge = match (&r.template, r.merge) {
        (Some(t), Some(_)) => {
            errors.push(src.error(t.span(), format!("route `{}`: set `merge` or `template`, not both", r.name)));
            return None;
        }
        (Some(t), None) => {
            let names: Vec<&str> = r.parts.iter().map(|p| p.get_ref().name.as_str()).collect();
            let value = serde_json::to_value(t.get_ref()).unwrap_or_default();
            match template::Shape::parse(&value, &names) {
                Ok(shape) => Merge::Shape(shape),
                Err(e) => {
                    errors.push(src.error(t.span(), format!("route `{}`: template: {e}", r.name)));
                    return None;
                }
            }
        }
        (None, Some(MergeConfig::Deep)) => Merge::Deep,
        (None, Some(MergeConfig::Keys) | None) => Merge::Keys,
    };
    if errors.len() != before {
        return None;
    }
    Some(Aggregate { parts, merge, forward_headers, max_body })
}
