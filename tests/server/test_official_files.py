"""The file tools through the unmodified official SDK (`agb` 0.12.0) against `agbox serve`."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

from tests.conftest import wait_for


def test_write_read_list_info_edit(official_session: Any) -> None:
    fs = official_session.file
    assert fs.mkdir("/tmp/o/sub").success
    assert fs.write("/tmp/o/a.txt", "héllo\n").success
    assert fs.write("/tmp/o/a.txt", "wörld 😀\n", mode="append").success
    read = fs.read("/tmp/o/a.txt")
    assert read.success and read.content == "héllo\nwörld 😀\n"

    listing = fs.list("/tmp/o")
    assert listing.success
    assert sorted((e["name"], e["isDirectory"]) for e in listing.entries) == [("a.txt", False), ("sub", True)]

    info = fs.info("/tmp/o/a.txt")
    assert info.success
    assert info.file_info["size"] == len("héllo\nwörld 😀\n".encode())
    assert info.file_info["isFile"] is True and info.file_info["isDirectory"] is False
    assert info.file_info["permissions"] == 644

    assert fs.edit("/tmp/o/a.txt", [{"oldText": "héllo", "newText": "hello"}], dry_run=True).success
    assert fs.read("/tmp/o/a.txt").content.startswith("héllo")
    assert fs.edit("/tmp/o/a.txt", [{"oldText": "héllo", "newText": "hello"}]).success
    assert fs.read("/tmp/o/a.txt").content == "hello\nwörld 😀\n"
    assert not fs.edit("/tmp/o/a.txt", [{"oldText": "absent", "newText": "x"}]).success


def test_move_remove_search_read_batch(official_session: Any) -> None:
    fs = official_session.file
    for path in ("/tmp/q/a.py", "/tmp/q/b.txt", "/tmp/q/lib/c.py", "/tmp/q/venv/d.py"):
        assert fs.write(path, f"{path} body\nsecond").success
    found = fs.search("/tmp/q", "*.py", exclude_patterns=["venv"])
    assert found.success and found.matches == ["/tmp/q/a.py", "/tmp/q/lib/c.py"]
    empty = fs.search("/tmp/q", "*.go")
    assert empty.success and empty.matches == []

    batch = fs.read_batch(["/tmp/q/a.py", "/tmp/q/b.txt"])
    assert batch.success
    assert batch.contents == {"/tmp/q/a.py": "/tmp/q/a.py body\nsecond", "/tmp/q/b.txt": "/tmp/q/b.txt body\nsecond"}

    assert fs.move("/tmp/q/b.txt", "/tmp/q/lib/b.txt").success
    assert fs.read("/tmp/q/lib/b.txt").content == "/tmp/q/b.txt body\nsecond"
    assert fs.remove("/tmp/q/lib/b.txt").success
    assert not fs.info("/tmp/q/lib/b.txt").success
    assert not fs.remove("/tmp/q/lib/b.txt").success


def test_multi_chunk_text_and_bytes(official_session: Any) -> None:
    fs = official_session.file
    # Several of the SDK's 51200-character write chunks and 50 KiB read ranges; the multi-byte
    # characters are cut by the byte ranges, which the server completes.
    text = "aé€😀\n" * 40_000
    started = time.monotonic()
    assert fs.write("/tmp/o/multi.txt", text).success
    wrote = time.monotonic()
    result = fs.read("/tmp/o/multi.txt")
    done = time.monotonic()
    assert result.success and result.content == text
    size = len(text.encode())
    print(f"\nofficial SDK {size / 1e6:.1f} MB text: write {size / 1e6 / (wrote - started):.1f} MB/s, "
          f"read {size / 1e6 / (done - wrote):.1f} MB/s")

    # Binary: made by the shell (the official write takes text only), read back as bytes.
    made = official_session.command.execute(
        "head -c 300000 /dev/urandom > /tmp/o/r.bin && sha256sum /tmp/o/r.bin", timeout_ms=10_000)
    assert made.success, made.error_message
    blob = fs.read("/tmp/o/r.bin", format="bytes")
    assert blob.success and len(blob.content) == 300_000
    assert hashlib.sha256(blob.content).hexdigest() == made.output.split()[0]


def test_bad_paths(official_session: Any) -> None:
    fs = official_session.file
    shadow = fs.read("/etc/shadow")
    assert not shadow.success and shadow.error_message == "No such file or directory: /etc/shadow"
    missing = fs.read("/nope/x", format="bytes")
    assert not missing.success and "No such file or directory: /nope/x" in missing.error_message
    directory = fs.read("/tmp")
    assert not directory.success and directory.error_message == "Path does not exist or is a directory: /tmp"
    listing = fs.list("/nope")
    assert not listing.success and "No such file or directory: /nope" in listing.error_message
    denied = fs.write("/usr/lib/x", "x")
    assert not denied.success and "/usr/lib/x" in denied.error_message


def test_file_change_and_watch_dir(official_session: Any) -> None:
    fs = official_session.file
    assert fs.mkdir("/tmp/ow").success
    assert fs.write("/tmp/ow/keep.txt", "v1").success
    assert fs._get_file_change("/tmp/ow").events == []  # the baseline
    assert fs.write("/tmp/ow/keep.txt", "v2").success
    assert fs.write("/tmp/ow/new.txt", "n").success
    assert fs.remove("/tmp/ow/new.txt").success
    changes = fs._get_file_change("/tmp/ow")
    assert changes.success
    assert "/tmp/ow/keep.txt" in changes.get_modified_files()
    assert "/tmp/ow/new.txt" in changes.get_created_files()
    assert changes.get_deleted_files() == ["/tmp/ow/new.txt"]

    batches: list[list[Any]] = []
    lock = threading.Lock()

    def callback(events: list[Any]) -> None:
        with lock:
            batches.append(events)

    watcher = fs.watch_dir("/tmp/ow", callback, interval=0.05)
    watcher.start()
    try:
        assert watcher.ready_event.wait(30)
        assert fs.write("/tmp/ow/later.txt", "x").success

        def seen() -> bool:
            with lock:
                return any(e.event_type == "create" and e.path == "/tmp/ow/later.txt" and e.path_type == "file"
                           for batch in batches for e in batch)

        wait_for(seen, 30, what="watch_dir to report the new file")
    finally:
        watcher.stop_event.set()
        watcher.join(10)
