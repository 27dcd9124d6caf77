//! Data-driven conformance cases from `shared/spec/conformance/cases.json`
//! (extracted from the Go test files), evaluated with [`super::golit`] and
//! checked the way `conformance/utils/http/http.go` `CompareRequest` does,
//! through the real binary with `curl`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::golit::{self, Env, Expr, Unevaluable};
use super::{Req, Resp, conformance_dir, curl, curl_retry};

/// Constants of the conformance suite that the cases refer to.
pub fn base_env() -> Env {
    Env::default()
        .with("confsuite.InfraBackendServiceNameV1", "infra-backend-v1")
        .with("confsuite.InfraBackendServiceNameV2", "infra-backend-v2")
        .with("confsuite.InfraBackendServiceNameV3", "infra-backend-v3")
        .with("confsuite.InfrastructureNamespace", super::INFRA_NS)
        .with("confsuite.AppBackendNamespace", "gateway-conformance-app-backend")
        .with("suite.AppBackendNamespace", "gateway-conformance-app-backend")
        .with("confsuite.WebBackendNamespace", "gateway-conformance-web-backend")
        .with("suite.WebBackendNamespace", "gateway-conformance-web-backend")
        // Every test used here declares `ns := confsuite.InfrastructureNamespace`
        // (or the literal "gateway-conformance-infra").
        .with("ns", super::INFRA_NS)
}

/// The request to make.
#[derive(Clone, Debug, Default)]
pub struct CaseRequest {
    pub host: Option<String>,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub unfollow_redirect: bool,
}

/// What the backend must see (conformance `ExpectedRequest`).
#[derive(Clone, Debug, Default)]
pub struct ExpectedRequest {
    pub host: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub headers: Vec<(String, String)>,
    pub absent: Vec<String>,
}

/// Expected `Location` parts (conformance `RedirectRequest`).
#[derive(Clone, Debug, Default)]
pub struct ExpectedRedirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<String>,
    pub path: Option<String>,
}

/// One evaluated case.
#[derive(Clone, Debug)]
pub struct Case {
    /// Index in the Go file's case list.
    pub index: usize,
    /// Loop-variable assignment, when the case was expanded.
    pub binding: Vec<(String, String)>,
    pub request: CaseRequest,
    /// Acceptable status codes (default 200).
    pub statuses: Vec<u16>,
    pub response_headers: Vec<(String, String)>,
    pub response_absent: Vec<String>,
    pub expected_request: Option<ExpectedRequest>,
    /// Pod-name prefix; "" = any (as `strings.HasPrefix(pod, "")`).
    pub backend: String,
    pub namespace: String,
    pub redirect: Option<ExpectedRedirect>,
    pub backend_set_response_headers: Vec<(String, String)>,
}

impl Case {
    /// A short label for failure messages.
    pub fn label(&self) -> String {
        let b = if self.binding.is_empty() {
            String::new()
        } else {
            format!(" [{}]", self.binding.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
        };
        let hdrs = if self.request.headers.is_empty() { String::new() } else { format!(" {:?}", self.request.headers) };
        format!(
            "#{}{b} {} {}{}{hdrs}",
            self.index,
            if self.request.method.is_empty() { "GET" } else { &self.request.method },
            self.request.host.as_deref().unwrap_or(""),
            self.request.path
        )
    }
}

/// The cases of one Go test file.
#[derive(Debug)]
pub struct Loaded {
    pub go_file: String,
    /// Number of raw cases in cases.json.
    pub total: usize,
    pub cases: Vec<Case>,
    /// (raw index, reason) of cases that could not be evaluated.
    pub skipped: Vec<(usize, String)>,
}

/// Loads the cases of `go_file` (e.g. `httproute-matching.go`).
/// `loops` binds loop variables to every value they take in the Go test
/// (a case referring to one is expanded once per value).
pub fn load(go_file: &str, loops: &[(&str, &[&str])]) -> Loaded {
    let path = conformance_dir().join("cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let all: BTreeMap<String, Vec<Value>> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    let raw = all.get(go_file).unwrap_or_else(|| panic!("{go_file} not in cases.json"));
    let env = base_env();
    let mut cases = Vec::new();
    let mut skipped = Vec::new();
    for (index, c) in raw.iter().enumerate() {
        match expand(index, c, &env, loops) {
            Ok(mut v) => cases.append(&mut v),
            Err(e) => skipped.push((index, e.0)),
        }
    }
    Loaded { go_file: go_file.into(), total: raw.len(), cases, skipped }
}

fn snippets(v: &Value, prefix: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                snippets(x, &p, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn expand(index: usize, raw: &Value, env: &Env, loops: &[(&str, &[&str])]) -> Result<Vec<Case>, Unevaluable> {
    let mut fields = Vec::new();
    snippets(raw, "", &mut fields);
    let mut parsed: BTreeMap<String, Expr> = BTreeMap::new();
    for (k, src) in fields {
        parsed.insert(k.clone(), golit::parse(&src).map_err(|e| Unevaluable(format!("{k}: {e}")))?);
    }
    let mut idents = BTreeSet::new();
    parsed.values().for_each(|e| e.idents(&mut idents));
    // Cartesian product over the loop variables the case refers to.
    let mut assignments: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (name, values) in loops {
        if !idents.contains(*name) {
            continue;
        }
        assignments = assignments
            .into_iter()
            .flat_map(|a| {
                values.iter().map(move |v| {
                    let mut a = a.clone();
                    a.push(((*name).to_string(), (*v).to_string()));
                    a
                })
            })
            .collect();
    }
    assignments
        .into_iter()
        .map(|binding| {
            let mut env = env.clone();
            for (k, v) in &binding {
                env = env.with(k, v);
            }
            evaluate(index, binding, &parsed, &env)
        })
        .collect()
}

fn evaluate(
    index: usize,
    binding: Vec<(String, String)>,
    f: &BTreeMap<String, Expr>,
    env: &Env,
) -> Result<Case, Unevaluable> {
    let get = |k: &str| f.get(k);
    let s = |k: &str| get(k).map(|e| e.string(env).map_err(|x| Unevaluable(format!("{k}: {x}")))).transpose();
    // Refuse fields this runner does not check, rather than ignoring them.
    const KNOWN: &[&str] = &[
        "Request.Host",
        "Request.Path",
        "Request.Method",
        "Request.Headers",
        "Request.UnfollowRedirect",
        "Response.StatusCode",
        "Response.StatusCodes",
        "Response.Headers",
        "Response.AbsentHeaders",
        "ExpectedRequest.Request",
        "ExpectedRequest.AbsentHeaders",
        "Backend",
        "Namespace",
        "RedirectRequest.Scheme",
        "RedirectRequest.Host",
        "RedirectRequest.Port",
        "RedirectRequest.Path",
        "BackendSetResponseHeaders",
        "TestCaseName",
    ];
    if let Some(k) = f.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(Unevaluable(format!("field {k} is not supported by this runner")));
    }
    let request = CaseRequest {
        host: s("Request.Host")?,
        method: s("Request.Method")?.unwrap_or_default(),
        path: s("Request.Path")?.unwrap_or_default(),
        headers: get("Request.Headers").map(|e| e.string_map(env)).transpose()?.unwrap_or_default(),
        unfollow_redirect: get("Request.UnfollowRedirect").map(Expr::boolean).transpose()?.unwrap_or(false),
    };
    let to_u16 = |v: i64| u16::try_from(v).map_err(|_| Unevaluable(format!("status {v} out of range")));
    let mut statuses = Vec::new();
    if let Some(e) = get("Response.StatusCode") {
        statuses.push(to_u16(e.int(env)?)?);
    }
    if let Some(e) = get("Response.StatusCodes") {
        for v in e.int_list(env)? {
            statuses.push(to_u16(v)?);
        }
    }
    if statuses.is_empty() {
        statuses.push(200);
    }
    let expected_request = match get("ExpectedRequest.Request") {
        None => None,
        Some(e) => {
            let mut er = ExpectedRequest::default();
            for (field, v) in e.struct_fields("http.Request")? {
                match field.as_str() {
                    "Host" => er.host = Some(v.string(env)?).filter(|h| !h.is_empty()),
                    "Method" => er.method = Some(v.string(env)?).filter(|m| !m.is_empty()),
                    "Path" => er.path = Some(v.string(env)?),
                    "Headers" => er.headers = v.string_map(env)?,
                    other => return Err(Unevaluable(format!("ExpectedRequest.Request.{other} is not supported"))),
                }
            }
            Some(er)
        }
    };
    let expected_request = match (expected_request, get("ExpectedRequest.AbsentHeaders")) {
        (er, Some(a)) => {
            let mut er = er.unwrap_or_default();
            er.absent = a.string_list(env)?;
            Some(er)
        }
        (er, None) => er,
    };
    let redirect = {
        let r = ExpectedRedirect {
            scheme: s("RedirectRequest.Scheme")?,
            host: s("RedirectRequest.Host")?,
            port: s("RedirectRequest.Port")?,
            path: s("RedirectRequest.Path")?,
        };
        let any = f.keys().any(|k| k.starts_with("RedirectRequest."));
        any.then_some(r)
    };
    Ok(Case {
        index,
        binding,
        request,
        statuses,
        response_headers: get("Response.Headers").map(|e| e.string_map(env)).transpose()?.unwrap_or_default(),
        response_absent: get("Response.AbsentHeaders").map(|e| e.string_list(env)).transpose()?.unwrap_or_default(),
        expected_request,
        backend: s("Backend")?.unwrap_or_default(),
        namespace: s("Namespace")?.unwrap_or_default(),
        redirect,
        backend_set_response_headers: get("BackendSetResponseHeaders")
            .map(|e| e.string_map(env))
            .transpose()?
            .unwrap_or_default(),
    })
}

// ---------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------

/// Where to send a case: the socket, and the Gateway listener port it
/// stands for (80 for the conformance Gateways).
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub listener_port: u16,
}

/// The curl request for a case.
pub fn request_for(case: &Case) -> Req {
    let mut headers = case.request.headers.clone();
    if !case.backend_set_response_headers.is_empty() {
        let v: Vec<String> = case.backend_set_response_headers.iter().map(|(n, v)| format!("{n}:{v}")).collect();
        headers.push(("X-Echo-Set-Header".into(), v.join(",")));
    }
    Req {
        method: case.request.method.clone(),
        host: case.request.host.clone(),
        path: case.request.path.clone(),
        headers,
        http2: false,
        max_time: None,
    }
}

fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// Hostname of a Host header value (port and IPv6 brackets removed).
fn hostname_of(host: &str) -> String {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    host.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map_or(host, |(h, _)| h).to_string()
}

/// Splits an absolute URL into (scheme, host, port, path).
fn split_location(loc: &str) -> Option<(String, String, String, String)> {
    let (scheme, rest) = loc.split_once("://")?;
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, p) = r.split_once(']')?;
        (h.to_string(), p.strip_prefix(':').unwrap_or_default().to_string())
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.to_string()),
            None => (authority.to_string(), String::new()),
        }
    };
    Some((scheme.to_ascii_lowercase(), host, port, path.to_string()))
}

/// Checks a response against a case, like the suite's `CompareRequest`
/// (plus: the default redirect host must be the request's hostname).
pub fn check(case: &Case, target: Target, resp: &Resp) -> Result<(), String> {
    let mut problems = Vec::new();
    if !case.statuses.contains(&resp.status) {
        return Err(format!(
            "expected status {:?}, got {} (body: {})",
            case.statuses,
            resp.status,
            truncate(&resp.body_text())
        ));
    }
    if resp.status == 200 {
        let Some(echo) = &resp.echo else {
            return Err(format!(
                "200 without echo JSON (Content-Type {:?}); body: {}",
                resp.header("content-type"),
                truncate(&resp.body_text())
            ));
        };
        let field = |k: &str| echo.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        let req_as_expected = ExpectedRequest {
            host: None,
            method: Some(case.request.method.clone()).filter(|m| !m.is_empty()),
            path: Some(case.request.path.clone()),
            headers: case.request.headers.clone(),
            absent: Vec::new(),
        };
        let er = case.expected_request.clone().unwrap_or(req_as_expected);
        let method = er.method.clone().unwrap_or_else(|| "GET".into());
        if let Some(h) = &er.host
            && field("host") != *h
        {
            problems.push(format!("backend saw host {:?}, expected {h:?}", field("host")));
        }
        let want_path = er.path.clone().unwrap_or_default();
        if field("path") != want_path {
            problems.push(format!("backend saw path {:?}, expected {want_path:?}", field("path")));
        }
        if field("method") != method {
            problems.push(format!("backend saw method {:?}, expected {method:?}", field("method")));
        }
        if field("namespace") != case.namespace {
            problems.push(format!("backend namespace {:?}, expected {:?}", field("namespace"), case.namespace));
        }
        let seen = resp.echo_headers();
        for (name, want) in &er.headers {
            match seen.get(&name.to_ascii_lowercase()) {
                None => problems.push(format!("backend did not see header {name} (expected {want:?}); saw {seen:?}")),
                Some(v) if v.join(",") != *want => {
                    problems.push(format!("backend saw {name}: {:?}, expected {want:?}", v.join(",")))
                }
                Some(_) => {}
            }
        }
        for name in &er.absent {
            if let Some(v) = seen.get(&name.to_ascii_lowercase()) {
                problems.push(format!("backend saw header {name}: {v:?}, expected it absent"));
            }
        }
        for (name, want) in &case.response_headers {
            match resp.header(name) {
                None => problems
                    .push(format!("response lacks header {name} (expected {want:?}); headers {:?}", resp.headers)),
                Some(v) if v != *want => problems.push(format!("response {name}: {v:?}, expected {want:?}")),
                Some(_) => {}
            }
        }
        for name in &case.response_absent {
            if let Some(v) = resp.header(name) {
                problems.push(format!("response has header {name}: {v:?}, expected it absent"));
            }
        }
        if !field("pod").starts_with(&case.backend) {
            problems.push(format!("answered by pod {:?}, expected a pod of {:?}", field("pod"), case.backend));
        }
    } else if is_redirect(resp.status)
        && let Some(want) = &case.redirect
    {
        let loc = resp.header("location").unwrap_or_default();
        match split_location(&loc) {
            None => problems.push(format!("Location {loc:?} is not an absolute URL")),
            Some((scheme, host, port, path)) => {
                let req_host = case.request.host.clone().unwrap_or_else(|| target.addr.ip().to_string());
                let want_host = want.host.clone().unwrap_or_else(|| hostname_of(&req_host));
                if host != want_host {
                    problems.push(format!("Location {loc:?}: host {host:?}, expected {want_host:?}"));
                }
                let want_scheme = want.scheme.clone().unwrap_or_else(|| "http".into());
                if scheme != want_scheme {
                    problems.push(format!("Location {loc:?}: scheme {scheme:?}, expected {want_scheme:?}"));
                }
                match &want.port {
                    Some(p) if port != *p => problems.push(format!("Location {loc:?}: port {port:?}, expected {p:?}")),
                    Some(_) => {}
                    None => {
                        let implied = match scheme.as_str() {
                            "http" => "80",
                            "https" => "443",
                            _ => "",
                        };
                        if !(port.is_empty() || port == implied) {
                            problems.push(format!(
                                    "Location {loc:?}: port {port:?}, expected none or {implied} for {scheme} (listener port {})",
                                    target.listener_port
                                ));
                        }
                    }
                }
                let want_path = want
                    .path
                    .clone()
                    .unwrap_or_else(|| case.request.path.split('?').next().unwrap_or_default().to_string());
                if path != want_path {
                    problems.push(format!("Location {loc:?}: path {path:?}, expected {want_path:?}"));
                }
            }
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

fn truncate(s: &str) -> String {
    if s.len() > 300 {
        format!("{}…", &s[..s.char_indices().nth(300).map_or(s.len(), |(i, _)| i)])
    } else {
        s.to_string()
    }
}

/// Outcome of [`run`].
#[derive(Debug, Default)]
pub struct Outcome {
    pub ran: usize,
    pub failures: Vec<String>,
}

/// Runs every case of `loaded` against the target `choose` picks for it.
/// The first request is retried for up to 5 s while Sluice settles.
pub fn run(loaded: &Loaded, choose: &dyn Fn(&Case) -> Target) -> Outcome {
    let mut out = Outcome::default();
    for (i, case) in loaded.cases.iter().enumerate() {
        let target = choose(case);
        let req = request_for(case);
        let resp =
            if i == 0 { Ok(curl_retry(target.addr, &req, Duration::from_secs(5))) } else { curl(target.addr, &req) };
        out.ran += 1;
        let result = resp.and_then(|r| check(case, target, &r));
        if let Err(e) = result {
            out.failures.push(format!("{} {} -> {e}", loaded.go_file, case.label()));
        }
    }
    out
}

/// Asserts that at least `min_cases` cases ran and none failed.
pub fn assert_outcome(test: &str, loaded: &Loaded, outcome: &Outcome, min_cases: usize) {
    eprintln!(
        "{test}: {} of {} raw cases evaluated ({} runs), {} skipped{}",
        loaded.total - loaded.skipped.len(),
        loaded.total,
        outcome.ran,
        loaded.skipped.len(),
        if loaded.skipped.is_empty() { String::new() } else { format!(": {:?}", loaded.skipped) }
    );
    assert!(
        outcome.ran >= min_cases,
        "{test}: only {} cases ran (minimum {min_cases}); skipped: {:?}",
        outcome.ran,
        loaded.skipped
    );
    assert!(
        outcome.failures.is_empty(),
        "{test}: {} of {} cases failed:\n  {}",
        outcome.failures.len(),
        outcome.ran,
        outcome.failures.join("\n  ")
    );
}
