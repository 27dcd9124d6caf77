//! Status writeback (Gateway API status rules, `shared/spec/semantics.md` §5).
//!
//! Only the leader writes. From the conditions translation computed for the
//! applied table ([`sluice_controller::Report`]) it derives each object's
//! status, compares it with the cached object and merge-patches the
//! `/status` subresource only when something differs: GatewayClass
//! `Accepted` + `supportedFeatures`; Gateway conditions, listeners and
//! `addresses` (from `--publish-service`); HTTPRoute `status.parents` entries
//! of Sluice's controllerName (others' entries are kept; the patch carries
//! `resourceVersion`, so a concurrent writer makes it fail with 409 and it is
//! retried from the refreshed cache); BackendTLSPolicy `status.ancestors`
//! entries of Sluice's controllerName, one per ancestor Gateway (the same
//! rules as HTTPRoute parents); RateLimitPolicy `status.conditions`
//! (`Accepted`); Ingress `status.loadBalancer` (cleared again when an
//! Ingress that carries exactly Sluice's addresses stops being Sluice's).
//!
//! Gateway `Programmed=True` additionally needs every live replica to report
//! (in its Lease, see [`super::lease`]) that it has applied the Gateway's
//! `metadata.generation`; until then it is `False/Pending` with a message
//! like `applied by 2/3 replicas`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde_json::{Value, json};
use sluice_controller::report::{Condition, Scope};
use sluice_controller::{Objects, Options, Report};
use tokio::sync::{Notify, watch as chan};

use super::lease::Leadership;
use super::watch::Readers;
use super::{Applied, KubeArgs};

const GROUP: &str = "gateway.networking.k8s.io";

/// Gateway API features Sluice implements today (sorted, as the spec
/// requires): the ones the end-to-end conformance tests exercise.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "Gateway",
    "GatewayHTTPListenerIsolation",
    "GatewayPort8080",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendTimeout",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

/// Features supported only when ConfigMaps (CA bundles) are watched
/// (`--watch-configmaps`): without them a policy has no usable CA.
pub const CONFIG_MAP_FEATURES: &[&str] = &["BackendTLSPolicy", "BackendTLSPolicySANValidation"];

/// The GatewayClass `supportedFeatures`, sorted.
pub fn supported_features(watch_configmaps: bool) -> Vec<&'static str> {
    let extra = if watch_configmaps { CONFIG_MAP_FEATURES } else { &[] };
    let mut all: Vec<&'static str> = SUPPORTED_FEATURES.iter().chain(extra).copied().collect();
    all.sort_unstable();
    all
}

/// `ns/name` → `metadata.generation` of the Gateways of Sluice's classes.
pub fn programmed_gateways(objects: &Objects, options: &Options) -> BTreeMap<String, i64> {
    use sluice_controller::objects::{generation, name, namespace};
    let classes: Vec<&str> = objects
        .gateway_classes
        .iter()
        .filter(|c| c.spec.controller_name == options.gateway_controller)
        .map(|c| name(&c.metadata))
        .collect();
    objects
        .gateways
        .iter()
        .filter(|g| classes.contains(&g.spec.gateway_class_name.as_str()))
        .map(|g| (format!("{}/{}", namespace(&g.metadata), name(&g.metadata)), generation(&g.metadata)))
        .collect()
}

/// Longest the writer goes without comparing desired and actual status.
const RESYNC: Duration = Duration::from_secs(10);

/// Handle on the status-writer task.
pub struct Writer {
    poke: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts the writer.
    pub fn start(
        client: &kube::Client,
        args: &KubeArgs,
        options: &Options,
        registry: &Registry,
        applied: chan::Receiver<Option<Applied>>,
        leadership: chan::Receiver<Leadership>,
        readers: Readers,
    ) -> anyhow::Result<Self> {
        let writes = IntCounterVec::new(
            Opts::new("sluice_status_writes_total", "Status patches sent by the leader, by result."),
            &["result"],
        )?;
        let lagging = IntGauge::new(
            "sluice_replicas_lagging",
            "Live replicas that have not applied the latest generation of every Gateway (leader only).",
        )?;
        let lag_seconds = prometheus::Gauge::new(
            "sluice_propagation_lag_seconds",
            "How long the oldest Gateway generation not yet applied by every replica has been waiting (leader only).",
        )?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(lagging.clone()))?;
        registry.register(Box::new(lag_seconds.clone()))?;
        let poke = Arc::new(Notify::new());
        let mut state = State {
            client: client.clone(),
            options: options.clone(),
            publish: args.publish_service.as_deref().and_then(|p| p.split_once('/')).map(|(a, b)| (a.into(), b.into())),
            readers,
            sent: HashMap::new(),
            pending: HashMap::new(),
            backoff: HashMap::new(),
            interval: Duration::from_secs_f64(1.0 / f64::from(args.status_qps.max(1))),
            features: supported_features(args.watch_configmaps),
            writes,
            lagging,
            lag_seconds,
        };
        let task = tokio::spawn({
            let poke = poke.clone();
            async move { state.run(applied, leadership, poke).await }
        });
        Ok(Self { poke, task })
    }

    /// Asks for a comparison now (the caches changed).
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Stops writing.
    pub fn stop(self) {
        self.task.abort();
    }
}

type Key = (&'static str, Option<String>, String);

struct State {
    client: kube::Client,
    options: Options,
    publish: Option<(String, String)>,
    readers: Readers,
    /// What was last written per object, and the resourceVersion the cache
    /// held then: not written again until the cache moves past it.
    sent: HashMap<Key, (Value, String)>,
    /// Gateway generations waiting for replicas, and since when.
    pending: HashMap<String, (i64, Instant)>,
    /// Objects whose last write failed: failures in a row, and when to retry.
    backoff: HashMap<Key, (u32, Instant)>,
    interval: Duration,
    /// GatewayClass `supportedFeatures`.
    features: Vec<&'static str>,
    writes: IntCounterVec,
    lagging: IntGauge,
    lag_seconds: prometheus::Gauge,
}

/// A status to write.
struct Desired {
    key: Key,
    /// The status fields Sluice owns.
    status: Value,
    /// Send `metadata.resourceVersion` as a precondition.
    precondition: bool,
}

impl State {
    async fn run(
        &mut self,
        mut applied: chan::Receiver<Option<Applied>>,
        mut leadership: chan::Receiver<Leadership>,
        poke: Arc<Notify>,
    ) {
        loop {
            // Woken by changes (caches, applied table, leadership); otherwise
            // when a backed-off write is due, and every RESYNC regardless.
            let now = Instant::now();
            let wake = self.backoff.values().map(|(_, t)| t.saturating_duration_since(now)).min().unwrap_or(RESYNC);
            tokio::select! {
                () = poke.notified() => {}
                r = applied.changed() => if r.is_err() { return },
                r = leadership.changed() => if r.is_err() { return },
                () = tokio::time::sleep(wake.min(RESYNC)) => {}
            }
            let lead = leadership.borrow().clone();
            if !lead.leader {
                self.sent.clear();
                self.pending.clear();
                self.backoff.clear();
                self.lagging.set(0);
                self.lag_seconds.set(0.0);
                continue;
            }
            let Some(a) = applied.borrow().clone() else { continue };
            for d in self.desired(&a, &lead) {
                self.write(d).await;
            }
        }
    }

    async fn write(&mut self, d: Desired) {
        let (kind, ns, name) = &d.key;
        let Some(current) = self.readers.get(kind, ns.as_deref(), name) else { return };
        let rv = current.metadata.resource_version.clone().unwrap_or_default();
        let cur_status = current.data.get("status").cloned().unwrap_or(Value::Null);
        let differs = d.status.as_object().into_iter().flatten().any(|(k, v)| cur_status.get(k) != Some(v));
        if !differs {
            self.sent.remove(&d.key);
            return;
        }
        if self.sent.get(&d.key).is_some_and(|(v, at)| *v == d.status && *at == rv) {
            return; // written; the watch has not delivered it yet
        }
        if self.backoff.get(&d.key).is_some_and(|(_, until)| Instant::now() < *until) {
            return;
        }
        let Some(k) = Readers::kind(kind) else { return };
        let ar = k.resource();
        let api: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        let mut patch = json!({"status": d.status});
        if d.precondition {
            patch["metadata"] = json!({"resourceVersion": rv});
        }
        let result = api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await;
        let label = match &result {
            Ok(_) => {
                tracing::debug!(kind, namespace = ns.as_deref().unwrap_or(""), name, "Status written");
                self.sent.insert(d.key.clone(), (d.status, rv));
                "ok"
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!(kind, name, "Status conflict; retrying from the refreshed cache");
                "conflict"
            }
            Err(kube::Error::Api(s)) if s.code == 404 => "not_found",
            Err(e) => {
                tracing::warn!(kind, namespace = ns.as_deref().unwrap_or(""), name, error = %e, "Cannot write status");
                "error"
            }
        };
        self.writes.with_label_values(&[label]).inc();
        if label == "ok" || label == "not_found" {
            self.backoff.remove(&d.key);
        } else {
            // Retried from the refreshed cache after 100 ms, 200 ms, ... 10 s.
            let failures = self.backoff.get(&d.key).map_or(0, |(n, _)| *n) + 1;
            let wait = Duration::from_millis(100u64 << failures.min(7)).min(Duration::from_secs(10));
            self.backoff.insert(d.key.clone(), (failures, Instant::now() + wait));
        }
        tokio::time::sleep(self.interval).await;
    }

    fn desired(&mut self, a: &Applied, lead: &Leadership) -> Vec<Desired> {
        let report = &a.report;
        let mut out = Vec::new();
        // GatewayClasses.
        for s in report.statuses.iter().filter(|s| s.kind == "GatewayClass") {
            let Some(cur) = self.current("GatewayClass", None, &s.name, &s.conditions) else { continue };
            let features: Vec<Value> = self.features.iter().map(|f| json!({"name": f})).collect();
            out.push(Desired {
                key: ("GatewayClass", None, s.name.clone()),
                status: json!({
                    "conditions": merge_conditions(cur.get("conditions"), &s.conditions),
                    "supportedFeatures": features,
                }),
                precondition: false,
            });
        }
        // RateLimitPolicies (Sluice's own kind): `Accepted` with the reason.
        for s in report.statuses.iter().filter(|s| s.kind == sluice_controller::ratelimit::KIND) {
            let Some(cur) = self.current(s.kind, Some(&s.namespace), &s.name, &s.conditions) else { continue };
            out.push(Desired {
                key: (s.kind, Some(s.namespace.clone()), s.name.clone()),
                status: json!({"conditions": merge_conditions(cur.get("conditions"), &s.conditions)}),
                precondition: false,
            });
        }
        // Gateways.
        let addresses = self.addresses();
        let mut lagging = std::collections::BTreeSet::new();
        let mut pending_now = HashMap::new();
        for s in report.statuses.iter().filter(|s| s.kind == "Gateway" && s.scope == Scope::Object) {
            let Some(cur) = self.current("Gateway", Some(&s.namespace), &s.name, &s.conditions) else { continue };
            let key = format!("{}/{}", s.namespace, s.name);
            let mut conditions = s.conditions.clone();
            let generation = a.gateways.get(&key).copied().unwrap_or_default();
            if let Some(p) = conditions.iter_mut().find(|c| c.type_ == "Programmed" && c.status == "True") {
                let done = lead.replicas.iter().filter(|r| r.gateways.get(&key).is_some_and(|g| *g >= generation));
                let done = done.count();
                let total = lead.replicas.len();
                p.message = format!("applied by {done}/{total} replicas");
                if done < total || total == 0 {
                    p.status = "False";
                    p.reason = "Pending";
                    for r in &lead.replicas {
                        if r.gateways.get(&key).is_none_or(|g| *g < generation) {
                            lagging.insert(r.pod.clone());
                        }
                    }
                    let since = match self.pending.get(&key) {
                        Some((g, t)) if *g == generation => *t,
                        _ => Instant::now(),
                    };
                    pending_now.insert(key.clone(), (generation, since));
                }
            }
            let listeners: Vec<Value> = report
                .statuses
                .iter()
                .filter(|l| l.kind == "Gateway" && l.namespace == s.namespace && l.name == s.name)
                .filter_map(|l| match &l.scope {
                    Scope::Listener { name, attached_routes, supported_kinds } => {
                        let cur_l = cur
                            .get("listeners")
                            .and_then(Value::as_array)
                            .and_then(|ls| ls.iter().find(|x| x.get("name").and_then(Value::as_str) == Some(name)));
                        Some(json!({
                            "name": name,
                            "supportedKinds": supported_kinds.iter().map(|k| json!({"group": GROUP, "kind": k})).collect::<Vec<_>>(),
                            "attachedRoutes": attached_routes,
                            "conditions": merge_conditions(cur_l.and_then(|x| x.get("conditions")), &l.conditions),
                        }))
                    }
                    _ => None,
                })
                .collect();
            let mut status = json!({
                "conditions": merge_conditions(cur.get("conditions"), &conditions),
                "listeners": listeners,
            });
            if let Some(addrs) = &addresses {
                status["addresses"] = Value::Array(
                    addrs
                        .iter()
                        .map(|(ip, v)| json!({"type": if *ip { "IPAddress" } else { "Hostname" }, "value": v}))
                        .collect(),
                );
            }
            out.push(Desired {
                key: ("Gateway", Some(s.namespace.clone()), s.name.clone()),
                status,
                precondition: false,
            });
        }
        self.pending = pending_now;
        self.lagging.set(i64::try_from(lagging.len()).unwrap_or(i64::MAX));
        self.lag_seconds.set(self.pending.values().map(|(_, t)| t.elapsed().as_secs_f64()).fold(0.0, f64::max));
        // HTTPRoutes: every route with an entry of ours, desired or current.
        let mut ours: BTreeMap<(String, String), Vec<&sluice_controller::ObjectStatus>> = BTreeMap::new();
        for s in report.statuses.iter().filter(|s| s.kind == "HTTPRoute") {
            ours.entry((s.namespace.clone(), s.name.clone())).or_default().push(s);
        }
        for route in self.readers.all("HTTPRoute") {
            let ns = route.metadata.namespace.clone().unwrap_or_default();
            let name = route.metadata.name.clone().unwrap_or_default();
            let entries = ours.get(&(ns.clone(), name.clone())).cloned().unwrap_or_default();
            let parents = route.data.pointer("/status/parents").and_then(Value::as_array).cloned().unwrap_or_default();
            let controller = self.options.gateway_controller.as_str();
            let is_ours = |p: &Value| p.get("controllerName").and_then(Value::as_str) == Some(controller);
            if entries.is_empty() && !parents.iter().any(is_ours) {
                continue;
            }
            if let Some(g) = entries.first().and_then(|e| e.conditions.first()).map(|c| c.observed_generation)
                && route.metadata.generation.is_some_and(|cur| cur != g)
            {
                continue; // the applied table predates this spec
            }
            let mut new: Vec<Value> = parents.iter().filter(|p| !is_ours(p)).cloned().collect();
            for e in entries {
                let Scope::Parent { gateway, section, port } = &e.scope else { continue };
                let (gw_ns, gw_name) = gateway.split_once('/').unwrap_or(("", gateway));
                let mut parent_ref = json!({"group": GROUP, "kind": "Gateway", "namespace": gw_ns, "name": gw_name});
                if let Some(s) = section {
                    parent_ref["sectionName"] = json!(s);
                }
                if let Some(p) = port {
                    parent_ref["port"] = json!(p);
                }
                let same = |p: &&Value| {
                    is_ours(p) && {
                        let r = p.get("parentRef").cloned().unwrap_or_default();
                        r.get("name") == parent_ref.get("name")
                            && r.get("namespace").and_then(Value::as_str).unwrap_or(&ns) == gw_ns
                            && r.get("sectionName") == parent_ref.get("sectionName")
                            && r.get("port") == parent_ref.get("port")
                    }
                };
                let cur = parents.iter().find(same);
                new.push(json!({
                    "parentRef": parent_ref,
                    "controllerName": controller,
                    "conditions": merge_conditions(cur.and_then(|c| c.get("conditions")), &e.conditions),
                }));
            }
            out.push(Desired {
                key: ("HTTPRoute", Some(ns), name),
                status: json!({"parents": new}),
                precondition: true,
            });
        }
        out.extend(self.policy_ancestors(report));
        // Ingresses.
        if let Some(addrs) = &addresses {
            let served =
                sluice_controller::translate::served_ingresses(&objects_for_ingress(&self.readers), &self.options);
            let lb: Vec<Value> =
                addrs.iter().map(|(ip, v)| if *ip { json!({"ip": v}) } else { json!({"hostname": v}) }).collect();
            let lb = Value::Array(lb);
            // An Ingress that stopped being ours (class changed) and still
            // carries exactly our addresses: ours are cleared.
            let served: std::collections::BTreeSet<(String, String)> = served.into_iter().collect();
            let ours = lb.as_array().is_some_and(|a| !a.is_empty());
            for ing in self.readers.all("Ingress").into_iter().filter(|_| ours) {
                let ns = ing.metadata.namespace.clone().unwrap_or_default();
                let name = ing.metadata.name.clone().unwrap_or_default();
                if served.contains(&(ns.clone(), name.clone())) {
                    continue;
                }
                if ing.data.pointer("/status/loadBalancer/ingress") == Some(&lb) {
                    out.push(Desired {
                        key: ("Ingress", Some(ns), name),
                        status: json!({"loadBalancer": {"ingress": []}}),
                        precondition: true,
                    });
                }
            }
            for (ns, name) in served {
                out.push(Desired {
                    key: ("Ingress", Some(ns), name),
                    status: json!({"loadBalancer": {"ingress": lb}}),
                    precondition: false,
                });
            }
        }
        out
    }

    /// BackendTLSPolicies: `status.ancestors` entries of Sluice's
    /// controllerName, one per ancestor Gateway; other controllers' entries
    /// are kept, and the list never grows past the CRD's 16 entries.
    fn policy_ancestors(&self, report: &Report) -> Vec<Desired> {
        const KIND: &str = "BackendTLSPolicy";
        const MAX: usize = 16;
        let mut ours: BTreeMap<(String, String), Vec<&sluice_controller::ObjectStatus>> = BTreeMap::new();
        for s in report.statuses.iter().filter(|s| s.kind == KIND && matches!(s.scope, Scope::Ancestor { .. })) {
            ours.entry((s.namespace.clone(), s.name.clone())).or_default().push(s);
        }
        let controller = self.options.gateway_controller.as_str();
        let is_ours = |a: &Value| a.get("controllerName").and_then(Value::as_str) == Some(controller);
        let mut out = Vec::new();
        for policy in self.readers.all(KIND) {
            let ns = policy.metadata.namespace.clone().unwrap_or_default();
            let name = policy.metadata.name.clone().unwrap_or_default();
            let entries = ours.get(&(ns.clone(), name.clone())).cloned().unwrap_or_default();
            let current =
                policy.data.pointer("/status/ancestors").and_then(Value::as_array).cloned().unwrap_or_default();
            if entries.is_empty() && !current.iter().any(is_ours) {
                continue;
            }
            if let Some(g) = entries.first().and_then(|e| e.conditions.first()).map(|c| c.observed_generation)
                && policy.metadata.generation.is_some_and(|cur| cur != g)
            {
                continue; // the applied table predates this spec
            }
            let mut new: Vec<Value> = current.iter().filter(|a| !is_ours(a)).cloned().collect();
            let room = MAX.saturating_sub(new.len());
            for e in entries.into_iter().take(room) {
                let Scope::Ancestor { gateway } = &e.scope else { continue };
                let (gw_ns, gw_name) = gateway.split_once('/').unwrap_or(("", gateway));
                let cur = current.iter().find(|a| {
                    is_ours(a) && {
                        let r = a.get("ancestorRef").cloned().unwrap_or_default();
                        r.get("name").and_then(Value::as_str) == Some(gw_name)
                            && r.get("namespace").and_then(Value::as_str).unwrap_or(&ns) == gw_ns
                    }
                });
                new.push(json!({
                    "ancestorRef": {"group": GROUP, "kind": "Gateway", "namespace": gw_ns, "name": gw_name},
                    "controllerName": controller,
                    "conditions": merge_conditions(cur.and_then(|c| c.get("conditions")), &e.conditions),
                }));
            }
            out.push(Desired { key: (KIND, Some(ns), name), status: json!({"ancestors": new}), precondition: true });
        }
        out
    }

    /// The cached status of an object, unless the object's generation moved
    /// past the one `conditions` were computed for (never write a stale
    /// observedGeneration).
    fn current(&self, kind: &str, ns: Option<&str>, name: &str, conditions: &[Condition]) -> Option<Value> {
        let obj = self.readers.get(kind, ns, name)?;
        let g = conditions.first().map(|c| c.observed_generation);
        if let (Some(g), Some(cur)) = (g, obj.metadata.generation)
            && g != cur
        {
            return None;
        }
        Some(obj.data.get("status").cloned().unwrap_or(Value::Null))
    }

    /// Addresses of the publish Service: (is an IP, value).
    fn addresses(&self) -> Option<Vec<(bool, String)>> {
        let (ns, name) = self.publish.as_ref()?;
        let svc = self.readers.get("Service", Some(ns), name)?;
        let mut out = Vec::new();
        for i in svc.data.pointer("/status/loadBalancer/ingress").and_then(Value::as_array).into_iter().flatten() {
            if let Some(ip) = i.get("ip").and_then(Value::as_str) {
                out.push((true, ip.to_string()));
            } else if let Some(h) = i.get("hostname").and_then(Value::as_str) {
                out.push((false, h.to_string()));
            }
        }
        if out.is_empty() {
            for ip in svc.data.pointer("/spec/externalIPs").and_then(Value::as_array).into_iter().flatten() {
                out.extend(ip.as_str().map(|s| (true, s.to_string())));
            }
        }
        if out.is_empty()
            && let Some(ip) = svc.data.pointer("/spec/clusterIP").and_then(Value::as_str).filter(|ip| *ip != "None")
        {
            out.push((true, ip.to_string()));
        }
        Some(out)
    }
}

/// Ingresses and IngressClasses from the caches (to find the served ones).
fn objects_for_ingress(readers: &Readers) -> Objects {
    let mut o = Objects::default();
    let mut r = Report::default();
    for kind in ["Ingress", "IngressClass"] {
        let Some(k) = Readers::kind(kind) else { continue };
        for obj in readers.all(kind) {
            let mut v = serde_json::to_value(&*obj).unwrap_or_default();
            v["apiVersion"] = json!(k.api_version());
            v["kind"] = json!(kind);
            o.add_value(v, "kubernetes", &mut r);
        }
    }
    o
}

/// `conditions` as status JSON, merged into `current`: conditions of other
/// types stay in place, ours replace theirs, `lastTransitionTime` moves only
/// when the status changes.
fn merge_conditions(current: Option<&Value>, conditions: &[Condition]) -> Value {
    let current: Vec<Value> = current.and_then(Value::as_array).cloned().unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let ours = |c: &Condition| {
        let prev = current.iter().find(|p| p.get("type").and_then(Value::as_str) == Some(c.type_));
        let ltt = prev
            .filter(|p| p.get("status").and_then(Value::as_str) == Some(c.status))
            .and_then(|p| p.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now));
        json!({
            "type": c.type_,
            "status": c.status,
            "reason": c.reason,
            "message": c.message,
            "observedGeneration": c.observed_generation,
            "lastTransitionTime": ltt,
        })
    };
    let mut out: Vec<Value> = current
        .iter()
        .map(|p| {
            let t = p.get("type").and_then(Value::as_str);
            conditions.iter().find(|c| Some(c.type_) == t).map_or_else(|| p.clone(), ours)
        })
        .collect();
    for c in conditions {
        if !current.iter().any(|p| p.get("type").and_then(Value::as_str) == Some(c.type_)) {
            out.push(ours(c));
        }
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_features_are_sorted_and_unique() {
        let mut sorted = SUPPORTED_FEATURES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, SUPPORTED_FEATURES);
        let with = supported_features(true);
        assert!(with.windows(2).all(|w| w[0] < w[1]), "{with:?}");
        assert!(with.contains(&"BackendTLSPolicy") && !supported_features(false).contains(&"BackendTLSPolicy"));
    }

    #[test]
    fn conditions_merge_keeps_others_and_transition_times() {
        let current = json!([
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "observedGeneration": 1, "lastTransitionTime": "2020-01-01T00:00:00Z"},
            {"type": "Other", "status": "True", "reason": "X", "message": "", "observedGeneration": 1, "lastTransitionTime": "2020-01-01T00:00:00Z"},
            {"type": "Programmed", "status": "False", "reason": "Pending", "message": "", "observedGeneration": 1, "lastTransitionTime": "2020-01-01T00:00:00Z"},
        ]);
        let ours = [
            Condition::new("Accepted", true, "Accepted", "ok", 2),
            Condition::new("Programmed", true, "Programmed", "ok", 2),
            Condition::new("ResolvedRefs", true, "ResolvedRefs", "ok", 2),
        ];
        let merged = merge_conditions(Some(&current), &ours);
        let types: Vec<&str> = merged.as_array().into_iter().flatten().filter_map(|c| c["type"].as_str()).collect();
        assert_eq!(types, ["Accepted", "Other", "Programmed", "ResolvedRefs"]);
        assert_eq!(merged[0]["lastTransitionTime"], "2020-01-01T00:00:00Z", "unchanged status keeps its time");
        assert_eq!(merged[0]["observedGeneration"], 2);
        assert_ne!(merged[2]["lastTransitionTime"], "2020-01-01T00:00:00Z", "a changed status moves its time");
        assert_eq!(merged[1], current[1]);
    }
}
