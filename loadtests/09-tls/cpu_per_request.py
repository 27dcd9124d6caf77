#!/usr/bin/env python3
"""CPU per request for scenario 9's h2 case (h2load -c64 -m10 over TLS), by proxy.

    python3 loadtests/09-tls/cpu_per_request.py sluice,nginx,haproxy 6
    ROUNDS=4 python3 loadtests/09-tls/cpu_per_request.py sluice,haproxy 6 OLD_BINARY NEW_BINARY
    SYSC=1 ...   # also syscalls per request (perf stat -e raw_syscalls:sys_enter)

Requests/s swing by ±30 % on a shared VM; user and system CPU time per
request (utime/stime of the proxy's processes over the run, from /proc)
swing less, and paired, interleaved rounds of two Sluice binaries compare
a change under the same conditions. Same processes, configs and pinning as
run_tls.py (proxy on core 0, h2load and the nginx backend on core 1); a
fresh proxy process per run, a 2 s warm-up before each. Several Sluice
binaries: each is measured in every round. Medians when ROUNDS > 1.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import run as base  # noqa: E402  (loadtests/run.py)
import run_tls as t  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pids: list[int]) -> tuple[int, int]:
    """(utime, stime) summed over `pids`, in clock ticks."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user, system


def measure(name: str, work: Path, crt: Path, key: Path, seconds: float) -> tuple[float, float, float, str]:
    """One fresh proxy process, a 2 s warm-up, one run: (req/s, user µs, sys µs per request, extra)."""
    p = t.Proc(name, work, crt, key)
    p.start()
    try:
        pids = sorted(set(base.children(p.proc.pid)))
        t.h2load(t.PORTS[name], 2)
        perf = None
        if os.environ.get("SYSC"):
            perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p",
                                     ",".join(map(str, pids))], stderr=subprocess.PIPE, text=True)
            time.sleep(0.2)
        before = cpu_ticks(pids)
        run = t.h2load(t.PORTS[name], seconds)
        after = cpu_ticks(pids)
        reqs = max(1, run["succeeded"])
        extra = ""
        if perf:
            perf.send_signal(2)
            for line in perf.communicate()[1].splitlines():
                f = line.split(",")
                if len(f) > 3 and f[0].isdigit():
                    extra = f" syscalls/req={int(f[0]) / reqs:.3f}"
        us = lambda ticks: ticks / TICK * 1e6 / reqs  # noqa: E731
        return run["rps"], us(after[0] - before[0]), us(after[1] - before[1]), extra
    finally:
        base.stop(p.proc)


def main() -> int:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    names = sys.argv[1].split(",")
    seconds = float(sys.argv[2])
    binaries = sys.argv[3:] or [str(base.SLUICE_BIN)]
    rounds = int(os.environ.get("ROUNDS", "1"))
    base._raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="sluice-cpu-per-request-"))
    crt, key = t.make_cert(work / "cert", "rsa2048")
    backends = base.Backends(work, "nginx")
    backends.start()
    results: dict[str, list[tuple[float, float, float]]] = {}
    try:
        for _ in range(rounds):
            for name in names:
                for binary in binaries if name == "sluice" else [name]:
                    if name == "sluice":
                        base.SLUICE_BIN = Path(binary)
                    rps, user, system, extra = measure(name, work, crt, key, seconds)
                    results.setdefault(binary, []).append((rps, user, system))
                    print(f"{binary:24} rps={rps:7.0f} user={user:5.2f}us sys={system:5.2f}us "
                          f"total={user + system:5.2f}us{extra}", flush=True)
    finally:
        backends.stop()
        base.stop_all()
    if rounds > 1:
        for k, v in results.items():
            med = lambda i: statistics.median(x[i] for x in v)  # noqa: E731
            print(f"MEDIAN {k:24} rps={med(0):7.0f} user={med(1):5.2f} sys={med(2):5.2f} "
                  f"total={statistics.median(x[1] + x[2] for x in v):5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
