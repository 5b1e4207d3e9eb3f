//! JSON body edits: remove → rename → set, on bodies whose content type is
//! JSON (`application/json` or `*/*+json`).

use weir_plugin_sdk::HeaderMap;

use crate::config::BodySettings;
use crate::json::{Json, Pointer};
use crate::template::{Source, Template, Vars};

/// A value to set: literal JSON, or a template rendered to a JSON string.
enum SetValue {
    Json(Json),
    Template(Template),
}

/// Compiled body edits of one direction.
#[derive(Default)]
pub(crate) struct BodyPlan {
    remove: Vec<Pointer>,
    rename: Vec<(Pointer, Pointer)>,
    set: Vec<(Pointer, SetValue)>,
}

/// What happened to a body.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Not JSON, empty, or no edit applied: the body goes on as it was.
    Unchanged,
    /// The edited body.
    Changed(Vec<u8>),
    /// JSON with a `content-encoding` (compressed): cannot be edited.
    Encoded(String),
    /// Larger than `max_body`.
    TooLarge(usize),
    /// JSON content type, but not valid JSON.
    Invalid(String),
}

impl BodyPlan {
    /// `key` is where the settings are, e.g. `request.body`.
    pub(crate) fn compile(key: &str, s: &BodySettings) -> Result<Self, String> {
        let pointer = |k: &str, p: &str| Pointer::parse(p).map_err(|e| format!("{key}.{k}: {e}"));
        let mut remove = Vec::new();
        for p in &s.remove {
            let p = pointer("remove", p)?;
            if p.is_root() {
                return Err(format!("{key}.remove: \"\" is the whole body and cannot be removed"));
            }
            remove.push(p);
        }
        let mut rename: Vec<(Pointer, Pointer)> = Vec::new();
        for (from, to) in &s.rename {
            let (from, to) = (pointer("rename", from)?, pointer("rename", to)?);
            if from.is_root() || to.is_root() {
                return Err(format!("{key}.rename: \"\" is the whole body and cannot be renamed"));
            }
            if from.starts_with(&to) || to.starts_with(&from) {
                return Err(format!("{key}.rename: \"{from}\" and \"{to}\" are inside one another"));
            }
            rename.push((from, to));
        }
        // Renames run in key order: refuse any that touch another's
        // pointers, so the result never depends on spelling.
        for (i, (from, to)) in rename.iter().enumerate() {
            for (other_from, other_to) in &rename[i + 1..] {
                let overlap = |a: &Pointer, b: &Pointer| a.starts_with(b) || b.starts_with(a);
                if overlap(from, other_from)
                    || overlap(from, other_to)
                    || overlap(to, other_from)
                    || overlap(to, other_to)
                {
                    return Err(format!(
                        "{key}.rename: \"{from}\" → \"{to}\" and \"{other_from}\" → \"{other_to}\" overlap; \
                         the result would depend on their order"
                    ));
                }
            }
        }
        let mut set = Vec::new();
        for (p, v) in &s.set {
            let ptr = pointer("set", p)?;
            let value = match v {
                serde_json::Value::String(text) => {
                    let t = Template::parse(text).map_err(|e| format!("{key}.set.\"{p}\": {e}"))?;
                    match t.literal() {
                        Some(lit) => SetValue::Json(Json::String(lit.to_owned())),
                        None => SetValue::Template(t),
                    }
                }
                other => SetValue::Json(Json::from(other)),
            };
            set.push((ptr, value));
        }
        Ok(Self { remove, rename, set })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.rename.is_empty() && self.set.is_empty()
    }

    pub(crate) fn sources(&self) -> impl Iterator<Item = &Source> {
        self.set
            .iter()
            .filter_map(|(_, v)| match v {
                SetValue::Template(t) => Some(t.sources()),
                SetValue::Json(_) => None,
            })
            .flatten()
    }

    /// Edit `body` if `headers` say it is JSON.
    pub(crate) fn transform(&self, headers: &HeaderMap, body: &[u8], max: usize, vars: &Vars<'_>) -> Outcome {
        if body.is_empty() || !is_json(headers) {
            return Outcome::Unchanged;
        }
        if let Some(enc) = headers.get("content-encoding")
            && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
        {
            return Outcome::Encoded(String::from_utf8_lossy(enc.as_bytes()).into_owned());
        }
        if body.len() > max {
            return Outcome::TooLarge(body.len());
        }
        let mut doc = match Json::parse(body) {
            Ok(doc) => doc,
            Err(e) => return Outcome::Invalid(e),
        };
        if self.apply(&mut doc, vars) { Outcome::Changed(doc.to_vec()) } else { Outcome::Unchanged }
    }

    /// Apply the edits; whether the document changed.
    pub(crate) fn apply(&self, doc: &mut Json, vars: &Vars<'_>) -> bool {
        let mut changed = false;
        for p in &self.remove {
            changed |= doc.remove(p);
        }
        for (from, to) in &self.rename {
            changed |= doc.rename(from, to);
        }
        for (p, v) in &self.set {
            let value = match v {
                SetValue::Json(j) => j.clone(),
                SetValue::Template(t) => Json::String(t.render_text(vars)),
            };
            changed |= doc.set(p, value).is_ok();
        }
        changed
    }
}

/// `application/json`, or any `type/subtype+json`, parameters ignored.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get("content-type").and_then(|v| v.to_str().ok()) else { return false };
    let media = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let Some((_, subtype)) = media.split_once('/') else { return false };
    media == "application/json" || (subtype.ends_with("+json") && subtype.len() > "+json".len())
}
