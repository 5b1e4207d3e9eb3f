//! Building an upstream from its config, and keeping its targets current:
//! host names re-resolved every `dns_refresh`, a `targets_file` re-read
//! when it changes. A change swaps the target set; requests already sent
//! finish on their connections, and connections to removed targets close
//! once idle.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::uri::Authority;
use serde::Deserialize;
use toml::Spanned;

use super::balance::HashOn;
use super::balance::{Group, TargetSet};
use super::breaker::Breaker;
use super::metrics::UpstreamFamilies;
use super::target::{Target, TargetRegistry};
use super::{PoolCache, TargetError, Upstream, connector, health, parse_target};
use crate::observe::live::Live;
use weir_config::files;
use weir_config::{Balance, DnsFamily, LoadError, Source, TargetConfig, UpstreamConfig};

/// Time allowed to resolve the names of one upstream.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a `targets_file` is looked at.
const FILE_POLL: Duration = Duration::from_secs(1);
/// Largest weight.
const MAX_WEIGHT: u32 = 1000;

/// What upstreams share across snapshots: target states, breakers (while
/// their settings stay the same) and connection pools.
#[derive(Default)]
pub(crate) struct Upstreams {
    registry: Arc<TargetRegistry>,
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    pools: PoolCache,
    /// The fleet's etcd, in fleet mode (for `discovery = { etcd = "/…" }`).
    fleet: Option<(crate::fleet::Location, crate::fleet::Access)>,
    /// The instances last seen in each service registry.
    known: Arc<crate::fleet::registry::Known>,
}

/// The targets an upstream is given, before names are resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    /// Primary targets.
    #[serde(default)]
    pub(crate) targets: Vec<TargetConfig>,
    /// Backup targets.
    #[serde(default)]
    pub(crate) backup: Vec<TargetConfig>,
}

impl Upstreams {
    /// In fleet mode: the etcd that `discovery` key prefixes are on.
    pub(crate) fn set_fleet(&mut self, location: crate::fleet::Location, access: crate::fleet::Access) {
        self.fleet = Some((location, access));
    }

    /// Build the upstream `name` of `src`, or say what is wrong with it.
    pub(crate) async fn build(
        &self,
        name: &str,
        cfg: &Spanned<UpstreamConfig>,
        src: &Source,
        metrics: &UpstreamFamilies,
        live: &Live,
        limits: &weir_config::LimitsConfig,
    ) -> Result<Arc<Upstream>, Vec<LoadError>> {
        let span = cfg.span();
        let cfg = cfg.get_ref();
        let mut errors = Vec::new();
        let mut err =
            |at: std::ops::Range<usize>, msg: String| errors.push(src.error(at, format!("upstream `{name}`: {msg}")));

        // Targets: listed, or from a file.
        let listed = !cfg.targets.is_empty() || !cfg.backup.is_empty();
        let mut file = None;
        // Or from a service registry.
        let discovery = match &cfg.discovery {
            None => None,
            Some(d) if listed || cfg.targets_file.is_some() => {
                err(d.span(), "`discovery` replaces `targets`, `backup` and `targets_file`: give one of them".into());
                None
            }
            Some(d) => match crate::fleet::registry::Registry::from_config(&d.get_ref().etcd, self.fleet.as_ref()) {
                Ok(r) => Some(r),
                Err(e) => {
                    err(d.span(), e);
                    None
                }
            },
        };
        let spec = match &cfg.targets_file {
            _ if cfg.discovery.is_some() => match &discovery {
                Some(r) => instances_spec(&crate::fleet::registry::initial(r, &self.known).await),
                None => Spec::default(),
            },
            Some(f) if listed => {
                err(f.span(), "`targets_file` replaces `targets` and `backup`: give one or the other".into());
                Spec::default()
            }
            Some(f) => {
                let path = src.base_dir().join(f.get_ref());
                match read_file(&path) {
                    Ok(spec) => {
                        file = Some(path);
                        spec
                    }
                    Err(e) => {
                        err(f.span(), e.to_string());
                        Spec::default()
                    }
                }
            }
            None => Spec {
                targets: cfg.targets.iter().map(|t| t.get_ref().clone()).collect(),
                backup: cfg.backup.iter().map(|t| t.get_ref().clone()).collect(),
            },
        };
        if spec.targets.is_empty() && cfg.targets_file.is_none() && cfg.discovery.is_none() {
            err(span.clone(), "no targets".into());
        }
        for t in cfg.targets.iter().chain(&cfg.backup) {
            if let Err(e) = check_target(t.get_ref()) {
                err(t.span(), e.to_string());
            }
        }
        let hash_on = match (&cfg.hash_on, cfg.balance) {
            (Some(h), Balance::Hash) => HashOn::parse(h.get_ref()).unwrap_or_else(|e| {
                err(h.span(), e.to_string());
                HashOn::ClientIp
            }),
            (Some(h), _) => {
                err(h.span(), "`hash_on` needs `balance = \"hash\"`".into());
                HashOn::ClientIp
            }
            (None, _) => HashOn::ClientIp,
        };
        let r = &cfg.retry;
        if !(1..=10).contains(&r.tries) {
            err(span.clone(), format!("retry.tries must be 1 to 10, not {}", r.tries));
        }
        if !(0.0..=1.0).contains(&r.budget) {
            err(span.clone(), format!("retry.budget must be a share from 0 to 1, not {}", r.budget));
        }
        if let Some(rate) = cfg.breaker.error_rate
            && !(rate > 0.0 && rate <= 1.0)
        {
            err(span.clone(), format!("breaker.error_rate must be above 0 and at most 1, not {rate}"));
        }
        if cfg.breaker.window.as_millis() < 10 {
            err(span.clone(), "breaker.window must be at least 10ms".into());
        }
        if let Some(h) = &cfg.health {
            let hc = h.get_ref();
            if !hc.path.starts_with('/') {
                err(h.span(), format!("health.path {:?} must start with `/`", hc.path));
            }
            if hc.interval.is_zero() || hc.timeout.is_zero() {
                err(h.span(), "health.interval and health.timeout must be above zero".into());
            }
            if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
                err(h.span(), "health thresholds must be at least 1".into());
            }
        }
        if cfg.outlier.consecutive_failures == 0 || cfg.outlier.max_ejected_percent > 100 {
            err(
                span.clone(),
                "outlier.consecutive_failures must be at least 1, max_ejected_percent at most 100".into(),
            );
        }
        if cfg.timeout.is_zero() {
            err(span.clone(), "timeout must be above zero".into());
        }
        if cfg.pool.idle_timeout.is_zero() {
            err(
                span.clone(),
                "pool.idle_timeout must be above zero (pool.max_idle = 0 keeps no idle connection)".into(),
            );
        }
        if cfg.pool.max_age.is_some_and(|a| a.is_zero()) {
            err(span.clone(), "pool.max_age must be above zero".into());
        }
        let tls = match cfg.tls.as_ref().map(|t| (t.span(), t.get_ref().settings())) {
            Some((at, Some(settings))) => {
                // The SNI default: the first target's host name, if it is one.
                let first = spec.targets.first().map(|t| t.address()).filter(|a| is_name(a));
                let host = first.and_then(|a| parse_target(a).ok()).map(|a| a.host().to_owned());
                match connector::TlsClient::build(&settings, cfg.protocol, &src.base_dir(), host.as_deref()) {
                    Ok(client) => Some(client),
                    Err(e) => {
                        err(at, format!("tls: {e}"));
                        None
                    }
                }
            }
            _ => None,
        };
        if !errors.is_empty() {
            return Err(errors);
        }

        let up_metrics = metrics.upstream(name, live.upstream(name));
        let breaker = {
            let mut map = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(name) {
                Some(b) if b.config == cfg.breaker => b.clone(),
                _ => {
                    let b = Arc::new(Breaker::new(
                        cfg.breaker.clone(),
                        up_metrics.breaker_state.clone(),
                        up_metrics.breaker_opened.clone(),
                    ));
                    up_metrics.breaker_state.set(0);
                    map.insert(name.to_owned(), b.clone());
                    b
                }
            }
        };
        let (resolved, _) = resolve(&spec, cfg.dns_family).await;
        let set = make_set(name, &resolved, cfg.balance, &self.registry, metrics);
        let upstream = Arc::new(Upstream {
            name: name.into(),
            max_response_head: limits.max_response_header_bytes,
            targets: ArcSwap::from_pointee(set),
            policy: cfg.balance,
            hash_on,
            timeout: cfg.timeout,
            total_timeout: cfg.total_timeout,
            retry: cfg.retry.clone(),
            outlier: cfg.outlier.clone(),
            health: cfg.health.as_ref().map(|h| h.get_ref().clone()),
            breaker,
            active: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            scheme: if tls.is_some() { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP },
            protocol: cfg.protocol,
            pool: self.pools.get(cfg.connect_timeout, cfg.breaker.max_connections.max(1), cfg.protocol, tls, &cfg.pool),
            metrics: up_metrics,
        });
        upstream.refresh_gauges();
        let has_names = spec.targets.iter().chain(&spec.backup).any(|t| is_name(t.address()));
        let watch = Watch {
            upstream: Arc::downgrade(&upstream),
            spec,
            stamp: file.as_deref().and_then(stamp),
            file,
            has_names,
            dns_refresh: cfg.dns_refresh,
            family: cfg.dns_family,
            policy: cfg.balance,
            registry: self.registry.clone(),
            metrics: metrics.clone(),
        };
        tokio::spawn(watch.run());
        if let Some(registry) = discovery {
            let (policy, family, targets, families) =
                (cfg.balance, cfg.dns_family, self.registry.clone(), metrics.clone());
            let apply = move |up: Arc<Upstream>, instances: Vec<crate::fleet::registry::Instance>| {
                let (targets, families) = (targets.clone(), families.clone());
                let fut: futures::future::BoxFuture<'static, ()> = Box::pin(async move {
                    let (resolved, _) = resolve(&instances_spec(&instances), family).await;
                    let set = make_set(&up.name, &resolved, policy, &targets, &families);
                    if set.addresses() != up.targets.load().addresses() {
                        tracing::info!(upstream = %up.name, targets = ?set.addresses()[0], "registered targets changed");
                        up.targets.store(Arc::new(set));
                        up.refresh_gauges();
                    }
                });
                fut
            };
            crate::fleet::registry::watch(Arc::downgrade(&upstream), registry, self.known.clone(), apply);
        }
        Ok(upstream)
    }
}

/// The targets of registered `instances`.
fn instances_spec(instances: &[crate::fleet::registry::Instance]) -> Spec {
    let targets = instances
        .iter()
        .map(|i| TargetConfig::Weighted { address: i.addr.clone(), weight: i.weight.clamp(1, MAX_WEIGHT) })
        .collect();
    Spec { targets, backup: Vec::new() }
}

/// A target's address and weight, as written.
fn check_target(t: &TargetConfig) -> Result<(), TargetError> {
    parse_target(t.address())?;
    if !(1..=MAX_WEIGHT).contains(&t.weight()) {
        return Err(TargetError::Weight { target: t.address().to_owned(), weight: t.weight(), max: MAX_WEIGHT });
    }
    Ok(())
}

fn is_name(addr: &str) -> bool {
    match parse_target(addr) {
        Ok(a) => a.host().trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_err(),
        Err(_) => false,
    }
}

/// Read a targets file: JSON, or TOML when it ends in `.toml`. Errors name
/// the file and line.
pub(crate) fn read_file(path: &Path) -> Result<Spec, TargetsFileError> {
    let file = || path.to_owned();
    let text = files::read_text(path, files::MAX_SMALL_FILE)
        .map_err(|e| TargetsFileError::Read { file: file(), source: e })?;
    let spec: Spec = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| {
            let line = e.span().map_or(0, |s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            TargetsFileError::Syntax { file: file(), line, message: e.message().trim_end().to_owned() }
        })?
    } else {
        serde_json::from_str(&text).map_err(|e| TargetsFileError::Syntax {
            file: file(),
            line: e.line(),
            message: e.to_string(),
        })?
    };
    if spec.targets.is_empty() {
        return Err(TargetsFileError::NoTargets { file: file() });
    }
    for t in spec.targets.iter().chain(&spec.backup) {
        check_target(t).map_err(|problem| TargetsFileError::Target { file: file(), problem })?;
    }
    Ok(spec)
}

/// Why a targets file cannot be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TargetsFileError {
    /// It cannot be read (or is not a regular file, or too large).
    #[error("{}: {source}", .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: weir_config::files::FileError,
    },
    /// It does not parse, at `line`.
    #[error("{}:{line}: {message}", .file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The line.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// It lists no primary target.
    #[error("{}: no targets", .file.display())]
    NoTargets {
        /// The file.
        file: PathBuf,
    },
    /// A target it lists is not valid.
    #[error("{}: {problem}", .file.display())]
    Target {
        /// The file.
        file: PathBuf,
        /// What is wrong with the target.
        problem: TargetError,
    },
}

/// Addresses and weights, primaries and backups, names resolved.
type Resolved = (Vec<(Authority, u32)>, Vec<(Authority, u32)>);

/// Resolve every name; the flag is false when some lookup failed.
async fn resolve(spec: &Spec, family: DnsFamily) -> (Resolved, bool) {
    let complete = std::sync::atomic::AtomicBool::new(true);
    let list = async |targets: &[TargetConfig]| -> Vec<(Authority, u32)> {
        let mut out: Vec<(Authority, u32)> = Vec::new();
        for t in targets {
            let Ok(addr) = parse_target(t.address()) else { continue };
            if !is_name(t.address()) {
                out.push((addr, t.weight()));
                continue;
            }
            match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host(t.address())).await {
                Ok(Ok(addrs)) => {
                    let mut found: Vec<SocketAddr> = addrs
                        .filter(|a| match family {
                            DnsFamily::Any => true,
                            DnsFamily::Ipv4 => a.is_ipv4(),
                            DnsFamily::Ipv6 => a.is_ipv6(),
                        })
                        .collect();
                    found.sort();
                    found.dedup();
                    if found.is_empty() {
                        tracing::warn!(name = t.address(), "DNS name has no address of the wanted family");
                    }
                    for a in found {
                        if let Ok(auth) = a.to_string().parse::<Authority>()
                            && !out.iter().any(|(x, _)| *x == auth)
                        {
                            out.push((auth, t.weight()));
                        }
                    }
                }
                Ok(Err(e)) => {
                    complete.store(false, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(name = t.address(), "cannot resolve target: {e}");
                }
                Err(_) => {
                    complete.store(false, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(name = t.address(), "resolving the target took over {DNS_TIMEOUT:?}");
                }
            }
        }
        out
    };
    let resolved = (list(&spec.targets).await, list(&spec.backup).await);
    (resolved, complete.into_inner())
}

fn make_set(
    upstream: &str,
    resolved: &Resolved,
    policy: Balance,
    registry: &TargetRegistry,
    m: &UpstreamFamilies,
) -> TargetSet {
    let group = |list: &[(Authority, u32)], backup: bool| {
        let targets = list
            .iter()
            .map(|(addr, weight)| {
                Arc::new(Target {
                    addr: addr.clone(),
                    weight: *weight,
                    backup,
                    state: registry.state(upstream, addr.as_str()),
                    metrics: m.target(upstream, addr.as_str()),
                    endpoint: std::sync::OnceLock::new(),
                })
            })
            .collect();
        Group::new(targets, policy)
    };
    TargetSet { primary: group(&resolved.0, false), backup: group(&resolved.1, true) }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// An upstream's background work, for as long as a snapshot holds it:
/// active health checks, gauges, DNS and the targets file.
struct Watch {
    upstream: Weak<Upstream>,
    spec: Spec,
    file: Option<PathBuf>,
    stamp: Option<(SystemTime, u64)>,
    has_names: bool,
    dns_refresh: Duration,
    family: DnsFamily,
    policy: Balance,
    registry: Arc<TargetRegistry>,
    metrics: UpstreamFamilies,
}

impl Watch {
    async fn run(mut self) {
        let tick = {
            let Some(up) = self.upstream.upgrade() else { return };
            up.health.as_ref().map_or(FILE_POLL, |h| h.interval.min(FILE_POLL))
        };
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_dns = Instant::now() + self.dns_refresh;
        let mut next_file = Instant::now() + FILE_POLL;
        loop {
            ticker.tick().await;
            let Some(up) = self.upstream.upgrade() else { return };
            up.refresh_gauges();
            if up.health.is_some() {
                health::check_due(&up).await;
            }
            let mut changed = false;
            let mut file_changed = false;
            if let Some(file) = &self.file
                && Instant::now() >= next_file
            {
                next_file = Instant::now() + FILE_POLL;
                let now = stamp(file);
                if now != self.stamp {
                    self.stamp = now;
                    match read_file(file) {
                        Ok(spec) if spec != self.spec => {
                            tracing::info!(upstream = %up.name, file = %file.display(), "targets file changed");
                            self.has_names = spec.targets.iter().chain(&spec.backup).any(|t| is_name(t.address()));
                            self.spec = spec;
                            changed = true;
                            file_changed = true;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(upstream = %up.name, "targets file rejected, keeping the last good targets: {e}")
                        }
                    }
                }
            }
            if self.has_names && Instant::now() >= next_dns {
                next_dns = Instant::now() + self.dns_refresh;
                changed = true;
            }
            if changed {
                let (resolved, complete) = resolve(&self.spec, self.family).await;
                // A failed lookup on a timed refresh keeps the targets the
                // name had: a DNS hiccup must not empty the upstream.
                if !complete && !file_changed {
                    continue;
                }
                let set = make_set(&up.name, &resolved, self.policy, &self.registry, &self.metrics);
                if set.addresses() != up.targets.load().addresses() {
                    tracing::info!(upstream = %up.name, targets = ?set.addresses()[0], "targets changed");
                    up.targets.store(Arc::new(set));
                    up.refresh_gauges();
                }
            }
        }
    }
}
