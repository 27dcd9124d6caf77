//! Leader election and the per-replica applied-generation report, both on
//! coordination.k8s.io/v1 Leases in the pod namespace.
//!
//! - `--leader-lease` (default `sluice-leader`): held by the one replica
//!   that writes status. The holder renews it every third of
//!   `--lease-duration`; another replica takes it over (optimistic
//!   concurrency on `resourceVersion`) once `renewTime + leaseDurationSeconds`
//!   has passed.
//! - `sluice-replica-<pod>`: every replica that has applied a table renews
//!   its own Lease with annotations naming the table generation and the
//!   `metadata.generation` of every Gateway it programmed. A replica whose
//!   Lease has expired (stopped, or not ready) no longer counts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use prometheus::{IntGauge, Registry};
use tokio::sync::watch as chan;

use super::{Applied, KubeArgs};

/// Annotation on a replica Lease: the applied route table generation.
pub const TABLE_GENERATION: &str = "sluice.dev/table-generation";
/// Annotation on a replica Lease: JSON map `ns/name` → Gateway
/// `metadata.generation` the replica has applied.
pub const GATEWAYS: &str = "sluice.dev/gateways";
/// Prefix of replica Lease names.
pub const REPLICA_PREFIX: &str = "sluice-replica-";

/// A replica Lease not renewed for this many Lease durations belongs to a
/// replica that is gone (its pod deleted): the leader deletes it.
const STALE_AFTER: u32 = 5;

/// What one live replica reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// Pod name.
    pub pod: String,
    /// Gateway `ns/name` → applied `metadata.generation`.
    pub gateways: BTreeMap<String, i64>,
}

/// Leadership as this replica knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    /// Whether this replica holds the leader Lease.
    pub leader: bool,
    /// Live replicas (read by the leader only).
    pub replicas: Vec<Replica>,
}

/// Handle on the election task.
pub struct Handle {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Stops: a leader releases its Lease (another replica takes over at
    /// once instead of after it expires) and the replica Lease loses its
    /// holder (Programmed no longer waits for this replica). Only the
    /// agreed Lease verbs are needed (no delete).
    pub async fn release(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// Starts the election and replica-report task.
pub fn start(
    client: &kube::Client,
    args: &KubeArgs,
    registry: &Registry,
    applied: chan::Receiver<Option<Applied>>,
) -> anyhow::Result<(chan::Receiver<Leadership>, Handle)> {
    let gauge = IntGauge::new("sluice_leader", "1 while this replica holds the leader Lease (and writes status).")?;
    registry.register(Box::new(gauge.clone()))?;
    let ns = args.lease_namespace();
    let api: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let elector = Elector {
        api,
        pod: args.pod(),
        lease: args.leader_lease.clone(),
        duration: args.lease_duration,
        leader_since: None,
        last_renew: None,
        observed: None,
        replicas_seen: std::collections::HashMap::new(),
    };
    tracing::info!(pod = %elector.pod, namespace = %ns, lease = %elector.lease, "Leader election");
    let (tx, rx) = chan::channel(Leadership::default());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(elector.run(tx, applied, gauge, stopped));
    Ok((rx, Handle { stop, task }))
}

struct Elector {
    api: Api<Lease>,
    pod: String,
    lease: String,
    duration: Duration,
    leader_since: Option<Instant>,
    last_renew: Option<Instant>,
    /// The leader Lease's resourceVersion and when it was first seen:
    /// expiry is judged by this replica's clock (how long the record has
    /// not changed), not by comparing another node's `renewTime` with ours.
    observed: Option<(String, Instant)>,
    /// The same per replica Lease: (resourceVersion, first seen, whether
    /// its renewTime looked fresh then).
    replicas_seen: std::collections::HashMap<String, (String, Instant, bool)>,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn duration_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Whether a Lease's holder has renewed within its duration.
fn fresh(lease: &Lease) -> bool {
    let Some(spec) = &lease.spec else { return false };
    let (Some(renew), Some(secs)) = (&spec.renew_time, spec.lease_duration_seconds) else { return false };
    let expires = renew.0.as_millisecond().saturating_add(i64::from(secs) * 1000);
    expires > Timestamp::now().as_millisecond()
}

impl Elector {
    async fn run(
        mut self,
        tx: chan::Sender<Leadership>,
        mut applied: chan::Receiver<Option<Applied>>,
        gauge: IntGauge,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        let period = (self.duration / 3).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = applied.changed() => if r.is_err() { return },
                _ = &mut stop => {
                    self.release().await;
                    gauge.set(0);
                    return;
                }
            }
            let current = applied.borrow().clone();
            if let Some(a) = &current
                && let Err(e) = self.report(a).await
            {
                tracing::warn!(error = %e, "Cannot update the replica Lease");
            }
            let leader = match self.elect().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "Leader election: API error");
                    // Keep leading only while the last renewal is fresh.
                    self.leader_since.is_some() && self.last_renew.is_some_and(|t| t.elapsed() < self.duration)
                }
            };
            match (leader, self.leader_since.is_some()) {
                (true, false) => {
                    tracing::info!(pod = %self.pod, "Became the leader; writing status");
                    self.leader_since = Some(Instant::now());
                }
                (false, true) => {
                    tracing::info!(pod = %self.pod, "No longer the leader");
                    self.leader_since = None;
                }
                _ => {}
            }
            gauge.set(i64::from(leader));
            let replicas = if leader { self.replicas().await.unwrap_or_default() } else { Vec::new() };
            tx.send_if_modified(|l| {
                let new = Leadership { leader, replicas };
                let changed = *l != new;
                *l = new;
                changed
            });
        }
    }

    /// One election round: returns whether this replica leads.
    async fn elect(&mut self) -> kube::Result<bool> {
        let mine = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.pod.clone()),
            lease_duration_seconds: Some(duration_secs(self.duration)),
            acquire_time: acquired.or_else(|| Some(now())),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.lease).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.lease.clone()), ..ObjectMeta::default() },
                spec: Some(mine(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.last_renew = Some(Instant::now());
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let unchanged_for = match &self.observed {
            Some((seen, at)) if *seen == rv => at.elapsed(),
            _ => {
                self.observed = Some((rv, Instant::now()));
                Duration::ZERO
            }
        };
        let lease_for =
            spec.lease_duration_seconds.map_or(self.duration, |s| Duration::from_secs(s.max(1).unsigned_abs().into()));
        let new_spec = if holder == self.pod {
            mine(transitions, spec.acquire_time.clone())
        } else if holder.is_empty() || unchanged_for >= lease_for {
            tracing::info!(previous = holder, "Leader Lease expired; taking over");
            mine(transitions + 1, None)
        } else {
            return Ok(false);
        };
        lease.spec = Some(new_spec);
        // The replace carries the resourceVersion read: a concurrent
        // takeover makes it fail with 409 Conflict.
        match self.api.replace(&self.lease, &PostParams::default(), &lease).await {
            Ok(_) => {
                self.last_renew = Some(Instant::now());
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives up leadership and the replica Lease (shutdown).
    async fn release(&mut self) {
        let name = format!("{REPLICA_PREFIX}{}", self.pod);
        let patch = serde_json::json!({"spec": {"holderIdentity": null}});
        if let Err(e) = self.api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::debug!(error = %e, "Cannot release the replica Lease");
        }
        if self.leader_since.take().is_none() {
            return;
        }
        let Ok(Some(mut lease)) = self.api.get_opt(&self.lease).await else { return };
        let Some(spec) = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(&self.pod)) else {
            return;
        };
        spec.holder_identity = None;
        match self.api.replace(&self.lease, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!(pod = %self.pod, "Released the leader Lease"),
            Err(e) => tracing::warn!(error = %e, "Cannot release the leader Lease"),
        }
    }

    /// Renews this replica's Lease with what it has applied.
    async fn report(&self, applied: &Applied) -> kube::Result<()> {
        let name = format!("{REPLICA_PREFIX}{}", self.pod);
        let gateways = serde_json::to_string(&applied.gateways).unwrap_or_default();
        let patch = serde_json::json!({
            "metadata": {"annotations": {TABLE_GENERATION: applied.generation.to_string(), GATEWAYS: gateways}},
            "spec": {
                "holderIdentity": self.pod,
                "leaseDurationSeconds": duration_secs(self.duration),
                "renewTime": now(),
            },
        });
        match self.api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
                    spec: Some(LeaseSpec::default()),
                };
                self.api.create(&PostParams::default(), &lease).await?;
                self.api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Live replicas from their Leases: held, and renewed within their
    /// duration as this replica's clock sees it (a Lease seen for the first
    /// time counts when its `renewTime` looks fresh).
    async fn replicas(&mut self) -> kube::Result<Vec<Replica>> {
        let leases = self.api.list(&ListParams::default()).await?;
        let leases: Vec<&Lease> = leases
            .items
            .iter()
            .filter(|l| l.metadata.name.as_deref().is_some_and(|n| n.starts_with(REPLICA_PREFIX)))
            .collect();
        let now = Instant::now();
        let mut seen = std::collections::HashMap::new();
        let mut live = Vec::new();
        for l in leases {
            let name = l.metadata.name.clone().unwrap_or_default();
            let rv = l.metadata.resource_version.clone().unwrap_or_default();
            let entry = match self.replicas_seen.remove(&name) {
                Some((r, at, first)) if r == rv => (r, at, first),
                Some((_, _, _)) => (rv, now, true),
                None => (rv, now, fresh(l)),
            };
            let duration = l
                .spec
                .as_ref()
                .and_then(|s| s.lease_duration_seconds)
                .map_or(self.duration, |s| Duration::from_secs(s.max(1).unsigned_abs().into()));
            if entry.2 && entry.1.elapsed() < duration && l.spec.as_ref().is_some_and(|s| s.holder_identity.is_some()) {
                live.push(l);
            }
            seen.insert(name, entry);
        }
        // Leases of replicas gone for good (unchanged for STALE_AFTER
        // durations as this leader saw them) are deleted; a replica that
        // comes back re-creates its own.
        for (name, (rv, since, _)) in &seen {
            let duration = self.duration;
            if since.elapsed() > duration * STALE_AFTER && *name != format!("{REPLICA_PREFIX}{}", self.pod) {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions { resource_version: Some(rv.clone()), uid: None }),
                    ..DeleteParams::default()
                };
                match self.api.delete(name, &dp).await {
                    Ok(_) => tracing::info!(lease = %name, "Deleted the Lease of a replica gone for good"),
                    Err(e) => tracing::debug!(lease = %name, error = %e, "Cannot delete a stale replica Lease"),
                }
            }
        }
        self.replicas_seen = seen;
        let mut out: Vec<Replica> = live
            .into_iter()
            .map(|l| Replica {
                pod: l.metadata.name.as_deref().unwrap_or_default()[REPLICA_PREFIX.len()..].to_string(),
                gateways: l
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(GATEWAYS))
                    .and_then(|g| serde_json::from_str(g).ok())
                    .unwrap_or_default(),
            })
            .collect();
        out.sort_by(|a, b| a.pod.cmp(&b.pod));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_fresh_until_renew_time_plus_duration() {
        let lease = |ago_ms: i64, secs: i32| Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(
                    Timestamp::from_millisecond(Timestamp::now().as_millisecond() - ago_ms).unwrap_or(Timestamp::now()),
                )),
                lease_duration_seconds: Some(secs),
                ..LeaseSpec::default()
            }),
        };
        assert!(fresh(&lease(500, 2)));
        assert!(!fresh(&lease(2500, 2)));
        assert!(!fresh(&Lease::default()));
    }
}
