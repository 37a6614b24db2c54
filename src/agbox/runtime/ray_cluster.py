"""The Ray runtime: sandboxes on the nodes of a Ray cluster, one node service per node.

The control plane (this process, a Ray driver) keeps a view of the cluster:

- Discovery: every ``DISCOVER_INTERVAL_S`` it reads Ray's node table; each live node that declares
  the ``agbox_slots`` resource gets a node service: a detached, named actor
  (``agbox-node-<node id>``) pinned to the node with a hard node-affinity strategy and holding the
  node's LocalRuntime (``runtime/ray_node.py``). ``get_if_exists`` makes control-plane replicas share
  one service per node, and the service outlives any replica.
- Placement: a node must offer the image (``agbox_image:<id>`` resources; none = all images) and
  have a free sandbox slot and the image's memory under its ``agbox_memory_mb``; among those the
  node with the most free slots wins. The node service is the authority (it refuses when full, and
  the next node is tried), so replicas placing at the same moment cannot over-fill a node.
- Tool calls and port streams go over the node service's TCP relay (one multiplexed call channel
  per node, one connection per port stream), never through Ray's object store; Ray carries only
  control calls (create, destroy, stats, liveness).
- Failure: a node is lost when Ray reports it dead, when its service's actor calls fail, or when
  its relay drops and cannot be reached again. Its sessions then read as not alive with the end
  reason "node lost", and the lifecycle sweep ends them within a sweep interval.

Local clusters on loopback only (tests, one machine): set ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
so Ray keeps 127.0.0.1 instead of resolving it to the machine's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import itertools
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agbox.errors import LimitExceededError, SandboxError
from agbox.runtime.base import EventCallback, LimitEvents, Runtime, SandboxHandle, SandboxSpec, SandboxStats
from agbox.runtime.channel import MAX_LINE
from agbox.runtime.ray_node import (
    CALL_GRACE_S,
    SLOTS_RESOURCE,
    NodeService,
    decode_error,
    spec_to_dict,
)

log = logging.getLogger(__name__)

NAMESPACE = "agbox"
DISCOVER_INTERVAL_S = 2.0
LIVENESS_INTERVAL_S = 1.0
# Actor calls that do not answer in this long count as a failed liveness check; this many in a row
# (or a relay that cannot be reached again) make the node lost.
LIVENESS_TIMEOUT_S = 3.0
LIVENESS_FAILURES = 2
NODE_LOST = "node lost"

# Typed loosely: Ray's actor handles are built at run time.
NodeActor: Any = ray.remote(NodeService)


class CallChannel:
    """One multiplexed JSON-lines connection to a node service's relay (see ray_node.py)."""

    def __init__(self, node: RayNode, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.node = node
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: dict[int, EventCallback] = {}
        self.closed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read_loop(), name=f"ray-channel-{node.name}")

    @classmethod
    async def open(cls, node: RayNode, timeout_s: float = 5.0) -> CallChannel:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(node.host, node.port, limit=MAX_LINE),
                                                timeout_s)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(json.dumps({"token": node.token, "kind": "calls"}).encode() + b"\n")
        await writer.drain()
        answer = json.loads(await asyncio.wait_for(reader.readline(), timeout_s) or b"{}")
        if not answer.get("ok"):
            writer.close()
            raise SandboxError(f"node {node.name} refused the call channel: {answer.get('error')}")
        return cls(node, reader, writer)

    async def _read_loop(self) -> None:
        try:
            while line := await self._reader.readline():
                message = json.loads(line)
                call_id = message.get("id")
                if "event" in message:
                    callback = self._events.get(call_id)
                    if callback is not None:
                        callback(message["event"])
                    continue
                future = self._pending.pop(call_id, None)
                self._events.pop(call_id, None)
                if future is None or future.done():
                    continue
                if "error" in message:
                    future.set_exception(decode_error(message["error"]))
                else:
                    future.set_result(message.get("result"))
        except (ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            self.closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(SandboxError(f"the connection to node {self.node.name} was lost"))
            self._pending.clear()
            self._events.clear()
            self.node.on_channel_closed(self)

    async def call(self, session_id: str, op: str, args: dict[str, Any], timeout_s: float,
                   on_event: EventCallback | None) -> Any:
        if self.closed.is_set():
            raise SandboxError(f"the connection to node {self.node.name} was lost")
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        if on_event is not None:
            self._events[call_id] = on_event
        request = {"id": call_id, "session": session_id, "op": op, "args": args, "timeout": timeout_s,
                   "events": on_event is not None}
        self._writer.write(json.dumps(request, separators=(",", ":")).encode() + b"\n")
        try:
            await self._writer.drain()
            return await asyncio.wait_for(asyncio.shield(future), timeout_s + CALL_GRACE_S)
        except TimeoutError:
            raise SandboxError(f"node {self.node.name} did not answer {op} in time") from None
        except asyncio.CancelledError:
            # The node cancels the op (the agent stops it), as a local cancellation would.
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._writer.write(json.dumps({"cancel": call_id}).encode() + b"\n")
            raise
        finally:
            self._pending.pop(call_id, None)
            self._events.pop(call_id, None)

    def close(self) -> None:
        self._writer.close()
        self._task.cancel()


@dataclasses.dataclass(eq=False)
class RayNode:
    """The control plane's view of one node and its service."""

    runtime: RayRuntime
    node_id: str
    name: str
    actor: Any
    host: str
    port: int
    token: str
    slots: int
    memory_bytes: int
    images: list[str]
    used_slots: int = 0
    used_memory: int = 0
    lost: bool = False
    # Sessions the node reported running, and when that report was asked for.
    sessions: set[str] = dataclasses.field(default_factory=set)
    busy: set[str] = dataclasses.field(default_factory=set)
    reported_at: float = 0.0
    failures: int = 0
    channel: CallChannel | None = None
    _opening: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    def offers(self, image_id: str) -> bool:
        return not self.images or image_id in self.images

    def free_slots(self) -> int:
        return self.slots - self.used_slots

    def apply_usage(self, usage: dict[str, Any]) -> None:
        self.used_slots = int(usage.get("used_slots", self.used_slots))
        self.used_memory = int(usage.get("used_memory", self.used_memory))

    async def ensure_channel(self) -> CallChannel:
        if self.lost:
            raise SandboxError(f"node {self.name} was lost")
        if self.channel is not None and not self.channel.closed.is_set():
            return self.channel
        async with self._opening:
            if self.channel is None or self.channel.closed.is_set():
                self.channel = await CallChannel.open(self)
            return self.channel

    def on_channel_closed(self, channel: CallChannel) -> None:
        if not self.lost and not self.runtime.closing:
            self.runtime.background(self.runtime.check_node(self, reason="its relay connection dropped"))


class RayRuntime(Runtime):
    name = "ray"
    sessions_outlive_control_plane = True

    def __init__(self, address: str, data_dir: Path, warm_pool_size: int = 2, node_data_dir: str | None = None) -> None:
        self.address = address
        self.data_dir = data_dir
        self.warm_pool_size = warm_pool_size
        # Where each node keeps its sandboxes' files (a path on that node; one subdirectory per node).
        self.node_data_dir = node_data_dir or str(data_dir / "nodes")
        self.nodes: dict[str, RayNode] = {}  # by node id
        self.by_name: dict[str, RayNode] = {}
        self.closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._prewarm_specs: list[SandboxSpec] = []

    # ---- cluster membership ----------------------------------------------------------------------

    def manages(self, node: str) -> bool:
        return node.startswith("ray:")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._connect)
        await self.discover()
        if not self.nodes:
            log.warning("no Ray node declares the %s resource yet; sessions wait for one to join", SLOTS_RESOURCE)
        self.background(self._watch())

    def _connect(self) -> None:
        if not ray.is_initialized():
            ray.init(address=self.address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False,
                     configure_logging=False)

    def background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def discover(self) -> None:
        """Start (or find) the service of every node that joined; forget nodes Ray reports dead."""
        table = await asyncio.get_running_loop().run_in_executor(None, ray.nodes)
        joining = []
        for entry in table:
            node_id = entry["NodeID"]
            if not entry.get("Alive"):
                known = self.nodes.get(node_id)
                if known is not None and not known.lost:
                    self.mark_lost(known, "Ray reports the node dead")
                continue
            resources = entry.get("Resources") or {}
            if SLOTS_RESOURCE not in resources or (node_id in self.nodes and not self.nodes[node_id].lost):
                continue
            joining.append(self._join_logged(node_id, entry["NodeManagerAddress"], resources))
        # Node services start side by side (each is a new worker process on its node).
        await asyncio.gather(*joining)

    async def _join_logged(self, node_id: str, host: str, resources: dict[str, float]) -> None:
        try:
            await self._join(node_id, host, resources)
        except Exception as exc:
            log.warning("node %s: its service did not start: %s", node_id[:12], exc)

    async def _join(self, node_id: str, host: str, resources: dict[str, float]) -> None:
        actor = NodeActor.options(
            name=f"agbox-node-{node_id}", namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            num_cpus=0, max_concurrency=1000, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(node_id, host, f"{self.node_data_dir}/{node_id[:12]}", resources, self.warm_pool_size)
        info = await asyncio.wait_for(actor.start.remote(), 60)
        node = RayNode(self, node_id, info["node"], actor, info["host"], int(info["port"]), info["token"],
                       int(info["slots"]), int(info["memory_bytes"]), list(info["images"]))
        node.apply_usage(info)
        node.reported_at = time.time()
        await node.ensure_channel()
        self.nodes[node_id] = node
        self.by_name[node.name] = node
        log.info("node %s joined (%s:%d, %d slots, images %s)", node.name, node.host, node.port, node.slots,
                 node.images or "all")
        for spec in self._prewarm_specs:
            if node.offers(spec.image_id):
                self.background(self._prewarm_on(node, spec))

    async def _watch(self) -> None:
        last_discover = time.monotonic()
        while not self.closing:
            await asyncio.sleep(LIVENESS_INTERVAL_S)
            await asyncio.gather(*(self.check_node(n) for n in list(self.nodes.values()) if not n.lost),
                                 return_exceptions=True)
            if time.monotonic() - last_discover >= DISCOVER_INTERVAL_S:
                last_discover = time.monotonic()
                with contextlib.suppress(Exception):
                    await self.discover()

    async def check_node(self, node: RayNode, reason: str = "") -> None:
        asked_at = time.time()
        try:
            report = await asyncio.wait_for(node.actor.live.remote(), LIVENESS_TIMEOUT_S)
            if reason:  # the relay dropped but the service answers: open a new channel
                await node.ensure_channel()
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            self.mark_lost(node, f"its service is gone ({type(exc).__name__})")
            return
        except Exception as exc:
            node.failures += 1
            if reason or node.failures >= LIVENESS_FAILURES:
                self.mark_lost(node, reason or f"no answer ({exc or type(exc).__name__})")
            return
        node.failures = 0
        node.apply_usage(report)
        node.sessions = set(report["sessions"])
        node.busy = set(report.get("busy", ()))
        node.reported_at = asked_at

    def mark_lost(self, node: RayNode, why: str) -> None:
        if node.lost:
            return
        node.lost = True
        log.warning("node %s lost: %s; its %d sessions end", node.name, why, len(node.sessions))
        if node.channel is not None:
            node.channel.close()
        self.nodes.pop(node.node_id, None)
        # by_name keeps the lost node so its sessions read as "node lost" until they are ended.
        with contextlib.suppress(Exception):
            ray.kill(node.actor, no_restart=True)

    # ---- sandboxes -------------------------------------------------------------------------------

    def _node(self, handle: SandboxHandle) -> RayNode:
        node = self.by_name.get(handle.node)
        if node is None or node.lost:
            raise SandboxError(f"the session's node {handle.node} was lost")
        return node

    def place(self, spec: SandboxSpec) -> list[RayNode]:
        """Candidate nodes for a sandbox, best first."""
        fits = [n for n in self.nodes.values() if not n.lost and n.offers(spec.image_id) and n.free_slots() > 0
                and n.used_memory + spec.limits.memory_bytes <= n.memory_bytes]
        return sorted(fits, key=lambda n: (-n.free_slots(), n.used_memory))

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        candidates = self.place(spec)
        if not candidates:
            offering = [n.name for n in self.nodes.values() if n.offers(spec.image_id)]
            raise LimitExceededError(f"no node has room for {spec.image_id} "
                                     f"({len(self.nodes)} nodes, {len(offering)} offer the image)")
        errors = []
        for node in candidates:
            try:
                answer = await node.actor.create.remote(spec_to_dict(spec))
            except ray.exceptions.RayTaskError as exc:
                errors.append(f"{node.name}: {exc.cause}")
                continue
            except ray.exceptions.RayActorError:
                self.mark_lost(node, "its service died during a create")
                errors.append(f"{node.name}: node lost")
                continue
            node.apply_usage(answer)
            node.sessions.add(spec.session_id)
            details = {**answer["details"], "ray_node_id": node.node_id, "created_at": time.time()}
            return SandboxHandle(spec.session_id, node.name, details)
        raise SandboxError("no node could start the sandbox: " + "; ".join(errors))

    async def call(self, handle: SandboxHandle, op: str, args: dict[str, Any], *, timeout_s: float,
                   on_event: EventCallback | None = None) -> Any:
        channel = await self._node(handle).ensure_channel()
        return await channel.call(handle.session_id, op, args, timeout_s, on_event)

    async def cancel(self, handle: SandboxHandle, request_id: int) -> None:
        """Calls are cancelled by cancelling their task (the channel tells the node)."""

    async def stats(self, handle: SandboxHandle) -> SandboxStats:
        node = self._node(handle)
        try:
            raw = await node.actor.stats.remote(handle.session_id)
        except ray.exceptions.RayTaskError as exc:
            raise SandboxError(str(getattr(exc.cause, "message", exc.cause))) from None
        return SandboxStats(**raw)

    async def destroy(self, handle: SandboxHandle) -> None:
        node = self.by_name.get(handle.node)
        if node is None or node.lost:
            return  # its sandboxes died with the node service
        node.sessions.discard(handle.session_id)
        try:
            node.apply_usage(await asyncio.wait_for(node.actor.destroy.remote(handle.session_id), 30))
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            self.mark_lost(node, "its service died during a destroy")

    async def reattach(self, handle: SandboxHandle) -> bool:
        node = self.by_name.get(handle.node)
        if node is None or node.lost:
            return False
        await self.check_node(node)
        return handle.session_id in node.sessions

    def alive(self, handle: SandboxHandle) -> bool:
        node = self.by_name.get(handle.node)
        if node is None or node.lost:
            return False
        if handle.session_id in node.sessions:
            return True
        # Not in the node's last report: dead only if that report was asked for after the sandbox
        # started (another replica may have just created it).
        return float(handle.details.get("created_at", 0)) >= node.reported_at

    def busy(self, handle: SandboxHandle) -> bool:
        node = self.by_name.get(handle.node)
        return node is not None and handle.session_id in node.busy

    def end_reason(self, handle: SandboxHandle, since: LimitEvents | None = None) -> str:
        node = self.by_name.get(handle.node)
        return NODE_LOST if node is None or node.lost else "sandbox ended"

    def node_of(self, handle: SandboxHandle) -> dict[str, Any]:
        node = self.by_name.get(handle.node)
        return {"node": handle.node, "host": node.host if node else "", "lost": node is None or node.lost}

    async def prewarm(self, spec: SandboxSpec) -> None:
        self._prewarm_specs.append(spec)
        await asyncio.gather(*(self._prewarm_on(n, spec) for n in self.nodes.values() if n.offers(spec.image_id)),
                             return_exceptions=True)

    async def _prewarm_on(self, node: RayNode, spec: SandboxSpec) -> None:
        with contextlib.suppress(Exception):
            await node.actor.prewarm.remote(spec_to_dict(spec))

    async def connect_port(self, handle: SandboxHandle, port: int) -> socket.socket:
        node = self._node(handle)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in node.host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, (node.host, node.port))
            header = {"token": node.token, "kind": "port", "session": handle.session_id, "port": port}
            await loop.sock_sendall(sock, json.dumps(header).encode() + b"\n")
            answer = b""
            # Byte by byte up to the newline: what follows belongs to the stream.
            while not answer.endswith(b"\n"):
                byte = await loop.sock_recv(sock, 1)
                if not byte:
                    raise ConnectionResetError(f"node {node.name} closed the port stream")
                answer += byte
            reply = json.loads(answer)
        except BaseException:
            sock.close()
            raise
        if not reply.get("ok"):
            sock.close()
            if reply.get("errno") == errno.ECONNREFUSED:
                raise ConnectionRefusedError(errno.ECONNREFUSED, str(reply.get("error")))
            raise SandboxError(str(reply.get("error")))
        return sock

    async def close(self) -> None:
        """Stop watching; the node services and their sandboxes keep running (other replicas, or this
        one restarted, serve them). ``shutdown_cluster`` ends them."""
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        for node in list(self.by_name.values()):
            if node.channel is not None:
                node.channel.close()
        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(None, ray.shutdown)

    async def shutdown_nodes(self) -> None:
        """End every node service and its sandboxes (operator action, tests)."""
        for node in list(self.nodes.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(node.actor.close.remote(), 30)
            with contextlib.suppress(Exception):
                ray.kill(node.actor, no_restart=True)
