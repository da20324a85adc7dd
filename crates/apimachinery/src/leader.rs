//! Leader election through a `coordination.k8s.io/v1` Lease, as upstream's
//! `leaderelection` package: the holder renews `renewTime` every few seconds; another
//! candidate takes the Lease over once it has not been renewed for
//! `leaseDurationSeconds`. Writes carry the resourceVersion read, so of two candidates
//! racing for an expired Lease only one wins.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    /// Name of the Lease, e.g. `korvet-scheduler`.
    pub name: String,
    /// This candidate's `holderIdentity`; unique per replica.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl LeaderConfig {
    /// A lease in `kube-system` of 10 s, renewed every 2 s. Upstream's lease is 15 s; a
    /// shorter one lets another replica take over within 15 s of a leader's death (it
    /// must first see the record unchanged for a whole lease duration).
    pub fn new(name: &str, identity: &str) -> Self {
        Self {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
        }
    }
}

/// A unique identity for this process: host name plus a random suffix, as upstream's.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "korvet".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{host}_{:08x}{:08x}", std::process::id(), nanos)
}

/// Whether this candidate leads, and the task that keeps it so; aborting the task (or
/// dropping `LeaderElection`) stops renewing, and another candidate takes over once the
/// Lease expires.
pub struct LeaderElection {
    pub is_leader: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    leases: Api<Lease>,
    config: LeaderConfig,
}

impl LeaderElection {
    /// Stops campaigning and, if this candidate holds the Lease, hands it back (empty
    /// holder), so that another replica — or this process restarted — takes over at once
    /// instead of after a lease duration (upstream's `ReleaseOnCancel`).
    pub async fn release(&self) {
        self.task.abort();
        let Ok(Some(mut lease)) = self.leases.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        if let Err(e) = self
            .leases
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            tracing::debug!(lease = %self.config.name, error = %e, "releasing the lease");
        }
    }
}

impl Drop for LeaderElection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts campaigning for the Lease of `config`.
pub fn spawn(client: kube::Client, config: LeaderConfig) -> LeaderElection {
    let (tx, rx) = watch::channel(false);
    let leases = Api::namespaced(client.clone(), &config.namespace);
    let task = tokio::spawn(campaign(client, config.clone(), tx));
    LeaderElection {
        is_leader: rx,
        task,
        leases,
        config,
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// What the candidate last saw of another holder's record, and when (local clock):
/// expiry is judged by how long the record stayed unchanged, not by comparing clocks.
struct Observed {
    holder: Option<String>,
    renew: Option<MicroTime>,
    since: Instant,
}

async fn campaign(client: kube::Client, config: LeaderConfig, tx: watch::Sender<bool>) {
    let leases: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut observed: Option<Observed> = None;
    let mut last_renewed: Option<Instant> = None;
    loop {
        let leading = match try_acquire_or_renew(&leases, &config, &mut observed).await {
            Ok(leading) => {
                if leading {
                    last_renewed = Some(Instant::now());
                }
                leading
            }
            Err(e) => {
                tracing::debug!(lease = %config.name, error = %e, "renewing the lease");
                // Keep leading through short outages, but never past the lease's own
                // expiry, when another candidate may take over.
                last_renewed.is_some_and(|t| t.elapsed() < config.lease_duration)
            }
        };
        if !leading {
            last_renewed = None;
        }
        if *tx.borrow() != leading {
            tracing::info!(lease = %config.name, identity = %config.identity, leading, "leadership changed");
            let _ = tx.send(leading);
        }
        tokio::time::sleep(config.renew_every).await;
    }
}

/// One round: returns whether this candidate holds the Lease afterwards.
async fn try_acquire_or_renew(
    leases: &Api<Lease>,
    config: &LeaderConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let duration_secs = i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = leases.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let mine = holder.as_deref() == Some(config.identity.as_str());
    if !mine && holder.is_some() {
        let changed = observed
            .as_ref()
            .is_none_or(|o| o.holder != holder || o.renew != spec.renew_time);
        if changed {
            *observed = Some(Observed {
                holder: holder.clone(),
                renew: spec.renew_time.clone(),
                since: Instant::now(),
            });
        }
        let held_for = Duration::from_secs(
            spec.lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(config.lease_duration.as_secs()),
        );
        let unchanged_long = observed
            .as_ref()
            .is_some_and(|o| o.since.elapsed() > held_for);
        // On one host (restarts of a single replica) the holder's clock is ours, so an
        // old renewTime is expired already; no need to wait a full lease.
        let stale_by_clock = spec.renew_time.as_ref().is_some_and(|t| {
            let age = jiff::Timestamp::now().duration_since(t.0);
            age.as_secs() > i64::try_from(held_for.as_secs()).unwrap_or(i64::MAX) + 1
        });
        if !unchanged_long && !stale_by_clock {
            return Ok(false);
        }
    }
    let mut next = spec;
    if !mine {
        next.acquire_time = Some(now());
        next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
        next.holder_identity = Some(config.identity.clone());
    }
    next.renew_time = Some(now());
    next.lease_duration_seconds = Some(duration_secs);
    lease.spec = Some(next);
    // The resourceVersion read makes this a compare-and-swap.
    match leases
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => {
            if !mine {
                *observed = None;
            }
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
