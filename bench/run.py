"""agbox benchmarks: one command that measures, prints a table, and writes docs/benchmarks.md with a PNG
plot per family under docs/bench/.

    make bench                      # the full run (about 10 minutes on 2 cores)
    make bench ARGS=--quick         # everything shortened: under 2 minutes, written to bench/results/quick/
    .venv/bin/python bench/run.py --only create,tool --samples 50

A family is a module ``bench/bench_<family>.py`` with ``def run(quick: bool) -> list[dict]``; every
such module is found and run, and one that fails is skipped with the reason printed (and recorded in
the report). See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform as host_platform
import re
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import benchlib as B  # noqa: E402

# Families run in this order; any other bench_*.py follows alphabetically.
ORDER = ["create", "tti", "tool", "mcp", "links", "files", "disk", "code", "browser", "network", "startup", "density",
         "load", "console", "terminal", "async", "peer"]

# (label, row key, field, comparison, threshold, unit). "field" may be p50_ms, value or delta_ms.
TARGETS: list[tuple[str, str, str, str, float, str]] = [
    ("create p50 <= 20 ms (our SDK, embedded)", "create.sdk_embedded", "p50_ms", "<=", 20, "ms"),
    ("create p50 <= 20 ms (our SDK over HTTP)", "create.sdk_http", "p50_ms", "<=", 20, "ms"),
    ("create p50 <= 20 ms (our SDK, embedded, warm pool off)", "create.sdk_embedded_cold", "p50_ms", "<=", 20, "ms"),
    ("create to first command p50 <= 30 ms (embedded)", "tti.embedded", "p50_ms", "<=", 30, "ms"),
    ("create to first command p50 <= 30 ms (official SDK, HTTP)", "tti.official_http", "p50_ms", "<=", 30, "ms"),
    ("create to first command p50 <= 30 ms (embedded, warm pool off)", "tti.embedded_cold", "p50_ms", "<=", 30, "ms"),
    ("shell round trip <= 2 ms above subprocess (embedded)", "tool.embedded", "delta_ms", "<=", 2, "ms"),
    ("shell round trip <= 2 ms above subprocess (POST /mcp)", "tool.mcp_http", "delta_ms", "<=", 2, "ms"),
    ("shell round trip <= 2 ms above subprocess (LinkUrl)", "tool.link_http", "delta_ms", "<=", 2, "ms"),
    ("shell round trip <= 2 ms above subprocess (session MCP endpoint)", "mcp_endpoint_shell_true", "delta_ms", "<=", 2,
     "ms"),
    (">= 100 creates/s sustained", "create.sustained", "value", ">=", 100, "creates/s"),
    ("100 creates/s offered for 60 s over HTTP (pool on): achieved >= 99/s", "create.offered_rate", "value", ">=", 99,
     "creates/s"),
    ("100 creates/s offered for 60 s over HTTP (pool on): create p99 < 100 ms", "create.offered", "p99_ms", "<=", 100,
     "ms"),
    ("Ray runtime adds <= 2 ms to a tool round trip (POST /mcp)", "cluster.tool_ray", "delta_ms", "<=", 2, "ms"),
    ("Ray runtime adds <= 5 ms to a pooled create", "cluster.create_ray", "delta_ms", "<=", 5, "ms"),
    (">= 1000 idle sessions alive (shell p50 <= 100 ms)", "density.max_sessions", "value", ">=", 1000, "sessions"),
    ("<= 10 MiB per idle session (PSS)", "density.pss", "value", "<=", 10, "MiB"),
    ("browser init to CDP ready p50 <= 400 ms", "browser.init_to_cdp", "p50_ms", "<=", 400, "ms"),
    ("desktop ready p50 <= 1000 ms (warm pool off)", "desktop.ready_cold", "p50_ms", "<=", 1000, "ms"),
    ("screenshot p50 <= 50 ms at 1920x1080", "desktop.screenshot_static", "p50_ms", "<=", 50, "ms"),
    (">= 30 desktop sessions alive at once", "desktop.alive", "value", ">=", 30, "sessions"),
    ("load: 0 errors, 50 concurrent clients (create, tools, link, release)", "load.errors", "value", "<=", 0,
     "errors"),
    ("load: create p99 < 1 s at 50 concurrent clients", "load.create", "p99_ms", "<=", 1000, "ms"),
    ("networking adds <= 2 ms to a cold create (warm pool off)", "network.create_cold", "delta_ms", "<=", 2, "ms"),
    ("networking adds nothing to a pooled create (<= 0.1 ms)", "network.create_pooled", "delta_ms", "<=", 0.1, "ms"),
    ("1 GiB file into a session >= 500 MB/s (our SDK, HTTP)", "files.stream_in_http", "value", ">=", 500, "MB/s"),
    ("1 GiB file out of a session >= 500 MB/s (our SDK, HTTP)", "files.stream_out_http", "value", ">=", 500, "MB/s"),
    ("1 GiB file into a session >= 500 MB/s (official SDK, HTTP)", "files.official_in_http", "value", ">=", 500,
     "MB/s"),
    ("1 GiB file out of a session >= 500 MB/s (official SDK, HTTP)", "files.official_out_http", "value", ">=", 500,
     "MB/s"),
    ("session TCP download >= 0.7x the host's", "network.throughput_down", "ratio", ">=", 0.7, "x"),
    ("session TCP upload >= 0.7x the host's", "network.throughput_up", "ratio", ">=", 0.7, "x"),
    ("console sessions page first contentful paint p50 <= 1800 ms (web.dev's 'good')", "console.fcp_sessions",
     "p50_ms", "<=", 1800, "ms"),
    ("terminal keystroke echo p99 <= 50 ms (typing feels immediate)", "terminal.echo", "p99_ms", "<=", 50, "ms"),
    ("terminal keystroke echo p50 <= the shell tool's round trip p50", "terminal.echo", "ratio", "<=", 1.0, "x"),
    ("AsyncAGB: 100 concurrent calls >= 2x the calls/s of 100 sequential sync calls", "async.rate", "ratio", ">=", 2,
     "x"),
]


# ---- discovery and running ----------------------------------------------------------------------


def family_of(path: Path) -> str:
    return path.stem[len("bench_"):]


def discover() -> list[Path]:
    paths = sorted(BENCH_DIR.glob("bench_*.py"))
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(paths, key=lambda p: (rank.get(family_of(p), len(ORDER)), p.name))


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def check_rows(rows: Any) -> list[dict[str, Any]]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "family" in r and "name" in r for r in rows):
        raise TypeError("run() must return a list of dicts with at least 'family' and 'name'")
    return rows


def run_family(path: Path, quick: bool) -> tuple[list[dict[str, Any]], str | None, float]:
    start = time.monotonic()
    try:
        module = load(path)
        run: Callable[[bool], Any] | None = getattr(module, "run", None)
        if run is None:
            raise AttributeError("no run(quick) function")
        rows = check_rows(run(quick))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a failing family is skipped, never fatal to the others
        reason = f"{type(exc).__name__}: {exc}".strip()
        traceback.print_exc(file=sys.stderr)
        return [], reason[:500], time.monotonic() - start
    return rows, None, time.monotonic() - start


# ---- formatting ------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}f}"
    return str(value)


def ratio_text(r: dict[str, Any]) -> str:
    ratio = r.get("ratio")
    return "-" if ratio is None else f"{ratio:.2f}x"


def value_text(r: dict[str, Any]) -> str:
    if r.get("value") is None:
        return "n/a (see note)" if r.get("p50_ms") is None else "-"
    return f"{fmt(r['value'])} {r.get('unit', '')}".strip()


def baseline_text(r: dict[str, Any]) -> str:
    if r.get("baseline_p50_ms") is not None:
        return f"{r.get('baseline', '')}: {fmt(r['baseline_p50_ms'])} ms"
    if r.get("baseline_value") is not None:
        return f"{r.get('baseline', '')}: {fmt(r['baseline_value'])}"
    return str(r.get("baseline") or "-")


COLUMNS = ["family", "figure", "p50 ms", "p95 ms", "p99 ms", "n", "value", "baseline (same run)", "ratio"]


def cells(r: dict[str, Any]) -> list[str]:
    return [r["family"], r["name"], fmt(r.get("p50_ms")), fmt(r.get("p95_ms")), fmt(r.get("p99_ms")),
            fmt(r.get("n")), value_text(r), baseline_text(r), ratio_text(r)]


def print_table(rows: list[dict[str, Any]]) -> None:
    table = [COLUMNS] + [cells(r) for r in rows]
    widths = [min(max(len(line[i]) for line in table), 62) for i in range(len(COLUMNS))]
    for index, line in enumerate(table):
        print("  ".join(cell[:62].ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))
    for r in rows:
        if r.get("p50_ms") is None and r.get("value") is None:
            print(f"  note on {r['family']} / {r['name']}: {r.get('note', '')}")


def md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def md_table(rows: list[dict[str, Any]]) -> list[str]:
    header = COLUMNS[1:]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join(md_escape(c) for c in cells(r)[1:]) + " |")
    notes = [r for r in rows if r.get("note")]
    if notes:
        out.append("")
        for r in notes:
            out.append(f"- *{md_escape(r['name'])}*: {r['note']}")
    return out


# ---- targets ---------------------------------------------------------------------------------------


def evaluate_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {r.get("key"): r for r in rows}
    out = []
    for label, key, field, op, threshold, unit in TARGETS:
        r = by_key.get(key)
        measured = r.get(field) if r else None
        if measured is None:
            out.append({"target": label, "measured": "not measured", "met": None, "key": key})
            continue
        met = measured <= threshold if op == "<=" else measured >= threshold
        shown = f"{fmt(float(measured))} {unit}"
        if field == "delta_ms" and r is not None:
            shown = f"+{fmt(float(measured))} ms ({fmt(r['p50_ms'])} vs {fmt(r['baseline_p50_ms'])} ms)"
        out.append({"target": label, "measured": shown, "met": met, "key": key, "value": measured})
    return out


def print_targets(targets: list[dict[str, Any]]) -> None:
    print("\nTargets (goals, not assertions):")
    for t in targets:
        verdict = "not measured" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        print(f"  [{verdict:>12}] {t['target']}: {t['measured']}")


# ---- plots -----------------------------------------------------------------------------------------


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "family"


def wrap(label: str, width: int = 58) -> str:
    return "\n".join(textwrap.wrap(label, width)[:3])


def plot_family(family: str, rows: list[dict[str, Any]], path: Path, plotter: Callable[..., Any] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if plotter is not None:
        plotter(rows, path, plt)
        return
    latency = [r for r in rows if r.get("p50_ms") is not None]
    values = [r for r in rows if r.get("p50_ms") is None and r.get("value") is not None]
    panels = (1 if latency else 0) + (1 if values else 0)
    if panels == 0:
        return
    height = max(2.5, 0.6 * (len(latency) + len(values)) + 1.8)
    fig, axes = plt.subplots(panels, 1, figsize=(12, height), squeeze=False,
                             gridspec_kw={"height_ratios": [max(len(latency), 1), max(len(values), 1)][:panels]})
    index = 0
    if latency:
        ax = axes[index][0]
        index += 1
        labels, p50, err, colors = [], [], [], []
        seen_baselines: dict[str, float] = {}
        for r in latency:
            labels.append(r["name"])
            p50.append(r["p50_ms"])
            err.append(max(r.get("p95_ms", r["p50_ms"]) - r["p50_ms"], 0))
            colors.append("#4c72b0")
            if r.get("baseline_p50_ms") is not None and r.get("baseline") not in seen_baselines:
                seen_baselines[r["baseline"]] = r["baseline_p50_ms"]
        y = list(range(len(labels)))
        ax.barh(y, p50, xerr=[[0] * len(err), err], color=colors, capsize=3, label="p50 (whisker: p95)")
        for i, r in enumerate(latency):
            if r.get("baseline_p50_ms") is not None:
                ax.plot([r["baseline_p50_ms"]] * 2, [i - 0.4, i + 0.4], color="#dd8452", linewidth=2.5)
            ax.text(max(r.get("p95_ms", r["p50_ms"]), r["p50_ms"]) * 1.02, i,
                    f" {fmt(r['p50_ms'])} ms" + (f"  ({ratio_text(r)})" if r.get("ratio") else ""),
                    va="center", fontsize=8)
        ax.plot([], [], color="#dd8452", linewidth=2.5, label="baseline p50 (same run)")
        ax.set_yticks(y, [wrap(label) for label in labels], fontsize=7.5)
        ax.invert_yaxis()
        ax.set_xlabel("milliseconds")
        top = max(max(p + e for p, e in zip(p50, err, strict=True)), 1e-3)
        low = min(p50)
        if top / max(low, 1e-3) > 30:
            ax.set_xscale("log")
        ax.legend(fontsize=8, loc="best")
        ax.set_title(f"{family}: latency (lower is better)")
    if values:
        ax = axes[index][0]
        labels = [wrap(f"{r['name']} [{r.get('unit', '')}]") for r in values]
        y = list(range(len(values)))
        measured = [float(r["value"]) for r in values]
        base = [float(r["baseline_value"]) if r.get("baseline_value") is not None else 0.0 for r in values]
        ax.barh([i - 0.2 for i in y], measured, height=0.4, color="#4c72b0", label="agbox")
        ax.barh([i + 0.2 for i in y], base, height=0.4, color="#dd8452", label="baseline (same run)")
        for i, r in enumerate(values):
            ax.text(measured[i], i - 0.2, f" {fmt(measured[i])}" + (f"  ({ratio_text(r)})" if r.get("ratio") else ""),
                    va="center", fontsize=8)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        positive = [v for v in measured + base if v > 0]
        if positive and max(positive) / min(positive) > 50:
            ax.set_xscale("log")
        ax.legend(fontsize=8, loc="best")
        ax.set_title(f"{family}: single figures")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the report ------------------------------------------------------------------------------------


def git_commit() -> str:
    with contextlib.suppress(Exception):
        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return done.stdout.strip() or "?"
    return "?"


def host_facts() -> dict[str, str]:
    mem = B.meminfo_kib()
    bwrap = "?"
    with contextlib.suppress(Exception):
        bwrap = subprocess.run([B.BWRAP, "--version"], capture_output=True, text=True).stdout.strip()
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "Kernel": host_platform.release(), "CPUs": f"{os.cpu_count()} x {cpu}",
        "Memory": f"{mem['MemTotal'] / 1024 / 1024:.1f} GiB "
                  f"(available at start {mem['MemAvailable'] / 1024 / 1024:.1f} GiB)",
        "Python": sys.version.split()[0], "Bubblewrap": bwrap, "agbox commit": git_commit(),
    }


def write_report(out_dir: Path, rows: list[dict[str, Any]], targets: list[dict[str, Any]],
                 skipped: dict[str, str], durations: dict[str, float], facts: dict[str, str], argv: list[str],
                 quick: bool, total_s: float, load_before: str, load_after: str,
                 plotters: dict[str, Callable[..., Any] | None]) -> Path:
    plots_dir = out_dir / "bench"
    plots_dir.mkdir(parents=True, exist_ok=True)
    families: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        families.setdefault(r["family"], []).append(r)
    images: dict[str, str] = {}
    for family, family_rows in families.items():
        path = plots_dir / f"{slug(family)}.png"
        try:
            plot_family(family, family_rows, path, plotters.get(family))
            if path.exists():
                images[family] = f"bench/{path.name}"
        except Exception as exc:
            print(f"plot of {family} failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "make bench" + (f" ARGS='{' '.join(argv)}'" if argv else "")
    lines = [
        "# agbox benchmarks",
        "",
        "Generated by `bench/run.py`; do not edit by hand (rerun it). How each figure is measured: "
        "[bench/README.md](../bench/README.md).",
        "",
        f"- **When**: {now}{' (QUICK mode: shortened sizes, indicative only)' if quick else ''}",
        f"- **Command**: `{command}` (took {total_s:.0f} s; per family: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in durations.items()) + ")",
        f"- **Load average** before / after: {load_before} / {load_after} (2 cores shared with other work: "
        "figures are noisy, so every one is given next to a baseline measured in the same run, as a ratio)",
    ]
    lines += [f"- **{k}**: {v}" for k, v in facts.items()]
    lines += ["", "## Targets", "", "Goals for the design, not test assertions.", "",
              "| target | measured | verdict |", "|---|---|---|"]
    for t in targets:
        verdict = "not measured" if t["met"] is None else ("**met**" if t["met"] else "**not met**")
        lines.append(f"| {md_escape(t['target'])} | {md_escape(t['measured'])} | {verdict} |")
    lines += ["", "Ratios: latency rows give p50 / baseline p50, single figures give value / baseline value. "
              "`-` means the figure does not apply.", ""]
    lines += peer_section(rows)
    for family, family_rows in families.items():
        lines += [f"## {family}", ""]
        lines += md_table(family_rows)
        if family in images:
            lines += ["", f"![{family}]({images[family]})"]
        lines.append("")
    lines += field_section(rows)
    if skipped:
        lines += ["## Skipped families", ""]
        lines += [f"- `bench_{name}.py`: {md_escape(reason)}" for name, reason in skipped.items()]
        lines.append("")
    analysis = build_analysis(rows, targets)
    if analysis:
        lines += ["## Where the time goes, and what the design would need", "", *analysis, ""]
    lines += ["## Reproduce", "", "```",
              "make bench                 # full run, rewrites this page and docs/bench/*.png",
              "make bench ARGS=--quick    # < 2 minutes, written to bench/results/quick/",
              ".venv/bin/python bench/run.py --only create,tool   # some families", "```", ""]
    report = out_dir / "benchmarks.md"
    report.write_text("\n".join(lines))
    return report


def peer_section(rows: list[dict[str, Any]]) -> list[str]:
    """The peers summary (bench_peer.py): each peer figure next to the agbox figure it was interleaved with."""
    peers = [r for r in rows if r.get("family") == "peer"]
    if not peers:
        return []
    lines = ["## agbox next to its peers (same run, interleaved)", ""]
    missing = [r for r in peers if r.get("p50_ms") is None and r.get("value") is None]
    compared = [r for r in peers if r.get("who") not in (None, "agbox") and r.get("ratio") is not None]
    if compared:
        lines += ["What a user would pick instead, measured on this machine in the same run: Docker (a private daemon, "
                  "Debian's docker.io, containers without network) through its CLI and its Python SDK, and llm-sandbox "
                  "(Docker backend) as a code interpreter. Each peer figure was taken interleaved with the agbox figure "
                  "beside it; the last column is peer / agbox (above 1: agbox is faster or smaller).", "",
                  "| comparison | agbox | agbox p50 | peer | peer p50 | peer / agbox | CPU per op, agbox / peer |",
                  "|---|---|---|---|---|---|---|"]
        agbox_rows = {r["name"]: r for r in peers if r.get("who") == "agbox"}
        for r in compared:
            own = agbox_rows.get(str(r["baseline"]).removesuffix(" (interleaved)"), {})
            cpu = "-"
            if own.get("cpu_ms") is not None and r.get("cpu_ms") is not None:
                cpu = f"{fmt(float(own['cpu_ms']))} / {fmt(float(r['cpu_ms']))} ms"
            if r.get("p50_ms") is not None:
                agbox = f"{fmt(r['baseline_p50_ms'])} ms"
                peer = f"{fmt(r['p50_ms'])} ms"
            else:
                agbox = f"{fmt(float(r['baseline_value']))} {r.get('unit', '')}"
                peer = f"{fmt(float(r['value']))} {r.get('unit', '')}"
            label = str(r["baseline"]).removeprefix("agbox: ").removesuffix(" (interleaved)")
            lines.append(f"| {md_escape(str(r.get('comparison', '')))} | {md_escape(label)} | {agbox} | "
                         f"{md_escape(r['name'])} | {peer} | **{r['ratio']:.1f}x** | {cpu} |")
        lines += ["", "CPU per op: the agbox server's threads and its sandboxes' cgroups, against the Docker daemon's "
                  "cgroup tree (dockerd, containerd, shims, runc, the containers) and the docker CLI processes, "
                  "charged to each op from its start to the next op on the same side (teardown and asynchronous "
                  "tails included; the client libraries' own CPU in the bench process is left out on both sides).",
                  ""]
        for r in compared:
            if r["ratio"] < 1:
                own = agbox_rows.get(str(r["baseline"]).removesuffix(" (interleaved)"), {})
                lines.append(f"- **agbox is behind** on {md_escape(str(r.get('comparison', '')))}: "
                             f"{md_escape(r['name'])} is {1 / r['ratio']:.2f}x lower. agbox: {own.get('note') or '-'}; "
                             f"peer: {r.get('note') or '-'}.")
        if any(r["ratio"] < 1 for r in compared):
            lines.append("")
        setups = [str(r["setup"]) for r in peers if r.get("setup")]
        if setups:
            lines += [f"Set-up: {md_escape(setups[0])}.", ""]
    for r in missing:
        lines.append(f"- {md_escape(r['name'])}: {r.get('note', '')}")
    if missing:
        lines.append("")
    return lines


# Published figures of hosted sandboxes (shared/reference/field-survey.md §4), for orientation only: other
# machines, other networks, their own methods. (label, figure, matching row key, field, source)
FIELD = [
    ("create to first command, median (Daytona; E2B 0.44 s; Modal 2.66 s)", "110 ms", "tti.official_http", "p50_ms",
     "computesdk.com benchmarks, 3rd-party, April 2026"),
    ("create, single (CubeSandbox, vendor, bare metal)", "60 ms", "create.sdk_http", "p50_ms",
     "TencentCloud/CubeSandbox README"),
    ("create under 50 concurrent, avg / P95 (CubeSandbox, vendor)", "67 ms / 90 ms", "create.concurrent", "p50_ms",
     "TencentCloud/CubeSandbox README"),
    ("memory overhead per sandbox (CubeSandbox, vendor)", "< 5 MB", "density.pss", "value",
     "TencentCloud/CubeSandbox README"),
]


def field_section(rows: list[dict[str, Any]]) -> list[str]:
    by_key = {r.get("key"): r for r in rows}
    lines = ["## Published figures of the field (not measured here)", "",
             "From `shared/reference/field-survey.md` §4: other machines, networks and methods, so for orientation "
             "only; the agbox column is this run's matching figure.", "",
             "| published | figure | agbox, this run | source |", "|---|---|---|---|"]
    for label, figure, key, field, source in FIELD:
        r = by_key.get(key)
        ours = "-"
        if r is not None and r.get(field) is not None:
            if field == "value":
                ours = f"{fmt(float(r[field]))} {r.get('unit', '')} ({r['name']})"
            else:
                ours = f"p50 {fmt(r['p50_ms'])} ms, p95 {fmt(r['p95_ms'])} ms ({r['name']})"
        lines.append(f"| {md_escape(label)} | {figure} | {md_escape(ours)} | {source} |")
    return [*lines, ""]


def build_analysis(rows: list[dict[str, Any]], targets: list[dict[str, Any]]) -> list[str]:
    """Numbers-backed notes on where the time goes and on each missed target, from the rows of this run."""
    by_key = {r.get("key"): r for r in rows}
    missed = {t["key"] for t in targets if t["met"] is False}

    def get(key: str, field: str = "p50_ms") -> float | None:
        r = by_key.get(key)
        value = None if r is None else r.get(field)
        return None if value is None else float(value)

    def ms(value: float | None) -> str:
        return "?" if value is None else f"{fmt(value)} ms"

    out: list[str] = []
    bwrap, unpriv = get("startup.bwrap"), get("startup.bwrap_unpriv")
    py_sandbox = get("startup.python_bwrap")
    agent, agent_pyc, sh_agent = get("startup.agent"), get("startup.agent_pyc"), get("startup.sh_agent")
    agent_cpu, sh_cpu = get("startup.agent", "cpu_ms"), get("startup.sh_agent", "cpu_ms")
    runtime = get("create.runtime")
    cold_service = get("create.platform_cold") if "create.platform_cold" in by_key else get("create.platform")
    cold_emb = get("create.sdk_embedded_cold") if "create.sdk_embedded_cold" in by_key else get("create.sdk_embedded")
    cold_http = get("create.sdk_http_cold") if "create.sdk_http_cold" in by_key else get("create.sdk_http")
    warm = "create.sdk_embedded_cold" in by_key

    if agent is not None:
        line = (f"- **A cold create is bounded by starting the in-sandbox Python agent.** In this run a bare bwrap "
                f"sandbox started in {ms(bwrap)} as root and {ms(unpriv)} as agbox starts it (fresh uid, user "
                f"namespace, seccomp); `python3 -I -S -c pass` inside that sandbox took {ms(py_sandbox)}, and the agbox "
                f"agent until its ready line {ms(agent)}")
        if agent_cpu is not None:
            line += f" ({fmt(agent_cpu)} ms of CPU)"
        line += (f", so the agent's own imports and set-up cost about {ms((agent or 0) - (py_sandbox or 0))} on top of "
                 "the interpreter. ")
        if runtime is not None and cold_service is not None:
            line += (f"With no started sandbox at hand, `LocalRuntime.create` (tmpfs root, cgroups, spawn, wait for the "
                     f"agent) took {ms(runtime)}, the service create {ms(cold_service)}, our SDK embedded {ms(cold_emb)} "
                     f"and over HTTP {ms(cold_http)}.")
        out.append(line)
        if sh_agent is not None:
            out.append(f"- **A lighter in-sandbox process**: a `/bin/sh` stand-in that prints a ready line in the same "
                       f"sandbox was ready in {ms(sh_agent)}"
                       + (f" and {fmt(sh_cpu)} ms of CPU" if sh_cpu is not None else "")
                       + f", against {ms(agent)} for the Python agent. A small compiled agent (shell, files, process "
                         "control) that starts Python only for `run_code` would bring a cold create to about "
                         f"{ms(max((cold_service or 0) - agent + sh_agent, 0.0))} (estimate: service create minus the "
                         "agent's start plus the stand-in's), and cut the CPU per start that bounds bursts and the "
                         "sustained rate (below).")
        if agent_pyc is not None:
            out.append(f"- **Precompiled, lazily loaded agent**: the runtime compiles its copy of the agent once when it "
                       f"builds the base and the op modules (files, code, archives) load on their first request: "
                       f"{ms(agent)} to ready, against {ms(agent_pyc)} for the same agent from source.")
    if warm:
        claim = get("create.overhead")
        conc, conc_base = get("create.concurrent"), get("create.concurrent", "baseline_p50_ms")
        line = (f"- **The warm pool** (started sandboxes handed over on create, refilled in the background) takes the "
                f"sandbox start off the request path: create {ms(get('create.sdk_embedded'))} embedded and "
                f"{ms(get('create.sdk_http'))} over HTTP with creates spaced so the pool has refilled, against "
                f"{ms(cold_emb)} / {ms(cold_http)} with it off; create to first command {ms(get('tti.embedded'))} "
                f"embedded against {ms(get('tti.embedded_cold'))} with it off. The service's own share of a create is "
                f"{ms(claim)} (its create minus the runtime create inside it). ")
        first_now, first_later, second = get("tti.first_now"), get("tti.first_later"), get("tti.second")
        if first_now is not None and first_later is not None and second is not None:
            line += (f"The first command right after a warm create took {ms(first_now)} over HTTP, against "
                     f"{ms(first_later)} when sent 100 ms later and {ms(second)} for the second command (the runtime "
                     "starts the refill 50 ms after the hand-over, so the first request does not compete with a "
                     "sandbox start). ")
        if conc is not None:
            burst = fmt(get("create.burst_rate", "value"))
            line += (f"A burst larger than the pool gets cold starts queued behind one another: {burst} "
                     f"creates/s and p50 {ms(conc)} per create with {B.OPTIONS.concurrency} at once (bare bwrap: "
                     f"{ms(conc_base)}). The pool hides start-up latency; it does not add capacity.")
        out.append(line)
    if "create.sustained" in missed:
        rate = get("create.sustained", "value")
        base = get("create.sustained", "baseline_value")
        sandbox_cpu, control_cpu = get("create.sandbox_cpu", "value"), get("create.control_cpu", "value")
        ceiling, spawn = get("create.cpu_ceiling", "value"), get("create.spawn")
        line = (f"- **Creates per second**: {fmt(rate)} sustained over HTTP, against {fmt(base)} bare bwrap launches "
                "per second with the same client threads.")
        if sandbox_cpu is not None and control_cpu is not None:
            cores = os.cpu_count() or 1
            line += (f" Each sandbox start costs {fmt(sandbox_cpu)} ms of CPU inside the sandbox (cgroup cpuacct: bwrap's "
                     f"set-up and the agent's start) and {fmt(control_cpu)} ms in the control plane, so {cores} cores "
                     f"cannot start more than {fmt(ceiling)} sandboxes/s even with nothing else running; 100/s on this "
                     f"machine needs under {fmt(cores * 1000 / 100)} ms of CPU per start in total, pool or not.")
        if spawn is not None:
            line += (f" Starts are serialized on the runtime's single spawner thread, which now only forks and execs "
                     f"({ms(spawn)} each: a vfork of `sh` + `setpriv` + bwrap; the wait for bwrap's set-up runs "
                     f"elsewhere), capping them at {fmt(1000 / spawn)}/s regardless of cores.")
            pre, pre_base = get("startup.preexec"), get("startup.preexec", "baseline_p50_ms")
            if pre is not None and pre_base is not None:
                line += (f" (For comparison, a Python `preexec_fn` spawn, which the runtime no longer uses, costs "
                         f"{ms(pre)} against {ms(pre_base)} for a plain `subprocess.run`: it forks the whole parent.)")
        if sh_cpu is not None and agent_cpu is not None:
            line += (f" The agent's start is most of the CPU ({fmt(agent_cpu)} ms against {fmt(sh_cpu)} ms for the "
                     "shell stand-in): a lighter agent is what raises the rate.")
        out.append(line)
    if "create.cpu.MainThread" in by_key:
        parts = [(r["name"].split(", ", 1)[1], float(r["value"])) for r in rows
                 if str(r.get("key", "")).startswith("create.cpu.")]
        sandbox_cpu = get("create.sandbox_cpu", "value")
        if sandbox_cpu is not None:
            parts.insert(0, ("inside the sandbox's cgroup (bwrap set-up, agent start)", sandbox_cpu))
        total = sum(v for _, v in parts)
        cores = os.cpu_count() or 1
        line = (f"- **CPU of one cold create + release** (pool off, per create): {fmt(total)} ms in all: "
                + "; ".join(f"{what} {fmt(v)} ms" for what, v in sorted(parts, key=lambda p: -p[1])) + ". "
                f"On {cores} cores that bounds starts at {fmt(cores * 1000 / total)}/s with nothing else running "
                "(the HTTP edge and the client come on top).")
        out.append(line)
    if "create.offered" in by_key:
        r = by_key["create.offered"]
        rate = get("create.offered_rate", "value")
        out.append(f"- **100 creates/s offered** (open loop, pool on, over HTTP): achieved {fmt(rate or 0)}/s, "
                   f"latency p50 {ms(get('create.offered'))}, p99 {ms(get('create.offered', 'p99_ms'))} (bare bwrap "
                   f"at the same offered rate: p50 {ms(get('create.offered', 'baseline_p50_ms'))}). {r.get('note', '')}.")
    if "density.pss" in by_key:
        pss, bare = get("density.pss", "value"), get("density.pss", "baseline_value")
        python_pss = get("density.pss_python", "value")
        reason = by_key.get("density.max_sessions", {}).get("note", "")
        line = (f"- **Density**: {fmt(pss)} MiB PSS per idle session against {fmt(bare)} MiB for a bare bwrap sandbox "
                f"running `sleep` and {fmt(python_pss)} MiB for bwrap running an idle bare `python3 -I -S`")
        if pss is not None and python_pss is not None:
            line += (f": {fmt(pss - python_pss)} MiB of each idle session is the agent's own state beyond a bare "
                     "interpreter (its core and the preloaded shell op; other op modules load on first use); a "
                     "compiled agent would shrink it further")
        line += ". The ramp " + reason
        out.append(line)
        grow, grow_base = get("density.create_last"), get("density.create_last", "baseline_p50_ms")
        bw, bw_base = get("density.bwrap_last", "value"), get("density.bwrap_last", "baseline_value")
        if grow is not None and grow_base is not None and bw is not None and bw_base is not None and grow > grow_base:
            out.append(f"- **Create slows down as sessions accumulate**: {ms(grow_base)} in the ramp's first step, "
                       f"{ms(grow)} in its last (4 creates at a time, so mostly cold starts); in the same steps a bare "
                       f"bwrap went from {ms(bw_base)} to {ms(bw)} ({by_key['density.bwrap_last'].get('note', '')}). "
                       "What grows is the machine's load of live processes and cgroups, and cold starts queue on the "
                       "runtime's single spawner thread.")
    tool_missed = missed & {"tool.embedded", "tool.mcp_http", "tool.link_http", "mcp_endpoint_shell_true"}
    if tool_missed:
        agent_only, embedded_rt = get("tool.agent"), get("tool.embedded")
        mcp_http, link_http, bash = get("tool.mcp_http"), get("tool.link_http"), get("tool.bash_baseline")
        line = (f"- **Tool round trip**: the agent channel alone (pipe to the agent, `bash -c true`, back) took "
                f"{ms(agent_only)}, our SDK embedded {ms(embedded_rt)}, `POST /mcp` {ms(mcp_http)} and the LinkUrl route "
                f"{ms(link_http)}. ")
        if mcp_http is not None and embedded_rt is not None:
            line += (f"HTTP (client, uvicorn, Starlette, JSON on both ends) adds about {ms(mcp_http - embedded_rt)} per "
                     "call over the embedded path. ")
        true_base = get("tool.bash_baseline", "baseline_p50_ms")
        if bash is not None and true_base is not None and bash > true_base:
            line += (f"The shell tool runs every command through bash: `bash -c true` took {ms(bash)} against "
                     f"{ms(true_base)} for `true` alone, so exec-ing commands without shell syntax directly would "
                     f"save about {ms(bash - true_base)}.")
        out.append(line)
    official = get("tool.official_http")
    if official is not None and get("tool.link_http") is not None:
        out.append(f"- **The official SDK's own cost**: its `shell` call took {ms(official)} against "
                   f"{ms(get('tool.link_http'))} for the same LinkUrl request from a kept-alive client, because it opens "
                   "a new `httpx.Client` (and TLS context) for every call; that is also most of its create-to-first-"
                   f"command time ({by_key.get('tti.official_http', {}).get('note', '')}).")
    return out


# ---- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="agbox benchmarks")
    parser.add_argument("--quick", action="store_true", help="shorten everything (whole run < 2 minutes)")
    parser.add_argument("--only", default="", help="comma-separated families to run (e.g. create,tool)")
    parser.add_argument("--skip", default="", help="comma-separated families to leave out")
    parser.add_argument("--samples", type=int, default=None, help="samples per latency row")
    parser.add_argument("--duration", type=float, default=None, help="seconds of the sustained create rate (30)")
    parser.add_argument("--concurrency", type=int, default=50, help="creates started at once in the burst (50)")
    parser.add_argument("--workers", type=int, default=8, help="client threads of the sustained create rate (8)")
    parser.add_argument("--density-cap", type=int, default=None, help="most idle sessions to try (2000; quick 100)")
    parser.add_argument("--density-step", type=int, default=50, help="sessions added per density step (50)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where benchmarks.md and bench/*.png go (default docs/, quick: bench/results/quick/)")
    parser.add_argument("--no-report", action="store_true", help="print the table only")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="measure nothing: write the report again from a saved run (bench/results/latest.json)")
    return parser.parse_args(argv)


def render(path: Path, out: Path | None) -> int:
    """Write the report of a saved run again (after a change to the report's layout, not to its figures)."""
    raw = json.loads(path.read_text())
    rows = raw["rows"]
    plotters: dict[str, Callable[..., Any] | None] = {}
    for bench in discover():
        with contextlib.suppress(Exception):
            module = load(bench)
            plot = getattr(module, "plot", None)
            for family in {r["family"] for r in rows if getattr(module, "FAMILY", None) == r["family"]}:
                plotters[family] = plot
    out_dir = out or (BENCH_DIR / "results" / "quick" if raw.get("quick") else REPO / "docs")
    report = write_report(out_dir, rows, evaluate_targets(rows), raw.get("skipped", {}), raw.get("durations", {}),
                          raw.get("facts", {}), raw.get("argv", []), bool(raw.get("quick")), float(raw.get("total_s", 0)),
                          raw.get("load_before", "?"), raw.get("load_after", "?"), plotters)
    print(f"wrote {report} from {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    B.OPTIONS.samples = args.samples
    B.OPTIONS.duration_s = args.duration
    B.OPTIONS.concurrency = args.concurrency
    B.OPTIONS.workers = args.workers
    B.OPTIONS.density_cap = args.density_cap
    B.OPTIONS.density_step = args.density_step
    if args.render is not None:
        return render(args.render, args.out)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    started = time.monotonic()
    load_before = B.loadavg()
    facts = host_facts()
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    durations: dict[str, float] = {}
    plotters: dict[str, Callable[..., Any] | None] = {}
    for path in discover():
        family = family_of(path)
        if (only and family not in only) or family in skip:
            continue
        print(f"== {family} ({'quick' if args.quick else 'full'})", flush=True)
        family_rows, reason, elapsed = run_family(path, args.quick)
        durations[family] = elapsed
        B.sweep_run_dirs()
        if reason is not None:
            print(f"!! skipping {family}: {reason}", flush=True)
            skipped[family] = reason
            continue
        module = sys.modules.get(path.stem)
        for r in family_rows:
            plotters.setdefault(r["family"], getattr(module, "plot", None))
        rows.extend(family_rows)
        print(f"   {len(family_rows)} rows in {elapsed:.1f} s", flush=True)
    total = time.monotonic() - started
    load_after = B.loadavg()

    print()
    print_table(rows)
    targets = evaluate_targets(rows)
    print_targets(targets)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    print(f"\ntotal {total:.0f} s")

    results_dir = BENCH_DIR / "results"
    results_dir.mkdir(exist_ok=True)
    raw = {"rows": rows, "targets": targets, "skipped": skipped, "durations": durations, "facts": facts,
           "quick": args.quick, "argv": argv, "total_s": total, "load_before": load_before, "load_after": load_after}
    (results_dir / ("latest-quick.json" if args.quick else "latest.json")).write_text(json.dumps(raw, indent=1,
                                                                                                 default=str))
    if not args.no_report:
        out_dir = args.out or (results_dir / "quick" if args.quick else REPO / "docs")
        report = write_report(out_dir, rows, targets, skipped, durations, facts, argv, args.quick, total,
                              load_before, load_after, plotters)
        print(f"wrote {report} and {out_dir / 'bench'}/*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
