"""The runtime interface: what the services need from a sandbox mechanism, and nothing more.

A runtime places sandboxes on a node (this machine for ``local``; a Ray node later), runs agent
requests in them, reports kernel figures and tears them down. Handles are plain data
(``SandboxHandle``) so the store can record which node holds a session and a restarted control
plane can ask the runtime to re-attach.
"""

from __future__ import annotations

import abc
import dataclasses
import socket
from collections.abc import Callable
from typing import Any

from agbox.errors import SandboxError
from agbox.runtime.sandbox_files import SandboxFiles


@dataclasses.dataclass(frozen=True)
class Limits:
    memory_bytes: int = 1024 * 1024 * 1024
    cpus: float = 1.0
    pids: int = 512
    disk_bytes: int = 2 * 1024 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class NetworkPolicy:
    """What a sandbox may reach outside itself (validated; see ``services/network.py``).

    ``internet`` is the verdict for destinations no list names. Allow entries beat deny entries. What
    the operator always blocks (the host, other sandboxes, metadata, private ranges) no policy opens.
    """

    internet: bool = True
    allow_cidrs: tuple[str, ...] = ()
    deny_cidrs: tuple[str, ...] = ()
    allow_domains: tuple[str, ...] = ()
    deny_domains: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"internet": self.internet, "allowOut": [*self.allow_cidrs, *self.allow_domains],
                "denyOut": [*self.deny_cidrs, *self.deny_domains]}


@dataclasses.dataclass(frozen=True)
class SandboxSpec:
    session_id: str
    image_id: str
    limits: Limits
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    hostname: str = "sandbox"
    # Extra read-only host paths the image needs inside (e.g. a language runtime outside /usr).
    ro_binds: tuple[tuple[str, str], ...] = ()
    # None: the runtime's default policy (or no network at all when the runtime offers none).
    network: NetworkPolicy | None = None


@dataclasses.dataclass(frozen=True)
class SandboxHandle:
    session_id: str
    node: str
    # Runtime-private facts needed to find the sandbox again (pids, cgroup paths, ...).
    details: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SandboxStats:
    cpu_count: int
    cpu_usage_ns: int
    mem_used: int
    mem_total: int
    disk_used: int
    disk_total: int
    rx_bytes: int
    tx_bytes: int
    pids: int


@dataclasses.dataclass(frozen=True)
class LimitEvents:
    """How often the kernel enforced a sandbox's limits so far (counters from its cgroup)."""

    oom_kills: int = 0  # processes killed for memory
    pids_max: int = 0  # process/thread creations refused at the pids limit


EventCallback = Callable[[dict[str, Any]], None]


class Runtime(abc.ABC):
    """A sandbox mechanism. Every method may be called concurrently for different sandboxes."""

    name: str
    # True when sandboxes get a network under a NetworkPolicy (set_network_policy, network_info work).
    offers_network: bool = False
    # True when sandboxes keep running without this process (on cluster nodes): a stopping control
    # plane then leaves its sessions to the other replicas or to its own restart (reattach).
    sessions_outlive_control_plane: bool = False

    def warm_sandboxes(self) -> int:
        """Started sandboxes waiting to be handed to a create (for telemetry)."""
        return 0

    def end_reason(self, handle: SandboxHandle, since: LimitEvents | None = None) -> str:
        """Why a sandbox that ``alive`` reports gone has ended, in words (the session's finish reason);
        limit events (out of memory, ...) after ``since`` count as the cause."""
        return "sandbox ended"

    def manages(self, node: str) -> bool:
        """Whether sessions recorded on ``node`` are this runtime's to watch, reattach and end (a
        store shared by several control planes also holds other runtimes' sessions)."""
        return node == getattr(self, "node", self.name)

    @abc.abstractmethod
    async def start(self) -> None:
        """Prepare the node (and end sandboxes that a previous process left behind)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Destroy every sandbox of this runtime and release its resources."""

    @abc.abstractmethod
    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        """Start a sandbox and return once its agent answers."""

    @abc.abstractmethod
    async def call(self, handle: SandboxHandle, op: str, args: dict[str, Any], *, timeout_s: float,
                   on_event: EventCallback | None = None) -> Any:
        """Run one agent op inside the sandbox; raises SandboxError / ToolTimeoutError."""

    @abc.abstractmethod
    async def cancel(self, handle: SandboxHandle, request_id: int) -> None:
        """Cancel a running agent op (best effort)."""

    @abc.abstractmethod
    async def stats(self, handle: SandboxHandle) -> SandboxStats:
        """Kernel figures for the sandbox."""

    @abc.abstractmethod
    async def destroy(self, handle: SandboxHandle) -> None:
        """Kill every process of the sandbox and free its files. Idempotent."""

    @abc.abstractmethod
    async def reattach(self, handle: SandboxHandle) -> bool:
        """After a control-plane restart: True if the sandbox is alive and usable again."""

    @abc.abstractmethod
    def alive(self, handle: SandboxHandle) -> bool:
        """Cheap liveness check used by the lifecycle loop."""

    def busy(self, handle: SandboxHandle) -> bool:
        """True while an op runs in the sandbox for any control plane (a session in use is not idle);
        a runtime that cannot tell says False and each control plane counts only its own calls."""
        return False

    def limit_events(self, handle: SandboxHandle) -> LimitEvents:
        """The sandbox's limit counters now (compare two readings with ``limit_note``)."""
        return LimitEvents()

    def limit_note(self, handle: SandboxHandle, since: LimitEvents) -> str | None:
        """What the kernel did to the sandbox because of its limits since ``since``, in words; None if nothing."""
        return None

    async def wait_ended(self, handle: SandboxHandle, timeout_s: float) -> bool:
        """True if the sandbox has ended (waiting up to ``timeout_s`` for an ending in progress to complete)."""
        return not self.alive(handle)

    async def prewarm(self, spec: SandboxSpec) -> None:
        """Start sandboxes for specs like this one ahead of demand (optional)."""
        return None

    async def set_network_policy(self, handle: SandboxHandle, policy: NetworkPolicy) -> dict[str, Any]:
        """Replace the sandbox's network policy; returns its network description (address, policy)."""
        raise SandboxError(f"the {self.name} runtime gives sandboxes no network")

    def network_info(self, handle: SandboxHandle) -> dict[str, Any] | None:
        """The sandbox's network (address, policy) as shown in session info; None without one."""
        return None

    def files(self, handle: SandboxHandle) -> SandboxFiles | None:
        """Direct access to the sandbox's files from this process (bulk transfers at disk speed), or
        None when only the agent can reach them (sandboxes on other machines): callers then move
        bytes through agent ops."""
        return None

    async def connect_port(self, handle: SandboxHandle, port: int) -> socket.socket:
        """A connected TCP socket to ``127.0.0.1:port`` inside the sandbox (for links)."""
        raise SandboxError(f"the {self.name} runtime cannot reach ports inside sandboxes")
