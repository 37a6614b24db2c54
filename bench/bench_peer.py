"""Peers in the same run: agbox next to Docker (CLI and the Docker SDK for Python) and llm-sandbox.

The bench starts its own Docker daemon and imports an offline Python image (``peer_docker.py``), starts two
``agbox serve`` (default warm pool, and the pool off), and measures each comparison INTERLEAVED: every iteration
runs each way once, in alternating order, so all of them see the same machine load.

- create -> first command: agbox's create + first ``shell`` result (our SDK over HTTP, pool on / off) against
  ``docker run --rm --network none IMAGE true``, ``docker create`` + ``start`` + ``exec true`` (CLI), and the same
  through the Docker SDK (``containers.create`` + ``start`` + ``exec_run``). Teardown is not timed.
- command round trip in a live session / container: the ``shell`` tool (``true``) against ``docker exec C true``
  (CLI) and ``exec_run`` (SDK).
- ``print(1)``: a warm ``run_code`` against ``docker exec C python3 -c 'print(1)'`` (CLI, SDK) and
  llm-sandbox's ``session.run("print(1)")`` in an open session.
- code interpreter: create -> first ``run_code("print(1)")`` (pool on; it starts the session's IPython) against
  llm-sandbox's session open -> first ``run("print(1)")`` (Docker backend, the same private daemon through
  ``DOCKER_HOST``, the imported image, ``skip_environment_setup`` since a container without network cannot
  ``pip install --upgrade pip``).
- idle memory: PSS per idle session (all its processes, from its cgroup) against PSS per idle container
  (``sleep infinity`` plus its containerd shim); the daemon's own PSS (dockerd + containerd) is a single figure.

Each peer row's baseline is the agbox figure it was interleaved with, so its ratio is peer / agbox.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import resource
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import benchlib as B
import peer_docker as D

FAMILY = "peer"
PACE_S = 0.15  # pool on: start a create at most this often, so the warm pool has refilled
IDLE = 5       # idle sessions / containers of the memory figure

# Groups of the summary table and the plot, in order.
GROUPS = {
    "tti": "create -> first command",
    "rt": "command round trip (live session / container)",
    "print": "print(1) in a live session / container",
    "interp": "code interpreter: open -> first print(1)",
    "memory": "idle memory per session / container",
}


Counter = Callable[[], float]


def interleave(ops: list[tuple[str, Callable[[], float]]], n: int, warmup: int = 1,
               cpu: dict[str, Counter] | None = None) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run every op once per iteration (order reversed every other iteration); each returns its own elapsed
    seconds, so teardown stays out of the figure. Returns (samples per op, CPU seconds per op).

    ``cpu`` maps an op to a counter of the CPU its side uses (a server and its sandboxes, or the Docker daemon and
    its containers). All that a counter gains between two ops that read it is charged to the earlier one, so an
    op's teardown and asynchronous tail (a warm pool's refill, a container's removal) are part of its CPU."""
    out: dict[str, list[float]] = {name: [] for name, _ in ops}
    used: dict[str, list[float]] = {}
    open_windows: dict[int, tuple[Counter, str, float, bool]] = {}

    def charge(counter: Counter, now: float) -> None:
        previous = open_windows.get(id(counter))
        if previous is not None and previous[3]:
            used.setdefault(previous[1], []).append(now - previous[2])

    for i in range(warmup + n):
        for name, op in ops if i % 2 == 0 else ops[::-1]:
            counter = (cpu or {}).get(name)
            if counter is not None:
                now = counter()
                charge(counter, now)
                open_windows[id(counter)] = (counter, name, now, i >= warmup)
            elapsed = op()
            if i >= warmup:
                out[name].append(elapsed)
            time.sleep(0.003)
    time.sleep(0.3)  # the last ops' tails
    for counter, *_ in list(open_windows.values()):
        charge(counter, counter())
    return out, used


def server_cpu(srv: B.Server) -> Counter:
    """CPU seconds of an ``agbox serve``: its own threads (not its reaped children, whose CPU its sandboxes'
    cgroups already count) plus its sandboxes' cgroup parent (cpuacct, hierarchical, so deleted sandboxes stay
    counted)."""
    tick = os.sysconf("SC_CLK_TCK")
    own_group = next((line.split(":", 2)[2] for line in Path(f"/proc/{srv.pid}/cgroup").read_text().splitlines()
                      if "cpuacct" in line.split(":")[1].split(",")), "/")
    sandboxes = Path("/sys/fs/cgroup/cpuacct", own_group.lstrip("/"), f"agbox-{B.runtime_tag(srv.data_dir)}",
                     "cpuacct.usage")

    def read() -> float:
        fields = Path(f"/proc/{srv.pid}/stat").read_text().rsplit(")", 1)[1].split()
        usage = int(sandboxes.read_text()) if sandboxes.exists() else 0
        return (int(fields[11]) + int(fields[12])) / tick + usage / 1e9
    return read


def docker_cpu(d: D.Daemon) -> Counter | None:
    """CPU seconds of the Docker side: the daemon's cgroup tree (dockerd, containerd, shims, runc, containers)
    plus this process's reaped children (the docker CLI runs)."""
    if d.cpu_s() is None:
        return None

    def read() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (d.cpu_s() or 0.0) + children.ru_utime + children.ru_stime
    return read


def _created(result: Any) -> Any:
    if not result.success:
        raise RuntimeError(f"create failed: {result.error_message}")
    return result.session


def _check(ok: bool, what: str, detail: object) -> None:
    if not ok:
        raise RuntimeError(f"{what} failed: {str(detail)[:300]}")


class Paced:
    """Calls at most one per ``pace_s`` (a pool-on create waits until the pool has refilled)."""

    def __init__(self, pace_s: float) -> None:
        self.pace_s = pace_s
        self.last = 0.0

    def wait(self) -> None:
        time.sleep(max(self.pace_s - (time.monotonic() - self.last), 0.0))
        self.last = time.monotonic()


def _agbox_first(agb: Any, pace: Paced | None, first: Callable[[Any], None],
                 parts: list[tuple[float, float]] | None = None) -> Callable[[], float]:
    """create + ``first(session)``, timed; the session's deletion is not. ``parts`` gets (create, first) seconds."""
    from agbox import CreateSessionParams

    def op() -> float:
        if pace is not None:
            pace.wait()
        start = time.perf_counter()
        session = _created(agb.create(CreateSessionParams(image_id=B.IMAGE)))
        created = time.perf_counter()
        try:
            first(session)
            done = time.perf_counter()
            if parts is not None:
                parts.append((created - start, done - created))
            return done - start
        finally:
            session.delete()
    return op


def _split_note(parts: list[tuple[float, float]], first: str, second: str) -> str:
    return (f"{first} p50 {B.percentile([p[0] for p in parts], 50) * 1000:.1f} ms + {second} p50 "
            f"{B.percentile([p[1] for p in parts], 50) * 1000:.1f} ms")


def _shell_true(session: Any) -> None:
    result = session.command.execute("true")
    _check(result.success, "shell", result.error_message)


def _run_print(session: Any) -> None:
    result = session.code.run("print(1)", "python")
    _check(result.success and result.result.strip() == "1", "run_code print(1)", result.error_message or result)


def _timed(fn: Callable[[], Any]) -> Callable[[], float]:
    return B.timed(fn)


@contextlib.contextmanager
def _container(d: D.Daemon, client: Any) -> Iterator[tuple[str, Any]]:
    """A live idle container (``sleep infinity``, no network): (id, Docker SDK handle)."""
    cid = d.cli("run", "-d", "--pull", "never", "--network", "none", D.IMAGE, "sleep", "infinity").stdout.strip()
    try:
        yield cid, client.containers.get(cid)
    finally:
        d.cli("rm", "-f", cid, check=False)


def _llm_session(d: D.Daemon) -> Any:
    from llm_sandbox import SandboxSession

    # Like a user of llm-sandbox: its own Docker client from the environment (DOCKER_HOST is set).
    return SandboxSession(backend="docker", image=D.IMAGE, lang="python", keep_template=True,
                          skip_environment_setup=True, verbose=False,
                          # no network; SIGKILL on close: the image's /bin/sh as PID 1 ignores SIGTERM
                          runtime_configs={"network_mode": "none", "stop_signal": "SIGKILL"})


def _llm_run(session: Any) -> None:
    out = session.run("print(1)")
    _check(out.exit_code == 0 and out.stdout.strip() == "1", "llm-sandbox run print(1)", out)


def _cpu_fields(cpu: list[float] | None, note: str) -> dict[str, Any]:
    if not cpu:
        return {"note": note}
    cpu_ms = B.percentile(cpu, 50) * 1000
    return {"cpu_ms": cpu_ms, "note": (note + "; " if note else "") + f"CPU per op p50 {cpu_ms:.1f} ms (teardown included)"}


def _peer_row(rows: list[dict[str, Any]], group: str, who: str, name: str, key: str, samples: list[float],
              agbox_name: str, agbox_samples: list[float], note: str = "", cpu: list[float] | None = None) -> None:
    rows.append(B.row(FAMILY, name, samples, key=key, baseline=f"agbox: {agbox_name} (interleaved)",
                      baseline_s=agbox_samples, group=group, comparison=GROUPS[group], who=who,
                      **_cpu_fields(cpu, note)))


def _agbox_row(rows: list[dict[str, Any]], group: str, name: str, key: str, samples: list[float], note: str = "",
               cpu: list[float] | None = None) -> None:
    rows.append(B.row(FAMILY, f"agbox: {name}", samples, key=key, group=group, comparison=GROUPS[group],
                      who="agbox", **_cpu_fields(cpu, note)))


def _measure(d: D.Daemon, how: str, warm_srv: B.Server, cold_srv: B.Server, quick: bool) -> list[dict[str, Any]]:
    import docker

    from agbox import CreateSessionParams

    n_create = B.samples(quick, 10, 3)
    n_rt = B.samples(quick, 30, 8)
    n_print = B.samples(quick, 20, 6)
    n_interp = B.samples(quick, 6, 2)
    rows: list[dict[str, Any]] = []
    llm_missing = ""
    try:
        import llm_sandbox  # noqa: F401
    except ImportError as exc:
        llm_missing = f"not available: llm-sandbox is not installed ({exc}); `make bench` installs the bench extra"

    client = docker.DockerClient(base_url=d.host, version="auto", timeout=120)
    with contextlib.ExitStack() as stack:
        stack.callback(client.close)
        warm = warm_srv.sdk()
        stack.callback(warm.close)
        cold = cold_srv.sdk()
        stack.callback(cold.close)
        pool = f"pool on ({warm_srv.warm_pool} warm, creates >= {PACE_S * 1000:.0f} ms apart)"
        warm_cpu, cold_cpu, peer_cpu = server_cpu(warm_srv), server_cpu(cold_srv), docker_cpu(d)

        def counters(agbox: Counter, peers: list[str]) -> dict[str, Counter] | None:
            if peer_cpu is None:
                return None
            return {"agbox": agbox, **dict.fromkeys(peers, peer_cpu)}

        # ---- create -> first command
        def docker_run() -> None:
            d.cli("run", "--rm", "--pull", "never", "--network", "none", D.IMAGE, "true")

        def cli_create_start_exec() -> float:
            start = time.perf_counter()
            cid = d.cli("create", "--pull", "never", "--network", "none", D.IMAGE, "sleep", "infinity").stdout.strip()
            try:
                d.cli("start", cid)
                d.cli("exec", cid, "true")
                return time.perf_counter() - start
            finally:
                d.cli("rm", "-f", cid, check=False)

        def sdk_create_start_exec() -> float:
            start = time.perf_counter()
            container = client.containers.create(D.IMAGE, ["sleep", "infinity"], network_mode="none")
            try:
                container.start()
                result = container.exec_run(["true"])
                _check(result.exit_code == 0, "exec_run true", result)
                return time.perf_counter() - start
            finally:
                container.remove(force=True)

        B.say(f"create -> first command: agbox (pool on, off) vs docker run / create+start+exec, interleaved "
              f"(n={n_create})")
        warm_parts: list[tuple[float, float]] = []
        cold_parts: list[tuple[float, float]] = []
        tti_counters = counters(warm_cpu, ["docker_run", "cli_cse", "sdk_cse"])
        if tti_counters is not None:
            tti_counters["agbox_cold"] = cold_cpu
        tti, tti_cpu = interleave([("agbox", _agbox_first(warm, Paced(PACE_S), _shell_true, warm_parts)),
                                   ("agbox_cold", _agbox_first(cold, None, _shell_true, cold_parts)),
                                   ("docker_run", _timed(docker_run)),
                                   ("cli_cse", cli_create_start_exec),
                                   ("sdk_cse", sdk_create_start_exec)], n_create, cpu=tti_counters)
        agbox_tti = f"create -> first shell result, our SDK over HTTP, {pool}"
        cold_p50 = B.percentile(tti["agbox_cold"], 50)
        _agbox_row(rows, "tti", agbox_tti, "peer.agbox_tti", tti["agbox"],
                   note=_split_note(warm_parts, "create", "first command"), cpu=tti_cpu.get("agbox"))
        _agbox_row(rows, "tti", "create -> first shell result, our SDK over HTTP, pool off", "peer.agbox_tti_cold",
                   tti["agbox_cold"], note=_split_note(cold_parts, "create", "first command"),
                   cpu=tti_cpu.get("agbox_cold"))
        for key, who, name in (("docker_run", "Docker CLI", f"docker run --rm --network none {D.IMAGE} true"),
                               ("cli_cse", "Docker CLI", "docker create + start + exec true (CLI)"),
                               ("sdk_cse", "Docker SDK", "containers.create + start + exec_run(true) (Docker SDK)")):
            p50 = B.percentile(tti[key], 50)
            _peer_row(rows, "tti", who, name, f"peer.{key}", tti[key], agbox_tti, tti["agbox"],
                      note=f"{p50 / cold_p50:.1f}x agbox with the pool off", cpu=tti_cpu.get(key))

        # ---- live session / container: command round trip, print(1)
        session = _created(warm.create(CreateSessionParams(image_id=B.IMAGE)))
        stack.callback(session.delete)
        _run_print(session)  # starts the session's IPython worker: the warm figure below is a later run
        cid, container = stack.enter_context(_container(d, client))

        def sdk_exec(*argv: str) -> Callable[[], None]:
            def call() -> None:
                result = container.exec_run(list(argv))
                _check(result.exit_code == 0, "exec_run", result)
            return call

        B.say(f"command round trip: shell tool vs docker exec (CLI, SDK), interleaved (n={n_rt})")
        rt, rt_cpu = interleave([("agbox", _timed(lambda: _shell_true(session))),
                         ("cli", _timed(lambda: d.cli("exec", cid, "true"))),
                         ("sdk", _timed(sdk_exec("true")))], n_rt, warmup=3,
                                cpu=counters(warm_cpu, ["cli", "sdk"]))
        agbox_rt = "shell tool round trip (`true`), our SDK over HTTP"
        _agbox_row(rows, "rt", agbox_rt, "peer.agbox_shell", rt["agbox"], cpu=rt_cpu.get("agbox"))
        _peer_row(rows, "rt", "Docker CLI", "docker exec C true (CLI)", "peer.docker_exec_cli", rt["cli"], agbox_rt,
                  rt["agbox"], cpu=rt_cpu.get("cli"))
        _peer_row(rows, "rt", "Docker SDK", "exec_run(true) (Docker SDK)", "peer.docker_exec_sdk", rt["sdk"], agbox_rt,
                  rt["agbox"], cpu=rt_cpu.get("sdk"))

        print_ops: list[tuple[str, Callable[[], float]]] = [
            ("agbox", _timed(lambda: _run_print(session))),
            ("cli", _timed(lambda: _check(d.cli("exec", cid, "python3", "-c", "print(1)").stdout.strip() == "1",
                                          "docker exec python3", "wrong output"))),
            ("sdk", _timed(sdk_exec("python3", "-c", "print(1)")))]
        if not llm_missing:
            stack.enter_context(B.env_set(DOCKER_HOST=d.host))
            llm = _llm_session(d)
            llm.open()
            stack.callback(llm.close)
            _llm_run(llm)
            print_ops.append(("llm", _timed(lambda: _llm_run(llm))))
        B.say(f"print(1): warm run_code vs docker exec python3 (CLI, SDK) and llm-sandbox run, interleaved (n={n_print})")
        pr, pr_cpu = interleave(print_ops, n_print, warmup=2, cpu=counters(warm_cpu, ["cli", "sdk", "llm"]))
        agbox_print = "warm run_code print(1) (IPython), our SDK over HTTP"
        _agbox_row(rows, "print", agbox_print, "peer.agbox_run_code", pr["agbox"], cpu=pr_cpu.get("agbox"))
        _peer_row(rows, "print", "Docker CLI", "docker exec C python3 -c 'print(1)' (CLI)", "peer.docker_python_cli",
                  pr["cli"], agbox_print, pr["agbox"], note="a fresh interpreter per call", cpu=pr_cpu.get("cli"))
        _peer_row(rows, "print", "Docker SDK", "exec_run(python3 -c 'print(1)') (Docker SDK)", "peer.docker_python_sdk",
                  pr["sdk"], agbox_print, pr["agbox"], note="a fresh interpreter per call", cpu=pr_cpu.get("sdk"))
        if llm_missing:
            rows.append(B.row(FAMILY, "llm-sandbox session.run('print(1)')", key="peer.llm_run", note=llm_missing,
                              group="print", comparison=GROUPS["print"], who="llm-sandbox"))
        else:
            _peer_row(rows, "print", "llm-sandbox", "llm-sandbox session.run('print(1)') in an open session (Docker)",
                      "peer.llm_run", pr["llm"], agbox_print, pr["agbox"],
                      note="per run: mkdir -p + put_archive of the code file + exec `python FILE` (a fresh interpreter)",
                      cpu=pr_cpu.get("llm"))

        # ---- code interpreter: open -> first print(1)
        agbox_interp = f"create -> first run_code print(1) (starts IPython), our SDK over HTTP, {pool}"
        interp_parts: list[tuple[float, float]] = []
        llm_parts: list[tuple[float, float]] = []
        interp_ops: list[tuple[str, Callable[[], float]]] = [
            ("agbox", _agbox_first(warm, Paced(PACE_S), _run_print, interp_parts))]

        def llm_first() -> float:
            start = time.perf_counter()
            opened = _llm_session(d)
            opened.open()
            try:
                ready = time.perf_counter()
                _llm_run(opened)
                done = time.perf_counter()
                llm_parts.append((ready - start, done - ready))
                return done - start
            finally:
                opened.close()

        if not llm_missing:
            interp_ops.append(("llm", llm_first))
        B.say(f"code interpreter: create -> first run_code vs llm-sandbox open -> first run, interleaved (n={n_interp})")
        it, it_cpu = interleave(interp_ops, n_interp, cpu=counters(warm_cpu, ["llm"]))
        _agbox_row(rows, "interp", agbox_interp, "peer.agbox_first_run_code", it["agbox"],
                   note=_split_note(interp_parts, "create", "first run_code (IPython's start)"), cpu=it_cpu.get("agbox"))
        if llm_missing:
            rows.append(B.row(FAMILY, "llm-sandbox open -> first run('print(1)')", key="peer.llm_first",
                              note=llm_missing, group="interp", comparison=GROUPS["interp"], who="llm-sandbox"))
        else:
            _peer_row(rows, "interp", "llm-sandbox",
                      "llm-sandbox SandboxSession(...).open() -> first run('print(1)') (Docker backend)",
                      "peer.llm_first", it["llm"], agbox_interp, it["agbox"],
                      note=_split_note(llm_parts, "open (client from DOCKER_HOST, container create + start)",
                                       "first run") + "; close not timed", cpu=it_cpu.get("llm"))

        # ---- idle memory
        rows += _memory(d, client, cold_srv)
    for r in rows:
        if r["key"] == "peer.docker_run":
            r["setup"] = D.describe(d, how)
            r["note"] = (r["note"] + "; " if r["note"] else "") + r["setup"]
    return rows


def _memory(d: D.Daemon, client: Any, srv: B.Server) -> list[dict[str, Any]]:
    from agbox import CreateSessionParams

    B.say(f"idle memory: {IDLE} agbox sessions (pool off) and {IDLE} idle containers")
    agb = srv.sdk()
    sessions: list[Any] = []
    cids: list[str] = []
    try:
        for _ in range(IDLE):
            sessions.append(_created(agb.create(CreateSessionParams(image_id=B.IMAGE))))
            cids.append(d.cli("run", "-d", "--pull", "never", "--network", "none", D.IMAGE, "sleep",
                              "infinity").stdout.strip())
        B.wait_sandboxes(srv.data_dir, IDLE, 10)
        time.sleep(0.5)  # let both settle after their starts (page faults of the first seconds)
        live, _ = B.live_sandbox_pids(srv.data_dir)
        agbox_mib = [sum(B.pss_kib(p) for p in pids) / 1024 for pids in live.values()]
        docker_mib = [sum(B.pss_kib(p) for p in D.container_pids(d, cid)) / 1024 for cid in cids]
        daemon_mib = D.daemon_pss_mib(d)
    finally:
        for session in sessions:
            session.delete()
        for cid in cids:
            d.cli("rm", "-f", cid, check=False)
        agb.close()
    agbox_value = B.percentile(agbox_mib, 50)
    return [
        B.row(FAMILY, "agbox: idle session PSS (all its processes)", key="peer.agbox_idle", unit="MiB",
              value=agbox_value, note=f"median of {len(agbox_mib)} sessions, pool off; a session holds the in-sandbox "
              "Python agent that serves its tools", group="memory", comparison=GROUPS["memory"], who="agbox"),
        B.row(FAMILY, "Docker: idle container PSS (sleep infinity + its containerd shim)", key="peer.docker_idle",
              unit="MiB", value=B.percentile(docker_mib, 50), baseline="agbox: idle session PSS (all its processes)",
              baseline_value=agbox_value, note=f"median of {len(docker_mib)} containers; nothing in the container "
              f"serves commands: dockerd + containerd ({daemon_mib:.0f} MiB, shared) do", group="memory",
              comparison=GROUPS["memory"], who="Docker"),
        B.row(FAMILY, "Docker: the daemon itself (dockerd + containerd PSS, any number of containers)",
              key="peer.docker_daemon", unit="MiB", value=daemon_mib, group="memory", who="Docker"),
    ]


@contextlib.contextmanager
def _servers() -> Iterator[Callable[[], tuple[B.Server, B.Server]]]:
    """Start ``agbox serve`` with the default warm pool and with the pool off, in threads (so they come up while
    the image is imported); yields a call that waits for both. Both are stopped at the end."""
    with contextlib.ExitStack() as stack:
        roots = [stack.enter_context(B.temp_root("agbox-bench-peer-")) for _ in range(2)]
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(2))
        futures = [pool.submit(B.Server, roots[0] / "data"),
                   pool.submit(B.Server, roots[1] / "data", {"AGBOX_WARM_POOL": "0"})]

        def stop_all() -> None:
            started = [f.result() for f in futures if f.exception() is None]
            list(pool.map(lambda srv: srv.stop(), started))

        stack.callback(stop_all)  # runs before the pool shuts down and before the temp roots go
        yield lambda: (futures[0].result(), futures[1].result())


def run(quick: bool) -> list[dict[str, Any]]:
    try:
        with D.daemon() as d, _servers() as servers:  # the servers come up while the image is imported
            how = D.image(d)
            warm_srv, cold_srv = servers()
            return _measure(d, how, warm_srv, cold_srv, quick)
    except D.NotAvailable as exc:
        return [B.row(FAMILY, "agbox next to Docker and llm-sandbox", key="peer.docker", note=str(exc))]


# ---- plot --------------------------------------------------------------------------------------


COLORS = {"agbox": "#4c72b0", "Docker CLI": "#dd8452", "Docker SDK": "#c44e52", "Docker": "#dd8452",
          "llm-sandbox": "#55a868"}


def plot(rows: list[dict[str, Any]], path: Any, plt: Any) -> None:
    groups = [(g, [r for r in rows if r.get("group") == g and (r.get("p50_ms") is not None or r.get("value") is not None)])
              for g in GROUPS]
    groups = [(g, rs) for g, rs in groups if rs]
    if not groups:
        return
    fig, axes = plt.subplots(len(groups), 1, figsize=(12, 1.3 + sum(0.5 * len(rs) + 0.9 for _, rs in groups)),
                             squeeze=False, gridspec_kw={"height_ratios": [len(rs) + 1 for _, rs in groups]})
    for ax, (group, group_rows) in zip((a[0] for a in axes), groups, strict=True):
        memory = group == "memory"
        values = [float(r["value"] if memory else r["p50_ms"]) for r in group_rows]
        errors = [0.0 if memory else max(float(r.get("p95_ms", r["p50_ms"])) - float(r["p50_ms"]), 0.0)
                  for r in group_rows]
        y = list(range(len(group_rows)))
        ax.barh(y, values, xerr=[[0.0] * len(y), errors], capsize=3,
                color=[COLORS.get(r.get("who", ""), "#8172b2") for r in group_rows])
        for i, r in enumerate(group_rows):
            label = f" {values[i]:.1f} {'MiB' if memory else 'ms'}"
            if r.get("ratio"):
                label += f"  ({r['ratio']:.1f}x agbox)"
            ax.text(values[i] + errors[i], i, label, va="center", fontsize=8)
        ax.set_yticks(y, ["\n".join(textwrap.wrap(r["name"], 60)[:2]) for r in group_rows], fontsize=7.5)
        ax.invert_yaxis()
        ax.set_xlim(0, max(v + e for v, e in zip(values, errors, strict=True)) * 1.45)
        ax.set_title(f"{GROUPS[group]} ({'PSS, lower is better' if memory else 'p50 ms, whisker p95; lower is better'})",
                     fontsize=9.5)
    fig.suptitle("agbox next to Docker and llm-sandbox, same run, interleaved", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
