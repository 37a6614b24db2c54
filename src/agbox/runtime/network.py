"""A network per sandbox: its own namespace with a veth to the host, an address from a subnet pool, a
default route, a resolver, and two layers of nftables rules.

- The namespace is made by this (root) process with ``unshare`` on a dedicated thread and held only
  through a file descriptor: it belongs to the host's user namespace, so nothing inside the sandbox
  (not even uid 0 of its own user namespace) can change its addresses, routes or rules; and when this
  process dies the namespace, its veth pair and its rules vanish with it.
- The sandbox is started inside it (the spawner thread joins it before forking; bwrap gets
  ``--share-net``), so the network and its policy are in place before any sandbox code runs.
- Host layer (one table per server, ``inet agbox_<tag>``): what no policy opens. Sandboxes reach no
  host address (input: reject), no other sandbox, no metadata/loopback/multicast range, no private
  range unless the operator opens it, no IPv6; outbound traffic is masqueraded.
- Every block is a reject: a TCP reset for TCP (an ICMP error reaching a socket while ``connect`` still
  holds it is only a "soft" error, and the connect would wait for the 1 s SYN retry), ICMP
  admin-prohibited for everything else; a refused connection fails at once, never by a timeout.
- Sandbox layer (``inet agbox`` inside the namespace): the session's policy (allow CIDRs, addresses
  admitted by the resolver for allowed names, deny CIDRs, then the default verdict).
- DNS: a socket at 127.0.0.53:53 inside the namespace, served by this process (``runtime/dns.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from agbox.errors import SandboxError
from agbox.runtime import sysutil
from agbox.runtime.base import NetworkPolicy
from agbox.runtime.dns import LISTEN_ADDRESS, SandboxResolver, parse_upstream
from agbox.runtime.netlink import Netlink
from agbox.runtime.nftables import NftError, NftWorker, library

log = logging.getLogger(__name__)

# Host-side interface names: "agb" and the /30's address in hex. Interface names are unique on the
# host, so creating the veth is what claims an address: one taken by another agbox server (or by a
# namespace still being torn down) is skipped. Each server's host rules match its own interfaces by a
# set of names, so servers with other settings on one host do not mix.
IFNAME_PREFIX = "agb"
SANDBOX_IFNAME = "eth0"
# Never reachable, whatever the policy or the operator says: "this network", loopback, link-local
# (cloud metadata 169.254.169.254 and the like), multicast and reserved, broadcast, Azure's wireserver.
NEVER_RANGES = ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3", "255.255.255.255/32",
                "168.63.129.16/32")
# Blocked unless the operator opens a range on purpose (AGBOX_NETWORK_OPEN_RANGES).
PRIVATE_RANGES = ("10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "192.0.0.0/24",
                  "198.18.0.0/15")
READY_TIMEOUT_S = 1.0


@dataclasses.dataclass(frozen=True)
class NetworkOptions:
    """Operator settings: the pool sandbox addresses come from, upstream DNS servers (empty: the host's
    /etc/resolv.conf), private ranges opened to sandboxes, the default for ``internet``, and more ranges
    no sandbox may reach (beside the built-in ones)."""

    pool: str = "10.201.0.0/16"
    upstream_dns: tuple[str, ...] = ()
    open_ranges: tuple[str, ...] = ()
    internet: bool = True
    deny_ranges: tuple[str, ...] = ()


@dataclasses.dataclass
class SandboxNetwork:
    netns_fd: int
    policy: NetworkPolicy = dataclasses.field(default_factory=NetworkPolicy)
    host_ifname: str = ""
    address: ipaddress.IPv4Address = dataclasses.field(default_factory=lambda: ipaddress.IPv4Address(0))
    gateway: ipaddress.IPv4Address = dataclasses.field(default_factory=lambda: ipaddress.IPv4Address(0))
    configured: bool = False
    dns_socket: socket.socket | None = None
    resolver: SandboxResolver | None = None

    def describe(self) -> dict[str, object]:
        return {"address": str(self.address), "gateway": str(self.gateway), "dns": LISTEN_ADDRESS,
                "hostInterface": self.host_ifname, **self.policy.to_wire()}


def host_nameservers(path: Path = Path("/etc/resolv.conf")) -> tuple[str, ...]:
    servers: list[str] = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    servers.append(str(ipaddress.IPv4Address(parts[1])))
    return tuple(servers)


def _nft_set(values: tuple[str, ...]) -> str:
    return "{ " + ", ".join(values) + " }"


def _policy_commands(policy: NetworkPolicy, table: str = "inet agbox") -> str:
    """Rules of the sandbox layer for ``policy`` (the chain and sets already exist and are empty)."""
    lines = []
    if policy.allow_cidrs:
        lines.append(f"add element {table} allow4 {_nft_set(policy.allow_cidrs)}")
    if policy.deny_cidrs:
        lines.append(f"add element {table} deny4 {_nft_set(policy.deny_cidrs)}")
    chain = f"add rule {table} output"
    reject = "goto refuse"
    lines += [
        f'{chain} oif "lo" accept',  # links and servers inside the sandbox; the resolver
        f"{chain} meta nfproto ipv6 {reject}",
        f"{chain} ip daddr @allow4 accept",
        f"{chain} ip daddr @named4 accept",
        f"{chain} ip daddr @deny4 {reject}",
        f"{chain} accept" if policy.internet else f"{chain} {reject}",
    ]
    return "\n".join(lines) + "\n"


SANDBOX_TABLE = """
add table inet agbox
add set inet agbox allow4 { type ipv4_addr; flags interval; auto-merge; }
add set inet agbox deny4 { type ipv4_addr; flags interval; auto-merge; }
add set inet agbox named4 { type ipv4_addr; }
add chain inet agbox output { type filter hook output priority filter; policy accept; }
add chain inet agbox refuse
add rule inet agbox refuse meta l4proto tcp reject with tcp reset
add rule inet agbox refuse reject with icmpx admin-prohibited
"""


class NetworkManager:
    """Creates, re-polices and tears down sandbox networks for one runtime (one data dir)."""

    def __init__(self, tag: str, options: NetworkOptions, run_root: Path = Path("/run/agbox")) -> None:
        self.run_root = run_root
        self.options = options
        self.tag = tag
        self.table = f"agbox_{tag}"
        self.alias = f"agbox {tag}"
        self.default_policy = NetworkPolicy(internet=options.internet)
        try:
            self.pool = ipaddress.IPv4Network(options.pool)
            self.never = tuple(dict.fromkeys(
                [*NEVER_RANGES, *(str(ipaddress.IPv4Network(r, strict=False)) for r in options.deny_ranges)]))
            for raw in options.open_ranges:
                ipaddress.IPv4Network(raw, strict=False)
        except ValueError as exc:
            raise SandboxError(f"bad network setting (AGBOX_NETWORK_POOL / _OPEN_RANGES / _DENY_RANGES): {exc}") from exc
        self._slots = self.pool.num_addresses // 4
        self._cursor = 0
        self._used: set[str] = set()
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="agbox-net")
        self._host: Netlink | None = None
        self._nft: NftWorker | None = None
        self._host_netns = -1
        self.upstreams: tuple[tuple[str, int], ...] = ()

    # ---- node ------------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._prepare)

    def _prepare(self) -> None:
        """Check what networking needs (and say what is missing), remove what a crashed server of this
        data dir left, and install the host layer."""
        try:
            library()
        except OSError as exc:
            raise SandboxError(f"networking needs libnftables (Debian package nftables): {exc}. "
                               "Install it (`make install`) or turn networking off (AGBOX_NETWORK=off)") from exc
        if not os.path.exists("/proc/sys/net/ipv4/ip_forward"):
            raise SandboxError("networking needs IPv4 forwarding, which this kernel lacks; "
                               "turn networking off (AGBOX_NETWORK=off)")
        if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "1":
            try:
                Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
            except OSError as exc:
                raise SandboxError(f"networking needs IPv4 forwarding (net.ipv4.ip_forward=1) and it could not be "
                                   f"turned on ({exc.strerror}); set it on the host or turn networking off "
                                   "(AGBOX_NETWORK=off)") from exc
            log.info("turned on IPv4 forwarding (net.ipv4.ip_forward=1) for sandbox networks")
        self._check_ranges()
        upstream = self.options.upstream_dns or host_nameservers()
        try:
            self.upstreams = tuple(parse_upstream(server) for server in upstream)
        except ValueError as exc:
            raise SandboxError(f"upstream DNS servers must be IPv4 addresses (optionally :port): {upstream}") from exc
        if not self.upstreams:
            log.warning("no upstream DNS server (AGBOX_NETWORK_DNS unset and none in /etc/resolv.conf): "
                        "sandboxes can reach addresses but resolve no names")
        self._host_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._host = Netlink()
        self._remove_leftovers()
        self._nft = NftWorker()
        self._remove_dead_tables()
        try:
            self._nft.run(None, self._host_table())
        except NftError as exc:
            raise SandboxError(f"networking could not install its nftables rules (does the kernel have nf_tables "
                               f"with nat and reject?): {exc}") from exc

    def _check_ranges(self) -> None:
        if self.pool.prefixlen > 29:
            raise SandboxError(f"the subnet pool {self.pool} is too small (at least a /29)")
        for name in NEVER_RANGES:
            if self.pool.overlaps(ipaddress.IPv4Network(name)):
                raise SandboxError(f"the subnet pool {self.pool} overlaps the reserved range {name}")
        for raw in self.options.open_ranges:
            opened = ipaddress.IPv4Network(raw, strict=False)
            for name in NEVER_RANGES:
                if opened.overlaps(ipaddress.IPv4Network(name)):
                    raise SandboxError(f"{opened} cannot be opened to sandboxes: it overlaps {name}")
        # The pool must not hide a network the host already routes to (it would shadow it, or be shadowed).
        with contextlib.suppress(OSError):
            for line in Path("/proc/net/route").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[0].startswith(IFNAME_PREFIX):
                    continue
                dest = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
                mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
                route = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
                if route.prefixlen and route.overlaps(self.pool):
                    raise SandboxError(f"the subnet pool {self.pool} overlaps the host's route {route} on "
                                       f"{fields[0]}; choose another pool (AGBOX_NETWORK_POOL)")
                blocked = [ipaddress.IPv4Network(r) for r in (*self.never, *PRIVATE_RANGES)]
                if fields[2] == "00000000" and route.prefixlen and not any(route.subnet_of(b) for b in blocked):
                    log.info("sandboxes can reach the host's neighbours on %s (%s): it is not a private range; "
                                "add it to AGBOX_NETWORK_DENY_RANGES if they should not", route, fields[0])

    def _host_table(self) -> str:
        reject = "goto refuse"
        ours = "iifname @ifaces"
        opened = tuple(str(ipaddress.IPv4Network(r, strict=False)) for r in self.options.open_ranges)
        open_rule = f"add rule inet {self.table} forward {ours} ip daddr {_nft_set(opened)} accept\n" if opened else ""
        # "add" then "delete" removes a table of a crashed earlier run whether or not there is one.
        return (
            f"add table inet {self.table}\ndelete table inet {self.table}\nadd table inet {self.table}\n"
            f"add set inet {self.table} ifaces {{ type ifname; }}\n"
            f"add chain inet {self.table} refuse\n"
            f"add rule inet {self.table} refuse meta l4proto tcp reject with tcp reset\n"
            f"add rule inet {self.table} refuse reject with icmpx admin-prohibited\n"
            f"add chain inet {self.table} input {{ type filter hook input priority filter - 5; policy accept; }}\n"
            f"add rule inet {self.table} input {ours} {reject}\n"
            f"add chain inet {self.table} forward {{ type filter hook forward priority filter - 5; policy accept; }}\n"
            f'add rule inet {self.table} forward {ours} oifname "{IFNAME_PREFIX}*" {reject}\n'
            f"add rule inet {self.table} forward {ours} meta nfproto ipv6 {reject}\n"
            f"add rule inet {self.table} forward {ours} ip daddr {_nft_set(self.never)} {reject}\n"
            f"{open_rule}"
            f"add rule inet {self.table} forward {ours} ip daddr {_nft_set(PRIVATE_RANGES)} {reject}\n"
            f"add rule inet {self.table} forward oifname @ifaces ct state established,related accept\n"
            f"add rule inet {self.table} forward oifname @ifaces drop\n"
            f"add chain inet {self.table} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
            f'add rule inet {self.table} postrouting ip saddr {self.pool} oifname != "{IFNAME_PREFIX}*" masquerade\n'
        )

    def _remove_dead_tables(self) -> None:
        """Host tables of agbox servers that died (kill -9) and never restarted: a server holds an flock on
        its data dir while it lives, and its run dir (/run/agbox/<tag>) names that data dir."""
        assert self._nft is not None
        for line in self._nft.run(None, "list tables\n").splitlines():
            parts = line.split()
            if len(parts) != 3 or not parts[2].startswith("agbox_") or parts[2] == self.table:
                continue
            tag = parts[2].removeprefix("agbox_")
            try:
                data_dir = Path((self.run_root / tag / "data_dir").read_text().strip())
                fd = os.open(data_dir / "lock", os.O_RDWR)
            except OSError:
                alive = False
            else:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    alive = False
                except BlockingIOError:
                    alive = True
                finally:
                    os.close(fd)  # closing drops a lock we may have taken
            if not alive:
                with contextlib.suppress(NftError):
                    self._nft.run(None, f"delete table inet {parts[2]}\n")
                log.info("removed the network rules of a dead agbox server (%s)", parts[2])

    def _remove_leftovers(self) -> None:
        """Host ends of veths this data dir's earlier process made (normally gone with its namespaces)."""
        assert self._host is not None
        for entry in Path("/sys/class/net").glob(f"{IFNAME_PREFIX}*"):
            with contextlib.suppress(OSError):
                if (entry / "ifalias").read_text().strip() == self.alias:
                    self._host.delete_link(entry.name)

    async def close(self) -> None:
        def close_host() -> None:
            if self._nft is not None:
                with contextlib.suppress(NftError):
                    self._nft.run(None, f"delete table inet {self.table}\n")
                self._nft.close()
                self._nft = None
            if self._host is not None:
                self._host.close()
                self._host = None
            if self._host_netns >= 0:
                os.close(self._host_netns)
                self._host_netns = -1

        await asyncio.get_running_loop().run_in_executor(self._thread, close_host)
        self._thread.shutdown(wait=False)

    # ---- one sandbox -----------------------------------------------------------------------------

    async def create_namespace(self, policy: NetworkPolicy | None = None) -> SandboxNetwork:
        """Phase 1, before the sandbox starts: only the namespace (the sandbox is forked into it)."""
        net = await asyncio.get_running_loop().run_in_executor(self._thread, self._new_namespace)
        net.policy = policy or self.default_policy
        return net

    async def configure(self, net: SandboxNetwork) -> None:
        """Phase 2, while the sandbox's agent starts (no sandbox code runs before the session is handed
        out, and that waits for this): veth, addresses, route, rules and resolver."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._configure, net)
        resolver = SandboxResolver(self.upstreams, net.policy, lambda addresses: self._admit(net, addresses))
        assert net.dns_socket is not None
        await loop.create_datagram_endpoint(lambda: resolver, sock=net.dns_socket)
        net.resolver = resolver

    async def create(self, policy: NetworkPolicy | None = None) -> SandboxNetwork:
        """Both phases at once (for callers that start nothing in between)."""
        net = await self.create_namespace(policy)
        try:
            await self.configure(net)
        except BaseException:
            await self.destroy(net)
            raise
        return net

    def _next_slot(self) -> tuple[str, ipaddress.IPv4Network]:
        for _ in range(self._slots):
            index = self._cursor
            self._cursor = (self._cursor + 1) % self._slots
            subnet = ipaddress.IPv4Network((int(self.pool.network_address) + 4 * index, 30))
            name = f"{IFNAME_PREFIX}{int(subnet.network_address):08x}"
            if name not in self._used and not os.path.exists(f"/sys/class/net/{name}"):
                return name, subnet
        raise SandboxError(f"the subnet pool {self.pool} has no free address left")

    def _new_namespace(self) -> SandboxNetwork:
        """On the network thread: unshare into a new namespace, keep an fd to it, come back."""
        try:
            sysutil.unshare(sysutil.CLONE_NEWNET)
        except OSError as exc:
            raise SandboxError(f"could not create a network namespace: {exc}") from exc
        try:
            return SandboxNetwork(netns_fd=os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
        finally:
            sysutil.setns(self._host_netns, sysutil.CLONE_NEWNET)

    def _configure(self, net: SandboxNetwork) -> None:
        """On the network thread: enter the namespace, set it up, come back; the host end last."""
        assert self._host is not None
        inner: Netlink | None = None
        try:
            sysutil.setns(net.netns_fd, sysutil.CLONE_NEWNET)
            try:
                # eth0 will be made without IPv6 (no link-local address); lo keeps ::1 for local servers.
                Path("/proc/sys/net/ipv6/conf/default/disable_ipv6").write_text("1")
                inner = Netlink()
                inner.set_link("lo", up=True)
                net.dns_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                net.dns_socket.bind((LISTEN_ADDRESS, 53))
                net.dns_socket.setblocking(False)
                assert self._nft is not None
                self._nft.run(net.netns_fd, SANDBOX_TABLE + _policy_commands(net.policy))
                net.configured = True
                while True:
                    name, subnet = self._next_slot()
                    try:
                        self._host.add_veth(name, SANDBOX_IFNAME, net.netns_fd)
                        break
                    except FileExistsError:  # another agbox server (or a namespace still dying) has it
                        self._used.add(name)
                self._used.add(name)
                net.host_ifname = name
                net.gateway, net.address = subnet[1], subnet[2]
                eth0 = socket.if_nametoindex(SANDBOX_IFNAME)
                inner.add_address(eth0, ipaddress.IPv4Interface(f"{net.address}/30"))
                inner.set_link(SANDBOX_IFNAME, up=True)
                inner.add_default_route(net.gateway, eth0)
            finally:
                sysutil.setns(self._host_netns, sysutil.CLONE_NEWNET)
            Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").write_text("1")
            # Under this server's host rules before its host end comes up (no packet passes a down link).
            self._nft.run(None, f'add element inet {self.table} ifaces {{ "{name}" }}\n')
            self._host.add_address(socket.if_nametoindex(name), ipaddress.IPv4Interface(f"{net.gateway}/30"))
            self._host.set_link(name, up=True, alias=self.alias)
            self._wait_ready(net)
        except (OSError, NftError) as exc:
            raise SandboxError(f"could not set up the sandbox network: {exc}") from exc
        finally:
            if inner is not None:
                inner.close()

    def _wait_ready(self, net: SandboxNetwork) -> None:
        """Until the kernel has the link's carrier and queue ready (a packet sent before is lost,
        which would cost the sandbox's first connection a one-second SYN retry)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        path = Path(f"/sys/class/net/{net.host_ifname}/operstate")
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if path.read_text().strip() == "up":
                    return
            time.sleep(0.001)
        log.warning("network of %s not up after %s s", net.host_ifname, READY_TIMEOUT_S)

    async def apply(self, net: SandboxNetwork, policy: NetworkPolicy) -> None:
        """Replace the policy in one nft transaction; it applies to open connections at their next packet
        (the sandbox layer keeps no 'established' shortcut)."""
        if policy == net.policy:
            return
        assert self._nft is not None and net.configured
        table = "inet agbox"
        commands = f"flush chain {table} output\nflush set {table} allow4\nflush set {table} deny4\n"
        if policy.allow_domains != net.policy.allow_domains:
            commands += f"flush set {table} named4\n"
        await self._nft.arun(net.netns_fd, commands + _policy_commands(policy))
        net.policy = policy
        if net.resolver is not None:
            net.resolver.policy = policy

    async def _admit(self, net: SandboxNetwork, addresses: list[str]) -> None:
        assert self._nft is not None
        await self._nft.arun(net.netns_fd, f"add element inet agbox named4 {_nft_set(tuple(addresses))}\n")

    @staticmethod
    def counters(net: SandboxNetwork) -> tuple[int, int]:
        """(bytes the sandbox received, bytes it sent): the host end's counters, swapped."""
        stats = Path(f"/sys/class/net/{net.host_ifname}/statistics")
        try:
            return int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text())
        except OSError:
            return 0, 0

    async def destroy(self, net: SandboxNetwork) -> None:
        """Close everything that holds the namespace; the kernel then removes it, its veth pair and its
        rules (asynchronously, so a name is not reused at once: slots go round-robin)."""
        if net.resolver is not None:
            net.resolver.close()
            net.resolver = None
        if net.dns_socket is not None:
            net.dns_socket.close()
        if net.configured and net.host_ifname and self._nft is not None:
            # The sandbox is dead by now; the name stays claimed until the kernel removes the link.
            with contextlib.suppress(NftError, RuntimeError):
                await self._nft.arun(None, f'delete element inet {self.table} ifaces {{ "{net.host_ifname}" }}\n')
        if net.netns_fd >= 0:
            os.close(net.netns_fd)
            net.netns_fd = -1
        self._used.discard(net.host_ifname)

    @contextlib.contextmanager
    def joined(self, net: SandboxNetwork | None) -> Iterator[None]:
        """The calling thread inside ``net``'s namespace for the block (processes it forks stay there)."""
        if net is None:
            yield
            return
        sysutil.setns(net.netns_fd, sysutil.CLONE_NEWNET)
        try:
            yield
        finally:
            sysutil.setns(self._host_netns, sysutil.CLONE_NEWNET)
