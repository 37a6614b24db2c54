"""AGB's context key space through the unmodified official SDK: a context's files are keyed by their
absolute path in the sandbox, so ``list_files(ctx, mount)`` lists what a session synced there, a
mapping policy moves them to another mount, and ``ExtensionsService`` zips reach browser sessions."""

from __future__ import annotations

import asyncio
import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agb.context_sync import ContextSync, MappingPolicy, SyncPolicy
from agb.extension import ExtensionsService
from agb.session_params import BrowserContext
from agb.session_params import CreateSessionParams as OfficialParams


def sh(session: Any, command: str) -> str:
    result = session.command.execute(command, timeout_ms=60000)
    assert result.success, result.error_message
    return str(result.output)


@pytest.fixture
def ctx(official: Any) -> Iterator[Any]:
    result = official.context.create(f"paths-{os.urandom(4).hex()}")
    assert result.success, result.error_message
    yield result.context
    official.context.delete(result.context)


@pytest.fixture
def sessions(official: Any) -> Iterator[Any]:
    made: list[Any] = []

    def make(*syncs: ContextSync, image_id: str = "agb-code-space-1", **kwargs: Any) -> Any:
        result = official.create(OfficialParams(image_id=image_id, context_syncs=list(syncs), **kwargs))
        assert result.success, result.error_message
        made.append(result.session)
        return result.session

    yield make
    for session in made:
        official.delete(session)


def test_files_are_keyed_by_their_absolute_sandbox_path(official: Any, ctx: Any, sessions: Any) -> None:
    a = sessions(ContextSync(ctx.id, "/home/user/data", SyncPolicy()))
    sh(a, "mkdir -p /home/user/data/sub && echo hi > /home/user/data/t.txt && echo deep > /home/user/data/sub/r.txt")
    assert asyncio.run(a.context.sync(retry_interval=100)).success

    listing = official.context.list_files(ctx.id, "/home/user/data")
    assert listing.success, listing.error_message
    assert sorted((e.file_name, e.file_path, e.file_type) for e in listing.entries) == [
        ("sub", "/home/user/data/sub", "folder"), ("t.txt", "/home/user/data/t.txt", "file")]
    assert [e.file_path for e in official.context.list_files(ctx.id, "/home/user/data/sub").entries] == \
        ["/home/user/data/sub/r.txt"]
    assert [e.file_name for e in official.context.list_files(ctx.id, "/").entries] == ["home"]
    down = official.context.get_file_download_url(ctx.id, "/home/user/data/t.txt")
    assert down.success and httpx.get(down.url).content == b"hi\n"

    # A file put through a pre-signed URL at an absolute path lands at that path in the next session.
    up = official.context.get_file_upload_url(ctx.id, "/home/user/data/from-url.txt")
    assert httpx.put(up.url, content=b"put by url").status_code == 200
    b = sessions(ContextSync(ctx.id, "/home/user/data", SyncPolicy()))
    assert sh(b, "cat /home/user/data/from-url.txt /home/user/data/sub/r.txt") == "put by urldeep\n"

    # Mounted elsewhere, the context's files are not there (they belong to /home/user/data) ...
    c = sessions(ContextSync(ctx.id, "/home/user/other", SyncPolicy()))
    assert sh(c, "ls -A /home/user/other | wc -l").strip() == "0"
    # ... unless a mapping policy names the path they were made at.
    mapped = SyncPolicy(mapping_policy=MappingPolicy(path="/home/user/data"))
    d = sessions(ContextSync(ctx.id, "/home/user/other", mapped))
    assert sh(d, "cat /home/user/other/t.txt /home/user/other/sub/r.txt") == "hi\ndeep\n"
    # What a mapped session changes goes back to the files it was given (one key space, 3-way merge).
    sh(d, "echo changed > /home/user/other/t.txt")
    assert asyncio.run(d.context.sync(retry_interval=100)).success
    again = official.context.get_file_download_url(ctx.id, "/home/user/data/t.txt")
    assert httpx.get(again.url).content == b"changed\n"
    assert official.context.list_files(ctx.id, "/home/user/other").entries == []


def _extension_zip(path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manifest.json", json.dumps({"manifest_version": 3, "name": "agbox test", "version": "1"}))
        archive.writestr("js/background.js", "console.log('loaded');\n")
    path.write_bytes(buffer.getvalue())


def test_extension_zip_reaches_a_browser_session_extracted(official: Any, sessions: Any, tmp_path: Path) -> None:
    service = ExtensionsService(official, f"extensions-{os.urandom(4).hex()}")
    browser_data = official.context.create(f"browser-{os.urandom(4).hex()}").context
    try:
        local = tmp_path / "my-extension.zip"
        _extension_zip(local)
        extension = service.create(str(local))
        assert extension.id.startswith("ext_") and extension.id.endswith(".zip")
        assert [e.id for e in service.list()] == [extension.id]

        option = service.create_extension_option([extension.id])
        session = sessions(image_id="agb-browser-use-1",
                           browser_context=BrowserContext(browser_data.id, extension_option=option))
        stem = extension.id[:-len(".zip")]
        # Extract policy of an extension sync: unpacked into a folder named after the zip, zip removed.
        assert sh(session, f"cat /tmp/extensions/{stem}/manifest.json") == \
            json.dumps({"manifest_version": 3, "name": "agbox test", "version": "1"})
        assert sh(session, f"ls /tmp/extensions; ls /tmp/extensions/{stem}/js") == f"{stem}\nbackground.js\n"
        statuses = [(s.path, s.status) for s in session.context.info().context_status_data]
        assert ("/tmp/extensions/", "Success") in statuses
    finally:
        assert service.cleanup()
        official.context.delete(browser_data)
