//! Weighted backend groups and endpoint sets.
//!
//! Routes name backends by [`BackendId`]; the addresses behind an id live
//! in [`Endpoints`], which is rebuilt and swapped on its own when
//! EndpointSlices change, without recompiling routes.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::filter::Filter;

/// A Service port a route sends traffic to: `namespace/name:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    /// Service namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Service port number (not the target port).
    pub port: u16,
}

/// Index of a [`ServiceRef`] in [`crate::RouteTable::services`] and in
/// [`Endpoints`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendId(pub u32);

/// Where a share of traffic goes.
#[derive(Clone, Debug)]
pub enum BackendTarget {
    /// A resolved Service port.
    Service(BackendId),
    /// An invalid backendRef: its share of traffic answers 500.
    Invalid,
}

/// One weighted entry of a rule's backendRefs.
#[derive(Clone, Debug)]
pub struct WeightedBackend {
    /// Where this share goes.
    pub target: BackendTarget,
    /// Its weight (0 means no traffic).
    pub weight: u32,
    /// Filters that run only when this backend is picked.
    pub filters: Arc<[Filter]>,
}

/// A rule's backends with precomputed cumulative weights.
#[derive(Clone, Debug, Default)]
pub struct BackendGroup {
    backends: Arc<[WeightedBackend]>,
    cumulative: Arc<[u64]>,
    total: u64,
}

/// An immutable list of ready endpoint addresses with a round-robin cursor.
#[derive(Debug, Default)]
pub struct EndpointSet {
    addrs: Box<[SocketAddr]>,
    /// `addrs` as URI authorities, built once (the proxy dials by URI).
    authorities: Box<[http::uri::Authority]>,
    next: AtomicUsize,
}

/// Endpoint sets indexed by [`BackendId`], aligned with the route table's
/// service list. `None` marks a Service that exists but whose port could not
/// be resolved.
#[derive(Debug, Default)]
pub struct Endpoints {
    sets: Box<[Arc<EndpointSet>]>,
}

// === impl ServiceRef ===

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

// === impl BackendGroup ===

impl BackendGroup {
    /// Builds a group, precomputing cumulative weights.
    pub fn new(backends: Vec<WeightedBackend>) -> Self {
        let mut total = 0u64;
        let cumulative = backends
            .iter()
            .map(|b| {
                total += u64::from(b.weight);
                total
            })
            .collect();
        Self { backends: backends.into(), cumulative, total }
    }

    /// The backends in declaration order.
    pub fn backends(&self) -> &[WeightedBackend] {
        &self.backends
    }

    /// Sum of all weights.
    pub fn total_weight(&self) -> u64 {
        self.total
    }

    /// Picks a backend for a uniformly random `r`; `None` when the group is
    /// empty or every weight is zero (answered with 500).
    pub fn pick(&self, r: u64) -> Option<&WeightedBackend> {
        if self.total == 0 {
            return None;
        }
        let point = r % self.total;
        // First cumulative weight strictly above the point.
        let idx = self.cumulative.partition_point(|&c| c <= point);
        self.backends.get(idx)
    }
}

// === impl EndpointSet ===

impl EndpointSet {
    /// A set over these ready addresses.
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        let authorities = addrs
            .iter()
            .filter_map(|a| http::uri::Authority::from_maybe_shared(bytes_of(a)).ok())
            .collect::<Box<[_]>>();
        // A socket address always forms a valid authority; if one ever did
        // not, fall back to no precomputed authorities rather than misalign.
        let authorities = if authorities.len() == addrs.len() { authorities } else { Box::default() };
        Self { addrs: addrs.into(), authorities, next: AtomicUsize::new(0) }
    }

    /// Round robin like [`EndpointSet::pick`], also returning the address as
    /// a ready-made URI authority when one was precomputed.
    pub fn pick_with_authority(&self) -> Option<(SocketAddr, Option<&http::uri::Authority>)> {
        if self.addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len();
        self.addrs.get(i).map(|a| (*a, self.authorities.get(i)))
    }

    /// The ready addresses.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Round robin over the ready addresses; `None` when there are none (503).
    pub fn pick(&self) -> Option<SocketAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.addrs.get(i % self.addrs.len()).copied()
    }
}

fn bytes_of(a: &SocketAddr) -> Vec<u8> {
    a.to_string().into_bytes()
}

// === impl Endpoints ===

impl Endpoints {
    /// Endpoint sets in [`BackendId`] order.
    pub fn new(sets: Vec<Arc<EndpointSet>>) -> Self {
        Self { sets: sets.into() }
    }

    /// The set for a backend; an id past the end has no endpoints.
    pub fn get(&self, id: BackendId) -> Option<&EndpointSet> {
        self.sets.get(id.0 as usize).map(|s| &**s)
    }

    /// These sets followed by `more` (for services appended to a table);
    /// the sets already here are shared, round-robin positions included.
    pub fn appended(&self, more: Endpoints) -> Self {
        Self { sets: self.sets.iter().cloned().chain(more.sets.into_vec()).collect() }
    }

    /// Number of sets.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether there are no sets.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wb(target: BackendTarget, weight: u32) -> WeightedBackend {
        WeightedBackend { target, weight, filters: Arc::new([]) }
    }

    #[test]
    fn weighted_pick_follows_cumulative_weights() {
        let g = BackendGroup::new(vec![
            wb(BackendTarget::Service(BackendId(0)), 70),
            wb(BackendTarget::Service(BackendId(1)), 30),
            wb(BackendTarget::Service(BackendId(2)), 0),
        ]);
        let mut counts = [0u32; 3];
        for r in 0..100u64 {
            match g.pick(r).map(|b| &b.target) {
                Some(BackendTarget::Service(BackendId(i))) => counts[*i as usize] += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(counts, [70, 30, 0]);
    }

    #[test]
    fn all_zero_weights_pick_nothing() {
        let g = BackendGroup::new(vec![wb(BackendTarget::Invalid, 0)]);
        assert!(g.pick(7).is_none());
        assert!(BackendGroup::default().pick(0).is_none());
    }

    #[test]
    fn endpoint_round_robin_cycles_all_addresses() -> Result<(), std::net::AddrParseError> {
        let a: SocketAddr = "127.0.0.1:1".parse()?;
        let b: SocketAddr = "127.0.0.1:2".parse()?;
        let set = EndpointSet::new(vec![a, b]);
        let picks: Vec<_> = (0..4).filter_map(|_| set.pick()).collect();
        assert_eq!(picks, vec![a, b, a, b]);
        let (addr, authority) = set.pick_with_authority().unwrap_or((a, None));
        assert_eq!(authority.map(|x| x.as_str().to_string()), Some(addr.to_string()));
        assert!(EndpointSet::new(vec![]).pick().is_none());
        Ok(())
    }
}
