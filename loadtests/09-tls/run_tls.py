#!/usr/bin/env python3
"""Scenario 9: TLS termination, Sluice against nginx and HAProxy.

    python3 loadtests/09-tls/run_tls.py               # about 4 minutes after the release build
    python3 loadtests/09-tls/run_tls.py --rounds 5 --duration 10 --key rsa2048|ecdsa-p256

Two cases, every proxy with the same certificate (one key, SAN
app.example.com, also the default certificate without SNI), TLS 1.2 + 1.3,
TLS 1.3 suite TLS_AES_128_GCM_SHA256 (the servers' only TLS 1.3 suite for
nginx and HAProxy; forced from the client for h2load), X25519:

- h2-rps: h2load over TLS with ALPN h2 (`-c 64 -m 10`, one thread), long-lived
  connections: requests/s.
- handshakes: parallel `openssl s_time -new` clients: every connection is a
  full TLS 1.3 handshake, no request, no resumption (wrk cannot be used: it
  resumes sessions); Sluice's `sluice_tls_handshakes_total{result="resumed"}`
  is read after the run to confirm 0.
- idle memory: RSS growth per idle TLS keep-alive connection (`--idle-conns`).

Same rules as loadtests/run.py (whose helpers this imports): loopback only,
proxy pinned to core 0 with one worker, load generator and backend (nginx
`return 200`) on core 1, interleaved rounds after a warm-up, medians and
ratios to nginx. Results: loadtests/results/tls-<stamp>.{md,json} and
tls-latest.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import run as base  # noqa: E402  (loadtests/run.py)
import render  # noqa: E402

PORTS = {"sluice": 18443, "sluice-admin": 18444, "nginx": 18543, "haproxy": 18643}
HOST = "app.example.com"
BACKEND = render.BACKEND_PORTS["blue"]
TLS13_SUITE = "TLS_AES_128_GCM_SHA256"
TLS12_CIPHERS = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"


def make_cert(d: Path, key: str) -> tuple[Path, Path]:
    d.mkdir(parents=True, exist_ok=True)
    crt, k = d / "cert.pem", d / "key.pem"
    algo = ["-newkey", "rsa:2048"] if key == "rsa2048" else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    subprocess.run(["openssl", "req", "-x509", *algo, "-nodes", "-keyout", str(k), "-out", str(crt), "-days", "7",
                    "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (d / "combined.pem").write_text(crt.read_text() + k.read_text())
    return crt, k


def sluice_config(crt: Path, key: Path) -> str:
    import base64
    b64 = lambda p: base64.b64encode(p.read_bytes()).decode()  # noqa: E731
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: sluice}}
spec: {{controllerName: sluice.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: default}}
spec:
  gatewayClassName: sluice
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    tls:
      certificateRefs: [{{name: app-tls}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: app-tls, namespace: default}}
type: kubernetes.io/tls
data: {{tls.crt: {b64(crt)}, tls.key: {b64(key)}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app, namespace: default}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: [{HOST}]
  rules:
  - backendRefs: [{{name: blue, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: blue, namespace: default}}
spec:
  ports: [{{name: http, port: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: blue-local
  namespace: default
  labels: {{kubernetes.io/service-name: blue}}
addressType: IPv4
ports: [{{name: http, port: {BACKEND}}}]
endpoints: [{{addresses: ["127.0.0.1"]}}]
"""


def nginx_config(crt: Path, key: Path) -> str:
    return f"""# Scenario 9 (TLS), rendered by loadtests/09-tls/run_tls.py.
worker_processes 1;
worker_rlimit_nofile 20000;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 9000; }}
http {{
  access_log off;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
  client_body_temp_path tmp/body;
  proxy_temp_path tmp/proxy;
  fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi;
  scgi_temp_path tmp/scgi;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host $host;
  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
  proxy_set_header X-Forwarded-Proto $scheme;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_ciphers {TLS12_CIPHERS};
  ssl_conf_command Ciphersuites {TLS13_SUITE};
  ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  upstream be_blue {{
    server 127.0.0.1:{BACKEND};
    keepalive 256;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }}
  server {{
    listen 127.0.0.1:{PORTS['nginx']} ssl http2 default_server;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    location / {{ proxy_pass http://be_blue; }}
  }}
}}
"""


def haproxy_config(combined: Path) -> str:
    return f"""# Scenario 9 (TLS), rendered by loadtests/09-tls/run_tls.py.
global
  nbthread 1
  maxconn 9000
  ssl-default-bind-options ssl-min-ver TLSv1.2
  ssl-default-bind-ciphers {TLS12_CIPHERS}
  ssl-default-bind-ciphersuites {TLS13_SUITE}

defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option forwardfor

frontend fe
  bind 127.0.0.1:{PORTS['haproxy']} ssl crt {combined} alpn h2,http/1.1
  http-request set-header X-Forwarded-Proto https
  default_backend be_blue

backend be_blue
  server blue 127.0.0.1:{BACKEND}
"""


class Proc:
    def __init__(self, name: str, work: Path, crt: Path, key: Path):
        self.name, self.dir = name, work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.crt, self.key = crt, key
        self.proc = None

    def start(self) -> None:
        if self.name == "sluice":
            cfg = self.dir / "config"
            cfg.mkdir(exist_ok=True)
            (cfg / "config.yaml").write_text(sluice_config(self.crt, self.key))
            self.log = open(self.dir / "sluice.log", "w")
            self.proc = base.spawn([str(base.SLUICE_BIN), "run", "--config", str(cfg), "--bind",
                                    f"443=127.0.0.1:{PORTS['sluice']}", "--admin",
                                    f"127.0.0.1:{PORTS['sluice-admin']}"], base.PROXY_CORE,
                                   stdout=self.log, stderr=self.log)
        elif self.name == "nginx":
            for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (self.dir / "tmp" / d).mkdir(parents=True, exist_ok=True)
            (self.dir / "nginx.conf").write_text(nginx_config(self.crt, self.key))
            self.proc = base.spawn(["nginx", "-p", f"{self.dir}/", "-c", str(self.dir / "nginx.conf"), "-e",
                                    "stderr", "-g", "daemon off;"], base.PROXY_CORE)
        else:
            (self.dir / "haproxy.cfg").write_text(haproxy_config(self.crt.parent / "combined.pem"))
            self.proc = base.spawn(["haproxy", "-W", "-db", "-f", "haproxy.cfg"], base.PROXY_CORE, cwd=self.dir,
                                   stderr=open(self.dir / "haproxy.log", "w"))
        base.wait_port(PORTS[self.name], 60, self.proc)
        # One real request through TLS before measuring.
        out = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--resolve",
                              f"{HOST}:{PORTS[self.name]}:127.0.0.1", f"https://{HOST}:{PORTS[self.name]}/"],
                             capture_output=True, text=True, timeout=30)
        if out.stdout != "200":
            raise RuntimeError(f"{self.name}: first HTTPS request answered {out.stdout!r} {out.stderr}")


def h2load(port: int, duration: float) -> dict:
    argv = ["taskset", "-c", base.LOAD_CORE, "h2load", "-t1", "-c64", "-m10", "-D", str(max(1, round(duration))),
            "--tls13-ciphers", TLS13_SUITE, "--ciphers", TLS12_CIPHERS, "--connect-to", f"127.0.0.1:{port}",
            f"https://{HOST}:{port}/"]
    before = base.cpu_times()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout
    cpu = base.cpu_busy(before, base.cpu_times())
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    s = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    proto = re.search(r"Application protocol: (\S+)", out)
    if not (m and s and codes):
        raise RuntimeError(f"h2load output not understood:\n{out}")
    ok2xx = int(codes.group(1))
    return {"rps": float(m.group(2)), "succeeded": int(s.group(1)), "failed": int(s.group(2)) + int(s.group(3)),
            "non2xx": int(s.group(1)) - ok2xx, "alpn": proto.group(1) if proto else None, "cpu": cpu}


def s_time_handshakes(port: int, duration: float, procs: int) -> dict:
    """`procs` parallel `openssl s_time -new` (full handshakes, no request,
    no resumption) on the load core; handshakes/s over the wall time."""
    # Same TLS 1.3 suite for every server (s_time would offer AES-256-GCM-SHA384 first: nginx and HAProxy
    # only have AES-128-GCM-SHA256, Sluice follows the client's order).
    argv = ["taskset", "-c", base.LOAD_CORE, "openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
            "-ciphersuites", TLS13_SUITE, "-time", str(max(1, round(duration)))]
    before = base.cpu_times()
    t0 = time.monotonic()
    ps = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(procs)]
    outs = [p.communicate(timeout=duration + 60)[0] for p in ps]
    wall = time.monotonic() - t0
    cpu = base.cpu_busy(before, base.cpu_times())
    total = 0
    for out in outs:
        m = re.search(r"(\d+) connections in [\d.]+s;", out)
        if not m:
            raise RuntimeError(f"s_time output not understood:\n{out[-500:]}")
        total += int(m.group(1))
    return {"rps": total / wall, "handshakes": total, "wall_s": wall, "failed": 0, "cpu": cpu}


def settled_rss(pid: int, limit: float = 20.0) -> int:
    """RSS (kB) of `pid`'s tree once three readings 1 s apart agree within
    1 % (bounded by `limit` seconds; the last reading then)."""
    readings = [base.memory_kb(pid)[0]]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(1)
        readings.append(base.memory_kb(pid)[0])
        last = readings[-3:]
        if len(last) == 3 and max(last) - min(last) <= 0.01 * max(last):
            break
    return readings[-1]


def idle_memory(name: str, pid: int, port: int, conns: int) -> dict:
    """RSS growth per idle TLS keep-alive connection: `conns` TLS 1.3
    connections (ALPN http/1.1, one request each, then left open and idle),
    RSS of the process tree before and once it has settled again (Sluice
    parks idle connections after 250-500 ms and returns freed memory within
    ~3 s). The client runs in this process, so it holds no core."""
    import socket
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    before = settled_rss(pid)
    socks = []
    try:
        for _ in range(conns):
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=HOST)
            s.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            if not s.recv(4096).startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{name}: idle-memory request not answered 200")
            socks.append(s)
        after = settled_rss(pid)
    finally:
        for s in socks:
            s.close()
    return {"conns": conns, "rss_before_kb": before, "rss_after_kb": after,
            "kb_per_conn": (after - before) / conns}


def sluice_metric(result: str) -> int:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{PORTS['sluice-admin']}/metrics", timeout=5).read().decode()
    except OSError:
        return -1
    m = re.search(rf'sluice_tls_handshakes_total{{result="{result}"}} (\d+)', body)
    return int(m.group(1)) if m else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxies", default="sluice,nginx,haproxy")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--key", choices=["rsa2048", "ecdsa-p256"], default="rsa2048")
    ap.add_argument("--handshake-procs", type=int, default=8, help="parallel `openssl s_time -new` clients")
    ap.add_argument("--idle-conns", type=int, default=2000, help="idle TLS connections for the memory case (0: skip)")
    ap.add_argument("--wait-quiet", type=float, default=300, help="seconds to wait for load average < 0.7")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out", default=str(base.HERE / "results"))
    args = ap.parse_args()
    base._raise_nofile()  # the idle-memory case holds thousands of sockets
    proxies = args.proxies.split(",")
    for tool in ("h2load", "nginx", "openssl", "taskset", "curl") + (("haproxy",) if "haproxy" in proxies else ()):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required (apt-get install nghttp2-client nginx haproxy openssl curl)")
    if not args.no_build:
        base.log("building Sluice: cargo build --release --bin sluice")
        subprocess.run(["cargo", "build", "--release", "--bin", "sluice"], cwd=base.REPO, check=True)
    quiet = base.wait_quiet(args.wait_quiet, 0.7) if args.wait_quiet > 0 else {"quiet": None}
    work = Path(tempfile.mkdtemp(prefix="sluice-tls-load-"))
    results: dict = {"settings": vars(args), "machine": base.machine(), "quiet": quiet, "cases": {}}
    crt, key = make_cert(work / "cert", args.key)
    backends = base.Backends(work, "nginx")
    procs: list[Proc] = []
    try:
        backends.start()
        for n in proxies:
            p = Proc(n, work, crt, key)
            p.start()
            procs.append(p)
        cases = {
            "h2-rps": lambda port, d: h2load(port, d),
            "handshakes": lambda port, d: s_time_handshakes(port, d, args.handshake_procs),
        }
        for case, fn in cases.items():
            base.log(f"case {case}: warm-up")
            for p in procs:
                fn(PORTS[p.name], args.warmup)
            rounds: dict[str, list[dict]] = {p.name: [] for p in procs}
            for r in range(args.rounds):
                for p in procs:
                    base.settle()
                    res = fn(PORTS[p.name], args.duration)
                    rounds[p.name].append(res)
                    base.log(f"  {case} round {r + 1} {p.name}: {res['rps']:.0f}/s")
            results["cases"][case] = {
                n: {"rounds": rs, "rps": base.summarize([x["rps"] for x in rs])} for n, rs in rounds.items()
            }
        if args.idle_conns > 0:
            results["idle_memory"] = {}
            for p in procs:
                base.settle()
                m = idle_memory(p.name, p.proc.pid, PORTS[p.name], args.idle_conns)
                results["idle_memory"][p.name] = m
                base.log(f"  idle TLS memory {p.name}: {m['kb_per_conn']:.1f} kB per connection")
        if "sluice" in proxies:
            results["sluice_handshakes"] = {
            k: sluice_metric(k) for k in ("ok", "resumed", "closed", "error", "no_certificate")
        }
    finally:
        for p in procs:
            base.stop(p.proc)
        backends.stop()
        base.stop_all()
    results["loadavg_after"] = base.loadavg()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"tls-{stamp}.json").write_text(json.dumps(results, indent=1))
    md = report(results, stamp)
    (out / f"tls-{stamp}.md").write_text(md)
    (out / "tls-latest.md").write_text(md)
    print(md)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def report(r: dict, stamp: str) -> str:
    m = r["machine"]
    lines = [f"# Scenario 9: TLS termination ({stamp})", "",
             f"Commit `{m['commit']}`{' (crates dirty)' if m['crates_dirty'] else ''}; {m['cores']} cores, {m['cpu']}; "
             f"{m['versions']['nginx']}; {m['versions']['haproxy']}; key {r['settings']['key']}; "
             f"{r['settings']['rounds']} interleaved rounds of {r['settings']['duration']:.0f} s after a "
             f"{r['settings']['warmup']:.0f} s warm-up; quiet machine: {r['quiet'].get('quiet')} "
             f"(load average at start {r['quiet'].get('load_at_start')}, after {r['loadavg_after']}).", ""]
    titles = {"h2-rps": "h2 over TLS (h2load -c64 -m10, ALPN h2), requests/s",
              "handshakes": f"full TLS 1.3 handshakes/s ({r['settings']['handshake_procs']} × `openssl s_time -new`)"}
    for case, per in r["cases"].items():
        nginx = per.get("nginx", {}).get("rps", {}).get("median")
        lines += [f"## {titles[case]}", "", "| proxy | median | min–max | vs nginx | failures |", "|---|---|---|---|---|"]
        for name, v in per.items():
            s = v["rps"]
            ratio = f"{s['median'] / nginx:.2f}×" if nginx else "—"
            if case == "h2-rps":
                fails = sum(x["failed"] + x["non2xx"] for x in v["rounds"])
                alpn = {x["alpn"] for x in v["rounds"]}
                fail_txt = f"{fails} (ALPN {', '.join(sorted(a or '?' for a in alpn))})"
            else:
                fail_txt = "—"
            lines.append(f"| {name} | {s['median']:.0f} | {s['min']:.0f}–{s['max']:.0f} | {ratio} | {fail_txt} |")
        lines.append("")
    if r.get("idle_memory"):
        n = next(iter(r["idle_memory"].values()))["conns"]
        lines += [f"## Memory per idle TLS connection ({n} TLS 1.3 keep-alive connections, ALPN http/1.1, "
                  "one request each, RSS once settled)", "", "| proxy | RSS before | RSS after | per connection |",
                  "|---|---|---|---|"]
        for name, m in r["idle_memory"].items():
            lines.append(f"| {name} | {m['rss_before_kb'] / 1024:.1f} MB | {m['rss_after_kb'] / 1024:.1f} MB | "
                         f"{m['kb_per_conn']:.1f} kB |")
        lines.append("")
    if "sluice_handshakes" in r:
        lines += [f"Sluice `sluice_tls_handshakes_total` after the run: {r['sluice_handshakes']}. "
                  "`resumed` 0: every handshake was a full one. s_time closes as soon as its handshake is "
                  "done, before the server has sent its session tickets; Sluice counts those as `closed` "
                  "(the client went away), so most handshakes of the second case land there.", ""]
    lines += ["Reproduce: `python3 loadtests/09-tls/run_tls.py` (see loadtests/09-tls/README.md).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
