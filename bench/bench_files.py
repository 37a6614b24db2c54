"""File write/read throughput into and out of a session (1 MB and 100 MB), over HTTP and embedded.

Our SDK's ``session.file.write(path, bytes)`` / ``read(path, format="bytes")`` (16 MiB chunks through the
``write_file`` / ``read_file`` tools, base64 on the wire), against a real ``agbox serve`` and embedded.
Baseline, measured in the same run: writing and reading the same bytes to a local temp file on the host
(``open().write`` + ``fsync``, then ``read``), i.e. what the machine's own file I/O does with no sandbox,
agent or wire. Each figure checks the bytes (sha256) so a fast wrong answer cannot pass.

Run alone: ``python bench/bench_files.py [--quick]``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as B

FAMILY = "files"
SIZES = {"1MB": 1024 * 1024, "100MB": 100 * 1024 * 1024}


def _host_baseline(data: bytes, repeats: int) -> tuple[float, float]:
    """(write MB/s, read MB/s) of a plain local temp file, best of ``repeats``."""
    best_w = best_r = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "blob")
        for _ in range(repeats):
            start = time.perf_counter()
            with open(path, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            best_w = max(best_w, len(data) / (time.perf_counter() - start) / 1e6)
            start = time.perf_counter()
            with open(path, "rb") as handle:
                back = handle.read()
            best_r = max(best_r, len(data) / (time.perf_counter() - start) / 1e6)
            assert back == data
    return best_w, best_r


def _session_rates(session: Any, data: bytes, repeats: int) -> tuple[float, float]:
    """(write MB/s, read MB/s) through the session's file tools, best of ``repeats``, bytes checked."""
    digest = hashlib.sha256(data).hexdigest()
    best_w = best_r = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        written = session.file.write("/tmp/bench.bin", data)
        elapsed = time.perf_counter() - start
        if not written.success:
            raise RuntimeError(f"write failed: {written.error_message}")
        best_w = max(best_w, len(data) / elapsed / 1e6)
        start = time.perf_counter()
        read = session.file.read("/tmp/bench.bin", format="bytes")
        elapsed = time.perf_counter() - start
        if not read.success or hashlib.sha256(read.content).hexdigest() != digest:
            raise RuntimeError(f"read failed or bytes differ: {read.error_message}")
        best_r = max(best_r, len(data) / elapsed / 1e6)
    return best_w, best_r


def _rows(mode: str, session: Any, quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for label, size in SIZES.items():
        if quick and size > 8 * 1024 * 1024:
            size = 8 * 1024 * 1024
            label = "8MB (quick)"
        data = os.urandom(size)
        repeats = 2 if size > 8 * 1024 * 1024 else 5
        host_w, host_r = _host_baseline(data, repeats)
        write, read = _session_rates(session, data, repeats)
        for what, value, base in (("write", write, host_w), ("read", read, host_r)):
            key = f"files.{what}_{label.split()[0]}_{mode.split()[-1].lower()}"
            rows.append(B.row(FAMILY, f"{what} {label}, our SDK {mode}", key=key,
                              unit="MB/s", value=value, baseline=f"host temp file {what}", baseline_value=base,
                              higher_is_better=True,
                              note="session.file.write(bytes) / read(format='bytes'); best of "
                                   f"{repeats}; sha256 checked"))
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    from agbox import AGB, CreateSessionParams

    rows: list[dict[str, Any]] = []
    with B.temp_root("/tmp/agbox-bench-files-") as root:
        B.say("files over HTTP")
        with B.server("/tmp/agbox-bench-files-http-") as srv:
            agb = srv.sdk()
            session = agb.create(CreateSessionParams(image_id="agb-code-space-1")).session
            try:
                rows += _rows("over HTTP", session, quick)
            finally:
                session.delete()
                agb.close()
        B.say("files embedded")
        agb = AGB(data_dir=root / "embedded")
        session = agb.create(CreateSessionParams(image_id="agb-code-space-1")).session
        try:
            rows += _rows("embedded", session, quick)
        finally:
            session.delete()
            agb.close()
    return rows


if __name__ == "__main__":
    for result in run("--quick" in sys.argv):
        print(result)
