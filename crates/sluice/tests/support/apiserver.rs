//! A small in-process Kubernetes API server for the Kubernetes-mode tests.
//!
//! It speaks the protocol the real kube client uses, over plain HTTP/1.1 on
//! 127.0.0.1: `GET` lists (with `metadata.resourceVersion`, namespace and
//! `fieldSelector` and `labelSelector` (equality terms) filtering, pages by
//! `limit`/`continue`), `?watch=true` chunked streams of JSON watch
//! events replayed from the requested `resourceVersion` (with periodic
//! `BOOKMARK`s, and an `ERROR` event with code 410 Gone when that version
//! has been compacted, which forces the client to re-list), `GET`/`POST`/
//! `PUT` of single objects (`PUT` and patches honour a `resourceVersion`
//! precondition with 409 Conflict), JSON merge patches (and apply patches,
//! treated as merges) on objects and on their `/status` subresource, and
//! `DELETE`. `metadata.generation` moves when anything but metadata and
//! status changes, as with CRDs.
//!
//! Tests drive it directly: [`ApiServer::apply`] / [`ApiServer::delete`]
//! change objects (as `kubectl` would), [`ApiServer::drop_watches`],
//! [`ApiServer::compact`] and [`ApiServer::set_unavailable`] break watches,
//! [`ApiServer::uninstall`] and [`ApiServer::forbid`] take a resource away
//! (404, as without its CRD; 403, as without RBAC), and [`ApiServer::get`]
//! reads what Sluice wrote.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

/// (group, plural): where objects of a resource live.
type Res = (String, String);
/// (namespace or "", name).
type Id = (String, String);

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    res: Res,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Db {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    objects: BTreeMap<Res, BTreeMap<Id, Value>>,
    log: Vec<Event>,
    unavailable: bool,
    /// Every request, `METHOD path?query`.
    requests: Vec<String>,
    uid: u64,
    /// The next this many `/status` patches fail with 409 Conflict.
    conflicts: u32,
    /// Resources (plurals) not served, as if their CRD were not installed.
    uninstalled: Vec<String>,
    /// Resources (plurals) every request for which gets 403 Forbidden.
    forbidden: Vec<String>,
    /// Every distinct `Authorization` header seen ("" for none).
    authorizations: std::collections::BTreeSet<String>,
}

struct Shared {
    db: Mutex<Db>,
    events: broadcast::Sender<Event>,
    /// Bumped to end every open watch.
    drops: watch::Sender<u64>,
}

/// The fake API server; stops on drop.
pub struct ApiServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
    /// The CA (its own self-signed certificate) when serving HTTPS.
    ca_pem: Option<String>,
}

/// A kind the server knows: (apiVersion, plural, namespaced).
pub fn resource_of(kind: &str) -> Option<(&'static str, &'static str, bool)> {
    Some(match kind {
        "GatewayClass" => ("gateway.networking.k8s.io/v1", "gatewayclasses", false),
        "Gateway" => ("gateway.networking.k8s.io/v1", "gateways", true),
        "HTTPRoute" => ("gateway.networking.k8s.io/v1", "httproutes", true),
        "ReferenceGrant" => ("gateway.networking.k8s.io/v1", "referencegrants", true),
        "Ingress" => ("networking.k8s.io/v1", "ingresses", true),
        "IngressClass" => ("networking.k8s.io/v1", "ingressclasses", false),
        "Service" => ("v1", "services", true),
        "EndpointSlice" => ("discovery.k8s.io/v1", "endpointslices", true),
        "Namespace" => ("v1", "namespaces", false),
        "Secret" => ("v1", "secrets", true),
        "ConfigMap" => ("v1", "configmaps", true),
        "Lease" => ("coordination.k8s.io/v1", "leases", true),
        "RateLimitPolicy" => ("policy.sluice.dev/v1alpha1", "ratelimitpolicies", true),
        "BackendTLSPolicy" => ("gateway.networking.k8s.io/v1", "backendtlspolicies", true),
        _ => return None,
    })
}

/// Whether `group/version` serves `plural` (as the v1.6.1 CRDs and
/// Kubernetes 1.36 do): a client asking for another version gets 404.
fn served(group: &str, version: &str, plural: &str) -> bool {
    let Some(kind) = KINDS.iter().find(|k| res_of(k).is_some_and(|((g, p), _)| g == group && p == plural)) else {
        return false;
    };
    let api = resource_of(kind).map_or("", |r| r.0);
    let v = api.rsplit_once('/').map_or(api, |(_, v)| v);
    v == version || (*kind == "ReferenceGrant" && version == "v1beta1")
}

const KINDS: &[&str] = &[
    "GatewayClass",
    "Gateway",
    "HTTPRoute",
    "ReferenceGrant",
    "Ingress",
    "IngressClass",
    "Service",
    "EndpointSlice",
    "Namespace",
    "Secret",
    "ConfigMap",
    "Lease",
    "RateLimitPolicy",
    "BackendTLSPolicy",
];

fn res_of(kind: &str) -> Option<(Res, bool)> {
    let (api, plural, namespaced) = resource_of(kind)?;
    let group = api.rsplit_once('/').map_or("", |(g, _)| g);
    Some(((group.to_string(), plural.to_string()), namespaced))
}

fn kind_of(res: &Res) -> &'static str {
    KINDS.iter().copied().find(|k| res_of(k).is_some_and(|(r, _)| &r == res)).unwrap_or("Unknown")
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Everything but metadata and status (what moves `metadata.generation`).
fn spec_of(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// A label selector of equality terms (`k=v`, `k==v`, `k!=v`, `k`).
fn labels_match(obj: &Value, selector: Option<&str>) -> bool {
    let labels = obj.pointer("/metadata/labels");
    selector.into_iter().flat_map(|s| s.split(',')).filter(|s| !s.is_empty()).all(|term| {
        let label = |k: &str| labels.and_then(|l| l.get(k.trim())).and_then(Value::as_str);
        match term.split_once("!=") {
            Some((k, v)) => label(k) != Some(v.trim()),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((k, v)) => label(k) == Some(v.trim()),
                None => label(term).is_some(),
            },
        }
    })
}

fn field_matches(obj: &Value, selector: Option<&str>) -> bool {
    selector.into_iter().flat_map(|s| s.split(',')).filter(|s| !s.is_empty()).all(|term| {
        let (neg, (k, v)) = match term.split_once("!=") {
            Some(kv) => (true, kv),
            None => (false, term.split_once("==").or_else(|| term.split_once('=')).unwrap_or((term, ""))),
        };
        let ptr = format!("/{}", k.replace('.', "/"));
        let actual = obj.pointer(&ptr).and_then(Value::as_str).unwrap_or_default();
        (actual == v) != neg
    })
}

impl Db {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, shared_events: &broadcast::Sender<Event>, res: Res, kind: &'static str, object: Value) {
        let rv = object.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|s| s.parse().ok());
        let ev = Event { rv: rv.unwrap_or(self.rv), res, kind, object };
        self.log.push(ev.clone());
        let _ = shared_events.send(ev);
    }

    /// Creates or replaces (keeping status and bookkeeping) `obj`.
    fn upsert(&mut self, events: &broadcast::Sender<Event>, obj: Value, keep_status: bool) -> Result<Value, Status> {
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        let (res, namespaced) = res_of(&kind).ok_or_else(|| Status::new(400, "BadRequest", format!("kind {kind}")))?;
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let ns = if namespaced {
            obj.pointer("/metadata/namespace").and_then(Value::as_str).filter(|n| !n.is_empty()).unwrap_or("default")
        } else {
            ""
        }
        .to_string();
        let id = (ns.clone(), name);
        let existing = self.objects.get(&res).and_then(|m| m.get(&id)).cloned();
        let mut obj = obj;
        if let Some(api) = resource_of(&kind).map(|r| r.0) {
            obj["apiVersion"] = json!(api);
        }
        if namespaced {
            obj["metadata"]["namespace"] = json!(ns);
        }
        let (event, generation) = match &existing {
            Some(old) => {
                let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
                let g = if spec_of(old) == spec_of(&obj) { g } else { g + 1 };
                if keep_status {
                    match old.get("status") {
                        Some(s) => obj["status"] = s.clone(),
                        None => {
                            obj.as_object_mut().map(|m| m.remove("status"));
                        }
                    }
                }
                for k in ["uid", "creationTimestamp"] {
                    obj["metadata"][k] = old["metadata"][k].clone();
                }
                ("MODIFIED", g)
            }
            None => {
                self.uid += 1;
                obj["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", self.uid));
                obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
                ("ADDED", 1)
            }
        };
        obj["metadata"]["generation"] = json!(generation);
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects.entry(res.clone()).or_default().insert(id, obj.clone());
        self.record(events, res, event, obj.clone());
        Ok(obj)
    }
}

/// A Kubernetes `Status` error.
#[derive(Debug)]
struct Status {
    code: u16,
    reason: &'static str,
    message: String,
}

impl Status {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into() }
    }

    fn json(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code})
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn respond(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap_or_else(|e| panic!("response: {e}"))
}

/// A parsed API path.
#[derive(Debug)]
struct Target {
    res: Res,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(*s)),
        _ => return None,
    };
    if !served(group, version, plural) {
        return None;
    }
    Some(Target { res: (group.to_string(), plural.to_string()), namespace, name, status: sub == Some("status") })
}

fn query(q: &str, key: &str) -> Option<String> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(c) => {
                        out.push(c);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let q = req.uri().query().unwrap_or_default().to_string();
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let content_type = header("content-type");
    let authorization = header("authorization");
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    {
        let mut db = shared.db.lock().expect("db");
        db.requests.push(format!("{method} {path}?{q}"));
        db.authorizations.insert(authorization);
        if db.unavailable {
            return respond(503, &Status::new(503, "ServiceUnavailable", "unavailable (test)").json());
        }
    }
    let (uninstalled, forbidden) = {
        let db = shared.db.lock().expect("db");
        (db.uninstalled.clone(), db.forbidden.clone())
    };
    let Some(t) = parse_path(&path).filter(|t| !uninstalled.contains(&t.res.1)) else {
        return respond(
            404,
            &Status::new(404, "NotFound", format!("the server could not find the requested resource ({path})")).json(),
        );
    };
    if forbidden.contains(&t.res.1) {
        let msg = format!("{} is forbidden: User cannot list resource {:?} (test)", t.res.1, t.res.1);
        return respond(403, &Status::new(403, "Forbidden", msg).json());
    }
    let result = match (&method, &t.name) {
        (&Method::GET, None) if matches!(query(&q, "watch").as_deref(), Some("true" | "1")) => {
            return watch_stream(shared, &t, &q);
        }
        (&Method::GET, None) => Ok(list(&shared, &t, &q)),
        (&Method::GET, Some(_)) => get(&shared, &t),
        (&Method::POST, None) => create(&shared, &t, &body),
        (&Method::PUT, Some(_)) => replace(&shared, &t, &body),
        (&Method::PATCH, Some(_)) => patch(&shared, &t, &body, &content_type),
        (&Method::DELETE, Some(_)) => delete(&shared, &t),
        _ => Err(Status::new(405, "MethodNotAllowed", format!("{method} {path}"))),
    };
    match result {
        Ok(v) => respond(if method == Method::POST { 201 } else { 200 }, &v),
        Err(s) => respond(s.code, &s.json()),
    }
}

fn id_of(t: &Target) -> Id {
    (t.namespace.clone().unwrap_or_default(), t.name.clone().unwrap_or_default())
}

fn list(shared: &Shared, t: &Target, q: &str) -> Value {
    let db = shared.db.lock().expect("db");
    let fields = query(q, "fieldSelector");
    let labels = query(q, "labelSelector");
    // Pages: `limit`, and `continue` = the offset of the next page.
    let limit = query(q, "limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let offset = query(q, "continue").and_then(|c| c.parse::<usize>().ok()).unwrap_or(0);
    let mut items: Vec<Value> = db
        .objects
        .get(&t.res)
        .into_iter()
        .flatten()
        .filter(|((ns, _), _)| t.namespace.as_ref().is_none_or(|want| want == ns))
        .filter(|(_, o)| field_matches(o, fields.as_deref()) && labels_match(o, labels.as_deref()))
        .skip(offset)
        .take(limit.saturating_add(1))
        .map(|(_, o)| o.clone())
        .collect();
    let more = items.len() > limit;
    items.truncate(limit);
    let kind = kind_of(&t.res);
    let mut metadata = json!({"resourceVersion": db.rv.to_string()});
    if more {
        metadata["continue"] = json!((offset + limit).to_string());
    }
    json!({
        "kind": format!("{kind}List"),
        "apiVersion": resource_of(kind).map_or("v1", |r| r.0),
        "metadata": metadata,
        "items": items,
    })
}

fn get(shared: &Shared, t: &Target) -> Result<Value, Status> {
    let db = shared.db.lock().expect("db");
    db.objects
        .get(&t.res)
        .and_then(|m| m.get(&id_of(t)))
        .cloned()
        .ok_or_else(|| Status::new(404, "NotFound", format!("{} {:?} not found", t.res.1, id_of(t))))
}

fn parse_body(body: &[u8]) -> Result<Value, Status> {
    serde_json::from_slice(body).map_err(|e| Status::new(400, "BadRequest", format!("invalid JSON: {e}")))
}

fn create(shared: &Shared, t: &Target, body: &[u8]) -> Result<Value, Status> {
    let mut obj = parse_body(body)?;
    let kind = kind_of(&t.res);
    obj["kind"] = json!(kind);
    if let Some(ns) = &t.namespace {
        obj["metadata"]["namespace"] = json!(ns);
    }
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut db = shared.db.lock().expect("db");
    let ns = t.namespace.clone().unwrap_or_default();
    if db.objects.get(&t.res).is_some_and(|m| m.contains_key(&(ns, name.clone()))) {
        return Err(Status::new(409, "AlreadyExists", format!("{kind} {name} already exists")));
    }
    db.upsert(&shared.events, obj, false)
}

fn check_precondition(current: &Value, incoming: &Value) -> Result<(), Status> {
    let want = incoming.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty());
    let have = current.pointer("/metadata/resourceVersion").and_then(Value::as_str);
    match want {
        Some(w) if Some(w) != have => Err(Status::new(
            409,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version and try again",
        )),
        _ => Ok(()),
    }
}

fn replace(shared: &Shared, t: &Target, body: &[u8]) -> Result<Value, Status> {
    let mut obj = parse_body(body)?;
    let current = get(shared, t)?;
    check_precondition(&current, &obj)?;
    obj["kind"] = json!(kind_of(&t.res));
    obj["metadata"]["name"] = json!(t.name);
    if let Some(ns) = &t.namespace {
        obj["metadata"]["namespace"] = json!(ns);
    }
    let mut db = shared.db.lock().expect("db");
    db.upsert(&shared.events, obj, false)
}

fn patch(shared: &Shared, t: &Target, body: &[u8], content_type: &str) -> Result<Value, Status> {
    if !(content_type.starts_with("application/merge-patch+json")
        || content_type.starts_with("application/apply-patch"))
    {
        return Err(Status::new(415, "UnsupportedMediaType", format!("patch type {content_type}")));
    }
    let p = parse_body(body)?;
    let mut db = shared.db.lock().expect("db");
    let current = db
        .objects
        .get(&t.res)
        .and_then(|m| m.get(&id_of(t)))
        .cloned()
        .ok_or_else(|| Status::new(404, "NotFound", format!("{} {:?} not found", t.res.1, id_of(t))))?;
    check_precondition(&current, &p)?;
    if t.status && db.conflicts > 0 {
        db.conflicts -= 1;
        return Err(Status::new(409, "Conflict", "the object has been modified (injected)"));
    }
    let mut obj = current.clone();
    if t.status {
        let mut status = obj.get("status").cloned().unwrap_or(json!({}));
        if let Some(s) = p.get("status") {
            merge(&mut status, s);
        }
        obj["status"] = status;
        let rv = db.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        db.objects.entry(t.res.clone()).or_default().insert(id_of(t), obj.clone());
        db.record(&shared.events, t.res.clone(), "MODIFIED", obj.clone());
        return Ok(obj);
    }
    let mut p = p;
    if let Some(m) = p.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    if let Some(m) = p.as_object_mut() {
        m.remove("status");
    }
    merge(&mut obj, &p);
    db.upsert(&shared.events, obj, true)
}

fn delete(shared: &Shared, t: &Target) -> Result<Value, Status> {
    let mut db = shared.db.lock().expect("db");
    let removed = db.objects.get_mut(&t.res).and_then(|m| m.remove(&id_of(t)));
    let mut obj = removed.ok_or_else(|| Status::new(404, "NotFound", format!("{:?} not found", id_of(t))))?;
    let rv = db.bump();
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    db.record(&shared.events, t.res.clone(), "DELETED", obj.clone());
    Ok(obj)
}

fn line(v: &Value) -> Result<Frame<Bytes>, Infallible> {
    let mut s = v.to_string();
    s.push('\n');
    Ok(Frame::data(Bytes::from(s)))
}

fn watch_stream(shared: Arc<Shared>, t: &Target, q: &str) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
    let from: u64 = query(q, "resourceVersion").and_then(|s| s.parse().ok()).unwrap_or(0);
    let fields = query(q, "fieldSelector");
    let labels = query(q, "labelSelector");
    let bookmarks = query(q, "allowWatchBookmarks").as_deref() == Some("true");
    let timeout = query(q, "timeoutSeconds").and_then(|s| s.parse().ok()).unwrap_or(290u64);
    let res = t.res.clone();
    let namespace = t.namespace.clone();
    let kind = kind_of(&res);
    let api_version = resource_of(kind).map_or("v1", |r| r.0);
    // Subscribe and read the backlog under one lock: nothing falls between.
    let (mut sub, backlog, mut seen, gone) = {
        let db = shared.db.lock().expect("db");
        let sub = shared.events.subscribe();
        let gone = from < db.compacted;
        let backlog: Vec<Event> = db.log.iter().filter(|e| e.rv > from && e.res == res).cloned().collect();
        (sub, backlog, db.rv, gone)
    };
    let mut drops = shared.drops.subscribe();
    let wanted = move |e: &Event| {
        e.res == res
            && namespace
                .as_ref()
                .is_none_or(|ns| e.object.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns))
            && field_matches(&e.object, fields.as_deref())
            && labels_match(&e.object, labels.as_deref())
    };
    tokio::spawn(async move {
        if gone {
            let status = Status::new(410, "Expired", format!("too old resource version: {from}"));
            let _ = tx.send(line(&json!({"type": "ERROR", "object": status.json()}))).await;
            return;
        }
        for e in backlog.iter().filter(|e| wanted(e)) {
            if tx.send(line(&json!({"type": e.kind, "object": e.object}))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        loop {
            tokio::select! {
                biased;
                _ = drops.changed() => return,
                ev = sub.recv() => match ev {
                    Ok(e) => {
                        // A drop ordered before this event wins.
                        if drops.has_changed().unwrap_or(true) {
                            return;
                        }
                        seen = seen.max(e.rv);
                        if wanted(&e) && tx.send(line(&json!({"type": e.kind, "object": e.object}))).await.is_err() {
                            return;
                        }
                    }
                    // Lagged or closed: end the stream; the client resumes
                    // from the last version it saw.
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                                    "metadata": {"resourceVersion": seen.to_string()}}});
                    if tx.send(line(&bm)).await.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .unwrap_or_else(|e| panic!("response: {e}"))
}

impl ApiServer {
    /// Starts the server on 127.0.0.1 (a free port), plain HTTP.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts the server over HTTPS, with a self-signed certificate for
    /// 127.0.0.1 (as an API server's in-cluster address is an IP).
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("api server runtime: {e}"));
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared { db: Mutex::new(Db::default()), events, drops: watch::channel(0).0 });
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap_or_else(|e| panic!("binding the api server: {e}"));
        let addr: SocketAddr = listener.local_addr().unwrap_or_else(|e| panic!("api server address: {e}"));
        let (acceptor, ca_pem) = if tls {
            let (acceptor, pem) = tls_acceptor();
            (Some(acceptor), Some(pem))
        } else {
            (None, None)
        };
        let s = shared.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let s = s.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(s, req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(a) => {
                            let Ok(stream) = a.accept(stream).await else { return };
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        let scheme = if tls { "https" } else { "http" };
        Self { url: format!("{scheme}://{addr}"), shared, rt: Some(rt), ca_pem }
    }

    /// Writes a kubeconfig for this server into `dir` (over HTTPS: with
    /// its CA and a bearer token, as a service account would have).
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        use base64::Engine as _;
        let path = dir.join("kubeconfig");
        let (ca, user) = match &self.ca_pem {
            Some(pem) => (
                format!("\n    certificate-authority-data: {}", base64::engine::general_purpose::STANDARD.encode(pem)),
                format!("{{token: {TOKEN}}}"),
            ),
            None => (String::new(), "{}".to_string()),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}{ca}\nusers:\n- name: test\n  user: {user}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: test\ncurrent-context: fake\n",
            self.url
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// Creates or updates `obj` as a client would (status kept, generation
    /// bumped when the spec changes). Kinds the server does not know are
    /// ignored (Deployments in the conformance manifests).
    pub fn apply(&self, obj: &Value) -> Option<Value> {
        let kind = obj.get("kind").and_then(Value::as_str)?;
        resource_of(kind)?;
        let mut db = self.shared.db.lock().expect("db");
        Some(db.upsert(&self.shared.events, obj.clone(), true).unwrap_or_else(|e| panic!("apply: {e:?}")))
    }

    /// Deletes an object; whether it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let Some((res, namespaced)) = res_of(kind) else { return false };
        let ns = if namespaced { namespace } else { "" };
        let t = Target { res, namespace: Some(ns.to_string()), name: Some(name.to_string()), status: false };
        delete(&self.shared, &t).is_ok()
    }

    /// An object as stored.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let (res, namespaced) = res_of(kind)?;
        let ns = if namespaced { namespace.to_string() } else { String::new() };
        let db = self.shared.db.lock().expect("db");
        db.objects.get(&res).and_then(|m| m.get(&(ns, name.to_string()))).cloned()
    }

    /// Every object of `kind`.
    pub fn all(&self, kind: &str) -> Vec<Value> {
        let Some((res, _)) = res_of(kind) else { return Vec::new() };
        let db = self.shared.db.lock().expect("db");
        db.objects.get(&res).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Ends every open watch stream (clients resume from their last version).
    pub fn drop_watches(&self) {
        self.shared.drops.send_modify(|g| *g += 1);
    }

    /// Forgets history: a watch from any version seen so far gets 410 Gone
    /// and must re-list.
    pub fn compact(&self) {
        let mut db = self.shared.db.lock().expect("db");
        // A version no client has seen; lists return it, watches from
        // anything older get 410.
        db.compacted = db.bump();
        db.log.clear();
    }

    /// While unavailable, every request gets 503 (and watches are dropped).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.db.lock().expect("db").unavailable = unavailable;
        if unavailable {
            self.drop_watches();
        }
    }

    /// Stops serving a resource (`plural`), as if its CRD were not installed.
    pub fn uninstall(&self, plural: &str) {
        self.shared.db.lock().expect("db").uninstalled.push(plural.to_string());
    }

    /// Answers every request for a resource (`plural`) with 403 Forbidden,
    /// as RBAC does without a grant; `false` lifts it.
    pub fn forbid(&self, plural: &str, forbidden: bool) {
        let mut db = self.shared.db.lock().expect("db");
        db.forbidden.retain(|p| p != plural);
        if forbidden {
            db.forbidden.push(plural.to_string());
        }
    }

    /// Makes the next `n` status patches fail with 409 Conflict.
    pub fn conflict_next_status_patches(&self, n: u32) {
        self.shared.db.lock().expect("db").conflicts = n;
    }

    /// Every distinct `Authorization` header received ("" for none).
    pub fn authorizations(&self) -> Vec<String> {
        self.shared.db.lock().expect("db").authorizations.iter().cloned().collect()
    }

    /// Requests received so far (`METHOD path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.shared.db.lock().expect("db").requests.clone()
    }
}

/// The bearer token in the HTTPS kubeconfig.
pub const TOKEN: &str = "sluice-test-token";

/// A TLS acceptor with a fresh self-signed certificate for 127.0.0.1 (ring
/// only), and that certificate as PEM (the client's CA).
fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    use tokio_rustls::rustls;
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .unwrap_or_else(|e| panic!("generating a certificate: {e}"));
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(signing_key.serialize_der());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(vec![cert.der().clone()], key.into()))
        .unwrap_or_else(|e| panic!("TLS server config: {e}"));
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), cert.pem())
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
