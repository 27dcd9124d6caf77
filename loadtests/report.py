"""Markdown tables and the PNG chart for one run of loadtests/run.py."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

PROXY_ORDER = ["sluice", "nginx", "haproxy", "caddy"]


def _order(rows: dict) -> list[str]:
    names = [n for n in PROXY_ORDER if n in rows]
    return names + sorted(n for n in rows if n not in names)


def _f(x, nd=0, unit="") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:,.{nd}f}{unit}"


def _spread(s: dict, nd=0) -> str:
    """median (min–max)"""
    if s["n"] == 1:
        return _f(s["median"], nd)
    return f"{_f(s['median'], nd)} ({_f(s['min'], nd)}–{_f(s['max'], nd)})"


def _ratio(a, b) -> str:
    if a is None or b in (None, 0):
        return "n/a"
    return f"{a / b:.2f}×"


def _throughput_table(rows: dict, extra_cols: list[tuple[str, callable]] | None = None) -> list[str]:
    nginx = rows.get("nginx")
    head = ["proxy", "RPS median (min–max)", "RPS / nginx", "p50 ms", "p99 ms (min–max)", "p99 / nginx",
            "p99.9 ms", "failed", "core0 busy %", "proxy CPU %", "core1 busy %"]
    extra_cols = extra_cols or []
    head += [c for c, _ in extra_cols]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in _order(rows):
        r = rows[n]
        cells = [
            f"**{n}**" if n == "sluice" else n,
            _spread(r["rps"]),
            _ratio(r["rps"]["median"], nginx["rps"]["median"]) if nginx else "n/a",
            _f(r["p50"]["median"], 2),
            _spread(r["p99"], 2),
            _ratio(r["p99"]["median"], nginx["p99"]["median"]) if nginx else "n/a",
            _f(r["p999"]["median"], 2),
            str(r["errors"]),
            _f(r["cpu0"]["median"]),
            _f(r["proxy_cpu"]["median"]) if r.get("proxy_cpu") else "",
            _f(r["cpu1"]["median"]),
        ]
        cells += [fn(n, r) for _, fn in extra_cols]
        out.append("| " + " | ".join(cells) + " |")
    return out


def markdown(res: dict, png_name: str | None) -> str:
    m = res["machine"]
    s = res["settings"]
    sc = res["scenarios"]
    L: list[str] = []
    L.append(f"# Sluice load test results — {res['started'][:10]}")
    L.append("")
    L.append(f"Command: `{res['command']}`  ")
    L.append(f"Started {res['started']}, finished {res['finished']} (UTC).  ")
    L.append(f"Commit `{m['commit']}`" + (" (with uncommitted changes under crates/)" if m["crates_dirty"] else "")
             + f", {m['versions']['sluice']}, {m['versions']['rustc']}.")
    L.append("")
    L.append("## Machine")
    L.append("")
    L.append(f"- {m['cores']} cores ({m['cpu']}), {m['memory']}, {m['os']}, kernel {m['kernel']}")
    q = m.get("quiet_wait", {})
    quiet = {True: f"quiet (1-min load < threshold) after waiting {q.get('waited_s')} s",
             False: f"**never got quiet** within {q.get('waited_s')} s (other work was running; figures are "
                    "noisier than on an idle machine)",
             None: "not waited for"}[q.get("quiet")]
    L.append(f"- Load average before: {m['loadavg_before']} ({quiet}); after: {m['loadavg_after']}")
    v = m["versions"]
    L.append(f"- {v['nginx']}; {v['haproxy']}; Caddy {v['caddy']}; {v['wrk']}; Python {v['python']}")
    L.append(f"- Proxy under test pinned to core 0; wrk (1 thread), the backend and the driver pinned to core 1. "
             f"Backend: **{s['backend']}** (`{'nginx return 200' if s['backend'] == 'nginx' else 'sluice echo --static-body'}`, "
             "body `ok\\n`).")
    L.append(f"- {s['rounds']} interleaved rounds of {s['duration']:g} s per case after a {s['warmup']:g} s "
             "warm-up; figures are medians with the min–max over rounds; ratios are to nginx's median.")
    L.append("- Latency is wrk's closed-loop latency (64 connections, no pacing).")
    L.append("- core0/core1 busy %: each core's busy time during the round (all processes); proxy CPU %: the "
             "proxy's own processes. A proxy well below 100 % with core 0 ~100 % busy means something else "
             "ran on its core; a core 1 near 100 % means the load side, not the proxy, may be the limit.")
    L.append("")
    if res.get("failures"):
        L.append("**Failures:** " + "; ".join(res["failures"]))
        L.append("")
    if png_name:
        L.append(f"![RPS and p99 per proxy per scenario]({png_name})")
        L.append("")

    if "1" in sc:
        L.append("## 1. HTTP/1.1 keep-alive, small responses, 64 connections")
        L.append("")
        L += _throughput_table(sc["1"]["rows"])
        L.append("")
    if "2" in sc:
        rows = sc["2"]["rows"]
        s1 = sc.get("1", {}).get("rows", {})

        def vs1(n, r):
            return _ratio(r["rps"]["median"], s1[n]["rps"]["median"]) if n in s1 else "n/a"

        def p99vs1(n, r):
            return _ratio(r["p99"]["median"], s1[n]["p99"]["median"]) if n in s1 else "n/a"

        def rss(n, r):
            if "rss_idle_kb" not in r:
                return ""
            return f"{r['rss_idle_kb'] / 1024:.1f} / {r['rss_loaded_kb'] / 1024:.1f}"

        def start(n, r):
            return f"{r['startup_s']:.1f}" if "startup_s" in r else ""

        L.append("## 2. 10,000 host-based routes (requests cycle through all 10,000 hosts)")
        L.append("")
        L += _throughput_table(rows, [("RPS vs scenario 1", vs1), ("p99 vs scenario 1", p99vs1),
                                      ("RSS MB idle / after load", rss), ("startup s", start)])
        L.append("")
    if "3" in sc:
        rows = sc["3"]["rows"]

        def share(n, r):
            return _spread(r["green_share"], 2) + ("" if n.startswith("direct") else
                                                   (" ✓" if r.get("split_ok") else " ✗"))

        L.append(f"## 3. Weighted split 90/10 (green share, target 10 % ± {sc['3']['tolerance_pp']:g} pp)")
        L.append("")
        L += _throughput_table(rows, [("green share %", share)])
        L.append("")
        L.append("wrk counts each response's `X-Pod` header here (a Lua callback per response), so RPS is "
                 "lower than in scenario 1 for every proxy, the direct row included.")
        L.append("")
    if "4" in sc:
        d = sc["4"]
        rows = d["rows"]
        L.append(f"## 4. Canary shift under load: 100/0 → 0/100 in steps of 10 every {d['step_s']:g} s")
        L.append("")
        L.append("Each step is written through the proxy's config source (Sluice: file rename in the watched "
                 "directory; nginx: conf + `nginx -s reload`; HAProxy: conf + SIGUSR2 to the master). The share "
                 f"is measured from {d['settle_ms']} ms after each write to the next write.")
        L.append("")
        L.append("| proxy | RPS median (min–max) | p99 ms | requests | failed | worst step deviation (pp) | "
                 "split follows each step |")
        L.append("|---|---|---|---|---|---|---|")
        for n in _order(rows):
            r = rows[n]
            L.append(f"| {n} | {_spread(r['rps'])} | {_spread(r['p99'], 2)} | {r['requests']:,} | "
                     f"**{r['failed']}** | {r['worst_step_dev_pp']:.1f} | "
                     f"{'yes' if r['split_follows'] else 'no'} (±{d['tolerance_pp']:g} pp) |")
        L.append("")
        L.append("Observed green % per step (expected 0, 10, …, 100), one line per round:")
        L.append("")
        L.append("| proxy | round | " + " | ".join(str(10 * k) for k in range(11)) + " |")
        L.append("|---|---|" + "---|" * 11)
        for n in _order(rows):
            for i, rr in enumerate(rows[n]["rounds"]):
                L.append(f"| {n} | {i + 1} | " + " | ".join(_f(st["green_pct"], 1) for st in rr["steps"]) + " |")
        L.append("")
    if "5" in sc:
        d = sc["5"]
        rows = d["rows"]
        L.append(f"## 5. Config churn: rewrite of a {d['routes']:,}-route table every {d['interval_ms']} ms "
                 "under load")
        L.append("")
        L.append("| proxy | RPS median (min–max) | RPS vs scenario 1 | p99 ms (min–max) | p99.9 ms | requests | "
                 "failed | writes (late) | tables applied |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for n in _order(rows):
            r = rows[n]
            writes = sum(x["writes"] for x in r["rounds"])
            late = sum(x["late_writes"] for x in r["rounds"])
            applied = [x["applied"] for x in r["rounds"]]
            ap = "n/a" if None in applied else str(sum(applied))
            L.append(f"| {n} | {_spread(r['rps'])} | {_ratio(r.get('vs_s1'), 1) if r.get('vs_s1') else 'n/a'} | "
                     f"{_spread(r['p99'], 2)} | {_f(r['p999']['median'], 2)} | {r['requests']:,} | "
                     f"**{r['failed']}** | {writes} ({late}) | {ap} |")
        if "sluice" in rows and "reload_ms" in rows["sluice"]:
            rl = rows["sluice"]["reload_ms"]
            L.append("")
            L.append(f"Sluice's own reload time (load + translate + compile, logged `elapsed_us`), on the "
                     f"serving thread: median {rl['median']:.1f} ms, max {rl['max']:.1f} ms over {rl['n']} reloads.")
        L.append("")
        L.append("A late write is one that started more than one interval after its slot "
                 "(the writer waits for `nginx -s reload` to return).")
        L.append("")
    if "6" in sc:
        d = sc["6"]
        rows = d["rows"]
        L.append(f"## 6. Propagation at {d['routes']:,} routes ({d['changes']} changes per proxy)")
        L.append("")
        L.append("Time from the config write (Sluice: a new HTTPRoute in its own file, written to a temp file and "
                 "renamed; nginx: conf + `nginx -s reload`; HAProxy: map file + SIGUSR2) to the first 200 from "
                 "the new host, polled back to back on a keep-alive connection.")
        L.append("")
        L.append("| proxy | p50 ms | p99 ms | min ms | max ms | changes | timeouts (> 10 s) | p50 / nginx |")
        L.append("|---|---|---|---|---|---|---|---|")
        ng = rows.get("nginx", {}).get("p50_ms")
        for n in _order(rows):
            r = rows[n]
            L.append(f"| {n} | {_f(r['p50_ms'], 1)} | {_f(r['p99_ms'], 1)} | {_f(r['min_ms'], 1)} | "
                     f"{_f(r['max_ms'], 1)} | {r['n']} | {r['timeouts']} | {_ratio(r['p50_ms'], ng)} |")
        if "sluice" in rows and "reload_ms" in rows["sluice"]:
            rl = rows["sluice"]["reload_ms"]
            L.append("")
            L.append(f"Sluice's logged reload time: median {rl['median']:.1f} ms (min {rl['min']:.1f}, "
                     f"max {rl['max']:.1f}).")
        L.append("")
    if "7" in sc:
        d = sc["7"]
        rows = d["rows"]
        L.append("## 7. Memory")
        L.append("")
        L.append("RSS summed over the proxy's processes (nginx: master + worker; PSS in parentheses, which "
                 "does not double-count pages they share). Per-connection figure: least-squares slope of RSS "
                 f"over {', '.join(str(x) for x in [0] + d['conn_steps'])} idle keep-alive connections, "
                 "each after one request.")
        L.append("")
        L.append("| proxy | idle MB | 10,000 routes MB | kB per idle connection | RSS curve (conns: MB) |")
        L.append("|---|---|---|---|---|")
        for n in _order(rows):
            r = rows[n]
            curve = ", ".join(f"{c}: {kb / 1024:.1f}" for c, kb in r["conn_curve"])
            L.append(f"| {n} | {r['rss_idle_kb'] / 1024:.1f} ({r['pss_idle_kb'] / 1024:.1f}) | "
                     f"{r['rss_10k_kb'] / 1024:.1f} ({r['pss_10k_kb'] / 1024:.1f}) | {r['kb_per_conn']:.1f} | "
                     f"{curve} |")
        L.append("")
    las = [(k, sc[k]["loadavg"]) for k in sorted(sc) if "loadavg" in sc[k]]
    if las:
        L.append("## Load average around each scenario (1-minute, before → after)")
        L.append("")
        L.append(" · ".join(f"{k}: {a[0]:.2f} → {b[0]:.2f}" for k, (a, b) in las))
        L.append("")
    L.append(targets(res))
    return "\n".join(L) + "\n"


def targets(res: dict) -> str:
    """The issue's targets for Sluice, each with the measured figure."""
    sc = res["scenarios"]
    out = ["## Targets (Sluice)", "", "| target | measured | met |", "|---|---|---|"]

    def row(t, m, ok):
        out.append(f"| {t} | {m} | {'yes' if ok else '**no**'} |")

    r1 = sc.get("1", {}).get("rows", {})
    if "sluice" in r1 and "nginx" in r1:
        a, b = r1["sluice"]["rps"]["median"], r1["nginx"]["rps"]["median"]
        row("1: RPS ≥ 1.3× nginx", f"{a / b:.2f}× ({a:,.0f} vs {b:,.0f})", a >= 1.3 * b)
        if "haproxy" in r1:
            h = r1["haproxy"]["rps"]["median"]
            row("1: RPS ≥ 1.0× HAProxy", f"{a / h:.2f}× ({a:,.0f} vs {h:,.0f})", a >= h)
        a, b = r1["sluice"]["p99"]["median"], r1["nginx"]["p99"]["median"]
        row("1: p99 ≤ 0.8× nginx", f"{a / b:.2f}× ({a:.2f} ms vs {b:.2f} ms)", a <= 0.8 * b)
    r2 = sc.get("2", {}).get("rows", {})
    if "sluice" in r2 and "sluice" in r1:
        a, b = r2["sluice"]["rps"]["median"], r1["sluice"]["rps"]["median"]
        row("2: RPS within 5 % of scenario 1", f"{100 * (a / b - 1):+.1f} % ({a:,.0f} vs {b:,.0f})",
            abs(a / b - 1) <= 0.05)
    for k in ("4", "5"):
        r = sc.get(k, {}).get("rows", {}).get("sluice")
        if r:
            row(f"{k}: zero failed requests", f"{r['failed']} of {r['requests']:,}", r["failed"] == 0)
    r = sc.get("4", {}).get("rows", {}).get("sluice")
    if r:
        row("4: split follows each step", f"worst step off by {r['worst_step_dev_pp']:.1f} pp", r["split_follows"])
    r = sc.get("3", {}).get("rows", {}).get("sluice")
    if r:
        row("3: observed split 90/10", f"{r['green_share']['median']:.2f} % green", r.get("split_ok", False))
    r = sc.get("6", {}).get("rows", {}).get("sluice")
    if r and r["p99_ms"] is not None:
        row("6: propagation p99 < 10 ms", f"p99 {r['p99_ms']:.1f} ms (p50 {r['p50_ms']:.1f} ms)", r["p99_ms"] < 10)
    r = sc.get("7", {}).get("rows", {}).get("sluice")
    if r:
        row("7: idle < 15 MB", f"{r['rss_idle_kb'] / 1024:.1f} MB", r["rss_idle_kb"] < 15 * 1024)
        row("7: 10,000 routes < 40 MB", f"{r['rss_10k_kb'] / 1024:.1f} MB", r["rss_10k_kb"] < 40 * 1024)
        row("7: < 10 kB per idle connection", f"{r['kb_per_conn']:.1f} kB", r["kb_per_conn"] < 10)
    return "\n".join(out) + "\n"


def chart(res: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sc = res["scenarios"]
    labels = {"1": "1 keep-alive", "2": "2 10k routes", "3": "3 split 90/10", "5": "5 churn"}
    colors = {"sluice": "#d62728", "nginx": "#2ca02c", "haproxy": "#1f77b4", "caddy": "#9467bd"}
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    present = [k for k in labels if k in sc]
    proxies = [p for p in PROXY_ORDER if any(p in sc[k]["rows"] for k in present)]

    def direct(k):
        return next((v for n, v in sc[k]["rows"].items() if n.startswith("direct")), None)

    for ax, metric, title in ((axes[0][0], "rps", "Requests/s (median, min–max)"),
                              (axes[0][1], "p99", "p99 latency, ms (median, min–max)")):
        width = 0.8 / max(1, len(proxies))
        for i, p in enumerate(proxies):
            xs, ys, lo, hi = [], [], [], []
            for j, k in enumerate(present):
                r = sc[k]["rows"].get(p)
                if not r:
                    continue
                s = r[metric]
                xs.append(j + (i - (len(proxies) - 1) / 2) * width)
                ys.append(s["median"])
                lo.append(s["median"] - s["min"])
                hi.append(s["max"] - s["median"])
            ax.bar(xs, ys, width, yerr=[lo, hi], label=p, color=colors.get(p), capsize=2)
        if metric == "rps":
            for j, k in enumerate(present):
                d = direct(k)
                if d:
                    ax.hlines(d["rps"]["median"], j - 0.45, j + 0.45, colors="k", linestyles="dashed",
                              label="direct to backend" if j == 0 else None)
        ax.set_xticks(range(len(present)), [labels[k] for k in present])
        if metric == "p99":
            ax.set_yscale("log")
            title = title.replace("ms", "ms, log scale")
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    ax = axes[1][0]
    if "6" in sc:
        rows = sc["6"]["rows"]
        names = [n for n in PROXY_ORDER if n in rows]
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [rows[n]["p50_ms"] or 0 for n in names], 0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [rows[n]["p99_ms"] or 0 for n in names], 0.4, label="p99")
        ax.axhline(10, color="r", linestyle=":", label="target p99 10 ms")
        ax.set_xticks(list(x), names)
        ax.set_yscale("log")
        ax.set_title(f"6 propagation at {sc['6']['routes']:,} routes, ms (log)")
        ax.legend(fontsize=8)
    else:
        ax.axis("off")
    ax = axes[1][1]
    if "7" in sc:
        rows = sc["7"]["rows"]
        names = [n for n in PROXY_ORDER if n in rows]
        x = range(len(names))
        ax.bar([i - 0.27 for i in x], [rows[n]["rss_idle_kb"] / 1024 for n in names], 0.27, label="idle MB")
        ax.bar([i for i in x], [rows[n]["rss_10k_kb"] / 1024 for n in names], 0.27, label="10k routes MB")
        ax.bar([i + 0.27 for i in x], [rows[n]["kb_per_conn"] for n in names], 0.27, label="kB / idle conn")
        ax.set_xticks(list(x), names)
        ax.set_title("7 memory (RSS)")
        ax.legend(fontsize=8)
    else:
        ax.axis("off")
    m = res["machine"]
    fig.suptitle(f"Sluice load tests {res['started'][:16]} UTC, commit {m['commit']}, {m['cores']} cores, "
                 f"load {m['loadavg_before'][0]:.2f}→{m['loadavg_after'][0]:.2f}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write(res: dict, out: Path, stamp: str) -> list[Path]:
    paths = []
    png = out / f"{stamp}.png"
    have_png = chart(res, png)
    if have_png:
        paths.append(png)
    md = markdown(res, png.name if have_png else None)
    if not have_png:
        md = md.replace("## Machine", "_Chart skipped: matplotlib is not installed "
                        "(`python3 -m pip install matplotlib`)._\n\n## Machine", 1)
    (out / f"{stamp}.md").write_text(md)
    (out / f"{stamp}.json").write_text(json.dumps(res, indent=1, default=str))
    paths += [out / f"{stamp}.md", out / f"{stamp}.json"]
    # latest.* : the copy the README links to.
    (out / "latest.md").write_text(md.replace(f"]({png.name})", "](latest.png)"))
    shutil.copyfile(out / f"{stamp}.json", out / "latest.json")
    if have_png:
        shutil.copyfile(png, out / "latest.png")
    paths += [out / "latest.md"]
    return paths


if __name__ == "__main__":
    # Re-render a run's markdown and chart from its JSON:
    #   python3 loadtests/report.py loadtests/results/<stamp>.json [--latest]
    import sys

    src = Path(sys.argv[1])
    res = json.loads(src.read_text())
    out, stamp = src.parent, src.stem
    png = out / f"{stamp}.png"
    have = chart(res, png)
    md = markdown(res, png.name if have else None)
    (out / f"{stamp}.md").write_text(md)
    if "--latest" in sys.argv[2:]:
        (out / "latest.md").write_text(md.replace(f"]({png.name})", "](latest.png)"))
        if have:
            shutil.copyfile(png, out / "latest.png")
    print(f"wrote {out / (stamp + '.md')}" + (f" and {png}" if have else ""))
