"""The node service of the Ray runtime: one per Ray node, pinned to it, holding that node's LocalRuntime.

The control plane (``runtime/ray_cluster.py``) talks to it two ways:

- Ray actor calls for control: ``start``/``info``, ``create``, ``destroy``, ``stats``, ``live``,
  ``prewarm``. Small messages, a few per session.
- A TCP relay the service listens on (on its node's address) for everything per call or per byte:
  a multiplexed JSON-lines *call channel* (agent ops with their events, cancellation by closing
  or a cancel line) and *port streams* (one connection per link connection, raw bytes to a port
  inside a sandbox). Tool calls, file transfers (4 MB archive chunks), CDP and WebSocket streams
  therefore never pass through Ray's object store or its scheduler.

Every relay connection starts with one JSON line ``{"token", "kind", ...}``; the token is made by
the service and handed out only through Ray (``start``/``info``), so only cluster members connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from agbox.errors import AgboxError, SandboxError, ToolTimeoutError
from agbox.runtime.base import Limits, SandboxHandle, SandboxSpec
from agbox.runtime.channel import MAX_LINE, AgentError
from agbox.runtime.local import LocalRuntime
from agbox.wirejson import same_secret

log = logging.getLogger(__name__)

# Ray custom resources a node declares (``ray start --resources``); see docs/cluster.md.
SLOTS_RESOURCE = "agbox_slots"
MEMORY_RESOURCE = "agbox_memory_mb"
IMAGE_RESOURCE_PREFIX = "agbox_image:"
# Extra seconds the control plane waits beyond an op's own timeout before it gives up on the node.
CALL_GRACE_S = 5.0


def encode_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, AgentError):
        return {"type": "agent", "kind": exc.kind, "message": exc.message, "errno": exc.errno}
    if isinstance(exc, ToolTimeoutError):
        return {"type": "timeout", "message": exc.message}
    if isinstance(exc, AgboxError):
        return {"type": "sandbox", "message": exc.message}
    return {"type": "sandbox", "message": f"node service error: {exc}"}


def decode_error(error: dict[str, Any]) -> AgboxError:
    message = str(error.get("message", "node service error"))
    if error.get("type") == "agent":
        return AgentError(str(error.get("kind", "internal")), message, error.get("errno"))
    if error.get("type") == "timeout":
        return ToolTimeoutError(message)
    return SandboxError(message)


def spec_to_dict(spec: SandboxSpec) -> dict[str, Any]:
    return {"session_id": spec.session_id, "image_id": spec.image_id, "limits": vars(spec.limits).copy(),
            "env": dict(spec.env), "hostname": spec.hostname, "ro_binds": [list(b) for b in spec.ro_binds]}


def spec_from_dict(raw: dict[str, Any]) -> SandboxSpec:
    return SandboxSpec(session_id=raw["session_id"], image_id=raw["image_id"], limits=Limits(**raw["limits"]),
                       env=dict(raw["env"]), hostname=raw["hostname"],
                       ro_binds=tuple((str(a), str(b)) for a, b in raw["ro_binds"]))


class NodeService:
    """Runs inside a Ray actor on one node (see ``ray_cluster.node_service_class``)."""

    def __init__(self, node_id: str, host: str, data_dir: str, capacity: dict[str, float],
                 warm_pool_size: int) -> None:
        self.node_id = node_id
        self.name = f"ray:{node_id[:12]}"
        self.host = host
        # Capacity from the node's Ray resources: sandbox slots, memory for sandboxes, images offered
        # (no image resource = every image).
        self.slots = int(capacity.get(SLOTS_RESOURCE, 0)) or 64
        self.memory_bytes = int(capacity.get(MEMORY_RESOURCE, 0)) * 1024 * 1024 or 1 << 62
        self.images = sorted(k.removeprefix(IMAGE_RESOURCE_PREFIX) for k in capacity
                             if k.startswith(IMAGE_RESOURCE_PREFIX))
        self.runtime = LocalRuntime(Path(data_dir), warm_pool_size=warm_pool_size)
        self.token = secrets.token_urlsafe(24)
        self.handles: dict[str, SandboxHandle] = {}
        self.reserved: dict[str, int] = {}  # session id -> memory bytes
        # Ops running per session, from every control plane's channel (a busy session is not idle).
        self.running_ops: dict[str, int] = {}
        self._server: asyncio.base_events.Server | None = None
        self._started: asyncio.Task[dict[str, Any]] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # ---- control (Ray actor methods) -------------------------------------------------------------

    async def start(self) -> dict[str, Any]:
        """Idempotent: replicas of the control plane all call it; the first one starts the node."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start())
        return await asyncio.shield(self._started)

    async def _start(self) -> dict[str, Any]:
        await self.runtime.start()
        self._server = await asyncio.start_server(self._serve, self.host, 0, limit=MAX_LINE)
        return self.info()

    def info(self) -> dict[str, Any]:
        port = self._server.sockets[0].getsockname()[1] if self._server is not None else 0
        return {"node_id": self.node_id, "node": self.name, "host": self.host, "port": port, "token": self.token,
                "slots": self.slots, "memory_bytes": self.memory_bytes, "images": self.images, "pid": os.getpid(),
                **self.usage()}

    def usage(self) -> dict[str, Any]:
        return {"used_slots": len(self.reserved), "used_memory": sum(self.reserved.values())}

    async def create(self, raw_spec: dict[str, Any]) -> dict[str, Any]:
        spec = spec_from_dict(raw_spec)
        if self.images and spec.image_id not in self.images:
            raise SandboxError(f"node {self.name} does not offer image {spec.image_id}")
        if len(self.reserved) >= self.slots:
            raise SandboxError(f"node {self.name} is full ({self.slots} sandboxes)")
        if sum(self.reserved.values()) + spec.limits.memory_bytes > self.memory_bytes:
            raise SandboxError(f"node {self.name} has no memory left for {spec.image_id}")
        self.reserved[spec.session_id] = spec.limits.memory_bytes
        try:
            handle = await self.runtime.create(spec)
        except BaseException:
            self.reserved.pop(spec.session_id, None)
            raise
        self.handles[spec.session_id] = handle
        return {"details": handle.details, **self.usage()}

    async def prewarm(self, raw_spec: dict[str, Any]) -> None:
        spec = spec_from_dict(raw_spec)
        if not self.images or spec.image_id in self.images:
            await self.runtime.prewarm(spec)

    async def destroy(self, session_id: str) -> dict[str, Any]:
        handle = self.handles.pop(session_id, None)
        self.reserved.pop(session_id, None)
        if handle is not None:
            await self.runtime.destroy(handle)
        return self.usage()

    async def stats(self, session_id: str) -> dict[str, Any]:
        return vars(await self.runtime.stats(self._handle(session_id))).copy()

    async def live(self) -> dict[str, Any]:
        """Sessions whose sandbox still runs here (ended ones are dropped), with the node's usage."""
        for session_id, handle in list(self.handles.items()):
            if not self.runtime.alive(handle):
                await self.destroy(session_id)
        return {"sessions": sorted(self.handles), "busy": sorted(k for k, v in self.running_ops.items() if v),
                **self.usage()}

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        self.handles.clear()
        self.reserved.clear()
        await self.runtime.close()

    def _handle(self, session_id: str) -> SandboxHandle:
        handle = self.handles.get(session_id)
        if handle is None or not self.runtime.alive(handle):
            raise SandboxError("the sandbox has ended")
        return handle

    # ---- the relay -------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            header = json.loads(await asyncio.wait_for(reader.readline(), 10) or b"{}")
            if not same_secret(header.get("token"), self.token):
                await _send(writer, {"ok": False, "error": "bad relay token"})
                return
            if header.get("kind") == "calls":
                await _send(writer, {"ok": True})
                await self._serve_calls(reader, writer)
            elif header.get("kind") == "port":
                await self._serve_port(str(header.get("session")), int(header.get("port", 0)), reader, writer)
            else:
                await _send(writer, {"ok": False, "error": "unknown relay kind"})
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_calls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        running: dict[int, asyncio.Task[None]] = {}

        def write(message: dict[str, Any]) -> None:
            # write() is synchronous, so events and answers leave in the order they were made.
            writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

        async def run(call_id: int, request: dict[str, Any]) -> None:
            def on_event(event: dict[str, Any]) -> None:
                write({"id": call_id, "event": event})

            session_id = str(request.get("session"))
            self.running_ops[session_id] = self.running_ops.get(session_id, 0) + 1
            try:
                handle = self._handle(session_id)
                result = await self.runtime.call(handle, str(request["op"]), dict(request.get("args") or {}),
                                                 timeout_s=float(request.get("timeout", 60)),
                                                 on_event=on_event if request.get("events") else None)
                write({"id": call_id, "result": result})
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                write({"id": call_id, "error": encode_error(exc)})
            finally:
                running.pop(call_id, None)
                left = self.running_ops.get(session_id, 1) - 1
                if left > 0:
                    self.running_ops[session_id] = left
                else:
                    self.running_ops.pop(session_id, None)
            with contextlib.suppress(ConnectionError):
                await writer.drain()

        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                request = json.loads(line)
                if "cancel" in request:
                    target = running.get(int(request["cancel"]))
                    if target is not None:
                        target.cancel()
                    continue
                call_id = int(request["id"])
                running[call_id] = asyncio.get_running_loop().create_task(run(call_id, request))
        finally:
            # The control plane went away: its calls are cancelled (the agent stops the ops).
            for task in list(running.values()):
                task.cancel()

    async def _serve_port(self, session_id: str, port: int, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            inner = await self.runtime.connect_port(self._handle(session_id), port)
        except AgboxError as exc:
            await _send(writer, {"ok": False, "error": exc.message})
            return
        except OSError as exc:
            await _send(writer, {"ok": False, "error": str(exc), "errno": exc.errno})
            return
        await _send(writer, {"ok": True})
        inner_reader, inner_writer = await asyncio.open_connection(sock=inner)
        try:
            await pipe_both(reader, writer, inner_reader, inner_writer)
        finally:
            inner_writer.close()


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


async def pipe_both(a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter,
                    b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter) -> None:
    """Copy bytes both ways until both directions ended (half-closes pass through)."""

    async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(256 * 1024):
                sink.write(chunk)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except (ConnectionError, OSError):
            pass

    await asyncio.gather(copy(a_reader, b_writer), copy(b_reader, a_writer))
