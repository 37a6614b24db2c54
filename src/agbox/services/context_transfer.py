"""Moving a context's files into and out of one session (one binding).

Where the runtime gives direct access to the sandbox's files (``Runtime.files``, the local runtime),
the server copies them itself, resolved safely inside the sandbox's root and as its user
(runtime/sandbox_files.py): download = each blob copied in the kernel (``sendfile``) to its file in
the sandbox, then the agent applies the extract policy to the archives among them (``archive_unpack``);
upload = the mount walked (no symlinks followed, one file system) and each selected regular file
streamed into a blob. No tar, no base64, no spool inside the sandbox (which would count against its
disk twice).

Elsewhere (Ray nodes) files travel as tar streams through the agent, as follows.

Download: the files under the binding's key root (its mount path, or its mapping path) that its
policy selects are packed on the host into a tar of paths relative to that root, sent to the
sandbox in base64 chunks and unpacked at the mount by the agent (``archive_*`` ops), which also
applies the extract policy.

Upload: the agent packs the mount (O_NOFOLLOW, links skipped); the host reads the tar in chunks and
turns each regular member straight into a blob (nothing is unpacked onto the host's disk), then
commits a 3-way merge against the binding's *base* (the files this session last exchanged with the
context): only files the session added, changed or deleted are applied, in one transaction.
"""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agbox.errors import ContextNotFoundError, InvalidRequestError
from agbox.models import SessionRecord
from agbox.runtime.sandbox_files import SandboxFiles
from agbox.services.context_files import BlobStore, BlobWriter, read_chunks
from agbox.services.sessions import SessionService
from agbox.services.sync_policy import Policy, join_key, rebase, relative_path, relative_to, under
from agbox.store.contexts import Binding, ContextStore, FileRecord

CHUNK = 4 * 1024 * 1024
OP_TIMEOUT_S = 300.0
# The one file an Archive-mode upload stores (a tar of the mount), next to where its files would be.
OWN_ARCHIVE = ".agbox-archive.tar"


class ContextTransfer:
    def __init__(self, store: ContextStore, blobs: BlobStore, sessions: SessionService, spool: Path) -> None:
        # (owner, bytes a commit adds) -> raises QuotaExceededError past the key's limit; set by ContextService.
        self.check_quota: Callable[[str, int], None] = lambda owner, growth: None
        self.store = store
        self.blobs = blobs
        self.sessions = sessions
        self.spool = spool

    async def _call(self, record: SessionRecord, op: str, args: dict[str, Any]) -> Any:
        return await self.sessions.runtime.call(self.sessions.handle(record), op, args, timeout_s=OP_TIMEOUT_S)

    async def mkdir(self, record: SessionRecord, path: str) -> None:
        await self._call(record, "archive_mkdir", {"path": path})

    # ---- into the sandbox ------------------------------------------------------------------------

    async def download(self, record: SessionRecord, binding: Binding, scope: str) -> None:
        """Files under ``<key root>/<scope>`` to ``<mount>/<scope>``."""
        if self.store.get_context(binding.context_id) is None:
            raise ContextNotFoundError(f"context {binding.context_id} not found")
        policy = Policy.parse(binding.policy)
        root = policy.key_root(binding.path)
        files = [f for f in self.store.files(binding.context_id, join_key(root, scope))
                 if policy.selects(relative_to(f.path, root))]
        if not files:
            if not binding.internal:  # the mount point exists even for an empty context
                await self.mkdir(record, binding.path)
            return
        loop = asyncio.get_running_loop()
        direct = self.sessions.runtime.files(self.sessions.handle(record))
        if direct is not None:
            names = await loop.run_in_executor(None, self._put_files, direct, files, root, binding.path)
            archives = [n for n in names if n.endswith(ARCHIVE_SUFFIXES)]
            if archives:  # the agent applies the extract policy (default: unpack) to these
                await self._call(record, "archive_unpack", {"dest": binding.path, "names": archives,
                                                            "extract_policy": policy.extract or {}})
            binding.base.update({f.path: f.blob for f in files})
            self.store.put_binding(binding)
            return
        spool = await loop.run_in_executor(None, self._build_tar, files, root)
        name = None
        try:
            with open(spool, "rb") as handle:
                for chunk in read_chunks(handle, CHUNK):
                    args: dict[str, Any] = {"data": base64.b64encode(chunk).decode()}
                    if name:
                        args["spool"] = name
                    name = (await self._call(record, "archive_write", args))["spool"]
            if name is None:
                return
            await self._call(record, "archive_extract", {"spool": name, "dest": binding.path,
                                                         "extract_policy": policy.extract or {}})
        finally:
            spool.unlink(missing_ok=True)
        binding.base.update({f.path: f.blob for f in files})
        self.store.put_binding(binding)

    def _put_files(self, direct: SandboxFiles, files: list[FileRecord], root: str, mount: str) -> list[str]:
        """Each file's blob to ``<mount>/<path below root>`` in the sandbox; returns those relative paths."""
        names = []
        direct.mkdirs(mount)
        for f in files:
            rel = relative_path(relative_to(f.path, root))
            with self.blobs.open(f.blob) as blob:
                direct.put(join_key(mount, rel), blob, f.size, f.modified_at)
            names.append(rel)
        return names

    def _build_tar(self, files: list[FileRecord], root: str) -> Path:
        path = self.spool / f"down-{secrets.token_hex(8)}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for f in files:
                info = tarfile.TarInfo(relative_to(f.path, root))
                info.size = f.size
                info.mtime = int(f.modified_at)
                info.mode = 0o644
                with self.blobs.open(f.blob) as blob:
                    tar.addfile(info, blob)
        return path

    # ---- out of the sandbox ----------------------------------------------------------------------

    async def upload(self, record: SessionRecord, binding: Binding, scope: str) -> None:
        """``<mount>/<scope>`` to the files under ``<key root>/<scope>`` (3-way merge)."""
        if self.store.get_context(binding.context_id) is None:
            raise ContextNotFoundError(f"context {binding.context_id} not found")
        policy = Policy.parse(binding.policy)
        include, covered = rebase(policy.include, scope)
        exclude, excluded_all = rebase(policy.exclude, scope)
        if excluded_all or (policy.include and not include and not covered):
            return  # nothing of this scope is synced by the policy
        source = join_key(binding.path, scope)
        loop = asyncio.get_running_loop()
        target = join_key(policy.key_root(binding.path), scope)
        direct = self.sessions.runtime.files(self.sessions.handle(record))
        if direct is not None:
            wanted = ([] if covered else include, exclude)
            if policy.archive:
                blob, blob_size = await loop.run_in_executor(None, self._ingest_tree_as_tar, direct, source, *wanted,
                                                             not binding.internal)
                found = {join_key(target, OWN_ARCHIVE): (blob, blob_size)}
            else:
                found = await loop.run_in_executor(None, self._ingest_tree, direct, source, target, *wanted,
                                                   not binding.internal)
            self._commit(record.owner, binding, scope, policy, found)
            return
        packed = await self._call(record, "archive_pack", {"root": source, "include": [] if covered else include,
                                                           "exclude": exclude})
        name, size = str(packed["spool"]), int(packed["size"])
        spool = self.spool / f"up-{secrets.token_hex(8)}.tar"
        try:
            with open(spool, "wb") as out:
                offset = 0
                while offset < size:
                    part = await self._call(record, "archive_read", {"spool": name, "offset": offset,
                                                                     "length": CHUNK})
                    data = base64.b64decode(part["data"])
                    if not data:
                        break
                    out.write(data)
                    offset += len(data)
            await self._call(record, "archive_discard", {"spool": name})
            if policy.archive:
                blob, blob_size = await loop.run_in_executor(None, self._ingest_file, spool)
                found = {join_key(target, OWN_ARCHIVE): (blob, blob_size)}
            else:
                found = await loop.run_in_executor(None, self._ingest_tar, spool, target)
        finally:
            spool.unlink(missing_ok=True)
        self._commit(record.owner, binding, scope, policy, found)

    def _ingest_tree(self, direct: SandboxFiles, source: str, target: str, include: list[str],
                     exclude: list[str], durable: bool) -> dict[str, tuple[str, int]]:
        """Blobs for the selected regular files under ``source`` in the sandbox, keyed under ``target``."""
        found: dict[str, tuple[str, int]] = {}
        for rel, fd, _ in direct.walk(source, lambda d: could_contain(d, include, exclude)):
            if selected(rel, include, exclude):
                found[join_key(target, rel)] = self.blobs.ingest_fd(fd, durable=durable)
        return found

    def _ingest_tree_as_tar(self, direct: SandboxFiles, source: str, include: list[str],
                            exclude: list[str], durable: bool) -> tuple[str, int]:
        """One blob: a tar (streamed, never on disk as such) of the selected files under ``source``."""
        writer = self.blobs.begin(durable=durable)
        try:
            with tarfile.open(fileobj=_WriterFile(writer), mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for rel, fd, st in direct.walk(source, lambda d: could_contain(d, include, exclude)):
                    if not selected(rel, include, exclude):
                        continue
                    info = tarfile.TarInfo(rel)
                    info.size = st.st_size
                    info.mtime = int(st.st_mtime)
                    info.mode = st.st_mode & 0o777
                    with open(fd, "rb", closefd=False) as handle:
                        tar.addfile(info, handle)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise

    def _ingest_file(self, path: Path) -> tuple[str, int]:
        with open(path, "rb") as handle:
            return self.blobs.ingest(read_chunks(handle))

    def _ingest_tar(self, path: Path, target: str) -> dict[str, tuple[str, int]]:
        """Blobs for the regular files of a sandbox-made tar, keyed under ``target``."""
        found: dict[str, tuple[str, int]] = {}
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                try:
                    rel = relative_path(member.name)
                except InvalidRequestError:
                    continue
                source = tar.extractfile(member)
                if source is None:
                    continue
                found[join_key(target, rel)] = self.blobs.ingest(read_chunks(source))
        return found

    def _commit(self, owner: str, binding: Binding, scope: str, policy: Policy,
                found: dict[str, tuple[str, int]]) -> None:
        now = time.time()
        root = policy.key_root(binding.path)
        target = join_key(root, scope)
        base = binding.base
        current = {f.path: f for f in self.store.files(binding.context_id, target)}
        in_scope = [k for k in set(base) | set(current)
                    if under(k, target) and policy.selects(relative_to(k, root))]
        if policy.archive:
            deletes = [k for k in current if k not in found]
        else:
            deletes = [k for k in in_scope if k in base and k not in found and k in current] \
                if policy.sync_deletes else []
        upserts = [FileRecord(k, blob, size, now, now, policy.file_expiry(relative_to(k, root), now))
                   for k, (blob, size) in found.items()
                   if base.get(k) != blob]
        context_expiry = None
        if policy.lifecycle_days is not None and "" in policy.recycle_paths:
            context_expiry = now + policy.lifecycle_days * 86400
        if upserts or deletes or context_expiry is not None:
            growth = sum(f.size for f in upserts) - sum(current[k].size for k in {*deletes, *(f.path for f in upserts)}
                                                        if k in current)
            self.check_quota(owner, growth)
            self.store.commit(binding.context_id, upserts, deletes, when=now, expires_at=context_expiry)
        for k in in_scope:
            base.pop(k, None)
        base.update({k: blob for k, (blob, _) in found.items()})
        self.store.put_binding(binding)


ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def selected(rel: str, include: list[str], exclude: list[str]) -> bool:
    """A file (relative to the synced root) is synced: under an include (if any), under no exclude."""
    def below(base: str) -> bool:
        return base == "" or rel == base or rel.startswith(base + "/")

    if include and not any(below(base) for base in include):
        return False
    return not any(base and below(base) for base in exclude)


def could_contain(rel_dir: str, include: list[str], exclude: list[str]) -> bool:
    """A directory may hold synced files (else the walk skips it)."""
    if any(base and (rel_dir == base or rel_dir.startswith(base + "/")) for base in exclude):
        return False
    if not include:
        return True
    return any(base == "" or base == rel_dir or base.startswith(rel_dir + "/") or rel_dir.startswith(base + "/")
               for base in include)


class _WriterFile(io.RawIOBase):
    """The file face tarfile's stream mode needs over a blob writer."""

    def __init__(self, writer: BlobWriter) -> None:
        super().__init__()
        self.writer = writer

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.writer.write(chunk)
        return len(chunk)
