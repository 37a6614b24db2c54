"""Blobs written in the kernel (``BlobStore.ingest_fd``, ``direct_fd``): the key is still the sha256
of the bytes, across the hashing windows, mixed with ordinary writes, and a limit still holds."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from agbox.errors import LimitExceededError
from agbox.services.context_files import HASH_WINDOW, LocalBlobStore
from agbox.services.shared_blobs import SharedBlobStore


@pytest.mark.parametrize("size", [0, 1, HASH_WINDOW, HASH_WINDOW + 5, 2 * HASH_WINDOW + 4096 + 3])
def test_ingest_fd_keys_by_content(tmp_path: Path, size: int) -> None:
    for store in (LocalBlobStore(tmp_path / "local"), SharedBlobStore(tmp_path / "shared", "replica-a")):
        data = os.urandom(size)
        source = tmp_path / "source"
        source.write_bytes(b"skipped" + data)
        fd = os.open(source, os.O_RDONLY)
        try:
            os.lseek(fd, 7, os.SEEK_SET)  # from the current offset on
            key, stored = store.ingest_fd(fd, durable=False)
        finally:
            os.close(fd)
        assert (key, stored) == (hashlib.sha256(data).hexdigest(), size)
        with store.open(key) as blob:
            assert blob.read() == data
        assert list(store.staging.iterdir()) == []


def test_direct_writes_mix_with_ordinary_ones_and_keep_the_limit(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    writer = store.begin(limit=10, durable=False)
    writer.write(b"abc")
    out = writer.direct_fd()
    assert out is not None
    os.write(out, b"defg")
    writer.wrote_directly(4)
    writer.write(b"hi")
    key, size = writer.finish()
    assert (key, size) == (hashlib.sha256(b"abcdefghi").hexdigest(), 9)
    over = store.begin(limit=10, durable=False)
    out = over.direct_fd()
    assert out is not None
    os.write(out, b"x" * 11)
    with pytest.raises(LimitExceededError):
        over.wrote_directly(11)
    over.abort()
    assert list(store.staging.iterdir()) == []
