"""Smoke test of the benchmarks: bench/run.py loads, one cheap family runs with tiny sizes, and the
report (table, targets, markdown, plot) is produced from its rows. The real figures come from
`make bench`; nothing here judges them."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _load_runner():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module
    spec.loader.exec_module(module)
    return module


def test_tool_family_quick_gives_numbers(tmp_path, capsys):
    runner = _load_runner()
    families = {runner.family_of(p): p for p in runner.discover()}
    assert {"create", "tti", "tool", "density", "startup", "peer"} <= set(families)

    import benchlib

    benchlib.OPTIONS.samples = 3
    benchlib.OPTIONS.verbose = False
    try:
        rows, reason, _ = runner.run_family(families["tool"], quick=True)
    finally:
        benchlib.OPTIONS.samples = None
        benchlib.OPTIONS.verbose = True
    assert reason is None, reason
    measured = {r["key"]: r for r in rows if r.get("p50_ms") is not None}
    for key in ("tool.subprocess", "tool.mcp_http", "tool.link_http", "tool.embedded", "tool.agent"):
        row = measured[key]
        assert row["n"] == 3
        assert all(math.isfinite(row[f]) and row[f] > 0 for f in ("p50_ms", "p95_ms", "p99_ms"))
        if key != "tool.subprocess":
            assert row["baseline_p50_ms"] > 0 and row["ratio"] > 0

    runner.print_table(rows)
    targets = runner.evaluate_targets(rows)
    assert any(t["key"] == "tool.mcp_http" and t["met"] is not None for t in targets)
    report = runner.write_report(tmp_path, rows, targets, {}, {"tool": 1.0}, {"Kernel": "x"}, ["--quick"], True,
                                 1.0, "0 0 0", "0 0 0", {})
    text = report.read_text()
    assert "| shell round trip <= 2 ms above subprocess (POST /mcp) |" in text
    assert (tmp_path / "bench" / "tool-round-trip.png").stat().st_size > 1000
