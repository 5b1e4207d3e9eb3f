//! Query parameter edits: remove → rename → set → add. Names are compared
//! percent-decoded (`a%5Fb` is `a_b`), so an encoded spelling cannot slip
//! past a `remove`; untouched parameters keep their exact text.

use std::collections::BTreeMap;

use crate::config::{OneOrMany, QuerySettings};
use crate::headers::check_chains;
use crate::template::{Template, Vars, decode_query, encode_component};

/// Compiled query edits.
#[derive(Default)]
pub(crate) struct QueryPlan {
    remove: Vec<String>,
    rename: Vec<(String, String)>,
    set: Vec<(String, Vec<Template>)>,
    add: Vec<(String, Vec<Template>)>,
}

impl QueryPlan {
    pub(crate) fn compile(s: &QuerySettings) -> Result<Self, String> {
        for n in &s.remove {
            non_empty("request.query.remove", n)?;
        }
        let mut rename = Vec::new();
        for (from, to) in &s.rename {
            non_empty("request.query.rename", from)?;
            non_empty("request.query.rename", to)?;
            if from == to {
                return Err(format!("request.query.rename: {from:?} is renamed to itself"));
            }
            rename.push((from.clone(), to.clone()));
        }
        check_chains("request.query.rename", &rename)?;
        Ok(Self {
            remove: s.remove.clone(),
            rename,
            set: values("request.query.set", &s.set)?,
            add: values("request.query.add", &s.add)?,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.rename.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// The new query (`None` inside: no query at all), or `None` if
    /// unchanged.
    pub(crate) fn apply(&self, query: Option<&str>, vars: &Vars<'_>) -> Option<Option<String>> {
        if self.is_empty() {
            return None;
        }
        let mut pairs: Vec<String> =
            query.unwrap_or("").split('&').filter(|p| !p.is_empty()).map(str::to_owned).collect();
        let mut changed = false;
        let named = |pair: &str, name: &str| decode_query(pair.split_once('=').map_or(pair, |(k, _)| k)) == name;

        if !self.remove.is_empty() {
            let before = pairs.len();
            pairs.retain(|p| !self.remove.iter().any(|n| named(p, n)));
            changed |= pairs.len() != before;
        }
        for (from, to) in &self.rename {
            if !pairs.iter().any(|p| named(p, from)) {
                continue;
            }
            pairs.retain(|p| !named(p, to));
            let new_name = encode_component(to);
            for p in pairs.iter_mut().filter(|p| named(p, from)) {
                *p = match p.split_once('=') {
                    Some((_, v)) => format!("{new_name}={v}"),
                    None => new_name.clone(),
                };
            }
            changed = true;
        }
        for (name, values) in &self.set {
            let at = pairs.iter().position(|p| named(p, name)).unwrap_or(pairs.len());
            pairs.retain(|p| !named(p, name));
            let at = at.min(pairs.len());
            let enc = encode_component(name);
            let new = values.iter().map(|t| format!("{enc}={}", t.render_query(vars)));
            pairs.splice(at..at, new);
            changed = true;
        }
        for (name, values) in &self.add {
            let enc = encode_component(name);
            pairs.extend(values.iter().map(|t| format!("{enc}={}", t.render_query(vars))));
            changed = true;
        }
        changed.then(|| (!pairs.is_empty()).then(|| pairs.join("&")))
    }
}

fn non_empty(key: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{key}: a parameter name cannot be empty"));
    }
    Ok(())
}

fn values(key: &str, map: &BTreeMap<String, OneOrMany>) -> Result<Vec<(String, Vec<Template>)>, String> {
    map.iter()
        .map(|(name, vs)| {
            non_empty(key, name)?;
            let ts = vs
                .values()
                .iter()
                .map(|v| Template::parse(v).map_err(|e| format!("{key}.{name}: {e}")))
                .collect::<Result<_, _>>()?;
            Ok((name.clone(), ts))
        })
        .collect()
}
