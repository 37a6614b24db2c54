"""`agbox serve --store postgresql://…` with the unmodified official SDK: sessions, tools, files, labels,
contexts, API keys made by the CLI, and a restart on the same database."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
from agb import AGB as OfficialAGB
from agb.config import Config
from agb.context_sync import ContextSync, SyncPolicy
from agb.session_params import CreateSessionParams

from tests.conftest import start_server, wait_for


def test_official_sdk_on_postgres_store(postgres: Any, tmp_path: Path) -> None:
    url = postgres.new_database()
    data_dir = tmp_path / "data"
    srv = start_server(data_dir, extra_args=["--store", url])
    try:
        agb = OfficialAGB(api_key=srv.api_key, cfg=Config(endpoint=srv.endpoint, timeout_ms=60000))
        context = agb.context.create("pg-ctx").context
        seed_url = agb.context.get_file_upload_url(context.id, "/home/user/data/seed.txt").url
        assert httpx.put(seed_url, content=b"seed").status_code == 200
        sync = ContextSync(context_id=context.id, path="/home/user/data", policy=SyncPolicy())
        created = agb.create(CreateSessionParams(image_id="agb-code-space-1", labels={"store": "pg"},
                                                 context_syncs=[sync]))
        assert created.success, created.error_message
        session = created.session
        assert session.command.execute("cat /home/user/data/seed.txt", timeout_ms=10000).stdout == "seed"
        raw = session.call_mcp_tool("shell", {"command": "echo made > /home/user/data/made.txt && echo ok",
                                              "timeout_ms": 5000})
        assert raw.success and json.loads(raw.data)["stdout"] == "ok\n"
        assert session.file.write("/tmp/f.txt", "from the sdk").success
        assert session.file.read("/tmp/f.txt").content == "from the sdk"
        assert session.set_labels({"store": "pg", "k": "v"}).success
        assert session.session_id in agb.list(labels={"k": "v"}).session_ids

        # The state is in PostgreSQL (and a second key made by the CLI against the same store works).
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT status, labels FROM sessions WHERE id = %s", (session.session_id,)).fetchone()
        assert row is not None and row[0] == "RUNNING" and json.loads(row[1]) == {"store": "pg", "k": "v"}
        out = subprocess.run([sys.executable, "-m", "agbox", "keys", "create", "--name", "second", "--store", url,
                              "--data-dir", str(tmp_path / "cli")], check=True, capture_output=True, text=True)
        second = OfficialAGB(api_key=out.stdout.split("\t")[1].strip(),
                             cfg=Config(endpoint=srv.endpoint, timeout_ms=60000))
        assert second.list().success and session.session_id not in second.list().session_ids

        assert agb.delete(session, sync_context=True).success
        names = {e.file_name for e in agb.context.list_files(context.id, "/home/user/data").entries}
        assert names == {"seed.txt", "made.txt"}
        left = agb.create(CreateSessionParams(image_id="agb-code-space-1")).session

        # PostgreSQL restarts under the running server: the next calls work on new connections.
        postgres.stop("fast")
        postgres.start()
        after = wait_for(lambda: _quietly(left.command.execute, "echo after-restart", timeout_ms=10000),
                         20, interval_s=0.2, what="a tool call after the database restart")
        assert after.stdout == "after-restart\n"
    finally:
        assert srv.stop() == 0

    # A restart on the same database: the contexts, keys and ended sessions are all there.
    srv = start_server(data_dir, extra_args=["--store", url])
    try:
        agb = OfficialAGB(api_key=srv.api_key, cfg=Config(endpoint=srv.endpoint, timeout_ms=60000))
        download = agb.context.get_file_download_url(context.id, "/home/user/data/made.txt")
        assert download.success and httpx.get(download.url).content == b"made\n"
        assert not agb.get(left.session_id).success
        with psycopg.connect(url) as conn:
            reason = conn.execute("SELECT finish_reason FROM sessions WHERE id = %s", (left.session_id,)).fetchone()
        assert reason == ("server stopped",)
    finally:
        srv.stop()


def _quietly(call: Any, *args: Any, **kwargs: Any) -> Any:
    result = call(*args, **kwargs)
    return result if result.success else None
