//! Reflectors for every kind Sluice reads, and the translation input built
//! from their caches.
//!
//! Every kind is watched the same way, as a [`DynamicObject`] with a
//! kube-runtime reflector, and fed as JSON into [`Objects::add_value`], the
//! code path the file source uses. Watching one more kind is one line in
//! [`KINDS`] (plus its arm in `Objects::add_value`).
//!
//! ConfigMaps (BackendTLSPolicy CA bundles) are opt-in ([`CONFIG_MAPS`],
//! `--watch-configmaps`): the base RBAC grants none. Their cache keeps only
//! `data["ca.crt"]` and the object's identity, so a cluster full of large
//! ConfigMaps costs little memory. A kind the API server forbids (403) or
//! does not serve (404) counts as empty and never holds readiness back; a
//! policy whose ConfigMap Sluice cannot see says why in its conditions
//! (`Objects::unseen`).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, reflector::store::Writer};
use sluice_controller::{Objects, Report};
use tokio::sync::mpsc;

/// A kind Sluice watches.
#[derive(Debug)]
pub struct Kind {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Resource (plural).
    pub plural: &'static str,
    /// Namespaced (limited by `--watch-namespace`) or cluster-scoped.
    pub namespaced: bool,
    /// Field selector (Secrets: only `kubernetes.io/tls`).
    pub fields: Option<&'static str>,
    /// Strips each object before it is cached (what translation does not
    /// read need not stay in memory).
    pub trim: Option<fn(&mut DynamicObject)>,
}

const fn kind(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> Kind {
    Kind { group, version, kind, plural, namespaced, fields: None, trim: None }
}

const GW: &str = "gateway.networking.k8s.io";

/// Every kind Sluice watches in Kubernetes mode.
pub const KINDS: &[Kind] = &[
    kind(GW, "v1", "GatewayClass", "gatewayclasses", false),
    kind(GW, "v1", "Gateway", "gateways", true),
    kind(GW, "v1", "HTTPRoute", "httproutes", true),
    kind(GW, "v1", "ReferenceGrant", "referencegrants", true),
    kind("networking.k8s.io", "v1", "Ingress", "ingresses", true),
    kind("networking.k8s.io", "v1", "IngressClass", "ingressclasses", false),
    kind("", "v1", "Service", "services", true),
    kind("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true),
    kind("", "v1", "Namespace", "namespaces", false),
    Kind { fields: Some("type=kubernetes.io/tls"), ..kind("", "v1", "Secret", "secrets", true) },
    kind("policy.sluice.dev", "v1alpha1", "RateLimitPolicy", "ratelimitpolicies", true),
    kind(GW, "v1", "BackendTLSPolicy", "backendtlspolicies", true),
];

/// ConfigMaps, watched only with `--watch-configmaps` (CA bundles of
/// BackendTLSPolicies), cached as their `ca.crt` alone.
pub const CONFIG_MAPS: Kind = Kind { trim: Some(trim_config_map), ..kind("", "v1", "ConfigMap", "configmaps", true) };

/// ConfigMaps per list page (kube-runtime's default is 500).
const CONFIG_MAP_PAGE: u32 = 50;

/// What a ConfigMap cache keeps: identity, creation time and `ca.crt`.
fn trim_config_map(o: &mut DynamicObject) {
    let m = &mut o.metadata;
    m.annotations = None;
    m.labels = None;
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
    let ca = o.data.pointer("/data/ca.crt").cloned();
    o.data = match ca {
        Some(ca) => serde_json::json!({"data": {"ca.crt": ca}}),
        None => serde_json::json!({}),
    };
}

impl Kind {
    /// The kube `ApiResource`.
    pub fn resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_string(),
            version: self.version.to_string(),
            api_version: self.api_version(),
            kind: self.kind.to_string(),
            plural: self.plural.to_string(),
        }
    }

    /// `group/version` (`version` for core).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }
}

/// What a watch stream reports to the reload loop.
#[derive(Debug)]
pub enum WatchEvent {
    /// A (re-)list started: the stream's cache is being rebuilt (it is
    /// swapped whole when the list completes).
    Relisting(usize),
    /// The (re-)list finished: the stream's cache is complete.
    Synced(usize),
    /// An object was added, changed or deleted.
    Changed(usize),
    /// The kind is not served (its CRD is not installed): it counts as
    /// synced and empty, and the watch keeps retrying.
    Missing(usize),
    /// Listing the kind is forbidden (403, RBAC): like `Missing`, it counts
    /// as synced and empty, and the watch keeps retrying.
    Forbidden(usize),
    /// The watch failed (it is retried with backoff). `relist`: the
    /// watcher must list again (410 Gone, failed list), so the stream's cache
    /// is stale until it has.
    Failed { stream: usize, relist: bool },
}

/// One reflector: a kind in one namespace (or all).
pub struct Stream {
    /// The kind.
    pub kind: &'static Kind,
    /// The namespace, `None` for all.
    pub namespace: Option<String>,
    /// Its cache.
    pub store: Store<DynamicObject>,
    /// Whether the cache holds a complete list (false during a re-list).
    pub synced: bool,
    /// The last list was forbidden (403): the cache is empty by necessity.
    pub forbidden: bool,
    /// The cache changed since `typed` was refreshed.
    dirty: bool,
    /// Each object as translation input, by (namespace, name), with the
    /// resourceVersion it was converted at: a change re-parses one object,
    /// and an EndpointSlice event touches only EndpointSlices.
    typed: BTreeMap<(Option<String>, String), Typed>,
}

/// One object converted for translation.
struct Typed {
    resource_version: Option<String>,
    objects: Objects,
    report: Report,
}

/// The caches of every watched kind.
pub struct Caches {
    /// The reflectors, in [`KINDS`] order (then [`CONFIG_MAPS`]).
    pub streams: Vec<Stream>,
    /// `--configmap-selector` when ConfigMaps are watched (`""`: all).
    config_maps: Option<String>,
    /// The `Objects::unseen` notes last handed to translation.
    unseen: BTreeMap<&'static str, String>,
}

/// Which optional kinds to watch.
#[derive(Clone, Debug, Default)]
pub struct OptIn {
    /// Watch ConfigMaps with this label selector (`""`: every ConfigMap
    /// in the watched namespaces); `None`: not at all.
    pub config_maps: Option<String>,
}

impl Caches {
    /// Starts one reflector per kind (per namespace in `namespaces` for
    /// namespaced kinds, when given; Services also in `publish_ns`, the
    /// publish Service's namespace), and for the kinds `opt_in` names,
    /// reporting to `tx`.
    pub fn start(
        client: &kube::Client,
        namespaces: &[String],
        publish_ns: Option<&str>,
        opt_in: &OptIn,
        tx: &mpsc::UnboundedSender<WatchEvent>,
    ) -> Self {
        let mut streams = Vec::new();
        let optional = opt_in.config_maps.as_ref().map(|_| &CONFIG_MAPS);
        for k in KINDS.iter().chain(optional) {
            let scopes: Vec<Option<String>> = if k.namespaced && !namespaces.is_empty() {
                let mut ns = namespaces.to_vec();
                if k.kind == "Service"
                    && let Some(p) = publish_ns
                {
                    ns.push(p.to_string());
                }
                ns.sort();
                ns.dedup();
                ns.into_iter().map(Some).collect()
            } else {
                vec![None]
            };
            for ns in scopes {
                let ar = k.resource();
                let api: Api<DynamicObject> = match &ns {
                    Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                    None => Api::all_with(client.clone(), &ar),
                };
                let mut config = watcher::Config::default();
                if let Some(f) = k.fields {
                    config = config.fields(f);
                }
                if k.kind == CONFIG_MAPS.kind {
                    // Smaller list pages: a page of large ConfigMaps is held
                    // whole while it is parsed, before trimming.
                    config = config.page_size(CONFIG_MAP_PAGE);
                    if let Some(labels) = opt_in.config_maps.as_deref().filter(|l| !l.is_empty()) {
                        config = config.labels(labels);
                    }
                }
                let trim = k.trim.unwrap_or(|_| {});
                let writer = Writer::new(ar);
                let store = writer.as_reader();
                let index = streams.len();
                let tx = tx.clone();
                let what = format!("{}{}", k.kind, ns.as_deref().map(|n| format!(" in {n}")).unwrap_or_default());
                tokio::spawn(async move {
                    let stream =
                        reflector::reflector(writer, watcher::watcher(api, config).modify(trim)).default_backoff();
                    let mut stream = std::pin::pin!(stream);
                    while let Some(ev) = stream.next().await {
                        let msg = match ev {
                            Ok(Event::Init) => WatchEvent::Relisting(index),
                            Ok(Event::InitApply(_)) => continue,
                            Ok(Event::InitDone) => WatchEvent::Synced(index),
                            Ok(Event::Apply(_) | Event::Delete(_)) => WatchEvent::Changed(index),
                            Err(watcher::Error::InitialListFailed(kube::Error::Api(s))) if s.code == 404 => {
                                WatchEvent::Missing(index)
                            }
                            Err(watcher::Error::InitialListFailed(kube::Error::Api(s))) if s.code == 403 => {
                                WatchEvent::Forbidden(index)
                            }
                            Err(e) => {
                                tracing::warn!(watch = %what, error = %e, "Watch failed; retrying");
                                let relist = match &e {
                                    watcher::Error::WatchError(s) => s.code == 410,
                                    watcher::Error::InitialListFailed(_) | watcher::Error::NoResourceVersion => true,
                                    _ => false,
                                };
                                WatchEvent::Failed { stream: index, relist }
                            }
                        };
                        if tx.send(msg).is_err() {
                            break;
                        }
                    }
                });
                streams.push(Stream {
                    kind: k,
                    namespace: ns,
                    store,
                    synced: false,
                    forbidden: false,
                    dirty: true,
                    typed: BTreeMap::new(),
                });
            }
        }
        Self { streams, config_maps: opt_in.config_maps.clone(), unseen: BTreeMap::new() }
    }

    /// Records a watch event; returns whether the caches changed.
    pub fn on(&mut self, ev: &WatchEvent) -> bool {
        match *ev {
            WatchEvent::Relisting(i) => {
                self.unsync(i);
                false
            }
            WatchEvent::Synced(i) => {
                if let Some(s) = self.streams.get_mut(i) {
                    s.synced = true;
                    s.forbidden = false;
                    s.dirty = true;
                }
                true
            }
            WatchEvent::Forbidden(i) => {
                let Some(s) = self.streams.get_mut(i) else { return false };
                if s.synced || !s.store.is_empty() {
                    return false;
                }
                tracing::warn!(
                    kind = s.kind.kind,
                    namespace = s.namespace.as_deref().unwrap_or("*"),
                    "Listing forbidden by RBAC (403); treated as empty, retrying"
                );
                s.synced = true;
                s.forbidden = true;
                s.dirty = true;
                true
            }
            WatchEvent::Missing(i) => {
                let Some(s) = self.streams.get_mut(i) else { return false };
                if s.synced || !s.store.is_empty() {
                    return false;
                }
                tracing::warn!(
                    kind = s.kind.kind,
                    api_version = s.kind.api_version(),
                    "Kind not served by the API server (CRD not installed?); treated as empty, retrying"
                );
                s.synced = true;
                s.dirty = true;
                true
            }
            WatchEvent::Changed(i) => {
                if let Some(s) = self.streams.get_mut(i) {
                    s.dirty = true;
                }
                true
            }
            WatchEvent::Failed { stream, relist } => {
                if relist {
                    self.unsync(stream);
                }
                false
            }
        }
    }

    fn unsync(&mut self, i: usize) {
        if let Some(s) = self.streams.get_mut(i) {
            if s.synced {
                tracing::info!(
                    kind = s.kind.kind,
                    namespace = s.namespace.as_deref().unwrap_or("*"),
                    "Re-listing; the last good table keeps serving until every cache is synced"
                );
            }
            s.synced = false;
        }
    }

    /// Whether every cache holds a complete list.
    pub fn synced(&self) -> bool {
        self.streams.iter().all(|s| s.synced)
    }

    /// The objects of every cache, as translation input (status and
    /// bookkeeping metadata stripped, so a status write never recompiles),
    /// in a stable order.
    pub fn objects(&mut self) -> (Objects, Report) {
        let mut objects = Objects::default();
        let mut report = Report::default();
        for s in &mut self.streams {
            s.refresh();
            for t in s.typed.values() {
                objects.extend_from(&t.objects);
                report.diagnostics.extend(t.report.diagnostics.iter().cloned());
            }
        }
        self.unseen = self.unseen_now();
        objects.unseen = self.unseen.clone();
        (objects, report)
    }

    /// Brings the translation input up to date with the caches; returns
    /// the kinds whose input changed (none when only statuses or
    /// bookkeeping did).
    pub fn refresh(&mut self) -> Vec<&'static str> {
        let mut kinds: Vec<&'static str> =
            self.streams.iter_mut().filter_map(|s| s.refresh().then_some(s.kind.kind)).collect();
        if self.unseen_now() != self.unseen {
            kinds.push(CONFIG_MAPS.kind);
        }
        kinds.dedup();
        kinds
    }

    /// Why ConfigMaps a policy names may be invisible (for its conditions).
    fn unseen_now(&self) -> BTreeMap<&'static str, String> {
        let cm = CONFIG_MAPS.kind;
        let why = match &self.config_maps {
            None => Some(
                "Sluice does not watch ConfigMaps; start it with --watch-configmaps and grant it read access \
                 to ConfigMaps (deploy/components/backend-tls-ca)"
                    .to_string(),
            ),
            Some(_) if self.streams.iter().any(|s| s.kind.kind == cm && s.forbidden) => Some(
                "Sluice may not list ConfigMaps (403 Forbidden); grant it read access to ConfigMaps \
                 (deploy/components/backend-tls-ca)"
                    .to_string(),
            ),
            Some(sel) if !sel.is_empty() => {
                Some(format!("Sluice watches only ConfigMaps matching --configmap-selector {sel:?}"))
            }
            Some(_) => None,
        };
        why.map(|w| BTreeMap::from([(cm, w)])).unwrap_or_default()
    }

    /// Every cached EndpointSlice, converting only changed caches; the rest
    /// of the input is left as it was.
    pub fn endpoint_slices(&mut self) -> Vec<EndpointSlice> {
        let mut out = Vec::new();
        for s in self.streams.iter_mut().filter(|s| s.kind.kind == "EndpointSlice") {
            s.refresh();
            for t in s.typed.values() {
                out.extend_from_slice(&t.objects.endpoint_slices);
            }
        }
        out
    }

    /// Read handles on the caches (for the status writer).
    pub fn readers(&self) -> Readers {
        Readers { stores: self.streams.iter().map(|s| (s.kind, s.store.clone())).collect() }
    }
}

/// Read handles on the caches.
#[derive(Clone)]
pub struct Readers {
    stores: Vec<(&'static Kind, Store<DynamicObject>)>,
}

impl Readers {
    /// Every cached object of `kind`.
    pub fn all(&self, kind: &str) -> Vec<Arc<DynamicObject>> {
        self.stores.iter().filter(|(k, _)| k.kind == kind).flat_map(|(_, s)| s.state()).collect()
    }

    /// A cached object.
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Arc<DynamicObject>> {
        self.stores.iter().filter(|(k, _)| k.kind == kind).find_map(|(_, s)| {
            s.find(|o| o.metadata.name.as_deref() == Some(name) && o.metadata.namespace.as_deref() == namespace)
        })
    }

    /// The kind named `kind`.
    pub fn kind(kind: &str) -> Option<&'static Kind> {
        KINDS.iter().chain([&CONFIG_MAPS]).find(|k| k.kind == kind)
    }
}

impl Stream {
    /// Brings `typed` up to date with the cache: objects whose
    /// resourceVersion is unchanged are not parsed again.
    /// Returns whether the translation input changed (a status-only
    /// change, say, does not).
    fn refresh(&mut self) -> bool {
        if !self.dirty {
            return false;
        }
        let mut changed = false;
        let mut next = BTreeMap::new();
        for obj in self.store.state() {
            let key = (obj.metadata.namespace.clone(), obj.metadata.name.clone().unwrap_or_default());
            let old = self.typed.remove(&key);
            let t = match old {
                Some(t) if t.resource_version.is_some() && t.resource_version == obj.metadata.resource_version => t,
                _ => {
                    let mut objects = Objects::default();
                    let mut report = Report::default();
                    objects.add_value(translation_input(self.kind, &obj), "kubernetes", &mut report);
                    changed |= old.is_none_or(|o| {
                        !(o.objects.same_except_endpoints(&objects)
                            && o.objects.endpoint_slices == objects.endpoint_slices
                            && o.report.diagnostics == report.diagnostics)
                    });
                    Typed { resource_version: obj.metadata.resource_version.clone(), objects, report }
                }
            };
            next.insert(key, t);
        }
        // Objects left in `typed` were deleted.
        changed |= !self.typed.is_empty();
        self.typed = next;
        self.dirty = false;
        changed
    }
}

/// An object as JSON for [`Objects::add_value`]: `apiVersion`/`kind` set
/// (list items carry none), `status`, `resourceVersion` and `managedFields`
/// dropped.
fn translation_input(kind: &Kind, obj: &DynamicObject) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        map.insert("apiVersion".into(), kind.api_version().into());
        map.insert("kind".into(), kind.kind.into());
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_into_objects() {
        // Each watched kind is one `Objects::add_value` knows.
        for k in KINDS.iter().chain([&CONFIG_MAPS]) {
            let obj = DynamicObject::new("x", &k.resource()).within("ns").data(serde_json::json!({
                "status": {"anything": 1},
            }));
            let v = translation_input(k, &obj);
            assert!(v.get("status").is_none());
            let mut objects = Objects::default();
            let mut report = Report::default();
            objects.add_value(v, "test", &mut report);
            // Some kinds need a spec to parse; what matters is that the kind
            // is recognised (an error names it) rather than skipped.
            assert!(objects.len() == 1 || report.has_errors(), "{} was skipped", k.kind);
        }
    }

    #[test]
    fn config_maps_are_cached_as_their_ca_bundle_only() {
        let mut obj = DynamicObject::new("ca", &CONFIG_MAPS.resource()).within("ns").data(serde_json::json!({
            "data": {"ca.crt": "PEM", "other": "x".repeat(100_000)},
            "binaryData": {"blob": "AAAA"},
        }));
        obj.metadata.annotations =
            Some([("kubectl.kubernetes.io/last-applied-configuration".into(), "{}".into())].into());
        obj.metadata.labels = Some([("a".into(), "b".into())].into());
        trim_config_map(&mut obj);
        assert_eq!(obj.data, serde_json::json!({"data": {"ca.crt": "PEM"}}));
        assert!(obj.metadata.annotations.is_none() && obj.metadata.labels.is_none());
        assert_eq!(obj.metadata.name.as_deref(), Some("ca"));
        let mut objects = Objects::default();
        objects.add_value(translation_input(&CONFIG_MAPS, &obj), "test", &mut Report::default());
        let data = objects.config_maps[0].data.clone().unwrap_or_default();
        assert_eq!(data.get("ca.crt").map(String::as_str), Some("PEM"));
    }
}
