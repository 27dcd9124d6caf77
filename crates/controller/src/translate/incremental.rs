//! Incremental translation: when only a few HTTPRoutes changed, translate
//! just those (their previous version, to know what they contributed, and
//! their new one) and update the compiled table in place of a full
//! [`translate`](super::translate) + [`RouteTable::compile`].
//!
//! Why this is exact: with every other kind of object unchanged, an
//! HTTPRoute's translation (its attachments, rules, backend resolution,
//! ReferenceGrants, conditions and diagnostics) depends only on the route
//! itself, the Gateways' listeners and the unchanged objects, never on the
//! other routes; precedence between routes sharing a host is settled when
//! the affected host groups are rebuilt from their full candidate lists.
//! What differs from a full translation is the numbering of services
//! ([`BackendId`]s continue the table's; new ones are appended) and the
//! order of report entries. Whenever one of the assumptions does not hold
//! (another kind changed, rate limit policies, duplicate names, many
//! changes), [`Incremental::prepare`] returns `None` and the caller runs the
//! full translation, which stays the reference (see the tests, which compare
//! both on the conformance manifests).

use std::collections::{BTreeMap, HashMap, HashSet};

use gateway_api::httproutes::HttpRoute;
use sluice_model::{BackendId, RouteTable, ServiceRef, TableInput, TableUpdate};

use super::gateway::{self, ListenerState};
use super::{Options, Services, backendtls};
use crate::objects::{Objects, name, namespace};
use crate::report::{Diagnostic, ObjectStatus, Report, Scope, Severity};

/// Most changed routes an incremental update takes; more go the full way.
const MAX_CHANGED: usize = 64;
/// Most services appended since the last full translation (unused ones are
/// only dropped by a full translation).
const MAX_APPENDED: usize = 1024;

/// What reloads keep between them to re-translate only the HTTPRoutes that
/// changed. Reset after every full translation ([`Incremental::reset`]).
#[derive(Debug, Default)]
pub struct Incremental {
    /// The translation report of the current table.
    report: Report,
    /// Errors in `report`.
    errors: usize,
    /// [`BackendId`]s of the current table's services.
    ids: BTreeMap<ServiceRef, BackendId>,
    /// Services appended since the last full translation.
    appended: usize,
    /// Whether incremental updates may follow the current table.
    enabled: bool,
}

/// An incremental update, translated but not applied yet.
#[derive(Debug)]
pub struct Prepared {
    update: TableUpdate,
    removed: Report,
    added: Report,
    /// `attachedRoutes` change per Gateway listener status:
    /// (gateway namespace, gateway name, listener name) → delta.
    attached: Vec<((String, String, String), i64)>,
    errors: usize,
    changed: usize,
}

type Key<'a> = (&'a str, &'a str);

// === impl Incremental ===

impl Incremental {
    /// Records a full translation whose `table` is now current. `report` is
    /// its [`Translation::report`](super::Translation::report); with rate
    /// limits attached (`rate_limits`) or BackendTLSPolicies present, later
    /// changes go the full way.
    pub fn reset(&mut self, table: &RouteTable, report: &Report, objects: &Objects, rate_limits: bool) {
        self.ids = table.services().iter().enumerate().map(|(i, s)| (s.clone(), backend_id(i))).collect();
        self.report = report.clone();
        self.errors = count_errors(&report.diagnostics);
        self.appended = 0;
        // BackendTLSPolicy status lists the Gateways whose accepted routes
        // reach each targeted Service (`backendtls::ancestors`), computed
        // over the whole config: with such policies, changes go the full way.
        self.enabled =
            !rate_limits && objects.rate_limit_policies.is_empty() && objects.backend_tls_policies.is_empty();
    }

    /// The translation report of the current table.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Translates the change from `old` (the current table's objects) to
    /// `new` when only a few HTTPRoutes differ; `None` when a full
    /// translation is needed.
    pub fn prepare(&self, old: &Objects, new: &Objects, options: &Options) -> Option<Prepared> {
        if !self.enabled || self.appended > MAX_APPENDED || !same_except_routes(old, new) {
            return None;
        }
        let (removed, added) = route_changes(old, new)?;
        self.prepare_changes(new, &removed, &added, options)
    }

    /// [`Incremental::prepare`] for a change already known: `objects` (the
    /// current table's, or the new ones: everything but HTTPRoutes is the
    /// same), the old versions of the HTTPRoutes that left or changed, and
    /// the new versions of those that came or changed. `None` when a full
    /// translation is needed.
    pub fn prepare_changes(
        &self,
        objects: &Objects,
        removed: &[&HttpRoute],
        added: &[&HttpRoute],
        options: &Options,
    ) -> Option<Prepared> {
        let new = objects;
        let changed = removed.len() + added.len();
        if !self.enabled || self.appended > MAX_APPENDED || changed == 0 || changed > MAX_CHANGED {
            return None;
        }
        // Rate limit filters are resolved by `ratelimit::attach` over the
        // whole config.
        let policy_ref = |r: &HttpRoute| {
            r.spec
                .rules
                .iter()
                .flatten()
                .flat_map(|rule| rule.filters.iter().flatten())
                .any(crate::ratelimit::is_policy_ref)
        };
        if removed.iter().chain(added).any(|r| policy_ref(r)) {
            return None;
        }
        let mut scratch = TableInput::default();
        let (_, mut listeners) = gateway::listener_states(new, options, &mut scratch, &mut Report::default());
        // Listener statuses are patched by name: names must be unique.
        let mut names = HashSet::new();
        if !listeners.iter().all(|l| names.insert((l.gateway as *const _, l.spec.name.as_str()))) {
            return None;
        }
        let base_listeners = scratch.listeners.len();
        let tls = backendtls::Policies::build(new, &mut Report::default());
        let index = crate::endpoints::Index::new(new);
        // One interner for both versions: the old versions' services are all
        // in the table already (they were interned when it was built).
        let mut services = Services { index, tls, base: Some(&self.ids), ..Services::default() };
        let (old_inputs, removed_report) = attach(removed, new, &mut listeners, &mut services);
        let old_counts: Vec<u32> = listeners.iter_mut().map(|l| std::mem::take(&mut l.attached)).collect();
        let (new_inputs, added_report) = attach(added, new, &mut listeners, &mut services);
        debug_assert_eq!(scratch.listeners.len(), base_listeners);
        let attached = listeners
            .iter()
            .zip(old_counts)
            .filter(|(l, old)| l.attached != *old)
            .map(|(l, old)| {
                let gw = &l.gateway.metadata;
                let key = (namespace(gw).to_string(), name(gw).to_string(), l.spec.name.clone());
                (key, i64::from(l.attached) - i64::from(old))
            })
            .collect();
        let errors = (self.errors + count_errors(&added_report.diagnostics))
            .saturating_sub(count_errors(&removed_report.diagnostics));
        Some(Prepared {
            update: TableUpdate {
                removed: old_inputs,
                added: new_inputs,
                services: services.list,
                h2c_backends: services.h2c,
                upstream_tls: services.upstream_tls,
            },
            removed: removed_report,
            added: added_report,
            attached,
            errors,
            changed,
        })
    }

    /// Applies `prepared` to `table` (the current table, whose objects
    /// `prepare` was given as `old`): the new table, and this state (its
    /// [`Incremental::report`]) moves on to it.
    pub fn commit(&mut self, prepared: Prepared, table: &RouteTable, generation: u64) -> RouteTable {
        let Prepared { update, removed, added, attached, errors, .. } = prepared;
        let base = table.services().len();
        for (i, s) in update.services.iter().enumerate() {
            self.ids.insert(s.clone(), backend_id(base + i));
        }
        self.appended += update.services.len();
        let next = table.update(update, generation);
        let report = &mut self.report;
        for s in &removed.statuses {
            if let Some(i) = report.statuses.iter().position(|x| same_status(x, s)) {
                report.statuses.remove(i);
            }
        }
        for d in &removed.diagnostics {
            if let Some(i) = report.diagnostics.iter().position(|x| x == d) {
                report.diagnostics.remove(i);
            }
        }
        for ((ns, gw, listener), delta) in attached {
            for s in report.statuses.iter_mut().filter(|s| s.kind == "Gateway" && s.namespace == ns && s.name == gw) {
                if let Scope::Listener { name, attached_routes, .. } = &mut s.scope
                    && *name == listener
                {
                    *attached_routes = u32::try_from(i64::from(*attached_routes) + delta).unwrap_or(0);
                }
            }
        }
        report.statuses.extend(added.statuses);
        report.diagnostics.extend(added.diagnostics);
        self.errors = errors;
        next
    }
}

// === impl Prepared ===

impl Prepared {
    /// Whether the translation report after this update has errors.
    pub fn has_errors(&self) -> bool {
        self.errors > 0
    }

    /// Routes removed, added or changed (a changed one counts twice).
    pub fn changed(&self) -> usize {
        self.changed
    }

    /// Diagnostics of the changed routes' new versions.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.added.diagnostics
    }
}

fn backend_id(i: usize) -> BackendId {
    BackendId(u32::try_from(i).unwrap_or(u32::MAX))
}

fn count_errors(d: &[Diagnostic]) -> usize {
    d.iter().filter(|d| d.severity == Severity::Error).count()
}

fn same_status(a: &ObjectStatus, b: &ObjectStatus) -> bool {
    a.kind == b.kind
        && a.namespace == b.namespace
        && a.name == b.name
        && a.scope == b.scope
        && a.conditions == b.conditions
}

/// Translates `routes` (oldest first, as the full translation does) against
/// `listeners`: their table inputs and their report.
fn attach(
    routes: &[&HttpRoute],
    objects: &Objects,
    listeners: &mut [ListenerState<'_>],
    services: &mut Services<'_>,
) -> (Vec<sluice_model::RouteInput>, Report) {
    let mut sorted = routes.to_vec();
    sorted.sort_by_key(|r| gateway::order_key(&r.metadata));
    let mut input = TableInput::default();
    let mut report = Report::default();
    for r in sorted {
        gateway::attach_route(r, objects, listeners, &mut input, services, &mut report);
    }
    (input.routes, report)
}

/// Whether everything but HTTPRoutes is the same.
fn same_except_routes(a: &Objects, b: &Objects) -> bool {
    a.gateway_classes == b.gateway_classes
        && a.gateways == b.gateways
        && a.reference_grants == b.reference_grants
        && a.ingresses == b.ingresses
        && a.ingress_classes == b.ingress_classes
        && a.services == b.services
        && a.endpoint_slices == b.endpoint_slices
        && a.secrets == b.secrets
        && a.namespaces == b.namespaces
        && a.rate_limit_policies == b.rate_limit_policies
        && a.backend_tls_policies == b.backend_tls_policies
        && a.config_maps == b.config_maps
}

/// HTTPRoutes only in `old` or changed (their old version), and only in
/// `new` or changed (their new version); `None` when names repeat.
#[allow(clippy::type_complexity)]
fn route_changes<'a>(old: &'a Objects, new: &'a Objects) -> Option<(Vec<&'a HttpRoute>, Vec<&'a HttpRoute>)> {
    let key = |r: &'a HttpRoute| -> Key<'a> { (namespace(&r.metadata), name(&r.metadata)) };
    let mut before: HashMap<Key<'a>, &'a HttpRoute> = HashMap::with_capacity(old.http_routes.len());
    for r in old.http_routes.iter().map(|r| &**r) {
        if before.insert(key(r), r).is_some() {
            return None;
        }
    }
    let mut removed = Vec::new();
    let mut added = Vec::new();
    let mut seen = HashSet::with_capacity(new.http_routes.len());
    for r in new.http_routes.iter().map(|r| &**r) {
        let k = key(r);
        if !seen.insert(k) {
            return None;
        }
        match before.remove(&k) {
            // Shared (`Arc`) with the previous objects, or equal.
            Some(o) if std::ptr::eq(o, r) || o == r => {}
            Some(o) => {
                removed.push(o);
                added.push(r);
            }
            None => added.push(r),
        }
        if removed.len() + added.len() > MAX_CHANGED {
            return None;
        }
    }
    removed.extend(before.into_values());
    Some((removed, added))
}

#[cfg(test)]
mod tests;
