"""Peer: ``docker run --rm IMAGE true`` and ``docker exec CONTAINER true``, where a Docker daemon can be had.

Uses a daemon that already answers ``docker info``; failing that, starts ``dockerd`` (with a private
data root under /tmp, no iptables, no bridge) if the binary exists, and stops it afterwards. The image
must already be present (this machine reaches no image registry): the first local image among
``AGBOX_BENCH_DOCKER_IMAGE``, debian, ubuntu, busybox, alpine is used. When none of this is possible
the family reports "not available" with the reason, as one row without figures.

Baselines: bare ``bwrap ... /bin/true`` for ``docker run``, ``subprocess.run(["true"])`` for ``docker exec``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import benchlib as B

FAMILY = "peer_docker"
CANDIDATES = ("debian:bookworm-slim", "debian:bookworm", "debian", "ubuntu", "busybox", "alpine")


def _docker(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _answers(env: dict[str, str] | None = None) -> bool:
    try:
        return _docker("info", "--format", "{{.ServerVersion}}", timeout=10, env=env).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def _daemon() -> Iterator[dict[str, str]]:
    """Yields the environment for the docker CLI; raises RuntimeError("not available: ...")."""
    if shutil.which("docker") is None:
        raise RuntimeError("not available: no docker CLI installed")
    if _answers():
        yield {}
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise RuntimeError("not available: no Docker daemon answers and there is no dockerd binary to start "
                           "(only the docker CLI is installed here)")
    root = tempfile.mkdtemp(prefix="agbox-bench-docker-")
    sock = f"{root}/docker.sock"
    env = {"DOCKER_HOST": f"unix://{sock}"}
    with open(f"{root}/dockerd.log", "wb") as log:
        proc = subprocess.Popen([dockerd, "--data-root", f"{root}/data", "--exec-root", f"{root}/exec",
                                 "--pidfile", f"{root}/docker.pid", "--host", env["DOCKER_HOST"],
                                 "--iptables=false", "--ip-forward=false", "--bridge=none"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not _answers(env):
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(f"{root}/dockerd.log", errors="replace") as handle:
                    tail = handle.read()[-300:].strip()
                raise RuntimeError(f"not available: dockerd could not be started ({tail or 'no output'})")
            time.sleep(0.2)
        yield env
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


def _image(env: dict[str, str]) -> str:
    wanted = [os.environ.get("AGBOX_BENCH_DOCKER_IMAGE", ""), *CANDIDATES]
    for name in filter(None, wanted):
        if _docker("image", "inspect", name, timeout=20, env=env).returncode == 0:
            return name
    raise RuntimeError("not available: the daemon has none of the images "
                       f"{', '.join(CANDIDATES)} and no registry is reachable to pull one")


def run(quick: bool) -> list[dict[str, Any]]:
    n = B.samples(quick, 30, 5)
    try:
        with _daemon() as env:
            image = _image(env)
            bwrap = B.measure_bwrap_true(max(n, 20))
            sub = B.measure_subprocess_true(max(n, 20))

            def docker_ok(*args: str) -> None:
                done = _docker(*args, env=env)
                if done.returncode != 0:
                    raise RuntimeError(f"docker {args[0]} failed: {done.stderr[-300:]}")

            rows = [B.row(FAMILY, f"docker run --rm --network none {image} true",
                          B.time_calls(lambda: docker_ok("run", "--rm", "--network", "none", image, "true"), n, 1),
                          key="peer.docker_run", baseline=B.BWRAP_NAME, baseline_s=bwrap)]
            name = f"agbox-bench-{os.getpid()}"
            docker_ok("run", "-d", "--rm", "--network", "none", "--name", name, image, "sleep", "3600")
            try:
                rows.append(B.row(FAMILY, f"docker exec {name} true",
                                  B.time_calls(lambda: docker_ok("exec", name, "true"), n, 1),
                                  key="peer.docker_exec", baseline=B.SUBPROCESS_NAME, baseline_s=sub))
            finally:
                _docker("rm", "-f", name, env=env)
            return rows
    except RuntimeError as exc:
        if not str(exc).startswith("not available"):
            raise
        return [B.row(FAMILY, "docker run / docker exec", key="peer.docker", note=str(exc))]
