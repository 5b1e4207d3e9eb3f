//! Fleet mode: the configuration kept in etcd v3 and watched by every
//! gateway of the fleet, instead of a file on each host.
//!
//! `weir run --config etcd://HOST:PORT[,HOST:PORT…]/PREFIX` reads the
//! configuration from the key `PREFIX/config`: one TOML document, exactly
//! the text a `gateway.toml` holds. It is validated and published like a
//! file (same snapshot build, same errors, naming the key and its line),
//! and watched: a change reaches each node as etcd streams it, a bad one is
//! rejected by each node while it keeps serving.
//!
//! **One document, not a key per route** (as APISIX keeps its routes): a
//! configuration is checked whole (a route names an upstream and plugins
//! that must exist), so it is stored, pushed and published whole, and a
//! push is one atomic write conditioned on the revision it was pulled at.
//! The price is that two operators editing different routes conflict; the
//! condition makes that explicit (the second push is refused) instead of
//! letting one overwrite the other. etcd's value limit (1.5 MiB by default)
//! is far above a gateway's configuration; modules never go in etcd (they
//! come from the plugins folder or an OCI registry pinned by digest).
//!
//! What is node-local stays out of the shared document: `--listen`,
//! `--admin-listen`, `--plugins-dir` and `--state-dir` override it on each
//! node, and relative paths resolve against the node's working directory.
//!
//! This module is the etcd side, below the rest of the gateway: locations,
//! connecting, reading, the conditional push, the pull, and [`registry`]
//! (service instances registered in etcd). What a running gateway does
//! with them lives where it belongs: the configuration's watch and the
//! node's record in the member list in `snapshot` (`etcd`, `members`),
//! the registered targets in `upstream::discovery`.

pub mod registry;

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};

/// The scheme of an etcd location.
pub const SCHEME: &str = "etcd://";

/// How long connecting, and each request, may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The pauses between attempts to reach etcd again (the configuration's
/// watch, the member record, the service registry, `weir register`):
/// 250 ms, doubling to 2 s, back to 250 ms once connected.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const LONGEST: Duration = Duration::from_secs(2);

    pub(crate) fn new() -> Self {
        Self(Self::FIRST)
    }

    /// The pause the next [`Backoff::wait`] takes.
    pub(crate) fn pause(&self) -> Duration {
        self.0
    }

    /// Connected again: the next pause is the first one.
    pub(crate) fn reset(&mut self) {
        self.0 = Self::FIRST;
    }

    /// Pause, and double the next pause.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::LONGEST);
    }
}

/// The comment `weir config pull` ends a file with: the revision it was
/// pulled at, which `weir config push` makes its write conditional on.
const REVISION_MARK: &str = "# weir-etcd-revision = ";

/// Where a fleet's configuration lives: `etcd://HOST:PORT[,HOST:PORT]/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// `http://HOST:PORT` (or `https://` with TLS), one per member.
    endpoints: Vec<String>,
    /// The key prefix, without a trailing `/`: `/weir/prod`.
    prefix: String,
    /// Whether the endpoints are spoken to over TLS.
    tls: bool,
}

impl Location {
    /// Parse an `etcd://` location; `tls` makes the endpoints `https://`.
    pub fn parse(text: &str, tls: bool) -> Result<Self, String> {
        let rest = text.strip_prefix(SCHEME).ok_or_else(|| format!("{text:?} does not start with {SCHEME}"))?;
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return Err(format!("{text}: give a key prefix after the hosts, e.g. {SCHEME}127.0.0.1:2379/weir"));
        }
        if prefix.contains("//") || prefix.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!("{text}: {prefix:?} is not a key prefix"));
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let ok = host.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(format!("{text}: {host:?} is not HOST:PORT"));
            }
            endpoints.push(format!("{}://{host}", if tls { "https" } else { "http" }));
        }
        Ok(Self { endpoints, prefix: format!("/{}", prefix.trim_start_matches('/')), tls })
    }

    /// The key of the configuration document.
    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// The key prefix, e.g. `/weir/prod`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The endpoints, as URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// What errors about the configuration name as its file:
    /// `etcd://HOST:PORT/PREFIX/config`.
    pub fn source_path(&self) -> PathBuf {
        let hosts: Vec<&str> =
            self.endpoints.iter().map(|e| e.split_once("://").map_or(e.as_str(), |(_, h)| h)).collect();
        PathBuf::from(format!("{SCHEME}{}{}", hosts.join(","), self.config_key()))
    }
}

/// How to authenticate to etcd, and over what.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// User name (etcd's own auth).
    pub username: Option<String>,
    /// The environment variable holding the password.
    pub password_env: Option<String>,
    /// A CA certificate (PEM): the endpoints are spoken to over TLS,
    /// verified against it.
    pub ca: Option<PathBuf>,
    /// A client certificate and key (PEM), for etcd's client-certificate
    /// auth.
    pub cert: Option<PathBuf>,
    /// The client certificate's key.
    pub key: Option<PathBuf>,
}

impl Access {
    /// Whether the endpoints are spoken to over TLS.
    pub fn tls(&self) -> bool {
        self.ca.is_some()
    }

    /// The client's connect options: auth, TLS, timeouts.
    fn options(&self) -> Result<ConnectOptions, String> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        match (&self.username, &self.password_env) {
            (Some(user), Some(var)) => {
                let password = std::env::var(var)
                    .map_err(|_| format!("the environment variable {var} (the etcd password) is not set"))?;
                options = options.with_user(user.clone(), password);
            }
            (Some(_), None) => return Err("an etcd user name needs --etcd-password-env".into()),
            (None, Some(_)) => return Err("--etcd-password-env needs --etcd-username".into()),
            (None, None) => {}
        }
        if let Some(ca) = &self.ca {
            let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
            let mut tls = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
                }
                (None, None) => {}
                _ => return Err("an etcd client certificate needs both --etcd-cert and --etcd-key".into()),
            }
            options = options.with_tls(tls);
        }
        Ok(options)
    }
}

/// Connect to the fleet's etcd.
pub(crate) async fn connect(location: &Location, access: &Access) -> Result<Client, String> {
    let options = access.options()?;
    let connecting = Client::connect(location.endpoints(), Some(options));
    match tokio::time::timeout(REQUEST_TIMEOUT * 2, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!("cannot reach etcd at {}: {e}", location.endpoints().join(","))),
        Err(_) => Err(format!(
            "cannot reach etcd at {}: no answer in {:?}",
            location.endpoints().join(","),
            REQUEST_TIMEOUT * 2
        )),
    }
}

/// The configuration document as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The TOML text.
    pub(crate) text: String,
    /// The revision it was last written at (`mod_revision`).
    pub(crate) revision: i64,
}

/// The configuration document, or `None` when nothing was pushed yet;
/// with the store's revision at the time of reading.
pub(crate) async fn read(client: &mut Client, location: &Location) -> Result<(Option<Stored>, i64), String> {
    let key = location.config_key();
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.get(key.as_str(), None))
        .await
        .map_err(|_| format!("reading {key} from etcd: no answer in {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| format!("reading {key} from etcd: {e}"))?;
    let at = resp.header().map_or(0, |h| h.revision());
    let Some(kv) = resp.kvs().first() else { return Ok((None, at)) };
    let text = String::from_utf8(kv.value().to_vec()).map_err(|_| format!("{key} in etcd is not UTF-8 text"))?;
    Ok((Some(Stored { text, revision: kv.mod_revision() }), at))
}

/// What a push is conditioned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The document is still at this revision (the one it was pulled at).
    Revision(i64),
    /// There is no document yet.
    Absent,
    /// Nothing: overwrite whatever is there.
    Anything,
}

/// Why a push was refused.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The document changed since it was pulled (or exists when none was
    /// expected).
    #[error(
        "refused: the configuration in etcd is at revision {current}, {expected}: someone pushed since. \
         `weir config pull` it, merge your change, and push again (or --force to overwrite)"
    )]
    Conflict {
        /// What the push expected, as a phrase.
        expected: String,
        /// Where the document is now (0: absent).
        current: i64,
    },
    /// The file does not load (as `weir check` reports it).
    #[error("refused: {0}")]
    Invalid(String),
    /// etcd could not be reached or refused the write.
    #[error("{0}")]
    Store(String),
}

/// Write `text` as the configuration document if `expect` holds, in one
/// transaction. Returns the new revision.
pub(crate) async fn write(
    client: &mut Client,
    location: &Location,
    text: &str,
    expect: Expect,
) -> Result<i64, PushError> {
    let key = location.config_key();
    let put = TxnOp::put(key.as_str(), text, None);
    let txn = match expect {
        Expect::Revision(r) => Txn::new().when([Compare::mod_revision(key.as_str(), CompareOp::Equal, r)]),
        Expect::Absent => Txn::new().when([Compare::version(key.as_str(), CompareOp::Equal, 0)]),
        Expect::Anything => Txn::new(),
    }
    .and_then([put])
    .or_else([TxnOp::get(key.as_str(), None)]);
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.txn(txn))
        .await
        .map_err(|_| PushError::Store(format!("writing {key} to etcd: no answer in {REQUEST_TIMEOUT:?}")))?
        .map_err(|e| PushError::Store(format!("writing {key} to etcd: {e}")))?;
    if resp.succeeded() {
        return Ok(resp.header().map_or(0, |h| h.revision()));
    }
    let current = resp
        .op_responses()
        .into_iter()
        .find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => Some(g.kvs().first().map_or(0, |kv| kv.mod_revision())),
            _ => None,
        })
        .unwrap_or(0);
    let expected = match expect {
        Expect::Revision(r) => format!("not {r} as when it was pulled"),
        _ => "and this push expected none there (pull it first)".to_owned(),
    };
    Err(PushError::Conflict { expected, current })
}

/// The revision a pulled file was pulled at (its last line), and its text
/// without that line.
pub fn split_revision(text: &str) -> (Option<i64>, String) {
    let trimmed = text.trim_end_matches(['\n', '\r']);
    let (body, last) = trimmed.rsplit_once('\n').unwrap_or(("", trimmed));
    match last.strip_prefix(REVISION_MARK).and_then(|r| r.split_whitespace().next()).and_then(|r| r.parse().ok()) {
        Some(rev) => (Some(rev), format!("{body}\n")),
        None => (None, text.to_owned()),
    }
}

/// `text` with its revision line, as `weir config pull` writes it.
pub fn with_revision(text: &str, revision: i64) -> String {
    let mut out = text.trim_end_matches(['\n', '\r']).to_owned();
    out.push_str(&format!(
        "\n{REVISION_MARK}{revision}  (written by `weir config pull`; `weir config push` checks it)\n"
    ));
    out
}

/// `weir config push`: check `file` as `weir check` would, then write it to
/// `location` in one transaction conditioned on the revision it was pulled
/// at (its last line, from `weir config pull`), or on there being no
/// configuration yet. Returns the new revision.
pub async fn push(file: &Path, location: &str, access: &Access, force: bool) -> Result<i64, PushError> {
    let location = Location::parse(location, access.tls()).map_err(PushError::Store)?;
    let text = weir_config::files::read_text(file, weir_config::files::MAX_CONFIG_SIZE)
        .map_err(|e| PushError::Invalid(format!("{}: {e}", file.display())))?;
    crate::Gateway::load(file).await.map_err(|e| PushError::Invalid(e.to_string()))?;
    let (pulled_at, text) = split_revision(&text);
    let expect = match (force, pulled_at) {
        (true, _) => Expect::Anything,
        (false, Some(r)) => Expect::Revision(r),
        (false, None) => Expect::Absent,
    };
    let mut client = connect(&location, access).await.map_err(PushError::Store)?;
    write(&mut client, &location, &text, expect).await
}

/// `weir config pull`: the configuration in `location`, with its revision
/// line (for a later `weir config push`).
pub async fn pull(location: &str, access: &Access) -> Result<String, String> {
    let location = Location::parse(location, access.tls())?;
    let mut client = connect(&location, access).await?;
    match read(&mut client, &location).await? {
        (Some(stored), _) => Ok(with_revision(&stored.text, stored.revision)),
        (None, _) => Err(format!(
            "there is no configuration at {}: push one with `weir config push`",
            location.source_path().display()
        )),
    }
}

#[cfg(test)]
mod tests;
