//! The compiled [`RouteTable`] and its lookup.
//!
//! A table holds one [`Bind`] per listening socket. A bind holds the
//! listeners that share the socket; a listener holds host groups; a host
//! group holds a `matchit` radix over paths whose every node carries the
//! complete, precedence-ordered list of match candidates that can apply to a
//! request landing on that node. Lookup is therefore: pick the listener by
//! host (listener isolation), walk host groups from most to least specific,
//! one radix lookup per group, then a linear scan evaluating only
//! method/header/query conditions (and regex paths).
//!
//! Putting every less specific prefix into each node's list is what makes the
//! "most specific node fails its conditions" case correct: route A
//! `PathPrefix /foo` + header `x: 1` and route B `PathPrefix /` both sit in the
//! `/foo/{*rest}` node, A first, so `/foo/bar` without the header reaches B.

use std::borrow::Cow;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use crate::backend::{BackendGroup, BackendTarget, Endpoints, ServiceRef};
use crate::filter::Filter;
use crate::host::{HostPattern, normalize_host};
use crate::path::PathMatch;
#[cfg(test)]
use crate::path::prefix_matches;

/// Identifies a listening socket: a port, optionally dedicated to one
/// Gateway (`namespace/name`). `gateway: None` is shared by every Gateway
/// listener and Ingress on that port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindKey {
    /// `namespace/name` of the Gateway owning the socket, if dedicated.
    pub gateway: Option<Arc<str>>,
    /// The listener port.
    pub port: u16,
}

/// Listener protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Plain HTTP (HTTP/1.1 and h2c).
    Http,
    /// HTTP over TLS.
    Https,
}

/// Which precedence rules order the candidates of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precedence {
    /// Gateway API: Exact > longest prefix > regex, then method, headers,
    /// query params, oldest route, `namespace/name`, rule order.
    GatewayApi,
    /// Ingress: longest path, then Exact over Prefix, then oldest Ingress,
    /// `namespace/name`, rule order.
    Ingress,
}

/// The object a rule came from, for logs, metrics and diagnostics.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteRef {
    /// `HTTPRoute` or `Ingress`.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `namespace/name`, precomputed for metric labels and logs.
    label: Arc<str>,
}

/// What a matched rule does.
#[derive(Debug)]
pub struct Rule {
    /// The route this rule belongs to.
    pub route: Arc<RouteRef>,
    /// Index of the rule in the route.
    pub index: usize,
    /// Rule-level filters, in order.
    pub filters: Arc<[Filter]>,
    /// Weighted backends. Empty with no redirect filter answers 500.
    pub backends: BackendGroup,
    /// `timeouts.request`; `None` means the proxy default, zero disables.
    pub request_timeout: Option<Duration>,
    /// `timeouts.backendRequest`.
    pub backend_timeout: Option<Duration>,
}

/// Header value / query value comparison.
#[derive(Clone, Debug)]
pub enum ValueMatch {
    /// Exact, case-sensitive.
    Exact(String),
    /// Full match of a regular expression.
    Regex(Regex),
}

/// A header condition (name compared case-insensitively).
#[derive(Clone, Debug)]
pub struct HeaderMatch {
    /// Header name.
    pub name: HeaderName,
    /// Value condition; any of the header's values may satisfy it.
    pub value: ValueMatch,
}

/// A query parameter condition (name compared case-sensitively against the
/// first occurrence).
#[derive(Clone, Debug)]
pub struct QueryMatch {
    /// Parameter name.
    pub name: String,
    /// Value condition.
    pub value: ValueMatch,
}

/// The non-path conditions of a match, all of which must hold.
#[derive(Clone, Debug, Default)]
pub struct Conditions {
    /// Required method.
    pub method: Option<Method>,
    /// Required headers.
    pub headers: Vec<HeaderMatch>,
    /// Required query parameters.
    pub query: Vec<QueryMatch>,
}

/// A listener to compile.
#[derive(Clone, Debug)]
pub struct ListenerInput {
    /// The socket it is served on.
    pub bind: BindKey,
    /// `namespace/gateway/listener` (or `ingress` for the Ingress listener).
    pub name: Arc<str>,
    /// Listener hostname.
    pub hostname: HostPattern,
    /// Listener port (used by redirects).
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Precedence rules for its routes.
    pub precedence: Precedence,
    /// Tie-break between listeners of equal hostname on one socket; lower
    /// wins.
    pub order: u32,
}

/// One match of a rule.
#[derive(Clone, Debug)]
pub struct MatchInput {
    /// Path condition.
    pub path: PathMatch,
    /// Other conditions.
    pub conditions: Conditions,
}

/// One rule of a route attached to a listener.
#[derive(Clone, Debug)]
pub struct RuleInput {
    /// The compiled rule.
    pub rule: Arc<Rule>,
    /// Its matches (OR'ed). Must not be empty: use `PathPrefix /`.
    pub matches: Vec<MatchInput>,
}

/// A route attached to one listener.
#[derive(Clone, Debug)]
pub struct RouteInput {
    /// Index into [`TableInput::listeners`].
    pub listener: usize,
    /// Route identity.
    pub route: Arc<RouteRef>,
    /// Creation timestamp (seconds), older routes win ties.
    pub created: i64,
    /// Hostnames already intersected with the listener's; empty means the
    /// listener's own hostname.
    pub hostnames: Vec<HostPattern>,
    /// Rules.
    pub rules: Vec<RuleInput>,
    /// Fallback routes (an Ingress `defaultBackend`) sort after all others.
    pub fallback: bool,
}

/// Everything [`RouteTable::compile`] needs.
#[derive(Clone, Debug, Default)]
pub struct TableInput {
    /// Listeners.
    pub listeners: Vec<ListenerInput>,
    /// Routes.
    pub routes: Vec<RouteInput>,
    /// Services referenced by [`crate::BackendId`].
    pub services: Vec<ServiceRef>,
    /// Certificates of HTTPS listeners, already parsed and checked.
    pub certificates: Vec<crate::tls::CertInput>,
    /// Backends spoken to over HTTP/2 with prior knowledge (Service port
    /// `appProtocol: kubernetes.io/h2c`); the others get HTTP/1.1.
    pub h2c_backends: Vec<crate::BackendId>,
    /// Backends spoken to over TLS (BackendTLSPolicy).
    pub upstream_tls: Vec<crate::tls::UpstreamTlsInput>,
}

/// The compiled, immutable routing table.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Monotonic generation of the config this table was compiled from.
    pub generation: u64,
    binds: BTreeMap<BindKey, Arc<Bind>>,
    services: Arc<[ServiceRef]>,
    service_labels: Arc<[Arc<str>]>,
    /// Per backend: HTTP/2 prior knowledge upstream.
    h2c: Arc<[bool]>,
    /// Per backend: TLS settings (BackendTLSPolicy).
    upstream_tls: Arc<[Option<Arc<crate::tls::UpstreamTls>>]>,
}

/// What the proxy reads per request: routes and endpoints, swapped together
/// through one pointer, but rebuilt independently.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The route table.
    pub routes: Arc<RouteTable>,
    /// Endpoints aligned with `routes.services()`.
    pub endpoints: Arc<Endpoints>,
}

/// The listeners sharing one socket.
#[derive(Debug)]
pub struct Bind {
    /// The socket key.
    pub key: BindKey,
    listeners: Vec<Listener>,
    exact: HashMap<String, usize>,
    /// SNI → certificate, for the HTTPS listeners on this socket.
    tls: Arc<crate::tls::SniCerts>,
}

/// A compiled listener.
#[derive(Clone, Debug)]
pub struct Listener {
    /// `namespace/gateway/listener`.
    pub name: Arc<str>,
    /// Hostname.
    pub hostname: HostPattern,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    order: u32,
    /// Index in [`TableInput::listeners`] (incremental updates find it by this).
    index: usize,
    precedence: Precedence,
    /// Shared with later tables an incremental update leaves it unchanged in.
    hosts: Arc<HostRoutes>,
}

/// The request fields routing looks at.
#[derive(Clone, Copy, Debug)]
pub struct RequestParts<'a> {
    /// Host or `:authority` as received (port and case are ignored).
    pub authority: &'a str,
    /// Path without query.
    pub path: &'a str,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// Method.
    pub method: &'a Method,
    /// Headers.
    pub headers: &'a HeaderMap,
}

/// A successful lookup.
#[derive(Clone, Copy, Debug)]
pub struct RouteMatch<'a> {
    /// The listener that took the request.
    pub listener: &'a Listener,
    /// The matched rule.
    pub rule: &'a Arc<Rule>,
    /// The PathPrefix that matched (no trailing slash), for
    /// `ReplacePrefixMatch`.
    pub matched_prefix: Option<&'a str>,
}

/// Why a lookup found nothing (both answer 404).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoRoute {
    /// No listener hostname matches the Host.
    NoListener,
    /// The listener has no rule matching the request.
    NoMatch,
    /// HTTPS: the Host belongs to another listener than the one the TLS
    /// handshake's SNI selected (421 Misdirected Request).
    Misdirected,
}

#[derive(Debug, Default)]
struct HostRoutes {
    /// Keys share the groups' [`PathRouter::key`] (an exact host's text is
    /// the host).
    exact: HashMap<Arc<str>, usize>,
    wildcards: Vec<(HostPattern, usize)>,
    any: Option<usize>,
    /// In [`PathRouter::key`] order; shared with later tables whose
    /// incremental update leaves the group unchanged.
    groups: Vec<Arc<PathRouter>>,
}

#[derive(Debug)]
struct PathRouter {
    host: HostPattern,
    /// `host` as text: groups are ordered by it.
    key: Arc<str>,
    /// `None` when every candidate is the catch-all prefix `/` (the common
    /// route without matches): then every path starting with `/` gets `all`
    /// and no radix tree is built (it cost ~0.7 KB per host).
    router: Option<matchit::Router<usize>>,
    nodes: Vec<Box<[Arc<Candidate>]>>,
    /// Candidates for requests that land on no node (regex paths only).
    fallback: Box<[Arc<Candidate>]>,
    /// All candidates in precedence order, for `describe`.
    all: Vec<Arc<Candidate>>,
}

#[derive(Debug)]
struct Candidate {
    path: PathMatch,
    /// Length of the path value as written (precedence counts characters).
    path_len: usize,
    conditions: Conditions,
    rule: Arc<Rule>,
    created: i64,
    fallback: bool,
    match_index: usize,
}

// === impl RouteRef ===

impl RouteRef {
    /// A route reference; precomputes its `namespace/name` label.
    pub fn new(kind: &'static str, namespace: String, name: String) -> Self {
        let label = format!("{namespace}/{name}").into();
        Self { kind, namespace, name, label }
    }

    /// `namespace/name`.
    pub fn label(&self) -> &str {
        &self.label
    }
}

// === impl Rule ===

impl Rule {
    /// The rule index as a string, for metric labels (no formatting per
    /// request).
    pub fn index_label(&self) -> &str {
        static LABELS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        LABELS.get_or_init(|| (0..64).map(|i| i.to_string()).collect()).get(self.index).map_or("64+", String::as_str)
    }
}

// === impl RouteTable ===

impl RouteTable {
    /// Compiles a table. Pure and deterministic for a given input.
    pub fn compile(input: TableInput, generation: u64) -> Self {
        let mut per_listener: Vec<Vec<&RouteInput>> = vec![Vec::new(); input.listeners.len()];
        for r in &input.routes {
            if let Some(v) = per_listener.get_mut(r.listener) {
                v.push(r);
            }
        }
        let mut binds: BTreeMap<BindKey, Vec<Listener>> = BTreeMap::new();
        let mut certs: BTreeMap<BindKey, Vec<_>> = BTreeMap::new();
        for c in &input.certificates {
            if let Some(l) = input.listeners.get(c.listener).filter(|l| l.protocol == Protocol::Https) {
                certs.entry(l.bind.clone()).or_default().push((
                    c.host.clone(),
                    l.order,
                    c.cert.clone(),
                    c.names.clone(),
                ));
            }
        }
        for (index, (l, routes)) in input.listeners.iter().zip(per_listener).enumerate() {
            let listener = Listener {
                name: l.name.clone(),
                hostname: l.hostname.clone(),
                port: l.port,
                protocol: l.protocol,
                order: l.order,
                index,
                precedence: l.precedence,
                hosts: Arc::new(HostRoutes::build(l, &routes)),
            };
            binds.entry(l.bind.clone()).or_default().push(listener);
        }
        let binds = binds
            .into_iter()
            .map(|(key, ls)| {
                let tls = Arc::new(crate::tls::SniCerts::build(certs.remove(&key).unwrap_or_default()));
                (key.clone(), Arc::new(Bind::new(key, ls, tls)))
            })
            .collect();
        let service_labels = input.services.iter().map(|s| Arc::from(s.to_string())).collect();
        let mut h2c = vec![false; input.services.len()];
        for id in &input.h2c_backends {
            if let Some(b) = h2c.get_mut(id.0 as usize) {
                *b = true;
            }
        }
        let mut upstream_tls = vec![None; input.services.len()];
        for t in input.upstream_tls {
            if let Some(slot) = upstream_tls.get_mut(t.backend.0 as usize) {
                *slot = Some(t.tls);
            }
        }
        Self {
            generation,
            binds,
            services: input.services.into(),
            service_labels,
            h2c: h2c.into(),
            upstream_tls: upstream_tls.into(),
        }
    }

    /// The bind for a socket key.
    pub fn bind(&self, key: &BindKey) -> Option<&Bind> {
        self.binds.get(key).map(|b| &**b)
    }

    /// Every socket this table wants.
    pub fn bind_keys(&self) -> impl Iterator<Item = &BindKey> {
        self.binds.keys()
    }

    /// Services referenced by backends, indexed by [`crate::BackendId`].
    pub fn services(&self) -> &Arc<[ServiceRef]> {
        &self.services
    }

    /// Whether the backend speaks HTTP/2 with prior knowledge (h2c).
    pub fn is_h2c(&self, id: crate::BackendId) -> bool {
        self.h2c.get(id.0 as usize).copied().unwrap_or(false)
    }

    /// TLS settings of a backend with a BackendTLSPolicy.
    pub fn upstream_tls(&self, id: crate::BackendId) -> Option<&Arc<crate::tls::UpstreamTls>> {
        self.upstream_tls.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// `namespace/name:port` of a backend, for metric labels.
    pub fn service_label(&self, id: crate::BackendId) -> Option<&Arc<str>> {
        self.service_labels.get(id.0 as usize)
    }

    /// Human-readable dump of the compiled routes (`sluice check`).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (key, bind) in &self.binds {
            let gw = key.gateway.as_deref().unwrap_or("*");
            let tls =
                if bind.is_tls() { format!(", TLS, {} certificate(s) by SNI", bind.tls.len()) } else { String::new() };
            let _ = writeln!(out, "port {} (gateway {gw}{tls})", key.port);
            for l in &bind.listeners {
                let proto = match l.protocol {
                    Protocol::Http => "HTTP",
                    Protocol::Https => "HTTPS",
                };
                let _ = writeln!(out, "  listener {} hostname={} protocol={proto}", l.name, l.hostname);
                for g in &l.hosts.groups {
                    let _ = writeln!(out, "    host {}", g.host);
                    for c in &g.all {
                        let _ = writeln!(out, "      {}", c.describe(&self.services));
                    }
                }
            }
        }
        out
    }

    /// The compiled table as JSON (admin `/config`): sockets, listeners,
    /// host groups and, per group, the match candidates in precedence order
    /// with their backends, weights and (given `endpoints`) addresses.
    pub fn to_json(&self, endpoints: Option<&Endpoints>) -> serde_json::Value {
        use serde_json::json;
        let backend = |b: &crate::backend::WeightedBackend| match &b.target {
            BackendTarget::Service(id) => json!({
                "service": self.services.get(id.0 as usize).map(ToString::to_string),
                "weight": b.weight,
                "endpoints": endpoints.and_then(|e| e.get(*id)).map(|set| set.addrs().iter().map(ToString::to_string).collect::<Vec<_>>()),
            }),
            BackendTarget::Invalid => json!({"service": null, "invalid": true, "weight": b.weight}),
        };
        let candidate = |c: &Candidate| {
            let (kind, value) = match &c.path {
                PathMatch::Exact(p) => ("Exact", p.clone()),
                PathMatch::Prefix(p) => ("PathPrefix", if p.is_empty() { "/".to_string() } else { p.clone() }),
                PathMatch::Regex(re) => ("RegularExpression", re.as_str().to_string()),
            };
            let r = &c.rule;
            json!({
                "path": {"type": kind, "value": value},
                "method": c.conditions.method.as_ref().map(Method::as_str),
                "headers": c.conditions.headers.iter().map(|h| json!({"name": h.name.as_str(), "value": h.value.to_string()})).collect::<Vec<_>>(),
                "queryParams": c.conditions.query.iter().map(|q| json!({"name": q.name, "value": q.value.to_string()})).collect::<Vec<_>>(),
                "route": {"kind": r.route.kind, "namespace": r.route.namespace, "name": r.route.name, "rule": r.index},
                "filters": r.filters.iter().map(|f| match f {
                    Filter::RequestHeaders(_) => "RequestHeaderModifier",
                    Filter::ResponseHeaders(_) => "ResponseHeaderModifier",
                    Filter::Redirect(_) => "RequestRedirect",
                    Filter::Rewrite(_) => "URLRewrite",
                    Filter::RateLimit(_) => "RateLimit",
                }).collect::<Vec<_>>(),
                "backends": r.backends.backends().iter().map(backend).collect::<Vec<_>>(),
            })
        };
        let binds: Vec<_> = self
            .binds
            .iter()
            .map(|(key, bind)| {
                json!({
                    "port": key.port,
                    "gateway": key.gateway.as_deref(),
                    "tls": bind.is_tls(),
                    "certificates": bind.tls.len(),
                    "listeners": bind.listeners.iter().map(|l| json!({
                        "name": &*l.name,
                        "hostname": l.hostname.to_string(),
                        "protocol": match l.protocol { Protocol::Http => "HTTP", Protocol::Https => "HTTPS" },
                        "hosts": l.hosts.groups.iter().map(|g| json!({
                            "host": g.host.to_string(),
                            "matches": g.all.iter().map(|c| candidate(c)).collect::<Vec<_>>(),
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({"generation": self.generation, "binds": binds})
    }

    /// Number of match candidates across all listeners (a size measure).
    pub fn candidate_count(&self) -> usize {
        self.binds.values().flat_map(|b| &b.listeners).flat_map(|l| &l.hosts.groups).map(|g| g.all.len()).sum()
    }
}

// === impl Bind ===

impl Bind {
    fn new(key: BindKey, mut listeners: Vec<Listener>, tls: Arc<crate::tls::SniCerts>) -> Self {
        listeners.sort_by(|a, b| b.hostname.specificity().cmp(&a.hostname.specificity()).then(a.order.cmp(&b.order)));
        let mut exact = HashMap::new();
        for (i, l) in listeners.iter().enumerate() {
            if let HostPattern::Exact(h) = &l.hostname {
                exact.entry(h.clone()).or_insert(i);
            }
        }
        Self { key, listeners, exact, tls }
    }

    /// Whether connections to this socket start with a TLS handshake (it
    /// has an HTTPS listener).
    pub fn is_tls(&self) -> bool {
        self.listeners.iter().any(|l| l.protocol == Protocol::Https)
    }

    /// The certificates of this socket, by SNI.
    pub fn certificates(&self) -> &crate::tls::SniCerts {
        &self.tls
    }

    /// The listeners on this socket, most specific hostname first.
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// Selects the listener for `host` (lowercase, no port): exact, then the
    /// most specific wildcard, then the empty hostname.
    pub fn select_listener(&self, host: &str) -> Option<&Listener> {
        if let Some(&i) = self.exact.get(host) {
            return self.listeners.get(i);
        }
        self.listeners.iter().find(|l| !matches!(l.hostname, HostPattern::Exact(_)) && l.hostname.matches(host))
    }

    /// Routes a request: listener isolation, then host groups from most to
    /// least specific, then match precedence.
    pub fn lookup<'a>(&'a self, req: &RequestParts<'_>) -> Result<RouteMatch<'a>, NoRoute> {
        let host = normalize_host(req.authority);
        let listener = self.select_listener(&host).ok_or(NoRoute::NoListener)?;
        listener.lookup(&host, req).ok_or(NoRoute::NoMatch)
    }

    /// [`Bind::lookup`] for a request on a TLS connection whose handshake
    /// sent `sni` (lowercase): when the Host selects another listener than
    /// the SNI does, the request was misdirected (semantics §1.1; 421).
    /// Without SNI there is nothing to compare and the Host alone routes.
    pub fn lookup_tls<'a>(&'a self, req: &RequestParts<'_>, sni: Option<&str>) -> Result<RouteMatch<'a>, NoRoute> {
        let host = normalize_host(req.authority);
        let listener = self.select_listener(&host).ok_or(NoRoute::NoListener)?;
        if let Some(by_sni) = sni.and_then(|s| self.select_listener(s))
            && !std::ptr::eq(by_sni, listener)
        {
            return Err(NoRoute::Misdirected);
        }
        listener.lookup(&host, req).ok_or(NoRoute::NoMatch)
    }
}

// === impl Listener ===

impl Listener {
    fn lookup<'a>(&'a self, host: &str, req: &RequestParts<'_>) -> Option<RouteMatch<'a>> {
        let hosts = &self.hosts;
        let found = |gi: usize| hosts.groups.get(gi).and_then(|g| g.lookup(req));
        let exact = hosts.exact.get(host).and_then(|&gi| found(gi));
        let c = exact
            .or_else(|| hosts.wildcards.iter().filter(|(p, _)| p.matches(host)).find_map(|&(_, gi)| found(gi)))
            .or_else(|| hosts.any.and_then(found))?;
        let matched_prefix = match &c.path {
            PathMatch::Prefix(p) => Some(p.as_str()),
            _ => None,
        };
        Some(RouteMatch { listener: self, rule: &c.rule, matched_prefix })
    }
}

// === impl HostRoutes ===

impl HostRoutes {
    fn build(listener: &ListenerInput, routes: &[&RouteInput]) -> Self {
        // Groups in host text order (the key is formatted once per host).
        let mut by_host: BTreeMap<String, (HostPattern, Vec<Arc<Candidate>>)> = BTreeMap::new();
        for r in routes {
            let candidates = Candidate::of_route(r);
            let hosts: &[HostPattern] =
                if r.hostnames.is_empty() { std::slice::from_ref(&listener.hostname) } else { &r.hostnames };
            for h in hosts {
                by_host
                    .entry(h.to_string())
                    .or_insert_with(|| (h.clone(), Vec::new()))
                    .1
                    .extend(candidates.iter().cloned());
            }
        }
        let groups = by_host
            .into_iter()
            .map(|(key, (host, mut cands))| {
                cands.sort_by(|a, b| Candidate::precedence(listener.precedence, a, b));
                Arc::new(PathRouter::build(host, key.into(), cands))
            })
            .collect();
        Self::index(groups)
    }

    /// The host indexes over `groups` (in key order).
    fn index(groups: Vec<Arc<PathRouter>>) -> Self {
        let mut out = Self { exact: HashMap::with_capacity(groups.len()), ..Self::default() };
        let mut wildcards = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            match &g.host {
                HostPattern::Exact(_) => {
                    out.exact.insert(g.key.clone(), gi);
                }
                HostPattern::Wildcard { .. } => wildcards.push((g.host.clone(), gi)),
                HostPattern::Any => out.any = Some(gi),
            }
        }
        wildcards.sort_by_key(|(h, _)| Reverse(h.specificity()));
        out.wildcards = wildcards;
        out.groups = groups;
        out
    }
}

// === impl PathRouter ===

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    /// A request path equal to this string.
    Static(String),
    /// Any request path `P/…` with a non-empty rest (P has no trailing `/`).
    CatchAll(String),
}

impl PathRouter {
    fn build(host: HostPattern, key: Arc<str>, all: Vec<Arc<Candidate>>) -> Self {
        if all.iter().all(|c| matches!(&c.path, PathMatch::Prefix(p) if p.is_empty())) {
            return Self { host, key, router: None, nodes: Vec::new(), fallback: Box::default(), all };
        }
        let mut keys = std::collections::BTreeSet::new();
        for c in &all {
            match &c.path {
                PathMatch::Exact(p) => {
                    keys.insert(Node::Static(p.clone()));
                }
                PathMatch::Prefix(p) => {
                    if !p.is_empty() {
                        keys.insert(Node::Static(p.clone()));
                    }
                    keys.insert(Node::Static(format!("{p}/")));
                    keys.insert(Node::CatchAll(p.clone()));
                }
                PathMatch::Regex(_) => {}
            }
        }
        // Candidates by path value, so each node finds its list from its own
        // path's element prefixes instead of testing every candidate (a host
        // with thousands of paths would otherwise cost nodes × candidates).
        let mut exact: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut prefix: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut regex = Vec::new();
        for (i, c) in all.iter().enumerate() {
            match &c.path {
                PathMatch::Exact(p) => exact.entry(p.as_str()).or_default().push(i),
                PathMatch::Prefix(p) => prefix.entry(p.as_str()).or_default().push(i),
                PathMatch::Regex(_) => regex.push(i),
            }
        }
        let mut router = matchit::Router::new();
        let mut nodes = Vec::with_capacity(keys.len());
        let mut picked: Vec<usize> = Vec::new();
        for node in keys {
            picked.clear();
            picked.extend_from_slice(&regex);
            let path = match &node {
                Node::Static(s) => {
                    picked.extend(exact.get(s.as_str()).into_iter().flatten());
                    s
                }
                Node::CatchAll(base) => {
                    picked.extend(prefix.get("").into_iter().flatten());
                    base
                }
            };
            // The prefixes `p` with `prefix_matches(p, path)`: `path` cut at
            // its end or before any `/`.
            let cuts = path.match_indices('/').map(|(i, _)| i).chain(std::iter::once(path.len()));
            for cut in cuts {
                picked.extend(path.get(..cut).and_then(|p| prefix.get(p)).into_iter().flatten());
            }
            // `all` is in precedence order: keep it.
            picked.sort_unstable();
            picked.dedup();
            let list: Box<[Arc<Candidate>]> = picked.iter().filter_map(|&i| all.get(i)).cloned().collect();
            // Model tests check the lists against the definition.
            #[cfg(test)]
            assert!(
                list.iter()
                    .map(|c| &**c as *const Candidate)
                    .eq(all.iter().filter(|c| c.applies_to(&node)).map(|c| &**c as *const Candidate))
            );
            let route = match &node {
                Node::Static(s) => escape(s),
                Node::CatchAll(p) => format!("{}/{{*rest}}", escape(p)),
            };
            // Paths that matchit cannot express (e.g. not starting with '/')
            // are still served: their candidates sit in the fallback scan.
            if router.insert(route, nodes.len()).is_ok() {
                nodes.push(list);
            }
        }
        let fallback = all
            .iter()
            .filter(|c| match &c.path {
                PathMatch::Regex(_) => true,
                PathMatch::Exact(p) | PathMatch::Prefix(p) => !p.is_empty() && !p.starts_with('/'),
            })
            .cloned()
            .collect();
        Self { host, key, router: Some(router), nodes, fallback, all }
    }

    fn lookup(&self, req: &RequestParts<'_>) -> Option<&Arc<Candidate>> {
        let list: &[Arc<Candidate>] = match &self.router {
            // The radix tree would send every `/…` path to a node listing all
            // candidates, and the rest to the (empty) fallback.
            None if req.path.starts_with('/') => &self.all,
            None => &[],
            Some(router) => match router.at(req.path) {
                Ok(m) => self.nodes.get(*m.value).map_or(&[][..], |l| &l[..]),
                Err(_) => &self.fallback,
            },
        };
        list.iter().find(|c| c.matches(req))
    }
}

fn escape(s: &str) -> String {
    s.replace('{', "{{").replace('}', "}}")
}

// === impl Candidate ===

impl Candidate {
    /// The candidates of a route: one per match of each rule.
    fn of_route(r: &RouteInput) -> Vec<Arc<Self>> {
        r.rules
            .iter()
            .flat_map(|rule| {
                rule.matches.iter().enumerate().map(|(mi, m)| {
                    Arc::new(Self {
                        path_len: match &m.path {
                            PathMatch::Exact(p) => p.len(),
                            PathMatch::Prefix(p) => p.len().max(1),
                            PathMatch::Regex(re) => re.as_str().len(),
                        },
                        path: m.path.clone(),
                        conditions: m.conditions.clone(),
                        rule: rule.rule.clone(),
                        created: r.created,
                        fallback: r.fallback,
                        match_index: mi,
                    })
                })
            })
            .collect()
    }

    /// Whether this candidate belongs in the list of `node` (the definition
    /// `PathRouter::build`'s indexed selection is tested against). Regex
    /// candidates belong everywhere and are checked per request.
    #[cfg(test)]
    fn applies_to(&self, node: &Node) -> bool {
        match (&self.path, node) {
            (PathMatch::Regex(_), _) => true,
            (PathMatch::Exact(p), Node::Static(s)) => p == s,
            (PathMatch::Exact(_), Node::CatchAll(_)) => false,
            (PathMatch::Prefix(p), Node::Static(s)) => prefix_matches(p, s),
            // `P/x` matches prefix p iff p is an element-ancestor of P (or P).
            (PathMatch::Prefix(p), Node::CatchAll(base)) => prefix_matches(p, base) || p.is_empty(),
        }
    }

    fn matches(&self, req: &RequestParts<'_>) -> bool {
        if let PathMatch::Regex(re) = &self.path
            && !re.is_match(req.path)
        {
            return false;
        }
        let c = &self.conditions;
        if let Some(m) = &c.method
            && m != req.method
        {
            return false;
        }
        for h in &c.headers {
            let ok = req.headers.get_all(&h.name).iter().any(|v| v.to_str().is_ok_and(|v| h.value.matches(v)));
            if !ok {
                return false;
            }
        }
        for q in &c.query {
            let ok = query_param(req.query, &q.name).is_some_and(|v| q.value.matches(&v));
            if !ok {
                return false;
            }
        }
        true
    }

    fn precedence(style: Precedence, a: &Self, b: &Self) -> Ordering {
        let kind = |c: &Self| match c.path {
            PathMatch::Exact(_) => 0u8,
            PathMatch::Prefix(_) => 1,
            PathMatch::Regex(_) => 2,
        };
        let head = a.fallback.cmp(&b.fallback);
        let path = match style {
            Precedence::GatewayApi => kind(a)
                .cmp(&kind(b))
                .then(b.path_len.cmp(&a.path_len))
                .then(b.conditions.method.is_some().cmp(&a.conditions.method.is_some()))
                .then(b.conditions.headers.len().cmp(&a.conditions.headers.len()))
                .then(b.conditions.query.len().cmp(&a.conditions.query.len())),
            Precedence::Ingress => {
                (kind(a) == 2).cmp(&(kind(b) == 2)).then(b.path_len.cmp(&a.path_len)).then(kind(a).cmp(&kind(b)))
            }
        };
        head.then(path)
            .then(a.created.cmp(&b.created))
            .then_with(|| {
                (&a.rule.route.namespace, &a.rule.route.name).cmp(&(&b.rule.route.namespace, &b.rule.route.name))
            })
            .then(a.rule.index.cmp(&b.rule.index))
            .then(a.match_index.cmp(&b.match_index))
    }

    fn describe(&self, services: &[ServiceRef]) -> String {
        let mut s = match &self.path {
            PathMatch::Exact(p) => format!("Exact {p}"),
            PathMatch::Prefix(p) => format!("PathPrefix {}", if p.is_empty() { "/" } else { p }),
            PathMatch::Regex(re) => format!("RegularExpression {}", re.as_str()),
        };
        if let Some(m) = &self.conditions.method {
            let _ = write!(s, " method={m}");
        }
        for h in &self.conditions.headers {
            let _ = write!(s, " header:{}{}", h.name, h.value);
        }
        for q in &self.conditions.query {
            let _ = write!(s, " query:{}{}", q.name, q.value);
        }
        let r = &self.rule;
        let _ = write!(s, " -> {} {}/{} rule {}", r.route.kind, r.route.namespace, r.route.name, r.index);
        if r.filters.iter().any(|f| matches!(f, Filter::Redirect(_))) {
            s.push_str(" redirect");
        }
        let backends: Vec<String> = r
            .backends
            .backends()
            .iter()
            .map(|b| match &b.target {
                BackendTarget::Service(id) => match services.get(id.0 as usize) {
                    Some(svc) => format!("{svc} weight={}", b.weight),
                    None => format!("? weight={}", b.weight),
                },
                BackendTarget::Invalid => format!("invalid(500) weight={}", b.weight),
            })
            .collect();
        if !backends.is_empty() {
            let _ = write!(s, " => {}", backends.join(", "));
        }
        s
    }
}

// === impl ValueMatch ===

impl ValueMatch {
    /// A regex value match, anchored to the whole value.
    pub fn regex(re: &str) -> Result<Self, regex::Error> {
        Regex::new(&format!("^(?:{re})$")).map(Self::Regex)
    }

    /// Whether `v` satisfies the condition.
    pub fn matches(&self, v: &str) -> bool {
        match self {
            Self::Exact(e) => e == v,
            Self::Regex(re) => re.is_match(v),
        }
    }
}

impl fmt::Display for ValueMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(v) => write!(f, "={v}"),
            Self::Regex(re) => write!(f, "~{}", re.as_str()),
        }
    }
}

/// First value of query parameter `name` (percent-decoded when needed).
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

mod incremental;

pub use incremental::TableUpdate;

#[cfg(test)]
mod tests;
