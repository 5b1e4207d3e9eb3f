//! `oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]`: parsing, checking and
//! printing, with the name rules of the distribution spec.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::OciError;

/// The scheme every reference starts with.
pub const SCHEME: &str = "oci://";

/// Longest tag the distribution spec allows.
const MAX_TAG: usize = 128;
/// Longest `HOST/REPO` the distribution spec allows.
const MAX_NAME: usize = 255;

/// A module in a registry: `oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]`.
///
/// `HOST` is a DNS name, an IPv4 address or a bracketed IPv6 address;
/// `REPO` is one or more `/`-separated lowercase path components
/// (`[a-z0-9]+` joined by `.`, `_`, `__` or dashes); `TAG` is up to 128 of
/// `[A-Za-z0-9_.-]`, not starting with `.` or `-`; the digest is
/// `sha256:` and 64 lowercase hex digits. With neither a tag nor a digest
/// the tag `latest` is meant; with both, the digest decides what is
/// pulled and the tag is informational. [`fmt::Display`] prints the
/// reference back in the form it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parse `oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]`.
    pub fn parse(input: &str) -> Result<Self, OciError> {
        let bad = |reason: &str| OciError::InvalidReference { input: input.to_owned(), reason: reason.to_owned() };
        let rest = input.strip_prefix(SCHEME).ok_or_else(|| bad("must start with `oci://`"))?;
        let (registry, path) = rest.split_once('/').ok_or_else(|| bad("missing repository (`oci://HOST/REPO:TAG`)"))?;
        if registry.is_empty() {
            return Err(bad("missing registry host"));
        }
        check_registry(registry).map_err(|r| bad(&r))?;
        let (name_tag, digest) = match path.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (path, None),
        };
        let (repository, tag) = match name_tag.split_once(':') {
            Some((r, t)) => (r, Some(t)),
            None => (name_tag, None),
        };
        if repository.is_empty() {
            return Err(bad("missing repository (`oci://HOST/REPO:TAG`)"));
        }
        check_repository(repository).map_err(|r| bad(&r))?;
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(bad(&format!("`HOST/REPO` is longer than {MAX_NAME} characters")));
        }
        if let Some(tag) = tag {
            check_tag(tag).map_err(|r| bad(&r))?;
        }
        if let Some(digest) = digest {
            check_digest(digest).map_err(|r| bad(&r))?;
        }
        Ok(Reference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }

    /// `HOST[:PORT]` as written.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host without the port (IPv6 addresses keep their brackets).
    pub fn host(&self) -> &str {
        split_host_port(&self.registry).0
    }

    /// The port, if one is written.
    pub fn port(&self) -> Option<u16> {
        split_host_port(&self.registry).1
    }

    /// The repository (`team/plugins/auth`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if one is written.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The manifest digest (`sha256:HEX`), if one is written.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// What the manifest is asked for by: the digest if there is one,
    /// else the tag, else `latest`.
    pub fn target(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// Whether the host is a loopback address or `localhost`: the only
    /// hosts plain HTTP (`insecure`) is allowed for by default.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(self.host())
    }

    /// The same reference with a digest: what a tag resolved to.
    pub fn with_digest(&self, digest: &str) -> Result<Self, OciError> {
        check_digest(digest)
            .map_err(|reason| OciError::InvalidReference { input: format!("{self}@{digest}"), reason })?;
        Ok(Reference { digest: Some(digest.to_owned()), ..self.clone() })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// Split `HOST[:PORT]` (IPv6 bracketed). The port must already be valid.
pub(crate) fn split_host_port(registry: &str) -> (&str, Option<u16>) {
    let colon = if registry.starts_with('[') {
        registry.find(']').and_then(|end| registry[end..].find(':').map(|c| end + c))
    } else {
        registry.rfind(':')
    };
    match colon {
        Some(c) => (&registry[..c], registry[c + 1..].parse().ok()),
        None => (registry, None),
    }
}

/// `localhost`, `127.0.0.0/8` or `::1` (brackets optional).
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port_text) = if let Some(rest) = registry.strip_prefix('[') {
        let end = rest.find(']').ok_or("unclosed `[` in the registry host")?;
        let ip = &rest[..end];
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`[{ip}]` is not an IPv6 address"));
        }
        let after = &rest[end + 1..];
        match after.strip_prefix(':') {
            Some(p) => (None, Some(p)),
            None if after.is_empty() => (None, None),
            None => return Err(format!("unexpected `{after}` after the IPv6 address")),
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err("missing registry host".into());
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err(format!("`{host}` is not a valid registry host (DNS name, IPv4 address or [IPv6 address])"));
        }
    }
    if let Some(port) = port_text {
        match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err(format!("`{port}` is not a valid port (1 to 65535)")),
        }
    }
    Ok(())
}

fn check_repository(repository: &str) -> Result<(), String> {
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("repository `{repository}` must be lowercase"));
    }
    for component in repository.split('/') {
        if !valid_component(component) {
            return Err(format!(
                "repository `{repository}` is not valid: each `/`-separated part is lowercase letters and digits, \
                 joined by `.`, `_`, `__` or dashes (got `{component}`)"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !tag.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag `{tag}` is not valid: 1 to {MAX_TAG} of letters, digits, `_`, `.`, `-`, not starting with `.` or `-`"
        ))
    }
}

/// `sha256:` and 64 lowercase hex digits.
pub(crate) fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("digest `{digest}` is not `sha256:HEX`"));
    };
    if algorithm != "sha256" {
        return Err(format!("digest algorithm `{algorithm}` is not supported; only sha256 digests are"));
    }
    if !is_sha256_hex(hex) {
        return Err(format!("digest `{digest}` is not valid: expected 64 lowercase hex digits after `sha256:`"));
    }
    Ok(())
}

/// 64 lowercase hex digits.
pub(crate) fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn ok(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match Reference::parse(s) {
            Ok(r) => panic!("{s} parsed as {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_the_forms_and_prints_them_back() {
        let forms = [
            "oci://ghcr.io/acme/plugins/auth:1.2.0".to_owned(),
            "oci://127.0.0.1:5000/auth".to_owned(),
            "oci://localhost:5000/a.b_c__d---e/f:v1".to_owned(),
            format!("oci://registry.example.com/auth@sha256:{HEX}"),
            format!("oci://registry.example.com:443/team/auth:1.0@sha256:{HEX}"),
            "oci://[::1]:5000/auth:latest".to_owned(),
            "oci://[::1]/auth".to_owned(),
            "oci://Registry.Example.com/auth:Tag_1.x-y".to_owned(),
        ];
        for form in &forms {
            assert_eq!(ok(form).to_string(), *form);
            assert_eq!(form.parse::<Reference>().expect("parse").to_string(), *form);
        }
    }

    #[test]
    fn parts() {
        let r = ok(&format!("oci://127.0.0.1:5000/team/auth:1.0@sha256:{HEX}"));
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.host(), "127.0.0.1");
        assert_eq!(r.port(), Some(5000));
        assert_eq!(r.repository(), "team/auth");
        assert_eq!(r.tag(), Some("1.0"));
        assert_eq!(r.digest(), Some(format!("sha256:{HEX}").as_str()));
        assert_eq!(r.target(), format!("sha256:{HEX}"));
        assert!(r.is_loopback());

        let r = ok("oci://ghcr.io/auth");
        assert_eq!((r.host(), r.port(), r.tag(), r.digest(), r.target()), ("ghcr.io", None, None, None, "latest"));
        assert!(!r.is_loopback());
        assert_eq!(r.with_digest(&format!("sha256:{HEX}")).expect("digest").to_string(), format!("{r}@sha256:{HEX}"));

        let r = ok("oci://[::1]:5000/auth:v");
        assert_eq!((r.host(), r.port(), r.target()), ("[::1]", Some(5000), "v"));
        assert!(r.is_loopback());
        assert!(ok("oci://localhost/a").is_loopback());
        assert!(ok("oci://127.1.2.3/a").is_loopback());
        assert!(!ok("oci://10.0.0.1/a").is_loopback());
        assert!(!ok("oci://localhost.example.com/a").is_loopback());
    }

    #[test]
    fn clear_errors() {
        assert!(err("ghcr.io/acme/auth:1").contains("must start with `oci://`"), "{}", err("ghcr.io/a"));
        assert!(err("oci://ghcr.io").contains("missing repository"));
        assert!(err("oci://ghcr.io/").contains("missing repository"));
        assert!(err("oci://ghcr.io/:tag").contains("missing repository"));
        assert!(err("oci:///auth:1").contains("missing registry host"));
        assert!(err("oci://ghcr.io/Acme/auth:1").contains("must be lowercase"));
        assert!(err("oci://ghcr.io/acme//auth").contains("is not valid"));
        assert!(err("oci://ghcr.io/acme/-auth").contains("is not valid"));
        assert!(err("oci://ghcr.io/acme/a..b").contains("is not valid"));
        assert!(err("oci://ghcr.io/acme/a___b").contains("is not valid"));
        assert!(err("oci://ghcr.io/auth:").contains("tag ``"));
        assert!(err("oci://ghcr.io/auth:.x").contains("tag `.x`"));
        assert!(err("oci://ghcr.io/auth:a/b").contains("is not valid"));
        assert!(err(&format!("oci://ghcr.io/auth:{}", "t".repeat(129))).contains("is not valid"));
        assert!(err("oci://ghcr.io/auth@sha256:abc").contains("64 lowercase hex"));
        assert!(err(&format!("oci://ghcr.io/auth@sha256:{}", HEX.to_uppercase())).contains("64 lowercase hex"));
        assert!(err(&format!("oci://ghcr.io/auth@sha512:{HEX}")).contains("only sha256"));
        assert!(err("oci://ghcr.io/auth@").contains("not `sha256:HEX`"));
        assert!(err("oci://ghcr.io:0/auth").contains("not a valid port"));
        assert!(err("oci://ghcr.io:99999/auth").contains("not a valid port"));
        assert!(err("oci://ghcr.io:+80/auth").contains("not a valid port"));
        assert!(err("oci://gh_cr.io/auth").contains("not a valid registry host"));
        assert!(err("oci://user@ghcr.io/auth").contains("not a valid registry host"));
        assert!(err("oci://[::1/auth").contains("unclosed"));
        assert!(err("oci://[zz]/auth").contains("not an IPv6 address"));
        assert!(err(&format!("oci://h/{}", "a".repeat(300))).contains("longer than 255"));
        // The whole input is quoted in the message.
        assert!(err("oci://ghcr.io/Acme").starts_with("invalid OCI reference `oci://ghcr.io/Acme`: "));
    }
}
