//! Matching an HTTP request (method and path) against the compiled HTTP
//! bindings.
//!
//! The path is split on `/` *before* percent-decoding, so `%2F` never
//! creates a segment. Literal segments are compared after decoding. A
//! template with a verb (`/v1/orders/{id}:cancel`) matches only a path whose
//! raw text ends in `:cancel`; one without a verb matches the whole path, so
//! a `:` stays part of the last segment. When several bindings match, the
//! most specific wins: one with a verb, then the one with more literal
//! segments, then the one with fewer `**`; ties go to declaration order
//! (annotations before the `POST /pkg.Service/Method` fallbacks). The list
//! is scanned linearly — services have tens of methods, not thousands.

use http::Method;

use crate::rules::{Binding, PathTemplate, Segment};

/// One routable binding: a method (by index into the transcoder's table)
/// and one of its bindings.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) method: usize,
    pub(crate) binding: Binding,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.binding.http_method, self.binding.pattern)
    }
}

/// The raw (still percent-encoded) value of each path variable of the
/// matched binding, in the binding's variable order.
pub(crate) type RawValues = Vec<String>;

/// How specific a template is: has a verb, literal segments, has no `**`.
/// Higher wins.
type Specificity = (bool, usize, bool);

/// Finds the best route for `method` and `path` (the path part of the URI,
/// without the query).
pub(crate) fn find<'r>(routes: &'r [Route], method: &Method, path: &str) -> Option<(&'r Route, RawValues)> {
    let mut best: Option<(Specificity, &'r Route, Vec<&str>)> = None;
    for route in routes {
        if route.binding.http_method != *method {
            continue;
        }
        let template = &route.binding.template;
        let score = (template.verb.is_some(), template.literal_count(), !template.segments.contains(&Segment::Multi));
        if best.as_ref().is_some_and(|(s, _, _)| *s >= score) {
            continue;
        }
        if let Some(segments) = match_template(template, path) {
            best = Some((score, route, segments));
        }
    }
    let (_, route, segments) = best?;
    Some((route, variable_values(route, &segments)))
}

/// The raw value of each variable of `route` in the matched `segments`.
fn variable_values(route: &Route, segments: &[&str]) -> RawValues {
    let template = &route.binding.template;
    let ends_in_multi = template.segments.last() == Some(&Segment::Multi);
    route
        .binding
        .variables
        .iter()
        .map(|v| {
            // A variable that includes the final `**` covers every remaining
            // segment; others cover exactly their template segments.
            let to = if ends_in_multi && v.end == template.segments.len() { segments.len() } else { v.end };
            let to = to.min(segments.len());
            let from = v.start.min(to);
            segments[from..to].join("/")
        })
        .collect()
}

/// The raw segments of `path` for matching against `template`, with the
/// template's verb stripped; `None` if the verb is required but absent.
fn split_path<'p>(template: &PathTemplate, path: &'p str) -> Option<Vec<&'p str>> {
    let rest = path.strip_prefix('/')?;
    let rest = match &template.verb {
        Some(verb) => {
            let stripped = rest.strip_suffix(verb.as_str())?.strip_suffix(':')?;
            // The verb must follow a segment, not a '/'.
            if stripped.is_empty() || stripped.ends_with('/') {
                return None;
            }
            stripped
        }
        None => rest,
    };
    Some(rest.split('/').collect())
}

/// The raw segments of `path` if it matches `template`.
fn match_template<'p>(template: &PathTemplate, path: &'p str) -> Option<Vec<&'p str>> {
    let segments = split_path(template, path)?;
    let multi = template.segments.last() == Some(&Segment::Multi);
    let fixed = if multi { template.segments.len() - 1 } else { template.segments.len() };
    if segments.len() < fixed || (!multi && segments.len() != fixed) {
        return None;
    }
    for (seg, raw) in template.segments.iter().zip(&segments) {
        match seg {
            Segment::Literal(lit) => {
                if percent_encoding::percent_decode_str(raw).ne(lit.bytes()) {
                    return None;
                }
            }
            Segment::Single => {
                if raw.is_empty() {
                    return None;
                }
            }
            Segment::Multi => {}
        }
    }
    Some(segments)
}

#[cfg(test)]
mod tests;
