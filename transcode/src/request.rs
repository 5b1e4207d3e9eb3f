//! Request transcoding: JSON body + path variables + query parameters → a
//! request message → one gRPC frame.
//!
//! The three sources are merged into one JSON object that is then decoded
//! with the proto3 JSON mapping (so every value, wherever it came from,
//! follows the same rules and errors name the field):
//!
//! 1. the body: the whole object for `body: "*"` (an empty body is `{}`),
//!    the value of one field for `body: "field"`, ignored when the rule has
//!    no body;
//! 2. query parameters, for fields bound neither by the path nor by the body
//!    (none at all for `body: "*"`): `?a.b=1` sets nested fields (proto or
//!    JSON names), repeated fields take several (`?tags=a&tags=b`), enums
//!    take a name or a number, and well-known types take their JSON string
//!    form (`?as_of=2024-01-01T00:00:00Z`, `?max_age=1.5s`). A query
//!    parameter naming no such field is an error unless
//!    [`JsonOptions::ignore_unknown_query_parameters`](crate::JsonOptions);
//! 3. path variables, percent-decoded (a variable spanning several segments
//!    keeps `%2F` encoded), overriding what the body said for the same field.
//!
//! Unknown JSON fields are an error naming the field unless
//! [`JsonOptions::ignore_unknown_fields`](crate::JsonOptions) (which, as in
//! protobuf's own JSON parser, also drops unknown enum names). The body size
//! is capped by the caller; JSON nesting is capped at 128 levels by
//! `serde_json`, and nothing is allocated beyond a constant factor of the
//! body.

use bytes::Bytes;
use http::StatusCode;
use percent_encoding::percent_decode;
use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};

use crate::frame::encode_frame;
use crate::rules::{Body, is_string_mapped_wkt};
use crate::status::{Code, GrpcStatus};
use crate::transcoder::RouteMatch;

/// Why a request could not be transcoded: the client's fault, answered with
/// 400 and [`to_json`](Self::to_json).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body is not JSON (or nests deeper than 128 levels).
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// `body: "*"` needs a JSON object.
    #[error("request body must be a JSON object")]
    BodyNotObject,
    /// A field has a value of the wrong type or out of range.
    #[error("invalid value for field {field:?}: {message}")]
    InvalidField {
        /// The field path as in the JSON (`items[0].quantity`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The body names a field the message does not have.
    #[error("unknown field {field:?}")]
    UnknownField {
        /// The field path (`shippingAddress.zip`).
        field: String,
    },
    /// The body as a whole could not be decoded.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A query parameter names no field that the query can bind.
    #[error("unknown query parameter {name:?}")]
    UnknownQueryParameter {
        /// The parameter name.
        name: String,
    },
    /// A query parameter cannot be used as given.
    #[error("query parameter {name:?} {reason}")]
    InvalidQueryParameter {
        /// The parameter name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A path segment is not UTF-8 once percent-decoded.
    #[error("path variable {field:?} is not valid UTF-8 after percent-decoding")]
    InvalidPathValue {
        /// The field the variable binds.
        field: String,
    },
}

impl RequestError {
    /// The HTTP status to answer with: always 400.
    pub fn http_status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    /// The gRPC code it stands for: `INVALID_ARGUMENT`.
    pub fn grpc_code(&self) -> Code {
        Code::InvalidArgument
    }

    /// The error body, shaped like upstream errors:
    /// `{"code": 3, "message": "<this error>", "details": []}`.
    pub fn to_json(&self) -> Bytes {
        GrpcStatus::new(self.grpc_code(), self.to_string()).to_json(None)
    }
}

impl RouteMatch<'_> {
    /// Builds the request message from the JSON `body` and the matched path
    /// and query. See the module docs for how the sources combine.
    pub fn request_message(&self, body: &[u8]) -> Result<DynamicMessage, RequestError> {
        let input = self.method().input();
        let binding = &self.route.binding;
        let mut root = match &binding.body {
            Body::None => Map::new(),
            Body::All => match parse_body(body)? {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(map)) => map,
                Some(_) => return Err(RequestError::BodyNotObject),
            },
            Body::Field(field) => {
                let mut map = Map::new();
                if let Some(value) = parse_body(body)? {
                    map.insert(field.name().to_owned(), value);
                }
                map
            }
        };

        let options = &self.transcoder.config().json;
        if let Some(query) = self.query.as_deref() {
            for (fields, values) in self.query_bindings(&input, query, options.ignore_unknown_query_parameters)? {
                let Some(leaf) = fields.last() else { continue };
                let value = if leaf.is_list() {
                    Value::Array(values.into_iter().map(|v| string_to_json(leaf, v)).collect())
                } else {
                    let mut values = values;
                    let (Some(value), None) = (values.pop(), values.pop()) else {
                        return Err(RequestError::InvalidQueryParameter {
                            name: dotted(&fields),
                            reason: "is given more than once but the field is not repeated".into(),
                        });
                    };
                    string_to_json(leaf, value)
                };
                insert_at(&mut root, &fields, value);
            }
        }

        for (variable, raw) in binding.variables.iter().zip(&self.raw_values) {
            let multi = variable.is_multi_segment(&binding.template);
            let decoded = decode_path_value(raw, multi)
                .ok_or_else(|| RequestError::InvalidPathValue { field: variable.path.clone() })?;
            if let Some(leaf) = variable.fields.last() {
                insert_at(&mut root, &variable.fields, string_to_json(leaf, decoded));
            }
        }

        let de_options = DeserializeOptions::new().deny_unknown_fields(!options.ignore_unknown_fields);
        let mut track = serde_path_to_error::Track::new();
        let result = DynamicMessage::deserialize_with_options(
            input,
            serde_path_to_error::Deserializer::new(Value::Object(root), &mut track),
            &de_options,
        );
        result.map_err(|err| field_error(&self.method().input(), &track.path().to_string(), &err.to_string()))
    }

    /// Builds the request message and frames it: the body of the upstream
    /// gRPC request (one uncompressed length-prefixed message).
    pub fn encode_request(&self, body: &[u8]) -> Result<Bytes, RequestError> {
        let message = self.request_message(body)?;
        Ok(encode_frame(&message.encode_to_vec()))
    }

    /// Groups the query parameters by the field they bind.
    fn query_bindings(
        &self,
        input: &MessageDescriptor,
        query: &str,
        ignore_unknown: bool,
    ) -> Result<Vec<QueryBinding>, RequestError> {
        let binding = &self.route.binding;
        let mut out: Vec<QueryBinding> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode_form(raw_key).ok_or_else(|| RequestError::InvalidQueryParameter {
                name: raw_key.to_owned(),
                reason: "is not valid UTF-8".into(),
            })?;
            let value = decode_form(raw_value).ok_or_else(|| RequestError::InvalidQueryParameter {
                name: name.clone(),
                reason: "has a value that is not valid UTF-8".into(),
            })?;
            let fields = match &binding.body {
                // Every field not in the path is in the body.
                Body::All => None,
                _ => resolve_query_key(input, &name),
            };
            let bound_elsewhere = fields.as_ref().is_some_and(|fields| {
                let by_body = matches!(&binding.body, Body::Field(f) if fields.first() == Some(f));
                let by_path =
                    binding.variables.iter().any(|v| is_prefix(&v.fields, fields) || is_prefix(fields, &v.fields));
                by_body || by_path
            });
            let fields = match fields {
                Some(fields) if !bound_elsewhere => fields,
                _ if ignore_unknown => continue,
                _ => return Err(RequestError::UnknownQueryParameter { name }),
            };
            match out.iter_mut().find(|(f, _)| *f == fields) {
                Some((_, values)) => values.push(value),
                None => out.push((fields, vec![value])),
            }
        }
        Ok(out)
    }
}

/// A field path bound by the query, with every value given for it.
type QueryBinding = (Vec<FieldDescriptor>, Vec<String>);

fn is_prefix(a: &[FieldDescriptor], b: &[FieldDescriptor]) -> bool {
    a.len() <= b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

fn dotted(fields: &[FieldDescriptor]) -> String {
    fields.iter().map(|f| f.name()).collect::<Vec<_>>().join(".")
}

/// Parses the body; `None` when it is empty or only whitespace.
fn parse_body(body: &[u8]) -> Result<Option<Value>, RequestError> {
    if body.trim_ascii().is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(body).map(Some).map_err(|e| RequestError::InvalidJson(e.to_string()))
}

/// Resolves a query key (`filter.min_items` or `filter.minItems`) to a field
/// path whose leaf a string can set.
fn resolve_query_key(message: &MessageDescriptor, key: &str) -> Option<Vec<FieldDescriptor>> {
    let mut current = message.clone();
    let mut fields = Vec::new();
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = current.get_field_by_name(part).or_else(|| current.get_field_by_json_name(part))?;
        let is_last = parts.peek().is_none();
        match field.kind() {
            Kind::Message(m)
                if !is_last && !field.is_list() && !field.is_map() && !is_string_mapped_wkt(m.full_name()) =>
            {
                current = m;
            }
            Kind::Message(m) if is_last && !field.is_map() && is_string_mapped_wkt(m.full_name()) => {}
            Kind::Message(_) => return None,
            _ if !is_last => return None,
            _ => {}
        }
        fields.push(field);
    }
    Some(fields)
}

/// Decodes an `application/x-www-form-urlencoded` component.
fn decode_form(s: &str) -> Option<String> {
    let plus_as_space = s.replace('+', " ");
    percent_decode(plus_as_space.as_bytes()).decode_utf8().ok().map(|c| c.into_owned())
}

/// Percent-decodes a path variable; a multi-segment one keeps `%2F`.
fn decode_path_value(raw: &str, multi_segment: bool) -> Option<String> {
    if !multi_segment {
        return percent_decode(raw.as_bytes()).decode_utf8().ok().map(|c| c.into_owned());
    }
    let pieces: Option<Vec<String>> = split_keeping_slash_escapes(raw)
        .into_iter()
        .map(|(piece, escape)| match escape {
            true => Some(piece.to_owned()),
            false => percent_decode(piece.as_bytes()).decode_utf8().ok().map(|c| c.into_owned()),
        })
        .collect();
    pieces.map(|p| p.concat())
}

/// Splits `s` into runs, marking the `%2F`/`%2f` escapes as kept.
fn split_keeping_slash_escapes(s: &str) -> Vec<(&str, bool)> {
    let mut out = Vec::new();
    let mut from = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i + 2 < bytes.len() {
        if bytes[i] == b'%' && bytes[i + 1] == b'2' && (bytes[i + 2] == b'F' || bytes[i + 2] == b'f') {
            out.push((&s[from..i], false));
            out.push((&s[i..i + 3], true));
            i += 3;
            from = i;
        } else {
            i += 1;
        }
    }
    out.push((&s[from..], false));
    out
}

/// The JSON form of a string from a path or query for `field`, to be checked
/// by the proto3 JSON decoder like a body value.
fn string_to_json(field: &FieldDescriptor, s: String) -> Value {
    let boolean = |s: String| match s.as_str() {
        "true" | "True" | "TRUE" | "1" => Value::Bool(true),
        "false" | "False" | "FALSE" | "0" => Value::Bool(false),
        _ => Value::String(s),
    };
    match field.kind() {
        Kind::Bool => boolean(s),
        Kind::Message(m) if m.full_name() == "google.protobuf.BoolValue" => boolean(s),
        Kind::Enum(_) => s.parse::<i32>().map(Value::from).unwrap_or(Value::String(s)),
        // Numbers, strings, bytes (base64) and the other well-known types all
        // accept a JSON string in the proto3 mapping.
        _ => Value::String(s),
    }
}

/// Sets `fields` (a path from the root) to `value`, creating intermediate
/// objects (in place of `null`) and replacing what the body had under the
/// proto or JSON name.
fn insert_at(root: &mut Map<String, Value>, fields: &[FieldDescriptor], value: Value) {
    let Some((leaf, parents)) = fields.split_last() else {
        return;
    };
    let mut map = root;
    for field in parents {
        let key = [field.json_name(), field.name()]
            .into_iter()
            .find(|k| map.contains_key(*k))
            .unwrap_or(field.name())
            .to_owned();
        let entry = map.entry(key).or_insert(Value::Null);
        if entry.is_null() {
            *entry = Value::Object(Map::new());
        }
        // Anything but an object is left for the decoder to report, naming
        // the field, rather than silently replaced.
        let Value::Object(next) = entry else {
            return;
        };
        map = next;
    }
    map.remove(leaf.json_name());
    map.insert(leaf.name().to_owned(), value);
}

/// What the field at a JSON error path (`items[0].quantity`) takes, in
/// words; `None` if the path does not lead to a field.
fn expected_at(message: &MessageDescriptor, path: &str) -> Option<String> {
    let mut current = message.clone();
    let mut field = None;
    for part in path.split('.') {
        let name = part.split('[').next().unwrap_or(part);
        if let Some(Kind::Message(m)) = field.as_ref().map(FieldDescriptor::kind) {
            current = m;
        }
        let found = current.get_field_by_json_name(name).or_else(|| current.get_field_by_name(name))?;
        field = Some(found);
    }
    let field = field?;
    let indexed = path.ends_with(']');
    let one = match field.kind() {
        Kind::Double | Kind::Float => "a number",
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "an integer",
        Kind::Uint32 | Kind::Fixed32 | Kind::Uint64 | Kind::Fixed64 => "a non-negative integer",
        Kind::Bool => "true or false",
        Kind::String => "a string",
        Kind::Bytes => "base64 bytes",
        Kind::Enum(_) => "an enum name or number",
        Kind::Message(_) => "an object",
    };
    Some(if field.is_list() && !indexed { format!("a list of ({one})") } else { one.to_owned() })
}

/// Turns a JSON-mapping error at `path` into a [`RequestError`].
fn field_error(input: &MessageDescriptor, path: &str, message: &str) -> RequestError {
    let path = if path == "." { "" } else { path };
    if let Some(rest) = message.strip_prefix("unrecognized field name '")
        && let Some(name) = rest.strip_suffix('\'')
    {
        let field = if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") };
        return RequestError::UnknownField { field };
    }
    if path.is_empty() {
        return RequestError::Invalid(message.to_owned());
    }
    // Some decoder messages ("invalid digit found in string") do not say
    // what was wanted: add it from the descriptor.
    let message = match expected_at(input, path) {
        Some(wanted) if !message.contains("expected") => format!("expected {wanted} ({message})"),
        _ => message.to_owned(),
    };
    RequestError::InvalidField { field: path.to_owned(), message }
}

#[cfg(test)]
mod tests;
