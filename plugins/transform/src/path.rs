//! Path rewrite: strip_prefix → regex/replace → add_prefix. Only the path
//! changes; the query string is kept.

use regex_lite::Regex;

use crate::config::PathSettings;
use crate::template::{Group, Template, Vars, check_path_text, has_dot_segment};

/// Compiled path rewrite.
pub(crate) struct PathPlan {
    strip_prefix: Option<String>,
    rewrite: Option<(Regex, Template)>,
    add_prefix: Option<Template>,
}

impl PathPlan {
    pub(crate) fn compile(s: &PathSettings) -> Result<Option<Self>, String> {
        let strip_prefix = match &s.strip_prefix {
            Some(p) => Some(prefix("request.path.strip_prefix", p)?),
            None => None,
        };
        let rewrite = match (&s.regex, &s.replace) {
            (Some(re), Some(replace)) => {
                let regex = Regex::new(re).map_err(|e| format!("request.path.regex: {e}"))?;
                let t = Template::parse_replacement(replace).map_err(|e| format!("request.path.replace: {e}"))?;
                for lit in t.literals() {
                    check_path_text(lit).map_err(|e| format!("request.path.replace: {e}"))?;
                }
                no_dot_segment("request.path.replace", replace, &t)?;
                for g in t.groups() {
                    let known = match g {
                        Group::Index(i) => *i < regex.captures_len(),
                        Group::Name(n) => regex.capture_names().flatten().any(|c| c == n),
                    };
                    if !known {
                        let g = match g {
                            Group::Index(i) => format!("${i}"),
                            Group::Name(n) => format!("${{{n}}}"),
                        };
                        return Err(format!("request.path.replace: {g} is not a group of request.path.regex"));
                    }
                }
                Some((regex, t))
            }
            (Some(_), None) => return Err("request.path.regex needs request.path.replace".into()),
            (None, Some(_)) => return Err("request.path.replace needs request.path.regex".into()),
            (None, None) => None,
        };
        let add_prefix = match &s.add_prefix {
            Some(p) => {
                let key = "request.path.add_prefix";
                if !p.starts_with('/') {
                    return Err(format!("{key}: {p:?} must start with '/'"));
                }
                if p.trim_end_matches('/').is_empty() {
                    return Err(format!("{key}: {p:?} would add nothing"));
                }
                let t = Template::parse(p.trim_end_matches('/')).map_err(|e| format!("{key}: {e}"))?;
                for lit in t.literals() {
                    check_path_text(lit).map_err(|e| format!("{key}: {e}"))?;
                }
                no_dot_segment(key, p, &t)?;
                Some(t)
            }
            None => None,
        };
        if strip_prefix.is_none() && rewrite.is_none() && add_prefix.is_none() {
            return Ok(None);
        }
        Ok(Some(Self { strip_prefix, rewrite, add_prefix }))
    }

    /// The new path, or `None` if unchanged; `Err` (a message for the
    /// client) if it would contain a dot segment. Such a segment comes from
    /// the request (the config's own text is checked in `compile`): a value
    /// `..` or a path `/api/../admin` would let an upstream that normalises
    /// the path climb out of the prefix or replacement this rewrite added.
    pub(crate) fn apply(&self, path: &str, vars: &Vars<'_>) -> Result<Option<String>, String> {
        let mut current = path.to_owned();
        if let Some(prefix) = &self.strip_prefix
            && let Some(rest) = current.strip_prefix(prefix.as_str())
            && (rest.is_empty() || rest.starts_with('/'))
        {
            current = if rest.is_empty() { "/".to_owned() } else { rest.to_owned() };
        }
        if let Some((regex, replace)) = &self.rewrite {
            let mut out = String::new();
            let mut last = 0;
            let mut matched = false;
            for caps in regex.captures_iter(&current) {
                let Some(m) = caps.get(0) else { continue };
                matched = true;
                out.push_str(&current[last..m.start()]);
                out.push_str(&replace.render_path(vars, Some(&caps)));
                last = m.end();
            }
            if matched {
                out.push_str(&current[last..]);
                current = out;
            }
        }
        if let Some(prefix) = &self.add_prefix {
            current = format!("{}{current}", prefix.render_path(vars, None));
        }
        // A path always starts with '/' (a replacement may have dropped it).
        if !current.starts_with('/') {
            current.insert(0, '/');
        }
        if current == path {
            return Ok(None);
        }
        if has_dot_segment(&current) {
            return Err(
                "the rewritten path would contain a dot segment (\".\" or \"..\", perhaps percent-encoded)".into()
            );
        }
        Ok(Some(current))
    }
}

/// Refuse a template whose own text makes a dot segment.
fn no_dot_segment(key: &str, text: &str, t: &Template) -> Result<(), String> {
    if has_dot_segment(&t.render_sample()) {
        return Err(format!("{key}: {text:?} contains a dot segment (\".\" or \"..\")"));
    }
    Ok(())
}

/// A literal prefix: starts with '/', no trailing '/', valid path text.
fn prefix(key: &str, p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("{key}: {p:?} must start with '/'"));
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(format!("{key}: {p:?} would strip nothing"));
    }
    if trimmed.contains(['{', '}']) {
        return Err(format!("{key}: {p:?} is literal text, not a template"));
    }
    check_path_text(trimmed).map_err(|e| format!("{key}: {e}"))?;
    Ok(trimmed.to_owned())
}
