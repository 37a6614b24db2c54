"""Contexts: named, persistent file stores of an API key, synced into and out of sessions.

Model
-----
A context is a manifest ``path -> blob`` (store/contexts.py) over a content-addressed blob store
(services/context_files.py). Every change (a sync out of a session, a pre-signed PUT, a file delete,
a clear) is ONE database transaction over the manifest, made only after its blobs are durable, so a
context is always some complete version; a killed server leaves the last committed one.

A session binds a context at a mount path (``persistenceDataList``); context file ``a/b.txt`` is
sandbox file ``<mount>/a/b.txt``. The internal ``file_transfer`` context of a session is bound at
``/`` so its keys are absolute sandbox paths (what ``session.file.upload/download`` send).

Moving files: always through the sandbox's agent (ops_archive.py) as tar streams in chunks; the host
never opens a path inside a sandbox, and never unpacks a sandbox-made tar onto its own disk (members
go straight into blobs), so a sandbox's symlinks cannot reach host files.

Concurrency: a sync out of a session is a 3-way merge against the files that session last exchanged
with the context (its "base"): only files the session added, changed or deleted are applied. Two
sessions syncing the same context at once therefore keep each other's changes to different files;
for the same file the later commit wins, whole (last writer wins per file). Never a mix of bytes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import json
import logging
import os
import secrets
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agbox.errors import AgboxError, ContextNotFoundError, InvalidRequestError, SessionNotFoundError
from agbox.models import ACTIVE_STATUSES, SessionRecord
from agbox.services.context_files import BlobStore, read_chunks
from agbox.services.paging import paginate
from agbox.services.sessions import SessionService
from agbox.settings import Settings
from agbox.store.contexts import Binding, ContextRecord, ContextStore, FileRecord, TaskRecord
from agbox.wirejson import clip, loads, same_secret

log = logging.getLogger(__name__)

LIFECYCLE_DAYS: dict[str, int | None] = {
    "Lifecycle_1Day": 1, "Lifecycle_3Days": 3, "Lifecycle_5Days": 5, "Lifecycle_10Days": 10,
    "Lifecycle_15Days": 15, "Lifecycle_30Days": 30, "Lifecycle_90Days": 90, "Lifecycle_180Days": 180,
    "Lifecycle_360Days": 360, "Lifecycle_Forever": None,
}
FILE_TRANSFER = "file_transfer"
FILE_TRANSFER_PATH = "/tmp/file_transfer"
OWN_ARCHIVE = ".agbox-archive.tar"
CHUNK = 4 * 1024 * 1024
URL_TTL_S = 3600
MAX_OBJECT_BYTES = 16 * 1024 ** 3
# How long a SyncContext / createSession call waits for its transfers before answering "Running".
INLINE_WAIT_S = 20.0
OP_TIMEOUT_S = 300.0
GC_GRACE_S = 3600.0
SWEEP_INTERVAL_S = 60.0


def norm_key(path: Any, *, allow_root: bool = False) -> str:
    """A context file path as stored: relative, '/'-separated, no '.', '..' or empty parts."""
    if not isinstance(path, str):
        raise InvalidRequestError("file path must be a string")
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidRequestError(f"'..' is not allowed in a context path: {path!r}")
    key = "/".join(parts)
    if not key and not allow_root:
        raise InvalidRequestError("file path is required")
    return key


def under(key: str, base: str) -> bool:
    return base == "" or key == base or key.startswith(base + "/")


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class Policy:
    """The parts of a SyncPolicy that change what agbox does."""

    auto_upload: bool = True
    archive: bool = False
    auto_download: bool = True
    sync_deletes: bool = True
    extract: dict[str, Any] = dataclasses.field(default_factory=dict)
    lifecycle_days: int | None = None
    recycle_paths: list[str] = dataclasses.field(default_factory=lambda: [""])
    include: list[str] = dataclasses.field(default_factory=list)
    exclude: list[str] = dataclasses.field(default_factory=list)
    mapping: str = ""

    @classmethod
    def parse(cls, raw: Any) -> Policy:
        if raw in (None, ""):
            return cls()
        if isinstance(raw, str):
            raw = loads(raw, "policy (SyncPolicy JSON)")
        if not isinstance(raw, dict):
            raise InvalidRequestError("policy must be a JSON object (SyncPolicy)")

        def listed(value: Any, what: str) -> list[Any]:
            if value in (None, ""):
                return []
            if not isinstance(value, list):
                raise InvalidRequestError(f"policy: {what} must be a list")
            return value

        def section(name: str) -> dict[str, Any]:
            value = raw.get(name)
            return value if isinstance(value, dict) else {}

        upload, download = section("uploadPolicy"), section("downloadPolicy")
        recycle, bw = section("recyclePolicy"), section("bwList")
        lifecycle = recycle.get("lifecycle") or "Lifecycle_Forever"
        if not isinstance(lifecycle, str) or lifecycle not in LIFECYCLE_DAYS:
            raise InvalidRequestError(f"unknown lifecycle {clip(lifecycle, 60)}")
        policy = cls(
            auto_upload=upload.get("autoUpload", True) is not False,
            archive=upload.get("uploadMode") == "Archive",
            auto_download=download.get("autoDownload", True) is not False,
            sync_deletes=section("deletePolicy").get("syncLocalFile", True) is not False,
            extract={k: v for k, v in section("extractPolicy").items()
                     if k in ("extract", "deleteSrcFile", "extractToCurrentFolder")},
            lifecycle_days=LIFECYCLE_DAYS[lifecycle],
            recycle_paths=[norm_key(p, allow_root=True) for p in (listed(recycle.get("paths"), "recyclePolicy.paths")
                                                                  or [""])],
            mapping=str(section("mappingPolicy").get("path") or ""),
        )
        for white in listed(bw.get("whiteLists"), "bwList.whiteLists"):
            if not isinstance(white, dict):
                continue
            path = norm_key(str(white.get("path") or ""), allow_root=True)
            if path:
                policy.include.append(path)
            for excluded in listed(white.get("excludePaths"), "whiteLists.excludePaths"):
                rel = norm_key(str(excluded), allow_root=True)
                rel = rel if not path or under(rel, path) else f"{path}/{rel}"
                if rel:
                    policy.exclude.append(rel)
        return policy

    def selects(self, key: str) -> bool:
        if self.include and not any(under(key, base) for base in self.include):
            return False
        return not any(under(key, base) for base in self.exclude)

    def file_expiry(self, key: str, now: float) -> float | None:
        if self.lifecycle_days is None or not any(under(key, base) for base in self.recycle_paths):
            return None
        return now + self.lifecycle_days * 86400


def _rebase(paths: list[str], scope: str) -> tuple[list[str], bool]:
    """Paths relative to the mount -> relative to ``scope``; the flag says a path covers all of it."""
    out: list[str] = []
    covers = False
    for path in paths:
        if under(scope, path):
            covers = True
        elif under(path, scope):
            out.append(path[len(scope) + 1:] if scope else path)
    return out, covers



@dataclasses.dataclass(frozen=True)
class PlannedMount:
    """One checked ``persistenceDataList`` item: the context, the path as sent, where it mounts."""

    context: ContextRecord
    path: str
    mount: str
    policy_doc: dict[str, Any]
    policy: Policy

class ContextService:
    def __init__(self, settings: Settings, store: ContextStore, blobs: BlobStore, sessions: SessionService,
                 secret: bytes) -> None:
        self.settings = settings
        self.store = store
        self.blobs = blobs
        self.sessions = sessions
        self.secret = secret
        self.spool = settings.data_dir / "contexts" / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self._session_locks: dict[str, asyncio.Lock] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[Any]] = set()
        blobs.cleanup()
        for entry in os.scandir(self.spool):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        # A clear interrupted by a restart is finished now (clearing is one transaction).
        for record in store.contexts(kind=None):
            if record.state != "available":
                store.commit(record.id, [], [], clear=True, when=time.time())
                store.update_context(record.id, state="available")

    def ensure_started(self) -> None:
        # A timer chain rather than a long-lived task: nothing is left pending when the loop stops.
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL_S, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self.sweep, time.time())
        future.add_done_callback(_log_sweep_failure)
        self._sweeper = loop.call_later(SWEEP_INTERVAL_S, self._tick)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ---- contexts --------------------------------------------------------------------------------

    def owned(self, owner: str, context_id: Any) -> ContextRecord:
        if not isinstance(context_id, str) or not context_id.strip():
            raise InvalidRequestError("context id is required")
        record = self.store.get_context(context_id.strip())
        if record is None or record.owner != owner:
            raise ContextNotFoundError(f"context {context_id} not found")
        return record

    def list_contexts(self, owner: str, max_results: Any, next_token: Any) -> tuple[list[ContextRecord], str, int, int]:
        records = self.store.contexts(owner)
        page, token, limit = paginate(records, max_results, next_token)
        return page, token, limit, len(records)

    def get(self, owner: str, context_id: Any, name: Any, allow_create: Any) -> ContextRecord:
        create = str(allow_create).lower() == "true"
        if context_id not in (None, ""):
            if create:
                raise InvalidRequestError("id cannot be given with allowCreate=true")
            return self.owned(owner, context_id)
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequestError("an id or a name is required")
        name = name.strip()
        if len(name) > 255:
            raise InvalidRequestError("a context name is at most 255 characters")
        record = self.store.context_by_name(owner, name)
        if record is not None:
            return record
        if not create:
            raise ContextNotFoundError(f"context {name} not found")
        return self._create(owner, name)

    def _create(self, owner: str, name: str, kind: str = "") -> ContextRecord:
        now = time.time()
        record = ContextRecord(id="SdkCtx-" + secrets.token_hex(10), owner=owner, name=name, state="available",
                               kind=kind, created_at=now, last_used_at=now)
        self.store.add_context(record)
        return record

    def modify(self, owner: str, context_id: Any, name: Any) -> None:
        record = self.owned(owner, context_id)
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequestError("name is required")
        other = self.store.context_by_name(owner, name.strip())
        if other is not None and other.id != record.id:
            raise InvalidRequestError(f"a context named {name.strip()!r} already exists")
        self.store.update_context(record.id, name=name.strip())

    def delete(self, owner: str, context_id: Any) -> None:
        record = self.owned(owner, context_id)
        self.store.delete_context(record.id)

    def clear_async(self, owner: str, context_id: Any) -> None:
        record = self.owned(owner, context_id)
        self.store.update_context(record.id, state="clearing")
        self._spawn(self._clear(record.id), f"clear-{record.id}")

    async def _clear(self, context_id: str) -> None:
        self.store.commit(context_id, [], [], clear=True, when=time.time())
        self.store.update_context(context_id, state="available")

    # ---- files -----------------------------------------------------------------------------------

    def describe_files(self, owner: str, context_id: Any, parent: Any, page_number: Any,
                       page_size: Any) -> tuple[list[dict[str, Any]], int]:
        record = self.owned(owner, context_id)
        folder = norm_key(parent or "", allow_root=True)
        try:
            number = max(1, int(page_number or 1))
            size = max(1, min(1000, int(page_size or 50)))
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError("pageNumber and pageSize must be integers") from exc
        entries: dict[str, dict[str, Any]] = {}
        for f in self.store.files(record.id, folder):
            rest = f.path[len(folder) + 1:] if folder else f.path
            if not rest:
                continue
            head, _, tail = rest.partition("/")
            path = f"{folder}/{head}" if folder else head
            if tail:
                entry = entries.setdefault(path, {"fileId": path, "fileName": head, "filePath": "/" + path,
                                                  "fileType": "folder", "gmtCreate": iso(f.created_at),
                                                  "gmtModified": iso(f.modified_at), "size": 0,
                                                  "status": "available"})
                entry["size"] += f.size
            else:
                entries[path] = {"fileId": f.blob[:16] + ":" + path, "fileName": head, "filePath": "/" + path,
                                 "fileType": "file", "gmtCreate": iso(f.created_at),
                                 "gmtModified": iso(f.modified_at), "size": f.size, "status": "available"}
        ordered = [entries[k] for k in sorted(entries)]
        return ordered[(number - 1) * size: number * size], len(ordered)

    def delete_file(self, owner: str, context_id: Any, file_path: Any) -> None:
        record = self.owned(owner, context_id)
        key = norm_key(file_path)
        doomed = [f.path for f in self.store.files(record.id, key)]
        if not doomed:
            raise ContextNotFoundError(f"file {file_path} not found in context {record.id}")
        self.store.commit(record.id, [], doomed, when=time.time())

    def file_url(self, owner: str, context_id: Any, file_path: Any, method: str) -> tuple[str, int]:
        record = self.owned(owner, context_id)
        key = norm_key(file_path)
        if method == "GET" and not any(f.path == key for f in self.store.files(record.id, key)):
            raise ContextNotFoundError(f"file {file_path} not found in context {record.id}")
        expires = int(time.time()) + URL_TTL_S
        claims = json.dumps({"c": record.id, "p": key, "m": method, "e": expires}, separators=(",", ":")).encode()
        body = base64.urlsafe_b64encode(claims).decode().rstrip("=")
        signature = hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()
        return f"{self.settings.base_url}/context-objects/{body}.{signature}", expires

    def check_persistence(self, owner: str, raw: Any) -> list[PlannedMount]:
        """Every ``persistenceDataList`` item checked before a session is made (its context, mount
        path and policy); InvalidRequestError or ContextNotFoundError names the first bad item."""
        if isinstance(raw, str) and raw.strip():
            raw = loads(raw, "persistenceDataList")
        if raw in (None, "", []):
            return []
        if not isinstance(raw, list):
            raise InvalidRequestError("persistenceDataList must be a list of {contextId, path, policy}")
        plan = []
        for index, item in enumerate(raw):
            if not isinstance(item, dict):
                raise InvalidRequestError(f"persistenceDataList[{index}] must be an object {{contextId, path, policy}}")
            path = item.get("path")
            if not isinstance(path, str):
                raise InvalidRequestError(f"persistenceDataList[{index}].path must be a string")
            context = self.owned(owner, item.get("contextId"))
            mount = self._mount(path)
            policy_raw = item.get("policy")
            policy_doc = loads(policy_raw, "policy") if isinstance(policy_raw, str) and policy_raw else policy_raw
            policy = Policy.parse(policy_doc)
            plan.append(PlannedMount(context, path, mount, policy_doc if isinstance(policy_doc, dict) else {}, policy))
        return plan

    def check_url(self, token: str, method: str) -> tuple[ContextRecord, str]:
        body, _, signature = token.partition(".")
        expected = hmac.new(self.secret, body.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        if not same_secret(signature, expected):
            raise AgboxError("bad signature")
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        if claims.get("m") != method:
            raise AgboxError("this URL is for another method")
        if time.time() > float(claims.get("e", 0)):
            raise AgboxError("this URL has expired")
        record = self.store.get_context(str(claims.get("c")))
        if record is None:
            raise ContextNotFoundError("context not found")
        return record, str(claims.get("p"))

    def check_quota(self, owner: str, growth: int) -> None:
        """Refuse a change that would take the key's context storage past its limit."""
        if growth <= 0 or self.sessions.limits.for_key(owner).max_context_bytes is None:
            return
        used = sum(f.size for c in self.store.contexts(owner, kind=None) for f in self.store.files(c.id))
        self.sessions.limits.check_context_bytes(owner, used, growth)

    def commit_object(self, context_id: str, key: str, blob: str, size: int) -> None:
        now = time.time()
        context = self.store.get_context(context_id)
        if context is None:
            raise ContextNotFoundError(f"context {context_id} not found")
        replaced = sum(f.size for f in self.store.files(context_id, key) if f.path == key)
        self.check_quota(context.owner, size - replaced)
        self.store.commit(context_id, [FileRecord(key, blob, size, now, now)], [], when=now)

    def object_blob(self, context_id: str, key: str) -> FileRecord:
        for f in self.store.files(context_id, key):
            if f.path == key:
                return f
        raise ContextNotFoundError(f"file {key} not found")

    # ---- session bindings ------------------------------------------------------------------------

    async def on_create(self, record: SessionRecord, params: dict[str, Any]) -> None:
        # Checked once already, before the session was made (check_persistence via the wire).
        plan = self.check_persistence(record.owner, params.get("persistenceDataList"))
        jobs = []
        for item in plan:
            binding = Binding(record.id, item.context.id, item.mount, item.policy_doc)
            self.store.put_binding(binding)
            if item.policy.auto_download:
                jobs.append(self._start(record, binding, "", "download", item.path))
        await self._wait_inline(jobs)

    @staticmethod
    def _mount(path: str) -> str:
        if not path.strip():
            raise InvalidRequestError("a context path is required")
        key = norm_key(path, allow_root=True)
        return "/" + key if path.startswith("/") else "/home/user/" + key

    async def before_release(self, record: SessionRecord) -> None:
        try:
            jobs = []
            for binding in self.store.bindings(record.id):
                if binding.internal or not Policy.parse(binding.policy).auto_upload:
                    continue
                jobs.append(self._start(record, binding, "", "upload", binding.path))
            for job in jobs:
                with contextlib.suppress(Exception):
                    await job
        finally:
            self._forget_session(record.id)

    def _forget_session(self, session_id: str) -> None:
        for binding in self.store.bindings(session_id):
            if binding.internal:
                self.store.delete_context(binding.context_id)
        self.store.delete_bindings(session_id)
        self._session_locks.pop(session_id, None)

    def load_internal(self, owner: str, session_id: Any, types: Any) -> list[dict[str, str]]:
        record = self.sessions.get(owner, session_id)
        if isinstance(types, str):
            types = loads(types, "contextTypes") if types.strip().startswith("[") else [types]
        if types is not None and not isinstance(types, list):
            raise InvalidRequestError('contextTypes must be a list such as ["file_transfer"]')
        wanted = [str(t) for t in (types or [FILE_TRANSFER])]
        out = []
        for kind in wanted:
            if kind != FILE_TRANSFER:
                raise InvalidRequestError(f"unknown internal context type {kind!r} (supported: {FILE_TRANSFER})")
            binding = next((b for b in self.store.bindings(record.id) if b.internal), None)
            if binding is None:
                context = self._create(owner, f"{FILE_TRANSFER}-{record.id}", kind=FILE_TRANSFER)
                binding = Binding(record.id, context.id, "/", {}, internal=True)
                self.store.put_binding(binding)
                self._spawn(self._mkdir(record, FILE_TRANSFER_PATH), f"mkdir-{record.id}")
            out.append({"contextId": binding.context_id, "contextType": kind, "contextPath": FILE_TRANSFER_PATH})
        return out

    async def _mkdir(self, record: SessionRecord, path: str) -> None:
        with contextlib.suppress(AgboxError):
            await self.sessions.runtime.call(self.sessions.handle(record), "archive_mkdir", {"path": path},
                                             timeout_s=30)

    # ---- sync ------------------------------------------------------------------------------------

    async def sync(self, owner: str, session_id: Any, context_id: Any, path: Any, mode: Any) -> None:
        record = self.sessions.get(owner, session_id)
        kind = str(mode or "upload").lower()
        if kind not in ("upload", "download"):
            raise InvalidRequestError("mode must be upload or download")
        bindings = self.store.bindings(record.id)
        jobs = []
        if context_id or path:
            if not context_id or not path:
                raise InvalidRequestError("contextId and path must be given together")
            self.owned(owner, context_id)
            target = "/" + norm_key(str(path), allow_root=True)
            candidates = [b for b in bindings if b.context_id == context_id
                          and (b.path == "/" or target == b.path or target.startswith(b.path + "/"))]
            if not candidates:
                raise InvalidRequestError(f"context {context_id} is not mounted at {path} in this session")
            binding = max(candidates, key=lambda b: len(b.path))
            scope = norm_key(target[len(binding.path):], allow_root=True)
            jobs.append(self._start(record, binding, scope, kind, str(path)))
        else:
            for binding in bindings:
                if not binding.internal:
                    jobs.append(self._start(record, binding, "", kind, binding.path))
        await self._wait_inline(jobs)

    async def _wait_inline(self, jobs: list[asyncio.Task[None]]) -> None:
        if jobs:
            await asyncio.wait(jobs, timeout=INLINE_WAIT_S)

    def _start(self, record: SessionRecord, binding: Binding, scope: str, kind: str,
               reported_path: str) -> asyncio.Task[None]:
        now = int(time.time() * 1000)
        self.store.put_task(TaskRecord(record.id, binding.context_id, reported_path, kind, "Running", "", now, 0))
        return self._spawn(self._run(record, binding, scope, kind, reported_path, now),
                           f"{kind}-{record.id}-{binding.context_id}")

    async def _run(self, record: SessionRecord, binding: Binding, scope: str, kind: str, reported_path: str,
                   started: int) -> None:
        lock = self._session_locks.setdefault(record.id, asyncio.Lock())
        status, error = "Success", ""
        try:
            async with lock:
                # Re-read: an earlier task of this session may have moved the base on.
                current = next((b for b in self.store.bindings(record.id)
                                if b.context_id == binding.context_id and b.path == binding.path), binding)
                if kind == "download":
                    await self._download(record, current, scope)
                else:
                    await self._upload(record, current, scope)
        except Exception as exc:
            status = "Failed"
            error = exc.message if isinstance(exc, AgboxError) else f"internal error during {kind}; see the server log"
            if not isinstance(exc, AgboxError):
                log.exception("context %s of session %s failed", kind, record.id)
        self.store.put_task(TaskRecord(record.id, binding.context_id, reported_path, kind, status, error, started,
                                       int(time.time() * 1000)))

    async def _call(self, record: SessionRecord, op: str, args: dict[str, Any]) -> Any:
        return await self.sessions.runtime.call(self.sessions.handle(record), op, args, timeout_s=OP_TIMEOUT_S)

    async def _download(self, record: SessionRecord, binding: Binding, scope: str) -> None:
        if self.store.get_context(binding.context_id) is None:
            raise ContextNotFoundError(f"context {binding.context_id} not found")
        policy = Policy.parse(binding.policy)
        files = [f for f in self.store.files(binding.context_id, scope) if policy.selects(f.path)]
        if not files:
            if not binding.internal:  # the mount point exists even for an empty context
                await self._call(record, "archive_mkdir", {"path": binding.path})
            return
        loop = asyncio.get_running_loop()
        spool = await loop.run_in_executor(None, self._build_tar, files)
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

    def _build_tar(self, files: list[FileRecord]) -> Path:
        path = self.spool / f"down-{secrets.token_hex(8)}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for f in files:
                info = tarfile.TarInfo(f.path)
                info.size = f.size
                info.mtime = int(f.modified_at)
                info.mode = 0o644
                with self.blobs.open(f.blob) as blob:
                    tar.addfile(info, blob)
        return path

    async def _upload(self, record: SessionRecord, binding: Binding, scope: str) -> None:
        if self.store.get_context(binding.context_id) is None:
            raise ContextNotFoundError(f"context {binding.context_id} not found")
        policy = Policy.parse(binding.policy)
        include, covered = _rebase(policy.include, scope)
        exclude, excluded_all = _rebase(policy.exclude, scope)
        if excluded_all or (policy.include and not include and not covered):
            return  # nothing of this scope is synced by the policy
        root = binding.path.rstrip("/") + ("/" + scope if scope else "") or "/"
        packed = await self._call(record, "archive_pack", {"root": root, "include": [] if covered else include,
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
            loop = asyncio.get_running_loop()
            if policy.archive:
                blob, blob_size = await loop.run_in_executor(None, self._ingest_file, spool)
                found = {(f"{scope}/{OWN_ARCHIVE}" if scope else OWN_ARCHIVE): (blob, blob_size)}
            else:
                found = await loop.run_in_executor(None, self._ingest_tar, spool, scope)
        finally:
            spool.unlink(missing_ok=True)
        self._commit_upload(record.owner, binding, scope, policy, found)

    def _ingest_file(self, path: Path) -> tuple[str, int]:
        with open(path, "rb") as handle:
            return self.blobs.ingest(read_chunks(handle))

    def _ingest_tar(self, path: Path, scope: str) -> dict[str, tuple[str, int]]:
        """Blobs for the regular files of a sandbox-made tar. Nothing is unpacked onto the host's disk."""
        found: dict[str, tuple[str, int]] = {}
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                try:
                    rel = norm_key(member.name)
                except InvalidRequestError:
                    continue
                source = tar.extractfile(member)
                if source is None:
                    continue
                key = f"{scope}/{rel}" if scope else rel
                found[key] = self.blobs.ingest(read_chunks(source))
        return found

    def _commit_upload(self, owner: str, binding: Binding, scope: str, policy: Policy,
                       found: dict[str, tuple[str, int]]) -> None:
        now = time.time()
        base = binding.base
        current = {f.path: f for f in self.store.files(binding.context_id, scope)}
        in_scope = [k for k in set(base) | set(current) if under(k, scope) and policy.selects(k)]
        if policy.archive:
            deletes = [k for k in current if under(k, scope) and k not in found]
        else:
            deletes = [k for k in in_scope if k in base and k not in found and k in current] \
                if policy.sync_deletes else []
        upserts = [FileRecord(k, blob, size, now, now, policy.file_expiry(k, now))
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

    # ---- status ----------------------------------------------------------------------------------

    def info(self, owner: str, session_id: Any, context_id: Any, path: Any, task_type: Any) -> str:
        if not isinstance(session_id, str) or not session_id:
            raise InvalidRequestError("sessionId is required")
        record = self.sessions.store.get_session(session_id)
        if record is None or record.owner != owner:
            raise SessionNotFoundError(session_id)
        items = []
        for task in self.store.tasks(record.id):
            if context_id and task.context_id != context_id:
                continue
            if path and task.path != path:
                continue
            if task_type and task.task_type != task_type:
                continue
            items.append({"contextId": task.context_id, "path": task.path, "errorMessage": task.error,
                          "status": task.status, "startTime": task.start_time, "finishTime": task.finish_time,
                          "taskType": task.task_type})
        return json.dumps([{"type": "data", "data": json.dumps(items)}])

    # ---- expiry and garbage ----------------------------------------------------------------------

    def sweep(self, now: float) -> dict[str, int]:
        """Remove expired files and contexts, bindings of ended sessions, and unreferenced blobs."""
        expired_files = self.store.expire_files(now)
        expired_contexts = 0
        active = {r.id for r in self.sessions.store.sessions(statuses=ACTIVE_STATUSES)}
        for record in self.store.contexts(kind=None):
            if record.expires_at is not None and record.expires_at <= now:
                self.store.delete_context(record.id)
                expired_contexts += 1
        for record in self.store.contexts(kind=FILE_TRANSFER):
            if record.name.removeprefix(f"{FILE_TRANSFER}-") not in active:
                self.store.delete_context(record.id)
        referenced = self.store.referenced_blobs()
        removed = 0
        for key in list(self.blobs.keys(older_than=now - GC_GRACE_S)):
            if key not in referenced:
                self.blobs.delete(key)
                removed += 1
        return {"files": expired_files, "contexts": expired_contexts, "blobs": removed}

    def blob_chunks(self, blob: str) -> Iterator[bytes]:
        with self.blobs.open(blob) as handle:
            yield from read_chunks(handle)


def _log_sweep_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("context sweep failed: %s", future.exception())


def load_secret(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(secret)
    return secret
