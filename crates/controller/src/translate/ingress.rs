//! Ingress v1 + IngressClass.
//!
//! All Ingresses Sluice owns share one listener per port (80), with Ingress
//! precedence (longest path, then Exact over Prefix) and single-label
//! wildcards. `pathType: ImplementationSpecific` is treated exactly like
//! `Prefix` (element-wise prefix match), as ingress-nginx does without its
//! regex annotation. A `defaultBackend` catches what no rule matches.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use sluice_model::{
    BackendGroup, BackendTarget, BindKey, Conditions, HostPattern, ListenerInput, MatchInput, PathMatch, Precedence,
    Protocol, RouteInput, RouteRef, Rule, RuleInput, TableInput, WeightedBackend,
};

use super::backend::{self, Unresolved};
use super::{Options, Services};
use crate::objects::{Objects, created, name, namespace};
use crate::report::{Report, Severity};

/// Annotation marking the default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// Deprecated class annotation that controllers still honour.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Port Ingress HTTP traffic is served on.
pub const HTTP_PORT: u16 = 80;
/// Port Ingress HTTPS traffic is served on (when an Ingress has `spec.tls`).
pub const HTTPS_PORT: u16 = 443;

/// The Ingresses Sluice serves: of one of its IngressClasses (by
/// `ingressClassName` or the class annotation), or without a class when
/// Sluice's class is the default.
pub(super) fn served<'a>(objects: &'a Objects, options: &Options) -> Vec<&'a Ingress> {
    let ours: BTreeSet<&str> = objects
        .ingress_classes
        .iter()
        .filter(|c| c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(options.ingress_controller.as_str()))
        .map(|c| name(&c.metadata))
        .collect();
    let default_is_ours = objects
        .ingress_classes
        .iter()
        .filter(|c| {
            c.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).is_some_and(|v| v == "true")
        })
        .any(|c| ours.contains(name(&c.metadata)));
    let ingresses: Vec<&Ingress> = objects
        .ingresses
        .iter()
        .filter(|i| {
            let class = i.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref());
            let annotation = i.metadata.annotations.as_ref().and_then(|a| a.get(CLASS_ANNOTATION)).map(String::as_str);
            match class.or(annotation) {
                Some(c) => ours.contains(c),
                None => default_is_ours,
            }
        })
        .collect();
    ingresses
}

pub(super) fn translate(
    objects: &Objects,
    options: &Options,
    input: &mut TableInput,
    services: &mut Services<'_>,
    report: &mut Report,
) {
    let mut ingresses = served(objects, options);
    if ingresses.is_empty() {
        return;
    }
    ingresses
        .sort_by_key(|i| (created(&i.metadata), namespace(&i.metadata).to_string(), name(&i.metadata).to_string()));
    // A Gateway listener that already serves port 80 (443) over TLS (plain)
    // owns that socket: the Ingress listener of the other kind stays off it
    // and every Ingress says so, instead of answering garbage.
    let owner = |input: &TableInput, port: u16, tls: bool| {
        input
            .listeners
            .iter()
            .find(|l| l.bind == BindKey { gateway: None, port } && (l.protocol == Protocol::Https) != tls)
            .map(|l| l.name.to_string())
    };
    let mut listeners = Vec::new();
    let plain = match owner(input, HTTP_PORT, false) {
        Some(gw) => {
            blocked(&ingresses, report, HTTP_PORT, "HTTP", &gw);
            None
        }
        None => {
            listeners.push(input.listeners.len());
            input.listeners.push(ListenerInput {
                bind: BindKey { gateway: None, port: HTTP_PORT },
                name: "ingress/http".into(),
                hostname: HostPattern::Any,
                port: HTTP_PORT,
                protocol: Protocol::Http,
                precedence: Precedence::Ingress,
                // Gateway listeners with an equal hostname on a shared port win.
                order: u32::MAX,
            });
            listeners.first().copied()
        }
    };
    // `spec.tls`: one HTTPS listener on 443 serving every Ingress rule
    // (as ingress-nginx does), with the certificates chosen by SNI.
    let mut certs = tls_certificates(&ingresses, objects, report);
    if !certs.is_empty() {
        if let Some(gw) = owner(input, HTTPS_PORT, true) {
            blocked(&ingresses, report, HTTPS_PORT, "HTTPS", &gw);
            // Nothing here serves their HTTPS: no redirects to it either
            // (`force-ssl-redirect` still redirects: TLS ends in front).
            certs.clear();
        } else {
            let https = input.listeners.len();
            input.listeners.push(ListenerInput {
                bind: BindKey { gateway: None, port: HTTPS_PORT },
                name: "ingress/https".into(),
                hostname: HostPattern::Any,
                port: HTTPS_PORT,
                protocol: Protocol::Https,
                precedence: Precedence::Ingress,
                order: u32::MAX,
            });
            for (_, host, cert) in &certs {
                input.certificates.push(sluice_model::CertInput {
                    listener: https,
                    host: host.clone(),
                    cert: cert.clone(),
                    names: super::tls::names(cert),
                });
            }
            listeners.push(https);
        }
    }
    for (i, ing) in ingresses.iter().enumerate() {
        let tls_hosts: Vec<&HostPattern> = certs.iter().filter(|c| c.0 == i).map(|c| &c.1).collect();
        let redirect = ssl_redirect(ing, &tls_hosts);
        translate_one(ing, &listeners, plain, &redirect, input, services, report);
    }
}

/// Reports on every served Ingress that `port` is not served as `protocol`
/// because the Gateway listener `owner` holds it with the other protocol.
fn blocked(ingresses: &[&Ingress], report: &mut Report, port: u16, protocol: &str, owner: &str) {
    let other = if protocol == "HTTP" { "HTTPS" } else { "HTTP" };
    for ing in ingresses {
        report.push(
            Severity::Warning,
            format!("Ingress {}/{}", namespace(&ing.metadata), name(&ing.metadata)),
            "spec.rules",
            format!(
                "not served as {protocol} on port {port}: Gateway listener {owner} serves that port as {other} \
                 (a socket speaks TLS or not, for every listener on it)"
            ),
        );
    }
}

/// ingress-nginx's annotation: on by default for the hosts of an Ingress's
/// `spec.tls` (here: those with a usable certificate); `"false"` turns it off.
pub const SSL_REDIRECT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/ssl-redirect";
/// ingress-nginx's annotation: redirect every rule of the Ingress to HTTPS,
/// with or without `spec.tls` (TLS terminated in front of Sluice, or by
/// another Ingress for the same host).
pub const FORCE_SSL_REDIRECT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/force-ssl-redirect";

/// Which rules of an Ingress answer plain HTTP with a 308 to HTTPS.
enum SslRedirect {
    None,
    Hosts(Vec<HostPattern>),
    All,
}

fn ssl_redirect(ing: &Ingress, tls_hosts: &[&HostPattern]) -> SslRedirect {
    let annotation = |k: &str| ing.metadata.annotations.as_ref().and_then(|a| a.get(k)).map(|v| v.trim());
    if annotation(FORCE_SSL_REDIRECT_ANNOTATION) == Some("true") {
        return SslRedirect::All;
    }
    if annotation(SSL_REDIRECT_ANNOTATION) == Some("false") || tls_hosts.is_empty() {
        return SslRedirect::None;
    }
    if tls_hosts.iter().any(|h| **h == HostPattern::Any) {
        return SslRedirect::All;
    }
    SslRedirect::Hosts(tls_hosts.iter().map(|h| (*h).clone()).collect())
}

fn redirect_rule(route: &Arc<RouteRef>, index: usize) -> Arc<Rule> {
    Arc::new(Rule {
        route: route.clone(),
        index,
        filters: Arc::new([sluice_model::Filter::Redirect(sluice_model::Redirect {
            scheme: Some("https".into()),
            hostname: None,
            port: None,
            path: None,
            status: http::StatusCode::PERMANENT_REDIRECT,
        })]),
        backends: BackendGroup::new(Vec::new()),
        request_timeout: None,
        backend_timeout: None,
    })
}

/// The certificates of every `spec.tls` entry, by host (an entry without
/// hosts is the catch-all). Bad Secrets are reported and skipped.
fn tls_certificates(
    ingresses: &[&Ingress],
    objects: &Objects,
    report: &mut Report,
) -> Vec<(usize, HostPattern, sluice_model::Certificate)> {
    let mut out = Vec::new();
    for (i, ing) in ingresses.iter().enumerate() {
        let (ns, iname) = (namespace(&ing.metadata), name(&ing.metadata));
        for (ti, t) in ing.spec.as_ref().and_then(|s| s.tls.as_ref()).into_iter().flatten().enumerate() {
            let Some(secret) = t.secret_name.as_deref().filter(|s| !s.is_empty()) else {
                report.push(
                    Severity::Warning,
                    format!("Ingress {ns}/{iname}"),
                    format!("spec.tls[{ti}].secretName"),
                    "no secretName: SNI routing without a certificate is not supported; entry ignored",
                );
                continue;
            };
            match super::tls::secret_certificate(objects, ns, secret) {
                Ok(cert) => {
                    let hosts: Vec<HostPattern> =
                        t.hosts.iter().flatten().map(|h| HostPattern::ingress(Some(h))).collect();
                    for h in hosts.iter().filter(|h| !super::tls::covers(&cert, h)) {
                        report.push(
                            Severity::Warning,
                            format!("Ingress {ns}/{iname}"),
                            format!("spec.tls[{ti}].hosts"),
                            super::tls::uncovered(ns, secret, h),
                        );
                    }
                    if let Some(w) = super::tls::expiry_warning(&cert, ns, secret, std::time::SystemTime::now()) {
                        report.push(
                            Severity::Warning,
                            format!("Ingress {ns}/{iname}"),
                            format!("spec.tls[{ti}].secretName"),
                            w,
                        );
                    }
                    if hosts.is_empty() {
                        out.push((i, HostPattern::Any, cert));
                    } else {
                        out.extend(hosts.into_iter().map(|h| (i, h, cert.clone())));
                    }
                }
                Err(e) => report.push(
                    Severity::Warning,
                    format!("Ingress {ns}/{iname}"),
                    format!("spec.tls[{ti}].secretName"),
                    format!("{e}; these hosts get no certificate"),
                ),
            }
        }
    }
    out
}

fn translate_one(
    ing: &Ingress,
    listeners: &[usize],
    plain: Option<usize>,
    redirect: &SslRedirect,
    input: &mut TableInput,
    services: &mut Services<'_>,
    report: &mut Report,
) {
    let (ns, iname) = (namespace(&ing.metadata), name(&ing.metadata));
    let object = format!("Ingress {ns}/{iname}");
    let route = Arc::new(RouteRef::new("Ingress", ns.to_string(), iname.to_string()));
    let Some(spec) = ing.spec.as_ref() else { return };
    let mut rule_index = 0;
    for (ri, r) in spec.rules.iter().flatten().enumerate() {
        let Some(http) = r.http.as_ref() else { continue };
        let host = HostPattern::ingress(r.host.as_deref());
        let mut rules = Vec::new();
        for (pi, p) in http.paths.iter().enumerate() {
            let field = format!("spec.rules[{ri}].http.paths[{pi}]");
            let value = p.path.as_deref().filter(|v| !v.is_empty()).unwrap_or("/");
            let path = match p.path_type.as_str() {
                _ if !value.starts_with('/') => {
                    report.push(
                        Severity::Error,
                        &object,
                        format!("{field}.path"),
                        format!("path {value:?} must start with '/'"),
                    );
                    continue;
                }
                "Exact" => PathMatch::Exact(value.to_string()),
                "Prefix" | "ImplementationSpecific" => PathMatch::prefix(value),
                other => {
                    report.push(
                        Severity::Error,
                        &object,
                        format!("{field}.pathType"),
                        format!("unsupported pathType {other:?}"),
                    );
                    continue;
                }
            };
            let backend = resolve(&p.backend, ns, services, report, &object, &format!("{field}.backend"));
            rules.push(RuleInput {
                rule: rule_for(&route, rule_index, backend),
                matches: vec![MatchInput { path, conditions: Conditions::default() }],
            });
            rule_index += 1;
        }
        let redirected = match redirect {
            SslRedirect::None => false,
            SslRedirect::All => true,
            SslRedirect::Hosts(hosts) => hosts.contains(&host),
        };
        for &listener in listeners {
            let rules = if Some(listener) == plain && redirected {
                rules
                    .iter()
                    .map(|r| RuleInput { rule: redirect_rule(&route, r.rule.index), matches: r.matches.clone() })
                    .collect()
            } else {
                rules.clone()
            };
            input.routes.push(RouteInput {
                listener,
                route: route.clone(),
                created: created(&ing.metadata),
                hostnames: vec![host.clone()],
                rules,
                fallback: false,
            });
        }
    }
    if let Some(b) = &spec.default_backend {
        let backend = resolve(b, ns, services, report, &object, "spec.defaultBackend");
        let rule = rule_for(&route, rule_index, backend);
        for &listener in listeners {
            input.routes.push(RouteInput {
                listener,
                route: route.clone(),
                created: created(&ing.metadata),
                hostnames: vec![HostPattern::Any],
                rules: vec![RuleInput {
                    rule: rule.clone(),
                    matches: vec![MatchInput { path: PathMatch::prefix("/"), conditions: Conditions::default() }],
                }],
                fallback: true,
            });
        }
    }
}

fn rule_for(route: &Arc<RouteRef>, index: usize, backend: WeightedBackend) -> Arc<Rule> {
    Arc::new(Rule {
        route: route.clone(),
        index,
        filters: Arc::new([]),
        backends: BackendGroup::new(vec![backend]),
        request_timeout: None,
        backend_timeout: None,
    })
}

fn resolve(
    b: &IngressBackend,
    ns: &str,
    services: &mut Services<'_>,
    report: &mut Report,
    object: &str,
    field: &str,
) -> WeightedBackend {
    let result = match (&b.service, &b.resource) {
        (Some(svc), _) => {
            let port = svc.port.as_ref();
            match services.index.service(ns, &svc.name) {
                None => Err(Unresolved {
                    reason: "BackendNotFound",
                    message: format!("Service {ns}/{} not found", svc.name),
                }),
                Some(service) => {
                    let number = match (port.and_then(|p| p.number), port.and_then(|p| p.name.as_deref())) {
                        (Some(n), _) => u16::try_from(n).ok(),
                        (None, Some(pname)) => service
                            .spec
                            .as_ref()
                            .and_then(|s| s.ports.as_ref())
                            .and_then(|ports| ports.iter().find(|p| p.name.as_deref() == Some(pname)))
                            .and_then(|p| u16::try_from(p.port).ok()),
                        (None, None) => None,
                    };
                    match number {
                        None => Err(Unresolved {
                            reason: "BackendNotFound",
                            message: format!("Service {ns}/{} has no such port", svc.name),
                        }),
                        Some(n) => backend::check_service(service, n, ns, &svc.name)
                            .and_then(|()| backend::check_tls(services, service, n, ns, &svc.name))
                            .map(|()| {
                                services.intern(sluice_model::ServiceRef {
                                    namespace: ns.to_string(),
                                    name: svc.name.clone(),
                                    port: n,
                                })
                            }),
                    }
                }
            }
        }
        (None, Some(r)) => {
            Err(Unresolved { reason: "InvalidKind", message: format!("resource backend {} is not supported", r.kind) })
        }
        (None, None) => {
            Err(Unresolved { reason: "BackendNotFound", message: "backend has neither service nor resource".into() })
        }
    };
    let target = match result {
        Ok(id) => BackendTarget::Service(id),
        Err(u) => {
            report.push(Severity::Warning, object, field, u.message);
            BackendTarget::Invalid
        }
    };
    WeightedBackend { target, weight: 1, filters: Arc::new([]) }
}
