//! Templates: config values with `{source}` placeholders filled from the
//! request, parsed once in `new` and rendered per request for one sink
//! (header, query, path or JSON), which decides the encoding.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use regex_lite::Captures;
use weir_plugin_sdk::{HeaderName, Request};

/// What is percent-encoded when text goes into a URL: everything but the
/// unreserved characters of RFC 3986 (so `/`, `?`, `&`, `=`, `#`, `+`, `%`
/// and spaces are all encoded).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Where a placeholder's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// `{header.NAME}`: the first value.
    Header(HeaderName),
    /// `{path.NAME}`: a route path parameter, as it appears in the URL.
    PathParam(String),
    /// `{query.NAME}`: the first value, percent-decoded.
    Query(String),
    /// `{client_ip}`
    ClientIp,
    /// `{method}`
    Method,
    /// `{path}`: the path as it appears in the URL.
    Path,
    /// `{route}`
    Route,
    /// `{request_id}`
    RequestId,
    /// `{authority}`
    Authority,
}

/// The sources a template may name, for error messages.
const KNOWN: &str = "header.NAME, path.NAME, query.NAME, client_ip, method, path, route, request_id, authority";

impl Source {
    fn parse(name: &str) -> Result<Source, String> {
        let source = match name {
            "client_ip" => Source::ClientIp,
            "method" => Source::Method,
            "path" => Source::Path,
            "route" => Source::Route,
            "request_id" => Source::RequestId,
            "authority" => Source::Authority,
            _ => {
                if let Some(h) = name.strip_prefix("header.") {
                    let h = HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| format!("{{{name}}}: {h:?} is not a valid header name"))?;
                    Source::Header(h)
                } else if let Some(p) = name.strip_prefix("path.").filter(|p| !p.is_empty()) {
                    Source::PathParam(p.to_owned())
                } else if let Some(q) = name.strip_prefix("query.").filter(|q| !q.is_empty()) {
                    Source::Query(q.to_owned())
                } else {
                    return Err(format!("unknown template source {{{name}}} (known: {KNOWN})"));
                }
            }
        };
        Ok(source)
    }

    /// Whether the value is URL path text (kept encoded in a path, decoded
    /// elsewhere) rather than plain text.
    fn is_path_text(&self) -> bool {
        matches!(self, Source::Path | Source::PathParam(_))
    }

    /// Whether plugins (this one included) can change the value during the
    /// request; such values are kept from `on_request` for later phases.
    pub(crate) fn is_mutable(&self) -> bool {
        matches!(self, Source::Header(_) | Source::Query(_) | Source::Method | Source::Path)
    }
}

/// A regex capture group named in a path replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Group {
    Index(usize),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Source),
    Group(Group),
}

/// A parsed config value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parse `{source}` placeholders (`{{` and `}}` are literal braces).
    pub(crate) fn parse(text: &str) -> Result<Template, String> {
        Self::parse_with(text, false)
    }

    /// Also parse `$1`, `${1}`, `${name}` capture references (`$$` is a
    /// literal `$`), for a path replacement.
    pub(crate) fn parse_replacement(text: &str) -> Result<Template, String> {
        Self::parse_with(text, true)
    }

    fn parse_with(text: &str, captures: bool) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            rest = &rest[c.len_utf8()..];
            match c {
                '{' if rest.starts_with('{') => {
                    lit.push('{');
                    rest = &rest[1..];
                }
                '{' => {
                    let end = rest.find('}').ok_or_else(|| "unclosed '{' (write {{ for a literal brace)".to_owned())?;
                    flush(&mut lit, &mut parts);
                    parts.push(Part::Var(Source::parse(&rest[..end])?));
                    rest = &rest[end + 1..];
                }
                '}' if rest.starts_with('}') => {
                    lit.push('}');
                    rest = &rest[1..];
                }
                '}' => return Err("unmatched '}' (write }} for a literal brace)".to_owned()),
                '$' if captures && rest.starts_with('$') => {
                    lit.push('$');
                    rest = &rest[1..];
                }
                '$' if captures => {
                    let (group, after) = parse_group(rest)?;
                    flush(&mut lit, &mut parts);
                    parts.push(Part::Group(group));
                    rest = after;
                }
                c => lit.push(c),
            }
        }
        flush(&mut lit, &mut parts);
        Ok(Template { parts })
    }

    /// The text, if there are no placeholders.
    pub(crate) fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// The literal parts.
    pub(crate) fn literals(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Lit(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// The sources named.
    pub(crate) fn sources(&self) -> impl Iterator<Item = &Source> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(s) => Some(s),
            _ => None,
        })
    }

    /// The capture groups named.
    pub(crate) fn groups(&self) -> impl Iterator<Item = &Group> {
        self.parts.iter().filter_map(|p| match p {
            Part::Group(g) => Some(g),
            _ => None,
        })
    }

    /// Plain text, for a header value or a JSON string: path values are
    /// percent-decoded.
    pub(crate) fn render_text(&self, vars: &Vars<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Var(src) => {
                    let v = vars.get(src);
                    if src.is_path_text() {
                        out.push_str(&percent_decode_str(&v).decode_utf8_lossy());
                    } else {
                        out.push_str(&v);
                    }
                }
                Part::Group(_) => {}
            }
        }
        out
    }

    /// Percent-encoded text for a query parameter name or value.
    pub(crate) fn render_query(&self, vars: &Vars<'_>) -> String {
        encode_component(&self.render_text(vars))
    }

    /// A piece of URL path: literals and path values as they are, capture
    /// groups as matched, other values percent-encoded as one segment (a
    /// `/` cannot add one). Dot segments are the caller's concern: see
    /// [`has_dot_segment`].
    pub(crate) fn render_path(&self, vars: &Vars<'_>, caps: Option<&Captures<'_>>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Var(src) if src.is_path_text() => out.push_str(&vars.get(src)),
                Part::Var(src) => out.extend(utf8_percent_encode(&vars.get(src), COMPONENT)),
                Part::Group(g) => {
                    let m = caps.and_then(|c| match g {
                        Group::Index(i) => c.get(*i),
                        Group::Name(n) => c.name(n),
                    });
                    out.push_str(m.map_or("", |m| m.as_str()));
                }
            }
        }
        out
    }

    /// The template with every placeholder and group as `x`: what its
    /// literal text adds to a path, for checks at load time.
    pub(crate) fn render_sample(&self) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Lit(s) => s.as_str(),
                Part::Var(_) | Part::Group(_) => "x",
            })
            .collect()
    }
}

fn flush(lit: &mut String, parts: &mut Vec<Part>) {
    if !lit.is_empty() {
        parts.push(Part::Lit(std::mem::take(lit)));
    }
}

/// After a `$`: `N…`, `{N}` or `{name}`.
fn parse_group(rest: &str) -> Result<(Group, &str), String> {
    const HINT: &str = "'$' must be followed by a group number ($1), a braced group (${1}, ${name}) or '$' ($$)";
    let (inner, after) = if let Some(braced) = rest.strip_prefix('{') {
        let end = braced.find('}').ok_or_else(|| HINT.to_owned())?;
        (&braced[..end], &braced[end + 1..])
    } else {
        let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        (&rest[..end], &rest[end..])
    };
    if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) {
        let i = inner.parse().map_err(|_| HINT.to_owned())?;
        return Ok((Group::Index(i), after));
    }
    let valid_name = inner.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && inner.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid_name && rest.starts_with('{') {
        return Ok((Group::Name(inner.to_owned()), after));
    }
    Err(HINT.to_owned())
}

/// Percent-encode everything but unreserved characters.
pub(crate) fn encode_component(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// A query parameter name or value as text (`+` is a space).
pub(crate) fn decode_query(raw: &str) -> Cow<'_, str> {
    if raw.contains(['+', '%']) {
        let spaced = raw.replace('+', " ");
        Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
    } else {
        Cow::Borrowed(raw)
    }
}

/// The first value of query parameter `name` (compared decoded), decoded.
pub(crate) fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_query(k) == name).then(|| decode_query(v))
    })
}

/// Whether `text` may appear in a URL path as written: RFC 3986 `pchar`s,
/// `/` and well-formed `%XX` escapes.
pub(crate) fn check_path_text(text: &str) -> Result<(), String> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let ok = c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&c);
        if c == b'%' {
            if b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit) {
                i += 3;
                continue;
            }
            return Err(format!("{text:?}: '%' must start an escape like %20"));
        }
        if !ok {
            let ch = text[i..].chars().next().unwrap_or('?');
            return Err(format!("{text:?}: {ch:?} is not allowed in a URL path (percent-encode it)"));
        }
        i += 1;
    }
    Ok(())
}

/// Whether URL path `path` has a dot segment in any spelling that a server
/// may resolve: once percent-decoded and split at `/` or `\`, with `;…`
/// parameters ignored, a segment that is `.` or `..` (so `%2e%2E`, `.%2E`,
/// `..;x` and `..%2F` count; `...` and `a..b` do not). An upstream that
/// normalises such a path climbs out of a prefix the gateway put in front.
pub(crate) fn has_dot_segment(path: &str) -> bool {
    if !path.contains(['.', '%']) {
        return false;
    }
    let decoded: Vec<u8> = percent_decode_str(path).collect();
    decoded.split(|&b| b == b'/' || b == b'\\').any(|segment| {
        let name = segment.split(|&b| b == b';').next().unwrap_or(segment);
        name == b"." || name == b".."
    })
}

/// Where placeholder values come from during one phase: the request the
/// phase was given, except for values kept from `on_request` (see
/// [`crate::Stash`]).
pub(crate) struct Vars<'a> {
    req: &'a Request,
    kept: Option<(&'a [Source], &'a [String])>,
}

impl<'a> Vars<'a> {
    pub(crate) fn new(req: &'a Request) -> Self {
        Self { req, kept: None }
    }

    pub(crate) fn with_kept(req: &'a Request, sources: &'a [Source], values: &'a [String]) -> Self {
        Self { req, kept: Some((sources, values)) }
    }

    /// A source's value; empty when missing.
    pub(crate) fn get(&self, src: &Source) -> Cow<'a, str> {
        if let Some((sources, values)) = self.kept
            && let Some(i) = sources.iter().position(|s| s == src)
            && let Some(v) = values.get(i)
        {
            return Cow::Borrowed(v.as_str());
        }
        current(self.req, src)
    }
}

/// A source's value in `req` as it is now.
pub(crate) fn current<'a>(req: &'a Request, src: &Source) -> Cow<'a, str> {
    match src {
        // One header read, not the whole map.
        Source::Header(h) => req
            .header_all(h.as_str())
            .first()
            .map_or(Cow::Borrowed(""), |v| Cow::Owned(String::from_utf8_lossy(v.as_bytes()).into_owned())),
        Source::PathParam(p) => Cow::Borrowed(req.path_param(p).unwrap_or("")),
        Source::Query(q) => query_value(req.query(), q).unwrap_or(Cow::Borrowed("")),
        Source::ClientIp => req.client_ip().map_or(Cow::Borrowed(""), |ip| Cow::Owned(ip.to_string())),
        Source::Method => Cow::Borrowed(req.method().as_str()),
        Source::Path => Cow::Borrowed(req.path()),
        Source::Route => Cow::Borrowed(req.route()),
        Source::RequestId => Cow::Borrowed(req.request_id()),
        Source::Authority => Cow::Borrowed(req.authority()),
    }
}
