//! The reload loop's incremental paths: a change to a few HTTPRoutes is
//! translated and compiled on its own ([`sluice_controller::Incremental`]);
//! from files, a change confined to files holding only HTTPRoutes is applied
//! without reading or copying the rest of the config.

use std::sync::Arc;
use std::time::Instant;

use sluice_controller::objects::{name, namespace};
use sluice_controller::source::file::HttpRoute;
use sluice_controller::{Prepared, Report, endpoints};
use sluice_model::{Endpoints, RouteTable};

use super::Controller;

impl Controller {
    /// Commits a prepared incremental update on top of the current table:
    /// the new table and its endpoints. `objects`: the new objects when not
    /// yet in `self.objects` (their Services and EndpointSlices are the same
    /// either way). The report is completed by [`Controller::publish`].
    pub(super) fn commit_incremental(
        &mut self,
        prepared: Prepared,
        objects: Option<&sluice_controller::Objects>,
        generation: u64,
    ) -> (RouteTable, Arc<Endpoints>) {
        let objects = objects.unwrap_or(&self.objects);
        let changed = prepared.changed();
        let current = self.snapshot.load_full();
        let table = self.incremental.commit(prepared, &current.routes, generation);
        // Same Services and EndpointSlices: endpoints are reused, and
        // appended services get theirs.
        let known = current.routes.services().len();
        let eps = match table.services().get(known..) {
            Some(more) if !more.is_empty() => Arc::new(current.endpoints.appended(endpoints::build(more, objects))),
            _ => current.endpoints.clone(),
        };
        tracing::debug!(routes = changed, "Incremental update");
        (table, eps)
    }

    /// Applies a change of HTTPRoutes only (from files holding nothing
    /// else): the routes `removed` (`(namespace, name)`) left or changed,
    /// `added` came or changed. `None` when it cannot be applied this way
    /// (no table yet, a name clash, rate limits, an invalid route, …): the
    /// caller then applies the whole config, which is the reference.
    pub(crate) fn apply_routes(
        &mut self,
        removed: &[(String, String)],
        added: Vec<std::sync::Arc<HttpRoute>>,
        since: Instant,
    ) -> Option<Result<bool, Report>> {
        let started = Instant::now();
        if self.generation == 0 {
            return None;
        }
        let key = |r: &HttpRoute| (namespace(&r.metadata).to_string(), name(&r.metadata).to_string());
        // The current versions of the routes leaving; every name must be
        // known and unique, and new names must not clash with staying ones.
        let mut leaving = Vec::with_capacity(removed.len());
        for (i, r) in self.objects.http_routes.iter().enumerate() {
            let k = (namespace(&r.metadata), name(&r.metadata));
            if removed.iter().any(|(ns, n)| (ns.as_str(), n.as_str()) == k) {
                leaving.push(i);
            } else if added.iter().any(|a| (namespace(&a.metadata), name(&a.metadata)) == k) {
                return None;
            }
        }
        let mut keys: Vec<_> = added.iter().map(|r| key(r)).collect();
        keys.sort();
        keys.dedup();
        let mut gone: Vec<&(String, String)> = removed.iter().collect();
        gone.sort();
        gone.dedup();
        if leaving.len() != removed.len() || gone.len() != removed.len() || keys.len() != added.len() {
            return None;
        }
        // A file rewritten with the same route in it changes nothing.
        let old: Vec<&HttpRoute> =
            leaving.iter().filter_map(|&i| self.objects.http_routes.get(i)).map(|r| &**r).collect();
        let same = |a: &&HttpRoute| old.contains(a);
        let changed_old: Vec<&HttpRoute> = old.iter().copied().filter(|o| !added.iter().any(|a| &**a == *o)).collect();
        let changed_new: Vec<&HttpRoute> = added.iter().map(|a| &**a).filter(|a| !same(a)).collect();
        if changed_old.is_empty() && changed_new.is_empty() {
            return Some(Ok(false));
        }
        let prepared = self
            .incremental
            .prepare_changes(&self.objects, &changed_old, &changed_new, &self.options)
            .filter(|p| !(self.strict && p.has_errors()))?;
        let generation = self.generation + 1;
        let (table, eps) = self.commit_incremental(prepared, None, generation);
        // The objects move on without copying the unchanged ones.
        let mut gone = Vec::with_capacity(leaving.len());
        for i in leaving.into_iter().rev() {
            gone.push(self.objects.http_routes.swap_remove(i));
        }
        self.objects.http_routes.extend(added);
        self.reclaim.drop_later(gone);
        self.publish(table, eps, Report::default(), true, since, started);
        Some(Ok(true))
    }
}
