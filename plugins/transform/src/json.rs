//! A JSON document that survives a round trip: object keys keep their order
//! (duplicates included) and numbers keep their exact text, so a transform
//! changes only what it was told to change. `serde_json::Value` would sort
//! keys and round large numbers unless features were turned on for the whole
//! workspace, which would change other crates' behaviour.
//!
//! Plus JSON pointers (RFC 6901) and the three edits the plugin makes:
//! [`Json::set`], [`Json::remove`], [`Json::rename`].

use std::fmt::{self, Write as _};

/// Deepest nesting accepted, like serde_json's default: it bounds the
/// recursion of the parser, the writer and drop on the 512 KiB wasm stack.
const MAX_DEPTH: usize = 128;

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    /// The number exactly as written (already checked against the grammar).
    Number(String),
    String(String),
    Array(Vec<Json>),
    /// Members in document order; duplicate keys are kept.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parse a complete document (RFC 8259; no BOM, no trailing data).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Json, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 at byte {}", e.valid_up_to()))?;
        let mut p = Parser { s: text.as_bytes(), text, pos: 0 };
        p.ws();
        let value = p.value(0)?;
        p.ws();
        if p.pos != p.s.len() {
            return Err(p.err("trailing characters"));
        }
        Ok(value)
    }

    /// Compact JSON text.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut out = String::new();
        self.write(&mut out);
        out.into_bytes()
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => out.push_str(n),
            Json::String(s) => write_string(s, out),
            Json::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(k, out);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    /// The value at `ptr`. With duplicate keys the last one counts, as in
    /// JavaScript and serde_json.
    #[cfg(test)]
    pub(crate) fn get(&self, ptr: &Pointer) -> Option<&Json> {
        ptr.tokens.iter().try_fold(self, |node, token| match node {
            Json::Object(members) => members.iter().rev().find(|(k, _)| k == token).map(|(_, v)| v),
            Json::Array(items) => items.get(array_index(token)?),
            _ => None,
        })
    }

    // Duplicate keys. A document may repeat a key (`{"a":{…},"a":{…}}`);
    // parsers disagree on which duplicate counts (the first, the last, or
    // an error). So every edit follows EVERY duplicate along its pointer
    // ("fans out"): whichever one the next parser keeps, it sees the edit.

    /// Call `f` on every node at `tokens`, following every duplicate key.
    fn for_each_at(&mut self, tokens: &[String], f: &mut impl FnMut(&mut Json)) {
        let Some((token, rest)) = tokens.split_first() else {
            f(self);
            return;
        };
        match self {
            Json::Object(members) => {
                for (_, v) in members.iter_mut().filter(|(k, _)| k == token) {
                    v.for_each_at(rest, f);
                }
            }
            Json::Array(items) => {
                if let Some(v) = array_index(token).and_then(|i| items.get_mut(i)) {
                    v.for_each_at(rest, f);
                }
            }
            _ => {}
        }
    }

    /// Set the value at `ptr`, creating missing intermediate objects (an
    /// array grows by one object for `-` or its length as index). Replaces an
    /// existing member (all duplicates, at the first one's place) or array
    /// element; appends to an array for `-` or index == length. With
    /// duplicate keys on the way, the value goes into every duplicate that
    /// can take it. Gives the value back, changing nothing, when no node can:
    /// the path runs through a scalar or past the end of an array.
    pub(crate) fn set(&mut self, ptr: &Pointer, value: Json) -> Result<(), Json> {
        self.place(&ptr.tokens, value)
    }

    /// [`Json::set`] below `self`. A branch fails only at an existing node
    /// (a scalar, an array too short), before creating anything, so `Err`
    /// means nothing changed. Clones the value only for duplicates.
    fn place(&mut self, tokens: &[String], value: Json) -> Result<(), Json> {
        let Some((token, rest)) = tokens.split_first() else {
            *self = value;
            return Ok(());
        };
        match self {
            Json::Object(members) => {
                if rest.is_empty() {
                    // The member itself: one, at the first duplicate's place.
                    let mut seen = false;
                    members.retain(|(k, _)| k != token || !std::mem::replace(&mut seen, true));
                }
                let Some(last) = members.iter().rposition(|(k, _)| k == token) else {
                    members.push((token.clone(), Json::Object(Vec::new())));
                    return members.last_mut().expect("just pushed").1.place(rest, value);
                };
                let mut placed = false;
                for (_, v) in members[..last].iter_mut().filter(|(k, _)| k == token) {
                    placed |= v.place(rest, value.clone()).is_ok();
                }
                match members[last].1.place(rest, value) {
                    Err(value) if !placed => Err(value),
                    _ => Ok(()),
                }
            }
            Json::Array(items) => match array_slot(token, items.len()) {
                Some(i) if i < items.len() => items[i].place(rest, value),
                Some(_) => {
                    items.push(Json::Object(Vec::new()));
                    items.last_mut().expect("just pushed").place(rest, value)
                }
                None => Err(value),
            },
            _ => Err(value),
        }
    }

    /// Whether [`Json::place`] would succeed.
    fn placeable(&self, tokens: &[String]) -> bool {
        let Some((token, rest)) = tokens.split_first() else { return true };
        match self {
            Json::Object(members) => {
                let mut found = members.iter().filter(|(k, _)| k == token).peekable();
                // A missing member is created.
                found.peek().is_none() || found.any(|(_, v)| v.placeable(rest))
            }
            Json::Array(items) => match array_slot(token, items.len()) {
                Some(i) if i < items.len() => items[i].placeable(rest),
                Some(_) => true,
                None => false,
            },
            _ => false,
        }
    }

    /// Remove child `key` of this node (every duplicate member), returning
    /// the last one and the first one's place; `None` if absent.
    fn take_child(&mut self, key: &str) -> Option<(Json, usize)> {
        match self {
            Json::Object(members) => {
                let mut taken = None;
                let mut i = members.len();
                while i > 0 {
                    i -= 1;
                    if members[i].0 == key {
                        let (_, v) = members.remove(i);
                        // Keep the last duplicate (the one `get` sees) and
                        // the first position (where a rename puts it).
                        taken = Some((taken.map_or(v, |(kept, _)| kept), i));
                    }
                }
                taken
            }
            Json::Array(items) => {
                let i = array_index(key).filter(|&i| i < items.len())?;
                Some((items.remove(i), i))
            }
            _ => None,
        }
    }

    /// Remove the value at `ptr` (every duplicate member, below every
    /// duplicate parent); whether anything was removed.
    pub(crate) fn remove(&mut self, ptr: &Pointer) -> bool {
        let Some((key, parent)) = ptr.tokens.split_last() else { return false };
        let mut removed = false;
        self.for_each_at(parent, &mut |node| removed |= node.take_child(key).is_some());
        removed
    }

    /// Move the value at `from` to `to` (as [`Json::set`] would place it).
    /// Nothing happens if `from` is absent or `to` cannot be set.
    ///
    /// When `to` is beside `from` (or below a sibling), each duplicate parent
    /// of `from` renames its own member, and a member renamed within its
    /// object keeps its place. Otherwise the member is taken from every
    /// duplicate parent and the last one found is set at `to`.
    pub(crate) fn rename(&mut self, from: &Pointer, to: &Pointer) -> bool {
        let Some((key, parent)) = from.tokens.split_last() else { return false };
        if from.starts_with(to) || to.starts_with(from) {
            return false;
        }
        if let Some(to_rel) = to.tokens.strip_prefix(parent) {
            let mut renamed = false;
            self.for_each_at(parent, &mut |node| renamed |= node.rename_child(key, to_rel));
            return renamed;
        }
        // Taking `from` cannot change where `to` leads: `to` does not go
        // through `from`'s parents. So check first, then move.
        if !self.placeable(&to.tokens) {
            return false;
        }
        let mut value = None;
        self.for_each_at(parent, &mut |node| {
            if let Some((v, _)) = node.take_child(key) {
                value = Some(v);
            }
        });
        value.is_some_and(|v| self.place(&to.tokens, v).is_ok())
    }

    /// Rename child `key` of this node to `to_rel` below it (not inside it).
    fn rename_child(&mut self, key: &str, to_rel: &[String]) -> bool {
        // In an object, taking `key` changes nothing on the way to `to_rel`:
        // check first, so that no duplicate is lost when it cannot be placed.
        if matches!(self, Json::Object(_)) && !self.placeable(to_rel) {
            return false;
        }
        let Some((value, at)) = self.take_child(key) else { return false };
        if let (Json::Object(members), [new_key]) = (&mut *self, to_rel)
            && !members.iter().any(|(k, _)| k == new_key)
        {
            members.insert(at.min(members.len()), (new_key.clone(), value));
            return true;
        }
        match self.place(to_rel, value) {
            Ok(()) => true,
            // Only in an array, whose later elements moved down one place.
            Err(value) => {
                if let Json::Array(items) = self {
                    items.insert(at.min(items.len()), value);
                }
                false
            }
        }
    }
}

/// An existing index (`0`, `12`; no leading zeros).
fn array_index(token: &str) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

/// An index that may be set: existing, or the end (`-` or `len`).
fn array_slot(token: &str, len: usize) -> Option<usize> {
    if token == "-" {
        return Some(len);
    }
    array_index(token).filter(|&i| i <= len)
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl From<&serde_json::Value> for Json {
    fn from(v: &serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => Json::Null,
            serde_json::Value::Bool(b) => Json::Bool(*b),
            serde_json::Value::Number(n) => Json::Number(n.to_string()),
            serde_json::Value::String(s) => Json::String(s.clone()),
            serde_json::Value::Array(a) => Json::Array(a.iter().map(Json::from).collect()),
            serde_json::Value::Object(o) => Json::Object(o.iter().map(|(k, v)| (k.clone(), Json::from(v))).collect()),
        }
    }
}

// ---- parser -------------------------------------------------------------

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> String {
        format!("{what} at byte {}", self.pos)
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("expected a value")),
            None => Err(self.err("unexpected end of input")),
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.s[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.err("expected a value"))
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.pos += 1;
        let mut members = Vec::new();
        self.ws();
        if self.eat(b'}') {
            return Ok(Json::Object(members));
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key"));
            }
            let key = self.string()?;
            self.ws();
            if !self.eat(b':') {
                return Err(self.err("expected ':'"));
            }
            self.ws();
            let value = self.value(depth)?;
            members.push((key, value));
            self.ws();
            if self.eat(b',') {
                continue;
            }
            if self.eat(b'}') {
                return Ok(Json::Object(members));
            }
            return Err(self.err("expected ',' or '}'"));
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.pos += 1;
        let mut items = Vec::new();
        self.ws();
        if self.eat(b']') {
            return Ok(Json::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth)?);
            self.ws();
            if self.eat(b',') {
                continue;
            }
            if self.eat(b']') {
                return Ok(Json::Array(items));
            }
            return Err(self.err("expected ',' or ']'"));
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.pos;
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.eat(b'.') && self.digits() == 0 {
            return Err(self.err("invalid number"));
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        Ok(Json::Number(self.text[start..self.pos].to_owned()))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self.text.get(self.pos..self.pos + 4).ok_or_else(|| self.err("invalid \\u escape"))?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.err("invalid \\u escape"));
        }
        self.pos += 4;
        u32::from_str_radix(digits, 16).map_err(|_| self.err("invalid \\u escape"))
    }

    fn string(&mut self) -> Result<String, String> {
        self.pos += 1; // the opening quote
        let mut out = String::new();
        let mut run = self.pos; // start of the current unescaped run
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    out.push_str(&self.text[run..self.pos]);
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    out.push_str(&self.text[run..self.pos]);
                    self.pos += 1;
                    let esc = self.peek().ok_or_else(|| self.err("unterminated string"))?;
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{08}'),
                        b'f' => out.push('\u{0c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = match hi {
                                0xD800..=0xDBFF => {
                                    if !(self.eat(b'\\') && self.eat(b'u')) {
                                        return Err(self.err("lone surrogate in \\u escape"));
                                    }
                                    let lo = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&lo) {
                                        return Err(self.err("lone surrogate in \\u escape"));
                                    }
                                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                                }
                                0xDC00..=0xDFFF => return Err(self.err("lone surrogate in \\u escape")),
                                c => c,
                            };
                            out.push(char::from_u32(code).ok_or_else(|| self.err("invalid \\u escape"))?);
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                    run = self.pos;
                }
                Some(b) if b < 0x20 => return Err(self.err("control character in string")),
                Some(_) => self.pos += 1,
            }
        }
    }
}

// ---- pointers -----------------------------------------------------------

/// A JSON pointer (RFC 6901): `""` is the whole document, `/a/0/b~1c`
/// names member `b/c` of element 0 of member `a`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pointer {
    text: String,
    tokens: Vec<String>,
}

impl Pointer {
    pub(crate) fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer { text: String::new(), tokens: Vec::new() });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("JSON pointer {text:?} must be empty or start with '/'"));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    token.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => token.push('~'),
                    Some('1') => token.push('/'),
                    _ => return Err(format!("JSON pointer {text:?}: '~' must be followed by 0 or 1")),
                }
            }
            tokens.push(token);
        }
        Ok(Pointer { text: text.to_owned(), tokens })
    }

    /// The whole document.
    pub(crate) fn is_root(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether `self` is `other` or inside it.
    pub(crate) fn starts_with(&self, other: &Pointer) -> bool {
        self.tokens.starts_with(&other.tokens)
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests;
