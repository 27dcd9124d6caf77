#!/usr/bin/env python3
"""Validates the manifests `kubectl kustomize` built from deploy/ (see check.sh).

Beyond "it builds": pod security, RBAC (least privilege, exactly the watched
kinds), probes on paths the admin API serves, the Deployment's flags against
the `sluice run` CLI in crates/sluice/src, shutdown timing, Service/port
wiring, NetworkPolicy, PDB/HPA, controller names, and Gateway API objects
against the v1.6.1 CRD schemas in shared/spec/crds. Then a self-test: known
mistakes planted into the base build must each be caught.

usage: check.py --repo DIR --crds DIR VARIANT=FILE...
variants: base, aks, dev, all (aks + every component), observability.
"""

import argparse
import copy
import glob
import os
import re
import sys

import jsonschema
import yaml

NS = "sluice-system"
SA = "sluice"
GATEWAY_CONTROLLER = "sluice.dev/gateway-controller"
INGRESS_CONTROLLER = "sluice.dev/ingress-controller"

# Flags of the agreed CLI contract (shared notes, cli-k8s) that other
# branches implement. Accepted here until they exist in crates/sluice/src;
# MERGE (lead): delete each entry once its branch is merged (check.py says
# which ones the source already has).
PENDING_FLAGS: dict[str, tuple[str, bool]] = {}

# What Sluice watches, cluster-wide, read-only (get/list/watch).
WATCHED = {
    ("gateway.networking.k8s.io", "gatewayclasses"),
    ("gateway.networking.k8s.io", "gateways"),
    ("gateway.networking.k8s.io", "httproutes"),
    ("gateway.networking.k8s.io", "referencegrants"),
    ("gateway.networking.k8s.io", "backendtlspolicies"),
    ("networking.k8s.io", "ingresses"),
    ("networking.k8s.io", "ingressclasses"),
    ("", "services"),
    ("", "namespaces"),
    ("", "secrets"),
    ("discovery.k8s.io", "endpointslices"),
    ("policy.sluice.dev", "ratelimitpolicies"),
}
STATUS = {
    ("gateway.networking.k8s.io", "gatewayclasses/status"),
    ("gateway.networking.k8s.io", "gateways/status"),
    ("gateway.networking.k8s.io", "httproutes/status"),
    ("gateway.networking.k8s.io", "backendtlspolicies/status"),
    ("policy.sluice.dev", "ratelimitpolicies/status"),
    ("networking.k8s.io", "ingresses/status"),
}
READ = {"get", "list", "watch"}
STATUS_VERBS = {"patch", "update"}
LEASE_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}

CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "GatewayClass",
    "IngressClass",
    "CustomResourceDefinition",
}

# Azure Service annotations this repo may use (a typo is silently ignored
# by the cloud provider, so it is an error here).
AZURE_ANNOTATIONS = {
    "azure-load-balancer-internal",
    "azure-load-balancer-internal-subnet",
    "azure-load-balancer-tcp-idle-timeout",
    "azure-load-balancer-resource-group",
    "azure-load-balancer-ipv4",
    "azure-load-balancer-ipv6",
    "azure-pip-name",
    "azure-dns-label-name",
    "azure-load-balancer-health-probe-interval",
    "azure-load-balancer-health-probe-num-of-probe",
    "azure-load-balancer-health-probe-request-path",
}
AZURE_PORT_ANNOTATION = re.compile(
    r"^port_(\d+)_(no_lb_rule|no_probe_rule|health-probe_protocol|health-probe_port|"
    r"health-probe_interval|health-probe_num-of-probe|health-probe_request-path)$"
)


class Errors:
    def __init__(self, variant):
        self.variant = variant
        self.items = []

    def __call__(self, msg):
        self.items.append(f"[{self.variant}] {msg}")


# ---------------------------------------------------------------- CLI source


def _balanced(text, i, open_, close):
    """Index just past the bracket that closes text[i] (== open_), skipping strings."""
    depth, in_str = 0, False
    while i < len(text):
        ch = text[i]
        if in_str:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in open_:
            depth += 1
        elif ch in close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def struct_fields(body):
    """[(attributes, field name, type)] of a Rust struct body."""
    body = "\n".join(line for line in body.splitlines() if not line.strip().startswith("//"))
    fields, attrs, i = [], [], 0
    while i < len(body):
        if body[i].isspace():
            i += 1
        elif body.startswith("#[", i):
            j = _balanced(body, i + 1, "[", "]")
            attrs.append(body[i:j])
            i = j
        else:
            j = i
            depth = 0
            while j < len(body) and not (body[j] == "," and depth == 0):
                depth += body[j] in "<([" and 1 or body[j] in ">)]" and -1 or 0
                j += 1
            m = re.match(r"\s*(?:pub(?:\([^)]*\))?\s+)?(\w+)\s*:\s*(.+)", body[i:j], re.S)
            if m:
                fields.append((" ".join(attrs), m.group(1), " ".join(m.group(2).split())))
            attrs, i = [], j + 1
    return fields


def rust_structs(src_dir):
    """{struct name: [(flag, takes_value, flatten_type)]} from clap derive code."""
    structs = {}
    for path in sorted(glob.glob(os.path.join(src_dir, "**", "*.rs"), recursive=True)):
        text = open(path, encoding="utf-8").read()
        for m in re.finditer(r"pub(?:\([^)]*\))? struct (\w+)\s*\{", text):
            end = _balanced(text, m.end() - 1, "{", "}")
            fields = []
            for attrs, field, ty in struct_fields(text[m.end():end - 1]):
                if re.search(r"\b(?:command|clap)\(\s*flatten", attrs):
                    fields.append((None, None, re.sub(r"\W.*", "", ty.split("::")[-1])))
                elif re.search(r"#\[(?:arg|clap)\((?:[^]]*\W)?long\b", attrs):
                    lm = re.search(r'\blong\s*=\s*"([^"]+)"', attrs)
                    flag = "--" + (lm.group(1) if lm else field.replace("_", "-"))
                    fields.append((flag, ty != "bool", None))
            structs[m.group(1)] = fields
    return structs


def run_flags(src_dir):
    """{--flag: takes_value} accepted by `sluice run` (RunArgs + flattened)."""
    structs = rust_structs(src_dir)
    flags, todo, seen = {}, ["RunArgs"], set()
    while todo:
        s = todo.pop()
        if s in seen or s not in structs:
            continue
        seen.add(s)
        for flag, takes_value, flatten in structs[s]:
            if flatten:
                todo.append(flatten)
            else:
                flags[flag] = takes_value
    return flags


def admin_paths(src_file):
    text = open(src_file, encoding="utf-8").read()
    return set(re.findall(r'"(/[a-z]+)"\s*(?:if [^=]*)?=>', text))


def parse_args(args, known, err):
    """[(flag, value)] from a container's args, checked against `known`."""
    out = []
    if not args or args[0] != "run":
        err(f"container args must start with the `run` subcommand, got {args[:1]}")
        return out
    i = 1
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            err(f"unexpected positional argument {a!r}")
            i += 1
            continue
        flag, eq, val = a.partition("=")
        if flag not in known:
            err(f"flag {flag} is not a `sluice run` flag (crates/sluice/src) nor in PENDING_FLAGS")
            i += 1
            continue
        if known[flag] and not eq:
            if i + 1 >= len(args):
                err(f"flag {flag} needs a value")
                break
            val = args[i + 1]
            i += 1
        out.append((flag, val if known[flag] else None))
        i += 1
    return out


def go_duration(s):
    m = re.fullmatch(r"(\d+)(ms|s|m)", s or "")
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    return {"ms": n / 1000, "s": n, "m": n * 60}[unit]


# ------------------------------------------------------------------- helpers


def index(docs):
    return {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs}


def of_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name, err):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    if len(found) != 1:
        err(f"expected exactly one {kind} {name}, found {len(found)}")
        return None
    return found[0]


def selects(selector, labels):
    ml = (selector or {}).get("matchLabels", {})
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())


# -------------------------------------------------------------------- checks


def check_objects(docs, err):
    seen = set()
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"), d["metadata"].get("namespace"), d["metadata"].get("name"))
        if key in seen:
            err(f"duplicate object {key}")
        seen.add(key)
        if d["kind"] in CLUSTER_SCOPED:
            if d["metadata"].get("namespace"):
                err(f"cluster-scoped {d['kind']} {d['metadata']['name']} has a namespace")
        elif not d["metadata"].get("namespace"):
            err(f"{d['kind']} {d['metadata']['name']} has no namespace")
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/name") != "sluice":
            err(f"{d['kind']} {d['metadata']['name']} lacks label app.kubernetes.io/name=sluice")


def check_namespace(docs, err):
    ns = one(docs, "Namespace", NS, err)
    if ns and ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") != "restricted":
        err("Namespace sluice-system must enforce the `restricted` Pod Security Standard")


def check_deployment(docs, variant, flags_known, paths, err):
    dep = one(docs, "Deployment", "sluice", err)
    if not dep:
        return None
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels", {})
    if not selects(spec.get("selector"), labels):
        err("Deployment selector does not match its pod labels")
    if pod.get("serviceAccountName") != SA:
        err(f"serviceAccountName must be {SA}")
    for k in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(k):
            err(f"pod sets {k}")
    for v in pod.get("volumes", []):
        if "hostPath" in v:
            err(f"volume {v['name']} is a hostPath")
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        err("pod securityContext.runAsNonRoot must be true")
    if psc.get("runAsUser", 0) == 0:
        err("pod securityContext.runAsUser must be a non-zero UID")
    containers = pod.get("containers", [])
    if len(containers) != 1:
        err("expected one container")
        return dep
    c = containers[0]
    sc = c.get("securityContext", {})
    seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
    if seccomp != "RuntimeDefault":
        err("seccompProfile must be RuntimeDefault")
    if sc.get("allowPrivilegeEscalation") is not False:
        err("allowPrivilegeEscalation must be false")
    if sc.get("readOnlyRootFilesystem") is not True:
        err("readOnlyRootFilesystem must be true")
    if sc.get("privileged"):
        err("container is privileged")
    caps = sc.get("capabilities", {})
    if "ALL" not in caps.get("drop", []):
        err("capabilities.drop must contain ALL")
    if caps.get("add"):
        err(f"capabilities.add must be empty, got {caps['add']}")
    if sc.get("runAsUser") == 0:
        err("container runs as UID 0")
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in res.get(kind, {}):
                err(f"resources.{kind}.{r} missing")
    image = c.get("image", "")
    if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
        err(f"image {image!r} needs a pinned tag (not latest)")

    # Flags.
    parsed = parse_args(c.get("args", []), flags_known, err)
    by_flag = {}
    for f, v in parsed:
        by_flag.setdefault(f, []).append(v)
    env = {e["name"]: e for e in c.get("env", [])}
    for var, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"), ("POD_IP", "status.podIP")):
        got = env.get(var, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if got != path:
            err(f"env {var} must come from the downward API fieldRef {path}, got {got}")
    if "--kubernetes" not in by_flag:
        err("--kubernetes missing")
    if "--config" in by_flag:
        err("--config in the Deployment: Kubernetes mode reads the API")
    if by_flag.get("--pod-name") != ["$(POD_NAME)"]:
        err("--pod-name must be $(POD_NAME)")
    if by_flag.get("--pod-namespace") != ["$(POD_NAMESPACE)"]:
        err("--pod-namespace must be $(POD_NAMESPACE)")
    if by_flag.get("--publish-service") != [f"{NS}/sluice"]:
        err(f"--publish-service must be {NS}/sluice (the LoadBalancer Service)")
    for f in ("--gateway-controller", "--ingress-controller"):
        want = GATEWAY_CONTROLLER if f == "--gateway-controller" else INGRESS_CONTROLLER
        if by_flag.get(f, [want]) != [want]:
            err(f"{f} must be {want} (the GatewayClass/IngressClass name it)")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    admin = by_flag.get("--admin", [])
    if len(admin) != 1:
        err("--admin must be given once")
        admin_port = None
    else:
        host, _, port = admin[0].rpartition(":")
        admin_port = int(port) if port.isdigit() else None
        if host != "$(POD_IP)":
            err(f"--admin must bind $(POD_IP) (probes and Prometheus reach the pod IP), got {host}")
        if ports.get("admin") != admin_port:
            err(f"containerPort `admin` {ports.get('admin')} != --admin port {admin_port}")
    binds = {}
    for b in by_flag.get("--bind", []):
        m = re.fullmatch(r"(\d+)=([0-9.]+|\[[0-9a-f:]+\]):(\d+)", b)
        if not m:
            err(f"--bind {b} is not PORT=ADDR")
            continue
        lport, lsock = int(m.group(1)), int(m.group(3))
        binds[lport] = lsock
        if lsock < 1024:
            err(f"--bind {b}: a non-root container cannot listen below 1024")
        if lsock not in ports.values():
            err(f"--bind {b}: no containerPort {lsock}")
    if set(binds) != {80, 443}:
        err(f"--bind must map Gateway ports 80 and 443, got {sorted(binds)}")

    # Probes on the admin port, on paths the admin API serves.
    for probe, want in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        p = c.get(probe)
        if not p:
            if probe != "startupProbe":
                err(f"{probe} missing")
            continue
        hg = p.get("httpGet", {})
        port = hg.get("port")
        port = ports.get(port, port)
        if hg.get("path") != want:
            err(f"{probe} path {hg.get('path')} != {want}")
        if hg.get("path") not in paths:
            err(f"{probe} path {hg.get('path')} is not served by crates/sluice/src/admin.rs")
        if port != admin_port:
            err(f"{probe} port {port} is not the --admin port {admin_port}")
        if hg.get("host"):
            err(f"{probe} sets host; the kubelet must probe the pod IP")

    # Shutdown: preStop sleep, then SIGTERM and a bounded drain, all within
    # the grace period.
    grace = pod.get("terminationGracePeriodSeconds", 30)
    pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
    drain = go_duration((by_flag.get("--drain-timeout") or ["30s"])[-1])
    if pre is None:
        err("preStop sleep missing (endpoints and load balancers need time to drop the pod)")
    elif pre < 10:
        err(f"preStop sleep {pre}s is shorter than two 5s load balancer probes")
    if drain is None:
        err("--drain-timeout is not a duration")
    elif pre is not None and pre + drain + 5 > grace:
        err(f"preStop {pre}s + drain {drain}s + 5s margin exceeds terminationGracePeriodSeconds {grace}")

    # Spread across zones and nodes.
    keys = {t["topologyKey"]: t for t in pod.get("topologySpreadConstraints", [])}
    for k in ("topology.kubernetes.io/zone", "kubernetes.io/hostname"):
        if k not in keys:
            err(f"topologySpreadConstraints lacks {k}")
        elif not selects(keys[k].get("labelSelector"), labels):
            err(f"topology spread on {k} does not select the pods")
    for t in pod.get("topologySpreadConstraints", []):
        if t.get("whenUnsatisfiable") == "DoNotSchedule" and t.get("nodeTaintsPolicy") != "Honor":
            err(f"hard spread on {t['topologyKey']} without nodeTaintsPolicy Honor: tainted nodes count as empty domains")
    if len(pod.get("topologySpreadConstraints", [])) != len(keys):
        err("two topologySpreadConstraints on one topologyKey")
    if variant in ("aks", "all") and keys.get("topology.kubernetes.io/zone", {}).get("whenUnsatisfiable") != "DoNotSchedule":
        err("AKS: zone spread must be DoNotSchedule")
    return dep


def check_services(docs, dep, err):
    if not dep:
        return
    labels = dep["spec"]["template"]["metadata"]["labels"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    svc = one(docs, "Service", "sluice", err)
    if svc:
        spec = svc["spec"]
        if spec.get("type") != "LoadBalancer":
            err("Service sluice must be a LoadBalancer")
        if spec.get("externalTrafficPolicy") != "Local":
            err("Service sluice must have externalTrafficPolicy Local")
        if not all(labels.get(k) == v for k, v in spec.get("selector", {}).items()) or not spec.get("selector"):
            err("Service sluice selector does not match the pods")
        want = {80: 8080, 443: 8443}
        got = {}
        for p in spec.get("ports", []):
            tp = p.get("targetPort")
            got[p["port"]] = ports.get(tp, tp)
            if "appProtocol" in p:
                err(f"Service port {p['port']} sets appProtocol (turns AKS probes into HTTP GET / on the data port)")
        if got != want:
            err(f"Service sluice ports {got} != {want}")
        local = spec.get("externalTrafficPolicy") == "Local"
        ann = svc["metadata"].get("annotations", {}) or {}
        probe_ports = {int(m.group(1)) for k in ann for m in [AZURE_PORT_ANNOTATION.match(k.split("/", 1)[-1])]
                       if m and m.group(2) == "health-probe_port"}
        for k, v in ann.items():
            if not k.startswith("service.beta.kubernetes.io/"):
                continue
            short = k.split("/", 1)[1]
            m = AZURE_PORT_ANNOTATION.match(short)
            if short not in AZURE_ANNOTATIONS and not m:
                err(f"unknown Azure annotation {k}")
                continue
            # cloud-provider-azure: for a Local Service the healthCheckNodePort
            # probe (kube-proxy, HTTP /healthz) takes precedence; per-port
            # probe settings apply only with port_{port}_health-probe_port.
            if local and short.startswith("azure-load-balancer-health-probe"):
                err(f"{k} is ignored for an externalTrafficPolicy Local Service (the healthCheckNodePort probe wins)")
            if local and m and m.group(2).startswith("health-probe") and int(m.group(1)) not in probe_ports:
                err(f"{k} is ignored for an externalTrafficPolicy Local Service unless "
                    f"port_{m.group(1)}_health-probe_port is also set")
            if short.endswith("request-path") and v not in ("/healthz", "/readyz"):
                err(f"{k}: {v} is not a health path Sluice serves")
    adm = one(docs, "Service", "sluice-admin", err)
    if adm:
        if adm["spec"].get("type", "ClusterIP") != "ClusterIP":
            err("Service sluice-admin must stay ClusterIP (never exposed)")
        p = [p for p in adm["spec"].get("ports", []) if p.get("name") == "admin"]
        if not p or ports.get(p[0].get("targetPort"), p[0].get("targetPort")) != ports.get("admin"):
            err("Service sluice-admin must expose the container's admin port as `admin`")


def check_pdb_hpa(docs, dep, variant, err):
    if not dep:
        return
    labels = dep["spec"]["template"]["metadata"]["labels"]
    pdbs, hpas = of_kind(docs, "PodDisruptionBudget"), of_kind(docs, "HorizontalPodAutoscaler")
    if variant == "dev":
        if pdbs or hpas:
            err("dev overlay should have no PDB or HPA")
        return
    if "replicas" in dep["spec"]:
        err("Deployment sets replicas while an HPA owns the count (every apply/sync would fight the HPA)")
    if len(pdbs) != 1 or len(hpas) != 1:
        err("expected one PodDisruptionBudget and one HorizontalPodAutoscaler")
        return
    pdb, hpa = pdbs[0], hpas[0]
    if not selects(pdb["spec"].get("selector"), labels):
        err("PDB does not select the pods")
    if hpa["apiVersion"] != "autoscaling/v2":
        err("HPA must be autoscaling/v2")
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref.get("kind"), ref.get("name")) != ("Deployment", "sluice"):
        err("HPA must target Deployment sluice")
    mins = hpa["spec"].get("minReplicas", 1)
    if mins < 2:
        err("HPA minReplicas must be >= 2 (one replica cannot survive a disruption)")
    mu = pdb["spec"].get("maxUnavailable")
    ma = pdb["spec"].get("minAvailable")
    if mu is None and ma is None:
        err("PDB sets neither maxUnavailable nor minAvailable")
    if isinstance(ma, int) and ma >= mins:
        err("PDB minAvailable >= HPA minReplicas blocks every drain")
    cpu = [m for m in hpa["spec"].get("metrics", []) if m.get("resource", {}).get("name") == "cpu"]
    if not cpu:
        err("HPA needs a CPU metric")


def check_rbac(docs, dep, err):
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d["kind"] in ("ClusterRole", "Role")}
    bound = []  # (role, binding namespace or None)
    for b in docs:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        subj = b.get("subjects", [])
        if subj != [{"kind": "ServiceAccount", "name": SA, "namespace": NS}]:
            err(f"{b['kind']} {b['metadata']['name']} must bind exactly ServiceAccount {NS}/{SA}")
        ref = b["roleRef"]
        rns = None if ref["kind"] == "ClusterRole" else b["metadata"].get("namespace")
        role = roles.get((ref["kind"], rns, ref["name"]))
        if not role:
            err(f"{b['kind']} {b['metadata']['name']} refers to missing {ref['kind']} {ref['name']}")
            continue
        bound.append((role, None if b["kind"] == "ClusterRoleBinding" else b["metadata"].get("namespace")))
    bound_keys = {(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]) for r, _ in bound}
    for k in roles:
        if k not in bound_keys:
            err(f"{k[0]} {k[2]} is bound to nothing")
    cluster_read, ns_read, writes = set(), {}, {}
    for role, scope in bound:
        name = f"{role['kind']} {role['metadata']['name']}"
        for r in role.get("rules", []):
            groups, resources, verbs = r.get("apiGroups", []), r.get("resources", []), set(r.get("verbs", []))
            if "*" in groups or "*" in resources or "*" in verbs:
                err(f"{name}: wildcard in {r}")
            if r.get("nonResourceURLs"):
                err(f"{name}: nonResourceURLs")
            if r.get("resourceNames"):
                err(f"{name}: resourceNames (list/watch ignore them)")
            for g in groups:
                for res in resources:
                    if verbs <= READ:
                        if verbs != READ:
                            err(f"{name}: {g}/{res} needs exactly get, list, watch")
                        if scope is None:
                            cluster_read.add((g, res))
                        else:
                            ns_read.setdefault(scope, set()).add((g, res))
                    else:
                        writes.setdefault((g, res), []).append((name, scope, verbs))
    # Writes: the four status subresources, and leases in sluice-system.
    for (g, res), grants in writes.items():
        for name, scope, verbs in grants:
            if (g, res) in STATUS:
                if scope is not None or verbs != STATUS_VERBS:
                    err(f"{name}: {res} must be patch, update cluster-wide")
            elif (g, res) == ("coordination.k8s.io", "leases"):
                if scope != NS or verbs != LEASE_VERBS:
                    err(f"{name}: leases only in {NS} with {sorted(LEASE_VERBS)}")
            else:
                err(f"{name}: write verbs {sorted(verbs)} on {g or 'core'}/{res}")
    for s in STATUS:
        if s not in writes:
            err(f"no patch/update on {s[1]}")
    if ("coordination.k8s.io", "leases") not in writes:
        err("no Role for leases in sluice-system")
    # Reads: exactly the watched kinds (secrets may move to namespaced
    # Roles; configmaps exactly when --watch-configmaps is passed, which the
    # backend-tls-ca component does together with the grant).
    watch_ns, args = [], []
    if dep:
        args = dep["spec"]["template"]["spec"]["containers"][0].get("args", [])
        watch_ns = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--watch-namespace"]
    expected = set(WATCHED)
    configmaps = "--watch-configmaps" in args
    cm_ns = {n for n, rs in ns_read.items() if ("", "configmaps") in rs}
    if configmaps:
        if ("", "configmaps") in cluster_read:
            expected.add(("", "configmaps"))
        elif not watch_ns or set(watch_ns) - cm_ns:
            err("--watch-configmaps without read access to ConfigMaps in every watched namespace")
    elif ("", "configmaps") in cluster_read or cm_ns:
        err("ConfigMaps are readable but Sluice is not started with --watch-configmaps (least privilege)")
    if ("", "secrets") not in cluster_read:
        if not watch_ns:
            err("Secrets are not readable cluster-wide and no --watch-namespace limits the watch")
        for n in watch_ns:
            if ("", "secrets") not in ns_read.get(n, set()):
                err(f"--watch-namespace {n} but no Role there to read Secrets")
        expected.discard(("", "secrets"))
    if cluster_read != expected:
        missing, extra = sorted(expected - cluster_read), sorted(cluster_read - expected)
        err(f"cluster-wide read set differs from what Sluice watches: missing {missing}, extra {extra}")
    for n, rs in ns_read.items():
        if not rs <= {("", "secrets"), ("", "configmaps")}:
            err(f"namespaced read in {n}: {sorted(rs)} (only Secrets and ConfigMaps expected)")


def check_networkpolicy(docs, dep, err):
    if not dep:
        return
    labels = dep["spec"]["template"]["metadata"]["labels"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    nps = of_kind(docs, "NetworkPolicy")
    if len(nps) != 1:
        err("expected one NetworkPolicy")
        return
    np_ = nps[0]["spec"]
    if not selects(np_.get("podSelector"), labels):
        err("NetworkPolicy does not select the pods")
    if set(np_.get("policyTypes", [])) != {"Ingress", "Egress"}:
        err("NetworkPolicy must cover Ingress and Egress")

    def port_nums(rule):
        return {ports.get(p.get("port"), p.get("port")) for p in rule.get("ports", [])}

    open_ports = set()
    for rule in np_.get("ingress", []):
        if not rule.get("from"):
            if not rule.get("ports"):
                err("an ingress rule allows every port from everywhere")
            open_ports |= port_nums(rule)
        elif ports["admin"] in port_nums(rule):
            for peer in rule["from"]:
                if "ipBlock" in peer or not peer.get("namespaceSelector", {}).get("matchLabels"):
                    err(f"admin port open to {peer}; only a labelled monitoring namespace")
    if open_ports != {ports["http"], ports["https"]}:
        err(f"ports open to everyone {sorted(open_ports)} != the traffic ports {ports['http']}, {ports['https']}")
    eg = np_.get("egress", [])
    dns = {(p.get("port"), p.get("protocol", "TCP")) for r in eg for p in r.get("ports", [])}
    if not {(53, "UDP"), (53, "TCP")} <= dns:
        err("egress must allow DNS on 53/UDP and 53/TCP")
    if (443, "TCP") not in dns:
        err("egress must allow the API server (443/TCP)")


def check_classes(docs, err):
    gc = one(docs, "GatewayClass", "sluice", err)
    if gc and gc["spec"].get("controllerName") != GATEWAY_CONTROLLER:
        err(f"GatewayClass controllerName must be {GATEWAY_CONTROLLER}")
    ic = one(docs, "IngressClass", "sluice", err)
    if ic and ic["spec"].get("controller") != INGRESS_CONTROLLER:
        err(f"IngressClass controller must be {INGRESS_CONTROLLER}")


def load_crd_schemas(crd_dir):
    schemas = {}
    for path in sorted(glob.glob(os.path.join(crd_dir, "standard", "*.yaml"))):
        for crd in yaml.safe_load_all(open(path, encoding="utf-8")):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                if v.get("served"):
                    schemas[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return schemas


def check_gateway_api(docs, schemas, err, where):
    n = 0
    for d in docs:
        if not str(d.get("apiVersion", "")).startswith("gateway.networking.k8s.io/"):
            continue
        schema = schemas.get((d["apiVersion"], d["kind"]))
        if not schema:
            err(f"{where}: {d['apiVersion']} {d['kind']} is not a served standard-channel v1.6.1 kind")
            continue
        for e in jsonschema.Draft7Validator(schema).iter_errors(d):
            err(f"{where}: {d['kind']} {d['metadata'].get('name')}: {'.'.join(map(str, e.path))}: {e.message}")
        n += 1
    return n


def check_observability(docs, variant, err):
    sm = [d for d in docs if d["kind"] == "ServiceMonitor"]
    if variant not in ("all", "observability"):
        if sm:
            err("observability objects without the observability component")
        return
    if len(sm) != 1:
        err("expected one ServiceMonitor")
        return
    if variant == "all":
        for d in docs:
            if d["kind"] in ("ServiceMonitor", "PrometheusRule", "ConfigMap") and d["metadata"].get("namespace") != NS:
                err(f"{d['kind']} {d['metadata']['name']} must be in {NS}")
        ep_ports = {e.get("port") for e in sm[0]["spec"].get("endpoints", [])}
        targets = [s for s in of_kind(docs, "Service") if selects(sm[0]["spec"].get("selector"), s["metadata"].get("labels", {}))
                   and ep_ports & {p.get("name") for p in s["spec"].get("ports", [])}]
        if [t["metadata"]["name"] for t in targets] != ["sluice-admin"]:
            err(f"ServiceMonitor should scrape exactly sluice-admin, matches {[t['metadata']['name'] for t in targets]}")


def check_variant(docs, variant, ctx):
    err = Errors(variant)
    if variant == "observability":
        check_observability(docs, variant, err)
        return err.items
    check_objects(docs, err)
    check_namespace(docs, err)
    dep = check_deployment(docs, variant, ctx["flags"], ctx["paths"], err)
    check_services(docs, dep, err)
    check_pdb_hpa(docs, dep, variant, err)
    check_rbac(docs, dep, err)
    check_networkpolicy(docs, dep, err)
    check_classes(docs, err)
    ctx["validated"] += check_gateway_api(docs, ctx["schemas"], err, variant)
    check_observability(docs, variant, err)
    if variant == "all":
        svc = index(docs).get(("Service", NS, "sluice"))
        if svc and svc["metadata"].get("annotations", {}).get("service.beta.kubernetes.io/azure-load-balancer-internal") != "true":
            err("azure-internal-lb component did not mark the Service internal")
    if variant == "dev" and dep and dep["spec"].get("replicas") != 1:
        err("dev overlay should run one replica")
    return err.items


# ---------------------------------------------------------------- self-test


def mutations():
    """Known mistakes; each must produce at least one error on the base build."""

    def dep(d):
        return next(x for x in d if x["kind"] == "Deployment")

    def c0(d):
        return dep(d)["spec"]["template"]["spec"]["containers"][0]

    def crole(d):
        return next(x for x in d if x["kind"] == "ClusterRole" and x["metadata"]["name"] == "sluice")

    def svc(d):
        return next(x for x in d if x["kind"] == "Service" and x["metadata"]["name"] == "sluice")

    def args_replace(d, old, new):
        a = c0(d)["args"]
        a[a.index(old)] = new

    return {
        "writable root filesystem": lambda d: c0(d)["securityContext"].update(readOnlyRootFilesystem=False),
        "privilege escalation": lambda d: c0(d)["securityContext"].update(allowPrivilegeEscalation=True),
        "capability added": lambda d: c0(d)["securityContext"]["capabilities"].update(add=["NET_BIND_SERVICE"]),
        "root user": lambda d: dep(d)["spec"]["template"]["spec"]["securityContext"].update(runAsUser=0),
        "replicas beside HPA": lambda d: dep(d)["spec"].update(replicas=3),
        "no memory limit": lambda d: c0(d)["resources"]["limits"].pop("memory"),
        "wildcard verb": lambda d: crole(d)["rules"].append({"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}),
        "secrets write": lambda d: crole(d)["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}),
        "extra read": lambda d: crole(d)["rules"].append({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}),
        "missing watch": lambda d: crole(d)["rules"][0]["resources"].remove("referencegrants"),
        "status missing": lambda d: crole(d)["rules"][1]["resources"].remove("gateways/status"),
        "unknown flag": lambda d: c0(d)["args"].append("--no-such-flag"),
        "configmaps without the flag": lambda d: crole(d)["rules"].append(
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}),
        "flag without configmaps": lambda d: c0(d)["args"].append("--watch-configmaps"),
        "policy status missing": lambda d: crole(d)["rules"][1]["resources"].remove("backendtlspolicies/status"),
        "admin on 0.0.0.0": lambda d: args_replace(d, "$(POD_IP):9901", "0.0.0.0:9901"),
        "bind below 1024": lambda d: args_replace(d, "80=0.0.0.0:8080", "80=0.0.0.0:80"),
        "readiness path": lambda d: c0(d)["readinessProbe"]["httpGet"].update(path="/ready"),
        "grace too short": lambda d: dep(d)["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=30),
        "cluster traffic policy": lambda d: svc(d)["spec"].update(externalTrafficPolicy="Cluster"),
        "appProtocol": lambda d: svc(d)["spec"]["ports"][0].update(appProtocol="http"),
        "ignored probe annotation": lambda d: svc(d)["metadata"].setdefault("annotations", {}).update(
            {"service.beta.kubernetes.io/port_80_health-probe_request-path": "/healthz"}),
        "annotation typo": lambda d: svc(d)["metadata"].setdefault("annotations", {}).update(
            {"service.beta.kubernetes.io/azure-load-balancer-internl": "true"}),
        "gatewayclass schema": lambda d: next(x for x in d if x["kind"] == "GatewayClass")["spec"].update(
            description="x" * 65),
        "admin open": lambda d: next(x for x in d if x["kind"] == "NetworkPolicy")["spec"]["ingress"][0]["ports"].append(
            {"port": "admin", "protocol": "TCP"}),
    }


def self_test(base_docs, ctx):
    failures = []
    baseline = set(check_variant(copy.deepcopy(base_docs), "base", dict(ctx, validated=0)))
    for name, mutate in mutations().items():
        docs = copy.deepcopy(base_docs)
        mutate(docs)
        if not set(check_variant(docs, "base", dict(ctx, validated=0))) - baseline:
            failures.append(f"self-test: planted mistake not caught: {name}")
    return failures, len(mutations())


# --------------------------------------------------------------------- main


def readme_gateway_docs(path):
    """Gateway API objects in the README's ```yaml blocks."""
    text = open(path, encoding="utf-8").read()
    docs = []
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        for d in yaml.safe_load_all(block):
            if isinstance(d, dict) and str(d.get("apiVersion", "")).startswith("gateway.networking.k8s.io/"):
                docs.append(d)
    return docs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--crds", required=True)
    ap.add_argument("builds", nargs="+", metavar="VARIANT=FILE")
    a = ap.parse_args()
    src = os.path.join(a.repo, "crates", "sluice", "src")
    flags = run_flags(src)
    if "--bind" not in flags or "--admin" not in flags:
        sys.exit(f"could not read the `sluice run` flags from {src}")
    implemented = sorted(f for f in PENDING_FLAGS if f in flags)
    known = dict(flags)
    for f, (_, takes_value) in PENDING_FLAGS.items():
        known.setdefault(f, takes_value)
    paths = admin_paths(os.path.join(src, "admin.rs"))
    schemas = load_crd_schemas(a.crds)
    if ("gateway.networking.k8s.io/v1", "GatewayClass") not in schemas:
        sys.exit(f"no GatewayClass schema under {a.crds}/standard")
    ctx = {"flags": known, "paths": paths, "schemas": schemas, "validated": 0}
    problems, builds = [], {}
    for spec in a.builds:
        variant, _, path = spec.partition("=")
        docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]
        builds[variant] = docs
        found = check_variant(docs, variant, ctx)
        problems += found
        print(f"{variant}: {len(docs)} objects, {'ok' if not found else f'{len(found)} problem(s)'}")
    readme = os.path.join(a.repo, "deploy", "README.md")
    rerr = Errors("README")
    ctx["validated"] += check_gateway_api(readme_gateway_docs(readme), schemas, rerr, "deploy/README.md")
    problems += rerr.items
    if "base" in builds:
        st, n = self_test(builds["base"], ctx)
        problems += st
        print(f"self-test: {n - len(st)}/{n} planted mistakes caught")
    print(f"Gateway API objects validated against the v1.6.1 CRD schemas: {ctx['validated']}")
    pending = sorted(f for f in PENDING_FLAGS if f not in flags)
    print(f"flags accepted from the CLI contract but not in crates/sluice/src yet: {' '.join(pending) or 'none'}")
    for f in implemented:
        print(f"note: {f} is implemented now; remove it from PENDING_FLAGS in deploy/check.py")
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print("deploy manifests ok")


if __name__ == "__main__":
    main()
