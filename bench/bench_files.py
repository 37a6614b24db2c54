"""Bulk file transfer into and out of a session over loopback HTTP, and the server's memory meanwhile.

A 1 GiB file (256 MiB with ``--quick``), sha256-checked after every transfer, moved:
- through our SDK's streaming calls ``session.file.upload_stream(path, ...)`` /
  ``download_stream(..., path)`` (raw ``PUT/GET /sessions/{id}/files`` bodies; the server writes and
  reads the sandbox's files itself, resolved inside its root, as its user);
- through the official SDK's ``session.file.upload/download`` (pre-signed context-object URLs plus a
  context sync, which is a host-side blob <-> sandbox file copy);
- and, for small files, our SDK's ``session.file.write(path, bytes)`` / ``read(path, format="bytes")``.
Baseline, in the same run: copying the same file on the host (``shutil.copyfile``, an in-kernel copy on
the file system of the data dir), i.e. the machine's disk speed with no HTTP, sandbox or SDK.

Server CPU: user + system seconds of the ``agbox serve`` process per transfer (less noisy than MB/s on
a shared machine: size / CPU time is what one core of the server could sustain).

Server memory: the peak RSS of the ``agbox serve`` process sampled every 10 ms during each transfer,
minus its RSS just before (a streaming server stays flat; one that buffered the file would grow by it).

Run alone: ``python bench/bench_files.py [--quick]``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as B

FAMILY = "files"
GIB = 1024 ** 3
MIB = 1024 ** 2


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssPeak:
    """Samples a process's RSS every 10 ms in a thread; ``growth`` = peak minus the RSS at start."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = _rss(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss(self.pid))

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.start


def _make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(16 * MIB)
    with open(path, "wb") as out:
        for offset in range(0, size, len(block)):
            piece = block[: min(len(block), size - offset)]
            # vary each block so the file does not repeat (cheap: one byte per block)
            piece = bytes([offset // len(block) % 256]) + piece[1:]
            out.write(piece)
            digest.update(piece)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(16 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _host_copy(source: Path, target: Path) -> float:
    """MB/s of an in-kernel copy on the host (page cache dropped for neither side: same as the transfers)."""
    target.unlink(missing_ok=True)
    start = time.perf_counter()
    shutil.copyfile(source, target)
    elapsed = time.perf_counter() - start
    size = source.stat().st_size
    target.unlink()
    return size / elapsed / 1e6


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CPU: dict[str, list[float]] = {}


def _timed(fn: Callable[[], Any], pid: int, kind: str = "") -> tuple[float, int, Any]:
    cpu = _cpu_s(pid)
    with RssPeak(pid) as rss:
        start = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - start
    CPU.setdefault(kind, []).append(_cpu_s(pid) - cpu)
    return elapsed, rss.growth, result


def _sh(session: Any, command: str) -> str:
    result = session.command.execute(command, timeout_ms=120_000)
    if not result.success or result.exit_code != 0:
        raise RuntimeError(f"{command}: {result.stderr or result.error_message}")
    return str(result.stdout)


def run(quick: bool) -> list[dict[str, Any]]:
    from agb.session_params import CreateSessionParams as OfficialParams

    from agbox import CreateSessionParams

    size = 256 * MIB if quick else GIB
    label = "256 MiB (quick)" if quick else "1 GiB"
    repeats = 1 if quick else 2
    rows: list[dict[str, Any]] = []
    with B.server("/tmp/agbox-bench-files-http-") as srv:
        work = srv.data_dir.parent / "work"
        work.mkdir()
        source, back = work / "source.bin", work / "back.bin"
        B.say(f"files: making a {label} file")
        digest = _make_file(source, size)
        agb = srv.sdk()
        official = srv.official()
        session = agb.create(CreateSessionParams(image_id="agb-code-space-1")).session
        official_session = official.create(OfficialParams(image_id="agb-code-space-1")).session
        host_rates: list[float] = []
        results: dict[str, list[tuple[float, int]]] = {k: [] for k in ("in", "out", "official_in", "official_out")}
        try:
            for round_index in range(repeats):
                B.say(f"files: round {round_index + 1}/{repeats} (host copy, our SDK, official SDK, interleaved)")
                host_rates.append(_host_copy(source, work / "copy.bin"))

                elapsed, grew, up = _timed(lambda: session.file.upload_stream(str(source), "/tmp/big.bin"), srv.pid, "in")
                if not up.success:
                    raise RuntimeError(f"upload_stream failed: {up.error_message}")
                if _sh(session, "sha256sum /tmp/big.bin").split()[0] != digest:
                    raise RuntimeError("the uploaded file differs")
                results["in"].append((size / elapsed / 1e6, grew))
                elapsed, grew, down = _timed(lambda: session.file.download_stream("/tmp/big.bin", str(back)), srv.pid, "out")
                if not down.success or _sha256(back) != digest:
                    raise RuntimeError(f"download_stream failed or bytes differ: {down.error_message}")
                results["out"].append((size / elapsed / 1e6, grew))
                back.unlink()

                remote = "/tmp/file_transfer/big.bin"
                elapsed, grew, up = _timed(lambda: official_session.file.upload(str(source), remote), srv.pid, "official_in")
                if not up.success:
                    raise RuntimeError(f"official upload failed: {up.error_message}")
                if _sh(official_session, f"sha256sum {remote}").split()[0] != digest:
                    raise RuntimeError("the officially uploaded file differs")
                results["official_in"].append((size / elapsed / 1e6, grew))
                elapsed, grew, down = _timed(lambda: official_session.file.download(remote, str(back)), srv.pid, "official_out")
                if not down.success or _sha256(back) != digest:
                    raise RuntimeError(f"official download failed or bytes differ: {down.error_message}")
                results["official_out"].append((size / elapsed / 1e6, grew))
                back.unlink()
                _sh(official_session, f"rm -f {remote}")

            small = os.urandom(MIB)
            small_rates: dict[str, list[float]] = {"write": [], "read": []}
            for _ in range(3 if quick else 10):
                start = time.perf_counter()
                if not session.file.write("/tmp/small.bin", small).success:
                    raise RuntimeError("write of 1 MiB failed")
                small_rates["write"].append(len(small) / (time.perf_counter() - start) / 1e6)
                start = time.perf_counter()
                read = session.file.read("/tmp/small.bin", format="bytes")
                if read.content != small:
                    raise RuntimeError("read of 1 MiB differs")
                small_rates["read"].append(len(small) / (time.perf_counter() - start) / 1e6)
        finally:
            session.delete()
            official.delete(official_session)
            agb.close()

    host = max(host_rates)
    what = {"in": ("into a session, our SDK upload_stream", "files.stream_in_http"),
            "out": ("out of a session, our SDK download_stream", "files.stream_out_http"),
            "official_in": ("into a session, official SDK file.upload (pre-signed URL + sync)", "files.official_in_http"),
            "official_out": ("out of a session, official SDK file.download (sync + pre-signed URL)",
                             "files.official_out_http")}
    for kind, (name, key) in what.items():
        best = max(rate for rate, _ in results[kind])
        peak = max(grew for _, grew in results[kind])
        rows.append(B.row(FAMILY, f"{label} {name}, over HTTP", key=key, unit="MB/s", value=best,
                          baseline="host file copy (shutil.copyfile)", baseline_value=host, higher_is_better=True,
                          note=f"best of {repeats}; sha256 checked; server RSS grew at most {peak / MIB:.1f} MiB "
                               f"during the transfer; server CPU {min(CPU[kind]):.2f} s per transfer (user+system)",
                          server_cpu_s=min(CPU[kind])))
        rows.append(B.row(FAMILY, f"server RSS growth during {label} {kind.replace('_', ' ')}", key=f"{key}_rss",
                          unit="MiB", value=peak / MIB, baseline="file size", baseline_value=size / MIB,
                          note="peak VmRSS of agbox serve (10 ms samples) minus its VmRSS before the transfer"))
    for kind in ("write", "read"):
        rows.append(B.row(FAMILY, f"{kind} 1 MiB bytes, our SDK over HTTP", key=f"files.{kind}_1MB_http", unit="MB/s",
                          value=max(small_rates[kind]), baseline="host file copy of the large file (MB/s)",
                          baseline_value=host, higher_is_better=True,
                          note=f"session.file.{kind}(bytes); best of {len(small_rates[kind])}; one request each"))
    return rows


if __name__ == "__main__":
    for result in run("--quick" in sys.argv):
        print(result)
