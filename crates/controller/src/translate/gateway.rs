//! Gateway API: GatewayClass → Gateway listeners → HTTPRoute attachment,
//! rules, filters and backendRefs, with the spec's conditions and reasons.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gateway_api::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom as From_, GatewayListenersTlsMode as TlsMode,
};
use gateway_api::httproutes::{
    HttpRoute, HttpRouteRules, HttpRouteRulesFilters, HttpRouteRulesFiltersRequestRedirectPathType as RedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme as Scheme, HttpRouteRulesFiltersType as FilterType,
    HttpRouteRulesFiltersUrlRewritePathType as RewritePathType, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType as HeaderType, HttpRouteRulesMatchesPathType as PathType,
    HttpRouteRulesMatchesQueryParamsType as QueryType,
};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;
use sluice_model::duration::parse_go_duration;
use sluice_model::{
    BackendGroup, BackendTarget, BindKey, CertInput, Conditions, Filter, HeaderMatch, HeaderModifier, HostPattern,
    ListenerInput, MatchInput, PathMatch, PathModifier, Precedence, Protocol, QueryMatch, Redirect, Rewrite,
    RouteInput, RouteRef, Rule, RuleInput, TableInput, ValueMatch, WeightedBackend,
};

use super::backend::{self, Ref, Unresolved};
use super::tls;
use super::{Options, Services};
use crate::objects::{Objects, created, generation, name, namespace};
use crate::report::{Condition, ObjectStatus, Report, Scope, Severity};

const GROUP: &str = "gateway.networking.k8s.io";

/// Translation state of one Gateway listener.
pub(super) struct ListenerState<'a> {
    pub(super) gateway: &'a Gateway,
    pub(super) spec: &'a GatewayListeners,
    /// Index in `TableInput::listeners` when accepted.
    index: Option<usize>,
    hostname: HostPattern,
    supports_http_route: bool,
    pub(super) attached: u32,
    conditions: Vec<Condition>,
    supported_kinds: Vec<String>,
}

/// A route's rules, compiled once for all its parents.
struct CompiledRoute {
    rules: Vec<RuleInput>,
    unresolved: Vec<Unresolved>,
    dropped: Vec<String>,
    total_rules: usize,
}

pub(super) fn translate(
    objects: &Objects,
    options: &Options,
    input: &mut TableInput,
    services: &mut Services<'_>,
    report: &mut Report,
) {
    let (gateways, mut listeners) = listener_states(objects, options, input, report);

    let mut routes: Vec<&HttpRoute> = objects.http_routes.iter().map(|r| &**r).collect();
    routes.sort_by_key(|a| order_key(&a.metadata));
    for route in routes {
        attach_route(route, objects, &mut listeners, input, services, report);
    }

    // Listener and Gateway status, now that attachedRoutes is known.
    for gw in &gateways {
        let (gw_ns, gw_name, g) = (namespace(&gw.metadata), name(&gw.metadata), generation(&gw.metadata));
        let own: Vec<&ListenerState<'_>> = listeners.iter().filter(|l| std::ptr::eq(l.gateway, *gw)).collect();
        let accepted = own.iter().filter(|l| l.index.is_some()).count();
        for l in &own {
            report.statuses.push(ObjectStatus {
                kind: "Gateway",
                namespace: gw_ns.to_string(),
                name: gw_name.to_string(),
                scope: Scope::Listener {
                    name: l.spec.name.clone(),
                    attached_routes: l.attached,
                    supported_kinds: l.supported_kinds.clone(),
                },
                conditions: l.conditions.clone(),
            });
        }
        let all_ok = accepted == own.len();
        let (reason, msg) = if all_ok {
            ("Accepted", "all listeners accepted".to_string())
        } else {
            ("ListenersNotValid", format!("{accepted} of {} listeners accepted", own.len()))
        };
        report.statuses.push(ObjectStatus {
            kind: "Gateway",
            namespace: gw_ns.to_string(),
            name: gw_name.to_string(),
            scope: Scope::Object,
            conditions: vec![
                Condition::new("Accepted", accepted > 0, reason, msg, g),
                Condition::new(
                    "Programmed",
                    accepted > 0,
                    if accepted > 0 { "Programmed" } else { "Invalid" },
                    if accepted > 0 { "listeners programmed" } else { "no valid listener" },
                    g,
                ),
            ],
        });
    }
}

/// Accepted GatewayClasses (their status pushed), their Gateways oldest
/// first, and those Gateways' listeners (added to `input` when programmed).
pub(super) fn listener_states<'a>(
    objects: &'a Objects,
    options: &Options,
    input: &mut TableInput,
    report: &mut Report,
) -> (Vec<&'a Gateway>, Vec<ListenerState<'a>>) {
    let mut classes = BTreeSet::new();
    for gc in &objects.gateway_classes {
        if gc.spec.controller_name != options.gateway_controller {
            continue;
        }
        let n = name(&gc.metadata).to_string();
        report.statuses.push(ObjectStatus {
            kind: "GatewayClass",
            namespace: String::new(),
            name: n.clone(),
            scope: Scope::Object,
            conditions: vec![Condition::new(
                "Accepted",
                true,
                "Accepted",
                "handled by Sluice",
                generation(&gc.metadata),
            )],
        });
        classes.insert(n);
    }

    let mut gateways: Vec<&Gateway> =
        objects.gateways.iter().filter(|g| classes.contains(&g.spec.gateway_class_name)).collect();
    gateways.sort_by_key(|a| order_key(&a.metadata));

    let mut listeners: Vec<ListenerState<'_>> = Vec::new();
    let mut sockets = BTreeMap::new();
    for gw in &gateways {
        listeners.extend(gateway_listeners(gw, options, objects, &mut sockets, input, report));
    }
    (gateways, listeners)
}

pub(super) fn order_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (i64, String, String) {
    (created(meta), namespace(meta).to_string(), name(meta).to_string())
}

/// Who holds a shared socket: whether it speaks TLS, and the Gateway.
type Sockets = BTreeMap<BindKey, (bool, String)>;

/// The listeners of one Gateway. `sockets` carries the sockets claimed by
/// the (older) Gateways before it: a socket speaks TLS or not for every
/// listener on it, so a listener that disagrees with the Gateway holding its
/// port is a protocol conflict, reported on the younger one.
fn gateway_listeners<'a>(
    gw: &'a Gateway,
    options: &Options,
    objects: &Objects,
    sockets: &mut Sockets,
    input: &mut TableInput,
    report: &mut Report,
) -> Vec<ListenerState<'a>> {
    let (gw_ns, gw_name, g) = (namespace(&gw.metadata), name(&gw.metadata), generation(&gw.metadata));
    let gw_id = format!("{gw_ns}/{gw_name}");
    // Listeners sharing a port must agree on protocol and differ in hostname.
    let mut protocols: BTreeMap<i32, BTreeSet<&str>> = BTreeMap::new();
    let mut hostnames: BTreeMap<(i32, String), u32> = BTreeMap::new();
    for l in &gw.spec.listeners {
        protocols.entry(l.port).or_default().insert(l.protocol.as_str());
        *hostnames.entry((l.port, l.hostname.clone().unwrap_or_default())).or_default() += 1;
    }
    let mut out = Vec::new();
    for (li, l) in gw.spec.listeners.iter().enumerate() {
        let mut conditions = Vec::new();
        let (kinds, bad_kinds) = supported_kinds(l);
        let protocol_conflict = protocols.get(&l.port).is_some_and(|p| p.len() > 1);
        let hostname_conflict =
            hostnames.get(&(l.port, l.hostname.clone().unwrap_or_default())).is_some_and(|&n| n > 1);
        let port = u16::try_from(l.port).ok().filter(|&p| p > 0);
        let https = l.protocol == "HTTPS";
        let bind =
            port.map(|port| BindKey { gateway: options.isolate_gateways.then(|| Arc::from(gw_id.as_str())), port });
        let held_by = match bind.as_ref().and_then(|b| sockets.get(b)) {
            Some((tls, owner))
                if *tls != https && *owner != gw_id && matches!(l.protocol.as_str(), "HTTP" | "HTTPS") =>
            {
                Some(format!(
                    "port {} is served as {} by the older Gateway {owner}; Gateways sharing a port must agree on TLS",
                    l.port,
                    if *tls { "HTTPS" } else { "HTTP" }
                ))
            }
            _ => None,
        };
        let passthrough =
            l.tls.as_ref().and_then(|t| t.mode.as_ref()).is_some_and(|m| !matches!(m, TlsMode::Terminate));
        let (certs, cert_problems, cert_warnings) = if https && !passthrough {
            tls::listener_certificates(l, gw_ns, objects)
        } else {
            (vec![], vec![], vec![])
        };
        for w in cert_warnings {
            report.push(
                Severity::Warning,
                format!("Gateway {gw_ns}/{gw_name}"),
                format!("spec.listeners[{li}].tls.certificateRefs"),
                format!("listener {}: {w}", l.name),
            );
        }
        let (accepted, reason, msg): (bool, &'static str, String) = match (l.protocol.as_str(), port) {
            (_, None) => (false, "UnsupportedValue", format!("port {} is out of range", l.port)),
            ("HTTP" | "HTTPS", _) if protocol_conflict => {
                (false, "ProtocolConflict", "protocol conflicts with another listener on the port".into())
            }
            ("HTTP" | "HTTPS", _) if held_by.is_some() => {
                (false, "ProtocolConflict", held_by.clone().unwrap_or_default())
            }
            ("HTTP" | "HTTPS", _) if hostname_conflict => {
                (false, "HostnameConflict", "hostname conflicts with another listener on the port".into())
            }
            ("HTTPS", _) if passthrough => {
                (false, "UnsupportedValue", "tls.mode Passthrough needs TLSRoute, which Sluice does not support".into())
            }
            ("HTTP" | "HTTPS", _) => (true, "Accepted", "listener accepted".into()),
            (p, _) => (false, "UnsupportedProtocol", format!("protocol {p} is not supported yet")),
        };
        conditions.push(Condition::new("Accepted", accepted, reason, msg.clone(), g));
        let conflict = match (protocol_conflict || held_by.is_some(), hostname_conflict) {
            (true, _) => Some("ProtocolConflict"),
            (false, true) => Some("HostnameConflict"),
            _ => None,
        };
        conditions.push(match (conflict, &held_by) {
            (Some(r), Some(why)) if !protocol_conflict => Condition::new("Conflicted", true, r, why.clone(), g),
            (Some(r), _) => Condition::new("Conflicted", true, r, "listener conflicts with another listener", g),
            (None, _) => Condition::new("Conflicted", false, "NoConflicts", "no conflicts", g),
        });
        if let (true, Some(bind)) = (accepted, &bind) {
            sockets.entry(bind.clone()).or_insert_with(|| (https, gw_id.clone()));
        }
        conditions.push(if let (true, Some(first)) = (bad_kinds.is_empty(), cert_problems.first()) {
            let msg = cert_problems.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; ");
            for p in &cert_problems {
                report.push(
                    Severity::Warning,
                    format!("Gateway {gw_ns}/{gw_name}"),
                    format!("spec.listeners[{li}].tls.certificateRefs"),
                    format!("listener {}: {}: {}", l.name, p.reason, p.message),
                );
            }
            Condition::new("ResolvedRefs", false, first.reason, msg, g)
        } else if bad_kinds.is_empty() {
            Condition::new("ResolvedRefs", true, "ResolvedRefs", "all references resolved", g)
        } else {
            Condition::new(
                "ResolvedRefs",
                false,
                "InvalidRouteKinds",
                format!("unsupported route kinds: {}", bad_kinds.join(", ")),
                g,
            )
        });
        // An HTTPS listener without a usable certificate is accepted but
        // not programmed: it serves nothing, the other listeners carry on.
        let programmed = accepted && (!https || !certs.is_empty());
        conditions.push(Condition::new(
            "Programmed",
            programmed,
            if programmed { "Programmed" } else { "Invalid" },
            match (programmed, accepted) {
                (true, _) => "listener programmed",
                (false, true) => "no valid certificate",
                (false, false) => "listener not accepted",
            },
            g,
        ));
        let hostname = HostPattern::gateway(l.hostname.as_deref());
        let index = match (programmed, port, bind) {
            (true, Some(port), Some(bind)) => {
                input.listeners.push(ListenerInput {
                    bind,
                    name: format!("{gw_ns}/{gw_name}/{}", l.name).into(),
                    hostname: hostname.clone(),
                    port,
                    protocol: if https { Protocol::Https } else { Protocol::Http },
                    precedence: Precedence::GatewayApi,
                    order: u32::try_from(input.listeners.len()).unwrap_or(u32::MAX),
                });
                let index = input.listeners.len() - 1;
                for cert in certs {
                    input.certificates.push(CertInput {
                        listener: index,
                        host: hostname.clone(),
                        names: tls::names(&cert),
                        cert,
                    });
                }
                Some(index)
            }
            _ => {
                report.push(
                    Severity::Warning,
                    format!("Gateway {gw_ns}/{gw_name}"),
                    format!("spec.listeners[{li}]"),
                    if accepted {
                        format!("listener {} not programmed: no valid certificate", l.name)
                    } else {
                        format!("listener {} not accepted: {reason}: {msg}", l.name)
                    },
                );
                None
            }
        };
        out.push(ListenerState {
            gateway: gw,
            spec: l,
            index,
            hostname,
            supports_http_route: kinds.iter().any(|k| k == "HTTPRoute"),
            attached: 0,
            conditions,
            supported_kinds: kinds,
        });
    }
    out
}

/// (supported, unsupported) route kinds of a listener.
fn supported_kinds(l: &GatewayListeners) -> (Vec<String>, Vec<String>) {
    let requested = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()).filter(|k| !k.is_empty());
    let Some(requested) = requested else {
        return match l.protocol.as_str() {
            "HTTP" | "HTTPS" => (vec!["HTTPRoute".to_string()], vec![]),
            _ => (vec![], vec![]),
        };
    };
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for k in requested {
        let group = k.group.as_deref().unwrap_or(GROUP);
        if group == GROUP && k.kind == "HTTPRoute" {
            ok.push(k.kind.clone());
        } else {
            bad.push(format!("{group}/{}", k.kind));
        }
    }
    (ok, bad)
}

fn allows_namespace(l: &ListenerState<'_>, route_ns: &str, objects: &Objects) -> bool {
    let gw_ns = namespace(&l.gateway.metadata);
    let ns = l.spec.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref());
    match ns.and_then(|n| n.from.as_ref()) {
        None | Some(From_::Same) => route_ns == gw_ns,
        Some(From_::All) => true,
        Some(From_::Selector) => {
            let Some(sel) = ns.and_then(|n| n.selector.as_ref()) else { return false };
            let mut labels: BTreeMap<String, String> = objects
                .namespaces
                .iter()
                .find(|n| name(&n.metadata) == route_ns)
                .and_then(|n| n.metadata.labels.clone())
                .unwrap_or_default();
            labels.insert("kubernetes.io/metadata.name".into(), route_ns.to_string());
            let labels_ok = sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
            let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
                let values = e.values.as_deref().unwrap_or_default();
                let v = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => v.is_some_and(|v| values.contains(v)),
                    "NotIn" => v.is_none_or(|v| !values.contains(v)),
                    "Exists" => v.is_some(),
                    "DoesNotExist" => v.is_none(),
                    _ => false,
                }
            });
            labels_ok && exprs_ok
        }
    }
}

pub(super) fn attach_route(
    route: &HttpRoute,
    objects: &Objects,
    listeners: &mut [ListenerState<'_>],
    input: &mut TableInput,
    services: &mut Services<'_>,
    report: &mut Report,
) {
    let (ns, rname, g) = (namespace(&route.metadata), name(&route.metadata), generation(&route.metadata));
    let object = format!("HTTPRoute {ns}/{rname}");
    let route_hosts: Vec<HostPattern> =
        route.spec.hostnames.iter().flatten().map(|h| HostPattern::gateway(Some(h))).collect();
    let mut compiled: Option<CompiledRoute> = None;
    for pref in route.spec.parent_refs.iter().flatten() {
        if pref.group.as_deref().unwrap_or(GROUP) != GROUP || pref.kind.as_deref().unwrap_or("Gateway") != "Gateway" {
            continue;
        }
        let gw_ns = pref.namespace.as_deref().unwrap_or(ns);
        let ours: Vec<usize> = (0..listeners.len())
            .filter(|&i| {
                let gm = &listeners[i].gateway.metadata;
                namespace(gm) == gw_ns && name(gm) == pref.name
            })
            .collect();
        if ours.is_empty() {
            // Not a parent Sluice owns: no status entry (semantics §5.5).
            continue;
        }
        let c = compiled.get_or_insert_with(|| compile_rules(route, objects, services, report));
        let port = pref.port.and_then(|p| u16::try_from(p).ok());
        let matching: Vec<usize> = ours
            .into_iter()
            .filter(|&i| {
                let l = &listeners[i];
                pref.section_name.as_deref().is_none_or(|s| s == l.spec.name)
                    && pref.port.is_none_or(|p| p == l.spec.port)
            })
            .collect();
        let allowed: Vec<usize> = matching
            .iter()
            .copied()
            .filter(|&i| {
                let l = &listeners[i];
                l.index.is_some() && l.supports_http_route && allows_namespace(l, ns, objects)
            })
            .collect();
        let mut attach: Vec<(usize, Vec<HostPattern>)> = Vec::new();
        for &i in &allowed {
            let l = &listeners[i];
            if route_hosts.is_empty() {
                attach.push((i, Vec::new()));
                continue;
            }
            let mut hosts: Vec<HostPattern> =
                route_hosts.iter().filter_map(|h| HostPattern::intersect(&l.hostname, h)).collect();
            hosts.dedup();
            if !hosts.is_empty() {
                attach.push((i, hosts));
            }
        }
        let all_rules_invalid = c.total_rules > 0 && c.rules.is_empty();
        let accepted = match () {
            _ if matching.is_empty() => {
                Err(("NoMatchingParent", "no listener matches the parentRef's sectionName/port"))
            }
            _ if allowed.is_empty() => {
                Err(("NotAllowedByListeners", "no listener allows this route (namespace or kind)"))
            }
            _ if attach.is_empty() => {
                Err(("NoMatchingListenerHostname", "no listener hostname intersects the route's hostnames"))
            }
            _ if all_rules_invalid => Err(("UnsupportedValue", "every rule is invalid")),
            _ => Ok(()),
        };
        if accepted.is_ok() {
            for (i, hostnames) in attach {
                let l = &mut listeners[i];
                l.attached += 1;
                if let Some(listener) = l.index {
                    input.routes.push(RouteInput {
                        listener,
                        route: Arc::new(RouteRef::new("HTTPRoute", ns.to_string(), rname.to_string())),
                        created: created(&route.metadata),
                        hostnames,
                        rules: c.rules.clone(),
                        fallback: false,
                    });
                }
            }
        }
        let mut conditions = vec![match accepted {
            Ok(()) => Condition::new("Accepted", true, "Accepted", "route accepted", g),
            Err((reason, msg)) => {
                report.push(
                    Severity::Warning,
                    &object,
                    "spec.parentRefs",
                    format!("not accepted by Gateway {gw_ns}/{}: {msg}", pref.name),
                );
                Condition::new("Accepted", false, reason, msg, g)
            }
        }];
        conditions.push(match c.unresolved.first() {
            None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "all references resolved", g),
            Some(first) => Condition::new(
                "ResolvedRefs",
                false,
                first.reason,
                c.unresolved.iter().map(|u| u.message.as_str()).collect::<Vec<_>>().join("; "),
                g,
            ),
        });
        if !c.dropped.is_empty() && !all_rules_invalid {
            conditions.push(Condition::new(
                "PartiallyInvalid",
                true,
                "UnsupportedValue",
                format!("Dropped Rule(s): {}", c.dropped.join("; ")),
                g,
            ));
        }
        report.statuses.push(ObjectStatus {
            kind: "HTTPRoute",
            namespace: ns.to_string(),
            name: rname.to_string(),
            scope: Scope::Parent {
                gateway: format!("{gw_ns}/{}", pref.name),
                section: pref.section_name.clone(),
                port,
            },
            conditions,
        });
    }
}

fn compile_rules(
    route: &HttpRoute,
    objects: &Objects,
    services: &mut Services<'_>,
    report: &mut Report,
) -> CompiledRoute {
    let (ns, rname) = (namespace(&route.metadata), name(&route.metadata));
    let object = format!("HTTPRoute {ns}/{rname}");
    let route_ref = Arc::new(RouteRef::new("HTTPRoute", ns.to_string(), rname.to_string()));
    let rules = route.spec.rules.as_deref().unwrap_or_default();
    let mut out =
        CompiledRoute { rules: Vec::new(), unresolved: Vec::new(), dropped: Vec::new(), total_rules: rules.len() };
    for (ri, rule) in rules.iter().enumerate() {
        match compile_rule(rule, ri, &route_ref, objects, services) {
            Ok((r, unresolved)) => {
                for u in &unresolved {
                    report.push(Severity::Warning, &object, format!("spec.rules[{ri}].backendRefs"), u.message.clone());
                }
                out.unresolved.extend(unresolved);
                out.rules.push(r);
            }
            Err((field, msg)) => {
                report.push(Severity::Error, &object, format!("spec.rules[{ri}]{field}"), msg.clone());
                out.dropped.push(format!("rules[{ri}]: {msg}"));
            }
        }
    }
    out
}

type RuleError = (String, String);

fn compile_rule(
    rule: &HttpRouteRules,
    ri: usize,
    route: &Arc<RouteRef>,
    objects: &Objects,
    services: &mut Services<'_>,
) -> Result<(RuleInput, Vec<Unresolved>), RuleError> {
    let default_match = [HttpRouteRulesMatches::default()];
    let matches_src = rule.matches.as_deref().filter(|m| !m.is_empty()).unwrap_or(&default_match);
    let matches = matches_src
        .iter()
        .enumerate()
        .map(|(mi, m)| compile_match(m).map_err(|(f, e)| (format!(".matches[{mi}]{f}"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let single_prefix = matches.len() == 1 && matches.iter().all(|m| matches!(m.path, PathMatch::Prefix(_)));
    let filters = compile_filters(rule.filters.as_deref().unwrap_or_default(), single_prefix)
        .map_err(|(i, e)| (format!(".filters[{i}]"), e))?;
    let mut unresolved = Vec::new();
    let mut backends = Vec::new();
    let mut unsupported_filter = filters.iter().find_map(|f| f.1.clone());
    let filters: Vec<Filter> = filters.into_iter().filter_map(|f| f.0).collect();
    let redirects = filters.iter().any(|f| matches!(f, Filter::Redirect(_)));
    let from = backend::From { group: GROUP, kind: "HTTPRoute", namespace: &route.namespace };
    for (bi, b) in rule.backend_refs.iter().flatten().enumerate() {
        let bfilters = b
            .filters
            .iter()
            .flatten()
            .map(|f| serde_json::to_value(f).ok().and_then(|v| serde_json::from_value::<HttpRouteRulesFilters>(v).ok()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| (format!(".backendRefs[{bi}].filters"), "invalid filter".to_string()))?;
        let bfilters = compile_filters(&bfilters, single_prefix)
            .map_err(|(i, e)| (format!(".backendRefs[{bi}].filters[{i}]"), e))?;
        if let Some(u) = bfilters.iter().find_map(|f| f.1.clone()) {
            unsupported_filter.get_or_insert(u);
        }
        let bfilters: Arc<[Filter]> = bfilters.into_iter().filter_map(|f| f.0).collect();
        let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
        let r = Ref {
            group: b.group.as_deref(),
            kind: b.kind.as_deref(),
            name: &b.name,
            namespace: b.namespace.as_deref(),
            port: b.port,
        };
        let (wb, err) = backend::resolve(&r, &from, weight, bfilters, objects, services);
        unresolved.extend(err);
        backends.push(wb);
    }
    if let Some(why) = unsupported_filter {
        // "If a reference to a custom filter type cannot be resolved, the
        // filter MUST NOT be skipped": the rule answers 500.
        backends = vec![WeightedBackend { target: BackendTarget::Invalid, weight: 1, filters: Arc::new([]) }];
        unresolved.push(Unresolved { reason: "UnsupportedValue", message: why });
    }
    let timeouts = rule.timeouts.as_ref();
    let parse_timeout = |v: Option<&String>, field: &str| -> Result<_, RuleError> {
        v.map(|s| parse_go_duration(s).ok_or_else(|| (format!(".timeouts.{field}"), format!("invalid duration {s:?}"))))
            .transpose()
    };
    let request_timeout = parse_timeout(timeouts.and_then(|t| t.request.as_ref()), "request")?;
    let backend_timeout = parse_timeout(timeouts.and_then(|t| t.backend_request.as_ref()), "backendRequest")?;
    let rule = Arc::new(Rule {
        route: route.clone(),
        index: ri,
        filters: filters.into(),
        backends: if redirects { BackendGroup::default() } else { BackendGroup::new(backends) },
        request_timeout,
        backend_timeout,
    });
    Ok((RuleInput { rule, matches }, unresolved))
}

fn compile_match(m: &HttpRouteRulesMatches) -> Result<MatchInput, RuleError> {
    let (ty, value) = match &m.path {
        Some(p) => (p.r#type.clone().unwrap_or(PathType::PathPrefix), p.value.clone().unwrap_or_else(|| "/".into())),
        None => (PathType::PathPrefix, "/".to_string()),
    };
    let path = match ty {
        PathType::Exact | PathType::PathPrefix if !value.starts_with('/') => {
            return Err((".path.value".into(), format!("path {value:?} must start with '/'")));
        }
        PathType::Exact => PathMatch::Exact(value),
        PathType::PathPrefix => PathMatch::prefix(&value),
        PathType::RegularExpression => PathMatch::regex(&value)
            .map_err(|e| (".path.value".to_string(), format!("invalid regular expression: {e}")))?,
    };
    let mut conditions = Conditions::default();
    if let Some(method) = &m.method {
        let s = serde_json::to_value(method).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        conditions.method =
            Some(Method::from_bytes(s.as_bytes()).map_err(|_| (".method".to_string(), format!("invalid method {s}")))?);
    }
    let mut seen = std::collections::HashSet::new();
    for (hi, h) in m.headers.iter().flatten().enumerate() {
        let name = HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
            .map_err(|_| (format!(".headers[{hi}].name"), format!("invalid header name {:?}", h.name)))?;
        // "only the first entry with an equivalent name MUST be considered".
        if !seen.insert(name.clone()) {
            continue;
        }
        let value = match h.r#type.clone().unwrap_or(HeaderType::Exact) {
            HeaderType::Exact => ValueMatch::Exact(h.value.clone()),
            HeaderType::RegularExpression => ValueMatch::regex(&h.value)
                .map_err(|e| (format!(".headers[{hi}].value"), format!("invalid regular expression: {e}")))?,
        };
        conditions.headers.push(HeaderMatch { name, value });
    }
    let mut seen = BTreeSet::new();
    for (qi, q) in m.query_params.iter().flatten().enumerate() {
        if !seen.insert(q.name.clone()) {
            continue;
        }
        let value = match q.r#type.clone().unwrap_or(QueryType::Exact) {
            QueryType::Exact => ValueMatch::Exact(q.value.clone()),
            QueryType::RegularExpression => ValueMatch::regex(&q.value)
                .map_err(|e| (format!(".queryParams[{qi}].value"), format!("invalid regular expression: {e}")))?,
        };
        conditions.query.push(QueryMatch { name: q.name.clone(), value });
    }
    Ok(MatchInput { path, conditions })
}

/// A compiled filter, or a reason the filter is unsupported (the rule then
/// answers 500).
type CompiledFilter = (Option<Filter>, Option<String>);

fn compile_filters(
    filters: &[HttpRouteRulesFilters],
    single_prefix: bool,
) -> Result<Vec<CompiledFilter>, (usize, String)> {
    filters.iter().enumerate().map(|(i, f)| compile_filter(f, single_prefix).map_err(|e| (i, e))).collect()
}

#[derive(Deserialize, Default)]
struct HeaderFilterSpec {
    #[serde(default)]
    set: Vec<NameValue>,
    #[serde(default)]
    add: Vec<NameValue>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
struct NameValue {
    name: String,
    value: String,
}

fn header_modifier<T: serde::Serialize>(spec: Option<&T>) -> Result<HeaderModifier, String> {
    let spec: HeaderFilterSpec = match spec {
        Some(s) => serde_json::to_value(s).and_then(serde_json::from_value).map_err(|e| e.to_string())?,
        None => HeaderFilterSpec::default(),
    };
    let name = |n: &str| {
        HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).map_err(|_| format!("invalid header name {n:?}"))
    };
    let pair = |nv: &NameValue| -> Result<(HeaderName, HeaderValue), String> {
        Ok((
            name(&nv.name)?,
            HeaderValue::from_str(&nv.value).map_err(|_| format!("invalid value for header {}", nv.name))?,
        ))
    };
    Ok(HeaderModifier {
        set: spec.set.iter().map(pair).collect::<Result<_, _>>()?,
        add: spec.add.iter().map(pair).collect::<Result<_, _>>()?,
        remove: spec.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
    })
}

fn path_modifier(
    full: Option<&String>,
    prefix: Option<&String>,
    is_prefix: bool,
    single_prefix: bool,
) -> Result<PathModifier, String> {
    if is_prefix {
        if !single_prefix {
            return Err("ReplacePrefixMatch requires exactly one PathPrefix match in the rule".into());
        }
        Ok(PathModifier::Prefix(prefix.cloned().unwrap_or_default()))
    } else {
        Ok(PathModifier::Full(full.cloned().unwrap_or_else(|| "/".into())))
    }
}

fn compile_filter(f: &HttpRouteRulesFilters, single_prefix: bool) -> Result<CompiledFilter, String> {
    let filter = match f.r#type {
        FilterType::RequestHeaderModifier => {
            Filter::RequestHeaders(header_modifier(f.request_header_modifier.as_ref())?)
        }
        FilterType::ResponseHeaderModifier => {
            Filter::ResponseHeaders(header_modifier(f.response_header_modifier.as_ref())?)
        }
        FilterType::RequestRedirect => {
            let r = f.request_redirect.as_ref().ok_or("requestRedirect is required for type RequestRedirect")?;
            let status = StatusCode::from_u16(u16::try_from(r.status_code.unwrap_or(302)).unwrap_or(0))
                .ok()
                .filter(|s| matches!(s.as_u16(), 301 | 302 | 303 | 307 | 308))
                .ok_or("statusCode must be one of 301, 302, 303, 307, 308")?;
            let path = match &r.path {
                Some(p) => Some(path_modifier(
                    p.replace_full_path.as_ref(),
                    p.replace_prefix_match.as_ref(),
                    p.r#type == RedirectPathType::ReplacePrefixMatch,
                    single_prefix,
                )?),
                None => None,
            };
            Filter::Redirect(Redirect {
                scheme: r.scheme.as_ref().map(|s| match s {
                    Scheme::Http => "http".to_string(),
                    Scheme::Https => "https".to_string(),
                }),
                hostname: r.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
                port: r.port.map(|p| u16::try_from(p).map_err(|_| format!("port {p} is out of range"))).transpose()?,
                path,
                status,
            })
        }
        FilterType::UrlRewrite => {
            let r = f.url_rewrite.as_ref().ok_or("urlRewrite is required for type URLRewrite")?;
            let path = match &r.path {
                Some(p) => Some(path_modifier(
                    p.replace_full_path.as_ref(),
                    p.replace_prefix_match.as_ref(),
                    p.r#type == RewritePathType::ReplacePrefixMatch,
                    single_prefix,
                )?),
                None => None,
            };
            let hostname = r
                .hostname
                .as_ref()
                .map(|h| HeaderValue::from_str(h).map_err(|_| format!("invalid hostname {h:?}")))
                .transpose()?;
            Filter::Rewrite(Rewrite { hostname, path })
        }
        // Resolved (or reported missing) by `crate::ratelimit::attach`.
        FilterType::ExtensionRef if crate::ratelimit::is_policy_ref(f) => return Ok((None, None)),
        FilterType::RequestMirror | FilterType::ExtensionRef | FilterType::Cors => {
            let name =
                serde_json::to_value(&f.r#type).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            return Ok((None, Some(format!("filter {name} is not supported yet"))));
        }
    };
    Ok((Some(filter), None))
}
