#!/usr/bin/env python3
"""Sluice load tests: Sluice against nginx, HAProxy and Caddy on one machine.

    python3 loadtests/run.py            # full run (about 20 minutes), see README.md
    python3 loadtests/run.py --smoke    # CI smoke: seconds per scenario, Sluice only

Loopback only (127.0.0.1), every load bounded in time and count. The proxy
under test is pinned to core 0 (`taskset`), the load generator, the backends
and this driver to core 1. Results go to loadtests/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import render  # noqa: E402
from render import BACKEND_PORTS, PORTS, Route  # noqa: E402

PROXY_CORE = "0"
LOAD_CORE = "1"
WRK_LUA = HERE / "wrk" / "report.lua"
SLUICE_BIN = Path(os.environ.get("SLUICE_BIN") or REPO / "target" / "release" / "sluice")  # env: another build
ECHO_ALT_PORT = 18011  # `sluice echo --static-body`, the alternative backend (direct row only)
APP = "app.example.com"
ALL_PROXIES = ["sluice", "nginx", "haproxy", "caddy"]
APT_PACKAGES = ["nginx", "haproxy", "wrk", "nghttp2-client", "caddy", "curl"]

SCENARIOS = {
    1: "HTTP/1.1 keep-alive, 64 connections",
    2: "10,000 host routes",
    3: "Weighted split 90/10",
    4: "Canary shift 100/0 -> 0/100 under load",
    5: "Config churn every 100 ms under load",
    6: "Propagation at 5,000 routes",
    7: "Memory",
}


CHURN_ROUTES = 1000
PROPAGATION_ROUTES = 5000
BIG_ROUTES = 10_000


def churn_table(gen: int) -> list[Route]:
    """Scenario 5's table, generation `gen`: the route under load plus
    CHURN_ROUTES routes whose hostnames change every generation."""
    return [Route(APP)] + [Route(f"c{gen}-{i}.example.com") for i in range(CHURN_ROUTES)]


def scenario_table(n: int) -> tuple[list[Route], list[Route] | None]:
    """(routes, extra routes) each scenario starts with, for every proxy."""
    return {
        1: ([Route(APP)], None),
        2: ([Route(h) for h in render.hosts(BIG_ROUTES)], None),
        3: ([Route(APP, (("blue", 90), ("green", 10)))], None),
        4: ([Route(APP, (("blue", 100), ("green", 0)))], None),
        5: (churn_table(0), None),
        6: ([Route(h) for h in render.hosts(PROPAGATION_ROUTES)], [Route("new-0.example.com")]),
    }[n]


SCENARIO_DIRS = {1: "01-keepalive", 2: "02-routes-10k", 3: "03-split-90-10", 4: "04-canary-shift",
                 5: "05-config-churn", 6: "06-propagation", 7: "07-memory"}


def write_configs(n: int, out: Path) -> list[Path]:
    """Renders scenario n's starting configs for every proxy into out/<proxy>/."""
    routes, extra = scenario_table(n)
    written = []
    for proxy, fn in render.RENDERERS.items():
        try:
            files = fn(routes, extra)
        except ValueError:  # Caddy: no weighted policy
            continue
        if proxy == "caddy" and n in (4, 5, 6):
            continue  # not run there (no reload scenario for Caddy)
        d = out / proxy
        d.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (d / name).write_text(text)
            written.append(d / name)
    return written


def log(*a: object) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ==========================================================================
# Processes


_started: list[subprocess.Popen] = []


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def spawn(argv: list[str], core: str, *, cwd: Path | None = None, env: dict | None = None,
          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    p = subprocess.Popen(["taskset", "-c", core, *argv], cwd=cwd, env=env, stdout=stdout, stderr=stderr,
                         stdin=subprocess.DEVNULL, preexec_fn=_raise_nofile, start_new_session=True)
    _started.append(p)
    return p


def stop(p: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    if p is None or p.poll() is not None:
        return
    try:
        p.send_signal(sig)
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
    except ProcessLookupError:
        pass


def stop_all() -> None:
    for p in reversed(_started):
        stop(p, grace=3)


def children(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB summed over the process tree (nginx: master + workers)."""
    rss = pss = 0
    for p in children(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Client:
    """A minimal HTTP/1.1 keep-alive client (status + body) for polling."""

    def __init__(self, port: int):
        self.port = port
        self.sock: socket.socket | None = None
        self.buf = b""

    def close(self) -> None:
        if self.sock:
            self.sock.close()
        self.sock, self.buf = None, b""

    def get(self, host: str, path: str = "/", timeout: float = 2.0) -> tuple[int, dict, bytes]:
        """Returns (status, headers, body); status 0 on a socket error."""
        try:
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            while b"\r\n\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                self.buf += chunk
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while b"0\r\n\r\n" not in self.buf:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    self.buf += chunk
                body, self.buf = self.buf.split(b"0\r\n\r\n", 1)
            else:
                n = int(headers.get("content-length", "0"))
                while len(self.buf) < n:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    self.buf += chunk
                body, self.buf = self.buf[:n], self.buf[n:]
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status, headers, body
        except (OSError, ValueError, IndexError):
            self.close()
            return 0, {}, b""


def wait_route(port: int, host: str, timeout: float = 30.0) -> None:
    c = Client(port)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if c.get(host)[0] == 200:
                return
            time.sleep(0.02)
    finally:
        c.close()
    raise RuntimeError(f"127.0.0.1:{port} does not answer 200 for Host {host} after {timeout}s")


def write_atomic(path: Path, text: str) -> None:
    """Write to a dot-file in the same directory, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ==========================================================================
# Proxies: start with a route table, apply a new one (config file + the
# proxy's own reload mechanism), stop.


class Proxy:
    name = "?"
    port = 0

    def __init__(self, workdir: Path):
        self.dir = workdir / self.name
        self.proc: subprocess.Popen | None = None
        self.files: dict[str, str] = {}

    def render(self, routes: list[Route], extra: list[Route] | None = None) -> dict[str, str]:
        return render.RENDERERS[self.name](routes, extra)

    def write(self, files: dict[str, str]) -> None:
        """Writes the files that changed, each atomically."""
        for name, text in files.items():
            if self.files.get(name) != text:
                write_atomic(self.config_dir() / name, text)
        self.files = dict(files)

    def config_dir(self) -> Path:
        return self.dir

    def start(self, routes: list[Route], ready: str = APP, extra: list[Route] | None = None) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.config_dir().mkdir(parents=True)
        self.files = {}
        self.write(self.render(routes, extra))
        self.launch()
        wait_port(self.port, 60, self.proc)
        wait_route(self.port, ready, 60)

    def launch(self) -> None:
        raise NotImplementedError

    def reload(self) -> None:
        """Make the proxy pick up the written files (nothing for Sluice)."""

    def apply(self, files: dict[str, str]) -> None:
        self.write(files)
        self.reload()

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None

    def memory(self) -> tuple[int, int]:
        return memory_kb(self.proc.pid) if self.proc else (0, 0)


class Sluice(Proxy):
    name = "sluice"
    port = PORTS["sluice"]

    def config_dir(self) -> Path:
        return self.dir / "config"

    def launch(self) -> None:
        self.log = open(self.dir / "sluice.log", "w")
        env = dict(os.environ, SLUICE_LOG=os.environ.get("SLUICE_LOG", "info"))
        self.proc = spawn([str(SLUICE_BIN), "run", "--config", str(self.config_dir()),
                           "--bind", f"80=127.0.0.1:{self.port}", "--admin", f"127.0.0.1:{PORTS['sluice-admin']}"],
                          PROXY_CORE, env=env, stdout=self.log, stderr=self.log)

    def generation(self) -> int:
        """The applied table generation, from the first line of admin /config."""
        with socket.create_connection(("127.0.0.1", PORTS["sluice-admin"]), timeout=5) as s:
            s.sendall(b"GET /config?format=text HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            buf = b""
            while b"\n" not in buf.partition(b"# generation ")[2]:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return int(buf.partition(b"# generation ")[2].split(b"\n", 1)[0])

    def reload_times_ms(self) -> list[float]:
        """Reload durations Sluice logged (`elapsed_us=` of table/endpoint swaps)."""
        out = []
        try:
            for line in open(self.dir / "sluice.log", errors="replace"):
                if "elapsed_us=" in line:
                    out.append(int(line.split("elapsed_us=")[1].split()[0]) / 1000)
        except OSError:
            pass
        return out


class Nginx(Proxy):
    name = "nginx"
    port = PORTS["nginx"]

    def launch(self) -> None:
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / "tmp" / d).mkdir(parents=True, exist_ok=True)
        self.proc = spawn(self.argv() + ["-g", "daemon off;"], PROXY_CORE)

    def argv(self) -> list[str]:
        return ["nginx", "-p", f"{self.dir}/", "-c", str(self.dir / "nginx.conf"), "-e", "stderr"]

    def reload(self) -> None:
        # `nginx -s reload`, as documented; it runs on the proxy's core.
        subprocess.run(["taskset", "-c", PROXY_CORE, *self.argv(), "-g", "daemon off;", "-s", "reload"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


class HAProxy(Proxy):
    name = "haproxy"
    port = PORTS["haproxy"]

    def launch(self) -> None:
        # Master-worker mode (-W): SIGUSR2 to the master reloads, HAProxy's
        # documented hitless reload.
        self.proc = spawn(["haproxy", "-W", "-db", "-f", "haproxy.cfg"], PROXY_CORE, cwd=self.dir,
                          stderr=open(self.dir / "haproxy.log", "w"))

    def reload(self) -> None:
        if self.proc:
            os.kill(self.proc.pid, signal.SIGUSR2)


class Caddy(Proxy):
    name = "caddy"
    port = PORTS["caddy"]

    def launch(self) -> None:
        env = dict(os.environ, HOME=str(self.dir), XDG_DATA_HOME=str(self.dir / "data"),
                   XDG_CONFIG_HOME=str(self.dir / "cfg"))
        self.proc = spawn(["caddy", "run", "--config", str(self.dir / "Caddyfile"), "--adapter", "caddyfile"],
                          PROXY_CORE, env=env, stderr=open(self.dir / "caddy.log", "w"))


PROXY_CLASSES = {"sluice": Sluice, "nginx": Nginx, "haproxy": HAProxy, "caddy": Caddy}


# ==========================================================================
# Backends


class Backends:
    """blue/green static backends on core 1, plus `sluice echo --static-body`
    on ECHO_ALT_PORT for the alternative direct row."""

    def __init__(self, workdir: Path, kind: str):
        self.kind = kind
        self.dir = workdir / "backend"
        self.procs: list[subprocess.Popen] = []

    def echo(self, port: int, pod: str) -> subprocess.Popen:
        return spawn([str(SLUICE_BIN), "echo", "--listen", f"127.0.0.1:{port}", "--pod", pod, "--quiet",
                      "--static-body"], LOAD_CORE)

    def start(self) -> None:
        busy = []
        for port in [*BACKEND_PORTS.values(), ECHO_ALT_PORT, *PORTS.values()]:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                busy.append(port)
            except OSError:
                pass
        if busy:
            raise RuntimeError(f"ports already in use on 127.0.0.1: {busy} (a previous run still going?)")
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.kind == "nginx":
            for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (self.dir / "tmp" / d).mkdir(parents=True, exist_ok=True)
            (self.dir / "nginx.conf").write_text(render.nginx_backend()["nginx.conf"])
            self.procs.append(spawn(["nginx", "-p", f"{self.dir}/", "-c", str(self.dir / "nginx.conf"),
                                     "-e", "stderr", "-g", "daemon off;"], LOAD_CORE))
        else:
            for pod, port in BACKEND_PORTS.items():
                self.procs.append(self.echo(port, pod))
        self.procs.append(self.echo(ECHO_ALT_PORT, "echo"))
        for port in [*BACKEND_PORTS.values(), ECHO_ALT_PORT]:
            wait_port(port)
            wait_route(port, APP)

    def stop(self) -> None:
        for p in self.procs:
            stop(p)


# ==========================================================================
# Load: wrk with loadtests/wrk/report.lua


def cpu_times() -> dict[str, list[int]]:
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                out[parts[0]] = [int(x) for x in parts[1:9]]
    return out


def cpu_busy(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Per core: busy % and steal % over the interval."""
    res = {}
    for cpu, a in after.items():
        b = before.get(cpu)
        if not b:
            continue
        d = [x - y for x, y in zip(a, b)]
        total = sum(d) or 1
        idle = d[3] + d[4]
        res[cpu] = {"busy": round(100 * (total - idle) / total, 1), "steal": round(100 * d[7] / total, 1)}
    return res


@dataclass
class WrkResult:
    rps: float
    requests: int
    errors: int
    error_detail: dict
    p50: float  # ms
    p99: float
    p999: float
    buckets: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "buckets"}


def settle(limit: float = 10.0) -> float:
    """Waits (bounded) until core 0 is idle, so that a proxy still busy
    after the previous case (e.g. finishing queued requests, a GC) does not
    steal from the next one. Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        a = cpu_times()
        time.sleep(0.2)
        b = cpu_times()
        if cpu_busy(a, b).get(f"cpu{PROXY_CORE}", {}).get("busy", 0) < 15:
            return time.monotonic() - t0
    log(f"  note: core {PROXY_CORE} still busy after {limit:.0f} s; top processes: {top_processes()}")
    return time.monotonic() - t0


def top_processes(interval: float = 0.5) -> str:
    def ticks() -> dict[int, tuple[str, int]]:
        out = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    st = open(f"/proc/{d}/stat").read()
                    name = st[st.index("(") + 1:st.rindex(")")]
                    f = st.rsplit(")", 1)[1].split()
                    out[int(d)] = (name, int(f[11]) + int(f[12]))
                except (OSError, ValueError, IndexError):
                    pass
        return out

    a = ticks()
    time.sleep(interval)
    b = ticks()
    d = sorted(((b[p][1] - a[p][1], b[p][0], p) for p in b if p in a), reverse=True)[:4]
    return ", ".join(f"{name}[{pid}] {100 * t / (interval * os.sysconf('SC_CLK_TCK')):.0f}%" for t, name, pid in d if t)


def tree_cpu_ticks(pid: int) -> int:
    """utime + stime (clock ticks) of pid and its descendants."""
    total = 0
    for p in children(pid):
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def wrk(port: int, hosts_file: Path, duration: float, conns: int = 64, pods: bool = False,
        pid: int | None = None) -> WrkResult:
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s",
            "--timeout", "5s", "-s", str(WRK_LUA), f"http://127.0.0.1:{port}/", "--", str(hosts_file)]
    if pods:
        argv.append("pods")
    before = cpu_times()
    t0, ticks0 = time.monotonic(), (tree_cpu_ticks(pid) if pid else 0)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    after = cpu_times()
    # The proxy's own CPU use over the run: with core 0 ~100 % busy, a
    # proxy share well below that means something else ran on its core.
    proxy_cpu = (100 * (tree_cpu_ticks(pid) - ticks0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0)
                 if pid else None)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    j = json.loads(line[len("WRK_JSON "):])
    e = j["errors"]
    secs = j["duration_us"] / 1e6
    lat = j["latency_us"]
    # wrk's `status` error counts responses >= 400; socket errors are the rest.
    return WrkResult(rps=j["requests"] / secs, requests=j["requests"], errors=sum(e.values()), error_detail=e,
                     p50=lat["p50"] / 1000, p99=lat["p99"] / 1000, p999=lat["p999"] / 1000,
                     buckets=j["buckets"], cpu={**cpu_busy(before, after), "proxy": proxy_cpu})


def bucket_counts(buckets: dict) -> dict[int, dict[str, int]]:
    """{bucket(100 ms): {"blue": n, "green": n, "fail": n}}"""
    out: dict[int, dict[str, int]] = {}
    for k, v in buckets.items():
        b, pod, cls = k.split(" ")
        d = out.setdefault(int(b), {"blue": 0, "green": 0, "fail": 0})
        if cls != "ok":
            d["fail"] += v
        elif pod in d:
            d[pod] += v
    return out


def failed(res: WrkResult) -> int:
    """Socket errors plus non-2xx responses (counted by the Lua script when
    it counts responses, else wrk's own count of statuses >= 400)."""
    e = res.error_detail
    sockets = e["connect"] + e["read"] + e["write"] + e["timeout"]
    if res.buckets:
        return sockets + sum(d["fail"] for d in bucket_counts(res.buckets).values())
    return sockets + e["status"]


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# ==========================================================================
# The run


@dataclass
class Settings:
    smoke: bool
    duration: float
    warmup: float
    rounds: int
    proxies: list[str]
    backend: str
    changes: int
    canary_step: float
    conn_steps: list[int]
    split_tolerance: float
    canary_tolerance: float


class Run:
    def __init__(self, s: Settings, workdir: Path):
        self.s = s
        self.work = workdir
        self.results: dict = {"scenarios": {}}
        self.failures: list[str] = []

    def hosts_file(self, hosts: list[str], name: str) -> Path:
        p = self.work / f"hosts-{name}.txt"
        p.write_text("\n".join(hosts) + "\n")
        return p

    def proxies(self, names: list[str] | None = None) -> list[Proxy]:
        return [PROXY_CLASSES[n](self.work) for n in (names or self.s.proxies)]

    # ---- throughput scenarios (1, 2, 3): interleaved rounds over running proxies

    def rounds(self, targets: dict[str, int], hosts_file: Path, pods: bool = False,
               pids: dict[str, int] | None = None) -> dict[str, list[WrkResult]]:
        pids = pids or {}
        if self.s.warmup > 0:
            for name, port in targets.items():
                log(f"  warm-up {name}")
                wrk(port, hosts_file, self.s.warmup, pods=pods)
        out: dict[str, list[WrkResult]] = {n: [] for n in targets}
        for r in range(self.s.rounds):
            for name, port in targets.items():
                settle()
                res = wrk(port, hosts_file, self.s.duration, pods=pods, pid=pids.get(name))
                out[name].append(res)
                pc = res.cpu.get("proxy")
                log(f"  round {r + 1} {name}: {res.rps:,.0f} rps p99 {res.p99:.2f} ms errors {res.errors} "
                    f"cpu0 {res.cpu.get('cpu0', {}).get('busy')}% cpu1 {res.cpu.get('cpu1', {}).get('busy')}%"
                    + (f" proxy {pc:.0f}%" if pc is not None else ""))
        return out

    @staticmethod
    def table(runs: dict[str, list[WrkResult]]) -> dict:
        rows = {}
        for name, rs in runs.items():
            rows[name] = {
                "rps": summarize([r.rps for r in rs]),
                "p50": summarize([r.p50 for r in rs]),
                "p99": summarize([r.p99 for r in rs]),
                "p999": summarize([r.p999 for r in rs]),
                "errors": sum(r.errors for r in rs),
                "cpu0": summarize([r.cpu.get("cpu0", {}).get("busy", 0) for r in rs]),
                "cpu1": summarize([r.cpu.get("cpu1", {}).get("busy", 0) for r in rs]),
                "proxy_cpu": summarize([r.cpu["proxy"] for r in rs]) if rs[0].cpu.get("proxy") is not None else None,
                "steal": summarize([r.cpu.get("cpu0", {}).get("steal", 0) + r.cpu.get("cpu1", {}).get("steal", 0)
                                    for r in rs]),
                "rounds": [r.to_dict() for r in rs],
            }
        return rows

    def start_all(self, names: list[str], routes: list[Route], ready: str = APP) -> list[Proxy]:
        ps = []
        for p in self.proxies(names):
            log(f"  starting {p.name} with {len(routes)} routes")
            t = time.monotonic()
            p.start(routes, ready)
            p.startup_s = time.monotonic() - t
            ps.append(p)
        return ps

    def scenario1(self) -> None:
        log("scenario 1: keep-alive, 64 connections")
        names = self.s.proxies
        ps = self.start_all(names, scenario_table(1)[0])
        targets = {p.name: p.port for p in ps}
        targets[f"direct ({self.s.backend})"] = BACKEND_PORTS["blue"]
        if self.s.backend != "echo":
            targets["direct (sluice echo)"] = ECHO_ALT_PORT
        try:
            runs = self.rounds(targets, self.hosts_file([APP], "app"), pids={p.name: p.proc.pid for p in ps})
        finally:
            for p in ps:
                p.stop()
        self.results["scenarios"]["1"] = {"rows": self.table(runs)}

    def scenario2(self) -> None:
        n = BIG_ROUTES
        log(f"scenario 2: {n:,} host routes")
        routes = scenario_table(2)[0]
        hosts = [r.host for r in routes]
        ps = self.start_all(self.s.proxies, routes, ready=hosts[n // 2])
        idle = {p.name: p.memory() for p in ps}
        targets = {p.name: p.port for p in ps}
        targets[f"direct ({self.s.backend})"] = BACKEND_PORTS["blue"]
        try:
            runs = self.rounds(targets, self.hosts_file(hosts, "10k"), pids={p.name: p.proc.pid for p in ps})
            loaded = {p.name: p.memory() for p in ps}
        finally:
            for p in ps:
                p.stop()
        rows = self.table(runs)
        for p in ps:
            rows[p.name]["rss_idle_kb"], rows[p.name]["pss_idle_kb"] = idle[p.name]
            rows[p.name]["rss_loaded_kb"], rows[p.name]["pss_loaded_kb"] = loaded[p.name]
            rows[p.name]["startup_s"] = p.startup_s
        self.results["scenarios"]["2"] = {"rows": rows}

    def scenario3(self) -> None:
        log("scenario 3: weighted split 90/10")
        names = [n for n in self.s.proxies if n != "caddy"]
        ps = self.start_all(names, scenario_table(3)[0])
        targets = {p.name: p.port for p in ps}
        targets[f"direct ({self.s.backend})"] = BACKEND_PORTS["blue"]
        try:
            runs = self.rounds(targets, self.hosts_file([APP], "app"), pods=True,
                               pids={p.name: p.proc.pid for p in ps})
        finally:
            for p in ps:
                p.stop()
        rows = self.table(runs)
        for name, rs in runs.items():
            shares = []
            for r in rs:
                c = bucket_counts(r.buckets)
                blue = sum(d["blue"] for d in c.values())
                green = sum(d["green"] for d in c.values())
                shares.append(100 * green / max(1, blue + green))
            rows[name]["green_share"] = summarize(shares)
            if not name.startswith("direct"):
                ok = all(abs(s - 10) <= self.s.split_tolerance for s in shares)
                rows[name]["split_ok"] = ok
                if name == "sluice" and not ok:
                    self.failures.append(f"scenario 3: sluice split {shares} not within 10 ± "
                                         f"{self.s.split_tolerance} % green")
        self.results["scenarios"]["3"] = {"rows": rows, "tolerance_pp": self.s.split_tolerance}

    # ---- scenario 4: canary shift through the config source

    def scenario4(self) -> None:
        log("scenario 4: canary shift 100/0 -> 0/100 in steps of 10")
        names = [n for n in self.s.proxies if n != "caddy"]
        step = self.s.canary_step
        steps = [(100 - 10 * k, 10 * k) for k in range(11)]
        hosts = self.hosts_file([APP], "app")
        rows: dict[str, dict] = {n: {"rounds": []} for n in names}
        ps = {p.name: p for p in self.proxies(names)}
        try:
            for p in ps.values():
                p.start(scenario_table(4)[0])
            renders = {n: [ps[n].render([Route(APP, (("blue", b), ("green", g)))]) for b, g in steps] for n in names}
            for r in range(self.s.rounds):
                for n in names:
                    p = ps[n]
                    p.apply(renders[n][0])
                    time.sleep(0.5)
                    times: list[float] = []

                    def shifter() -> None:
                        t0 = time.time()
                        times.append(t0)
                        for k in range(1, len(steps)):
                            time.sleep(max(0.0, t0 + k * step - time.time()))
                            times.append(time.time())
                            p.apply(renders[n][k])

                    total = step * len(steps) + 0.5
                    settle()
                    th = threading.Thread(target=shifter)
                    # wrk first, the shifter starts as it starts
                    res_box: list[WrkResult] = []
                    wt = threading.Thread(target=lambda: res_box.append(
                        wrk(p.port, hosts, total, pods=True)))
                    wt.start()
                    time.sleep(0.25)
                    th.start()
                    th.join()
                    wt.join()
                    res = res_box[0]
                    times.append(times[0] + step * len(steps))
                    per_step = self.canary_steps(res, times, steps)
                    worst = max(abs(s["green_pct"] - s["expected"]) for s in per_step)
                    fails = failed(res)
                    row = {"rps": res.rps, "requests": res.requests, "errors": fails,
                           "error_detail": res.error_detail, "p99": res.p99, "steps": per_step,
                           "worst_step_dev_pp": worst, "split_follows": worst <= self.s.canary_tolerance}
                    rows[n]["rounds"].append(row)
                    log(f"  round {r + 1} {n}: {res.rps:,.0f} rps, failed {fails}, worst step deviation "
                        f"{worst:.1f} pp, steps " + " ".join(f"{s['green_pct']:.0f}" for s in per_step))
                    if n == "sluice":
                        if fails:
                            self.failures.append(f"scenario 4: sluice failed {fails} requests "
                                                 f"({res.error_detail})")
                        if worst > self.s.canary_tolerance:
                            self.failures.append(f"scenario 4: sluice split off by {worst:.1f} pp at some step")
        finally:
            for p in ps.values():
                p.stop()
        for n, row in rows.items():
            rs = row["rounds"]
            row["rps"] = summarize([x["rps"] for x in rs])
            row["p99"] = summarize([x["p99"] for x in rs])
            row["failed"] = sum(x["errors"] for x in rs)
            row["requests"] = sum(x["requests"] for x in rs)
            row["worst_step_dev_pp"] = max(x["worst_step_dev_pp"] for x in rs)
            row["split_follows"] = all(x["split_follows"] for x in rs)
        self.results["scenarios"]["4"] = {"rows": rows, "step_s": step, "tolerance_pp": self.s.canary_tolerance,
                                          "settle_ms": 200}

    @staticmethod
    def canary_steps(res: WrkResult, times: list[float], steps: list[tuple[int, int]]) -> list[dict]:
        """Observed green share per step, over [write + 200 ms, next write)."""
        c = bucket_counts(res.buckets)
        out = []
        for k, (_, g) in enumerate(steps):
            lo, hi = times[k] + (0.2 if k else 0.0), times[k + 1]
            blue = green = fail = 0
            for b, d in c.items():
                # bucket b covers [b/10, b/10 + 0.1)
                if b / 10 >= lo and (b + 1) / 10 <= hi:
                    blue += d["blue"]
                    green += d["green"]
                    fail += d["fail"]
            total = blue + green
            out.append({"expected": g, "green_pct": 100 * green / total if total else float("nan"),
                        "n": total, "fail": fail})
        return out

    # ---- scenario 5: config churn

    def scenario5(self) -> None:
        n_routes = CHURN_ROUTES
        log(f"scenario 5: route-table rewrite ({n_routes} routes) every 100 ms under load")
        names = [n for n in self.s.proxies if n != "caddy"]
        hosts = self.hosts_file([APP], "app")
        writes = int(self.s.duration / 0.1)

        table = churn_table
        rows: dict[str, dict] = {n: {"rounds": []} for n in names}
        ps = {p.name: p for p in self.proxies(names)}
        try:
            for p in ps.values():
                log(f"  starting {p.name}")
                p.start(table(0))
            for r in range(self.s.rounds):
                for n in names:
                    p = ps[n]
                    base = 1 + r * (writes + 1)
                    renders = [p.render(table(base + g)) for g in range(writes)]
                    gen0 = p.generation() if isinstance(p, Sluice) else None
                    done_writes = [0]
                    behind = [0]

                    def churn() -> None:
                        t0 = time.monotonic()
                        for g in range(writes):
                            time.sleep(max(0.0, t0 + 0.1 * (g + 1) - time.monotonic()))
                            p.apply(renders[g])
                            done_writes[0] += 1
                            if time.monotonic() > t0 + 0.1 * (g + 2):
                                behind[0] += 1

                    res_box: list[WrkResult] = []
                    settle()
                    wt = threading.Thread(target=lambda: res_box.append(wrk(p.port, hosts, self.s.duration + 1)))
                    wt.start()
                    time.sleep(0.3)
                    th = threading.Thread(target=churn)
                    th.start()
                    th.join()
                    wt.join()
                    res = res_box[0]
                    time.sleep(0.3)
                    applied = (p.generation() - gen0) if gen0 is not None else None
                    row = {"rps": res.rps, "requests": res.requests, "errors": failed(res),
                           "error_detail": res.error_detail, "p50": res.p50, "p99": res.p99, "p999": res.p999,
                           "writes": done_writes[0], "late_writes": behind[0], "applied": applied,
                           "cpu": res.cpu}
                    rows[n]["rounds"].append(row)
                    log(f"  round {r + 1} {n}: {res.rps:,.0f} rps, p99 {res.p99:.2f} ms, failed {res.errors} "
                        f"{res.error_detail if res.errors else ''}, writes {done_writes[0]}, applied {applied}")
                    if n == "sluice" and res.errors:
                        self.failures.append(f"scenario 5: sluice failed {res.errors} requests ({res.error_detail})")
        finally:
            for p in ps.values():
                p.stop()
        s1 = self.results["scenarios"].get("1", {}).get("rows", {})
        for n, row in rows.items():
            rs = row["rounds"]
            row["rps"] = summarize([x["rps"] for x in rs])
            row["p99"] = summarize([x["p99"] for x in rs])
            row["p999"] = summarize([x["p999"] for x in rs])
            row["failed"] = sum(x["errors"] for x in rs)
            row["requests"] = sum(x["requests"] for x in rs)
            if n in s1:
                row["vs_s1"] = row["rps"]["median"] / s1[n]["rps"]["median"]
        if "sluice" in ps:
            rows["sluice"]["reload_ms"] = summarize(ps["sluice"].reload_times_ms() or [0])
        self.results["scenarios"]["5"] = {"rows": rows, "routes": n_routes, "interval_ms": 100}

    # ---- scenario 6: propagation

    def scenario6(self) -> None:
        n_routes = PROPAGATION_ROUTES
        log(f"scenario 6: propagation at {n_routes:,} routes, {self.s.changes} changes")
        names = [n for n in self.s.proxies if n != "caddy"]
        base, first = scenario_table(6)
        ps = {p.name: p for p in self.proxies(names)}
        samples: dict[str, list[float]] = {n: [] for n in names}
        timeouts: dict[str, int] = {n: 0 for n in names}
        polls: dict[str, list[int]] = {n: [] for n in names}
        try:
            for p in ps.values():
                log(f"  starting {p.name}")
                p.start(base, ready=base[0].host, extra=first)
            clients = {n: Client(ps[n].port) for n in names}
            for i in range(1, self.s.changes + 1):
                host = f"new-{i}.example.com"
                for n in names:
                    p, c = ps[n], clients[n]
                    files = p.render(base, extra=[Route(host)])
                    if c.get(host)[0] == 200:
                        raise RuntimeError(f"{n}: {host} answers before the change")
                    t0 = time.perf_counter()
                    p.apply(files)
                    k = 0
                    while True:
                        k += 1
                        st = c.get(host)[0]
                        t = time.perf_counter() - t0
                        if st == 200:
                            samples[n].append(t * 1000)
                            polls[n].append(k)
                            break
                        if t > 10:
                            timeouts[n] += 1
                            break
                time.sleep(0.05)
            for c in clients.values():
                c.close()
        finally:
            for p in ps.values():
                p.stop()
        rows = {}
        for n in names:
            xs = sorted(samples[n])
            rows[n] = {"n": len(xs), "timeouts": timeouts[n],
                       "p50_ms": percentile(xs, 50), "p99_ms": percentile(xs, 99),
                       "min_ms": xs[0] if xs else None, "max_ms": xs[-1] if xs else None,
                       "polls_median": statistics.median(polls[n]) if polls[n] else None}
            log(f"  {n}: p50 {rows[n]['p50_ms']:.1f} ms p99 {rows[n]['p99_ms']:.1f} ms "
                f"(min {rows[n]['min_ms']:.1f}, max {rows[n]['max_ms']:.1f}, {len(xs)} changes, "
                f"{timeouts[n]} timeouts)")
        if "sluice" in ps:
            rows["sluice"]["reload_ms"] = summarize(ps["sluice"].reload_times_ms()[1:] or [0])
            if timeouts["sluice"]:
                self.failures.append(f"scenario 6: sluice never served the new route within 10 s "
                                     f"{timeouts['sluice']} times")
        self.results["scenarios"]["6"] = {"rows": rows, "routes": n_routes, "changes": self.s.changes}

    # ---- scenario 7: memory

    def scenario7(self) -> None:
        log("scenario 7: memory")
        rows: dict[str, dict] = {}
        big = scenario_table(2)[0]
        for name in self.s.proxies:
            row: dict = {}
            p = PROXY_CLASSES[name](self.work)
            p.start(big, ready=big[0].host)
            time.sleep(1.0)
            row["rss_10k_kb"], row["pss_10k_kb"] = p.memory()
            p.stop()
            p.start(scenario_table(1)[0])
            time.sleep(1.0)
            row["rss_idle_kb"], row["pss_idle_kb"] = p.memory()
            row["conn_curve"] = self.conn_curve(p)
            p.stop()
            xs = [x for x, _ in row["conn_curve"]]
            ys = [y for _, y in row["conn_curve"]]
            row["kb_per_conn"] = slope(xs, ys)
            rows[name] = row
            log(f"  {name}: idle {row['rss_idle_kb'] / 1024:.1f} MB, 10k routes {row['rss_10k_kb'] / 1024:.1f} MB, "
                f"{row['kb_per_conn']:.2f} kB per idle connection (curve {row['conn_curve']})")
        self.results["scenarios"]["7"] = {"rows": rows, "conn_steps": self.s.conn_steps}

    def conn_curve(self, p: Proxy) -> list[tuple[int, int]]:
        """RSS (kB) at 0, step, 2*step... idle keep-alive connections, each
        having completed one request (sent one after another, so the
        upstream pool stays small)."""
        socks: list[socket.socket] = []
        curve = [(0, p.memory()[0])]
        req = f"GET / HTTP/1.1\r\nHost: {APP}\r\n\r\n".encode()
        try:
            for target in self.s.conn_steps:
                while len(socks) < target:
                    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
                    s.sendall(req)
                    buf = b""
                    while b"ok\n" not in buf:
                        chunk = s.recv(4096)
                        if not chunk:
                            raise RuntimeError(f"{p.name} closed connection {len(socks)}")
                        buf += chunk
                    socks.append(s)
                time.sleep(1.0)
                curve.append((len(socks), p.memory()[0]))
        finally:
            for s in socks:
                s.close()
        return curve


def percentile(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted xs."""
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, int(round(q / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs) or 1
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


# ==========================================================================
# Setup, machine info, main


def setup(args: argparse.Namespace, proxies: list[str]) -> list[str]:
    need = {"wrk": "wrk", "taskset": "util-linux", "curl": "curl"}
    if args.backend == "nginx" or "nginx" in proxies:
        need["nginx"] = "nginx"
    if "haproxy" in proxies:
        need["haproxy"] = "haproxy"
    if "caddy" in proxies:
        need["caddy"] = "caddy"
    if not args.smoke:
        need["h2load"] = "nghttp2-client"
    missing = sorted({pkg for tool, pkg in need.items() if shutil.which(tool) is None})
    if missing and not args.no_install:
        log(f"installing with apt: {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    if "caddy" in proxies and shutil.which("caddy") is None:
        log("caddy not available: skipped")
        proxies = [p for p in proxies if p != "caddy"]
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required")
    if not args.no_build:
        log("building Sluice: cargo build --release --bin sluice")
        subprocess.run(["cargo", "build", "--release", "--bin", "sluice"], cwd=REPO, check=True)
    if not SLUICE_BIN.exists():
        sys.exit(f"{SLUICE_BIN} missing: build it with cargo build --release --bin sluice")
    return proxies


def sh(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"


def machine() -> dict:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        mem = f"{int(open('/proc/meminfo').readline().split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError):
        pass
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "crates"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "os": sh(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "commit": sh(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"]),
        "crates_dirty": bool(dirty),
        "versions": {
            "sluice": sh([str(SLUICE_BIN), "--version"]),
            "rustc": sh(["rustc", "--version"]),
            "nginx": sh(["nginx", "-v"]),
            "haproxy": sh(["haproxy", "-v"]),
            "caddy": sh(["caddy", "version"]),
            "wrk": sh(["wrk", "-v"]),
            "python": platform.python_version(),
        },
    }


def loadavg() -> list[float]:
    return [float(x) for x in open("/proc/loadavg").read().split()[:3]]


def wait_quiet(limit_s: float, threshold: float) -> dict:
    start = time.monotonic()
    first = loadavg()
    while time.monotonic() - start < limit_s:
        la = loadavg()
        if la[0] < threshold:
            return {"quiet": True, "waited_s": round(time.monotonic() - start), "load_at_start": first}
        log(f"waiting for a quiet machine: load average {la[0]:.2f} >= {threshold} "
            f"({time.monotonic() - start:.0f}/{limit_s:.0f} s)")
        time.sleep(10)
    return {"quiet": False, "waited_s": round(time.monotonic() - start), "load_at_start": first}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="short CI run: Sluice only, seconds per scenario, "
                    "asserts zero failed requests in 4 and 5 and the split in 3")
    ap.add_argument("--scenarios", default="1,2,3,4,5,6,7", help="comma-separated scenario numbers")
    ap.add_argument("--proxies", help="comma-separated subset of sluice,nginx,haproxy,caddy "
                    "(default: all; --smoke: sluice)")
    ap.add_argument("--backend", choices=["nginx", "echo"],
                    help="static backend behind every proxy: nginx (`return 200`, the default) or echo "
                    "(`sluice echo --static-body`, the default with --smoke: no nginx needed)")
    ap.add_argument("--duration", type=float, help="seconds per measured round (default 10; smoke 2)")
    ap.add_argument("--rounds", type=int, help="rounds per case (default 5; smoke 1)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per case (default 3; smoke 1)")
    ap.add_argument("--changes", type=int, help="scenario 6 changes per proxy (default 50; smoke 10)")
    ap.add_argument("--wait-quiet", type=float, default=None,
                    help="seconds to wait for the 1-minute load average to drop below --quiet-load "
                    "(default 600; smoke 0)")
    ap.add_argument("--quiet-load", type=float, default=0.7)
    ap.add_argument("--no-build", action="store_true", help="use the existing target/release/sluice")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install missing tools")
    ap.add_argument("--out", default=str(HERE / "results"), help="results directory")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the temp dir with configs and logs")
    ap.add_argument("--write-configs", action="store_true",
                    help="write the starting configs of the small scenarios (1, 3, 4) into their folders and exit; "
                    "the large ones have a generate.py")
    args = ap.parse_args()
    _raise_nofile()
    if args.write_configs:
        for n in (1, 3, 4):
            for p in write_configs(n, HERE / SCENARIO_DIRS[n]):
                print(p.relative_to(REPO))
        return 0

    smoke = args.smoke
    args.backend = args.backend or ("echo" if smoke else "nginx")
    proxies = args.proxies.split(",") if args.proxies else (["sluice"] if smoke else list(ALL_PROXIES))
    for p in proxies:
        if p not in PROXY_CLASSES:
            sys.exit(f"unknown proxy {p}")
    scenarios = [int(x) for x in args.scenarios.split(",") if x]
    settings = Settings(
        smoke=smoke,
        duration=args.duration or (2 if smoke else 10),
        warmup=args.warmup if args.warmup is not None else (1 if smoke else 3),
        rounds=args.rounds or (1 if smoke else 5),
        proxies=proxies,
        backend=args.backend,
        changes=args.changes or (10 if smoke else 50),
        canary_step=0.4 if smoke else 1.0,
        conn_steps=[500, 1000] if smoke else [1000, 2000, 3000, 4000],
        split_tolerance=2.0,
        canary_tolerance=5.0,
    )

    settings.proxies = setup(args, proxies)
    workdir = Path(tempfile.mkdtemp(prefix="sluice-loadtests-"))
    # Run a private copy: other builds may replace target/release/sluice mid-run.
    global SLUICE_BIN
    shutil.copy2(SLUICE_BIN, workdir / "sluice-bin")
    SLUICE_BIN = workdir / "sluice-bin"
    os.sched_setaffinity(0, {int(LOAD_CORE)})  # this driver runs beside the load generator
    quiet = {"quiet": None, "waited_s": 0}
    wait_s = args.wait_quiet if args.wait_quiet is not None else (0 if smoke else 600)
    if wait_s > 0:
        quiet = wait_quiet(wait_s, args.quiet_load)
        log(f"load average {'quiet' if quiet['quiet'] else 'NOT quiet'} after {quiet['waited_s']} s: {loadavg()}")

    started = dt.datetime.now(dt.timezone.utc)
    info = machine()
    info["loadavg_before"] = loadavg()
    info["quiet_wait"] = quiet
    run = Run(settings, workdir)
    backends = Backends(workdir, args.backend)
    code = 0
    try:
        backends.start()
        for n in scenarios:
            before = loadavg()
            getattr(run, f"scenario{n}")()
            if str(n) in run.results["scenarios"]:
                run.results["scenarios"][str(n)]["loadavg"] = [before, loadavg()]
    except Exception as e:  # noqa: BLE001 - report and clean up
        log(f"ERROR: {type(e).__name__}: {e}")
        run.failures.append(f"harness error: {type(e).__name__}: {e}")
        code = 2
    finally:
        backends.stop()
        stop_all()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"work dir kept: {workdir}")
    info["loadavg_after"] = loadavg()
    run.results["machine"] = info
    run.results["settings"] = settings.__dict__
    run.results["command"] = " ".join(["python3 loadtests/run.py", *sys.argv[1:]])
    run.results["started"] = started.isoformat(timespec="seconds")
    run.results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    run.results["failures"] = run.failures

    import report  # noqa: PLC0415 - keeps the driver importable without it

    out = Path(args.out)
    if smoke:
        out = out / "smoke"
    out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    paths = report.write(run.results, out, stamp)
    for p in paths:
        log(f"wrote {p}")
    if run.failures:
        for f in run.failures:
            log(f"FAIL: {f}")
        return code or 1
    log("OK" + (" (smoke: zero failed requests in 4 and 5, split in 3 within tolerance)" if smoke else ""))
    return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()
