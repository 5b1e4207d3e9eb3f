//! `WWW-Authenticate` challenges (RFC 7235) and the distribution token
//! protocol's answers.

use http::HeaderMap;
use serde::Deserialize;

/// A challenge the registry answered 401 with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// `Basic realm="…"`: send the configured credentials.
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`: get a token from the realm.
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// The challenges in a response's `WWW-Authenticate` headers, Bearer
/// first (it is what registries prefer when they offer both).
pub(crate) fn challenges(headers: &HeaderMap) -> Vec<Challenge> {
    let mut found: Vec<Challenge> = headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse)
        .collect();
    found.sort_by_key(|c| matches!(c, Challenge::Basic));
    found
}

/// Parse one header value, which may hold several challenges.
pub(crate) fn parse(value: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    let mut rest = value.trim();
    while !rest.is_empty() {
        // The scheme token.
        let end = rest.find(|c: char| c.is_whitespace() || c == ',').unwrap_or(rest.len());
        let scheme = &rest[..end];
        rest = rest[end..].trim_start_matches([' ', '\t', ',']);
        let mut params: Vec<(String, String)> = Vec::new();
        // `name=value` pairs until the next scheme token (a token not
        // followed by `=`).
        while let Some(eq) = rest.find('=') {
            let name = rest[..eq].trim();
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ',') {
                break;
            }
            let after = &rest[eq + 1..];
            let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
                let mut val = String::new();
                let mut chars = quoted.char_indices();
                let mut close = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                val.push(n);
                            }
                        }
                        '"' => {
                            close = i + 1;
                            break;
                        }
                        c => val.push(c),
                    }
                }
                (val, &quoted[close.min(quoted.len())..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_owned(), &after[end..])
            };
            params.push((name.to_ascii_lowercase(), val));
            rest = remaining.trim_start_matches([' ', '\t', ',']);
        }
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if scheme.eq_ignore_ascii_case("basic") {
            out.push(Challenge::Basic);
        } else if scheme.eq_ignore_ascii_case("bearer")
            && let Some(realm) = get("realm")
        {
            out.push(Challenge::Bearer { realm, service: get("service"), scope: get("scope") });
        }
        if scheme.is_empty() {
            break;
        }
    }
    out
}

/// A token service's answer: `token`, or OAuth2's `access_token`.
#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// The token in a token service's JSON answer.
pub(crate) fn token(body: &[u8]) -> Result<String, String> {
    let answer: TokenAnswer =
        serde_json::from_slice(body).map_err(|e| format!("the token service's answer is not JSON: {e}"))?;
    answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| "the token service's answer has no `token` or `access_token`".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse(
                r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#
            ),
            vec![Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }]
        );
        assert_eq!(parse(r#"Basic realm="Registry Realm""#), vec![Challenge::Basic]);
        assert_eq!(parse("basic realm=x, charset=\"UTF-8\""), vec![Challenge::Basic]);
        assert_eq!(
            parse(r#"Basic realm="a, b", Bearer realm="http://h/t", error="insufficient_scope""#),
            vec![Challenge::Basic, Challenge::Bearer { realm: "http://h/t".into(), service: None, scope: None }]
        );
        assert_eq!(
            parse(r#"Bearer realm="q\"x""#),
            vec![Challenge::Bearer { realm: "q\"x".into(), service: None, scope: None }]
        );
        // A Bearer challenge without a realm is of no use.
        assert_eq!(parse("Bearer service=x"), vec![]);
        assert_eq!(parse("Negotiate"), vec![]);
        assert_eq!(parse(""), vec![]);

        let mut headers = HeaderMap::new();
        headers.append(http::header::WWW_AUTHENTICATE, "Basic realm=r".parse().expect("value"));
        headers.append(http::header::WWW_AUTHENTICATE, "Bearer realm=\"https://t\"".parse().expect("value"));
        assert!(matches!(challenges(&headers).first(), Some(Challenge::Bearer { .. })));
    }

    #[test]
    fn reads_tokens() {
        assert_eq!(token(br#"{"token":"a","expires_in":60}"#).as_deref(), Ok("a"));
        assert_eq!(token(br#"{"access_token":"b"}"#).as_deref(), Ok("b"));
        assert_eq!(token(br#"{"token":"","access_token":"c"}"#).as_deref(), Ok("c"));
        assert!(token(br#"{"nope":1}"#).is_err());
        assert!(token(b"<html>").is_err());
    }
}
