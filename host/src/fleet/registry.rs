//! Service discovery from etcd: an upstream with `discovery = { etcd =
//! "/services/orders" }` takes its targets from the instances registered
//! under that prefix, one key each:
//!
//! ```json
//! {"addr": "10.0.0.5:8080", "weight": 10, "zone": "eu-1"}
//! ```
//!
//! (`weight`, 1 to 1000, defaults to 1; `zone` is informational.) An
//! instance usually writes its key on a lease it keeps alive (`weir
//! register` does this for it), so it leaves the upstream when it stops or
//! is cut off, within the lease's TTL, as well as when its key is deleted.
//! The gateway watches the prefix and swaps the upstream's target set on
//! each change: requests already sent finish on their connections, health
//! checks and outlier ejection apply to the registered targets as to
//! listed ones. With etcd away the last known targets stay.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{GetOptions, WatchOptions};
use serde::{Deserialize, Serialize};

use super::{Access, Location};

/// One registered instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// `host:port` (an IP address, or a name resolved as listed targets are).
    pub addr: String,
    /// Share of requests relative to the other instances (1 to 1000).
    #[serde(default = "one")]
    pub weight: u32,
    /// Where it runs (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

fn one() -> u32 {
    1
}

/// Where an upstream's instances are registered.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    pub(crate) location: Location,
    pub(crate) access: Access,
    /// The key prefix, ending in `/`.
    pub(crate) prefix: String,
}

impl Registry {
    /// `discovery.etcd` as configured: a key prefix on the fleet's own
    /// etcd, or an `etcd://` location of another.
    pub(crate) fn from_config(text: &str, fleet: Option<&(Location, Access)>) -> Result<Self, String> {
        let (location, access, prefix) = if text.starts_with(super::SCHEME) {
            let location = Location::parse(text, false)?;
            let prefix = location.prefix().to_owned();
            (location, Access::default(), prefix)
        } else if text.starts_with('/') && text.len() > 1 {
            let Some((location, access)) = fleet else {
                return Err(format!(
                    "discovery.etcd {text:?} is a key prefix on the fleet's etcd, but this gateway is not in fleet mode: \
                     give etcd://HOST:PORT{text}"
                ));
            };
            (location.clone(), access.clone(), text.trim_end_matches('/').to_owned())
        } else {
            return Err(format!(
                "discovery.etcd {text:?} must be a key prefix (/services/NAME) or etcd://HOST:PORT/PREFIX"
            ));
        };
        Ok(Self { location, access, prefix: format!("{prefix}/") })
    }
}

/// The instances registered now, and the store's revision.
async fn list(client: &mut etcd_client::Client, prefix: &str) -> Result<(Vec<Instance>, i64), String> {
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(prefix, Some(GetOptions::new().with_prefix())))
        .await
        .map_err(|_| format!("listing {prefix}: no answer in 5s"))?
        .map_err(|e| format!("listing {prefix}: {e}"))?;
    let at = resp.header().map_or(0, |h| h.revision());
    let mut out = Vec::new();
    for kv in resp.kvs() {
        match serde_json::from_slice::<Instance>(kv.value()) {
            Ok(i)
                if (1..=1000).contains(&i.weight)
                    && i.addr.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) =>
            {
                out.push(i);
            }
            _ => tracing::warn!(
                key = %String::from_utf8_lossy(kv.key()),
                "registered instance ignored: not {{\"addr\": \"HOST:PORT\", \"weight\": 1-1000, \"zone\": ...}}"
            ),
        }
    }
    out.sort_by(|a, b| a.addr.cmp(&b.addr));
    out.dedup_by(|a, b| a.addr == b.addr);
    Ok((out, at))
}

/// The instances last seen under each prefix, kept across snapshots so a
/// reload with etcd away starts from them.
#[derive(Default)]
pub(crate) struct Known(Mutex<std::collections::HashMap<String, Vec<Instance>>>);

impl Known {
    pub(crate) fn get(&self, prefix: &str) -> Vec<Instance> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(prefix).cloned().unwrap_or_default()
    }

    fn set(&self, prefix: &str, instances: &[Instance]) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(prefix.to_owned(), instances.to_vec());
    }
}

/// Read the instances once, for a snapshot being built: the last known
/// ones when etcd does not answer in time.
pub(crate) async fn initial(registry: &Registry, known: &Known) -> Vec<Instance> {
    let read = async {
        let mut client = super::connect(&registry.location, &registry.access).await?;
        list(&mut client, &registry.prefix).await
    };
    match tokio::time::timeout(Duration::from_secs(3), read).await {
        Ok(Ok((instances, _))) => {
            known.set(&registry.prefix, &instances);
            instances
        }
        Ok(Err(e)) => {
            tracing::warn!(
                prefix = registry.prefix,
                "service registry unavailable, using the last known instances: {e}"
            );
            known.get(&registry.prefix)
        }
        Err(_) => {
            tracing::warn!(prefix = registry.prefix, "service registry slow to answer, using the last known instances");
            known.get(&registry.prefix)
        }
    }
}

/// Watch `registry` for as long as `upstream` (the upstream being fed)
/// lives, calling `apply` with the instances after each change.
pub(crate) fn watch<T: Send + Sync + 'static>(
    upstream: Weak<T>,
    registry: Registry,
    known: Arc<Known>,
    apply: impl Fn(Arc<T>, Vec<Instance>) -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static,
) {
    tokio::spawn(async move {
        let mut backoff = super::Backoff::new();
        while upstream.strong_count() > 0 {
            let why = watch_once(&upstream, &registry, &known, &apply, &mut backoff).await;
            let Some(why) = why else { return };
            tracing::warn!(prefix = registry.prefix, retry_in = ?backoff.pause(), "service registry watch lost: {why}; keeping the last known instances");
            backoff.wait().await;
        }
    });
}

/// One connection's watch: `None` when the upstream is gone, else why it
/// ended.
async fn watch_once<T>(
    upstream: &Weak<T>,
    registry: &Registry,
    known: &Known,
    apply: &(impl Fn(Arc<T>, Vec<Instance>) -> futures::future::BoxFuture<'static, ()> + Send + Sync),
    backoff: &mut super::Backoff,
) -> Option<String> {
    let mut client = match super::connect(&registry.location, &registry.access).await {
        Ok(c) => c,
        Err(e) => return Some(e),
    };
    let refresh = async |client: &mut etcd_client::Client| -> Result<i64, String> {
        let (instances, at) = list(client, &registry.prefix).await?;
        known.set(&registry.prefix, &instances);
        if let Some(up) = upstream.upgrade() {
            apply(up, instances).await;
        }
        Ok(at)
    };
    let at = match refresh(&mut client).await {
        Ok(at) => at,
        Err(e) => return Some(e),
    };
    let options = WatchOptions::new().with_prefix().with_start_revision(at + 1);
    let mut stream = match client.watch(registry.prefix.as_str(), Some(options)).await {
        Ok(s) => s,
        Err(e) => return Some(format!("watching {}: {e}", registry.prefix)),
    };
    backoff.reset();
    let mut alive = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(m)) if m.canceled() => return Some(format!("the watch was cancelled ({})", m.cancel_reason())),
                Ok(Some(m)) if m.events().is_empty() => {}
                Ok(Some(_)) => {
                    // Read the whole list again: simple, and right however
                    // the events were batched.
                    if let Err(e) = refresh(&mut client).await {
                        return Some(e);
                    }
                }
                Ok(None) => return Some("the watch stream ended".into()),
                Err(e) => return Some(format!("watching {}: {e}", registry.prefix)),
            },
            _ = alive.tick() => {
                if upstream.strong_count() == 0 {
                    return None;
                }
            }
        }
    }
}

/// `weir register`: keep `instance` registered under `location`'s prefix
/// on a lease of `ttl` seconds until `stop` resolves, then revoke the lease
/// (the instance leaves at once). Reconnects and re-registers when etcd
/// was away.
pub async fn register(
    location: &str,
    access: &Access,
    id: &str,
    instance: &Instance,
    ttl: i64,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let location = Location::parse(location, access.tls())?;
    let key = format!("{}/{id}", location.prefix());
    let value = serde_json::to_string(instance).map_err(|e| e.to_string())?;
    let mut stop = std::pin::pin!(stop);
    let mut backoff = super::Backoff::new();
    loop {
        let held = async {
            let mut client = super::connect(&location, access).await?;
            let lease = client.lease_grant(ttl, None).await.map_err(|e| format!("lease: {e}"))?.id();
            client
                .put(key.as_str(), value.as_str(), Some(etcd_client::PutOptions::new().with_lease(lease)))
                .await
                .map_err(|e| format!("writing {key}: {e}"))?;
            tracing::info!(key, ttl, "registered");
            backoff.reset();
            let (mut keeper, mut answers) =
                client.lease_keep_alive(lease).await.map_err(|e| format!("keep-alive: {e}"))?;
            let every = Duration::from_secs((ttl as u64 / 3).max(1));
            loop {
                tokio::time::sleep(every).await;
                keeper.keep_alive().await.map_err(|e| format!("keep-alive: {e}"))?;
                match answers.message().await {
                    Ok(Some(a)) if a.ttl() > 0 => {}
                    Ok(_) => return Err::<(), String>("the lease expired".into()),
                    Err(e) => return Err(format!("keep-alive: {e}")),
                }
            }
        };
        let (stopped, result) = tokio::select! {
            r = held => (false, Some(r)),
            () = &mut stop => (true, None),
        };
        if stopped {
            // Leave at once rather than at the lease's end.
            if let Ok(mut client) = super::connect(&location, access).await {
                let _ = client.delete(key.as_str(), None).await;
            }
            tracing::info!(key, "deregistered");
            return Ok(());
        }
        if let Some(Err(e)) = result {
            tracing::warn!(key, retry_in = ?backoff.pause(), "registration lost: {e}");
        }
        backoff.wait().await;
    }
}
