#!/usr/bin/env python3
"""Scenario 10: what rate limiting costs.

Sluice without a limit, then with a limit that admits everything (so every
request pays for the decision and none is refused) in each mode: local
(governor), cluster (--replicas 1), redis (one EVALSHA per request to a
redis-server on loopback). nginx without a limit and with `limit_req` (the
same never-refusing setup) for comparison. Every case: the proxy pinned to
core 0, wrk (1 thread, 64 connections), the nginx `return 200` backend and
redis-server on core 1; interleaved rounds; medians.

    python3 loadtests/10-ratelimit/run.py [--rounds 3] [--duration 10] [--sluice target/release/sluice]

Writes loadtests/results/ratelimit-latest.md (and .json).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Not the 18xxx ports of loadtests/run.py, so the two can never collide.
PROXY_PORT = 28180
ADMIN_PORT = 28181
BACKEND_PORT = 28001
REDIS_PORT = 28379

BACKEND_CONF = f"""
worker_processes 1;
pid backend.pid;
error_log backend-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
  server {{ listen 127.0.0.1:{BACKEND_PORT}; location / {{ add_header X-Pod blue; return 200 "ok\\n"; }} }}
}}
"""

NGINX_CONF = """
worker_processes 1;
worker_rlimit_nofile 20000;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 9000; }}
http {{
  access_log off;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
  client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host $host;
  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
  {zone}
  upstream be {{ server 127.0.0.1:{backend}; keepalive 256; keepalive_requests 1000000; }}
  server {{ listen 127.0.0.1:{port}; location / {{ {limit} proxy_pass http://be; }} }}
}}
"""

SLUICE_BASE = f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: sluice}}
spec: {{controllerName: sluice.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: default}}
spec:
  gatewayClassName: sluice
  listeners: [{{name: http, protocol: HTTP, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app, namespace: default}}
spec:
  parentRefs: [{{name: web}}]
  rules: [{{backendRefs: [{{name: blue, port: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: blue, namespace: default}}
spec: {{ports: [{{name: http, port: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: blue-local, namespace: default, labels: {{kubernetes.io/service-name: blue}}}}
addressType: IPv4
ports: [{{name: http, port: {BACKEND_PORT}}}]
endpoints: [{{addresses: ["127.0.0.1"]}}]
"""

# Admits everything: a billion per second with a billion burst, keyed by
# client address (one key: every connection comes from 127.0.0.1).
POLICY = """---
apiVersion: policy.sluice.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: app, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app}}]
  mode: {mode}
  limit: {{requests: 1000000000, unit: Second, burst: 1000000000}}
{extra}"""


def wait_port(port, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def wait_gone(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                time.sleep(0.05)
        except OSError:
            return


def start(cmd, cwd, core, log):
    return subprocess.Popen(
        ["taskset", "-c", str(core)] + cmd, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(p):
    if p and p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def wrk(duration, conns=64):
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
         f"http://127.0.0.1:{PROXY_PORT}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale[p99.group(2)],
            "p50_ms": float(p50.group(1)) * scale[p50.group(2)],
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(0) if errors else ""}


class Case:
    def __init__(self, name, work, sluice, kind, mode=None):
        self.name, self.work, self.sluice, self.kind, self.mode = name, work, sluice, kind, mode
        self.proc = None

    def setup(self):
        d = self.work / self.name.replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        for t in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (d / "tmp" / t).mkdir(parents=True, exist_ok=True)
        if self.kind == "nginx":
            limited = self.mode == "limit_req"
            zone = "limit_req_zone $binary_remote_addr zone=z:10m rate=1000000r/s;" if limited else ""
            limit = "limit_req zone=z burst=1000000 nodelay;" if limited else ""
            (d / "nginx.conf").write_text(NGINX_CONF.format(zone=zone, limit=limit, port=PROXY_PORT, backend=BACKEND_PORT))
            self.cmd = ["nginx", "-p", str(d), "-c", "nginx.conf", "-e", "stderr", "-g", "daemon off;"]
        else:
            cfg = d / "config"
            cfg.mkdir(exist_ok=True)
            text = SLUICE_BASE
            if self.mode:
                extra = f"  redis: {{timeout: 50ms, failureMode: Closed}}\n" if self.mode == "Redis" else ""
                text += POLICY.format(mode=self.mode, extra=extra)
            (cfg / "sluice.yaml").write_text(text)
            self.cmd = [self.sluice, "run", "--config", str(cfg), "--bind", f"80=127.0.0.1:{PROXY_PORT}",
                        "--admin", f"127.0.0.1:{ADMIN_PORT}", "--replicas", "1",
                        "--redis-url", f"redis://127.0.0.1:{REDIS_PORT}"]
        self.dir = d

    def up(self):
        self.proc = start(self.cmd, self.dir, 0, self.dir / "proxy.log")
        wait_port(PROXY_PORT)
        # Warm-up: the first request of a Redis case loads the script.
        for _ in range(50):
            try:
                subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{PROXY_PORT}/"], timeout=5)
                break
            except subprocess.TimeoutExpired:
                time.sleep(0.1)

    def down(self):
        stop(self.proc)
        wait_gone(PROXY_PORT)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--sluice", default=str(ROOT / "target/release/sluice"))
    ap.add_argument("--out", default=str(ROOT / "loadtests/results/ratelimit-latest.md"))
    args = ap.parse_args()
    for tool in ("wrk", "nginx", "redis-server", "taskset", "curl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (apt-get install wrk nginx redis-server util-linux curl)")
    work = Path(tempfile.mkdtemp(prefix="sluice-lt10-"))
    backend_dir = work / "backend"
    for t in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (backend_dir / "tmp" / t).mkdir(parents=True, exist_ok=True)
    (backend_dir / "backend.conf").write_text(BACKEND_CONF)
    backend = start(["nginx", "-p", str(backend_dir), "-c", "backend.conf", "-e", "stderr", "-g", "daemon off;"],
                    backend_dir, 1, backend_dir / "log")
    redis = start(["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                  work, 1, work / "redis.log")
    wait_port(BACKEND_PORT)
    wait_port(REDIS_PORT)
    cases = [
        Case("sluice", work, args.sluice, "sluice"),
        Case("sluice local", work, args.sluice, "sluice", "Local"),
        Case("sluice cluster", work, args.sluice, "sluice", "Cluster"),
        Case("sluice redis", work, args.sluice, "sluice", "Redis"),
        Case("nginx", work, args.sluice, "nginx"),
        Case("nginx limit_req", work, args.sluice, "nginx", "limit_req"),
    ]
    results = {c.name: [] for c in cases}
    latency = {c.name: [] for c in cases}
    load_before = os.getloadavg()
    try:
        for c in cases:
            c.setup()
            c.up()
            wrk(3)  # warm-up
            c.down()
        for r in range(args.rounds):
            for c in cases:
                c.up()
                res = wrk(args.duration)
                # One connection: no queueing, so latency is the service
                # time and its difference is what the decision adds.
                lat = wrk(max(3, args.duration // 2), conns=1)
                c.down()
                results[c.name].append(res)
                latency[c.name].append(lat)
                print(f"round {r + 1} {c.name:16} {res['rps']:>10.0f} rps  p99 {res['p99_ms']:.3f} ms  non2xx {res['non2xx']}"
                      f"  | 1 conn: p50 {lat['p50_ms']:.3f} p99 {lat['p99_ms']:.3f} ms non2xx {lat['non2xx']}", flush=True)
    finally:
        for c in cases:
            stop(c.proc)
        stop(backend)
        stop(redis)
    load_after = os.getloadavg()

    med = {n: {"rps": statistics.median(x["rps"] for x in v), "p99_ms": statistics.median(x["p99_ms"] for x in v),
               "rps_min": min(x["rps"] for x in v), "rps_max": max(x["rps"] for x in v),
               "non2xx": sum(x["non2xx"] for x in v)} for n, v in results.items()}
    lmed = {n: {"p50_ms": statistics.median(x["p50_ms"] for x in v), "p99_ms": statistics.median(x["p99_ms"] for x in v),
                "non2xx": sum(x["non2xx"] for x in v)} for n, v in latency.items()}
    base, nbase = med["sluice"], med["nginx"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [
        "# Scenario 10: rate limiting overhead",
        "",
        f"Commit `{commit}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"load average {load_before[0]:.2f} before / {load_after[0]:.2f} after. "
        f"{args.rounds} interleaved rounds of {args.duration} s per case (median; min–max RPS), wrk 1 thread 64 "
        "connections on core 1 with the nginx backend and redis-server; the proxy alone on core 0.",
        "",
        "Command: `python3 loadtests/10-ratelimit/run.py "
        f"--rounds {args.rounds} --duration {args.duration}`",
        "",
        "The limit admits every request (1e9/s, burst 1e9, keyed by client address: one key, every connection "
        "is from 127.0.0.1), so each request pays for a decision and none is refused. Redis: 50 ms timeout, "
        "fail-closed, so a Redis failure would show as non-2xx.",
        "",
        "| case | RPS (median) | RPS min–max | RPS vs no limit | p99 ms | p99 added vs no limit | non-2xx |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in results:
        m = med[name]
        ref = nbase if name.startswith("nginx") else base
        lines.append(
            f"| {name} | {m['rps']:.0f} | {m['rps_min']:.0f}–{m['rps_max']:.0f} | {m['rps'] / ref['rps']:.3f} | "
            f"{m['p99_ms']:.3f} | {m['p99_ms'] - ref['p99_ms']:+.3f} | {m['non2xx']} |"
        )
    lines += [
        "",
        "Latency with one connection (no queueing: the service time; `added` = the case minus its no-limit row):",
        "",
        "| case | p50 ms | p99 ms | p50 added | p99 added | non-2xx |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in latency:
        m = lmed[name]
        ref = lmed["nginx"] if name.startswith("nginx") else lmed["sluice"]
        lines.append(f"| {name} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} | {m['p50_ms'] - ref['p50_ms']:+.3f} | "
                     f"{m['p99_ms'] - ref['p99_ms']:+.3f} | {m['non2xx']} |")
    lines += [
        "",
        "Ratios: Sluice cases against `sluice` (no limit), nginx cases against `nginx` (no limit).",
        "",
        "Targets (issue 6): local costs < 5% RPS (ratio ≥ 0.95); redis adds < 1 ms p99 on loopback.",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"rounds": results, "median": med, "latency_rounds": latency, "latency_median": lmed}, indent=1))
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
