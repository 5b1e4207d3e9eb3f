//! Header edits: remove → rename → set → add, made header by header on
//! the head (never through the whole map: fetching every header, and
//! working out what changed in it, cost more than the edits themselves).

use weir_plugin_sdk::{HeaderName, HeaderValue, Request, Response, Result};

use crate::config::HeaderSettings;
use crate::template::{Source, Template, Vars};

/// Headers the gateway owns (framing, hop-by-hop): it ignores plugins'
/// values for them, so configuring them is a mistake worth reporting.
const GATEWAY_OWNED: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
];

/// A value: fixed at config time, or rendered per request.
enum Value {
    Fixed(HeaderValue),
    Template(Template),
}

/// Compiled header edits of one direction.
#[derive(Default)]
pub(crate) struct HeaderPlan {
    remove: Vec<HeaderName>,
    rename: Vec<(HeaderName, HeaderName)>,
    set: Vec<(HeaderName, Vec<Value>)>,
    add: Vec<(HeaderName, Vec<Value>)>,
}

/// The values of `set` and `add` for one request, in plan order.
pub(crate) struct Rendered {
    set: Vec<Vec<HeaderValue>>,
    add: Vec<Vec<HeaderValue>>,
}

/// A rendered value that is not a valid header value.
pub(crate) struct InvalidValue {
    pub(crate) header: HeaderName,
    pub(crate) reason: String,
}

impl HeaderPlan {
    /// `key` is where the settings are, e.g. `request.headers`.
    pub(crate) fn compile(key: &str, s: &HeaderSettings) -> Result<Self, String> {
        let remove = s.remove.iter().map(|n| name(&format!("{key}.remove"), n)).collect::<Result<_, _>>()?;
        let mut rename = Vec::new();
        for (from, to) in &s.rename {
            let k = format!("{key}.rename");
            let (from, to) = (name(&k, from)?, name(&k, to)?);
            if from == to {
                return Err(format!("{k}: {from:?} is renamed to itself"));
            }
            rename.push((from, to));
        }
        check_chains(&format!("{key}.rename"), &rename)?;
        Ok(Self {
            remove,
            rename,
            set: values(&format!("{key}.set"), &s.set)?,
            add: values(&format!("{key}.add"), &s.add)?,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.rename.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Whether the plan only adds values: then, as its templates read the
    /// request as it arrived, the values can go on the response from the
    /// request phase (`add_response_header`), without the response phase.
    pub(crate) fn only_adds(&self) -> bool {
        !self.add.is_empty() && self.remove.is_empty() && self.rename.is_empty() && self.set.is_empty()
    }

    /// The `add` values of `values`, header by header.
    pub(crate) fn added(&self, values: Rendered) -> impl Iterator<Item = (&HeaderName, HeaderValue)> {
        self.add.iter().zip(values.add).flat_map(|((n, _), vs)| vs.into_iter().map(move |v| (n, v)))
    }

    /// Every template, for the sources it needs.
    pub(crate) fn sources(&self) -> impl Iterator<Item = &Source> {
        self.set
            .iter()
            .chain(&self.add)
            .flat_map(|(_, vs)| vs)
            .flat_map(|v| match v {
                Value::Template(t) => Some(t.sources()),
                Value::Fixed(_) => None,
            })
            .flatten()
    }

    /// Render the values (before anything is edited: templates read the
    /// request as it was). A value that renders to something invalid in a
    /// header is left out and reported.
    pub(crate) fn render(&self, vars: &Vars<'_>) -> (Rendered, Vec<InvalidValue>) {
        let mut invalid = Vec::new();
        let mut render = |list: &[(HeaderName, Vec<Value>)]| -> Vec<Vec<HeaderValue>> {
            list.iter()
                .map(|(header, vs)| {
                    vs.iter()
                        .filter_map(|v| match v {
                            Value::Fixed(v) => Some(v.clone()),
                            Value::Template(t) => match HeaderValue::try_from(t.render_text(vars)) {
                                Ok(v) => Some(v),
                                Err(e) => {
                                    invalid.push(InvalidValue { header: header.clone(), reason: e.to_string() });
                                    None
                                }
                            },
                        })
                        .collect()
                })
                .collect()
        };
        let set = render(&self.set);
        let add = render(&self.add);
        (Rendered { set, add }, invalid)
    }

    /// Whether applying would change `headers` (so untouched headers are
    /// not sent back to the gateway).
    pub(crate) fn changes(&self, head: &impl Head) -> bool {
        !self.set.is_empty()
            || !self.add.is_empty()
            || self.remove.iter().any(|n| head.has(n))
            || self.rename.iter().any(|(from, _)| head.has(from))
    }

    pub(crate) fn apply(&self, head: &mut impl Head, values: Rendered) -> Result<()> {
        // Removing an absent header is a no-op: no read first.
        for n in &self.remove {
            head.remove(n)?;
        }
        for (from, to) in &self.rename {
            let moved = head.values(from);
            if moved.is_empty() {
                continue;
            }
            head.remove(from)?;
            head.remove(to)?;
            for v in &moved {
                head.append(to, v)?;
            }
        }
        for ((n, _), vs) in self.set.iter().zip(values.set) {
            match vs.split_first() {
                None => head.remove(n)?,
                Some((first, rest)) => {
                    head.set(n, first)?;
                    for v in rest {
                        head.append(n, v)?;
                    }
                }
            }
        }
        for ((n, _), vs) in self.add.iter().zip(values.add) {
            for v in &vs {
                head.append(n, v)?;
            }
        }
        Ok(())
    }
}

/// A head the plan edits: the request or the response.
pub(crate) trait Head {
    fn values(&self, name: &HeaderName) -> Vec<HeaderValue>;
    fn set(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<()>;
    fn append(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<()>;
    fn remove(&mut self, name: &HeaderName) -> Result<()>;

    fn has(&self, name: &HeaderName) -> bool {
        !self.values(name).is_empty()
    }
}

macro_rules! head {
    ($t:ty) => {
        impl Head for $t {
            fn values(&self, name: &HeaderName) -> Vec<HeaderValue> {
                self.header_all(name.as_str())
            }
            fn set(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<()> {
                self.set_header(name, value.as_bytes())
            }
            fn append(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<()> {
                self.append_header(name, value.as_bytes())
            }
            fn remove(&mut self, name: &HeaderName) -> Result<()> {
                self.remove_header(name)
            }
        }
    };
}
head!(Request);
head!(Response);

fn name(key: &str, text: &str) -> Result<HeaderName, String> {
    let n =
        HeaderName::from_bytes(text.as_bytes()).map_err(|_| format!("{key}: {text:?} is not a valid header name"))?;
    if GATEWAY_OWNED.contains(&n.as_str()) {
        return Err(format!("{key}: {text:?} is managed by the gateway and cannot be edited by plugins"));
    }
    Ok(n)
}

fn values(
    key: &str,
    map: &std::collections::BTreeMap<String, crate::config::OneOrMany>,
) -> Result<Vec<(HeaderName, Vec<Value>)>, String> {
    let mut out: Vec<(HeaderName, Vec<Value>)> = Vec::new();
    for (n, vs) in map {
        let n = name(key, n)?;
        if out.iter().any(|(seen, _)| *seen == n) {
            return Err(format!("{key}: header {:?} is listed twice (names are case-insensitive)", n.as_str()));
        }
        let mut compiled = Vec::new();
        for v in vs.values() {
            let at = format!("{key}.{}", n.as_str());
            let t = Template::parse(v).map_err(|e| format!("{at}: {e}"))?;
            compiled.push(match t.literal() {
                Some(text) => Value::Fixed(
                    HeaderValue::try_from(text).map_err(|_| format!("{at}: {text:?} is not a valid header value"))?,
                ),
                None => {
                    for lit in t.literals() {
                        HeaderValue::try_from(lit).map_err(|_| format!("{at}: {lit:?} is not a valid header value"))?;
                    }
                    Value::Template(t)
                }
            });
        }
        out.push((n, compiled));
    }
    Ok(out)
}

/// Renames run in key order, so a chain (`a → b`, `b → c`) would depend on
/// spelling; refuse it, and two renames to one target.
pub(crate) fn check_chains<T: PartialEq + std::fmt::Debug>(key: &str, pairs: &[(T, T)]) -> Result<(), String> {
    for (i, (from, to)) in pairs.iter().enumerate() {
        if let Some((other, _)) = pairs.iter().find(|(f, _)| f == to) {
            return Err(format!("{key}: {from:?} → {to:?} and {other:?} → ... chain; rename each directly"));
        }
        if pairs[..i].iter().any(|(f, _)| f == from) {
            return Err(format!("{key}: {from:?} is renamed twice (names are case-insensitive)"));
        }
        if pairs[..i].iter().any(|(_, t)| t == to) {
            return Err(format!("{key}: two names are renamed to {to:?}"));
        }
    }
    Ok(())
}
