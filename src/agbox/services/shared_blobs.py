"""Context blobs on a path every control-plane replica reaches (NFS, a cluster filesystem, or on one
machine simply the same directory): ``--blob-dir``.

The layout is LocalBlobStore's (``blobs/<aa>/<sha256>``, written to staging, fsync-ed, renamed), so
a blob written by one replica is read by any other. What changes is staging: each replica stages in
its own subdirectory, so a replica that starts and clears its leftovers never removes a file that
another replica is still writing. The pre-signed URL secret lives there too, so a URL one replica
signed is honoured by all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
from pathlib import Path

from agbox.services.context_files import LocalBlobStore


def replica_id(data_dir: Path) -> str:
    return hashlib.sha256(f"{socket.gethostname()}:{data_dir}".encode()).hexdigest()[:12]


class SharedBlobStore(LocalBlobStore):
    def __init__(self, root: Path, replica: str) -> None:
        super().__init__(root)
        self.staging = root / "staging" / replica
        self.staging.mkdir(parents=True, exist_ok=True)
        os.chmod(self.staging, 0o700)


def shared_secret(path: Path) -> bytes:
    """The secret in ``path``, made by whichever replica gets there first (the others read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = secrets.token_bytes(32)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(candidate)
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(tmp, path)  # atomic: fails if another replica's secret is already there
    except FileExistsError:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path.read_bytes()
