"""The file tools through our SDK (`session.file`), in both modes (HTTP and embedded)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any

import pytest

from tests.conftest import wait_for


@pytest.fixture
def session(make_session: Any) -> Any:
    return make_session()


def test_write_read_list_info(session: Any) -> None:
    fs = session.file
    assert fs.mkdir("/tmp/work/sub").success
    assert fs.mkdir("/tmp/work/sub").success  # already there: fine
    assert fs.write("/tmp/work/a.txt", "héllo wörld\n").success
    assert fs.write("/tmp/work/a.txt", "second line 😀\n", mode="append").success
    read = fs.read("/tmp/work/a.txt")
    assert read.success and read.content == "héllo wörld\nsecond line 😀\n"

    listing = fs.list("/tmp/work")
    assert listing.success
    assert listing.entries == [{"name": "sub", "isDirectory": True}, {"name": "a.txt", "isDirectory": False}]

    info = fs.info("/tmp/work/a.txt")
    assert info.success
    assert info.file_info["size"] == len("héllo wörld\nsecond line 😀\n".encode())
    assert info.file_info["isFile"] is True and info.file_info["isDirectory"] is False
    assert info.file_info["permissions"] == 644
    assert str(info.file_info["modified"]).endswith("Z")
    dir_info = fs.info("/tmp/work/sub")
    assert dir_info.success and dir_info.file_info["isDirectory"] is True

    # Relative paths start at the sandbox user's home.
    assert fs.write("notes.txt", "in home").success
    assert fs.read("/home/user/notes.txt").content == "in home"

    # An empty file reads as "" (no read_file call at all).
    assert fs.write("/tmp/work/empty", "").success
    assert fs.read("/tmp/work/empty").content == ""
    assert fs.read("/tmp/work/empty", format="bytes").content == b""

    # The raw tool: a byte range of text; a range cut inside a character completes it.
    raw = session.call_mcp_tool("read_file", {"path": "/tmp/work/a.txt", "offset": 0, "length": 2})
    assert raw.success and raw.data == "hé"
    raw = session.call_mcp_tool("read_file", {"path": "/tmp/work/a.txt", "offset": 2, "length": 3})
    assert raw.success and raw.data == "ll"


def test_bytes_round_trip(session: Any) -> None:
    payload = bytes(range(256)) * 40 + b"\xff\xfe\x00tail"
    assert session.file.write("/tmp/blob.bin", payload).success
    result = session.file.read("/tmp/blob.bin", format="bytes")
    assert result.success and result.content == payload and result.size == len(payload)
    # Invalid UTF-8 read as text does not break anything: replacement characters.
    text = session.file.read("/tmp/blob.bin")
    assert text.success and "\ufffd" in text.content
    # The shell sees the same bytes.
    digest = session.command.execute("sha256sum /tmp/blob.bin", timeout_ms=5000).stdout.split()[0]
    assert digest == hashlib.sha256(payload).hexdigest()


def test_multi_chunk_text_with_multibyte_characters(session: Any) -> None:
    from agbox.client import file as file_module

    text = ("aé€😀\n" * 300_000)  # 3.3 MB of mixed-width characters
    old_read, old_write = file_module.READ_CHUNK_BYTES, file_module.WRITE_CHUNK_CHARS
    file_module.READ_CHUNK_BYTES, file_module.WRITE_CHUNK_CHARS = 1_000_003, 700_001  # odd: cut characters
    try:
        assert session.file.write("/tmp/mb.txt", text).success
        result = session.file.read("/tmp/mb.txt")
    finally:
        file_module.READ_CHUNK_BYTES, file_module.WRITE_CHUNK_CHARS = old_read, old_write
    assert result.success and result.content == text


def test_100mb_round_trip(session: Any) -> None:
    payload = os.urandom(1024 * 1024) * 100
    expected = hashlib.sha256(payload).hexdigest()
    started = time.monotonic()
    assert session.file.write("/tmp/big.bin", payload).success
    wrote = time.monotonic()
    check = session.command.execute("sha256sum /tmp/big.bin", timeout_ms=60_000)
    assert check.stdout.split()[0] == expected
    read_started = time.monotonic()
    result = session.file.read("/tmp/big.bin", format="bytes")
    done = time.monotonic()
    assert result.success, result.error_message
    assert len(result.content) == len(payload)
    assert hashlib.sha256(result.content).hexdigest() == expected
    print(f"\n100 MB write {100 / (wrote - started):.0f} MB/s, read {100 / (done - read_started):.0f} MB/s")
    assert session.file.remove("/tmp/big.bin").success


def test_edit_dry_run_and_apply(session: Any) -> None:
    fs = session.file
    assert fs.write("/tmp/e.py", "def f():\n    return 1\n\nprint(f())\n").success
    raw = session.call_mcp_tool("edit_file", {"path": "/tmp/e.py", "dryRun": True,
                                              "edits": [{"oldText": "return 1", "newText": "return 2"}]})
    assert raw.success and "-    return 1" in raw.data and "+    return 2" in raw.data
    assert fs.read("/tmp/e.py").content == "def f():\n    return 1\n\nprint(f())\n"
    assert fs.edit("/tmp/e.py", [{"oldText": "return 1", "newText": "return 2"},
                                 {"oldText": "print(f())", "newText": "print(f() * 2)"}]).success
    assert fs.read("/tmp/e.py").content == "def f():\n    return 2\n\nprint(f() * 2)\n"
    # Indentation-insensitive fallback.
    assert fs.edit("/tmp/e.py", [{"oldText": "return 2", "newText": "return 3"}]).success
    assert fs.edit("/tmp/e.py", [{"oldText": "  def f():\n return 3", "newText": "def g():\n    return 3"}]).success
    assert fs.read("/tmp/e.py").content.startswith("def g():\n    return 3\n")
    missing = fs.edit("/tmp/e.py", [{"oldText": "not there", "newText": "x"}])
    assert not missing.success and "Could not find" in missing.error_message


def test_move_remove_search_read_batch(session: Any) -> None:
    fs = session.file
    for path in ("/tmp/s/a.py", "/tmp/s/b.txt", "/tmp/s/pkg/c.py", "/tmp/s/skip/d.py"):
        assert fs.write(path, f"content of {path}\nline 2").success
    found = fs.search("/tmp/s", "*.py")
    assert found.success and found.matches == ["/tmp/s/a.py", "/tmp/s/pkg/c.py", "/tmp/s/skip/d.py"]
    excluded = fs.search("/tmp/s", "*.py", exclude_patterns=["skip"])
    assert excluded.matches == ["/tmp/s/a.py", "/tmp/s/pkg/c.py"]
    none = fs.search("/tmp/s", "*.rs")
    assert none.success and none.matches == []
    assert session.call_mcp_tool("search_files", {"path": "/tmp/s", "pattern": "*.rs"}).data == "No matches found"

    batch = fs.read_batch(["/tmp/s/a.py", "/tmp/s/b.txt"])
    assert batch.success
    assert batch.contents == {"/tmp/s/a.py": "content of /tmp/s/a.py\nline 2",
                              "/tmp/s/b.txt": "content of /tmp/s/b.txt\nline 2"}
    partial = session.call_mcp_tool("read_multiple_files", {"paths": ["/tmp/s/a.py", "/tmp/s/nope"]})
    assert partial.success and "/tmp/s/nope: Error - No such file or directory" in partial.data

    assert fs.move("/tmp/s/b.txt", "/tmp/s/pkg/b2.txt").success
    assert fs.read("/tmp/s/pkg/b2.txt").content.startswith("content of /tmp/s/b.txt")
    assert not fs.info("/tmp/s/b.txt").success
    clash = fs.move("/tmp/s/a.py", "/tmp/s/pkg/c.py")
    assert not clash.success and "already exists" in clash.error_message

    assert fs.remove("/tmp/s/a.py").success
    assert fs.remove("/tmp/s/pkg").success  # a directory, with its contents
    assert [e["name"] for e in fs.list("/tmp/s").entries] == ["skip"]
    gone = fs.remove("/tmp/s/a.py")
    assert not gone.success and "No such file or directory: /tmp/s/a.py" in gone.error_message


def test_bad_paths_fail_cleanly(session: Any) -> None:
    fs = session.file
    shadow = fs.read("/etc/shadow")  # not in the sandbox's view at all
    assert not shadow.success and shadow.error_message == "No such file or directory: /etc/shadow"
    missing = fs.read("/no/such/file", format="bytes")
    assert not missing.success and "No such file or directory: /no/such/file" in missing.error_message
    directory = fs.read("/tmp")
    assert not directory.success and directory.error_message == "Path does not exist or is a directory: /tmp"
    raw = session.call_mcp_tool("read_file", {"path": "/tmp"})
    assert not raw.success and raw.error_message == "Is a directory, not a file: /tmp"

    denied = fs.write("/usr/bin/evil", "x")
    assert not denied.success and "/usr/bin/evil" in denied.error_message
    assert any(word in denied.error_message for word in ("Read-only", "Permission denied"))
    listing = fs.list("/nonexistent")
    assert not listing.success and "No such file or directory: /nonexistent" in listing.error_message
    not_dir = fs.list("/etc/passwd")
    assert not not_dir.success and "Not a directory: /etc/passwd" in not_dir.error_message
    assert not fs.write("/tmp", "x").success
    bad_args = session.call_mcp_tool("read_file", {"path": "/tmp/x", "offset": -1})
    assert not bad_args.success and "invalid arguments for read_file" in bad_args.error_message
    assert not fs.write("/tmp/x", "y", mode="sideways").success


def test_get_file_change_reports_create_modify_delete(session: Any) -> None:
    fs = session.file
    assert fs.mkdir("/tmp/w").success
    assert fs.write("/tmp/w/old.txt", "old").success
    baseline = fs._get_file_change("/tmp/w")
    assert baseline.success and baseline.events == []

    assert fs.write("/tmp/w/new.txt", "new").success
    assert fs.write("/tmp/w/old.txt", " more", mode="append").success
    assert fs.mkdir("/tmp/w/d/e").success
    assert fs.write("/tmp/w/d/e/deep.txt", "deep").success
    assert fs.remove("/tmp/w/new.txt").success
    changes = fs._get_file_change("/tmp/w")
    assert changes.success
    seen = [(e.event_type, e.path, e.path_type) for e in changes.events]
    assert ("create", "/tmp/w/new.txt", "file") in seen
    assert ("modify", "/tmp/w/old.txt", "file") in seen
    assert ("create", "/tmp/w/d", "directory") in seen
    assert ("create", "/tmp/w/d/e/deep.txt", "file") in seen
    assert ("delete", "/tmp/w/new.txt", "file") in seen
    assert seen.index(("create", "/tmp/w/new.txt", "file")) < seen.index(("delete", "/tmp/w/new.txt", "file"))
    assert changes.get_deleted_files() == ["/tmp/w/new.txt"]
    json.loads(changes.raw_data)

    # Since the previous call only; the new directory tree is watched too.
    assert fs._get_file_change("/tmp/w").events == []
    assert fs.write("/tmp/w/d/e/deep.txt", "deeper").success
    assert fs._get_file_change("/tmp/w").get_modified_files() == ["/tmp/w/d/e/deep.txt"]

    missing = fs._get_file_change("/tmp/nope")
    assert not missing.success and "No such file or directory" in missing.error_message


def test_watch_dir(session: Any) -> None:
    fs = session.file
    assert fs.mkdir("/tmp/watched").success
    batches: list[list[Any]] = []
    lock = threading.Lock()

    def callback(events: list[Any]) -> None:
        with lock:
            batches.append(events)

    watcher = fs.watch_dir("/tmp/watched", callback, interval=0.05)
    watcher.start()
    try:
        assert watcher.ready_event.wait(30)
        assert fs.write("/tmp/watched/x.txt", "x").success

        def created() -> bool:
            with lock:
                return any(e.event_type == "create" and e.path == "/tmp/watched/x.txt" for b in batches for e in b)

        wait_for(created, 30, what="watch_dir to report the new file")
    finally:
        watcher.stop_event.set()
        watcher.join(10)
    assert not watcher.is_alive()
