"""Contexts: named, persistent file stores of an API key, synced into and out of sessions.

Model
-----
A context is a manifest ``key -> blob`` (store/contexts.py) over a content-addressed blob store
(services/context_files.py). Keys are AGB's: a file's absolute path in the sandbox it came from
(services/sync_policy.py). Every change (a sync out of a session, a pre-signed PUT, a file delete, a
clear) is ONE database transaction over the manifest, made only after its blobs are durable, so a
context is always some complete version; a killed server leaves the last committed one.

A session binds a context at a mount path (``persistenceDataList``) and receives the files keyed
under that path (or under its mapping policy's path). The internal ``file_transfer`` context of a
session is bound at ``/`` (what ``session.file.upload/download`` use).

Moving files is services/context_transfer.py (tar streams through the sandbox's agent; the host
never opens a sandbox path). Concurrency: a sync out of a session is a 3-way merge against the files
that session last exchanged with the context, so two sessions syncing the same context keep each
other's changes to different files; for the same file the later commit wins, whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

from agbox.errors import AgboxError, ContextNotFoundError, InvalidRequestError, SessionNotFoundError
from agbox.models import ACTIVE_STATUSES, SessionRecord
from agbox.services.context_files import BlobStore, read_chunks
from agbox.services.context_transfer import ContextTransfer
from agbox.services.paging import paginate
from agbox.services.sessions import SessionService
from agbox.services.sync_policy import Policy, context_key, join_key, relative_to
from agbox.services.url_signing import sign, verify
from agbox.settings import Settings
from agbox.store.contexts import Binding, ContextRecord, ContextStore, FileRecord, TaskRecord
from agbox.wirejson import loads

log = logging.getLogger(__name__)

FILE_TRANSFER = "file_transfer"
FILE_TRANSFER_PATH = "/tmp/file_transfer"
URL_TTL_S = 3600
MAX_OBJECT_BYTES = 16 * 1024 ** 3
# How long a SyncContext / createSession call waits for its transfers before answering "Running".
INLINE_WAIT_S = 20.0
GC_GRACE_S = 3600.0
SWEEP_INTERVAL_S = 60.0


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")



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
        # Where pre-signed object URLs point: the bulk file port when it is up (the platform sets
        # this; services/bulk_listener.py serves them there), else this server's main port.
        self.object_base: Callable[[], str | None] = lambda: None
        self.spool = settings.data_dir / "contexts" / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.transfer = ContextTransfer(store, blobs, sessions, self.spool)
        self.transfer.check_quota = self.check_quota
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

    def start(self) -> None:
        """Start the sweeper (on the platform's running loop). A timer chain rather than a long-lived
        task: nothing is left pending when the loop stops."""
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
        folder = context_key(parent or "/", allow_root=True)
        try:
            number = max(1, int(page_number or 1))
            size = max(1, min(1000, int(page_size or 50)))
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError("pageNumber and pageSize must be integers") from exc
        entries: dict[str, dict[str, Any]] = {}
        for f in self.store.files(record.id, folder):
            rest = relative_to(f.path, folder)
            if not rest:
                continue
            head, _, tail = rest.partition("/")
            path = join_key(folder, head)
            if tail:
                entry = entries.setdefault(path, {"fileId": path, "fileName": head, "filePath": path,
                                                  "fileType": "folder", "gmtCreate": iso(f.created_at),
                                                  "gmtModified": iso(f.modified_at), "size": 0,
                                                  "status": "available"})
                entry["size"] += f.size
            else:
                entries[path] = {"fileId": f.blob[:16] + ":" + path, "fileName": head, "filePath": path,
                                 "fileType": "file", "gmtCreate": iso(f.created_at),
                                 "gmtModified": iso(f.modified_at), "size": f.size, "status": "available"}
        ordered = [entries[k] for k in sorted(entries)]
        return ordered[(number - 1) * size: number * size], len(ordered)

    def delete_file(self, owner: str, context_id: Any, file_path: Any) -> None:
        record = self.owned(owner, context_id)
        key = context_key(file_path)
        doomed = [f.path for f in self.store.files(record.id, key)]
        if not doomed:
            raise ContextNotFoundError(f"file {file_path} not found in context {record.id}")
        self.store.commit(record.id, [], doomed, when=time.time())

    def file_url(self, owner: str, context_id: Any, file_path: Any, method: str) -> tuple[str, int]:
        record = self.owned(owner, context_id)
        key = context_key(file_path)
        if method == "GET" and not any(f.path == key for f in self.store.files(record.id, key)):
            raise ContextNotFoundError(f"file {file_path} not found in context {record.id}")
        expires = int(time.time()) + URL_TTL_S
        token = sign(self.secret, {"c": record.id, "p": key, "m": method, "e": expires})
        return f"{self.object_base() or self.settings.base_url}/context-objects/{token}", expires

    def check_url(self, token: str, method: str) -> tuple[ContextRecord, str]:
        claims = verify(self.secret, token)
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
        if path.startswith("/"):
            return context_key(path, allow_root=True)
        return join_key("/home/user", context_key(path, allow_root=True).lstrip("/"))

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
            await self.transfer.mkdir(record, path)

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
            target = context_key(str(path), allow_root=True)
            candidates = [b for b in bindings if b.context_id == context_id
                          and (b.path == "/" or target == b.path or target.startswith(b.path + "/"))]
            if not candidates:
                raise InvalidRequestError(f"context {context_id} is not mounted at {path} in this session")
            binding = max(candidates, key=lambda b: len(b.path))
            scope = relative_to(target, binding.path)
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
                    await self.transfer.download(record, current, scope)
                else:
                    await self.transfer.upload(record, current, scope)
        except Exception as exc:
            status = "Failed"
            error = exc.message if isinstance(exc, AgboxError) else f"internal error during {kind}; see the server log"
            if not isinstance(exc, AgboxError):
                log.exception("context %s of session %s failed", kind, record.id)
        self.store.put_task(TaskRecord(record.id, binding.context_id, reported_path, kind, status, error, started,
                                       int(time.time() * 1000)))

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
