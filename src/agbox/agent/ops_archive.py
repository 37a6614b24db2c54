"""Archive ops: move trees between the sandbox and the host as tar streams, in bounded chunks.

Everything here runs inside the sandbox as the sandbox user, so sandbox symlinks can only ever
reach what the sandbox itself may touch; the host never opens a path inside the sandbox.

- ``archive_pack``    walk ``root`` (never following symlinks), keep regular files selected by
                      ``include``/``exclude`` (paths relative to ``root``), write a tar to a spool file.
- ``archive_read``    one base64 chunk of a spool file.
- ``archive_write``   append one base64 chunk to a spool file (created on the first chunk).
- ``archive_extract`` unpack a spool tar under ``dest`` (regular files and directories only), then
                      optionally unpack archives found in it (the extract policy); removes the spool.
- ``archive_unpack``  apply the extract policy to files the host already put under ``dest`` (the
                      direct path of services/context_transfer.py: only the archives among them).
- ``archive_discard`` remove a spool file.
- ``archive_mkdir``   create a directory (and parents).
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import stat
import tarfile
import zipfile
from typing import Any

from common import Ctx, OpError, require_str

SPOOL_DIR = "/tmp/.agbox-transfer"
MAX_CHUNK = 8 * 1024 * 1024
# Archives the platform wrote itself (upload mode "Archive"): always unpacked in place.
OWN_ARCHIVE = ".agbox-archive.tar"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def _spool_path(name: Any) -> str:
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise OpError("invalid", "bad spool name")
    return os.path.join(SPOOL_DIR, name)


def _new_spool() -> tuple[str, str]:
    os.makedirs(SPOOL_DIR, mode=0o700, exist_ok=True)
    name = "x" + secrets.token_hex(12)
    return name, os.path.join(SPOOL_DIR, name)


def _norm_rel(path: Any) -> str:
    if not isinstance(path, str):
        raise OpError("invalid", "paths must be strings")
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OpError("invalid", f"'..' is not allowed in {path!r}")
    return "/".join(parts)


def _selected(rel: str, include: list[str], exclude: list[str]) -> bool:
    def under(base: str) -> bool:
        return base == "" or rel == base or rel.startswith(base + "/")

    if include and not any(under(base) for base in include):
        return False
    return not any(base and under(base) for base in exclude)


def _could_contain(rel_dir: str, include: list[str], exclude: list[str]) -> bool:
    if any(base and (rel_dir == base or rel_dir.startswith(base + "/")) for base in exclude):
        return False
    if not include:
        return True
    return any(base == "" or base == rel_dir or base.startswith(rel_dir + "/") or rel_dir.startswith(base + "/")
               for base in include)


def archive_pack(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    root = require_str(args, "root")
    include = [_norm_rel(p) for p in args.get("include") or []]
    exclude = [_norm_rel(p) for p in args.get("exclude") or []]
    name, spool = _new_spool()
    count = 0
    total = 0
    with tarfile.open(spool, "w", format=tarfile.PAX_FORMAT) as tar:
        try:
            top = os.lstat(root)
        except FileNotFoundError:
            top = None
        if top is not None and stat.S_ISDIR(top.st_mode):
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                if ctx.cancelled.is_set():
                    raise OpError("cancelled", "cancelled")
                rel_dir = os.path.relpath(dirpath, root)
                rel_dir = "" if rel_dir == "." else rel_dir
                dirnames[:] = sorted(d for d in dirnames
                                     if _could_contain(os.path.join(rel_dir, d) if rel_dir else d, include, exclude))
                for filename in sorted(filenames):
                    rel = os.path.join(rel_dir, filename) if rel_dir else filename
                    if not _selected(rel, include, exclude):
                        continue
                    full = os.path.join(dirpath, filename)
                    try:
                        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                    except OSError:
                        continue  # a symlink, a vanished file, no permission: not part of the context
                    with os.fdopen(fd, "rb") as handle:
                        st = os.fstat(handle.fileno())
                        if not stat.S_ISREG(st.st_mode):
                            continue
                        info = tarfile.TarInfo(rel)
                        info.size = st.st_size
                        info.mtime = int(st.st_mtime)
                        info.mode = stat.S_IMODE(st.st_mode)
                        tar.addfile(info, handle)
                        count += 1
                        total += st.st_size
    return {"spool": name, "size": os.path.getsize(spool), "files": count, "bytes": total}


def archive_read(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    spool = _spool_path(args.get("spool"))
    offset = int(args.get("offset", 0))
    length = min(int(args.get("length", MAX_CHUNK)), MAX_CHUNK)
    with open(spool, "rb") as handle:
        handle.seek(offset)
        data = handle.read(length)
    return {"data": base64.b64encode(data).decode(), "n": len(data)}


def archive_write(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    name = args.get("spool")
    if name:
        spool = _spool_path(name)
    else:
        name, spool = _new_spool()
    data = base64.b64decode(str(args.get("data", "")))
    with open(spool, "ab") as handle:
        handle.write(data)
    return {"spool": name, "size": os.path.getsize(spool)}


def _safe_member(member: tarfile.TarInfo) -> str | None:
    rel = _norm_rel(member.name)
    if not rel or not (member.isreg() or member.isdir()):
        return None
    return rel


def _unpack_tar(path: str, dest: str) -> int:
    count = 0
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            rel = _safe_member(member)
            if rel is None:
                continue
            target = os.path.join(dest, rel)
            if member.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            # Replace, never write through: an existing symlink at the target is removed, not followed.
            tmp = f"{target}.agbox-{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, member.mode & 0o777 or 0o644)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, 1024 * 1024)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            os.replace(tmp, target)
            os.utime(target, (member.mtime, member.mtime))
            count += 1
    return count


def _unpack_zip(path: str, dest: str) -> int:
    count = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            rel = _norm_rel(info.filename)
            if not rel:
                continue
            target = os.path.join(dest, rel)
            if info.is_dir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.islink(target):
                os.unlink(target)
            with archive.open(info) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1024 * 1024)
            count += 1
    return count


def _archive_stem(filename: str) -> str | None:
    for suffix in ARCHIVE_SUFFIXES:
        if filename.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)]
    return None


def _apply_extract_policy(dest: str, names: list[str], policy: dict[str, Any]) -> None:
    extract = bool(policy.get("extract", True))
    delete_src = bool(policy.get("deleteSrcFile", True))
    to_current = bool(policy.get("extractToCurrentFolder", False))
    for rel in names:
        path = os.path.join(dest, rel)
        filename = os.path.basename(rel)
        folder = os.path.dirname(path)
        if filename == OWN_ARCHIVE:
            _unpack_tar(path, folder)
            os.unlink(path)
            continue
        stem = _archive_stem(filename)
        if stem is None or not extract or not os.path.isfile(path) or os.path.islink(path):
            continue
        target = folder if to_current else os.path.join(folder, stem)
        os.makedirs(target, exist_ok=True)
        try:
            if filename.endswith(".zip"):
                _unpack_zip(path, target)
            else:
                _unpack_tar(path, target)
        except (tarfile.TarError, zipfile.BadZipFile, OSError):
            continue  # not a valid archive after all: keep the file as it is
        if delete_src:
            os.unlink(path)


def archive_extract(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    spool = _spool_path(args.get("spool"))
    dest = require_str(args, "dest")
    os.makedirs(dest, exist_ok=True)
    try:
        names: list[str] = []
        with tarfile.open(spool, "r:") as tar:
            names = [rel for rel in (_safe_member(m) for m in tar.getmembers() if m.isreg()) if rel]
        count = _unpack_tar(spool, dest)
    finally:
        os.unlink(spool)
    policy = args.get("extract_policy")
    if isinstance(policy, dict):
        _apply_extract_policy(dest, names, policy)
    return {"files": count}


def archive_unpack(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    dest = require_str(args, "dest")
    names = [rel for rel in (_norm_rel(n) for n in args.get("names") or []) if rel]
    policy = args.get("extract_policy")
    _apply_extract_policy(dest, names, policy if isinstance(policy, dict) else {})
    return {"files": len(names)}


def archive_discard(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    try:
        os.unlink(_spool_path(args.get("spool")))
    except FileNotFoundError:
        pass
    return {}


def archive_mkdir(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    os.makedirs(require_str(args, "path"), exist_ok=True)
    return {}


OPS = {
    "archive_pack": archive_pack,
    "archive_read": archive_read,
    "archive_write": archive_write,
    "archive_extract": archive_extract,
    "archive_unpack": archive_unpack,
    "archive_discard": archive_discard,
    "archive_mkdir": archive_mkdir,
}
