"""The read-only base every sandbox sees: the host's /usr and a sanitized copy of /etc.

The copy keeps only what any user could read anyway (world-readable files, symlinks), drops
known secrets outright, and replaces the user databases so the sandbox knows only its own user.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

SANDBOX_UID = 1000
SANDBOX_GID = 1000
SANDBOX_USER = "user"
SANDBOX_HOME = "/home/user"

_SECRET_NAMES = {"shadow", "shadow-", "gshadow", "gshadow-", "sudoers", "sudoers.d", "ssh", "ssl/private",
                 "security/opasswd", "machine-id", "subuid", "subgid", "subuid-", "subgid-"}

_PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_GID}:sandbox user:{SANDBOX_HOME}:/bin/bash\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
_GROUP = f"root:x:0:\n{SANDBOX_USER}:x:{SANDBOX_GID}:\nnogroup:x:65534:\n"


def _copy_readable(src: Path, dst: Path, rel: str = "") -> None:
    dst.mkdir(mode=0o755, exist_ok=True)
    for entry in os.scandir(src):
        rel_name = f"{rel}{entry.name}"
        if rel_name in _SECRET_NAMES:
            continue
        target = dst / entry.name
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(entry.path), target)
        elif stat.S_ISDIR(info.st_mode):
            if info.st_mode & stat.S_IROTH and info.st_mode & stat.S_IXOTH:
                _copy_readable(Path(entry.path), target, rel_name + "/")
        elif stat.S_ISREG(info.st_mode) and info.st_mode & stat.S_IROTH:
            try:
                shutil.copyfile(entry.path, target)
            except OSError:
                continue
            os.chmod(target, 0o644 | (info.st_mode & 0o111))


def build_base(root: Path, hostname: str = "sandbox") -> Path:
    """(Re)build ``root/etc`` and return ``root``. Cheap enough to run at every start."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / "etc.new"
    shutil.rmtree(staging, ignore_errors=True)
    _copy_readable(Path("/etc"), staging)
    (staging / "passwd").write_text(_PASSWD)
    (staging / "group").write_text(_GROUP)
    (staging / "hostname").write_text(hostname + "\n")
    (staging / "hosts").write_text(f"127.0.0.1 localhost {hostname}\n::1 localhost ip6-localhost\n")
    if (staging / "chromium.d").is_dir():
        # Debian's chromium wrapper sources these and ignores CHROMIUM_FLAGS from the environment: an
        # image passes its flags (e.g. --no-sandbox, as sandboxes have no user namespaces) this way.
        (staging / "chromium.d" / "agbox").write_text(
            'CHROMIUM_FLAGS="$CHROMIUM_FLAGS ${AGBOX_CHROMIUM_FLAGS:-}"\n')
    final = root / "etc"
    old = root / "etc.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return root
