"""A script that never closes its embedded ``AGB`` still exits quietly and leaves no sandbox behind."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import wait_for

SCRIPT = """
from agbox import AGB, CreateSessionParams
agb = AGB()
agb.create()
session = agb.create(CreateSessionParams(image_id="agb-code-space-1")).session
print(session.command.execute("echo up").output.strip())
"""


def _processes_in(parent_name: str) -> list[int]:
    """Live processes in the platform's cgroups. A zombie is left out: it has ended and holds nothing
    but its pid until init (not this test, not agbox) reaps it, which a busy host may do late."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cgroup") as handle:
                inside = f"/{parent_name}/" in handle.read()
            with open(f"/proc/{entry.name}/stat") as handle:
                zombie = handle.read().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            continue
        if inside and not zombie:
            pids.append(int(entry.name))
    return pids


def test_unclosed_embedded_client_exits_quietly_and_cleans_up(tmp_path: Path) -> None:
    data_dir = (tmp_path / "data").resolve()
    env = {**os.environ, "AGBOX_DATA_DIR": str(data_dir)}
    for name in ("AGB_ENDPOINT", "AGB_API_KEY"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "up"
    assert done.stderr == ""

    tag = hashlib.sha256(str(data_dir).encode()).hexdigest()[:10]
    assert not Path("/run/agbox", tag).exists()
    # Sandbox processes end with the platform.
    wait_for(lambda: _processes_in(f"agbox-{tag}") == [], 10, what="the sandbox processes to be gone")


def test_agb_is_a_context_manager_with_close(tmp_path: Path) -> None:
    from agbox import AGB, CreateSessionParams

    with AGB(data_dir=tmp_path / "data") as agb:
        session = agb.create(CreateSessionParams(image_id="agb-code-space-1")).session
        assert session.command.execute("true").success
    # Closed: the platform is stopped, so the session's sandbox is gone and the client refuses work
    # with a clear error (instead of waiting on a stopped event loop).
    tag = hashlib.sha256(str((tmp_path / "data").resolve()).encode()).hexdigest()[:10]
    wait_for(lambda: _processes_in(f"agbox-{tag}") == [], 10, what="the sandbox processes to be gone")
    agb.close()  # closing twice is harmless
    refused = agb.create(CreateSessionParams(image_id="agb-code-space-1"))
    assert not refused.success and "closed" in refused.error_message
