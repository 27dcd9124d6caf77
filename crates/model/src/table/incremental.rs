//! Incremental updates of a compiled [`RouteTable`]: a change to a few
//! routes rebuilds only the host groups those routes were or are attached
//! to. Every other host group, listener and socket is shared (`Arc`) with the
//! previous table, so a one-route change at 5,000 routes neither allocates nor
//! frees the other 4,999 routes' radix trees and candidate lists.
//!
//! [`RouteTable::compile`] stays the reference: for the same routes, an
//! updated table routes every request exactly as a compiled one
//! ([`RouteTable::canonical`] is the same text; the controller's tests check
//! it on real manifests).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use super::{Bind, Candidate, HostRoutes, PathRouter, RouteInput, RouteTable};
use crate::backend::{BackendId, ServiceRef};
use crate::host::HostPattern;
use crate::tls::UpstreamTlsInput;

/// A change to a few routes, relative to the table it is applied to.
#[derive(Debug, Default)]
pub struct TableUpdate {
    /// Routes leaving the table, as they were attached (the previous
    /// translation's [`RouteInput`]s: `listener`, `route` and `hostnames`
    /// are read). Every candidate of these routes (by kind, namespace and
    /// name) leaves the host groups they name. A changed route is both
    /// removed and added.
    pub removed: Vec<RouteInput>,
    /// Routes entering the table (their listener indexes are the table's
    /// input listener indexes, which must be unchanged).
    pub added: Vec<RouteInput>,
    /// Services appended after the table's own: their [`BackendId`]s
    /// continue its numbering.
    pub services: Vec<ServiceRef>,
    /// Appended services spoken to over HTTP/2 with prior knowledge.
    pub h2c_backends: Vec<BackendId>,
    /// Appended services spoken to over TLS.
    pub upstream_tls: Vec<UpstreamTlsInput>,
}

type RouteId<'a> = (&'static str, &'a str, &'a str);

/// Host groups to rebuild, by host text: the pattern and the candidates added.
type Changes = BTreeMap<String, (HostPattern, Vec<Arc<Candidate>>)>;

// === impl RouteTable (incremental) ===

impl RouteTable {
    /// A new table: this one with `update` applied. Host groups that no
    /// removed or added route names are shared with this table.
    pub fn update(&self, update: TableUpdate, generation: u64) -> Self {
        let removed: HashSet<RouteId<'_>> =
            update.removed.iter().map(|r| (r.route.kind, r.route.namespace.as_str(), r.route.name.as_str())).collect();
        // Listener input index -> the socket holding it and its hostname.
        let mut listeners: BTreeMap<usize, (&super::BindKey, &HostPattern)> = BTreeMap::new();
        for (key, bind) in &self.binds {
            for l in &bind.listeners {
                listeners.insert(l.index, (key, &l.hostname));
            }
        }
        // Affected (listener, host) groups, with the candidates added to each.
        let mut affected: BTreeMap<usize, Changes> = BTreeMap::new();
        let mut touch = |r: &RouteInput, candidates: Option<&[Arc<Candidate>]>| {
            let Some((_, listener_host)) = listeners.get(&r.listener) else { return };
            let hosts: &[HostPattern] =
                if r.hostnames.is_empty() { std::slice::from_ref(*listener_host) } else { &r.hostnames };
            let groups = affected.entry(r.listener).or_default();
            for h in hosts {
                let entry = groups.entry(h.to_string()).or_insert_with(|| (h.clone(), Vec::new()));
                if let Some(c) = candidates {
                    entry.1.extend(c.iter().cloned());
                }
            }
        };
        for r in &update.removed {
            touch(r, None);
        }
        for r in &update.added {
            touch(r, Some(&Candidate::of_route(r)));
        }
        let touched_binds: BTreeSet<&super::BindKey> =
            affected.keys().filter_map(|li| listeners.get(li)).map(|(key, _)| *key).collect();
        let binds = self
            .binds
            .iter()
            .map(|(key, bind)| {
                if !touched_binds.contains(key) {
                    return (key.clone(), bind.clone());
                }
                let ls = bind
                    .listeners
                    .iter()
                    .map(|l| {
                        let mut l = l.clone();
                        if let Some(groups) = affected.remove(&l.index) {
                            l.hosts = Arc::new(l.hosts.updated(l.precedence, &removed, groups));
                        }
                        l
                    })
                    .collect();
                (key.clone(), Arc::new(Bind::new(key.clone(), ls, bind.tls.clone())))
            })
            .collect();
        let mut table = Self {
            generation,
            binds,
            services: self.services.clone(),
            service_labels: self.service_labels.clone(),
            h2c: self.h2c.clone(),
            upstream_tls: self.upstream_tls.clone(),
        };
        if !update.services.is_empty() {
            let base = self.services.len();
            let services: Vec<ServiceRef> = self.services.iter().chain(&update.services).cloned().collect();
            let labels = self
                .service_labels
                .iter()
                .cloned()
                .chain(update.services.iter().map(|s| Arc::from(s.to_string())))
                .collect();
            let mut h2c: Vec<bool> = self.h2c.iter().copied().chain(update.services.iter().map(|_| false)).collect();
            for id in &update.h2c_backends {
                if let Some(b) = h2c.get_mut(id.0 as usize).filter(|_| id.0 as usize >= base) {
                    *b = true;
                }
            }
            let mut tls: Vec<_> =
                self.upstream_tls.iter().cloned().chain(update.services.iter().map(|_| None)).collect();
            for t in update.upstream_tls {
                if let Some(slot) = tls.get_mut(t.backend.0 as usize).filter(|_| t.backend.0 as usize >= base) {
                    *slot = Some(t.tls);
                }
            }
            table.services = services.into();
            table.service_labels = labels;
            table.h2c = h2c.into();
            table.upstream_tls = tls.into();
        }
        table
    }

    /// The compiled routes as text with every backend named by its Service
    /// (not its [`BackendId`], which an incremental update numbers
    /// differently): listeners, host indexes, and per host group every
    /// path node's candidate list, in order. Two tables with the same text
    /// route every request the same way. For tests and debugging.
    pub fn canonical(&self) -> String {
        let ids = regex::Regex::new(r"BackendId\((\d+)\)").unwrap_or_else(|e| unreachable!("{e}"));
        let name = |id: usize| self.services.get(id).map_or_else(|| format!("?{id}"), ToString::to_string);
        let mut used = BTreeSet::new();
        let mut out = String::new();
        let mut candidate = |out: &mut String, c: &Candidate| {
            let text = format!(
                "{:?} {:?} created={} fallback={} match={} rule={}/{}/{}#{} filters={:?} backends={:?} timeouts={:?}/{:?}",
                c.path,
                c.conditions,
                c.created,
                c.fallback,
                c.match_index,
                c.rule.route.kind,
                c.rule.route.namespace,
                c.rule.route.name,
                c.rule.index,
                c.rule.filters,
                c.rule.backends,
                c.rule.request_timeout,
                c.rule.backend_timeout,
            );
            let text = ids.replace_all(&text, |m: &regex::Captures<'_>| {
                let id: usize = m[1].parse().unwrap_or(usize::MAX);
                used.insert(id);
                name(id)
            });
            let _ = writeln!(out, "        {text}");
        };
        for (key, bind) in &self.binds {
            let _ = writeln!(out, "bind {key:?} tls={:?}", bind.tls);
            let exact: BTreeMap<_, _> = bind.exact.iter().collect();
            let _ = writeln!(out, "  exact {exact:?}");
            for l in &bind.listeners {
                let _ = writeln!(
                    out,
                    "  listener {} {} port={} {:?} order={} index={} {:?}",
                    l.name, l.hostname, l.port, l.protocol, l.order, l.index, l.precedence
                );
                let h = &l.hosts;
                let key = |gi: usize| h.groups.get(gi).map_or("?", |g| &*g.key);
                let exact: BTreeMap<_, _> = h.exact.iter().map(|(k, gi)| (k, key(*gi))).collect();
                let wildcards: Vec<_> = h.wildcards.iter().map(|(p, gi)| (p.to_string(), key(*gi))).collect();
                let _ = writeln!(out, "   exact {exact:?} wildcards {wildcards:?} any {:?}", h.any.map(key));
                for g in &h.groups {
                    let _ = writeln!(out, "    group {} {:?}", g.key, g.host);
                    for (ni, node) in g.nodes.iter().enumerate() {
                        let _ = writeln!(out, "     node {ni}");
                        for c in node.iter() {
                            candidate(&mut out, c);
                        }
                    }
                    let _ = writeln!(out, "     fallback");
                    for c in g.fallback.iter() {
                        candidate(&mut out, c);
                    }
                    let _ = writeln!(out, "     all");
                    for c in &g.all {
                        candidate(&mut out, c);
                    }
                }
            }
        }
        let services: BTreeSet<String> = used
            .into_iter()
            .map(|id| {
                format!(
                    "service {} h2c={} tls={:?}",
                    name(id),
                    self.h2c.get(id).copied().unwrap_or(false),
                    self.upstream_tls.get(id).and_then(Option::as_ref).map(|t| format!("{t:?}"))
                )
            })
            .collect();
        for s in services {
            let _ = writeln!(out, "{s}");
        }
        out
    }
}

// === impl HostRoutes (incremental) ===

impl HostRoutes {
    /// These host groups with `changes` applied: each named group loses the
    /// candidates of `removed` routes, gains the listed ones, and is rebuilt
    /// (or dropped when empty); the others are shared.
    fn updated(&self, precedence: super::Precedence, removed: &HashSet<RouteId<'_>>, changes: Changes) -> Self {
        let mut edits = changes
            .into_iter()
            .map(|(key, (host, added))| {
                let old = self.groups.binary_search_by(|g| (*g.key).cmp(key.as_str())).ok();
                let mut cands: Vec<Arc<Candidate>> = old
                    .and_then(|gi| self.groups.get(gi))
                    .map(|g| {
                        g.all
                            .iter()
                            .filter(|c| {
                                let r = &c.rule.route;
                                !removed.contains(&(r.kind, r.namespace.as_str(), r.name.as_str()))
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                cands.extend(added);
                cands.sort_by(|a, b| Candidate::precedence(precedence, a, b));
                let group = (!cands.is_empty()).then(|| Arc::new(PathRouter::build(host, key.clone().into(), cands)));
                (key, group)
            })
            .peekable();
        let mut groups = Vec::with_capacity(self.groups.len() + 1);
        for g in &self.groups {
            while let Some((_, new)) = edits.next_if(|(k, _)| k.as_str() < &*g.key) {
                groups.extend(new);
            }
            match edits.next_if(|(k, _)| k.as_str() == &*g.key) {
                Some((_, new)) => groups.extend(new),
                None => groups.push(g.clone()),
            }
        }
        groups.extend(edits.filter_map(|(_, new)| new));
        Self::index(groups)
    }
}
