//! `RateLimitPolicy` (policy.sluice.dev/v1alpha1) and the ingress-nginx
//! `limit-*` annotations → [`RateLimit`] filters on compiled rules.
//!
//! Attachment (Gateway API policy attachment, direct):
//! - `targetRefs` name a Gateway, an HTTPRoute, one HTTPRoute rule
//!   (`sectionName` = the rule's `name`) or an Ingress, in the policy's
//!   namespace. The most specific attachment wins for a rule: rule > route >
//!   Gateway. Two policies on the same target: the oldest (then
//!   `namespace/name`) wins, the other is reported `Conflicted`.
//! - An HTTPRoute `ExtensionRef` filter (group `policy.sluice.dev`, kind
//!   `RateLimitPolicy`) applies the policy to that rule in addition. A
//!   reference to a missing policy makes the rule answer 500 ("the filter
//!   MUST NOT be skipped").
//! - Ingress annotations `limit-rps`/`limit-rpm` build one limit each (both
//!   apply when both are set), keyed by client address, burst =
//!   limit × `limit-burst-multiplier` (default 5), `limit-allowlist` /
//!   `limit-whitelist` exempt CIDRs. A policy targeting the Ingress replaces
//!   its annotations.
//!
//! Every rate limit is checked before the rule's other filters. A policy's
//! counters are shared by every rule it applies to; add the `Route` key part
//! to count each route separately.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gateway_api::httproutes::{HttpRoute, HttpRouteRulesFiltersType as FilterType};
use http::{HeaderName, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use sluice_model::ratelimit::{Cidr, KeyPart, Mode, RateLimit, RedisSettings};
use sluice_model::{BackendGroup, BackendTarget, Filter, Rule, TableInput, WeightedBackend};

use crate::Objects;
use crate::objects::{created, generation, name, namespace};
use crate::report::{Condition, ObjectStatus, Report, Scope, Severity};

/// The API group of Sluice's policies.
pub const GROUP: &str = "policy.sluice.dev";
/// The kind.
pub const KIND: &str = "RateLimitPolicy";

/// `RateLimitPolicy`: a request rate limit attached to Gateways, HTTPRoutes,
/// HTTPRoute rules or Ingresses.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicy {
    /// `policy.sluice.dev/v1alpha1`.
    pub api_version: String,
    /// `RateLimitPolicy`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: RateLimitPolicySpec,
}

/// `spec` of a [`RateLimitPolicy`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitPolicySpec {
    /// What the policy attaches to (same namespace). May be empty when the
    /// policy is only used from `ExtensionRef` filters.
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    /// The limit.
    pub limit: LimitSpec,
    /// Key parts separating buckets; default `[{type: ClientAddress}]`. An
    /// empty list is one bucket for all clients.
    #[serde(default)]
    pub key: Option<Vec<KeySpec>>,
    /// Proxies in front of Sluice whose `X-Forwarded-For` entries are
    /// trusted (default 0: the socket peer is the client).
    #[serde(default)]
    pub trusted_hops: u8,
    /// Client CIDRs never limited.
    #[serde(default)]
    pub allow: Vec<String>,
    /// `Local` (default), `Cluster` or `Redis`.
    #[serde(default)]
    pub mode: ModeSpec,
    /// Redis settings (mode `Redis`).
    #[serde(default)]
    pub redis: Option<RedisSpec>,
    /// Add the `RateLimit` header (remaining quota) to allowed responses.
    #[serde(default)]
    pub remaining_header: bool,
    /// Most distinct keys held in memory per replica (default 100000).
    #[serde(default)]
    pub max_keys: Option<u64>,
}

/// A policy target (`LocalPolicyTargetReferenceWithSectionName`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// `gateway.networking.k8s.io` or `networking.k8s.io`.
    pub group: String,
    /// `Gateway`, `HTTPRoute` or `Ingress`.
    pub kind: String,
    /// Name, in the policy's namespace.
    pub name: String,
    /// HTTPRoute rule name.
    #[serde(default)]
    pub section_name: Option<String>,
}

/// Requests per unit, with a burst.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitSpec {
    /// Requests admitted per `unit` on average (≥ 1).
    pub requests: u64,
    /// `Second` or `Minute`.
    pub unit: UnitSpec,
    /// Requests admitted at once after an idle period; default `requests`.
    #[serde(default)]
    pub burst: Option<u64>,
}

/// Limit unit.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum UnitSpec {
    /// Per second.
    Second,
    /// Per minute.
    Minute,
}

/// A key part.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeySpec {
    /// `ClientAddress`, `Header` or `Route`.
    #[serde(rename = "type")]
    pub type_: KeyType,
    /// Header name (type `Header`).
    #[serde(default)]
    pub name: Option<String>,
}

/// Key part type.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum KeyType {
    /// The client address.
    ClientAddress,
    /// A header value.
    Header,
    /// The route and rule.
    Route,
}

/// Mode.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum ModeSpec {
    /// Per replica.
    #[default]
    Local,
    /// Split across ready replicas.
    Cluster,
    /// Exact, in Redis.
    Redis,
}

/// Redis settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisSpec {
    /// `redis://host:port`; default: `--redis-url`.
    #[serde(default)]
    pub url: Option<String>,
    /// Decision timeout (Go duration, default `50ms`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// `Open` (default: admit) or `Closed` (limit) when Redis fails.
    #[serde(default)]
    pub failure_mode: Option<FailureMode>,
}

/// Answer when Redis is down or slow.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum FailureMode {
    /// Admit.
    Open,
    /// Limit.
    Closed,
}

/// A compiled limit and the routes (`namespace/name`) it applies to, for
/// the proxy's per-route counters.
#[derive(Clone, Debug)]
pub struct AttachedLimit {
    /// The limit (shared by the rules' filters).
    pub limit: Arc<RateLimit>,
    /// Route labels.
    pub routes: Vec<Arc<str>>,
}

/// Ingress annotations (ingress-nginx).
const ANN_RPS: &str = "nginx.ingress.kubernetes.io/limit-rps";
const ANN_RPM: &str = "nginx.ingress.kubernetes.io/limit-rpm";
const ANN_BURST: &str = "nginx.ingress.kubernetes.io/limit-burst-multiplier";
const ANN_WHITELIST: &str = "nginx.ingress.kubernetes.io/limit-whitelist";
const ANN_ALLOWLIST: &str = "nginx.ingress.kubernetes.io/limit-allowlist";

/// Whether an HTTPRoute filter is an `ExtensionRef` to a RateLimitPolicy
/// (resolved by [`attach`], not by the filter compiler).
pub fn is_policy_ref(f: &gateway_api::httproutes::HttpRouteRulesFilters) -> bool {
    f.r#type == FilterType::ExtensionRef && f.extension_ref.as_ref().is_some_and(|e| e.group == GROUP && e.kind == KIND)
}

type FieldError = (String, String);

/// Compiles one policy.
pub fn compile(p: &RateLimitPolicy) -> Result<RateLimit, FieldError> {
    let (ns, n) = (namespace(&p.metadata), name(&p.metadata));
    let spec = &p.spec;
    if spec.limit.requests == 0 {
        return Err(("spec.limit.requests".into(), "must be at least 1".into()));
    }
    let period = match spec.limit.unit {
        UnitSpec::Second => Duration::from_secs(1),
        UnitSpec::Minute => Duration::from_secs(60),
    };
    let mut rl = RateLimit::new(format!("{ns}/{n}"), spec.limit.requests, period);
    rl.burst = spec.limit.burst.unwrap_or(spec.limit.requests);
    if rl.burst == 0 {
        return Err(("spec.limit.burst".into(), "must be at least 1".into()));
    }
    if rl.burst > u64::from(u32::MAX) || rl.requests > u64::from(u32::MAX) {
        return Err(("spec.limit".into(), "requests and burst must be below 2^32".into()));
    }
    if let Some(parts) = &spec.key {
        let mut key = Vec::new();
        for (i, k) in parts.iter().enumerate() {
            key.push(match k.type_ {
                KeyType::ClientAddress => KeyPart::ClientAddress,
                KeyType::Route => KeyPart::Route,
                KeyType::Header => {
                    let h =
                        k.name.as_deref().ok_or((format!("spec.key[{i}].name"), "required for type Header".into()))?;
                    KeyPart::Header(
                        HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                            .map_err(|_| (format!("spec.key[{i}].name"), format!("invalid header name {h:?}")))?,
                    )
                }
            });
        }
        rl.key = key.into();
    }
    rl.trusted_hops = spec.trusted_hops;
    rl.allow = spec
        .allow
        .iter()
        .enumerate()
        .map(|(i, c)| Cidr::parse(c).map_err(|e| (format!("spec.allow[{i}]"), e)))
        .collect::<Result<_, _>>()?;
    rl.mode = match spec.mode {
        ModeSpec::Local => Mode::Local,
        ModeSpec::Cluster => Mode::Cluster,
        ModeSpec::Redis => {
            let r = spec.redis.clone().unwrap_or_default();
            let timeout = match &r.timeout {
                Some(t) => sluice_model::duration::parse_go_duration(t)
                    .filter(|d| !d.is_zero())
                    .ok_or(("spec.redis.timeout".to_string(), format!("invalid duration {t:?}")))?,
                None => Duration::from_millis(50),
            };
            if let Some(u) = &r.url
                && !(u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("redis+unix://"))
            {
                return Err(("spec.redis.url".into(), format!("{u:?} is not a redis:// URL")));
            }
            Mode::Redis(RedisSettings {
                url: r.url,
                timeout,
                fail_open: r.failure_mode.unwrap_or(FailureMode::Open) == FailureMode::Open,
            })
        }
    };
    if spec.redis.is_some() && spec.mode != ModeSpec::Redis {
        return Err(("spec.redis".into(), "only allowed with mode Redis".into()));
    }
    rl.headers_on_allowed = spec.remaining_header;
    if let Some(m) = spec.max_keys {
        rl.max_keys = usize::try_from(m)
            .ok()
            .filter(|m| *m > 0)
            .ok_or(("spec.maxKeys".to_string(), "must be at least 1".to_string()))?;
    }
    rl.status = StatusCode::TOO_MANY_REQUESTS;
    rl.finish();
    Ok(rl)
}

/// The limits an Ingress's annotations ask for (empty without
/// `limit-rps`/`limit-rpm`).
pub fn from_annotations(ns: &str, n: &str, meta: &ObjectMeta) -> Result<Vec<RateLimit>, FieldError> {
    let Some(a) = meta.annotations.as_ref() else { return Ok(Vec::new()) };
    let field = |k: &str| format!("metadata.annotations[{k}]");
    let num = |k: &str| -> Result<Option<u64>, FieldError> {
        a.get(k)
            .map(|v| v.trim().parse::<u64>().map_err(|_| (field(k), format!("{v:?} is not a non-negative integer"))))
            .transpose()
    };
    // ingress-nginx: "The burst limit is set to this limit multiplied by the
    // burst multiplier, the default multiplier is 5."
    let multiplier = num(ANN_BURST)?.unwrap_or(5);
    if multiplier == 0 {
        return Err((field(ANN_BURST), "must be at least 1".into()));
    }
    let allow = a
        .get(ANN_ALLOWLIST)
        .or_else(|| a.get(ANN_WHITELIST))
        .map(|list| {
            let k = if a.contains_key(ANN_ALLOWLIST) { ANN_ALLOWLIST } else { ANN_WHITELIST };
            list.split(',')
                .filter(|c| !c.trim().is_empty())
                .map(|c| Cidr::parse(c).map_err(|e| (field(k), e)))
                .collect()
        })
        .transpose()?
        .unwrap_or_else(Vec::new);
    let mut out = Vec::new();
    for (k, period, suffix) in [(ANN_RPS, 1, "rps"), (ANN_RPM, 60, "rpm")] {
        // ingress-nginx ignores 0 (no limit).
        let Some(requests) = num(k)?.filter(|r| *r > 0) else { continue };
        let mut rl = RateLimit::new(format!("{ns}/{n}/{suffix}"), requests, Duration::from_secs(period));
        rl.burst = requests.saturating_mul(multiplier).min(u64::from(u32::MAX));
        rl.allow = allow.clone().into();
        rl.finish();
        out.push(rl);
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
enum TargetKind {
    Gateway,
    HttpRoute,
    Ingress,
}

type TargetKey = (TargetKind, String, String, Option<String>);

/// Compiles every policy and the annotations, and prepends the rate limit
/// filters to the rules of `input`. Returns the limits in use.
pub fn attach(objects: &Objects, input: &mut TableInput, report: &mut Report) -> Vec<AttachedLimit> {
    // 1. Compile policies; order them oldest first for conflicts.
    let mut policies: Vec<&RateLimitPolicy> = objects.rate_limit_policies.iter().collect();
    policies.sort_by_key(|p| (created(&p.metadata), namespace(&p.metadata).to_string(), name(&p.metadata).to_string()));
    let mut compiled: HashMap<(String, String), Arc<RateLimit>> = HashMap::new();
    let mut targets: HashMap<TargetKey, Arc<RateLimit>> = HashMap::new();
    for p in &policies {
        let (ns, n, g) = (namespace(&p.metadata), name(&p.metadata), generation(&p.metadata));
        let object = format!("{KIND} {ns}/{n}");
        let rl = match compile(p) {
            Ok(rl) => Arc::new(rl),
            Err((field, msg)) => {
                report.push(Severity::Error, &object, field, msg);
                continue;
            }
        };
        compiled.insert((ns.to_string(), n.to_string()), rl.clone());
        let mut problems: Vec<(&'static str, String)> = Vec::new();
        for (i, t) in p.spec.target_refs.iter().enumerate() {
            let kind = match (t.group.as_str(), t.kind.as_str()) {
                ("gateway.networking.k8s.io", "Gateway") => TargetKind::Gateway,
                ("gateway.networking.k8s.io", "HTTPRoute") => TargetKind::HttpRoute,
                ("networking.k8s.io", "Ingress") => TargetKind::Ingress,
                (g, k) => {
                    let msg = format!("unsupported target {k} in group {g:?} (Gateway, HTTPRoute or Ingress)");
                    report.push(Severity::Warning, &object, format!("spec.targetRefs[{i}]"), msg.clone());
                    problems.push(("Invalid", msg));
                    continue;
                }
            };
            if let Err(msg) = target_exists(objects, kind, ns, &t.name, t.section_name.as_deref()) {
                report.push(Severity::Warning, &object, format!("spec.targetRefs[{i}]"), msg.clone());
                problems.push(("TargetNotFound", msg));
                continue;
            }
            let key = (kind, ns.to_string(), t.name.clone(), t.section_name.clone());
            match targets.get(&key) {
                Some(winner) => {
                    let msg = format!("{} {ns}/{} already has RateLimitPolicy {}", t.kind, t.name, winner.policy);
                    report.push(Severity::Warning, &object, format!("spec.targetRefs[{i}]"), msg.clone());
                    problems.push(("Conflicted", msg));
                }
                None => {
                    targets.insert(key, rl.clone());
                }
            }
        }
        let condition = match problems.first() {
            None => Condition::new("Accepted", true, "Accepted", "policy accepted", g),
            Some((reason, _)) => Condition::new(
                "Accepted",
                false,
                reason,
                problems.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "),
                g,
            ),
        };
        report.statuses.push(ObjectStatus {
            kind: KIND,
            namespace: ns.to_string(),
            name: n.to_string(),
            scope: Scope::Object,
            conditions: vec![condition],
        });
    }

    // 2. Annotations, per Ingress.
    let mut annotated: HashMap<(String, String), Vec<Arc<RateLimit>>> = HashMap::new();
    for ing in &objects.ingresses {
        let (ns, n) = (namespace(&ing.metadata), name(&ing.metadata));
        match from_annotations(ns, n, &ing.metadata) {
            Ok(v) if !v.is_empty() => {
                annotated.insert((ns.to_string(), n.to_string()), v.into_iter().map(Arc::new).collect());
            }
            Ok(_) => {}
            Err((field, msg)) => report.push(Severity::Error, format!("Ingress {ns}/{n}"), field, msg),
        }
    }

    // 3. Rules.
    let routes_by_name: HashMap<(&str, &str), &HttpRoute> =
        objects.http_routes.iter().map(|r| ((namespace(&r.metadata), name(&r.metadata)), &**r)).collect();
    let mut used: BTreeMap<usize, AttachedLimit> = BTreeMap::new();
    let mut rebuilt: HashMap<(usize, usize), Arc<Rule>> = HashMap::new();
    let mut reported_missing = std::collections::HashSet::new();
    let listener_gateways: Vec<Option<(String, String)>> = input
        .listeners
        .iter()
        .map(|l| {
            let mut it = l.name.splitn(3, '/');
            match (it.next(), it.next(), it.next()) {
                (Some(ns), Some(gw), Some(_)) => Some((ns.to_string(), gw.to_string())),
                _ => None,
            }
        })
        .collect();
    for route in &mut input.routes {
        let rr = route.route.clone();
        let (ns, n) = (rr.namespace.as_str(), rr.name.as_str());
        for rule_in in &mut route.rules {
            let rule = &rule_in.rule;
            let mut limits: Vec<Arc<RateLimit>> = Vec::new();
            let mut broken = false;
            match rr.kind {
                "HTTPRoute" => {
                    let spec_rule = routes_by_name
                        .get(&(ns, n))
                        .and_then(|r| r.spec.rules.as_ref())
                        .and_then(|rules| rules.get(rule.index));
                    let rule_name = spec_rule.and_then(|r| r.name.clone());
                    let gw = listener_gateways.get(route.listener).cloned().flatten();
                    let attached = rule_name
                        .and_then(|s| targets.get(&(TargetKind::HttpRoute, ns.into(), n.into(), Some(s))))
                        .or_else(|| targets.get(&(TargetKind::HttpRoute, ns.into(), n.into(), None)))
                        .or_else(|| gw.and_then(|(gns, gn)| targets.get(&(TargetKind::Gateway, gns, gn, None))));
                    limits.extend(attached.cloned());
                    for (fi, f) in spec_rule.and_then(|r| r.filters.as_ref()).into_iter().flatten().enumerate() {
                        if !is_policy_ref(f) {
                            continue;
                        }
                        let Some(e) = f.extension_ref.as_ref() else { continue };
                        match compiled.get(&(ns.to_string(), e.name.clone())) {
                            Some(rl) => {
                                if !limits.iter().any(|l| Arc::ptr_eq(l, rl)) {
                                    limits.push(rl.clone());
                                }
                            }
                            None => {
                                broken = true;
                                if reported_missing.insert((ns.to_string(), n.to_string(), rule.index, fi)) {
                                    report.push(
                                        Severity::Warning,
                                        format!("HTTPRoute {ns}/{n}"),
                                        format!("spec.rules[{}].filters[{fi}].extensionRef", rule.index),
                                        format!("{KIND} {ns}/{} not found (or invalid): the rule answers 500", e.name),
                                    );
                                }
                            }
                        }
                    }
                }
                "Ingress" => match targets.get(&(TargetKind::Ingress, ns.into(), n.into(), None)) {
                    Some(rl) => limits.push(rl.clone()),
                    None => {
                        limits.extend(annotated.get(&(ns.to_string(), n.to_string())).into_iter().flatten().cloned())
                    }
                },
                _ => {}
            }
            if limits.is_empty() && !broken {
                continue;
            }
            for rl in &limits {
                let entry = used
                    .entry(Arc::as_ptr(rl) as usize)
                    .or_insert_with(|| AttachedLimit { limit: rl.clone(), routes: Vec::new() });
                let label: Arc<str> = rr.label().into();
                if !entry.routes.contains(&label) {
                    entry.routes.push(label);
                }
            }
            // Rules shared by several listeners stay shared when they get
            // the same limits.
            let memo =
                (limits.len() == 1 && !broken).then(|| (Arc::as_ptr(rule) as usize, Arc::as_ptr(&limits[0]) as usize));
            if let Some(r) = memo.and_then(|m| rebuilt.get(&m)) {
                rule_in.rule = r.clone();
                continue;
            }
            let filters: Arc<[Filter]> =
                limits.iter().map(|l| Filter::RateLimit(l.clone())).chain(rule.filters.iter().cloned()).collect();
            let backends = if broken {
                BackendGroup::new(vec![WeightedBackend {
                    target: BackendTarget::Invalid,
                    weight: 1,
                    filters: Arc::new([]),
                }])
            } else {
                rule.backends.clone()
            };
            let new = Arc::new(Rule {
                route: rule.route.clone(),
                index: rule.index,
                filters,
                backends,
                request_timeout: rule.request_timeout,
                backend_timeout: rule.backend_timeout,
            });
            if let Some(m) = memo {
                rebuilt.insert(m, new.clone());
            }
            rule_in.rule = new;
        }
    }
    used.into_values().collect()
}

fn target_exists(objects: &Objects, kind: TargetKind, ns: &str, n: &str, section: Option<&str>) -> Result<(), String> {
    let found = match kind {
        TargetKind::Gateway => objects.gateways.iter().any(|g| namespace(&g.metadata) == ns && name(&g.metadata) == n),
        TargetKind::Ingress => objects.ingresses.iter().any(|g| namespace(&g.metadata) == ns && name(&g.metadata) == n),
        TargetKind::HttpRoute => {
            let Some(r) = objects.http_routes.iter().find(|r| namespace(&r.metadata) == ns && name(&r.metadata) == n)
            else {
                return Err(format!("HTTPRoute {ns}/{n} not found"));
            };
            if let Some(s) = section
                && !r.spec.rules.iter().flatten().any(|rule| rule.name.as_deref() == Some(s))
            {
                return Err(format!("HTTPRoute {ns}/{n} has no rule named {s:?}"));
            }
            true
        }
    };
    if !found {
        let k = if kind == TargetKind::Gateway { "Gateway" } else { "Ingress" };
        return Err(format!("{k} {ns}/{n} not found"));
    }
    if section.is_some() && kind != TargetKind::HttpRoute {
        return Err("sectionName is only supported for HTTPRoute rules".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// Ready endpoints (distinct addresses) in the EndpointSlices of Service
/// `ns/svc`: the Sluice replica count for cluster mode. An endpoint whose
/// `conditions.ready` is unset counts as ready (EndpointSlice semantics).
pub fn ready_replicas(objects: &Objects, ns: &str, svc: &str) -> usize {
    let mut addrs = std::collections::BTreeSet::new();
    for slice in &objects.endpoint_slices {
        let owner = slice.metadata.labels.as_ref().and_then(|l| l.get(crate::endpoints::SERVICE_NAME_LABEL));
        if namespace(&slice.metadata) != ns || owner.map(String::as_str) != Some(svc) {
            continue;
        }
        for ep in slice.endpoints.iter().flatten() {
            if ep.conditions.as_ref().and_then(|c| c.ready) != Some(false)
                && let Some(a) = ep.addresses.first()
            {
                addrs.insert(a.clone());
            }
        }
    }
    addrs.len()
}
