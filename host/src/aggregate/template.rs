//! Templates of aggregate routes: request paths and headers with
//! `{path.x}`, `{query.x}` and `{header.x}`, and the answer's JSON shape
//! with `${part.field}` references.

use http::HeaderMap;
use http::header::HeaderName;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde_json::Value;

/// Everything but RFC 3986's unreserved characters is encoded in a
/// substituted value, so a value cannot add segments, a query or a fragment.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The client's request, as templates see it.
pub(crate) struct Context<'a> {
    /// Path parameters captured by the route (raw, as in the URL).
    pub(crate) params: &'a [(String, String)],
    /// The raw query string.
    pub(crate) query: Option<&'a str>,
    /// The request headers as the chain left them.
    pub(crate) headers: &'a HeaderMap,
}

/// Where a substituted value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A path parameter of the route.
    Path(String),
    /// A query parameter of the client's request.
    Query(String),
    /// A request header.
    Header(HeaderName),
}

/// Why a path template or a response shape was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TemplateError {
    /// `{path.}`: a scope with no name.
    #[error("`{reference}` names no {scope} value")]
    NoName {
        /// The reference.
        reference: String,
        /// `path`, `query` or `header`.
        scope: String,
    },
    /// `{header.NAME}` with a name that is not a header name.
    #[error("`{0}` is not a header name")]
    NotAHeader(String),
    /// A `}` with no hole open.
    #[error("unmatched `}}` in {0:?}")]
    Unmatched(String),
    /// A hole that is not closed (`opener` is `{` or `${`).
    #[error("unclosed `{opener}` in {text:?}")]
    Unclosed {
        /// What opened it.
        opener: &'static str,
        /// The template.
        text: String,
    },
    /// A path-template hole that names no request value.
    #[error("`{{{reference}}}` in {text:?}: expected {{path.NAME}}, {{query.NAME}} or {{header.NAME}}")]
    NotARequestValue {
        /// The hole's content.
        reference: String,
        /// The template.
        text: String,
    },
    /// A shape reference to a part that does not exist.
    #[error("`${{{reference}}}`: no part named `{part}` (parts: {parts}; or path., query., header.)")]
    NoSuchPart {
        /// The reference.
        reference: String,
        /// The part it names.
        part: String,
        /// The route's parts, comma-separated.
        parts: String,
    },
}

impl Source {
    /// `path.id`, `query.currency`, `header.x-tenant`; `None` for other prefixes.
    fn parse(reference: &str) -> Result<Option<Self>, TemplateError> {
        let Some((scope, name)) = reference.split_once('.') else { return Ok(None) };
        if name.is_empty() {
            return Err(TemplateError::NoName { reference: reference.to_owned(), scope: scope.to_owned() });
        }
        Ok(Some(match scope {
            "path" => Source::Path(name.to_owned()),
            "query" => Source::Query(name.to_owned()),
            "header" => Source::Header(
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| TemplateError::NotAHeader(name.to_owned()))?,
            ),
            _ => return Ok(None),
        }))
    }

    /// The value, decoded; empty when the request has none.
    fn value(&self, cx: &Context<'_>) -> String {
        match self {
            Source::Path(name) => cx
                .params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| percent_decode_str(v).decode_utf8_lossy().into_owned())
                .unwrap_or_default(),
            Source::Query(name) => query_value(cx.query.unwrap_or(""), name).unwrap_or_default(),
            Source::Header(name) => {
                cx.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default()
            }
        }
    }
}

/// The first value of `name` in a query string, decoded (`+` is a space).
fn query_value(query: &str, name: &str) -> Option<String> {
    let decode = |s: &str| percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Value(Source),
}

/// A string with `{path.x}`, `{query.x}` and `{header.x}` holes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template(Vec<Piece>);

impl Template {
    /// Parse a template; `{` and `}` only open and close holes.
    pub(crate) fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(TemplateError::Unmatched(text.to_owned()));
            }
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close =
                after.find('}').ok_or_else(|| TemplateError::Unclosed { opener: "{", text: text.to_owned() })?;
            let reference = &after[..close];
            let source = Source::parse(reference)?.ok_or_else(|| TemplateError::NotARequestValue {
                reference: reference.to_owned(),
                text: text.to_owned(),
            })?;
            pieces.push(Piece::Value(source));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        Ok(Self(pieces))
    }

    /// The path parameters it uses.
    pub(crate) fn path_params(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Value(Source::Path(name)) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Fill the holes for a URL: each value is percent-encoded whole
    /// (a `/` in it stays inside its segment).
    /// A value of `.` or `..` has its dots encoded, so it cannot climb.
    pub(crate) fn render_url(&self, cx: &Context<'_>) -> String {
        self.render(cx, |v, out| match v {
            "." => out.push_str("%2E"),
            ".." => out.push_str("%2E%2E"),
            v => out.extend(utf8_percent_encode(v, COMPONENT)),
        })
    }

    /// Fill the holes as they are (for header values).
    pub(crate) fn render_raw(&self, cx: &Context<'_>) -> String {
        self.render(cx, |v, out| out.push_str(v))
    }

    fn render(&self, cx: &Context<'_>, put: impl Fn(&str, &mut String)) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Value(source) => put(&source.value(cx), &mut out),
            }
        }
        out
    }
}

/// A reference in the answer's shape: `${part.a.b}` or a request value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reference {
    Part { part: String, path: Vec<String> },
    Request(Source),
}

impl Reference {
    fn parse(reference: &str, parts: &[&str]) -> Result<Self, TemplateError> {
        if let Some(source) = Source::parse(reference)? {
            return Ok(Reference::Request(source));
        }
        let mut names = reference.split('.');
        let part = names.next().unwrap_or_default();
        if !parts.contains(&part) {
            return Err(TemplateError::NoSuchPart {
                reference: reference.to_owned(),
                part: part.to_owned(),
                parts: parts.join(", "),
            });
        }
        Ok(Reference::Part { part: part.to_owned(), path: names.map(str::to_owned).collect() })
    }

    fn resolve(&self, answers: &serde_json::Map<String, Value>, cx: &Context<'_>) -> Value {
        match self {
            Reference::Request(source) => Value::String(source.value(cx)),
            Reference::Part { part, path } => {
                let mut v = answers.get(part).unwrap_or(&Value::Null);
                for key in path {
                    v = match v {
                        Value::Object(m) => m.get(key).unwrap_or(&Value::Null),
                        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)).unwrap_or(&Value::Null),
                        _ => &Value::Null,
                    };
                }
                v.clone()
            }
        }
    }
}

/// A string of the shape: whole references keep the JSON type of what
/// they point at, references inside text are spliced in as text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ShapeString {
    Whole(Reference),
    Spliced(Vec<Result<String, Reference>>),
}

/// The answer's JSON shape, parsed once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape(Node);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    /// Kept as written.
    Literal(Value),
    /// A string with references.
    String(ShapeString),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Shape {
    /// Parse `value`, checking that each `${part...}` names one of `parts`.
    pub(crate) fn parse(value: &Value, parts: &[&str]) -> Result<Self, TemplateError> {
        Node::parse(value, parts).map(Shape)
    }

    /// The document for the parts' `answers`.
    pub(crate) fn render(&self, answers: &serde_json::Map<String, Value>, cx: &Context<'_>) -> Value {
        self.0.render(answers, cx)
    }
}

impl Node {
    fn parse(value: &Value, parts: &[&str]) -> Result<Self, TemplateError> {
        Ok(match value {
            Value::String(s) if s.contains("${") => Node::String(shape_string(s, parts)?),
            Value::Array(a) => Node::Array(a.iter().map(|v| Node::parse(v, parts)).collect::<Result<_, _>>()?),
            Value::Object(m) => Node::Object(
                m.iter().map(|(k, v)| Ok((k.clone(), Node::parse(v, parts)?))).collect::<Result<_, TemplateError>>()?,
            ),
            v => Node::Literal(v.clone()),
        })
    }

    fn render(&self, answers: &serde_json::Map<String, Value>, cx: &Context<'_>) -> Value {
        match self {
            Node::Literal(v) => v.clone(),
            Node::String(ShapeString::Whole(r)) => r.resolve(answers, cx),
            Node::String(ShapeString::Spliced(pieces)) => {
                let mut out = String::new();
                for p in pieces {
                    match p {
                        Ok(text) => out.push_str(text),
                        Err(r) => match r.resolve(answers, cx) {
                            Value::String(s) => out.push_str(&s),
                            Value::Null => {}
                            v => out.push_str(&v.to_string()),
                        },
                    }
                }
                Value::String(out)
            }
            Node::Array(a) => Value::Array(a.iter().map(|s| s.render(answers, cx)).collect()),
            Node::Object(m) => Value::Object(m.iter().map(|(k, s)| (k.clone(), s.render(answers, cx))).collect()),
        }
    }
}

fn shape_string(s: &str, parts: &[&str]) -> Result<ShapeString, TemplateError> {
    let mut pieces = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("${") {
        if open > 0 {
            pieces.push(Ok(rest[..open].to_owned()));
        }
        let after = &rest[open + 2..];
        let close = after.find('}').ok_or_else(|| TemplateError::Unclosed { opener: "${", text: s.to_owned() })?;
        pieces.push(Err(Reference::parse(&after[..close], parts)?));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Ok(rest.to_owned()));
    }
    Ok(match pieces.as_slice() {
        [Err(r)] => ShapeString::Whole(r.clone()),
        _ => ShapeString::Spliced(pieces),
    })
}

/// Merge `from` into `into`: objects key by key, recursively; anything
/// else is replaced.
pub(crate) fn deep_merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx<'a>(params: &'a [(String, String)], query: Option<&'a str>, headers: &'a HeaderMap) -> Context<'a> {
        Context { params, query, headers }
    }

    #[test]
    fn url_values_are_encoded_whole() {
        let t = Template::parse("/stock/{path.id}?c={query.currency}&t={header.x-tenant}").expect("parses");
        let params = vec![("id".to_owned(), "..%2F..%2Fadmin".to_owned())];
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", "a b&c".parse().expect("header value"));
        let out = t.render_url(&cx(&params, Some("x=1&currency=EUR+x%26y"), &headers));
        assert_eq!(out, "/stock/..%2F..%2Fadmin?c=EUR%20x%26y&t=a%20b%26c");
        assert_eq!(t.path_params().collect::<Vec<_>>(), ["id"]);
    }

    #[test]
    fn dot_segments_cannot_climb() {
        let t = Template::parse("/a/{path.x}/b").expect("parses");
        for (v, want) in [("..", "/a/%2E%2E/b"), ("%2E%2E", "/a/%2E%2E/b"), (".", "/a/%2E/b"), ("...", "/a/.../b")] {
            let params = vec![("x".to_owned(), v.to_owned())];
            assert_eq!(t.render_url(&cx(&params, None, &HeaderMap::new())), want, "{v}");
        }
    }

    #[test]
    fn missing_values_are_empty() {
        let t = Template::parse("/a/{query.none}").expect("parses");
        assert_eq!(t.render_url(&cx(&[], None, &HeaderMap::new())), "/a/");
    }

    #[test]
    fn bad_templates_are_refused() {
        let refused = |t: &str| Template::parse(t).expect_err("refused").to_string();
        assert!(refused("/a/{id}").contains("expected {path.NAME}"));
        assert!(refused("/a/{path.id").contains("unclosed"));
        assert!(refused("/a/}").contains("unmatched"));
        assert!(refused("/a/{path.}").contains("names no path value"));
    }

    #[test]
    fn shapes_keep_types_and_splice_text() {
        let shape: Value = serde_json::json!({
            "id": "${path.id}",
            "count": "${stock.count}",
            "first": "${stock.items.0}",
            "label": "${stock.count} in stock at ${price.amount}",
            "missing": "${price.nothing.here}",
            "fixed": 7,
        });
        let shape = Shape::parse(&shape, &["stock", "price"]).expect("parses");
        let answers = serde_json::json!({"stock": {"count": 3, "items": ["x", "y"]}, "price": {"amount": "9.50"}});
        let params = vec![("id".to_owned(), "42".to_owned())];
        let out = shape.render(answers.as_object().expect("object"), &cx(&params, None, &HeaderMap::new()));
        assert_eq!(
            out,
            serde_json::json!({
                "id": "42", "count": 3, "first": "x", "label": "3 in stock at 9.50", "missing": null, "fixed": 7,
            })
        );
    }

    #[test]
    fn shapes_must_name_parts() {
        let err = Shape::parse(&serde_json::json!({"a": "${nope.x}"}), &["stock"]).expect_err("refused").to_string();
        assert!(err.contains("no part named `nope`"), "{err}");
    }

    #[test]
    fn deep_merge_recurses_and_replaces() {
        let mut a = serde_json::json!({"item": {"id": 1, "stock": 2}, "x": [1]});
        deep_merge(&mut a, serde_json::json!({"item": {"price": 3, "stock": 5}, "x": [2]}));
        assert_eq!(a, serde_json::json!({"item": {"id": 1, "stock": 5, "price": 3}, "x": [2]}));
    }
}
