//! Route matching: host, path (exact, prefix, or pattern with parameters)
//! and method. Routes are tried in configuration order; the first match wins.

use http::Method;

/// How a route matches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com` → `.example.com`
    Suffix(String),
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    /// `{*rest}`: the remainder of the path (may be empty).
    Rest(String),
}

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PathMatch {
    Exact(String),
    Prefix(String),
    Pattern(Vec<Segment>),
}

/// A compiled route matcher.
#[derive(Debug, Clone)]
pub(crate) struct RouteMatcher {
    host: HostMatch,
    path: PathMatch,
    methods: Option<Vec<Method>>,
}

/// The outcome of matching a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Match {
    /// Route index and captured path parameters.
    Found(usize, Vec<(String, String)>),
    /// Some route matched host and path but not the method; these are allowed.
    MethodNotAllowed(Vec<Method>),
    /// Nothing matched.
    NotFound,
}

/// Why a route definition is invalid.
pub(crate) type RouteError = String;

impl RouteMatcher {
    /// Build a matcher. `path` is exact or a pattern; `path_prefix` a prefix;
    /// neither means every path.
    pub(crate) fn new(
        host: Option<&str>,
        path: Option<&str>,
        path_prefix: Option<&str>,
        methods: Option<&[String]>,
    ) -> Result<Self, RouteError> {
        let host = match host {
            None => HostMatch::Any,
            Some(h) if h.starts_with("*.") && h.len() > 2 => HostMatch::Suffix(h[1..].to_ascii_lowercase()),
            Some(h) if !h.is_empty() && !h.contains(['*', '/', ' ']) => HostMatch::Exact(h.to_ascii_lowercase()),
            Some(h) => return Err(format!("invalid host {h:?}: use a name or `*.suffix`")),
        };
        let path = match (path, path_prefix) {
            (Some(_), Some(_)) => return Err("set `path` or `path_prefix`, not both".into()),
            (Some(p), None) => parse_path(p)?,
            (None, Some(p)) => {
                if !p.starts_with('/') {
                    return Err(format!("path_prefix {p:?} must start with '/'"));
                }
                PathMatch::Prefix(p.to_owned())
            }
            (None, None) => PathMatch::Prefix("/".into()),
        };
        let methods = match methods {
            None => None,
            Some([]) => return Err("`methods` is empty: omit it to match every method".into()),
            Some(list) => Some(
                list.iter()
                    .map(|m| {
                        Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                            .map_err(|_| format!("invalid method {m:?}"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(Self { host, path, methods })
    }

    /// The path parameters it captures.
    pub(crate) fn param_names(&self) -> Vec<&str> {
        match &self.path {
            PathMatch::Pattern(segments) => segments
                .iter()
                .filter_map(|s| match s {
                    Segment::Param(n) | Segment::Rest(n) => Some(n.as_str()),
                    Segment::Literal(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    fn host_matches(&self, host: &str) -> bool {
        match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(s) => {
                host.len() > s.len() && host.as_bytes()[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }

    fn path_matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        match &self.path {
            PathMatch::Exact(p) => (path == p).then(Vec::new),
            PathMatch::Prefix(p) => {
                let ok = path.starts_with(p.as_str())
                    && (p.ends_with('/') || path.len() == p.len() || path.as_bytes()[p.len()] == b'/');
                ok.then(Vec::new)
            }
            PathMatch::Pattern(segments) => match_pattern(segments, path),
        }
    }
}

fn parse_path(p: &str) -> Result<PathMatch, RouteError> {
    if !p.starts_with('/') {
        return Err(format!("path {p:?} must start with '/'"));
    }
    if !p.contains('{') {
        return Ok(PathMatch::Exact(p.to_owned()));
    }
    let parts: Vec<&str> = p[1..].split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let seg = if let Some(inner) = part.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if let Some(name) = inner.strip_prefix('*') {
                if i != parts.len() - 1 {
                    return Err(format!("path {p:?}: `{{*{name}}}` must be the last segment"));
                }
                Segment::Rest(valid_param(p, name)?)
            } else {
                Segment::Param(valid_param(p, inner)?)
            }
        } else if part.contains(['{', '}']) {
            return Err(format!("path {p:?}: a parameter must be a whole segment, like /users/{{id}}"));
        } else {
            Segment::Literal((*part).to_owned())
        };
        segments.push(seg);
    }
    Ok(PathMatch::Pattern(segments))
}

fn valid_param(path: &str, name: &str) -> Result<String, RouteError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("path {path:?}: invalid parameter name {name:?}"));
    }
    Ok(name.to_owned())
}

fn match_pattern(segments: &[Segment], path: &str) -> Option<Vec<(String, String)>> {
    let rest = path.strip_prefix('/')?;
    let mut params = Vec::new();
    let mut parts = rest.split('/');
    for (i, seg) in segments.iter().enumerate() {
        match seg {
            Segment::Rest(name) => {
                // Everything after the preceding segments.
                let consumed: usize = segments[..i].len();
                let remainder = rest.splitn(consumed + 1, '/').nth(consumed).unwrap_or("");
                params.push((name.clone(), remainder.to_owned()));
                return Some(params);
            }
            Segment::Literal(lit) => {
                if parts.next()? != lit {
                    return None;
                }
            }
            Segment::Param(name) => {
                let value = parts.next()?;
                if value.is_empty() {
                    return None;
                }
                params.push((name.clone(), value.to_owned()));
            }
        }
    }
    parts.next().is_none().then_some(params)
}

/// The routes of a snapshot, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Router {
    routes: Vec<RouteMatcher>,
}

impl Router {
    /// A router over `routes` (index = position).
    pub(crate) fn new(routes: Vec<RouteMatcher>) -> Self {
        Self { routes }
    }

    /// Match a request. `host` may carry a port, which is ignored.
    pub(crate) fn find(&self, host: &str, path: &str, method: &Method) -> Match {
        let host = strip_port(host);
        let mut allowed: Vec<Method> = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            if !r.host_matches(host) {
                continue;
            }
            let Some(params) = r.path_matches(path) else { continue };
            match &r.methods {
                Some(ms) if !ms.contains(method) => {
                    for m in ms {
                        if !allowed.contains(m) {
                            allowed.push(m.clone());
                        }
                    }
                }
                _ => return Match::Found(i, params),
            }
        }
        if allowed.is_empty() { Match::NotFound } else { Match::MethodNotAllowed(allowed) }
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_once(']').map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host })
}

#[cfg(test)]
mod tests;
