"""The computer-use desktop: time to a ready desktop, screenshot latency, input to a changed screen, memory.

Everything through the unmodified official SDK against a real ``agbox serve`` on the
``agb-computer-use-ubuntu-2204`` image (Xvfb 1920x1080x24 + openbox inside each sandbox):

- desktop ready: ``create`` until the first ``beta_take_screenshot`` returns a PNG, with the warm pool off
  (sandbox, X server and window manager started on demand) and on (the desktop was started in the pool).
  Baseline: the same Xvfb + openbox started by hand on the host, until the window manager is up and one
  capture is taken.
- screenshot: ``beta_take_screenshot("png")`` of a 1920x1080 screen, unchanged between calls and with a
  character typed into a terminal before each call; JPEG too. Baseline: the capture + PNG encoding alone,
  in this process, on the host's own Xvfb of the same size (no sandbox, agent, wire or base64).
- input to screen changed: ``input_text`` of one character into a terminal, then screenshots until the
  image differs.
- idle memory: the sandbox cgroup's memory of a desktop session after it is ready (``get_metrics``).
- desktops alive at once: that many desktop sessions created one after another, then every one must answer a
  screenshot; reported with the sum of their cgroup memory.

Run alone: ``python bench/bench_desktop.py [--quick]``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as B

FAMILY = "desktop"
IMAGE = "agb-computer-use-ubuntu-2204"
AGENT_DIR = Path(__file__).resolve().parent.parent / "src" / "agbox" / "agent"


def _shot(session: Any) -> bytes:
    shot = session.computer.screen.beta_take_screenshot("png")
    if not shot.success or not shot.data.startswith(b"\x89PNG") or (shot.width, shot.height) != (1920, 1080):
        raise RuntimeError(f"screenshot failed: {shot}")
    return bytes(shot.data)


def _ready_samples(srv: B.Server, n: int) -> list[float]:
    from agb.session_params import CreateSessionParams

    official = srv.official()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        created = official.create(CreateSessionParams(image_id=IMAGE))
        if not created.success:
            raise RuntimeError(created.error_message)
        _shot(created.session)
        samples.append(time.perf_counter() - start)
        official.delete(created.session)
        time.sleep(2)  # let the pool refill (when on) before the next create
    return samples


@contextlib.contextmanager
def _host_desktop(display: str) -> Iterator[None]:
    """Xvfb + openbox by hand on the host (the baseline), ended afterwards."""
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "1920x1080x24", "-nolisten", "tcp", "-noreset",
                             "-displayfd", str(write_fd)], pass_fds=(write_fd,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(write_fd)
    wm = None
    try:
        with os.fdopen(read_fd, "rb") as ready:
            ready.readline()
        wm = subprocess.Popen(["openbox", "--sm-disable"], env={**os.environ, "DISPLAY": display},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield
    finally:
        for proc in (wm, xvfb):
            if proc is not None:
                proc.kill()
                proc.wait()


def _host_ready_samples(n: int) -> tuple[list[float], list[float]]:
    """(start to ready + one capture, capture + PNG encode of an unchanged screen) on the host."""
    sys.path.insert(0, str(AGENT_DIR))
    import ops_desktop
    import x11

    ready, shots = [], []
    for i in range(n):
        display = f":{90 + i % 5}"
        start = time.perf_counter()
        with _host_desktop(display):
            while True:
                with contextlib.suppress(x11.XError), x11.Display(display) as conn:
                    if conn.property(conn.root, "_NET_CLIENT_LIST") is not None:
                        break
                time.sleep(0.005)
            encoder = ops_desktop.PngEncoder()
            with x11.Display(display) as conn:
                encoder.encode(*conn.capture())
            ready.append(time.perf_counter() - start)
            for _ in range(5):
                began = time.perf_counter()
                with x11.Display(display) as conn:
                    encoder.encode(*conn.capture())
                shots.append(time.perf_counter() - began)
    return ready, shots


def _alive_at_once(srv: B.Server, count: int) -> tuple[int, float, float]:
    """(desktops that answered a screenshot, their summed cgroup memory in MiB, seconds to create them all)."""
    from agb.session_params import CreateSessionParams

    official = srv.official()
    sessions = []
    start = time.perf_counter()
    try:
        for _ in range(count):
            created = official.create(CreateSessionParams(image_id=IMAGE))
            if not created.success:
                break
            sessions.append(created.session)
        elapsed = time.perf_counter() - start
        alive = 0
        memory = 0.0
        for session in sessions:
            with contextlib.suppress(RuntimeError):
                _shot(session)
                alive += 1
            metrics = session.get_metrics()
            if metrics.success:
                memory += metrics.metrics.mem_used / 2**20
        return alive, memory, elapsed
    finally:
        for session in sessions:
            with contextlib.suppress(Exception):
                official.delete(session)


def run(quick: bool) -> list[dict[str, Any]]:
    from agb.session_params import CreateSessionParams

    n_ready = B.samples(quick, 10, 3)
    n_shots = B.samples(quick, 40, 10)
    rows: list[dict[str, Any]] = []
    B.say("desktop: host baseline (Xvfb + openbox by hand)")
    host_ready, host_shots = _host_ready_samples(n_ready)

    B.say("desktop: ready, warm pool off")
    with B.server("/tmp/agbox-bench-desktop-cold-", env={"AGBOX_WARM_POOL": "0", "AGBOX_PREWARM_IMAGES": ""}) as srv:
        cold = _ready_samples(srv, n_ready)
    rows.append(B.row(FAMILY, "create to desktop ready (first screenshot), warm pool off", cold,
                      key="desktop.ready_cold", baseline="Xvfb + openbox by hand on the host, one capture",
                      baseline_s=host_ready, note="official SDK: create + beta_take_screenshot('png'), 1920x1080"))

    B.say("desktop: ready from the warm pool, screenshots, input, memory")
    with B.server("/tmp/agbox-bench-desktop-", env={"AGBOX_WARM_POOL": "2", "AGBOX_PREWARM_IMAGES": IMAGE}) as srv:
        time.sleep(3)  # the pool's two desktops start
        warm = _ready_samples(srv, n_ready)
        rows.append(B.row(FAMILY, "create to desktop ready (first screenshot), warm pool on", warm,
                          key="desktop.ready_warm", baseline="Xvfb + openbox by hand on the host, one capture",
                          baseline_s=host_ready, note="the desktop was started in the pool"))

        official = srv.official()
        session = official.create(CreateSessionParams(image_id=IMAGE)).session
        ours = srv.sdk()
        try:
            _shot(session)
            # Our SDK over HTTP (LinkUrl route) for the platform's own latency; the official SDK adds its own
            # per-call overhead on top (measured separately below).
            mine = ours.get(session.session_id).session
            static = B.time_calls(lambda: _shot(mine), n_shots)
            rows.append(B.row(FAMILY, "screenshot PNG 1920x1080, unchanged screen (our SDK, HTTP LinkUrl)", static,
                              key="desktop.screenshot_static", baseline="capture + PNG encode on the host's Xvfb",
                              baseline_s=host_shots, note="beta_take_screenshot('png'): agent capture, band-cached "
                                                           "PNG, base64 JSON, HTTP"))
            via_official = B.time_calls(lambda: _shot(session), n_shots)
            rows.append(B.row(FAMILY, "screenshot PNG 1920x1080, unchanged screen (official SDK, LinkUrl)",
                              via_official, key="desktop.screenshot_official",
                              baseline="capture + PNG encode on the host's Xvfb", baseline_s=host_shots,
                              note="the official SDK's own per-call overhead included"))
            jpeg = B.time_calls(lambda: mine.computer.screen.beta_take_screenshot("jpeg"), n_shots)
            rows.append(B.row(FAMILY, "screenshot JPEG 1920x1080 (our SDK, HTTP LinkUrl)", jpeg,
                              key="desktop.screenshot_jpeg", baseline="capture + PNG encode on the host's Xvfb",
                              baseline_s=host_shots, note="cjpeg -quality 85 in the sandbox"))

            started = session.computer.app.start("xterm -T bench -geometry 200x60+0+0")
            if not started.success:
                raise RuntimeError(started.error_message)
            time.sleep(1)

            def typed_then_shot() -> float:
                mine.computer.keyboard.type("x")
                start = time.perf_counter()
                _shot(mine)
                return time.perf_counter() - start

            changed = [typed_then_shot() for _ in range(n_shots)]
            rows.append(B.row(FAMILY, "screenshot PNG 1920x1080 after a keystroke changed the screen", changed,
                              key="desktop.screenshot_changed", baseline="capture + PNG encode on the host's Xvfb",
                              baseline_s=host_shots, note="only the changed bands are encoded again"))

            def input_to_change() -> float:
                before = _shot(mine)
                start = time.perf_counter()
                mine.computer.keyboard.type("y")
                while _shot(mine) == before:
                    if time.perf_counter() - start > 10:
                        raise RuntimeError("the screen did not change within 10 s")
                return time.perf_counter() - start

            reaction = [input_to_change() for _ in range(B.samples(quick, 20, 5))]
            rows.append(B.row(FAMILY, "input_text -> screenshot shows the change", reaction,
                              key="desktop.input_to_screen", note="one character into xterm, screenshots until "
                                                                  "the PNG differs"))
            session.computer.app.stop_by_pid(started.data[0].pid)
            time.sleep(1)
            metrics = session.get_metrics()
            rows.append(B.row(FAMILY, "idle desktop session memory (sandbox cgroup)", key="desktop.idle_memory",
                              unit="MiB", value=metrics.metrics.mem_used / 2**20,
                              note="Xvfb 1920x1080x24 + openbox + agent, after screenshots; get_metrics mem_used"))
        finally:
            official.delete(session)
            ours.close()

    count = B.samples(quick, 30, 5)
    B.say(f"desktop: {count} desktops alive at once")
    with B.server("/tmp/agbox-bench-desktop-many-", env={"AGBOX_WARM_POOL": "0", "AGBOX_PREWARM_IMAGES": ""}) as srv:
        alive, memory, elapsed = _alive_at_once(srv, count)
    rows.append(B.row(FAMILY, f"desktop sessions alive at once (of {count} created)", key="desktop.alive",
                      unit="sessions", value=alive, higher_is_better=True,
                      note=f"each answered a 1920x1080 screenshot; {memory:.0f} MiB cgroup memory in all "
                           f"({memory / max(alive, 1):.0f} MiB each); created in {elapsed:.1f} s"))
    return rows


if __name__ == "__main__":
    for result in run("--quick" in sys.argv):
        print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()})
