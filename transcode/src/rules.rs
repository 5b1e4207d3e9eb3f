//! HTTP rules: reading the `google.api.http` method option, parsing its path
//! templates, and checking every field it names against the method's
//! messages.
//!
//! A template follows `google/api/http.proto`:
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! `{id}` is short for `{id=*}`. `*` matches one non-empty segment, `**`
//! zero or more and may only be the last segment. Field paths use the
//! proto field names (`order.id`); a path variable must end at a singular
//! scalar, enum, or a well-known type that maps from a string (Timestamp,
//! Duration, FieldMask, the wrappers). `body` is `*`, a top-level field of
//! the request, or absent; `response_body` a top-level field of the reply.
//! `additional_bindings` add more rules to the same method (nested ones are
//! ignored, as the spec says).

use http::Method;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, Value};

/// Full name of the method option that carries HTTP rules.
pub(crate) const HTTP_EXTENSION: &str = "google.api.http";

/// One parsed and checked HTTP binding of a method.
#[derive(Debug, Clone)]
pub(crate) struct Binding {
    pub(crate) http_method: Method,
    /// The template as written, for messages and listings.
    pub(crate) pattern: String,
    pub(crate) template: PathTemplate,
    pub(crate) variables: Vec<Variable>,
    pub(crate) body: Body,
    pub(crate) response_body: Option<FieldDescriptor>,
}

/// Which part of the request message the HTTP body fills.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    /// No body: every field not in the path comes from the query string.
    None,
    /// `body: "*"`: the whole message (minus path variables).
    All,
    /// `body: "field"`: one top-level field.
    Field(FieldDescriptor),
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathTemplate {
    pub(crate) segments: Vec<Segment>,
    pub(crate) verb: Option<String>,
}

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    Single,
    /// `**`: zero or more segments (last only).
    Multi,
}

/// A path variable, resolved to a field path of the request message.
#[derive(Debug, Clone)]
pub(crate) struct Variable {
    /// Dotted proto field path as written (`order.id`).
    pub(crate) path: String,
    pub(crate) fields: Vec<FieldDescriptor>,
    /// First template segment the variable covers.
    pub(crate) start: usize,
    /// One past the last template segment it covers.
    pub(crate) end: usize,
}

impl Variable {
    /// Whether the value may span several path segments (then `%2F` stays
    /// encoded when binding, per `http.proto`).
    pub(crate) fn is_multi_segment(&self, template: &PathTemplate) -> bool {
        self.end - self.start != 1 || template.segments.get(self.start) == Some(&Segment::Multi)
    }
}

/// A variable as parsed, before its field path is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawVariable {
    pub(crate) path: String,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl PathTemplate {
    /// Parses a template; the error is a sentence for a config message.
    pub(crate) fn parse(text: &str) -> Result<(PathTemplate, Vec<RawVariable>), String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("path template {text:?} must start with '/'"));
        };
        // The verb starts at the first ':' outside braces.
        let mut depth = 0i32;
        let mut verb_at = None;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ':' if depth == 0 => {
                    verb_at = Some(i);
                    break;
                }
                _ => {}
            }
            if !(0..=1).contains(&depth) {
                return Err(format!("path template {text:?} has unbalanced or nested braces"));
            }
        }
        let (body, verb) = match verb_at {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if let Some(verb) = verb
            && (verb.is_empty() || verb.contains(['/', '{', '}', '*', ':']))
        {
            return Err(format!("path template {text:?} has an invalid verb {verb:?} (it must be the last part)"));
        }

        let mut segments = Vec::new();
        let mut variables = Vec::new();
        for piece in split_top_level(body) {
            if let Some(inner) = piece.strip_prefix('{') {
                let Some(inner) = inner.strip_suffix('}') else {
                    return Err(format!("path template {text:?}: malformed variable {piece:?}"));
                };
                let (path, sub) = match inner.split_once('=') {
                    Some((p, s)) => (p, Some(s)),
                    None => (inner, None),
                };
                if path.is_empty() || !path.split('.').all(is_ident) {
                    return Err(format!("path template {text:?}: invalid field path {path:?}"));
                }
                if variables.iter().any(|v: &RawVariable| v.path == path) {
                    return Err(format!("path template {text:?} binds {path:?} twice"));
                }
                let start = segments.len();
                match sub {
                    None => segments.push(Segment::Single),
                    Some(sub) => {
                        if sub.is_empty() {
                            return Err(format!("path template {text:?}: variable {path:?} has an empty pattern"));
                        }
                        for s in sub.split('/') {
                            segments.push(parse_plain_segment(s, text)?);
                        }
                    }
                }
                variables.push(RawVariable { path: path.to_owned(), start, end: segments.len() });
            } else {
                segments.push(parse_plain_segment(piece, text)?);
            }
        }
        if let Some(i) = segments.iter().position(|s| *s == Segment::Multi)
            && i + 1 != segments.len()
        {
            return Err(format!("path template {text:?}: '**' must be the last segment"));
        }
        Ok((PathTemplate { segments, verb: verb.map(str::to_owned) }, variables))
    }

    /// How many literal segments the template has (more = more specific).
    pub(crate) fn literal_count(&self) -> usize {
        self.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count()
    }
}

/// Splits on '/' outside braces.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut from = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '/' if depth == 0 => {
                out.push(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[from..]);
    out
}

fn parse_plain_segment(s: &str, text: &str) -> Result<Segment, String> {
    match s {
        "*" => Ok(Segment::Single),
        "**" => Ok(Segment::Multi),
        "" => Err(format!("path template {text:?} has an empty segment")),
        _ if s.contains(['{', '}', '*', '=', ':']) => Err(format!("path template {text:?}: invalid segment {s:?}")),
        _ => Ok(Segment::Literal(s.to_owned())),
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Well-known message types a path or query value may bind to: their JSON
/// form is a string (or, for the wrappers, a scalar).
pub(crate) fn is_string_mapped_wkt(name: &str) -> bool {
    matches!(
        name,
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.BoolValue"
            | "google.protobuf.Int32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.FloatValue"
            | "google.protobuf.DoubleValue"
    )
}

/// Resolves a dotted proto field path in `message`. Every step but the last
/// must be a singular, non-well-known message field.
pub(crate) fn resolve_field_path(message: &MessageDescriptor, path: &str) -> Result<Vec<FieldDescriptor>, String> {
    let mut fields = Vec::new();
    let mut current = message.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let Some(field) = current.get_field_by_name(part) else {
            return Err(format!("{part:?} is not a field of {}", current.full_name()));
        };
        if i + 1 < parts.len() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() && !is_string_mapped_wkt(m.full_name()) => {
                    current = m;
                }
                _ => return Err(format!("{part:?} in {path:?} is not a singular message field")),
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

/// Whether a leaf field can take a value from a path segment: singular
/// scalar, enum, or string-mapped well-known type.
pub(crate) fn is_bindable_leaf(field: &FieldDescriptor) -> bool {
    !field.is_list()
        && !field.is_map()
        && match field.kind() {
            Kind::Message(m) => is_string_mapped_wkt(m.full_name()),
            _ => true,
        }
}

/// The HTTP bindings declared on `method` with `google.api.http`
/// (empty when it has none or the extension is not in the pool).
pub(crate) fn declared_bindings(method: &MethodDescriptor) -> Result<Vec<Binding>, String> {
    let Some(ext) = method.parent_pool().get_extension_by_name(HTTP_EXTENSION) else {
        return Ok(Vec::new());
    };
    let options = method.options();
    if !options.has_extension(&ext) {
        return Ok(Vec::new());
    }
    let rule = options.get_extension(&ext);
    let Some(rule) = rule.as_message() else {
        return Err(format!("option {HTTP_EXTENSION} is not a google.api.HttpRule message"));
    };
    let mut bindings = vec![parse_rule(method, rule)?];
    if let Some(Value::List(extra)) = rule.get_field_by_name("additional_bindings").as_deref() {
        for item in extra {
            if let Some(extra_rule) = item.as_message() {
                bindings.push(parse_rule(method, extra_rule)?);
            }
        }
    }
    Ok(bindings)
}

/// The fallback binding every routed method gets: `POST /pkg.Service/Method`
/// with the whole JSON body as the request.
pub(crate) fn fallback_binding(method: &MethodDescriptor) -> Result<Binding, String> {
    let pattern = format!("/{}/{}", method.parent_service().full_name(), method.name());
    // Service and method names are identifiers, so the template has plain
    // literal segments.
    let (template, _) = PathTemplate::parse(&pattern)?;
    Ok(Binding {
        http_method: Method::POST,
        pattern,
        template,
        variables: Vec::new(),
        body: Body::All,
        response_body: None,
    })
}

fn string_field(rule: &DynamicMessage, name: &str) -> Option<String> {
    if !rule.has_field_by_name(name) {
        return None;
    }
    rule.get_field_by_name(name).and_then(|v| v.as_str().map(str::to_owned))
}

fn parse_rule(method: &MethodDescriptor, rule: &DynamicMessage) -> Result<Binding, String> {
    let mut pattern = None;
    for (name, m) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if let Some(path) = string_field(rule, name) {
            pattern = Some((m, path));
        }
    }
    if rule.has_field_by_name("custom")
        && let Some(custom) = rule.get_field_by_name("custom")
        && let Some(custom) = custom.as_message()
    {
        let kind = string_field(custom, "kind").unwrap_or_default();
        let path = string_field(custom, "path").unwrap_or_default();
        let m = Method::from_bytes(kind.as_bytes()).map_err(|_| format!("custom HTTP method {kind:?} is invalid"))?;
        pattern = Some((m, path));
    }
    let Some((http_method, pattern)) = pattern else {
        return Err("HTTP rule has no pattern (get, put, post, delete, patch or custom)".into());
    };
    let context = |reason: String| format!("rule \"{http_method} {pattern}\": {reason}");
    let (template, raw_vars) = PathTemplate::parse(&pattern).map_err(context)?;

    let input = method.input();
    let mut variables = Vec::with_capacity(raw_vars.len());
    for raw in raw_vars {
        let fields = resolve_field_path(&input, &raw.path)
            .map_err(|why| context(format!("path variable {:?}: {why}", raw.path)))?;
        if let Some(leaf) = fields.last()
            && !is_bindable_leaf(leaf)
        {
            return Err(context(format!(
                "path variable {:?} must name a singular scalar, enum or string-mapped well-known type field",
                raw.path
            )));
        }
        variables.push(Variable { path: raw.path, fields, start: raw.start, end: raw.end });
    }

    let body = match string_field(rule, "body").as_deref() {
        None | Some("") => Body::None,
        Some("*") => Body::All,
        Some(name) => match input.get_field_by_name(name) {
            Some(f) => Body::Field(f),
            None => {
                return Err(context(format!("body {name:?} is not a top-level field of {}", input.full_name())));
            }
        },
    };
    if let Body::Field(f) = &body
        && let Some(v) = variables.iter().find(|v| v.fields.len() == 1 && v.fields[0] == *f)
    {
        return Err(context(format!("field {:?} is bound by both the path and the body", v.path)));
    }

    let output = method.output();
    let response_body = match string_field(rule, "response_body").as_deref() {
        None | Some("") => None,
        Some(name) => match output.get_field_by_name(name) {
            Some(f) => Some(f),
            None => {
                return Err(context(format!(
                    "response_body {name:?} is not a top-level field of {}",
                    output.full_name()
                )));
            }
        },
    };
    Ok(Binding { http_method, pattern, template, variables, body, response_body })
}

#[cfg(test)]
mod tests;
