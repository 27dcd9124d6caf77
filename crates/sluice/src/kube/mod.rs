//! Kubernetes mode: reflectors on the API server instead of files, status
//! writeback by the elected leader, and proof that every replica applied a
//! Gateway's generation.
//!
//! The reload loop is the file source's: watch events are debounced, the
//! caches are turned into [`sluice_controller::Objects`] and handed to
//! [`Controller::apply`] (endpoint-only changes take its fast path). Nothing
//! is applied while any cache is (re-)listing, so a broken watch never swaps
//! in an empty or partial table; `/readyz` turns true once the first full
//! sync is applied.

pub mod lease;
pub mod status;
pub mod watch;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, Registry};
use tokio::sync::{mpsc, watch as chan};

use crate::run::Controller;

/// Kubernetes-mode flags of `sluice run`.
#[derive(clap::Args, Debug, Clone)]
pub struct KubeArgs {
    /// Read objects from the Kubernetes API (in-cluster config, or
    /// KUBECONFIG). The default when `--config` is absent.
    #[arg(long, conflicts_with = "config")]
    pub kubernetes: bool,
    /// Watch namespaced objects only in NS (repeatable; default: all
    /// namespaces). Cluster-scoped kinds are always watched.
    #[arg(long = "watch-namespace", value_name = "NS")]
    pub watch_namespaces: Vec<String>,
    /// The LoadBalancer Service fronting Sluice: its `status.loadBalancer`
    /// becomes Gateway `status.addresses` and Ingress `status.loadBalancer`.
    #[arg(long, value_name = "NS/NAME")]
    pub publish_service: Option<String>,
    /// This replica's identity for leader election and its applied-generation
    /// Lease (default: the host name).
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,
    /// Namespace of the Leases (default: the service account's namespace,
    /// else `default`).
    #[arg(long, env = "POD_NAMESPACE", value_name = "NS")]
    pub pod_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "sluice-leader", value_name = "NAME")]
    pub leader_lease: String,
    /// Lease duration: a leader that has not renewed for this long is
    /// replaced; a replica Lease this old no longer counts.
    #[arg(long, default_value = "15s", value_parser = crate::run::parse_duration)]
    pub lease_duration: Duration,
    /// Batching window: a reload runs this long after the first watch event
    /// it includes.
    #[arg(long, default_value = "50ms", value_parser = crate::run::parse_duration)]
    pub debounce: Duration,
    /// Most status writes per second.
    #[arg(long, default_value_t = 20)]
    pub status_qps: u32,
    /// Watch ConfigMaps, for BackendTLSPolicy CA bundles
    /// (`caCertificateRefs`). Needs read access to ConfigMaps, which the
    /// base RBAC does not grant (deploy/components/backend-tls-ca). Only
    /// each ConfigMap's `ca.crt` is kept in memory.
    #[arg(long)]
    pub watch_configmaps: bool,
    /// With `--watch-configmaps`: watch only ConfigMaps matching this label
    /// selector (e.g. `sluice.dev/ca-bundle=true`); default: all in the
    /// watched namespaces.
    #[arg(long, value_name = "SELECTOR", requires = "watch_configmaps")]
    pub configmap_selector: Option<String>,
}

impl KubeArgs {
    /// This replica's name.
    pub fn pod(&self) -> String {
        self.pod_name
            .clone()
            .filter(|p| !p.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
            .unwrap_or_else(|| "sluice".to_string())
    }

    /// The Leases' namespace.
    pub fn lease_namespace(&self) -> String {
        self.pod_namespace
            .clone()
            .filter(|p| !p.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
                    .map(|n| n.trim().to_string())
            })
            .unwrap_or_else(|| "default".to_string())
    }
}

/// The last table applied in Kubernetes mode, for the status writer and
/// the replica report.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// Route table generation.
    pub generation: u64,
    /// Conditions of its translation.
    pub report: Arc<sluice_controller::Report>,
    /// `metadata.generation` of every Gateway Sluice programmed, `ns/name`.
    pub gateways: std::collections::BTreeMap<String, i64>,
}

/// Serves from the Kubernetes API until `shutdown`.
pub async fn run(
    client: kube::Client,
    controller: &mut Controller,
    args: &KubeArgs,
    registry: &Registry,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<ExitCode> {
    if let Some(p) = &args.publish_service
        && p.split_once('/').is_none_or(|(ns, n)| ns.is_empty() || n.is_empty())
    {
        eprintln!("sluice: --publish-service {p:?}: expected NAMESPACE/NAME");
        return Ok(ExitCode::from(crate::EX_USAGE));
    }
    let failures =
        IntCounter::new("sluice_watch_failures_total", "Kubernetes watch failures (retried, re-listing if needed).")?;
    registry.register(Box::new(failures.clone()))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let publish_ns = args.publish_service.as_deref().and_then(|p| p.split_once('/')).map(|(ns, _)| ns);
    let opt_in = watch::OptIn {
        config_maps: args.watch_configmaps.then(|| args.configmap_selector.clone().unwrap_or_default()),
    };
    let mut caches = watch::Caches::start(&client, &args.watch_namespaces, publish_ns, &opt_in, &tx);
    tracing::info!(streams = caches.streams.len(), "Watching the Kubernetes API");
    let (applied_tx, applied_rx) = chan::channel(None::<Applied>);
    let (leader, election) = lease::start(&client, args, registry, applied_rx.clone())?;
    let status =
        status::Writer::start(&client, args, controller.options(), registry, applied_rx, leader, caches.readers())?;

    let mut dirty_since: Option<Instant> = None;
    let mut ready = false;
    loop {
        // Changes are batched: a reload runs `debounce` after the first
        // change it includes (a fixed window, so a steady trickle of events,
        // such as status writes, cannot postpone it).
        let wait = dirty_since.map_or(args.debounce, |t| args.debounce.saturating_sub(t.elapsed()));
        tokio::select! {
            Some(ev) = rx.recv() => {
                if let watch::WatchEvent::Failed { .. } = ev {
                    failures.inc();
                }
                if caches.on(&ev) {
                    dirty_since.get_or_insert_with(Instant::now);
                }
                status.poke();
            }
            () = tokio::time::sleep(wait), if dirty_since.is_some() && caches.synced() => {
                let since = dirty_since.take().unwrap_or_else(Instant::now);
                let changed = caches.refresh();
                if ready && changed.is_empty() {
                    continue; // only statuses or bookkeeping changed
                }
                if ready && changed.iter().all(|k| *k == "EndpointSlice") {
                    // The fast path without re-reading anything else.
                    controller.swap_endpoints(caches.endpoint_slices(), since);
                    continue;
                }
                let (objects, report) = caches.objects();
                let gateways = status::programmed_gateways(&objects, controller.options());
                match controller.apply(objects, report, since).await {
                    Ok(_) => {
                        if !ready {
                            ready = true;
                            controller.admin.ready.store(true, Ordering::Release);
                            tracing::info!(generation = controller.generation, "First full sync applied; ready");
                        }
                        let last = controller.admin.last.load();
                        let changed = applied_tx.borrow().as_ref().is_none_or(|a| a.generation != last.generation || a.gateways != gateways);
                        if changed {
                            applied_tx.send_replace(Some(Applied {
                                generation: last.generation,
                                report: Arc::new(last.report.clone()),
                                gateways,
                            }));
                        }
                    }
                    Err(report) => {
                        crate::run::log_report(&report);
                        tracing::error!(generation = controller.generation, "Invalid config change ignored; the last good table keeps serving");
                    }
                }
            }
            () = shutdown.as_mut() => break,
        }
    }
    status.stop();
    election.release().await;
    Ok(ExitCode::SUCCESS)
}
