"""Sandbox networks on the real kernel: a stand-in internet in a namespace of the test's own
(tests/standin_internet.py), real veths and nftables, real sessions over HTTP. No traffic leaves
this machine: every address a session tries is either in the stand-in or refused before routing out.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import standin_internet as world
from tests.conftest import API_KEY, ServerProcess, start_server, wait_for

PROBE = r"""
import json, socket, sys, time, urllib.request
out = {}
for target in json.loads(sys.argv[1]):
    start = time.monotonic()
    try:
        with urllib.request.urlopen(target, timeout=5) as response:
            result = "ok:" + response.read(200).decode(errors="replace").strip()
    except Exception as exc:
        reason = getattr(exc, "reason", exc)
        result = "error:" + type(reason).__name__ + ":" + str(reason)
    out[target] = [result, round(time.monotonic() - start, 3)]
print(json.dumps(out))
"""


def probe(session: Any, *targets: str) -> dict[str, tuple[str, float]]:
    """Fetch each URL from inside the session (python urllib); {url: (ok:<body>|error:<why>, seconds)}."""
    session.file.write("/tmp/probe.py", PROBE)
    result = session.command.execute(f"python3 /tmp/probe.py '{json.dumps(list(targets))}'", timeout_ms=30000)
    assert result.exit_code == 0, result.stderr
    return {k: (v[0], v[1]) for k, v in json.loads(result.stdout).items()}


def assert_reached(results: dict[str, tuple[str, float]], url: str) -> None:
    outcome, _ = results[url]
    assert outcome.startswith("ok:stand-in"), (url, outcome)


def assert_refused(results: dict[str, tuple[str, float]], url: str) -> None:
    outcome, seconds = results[url]
    assert outcome.startswith("error:"), (url, outcome)
    assert seconds < 1.0, f"{url} took {seconds} s to fail: blocked connections must fail at once"


def host_ifname(session: Any) -> str:
    """The host end of the session's veth."""
    return str(session.info().data["network"]["hostInterface"])


@pytest.fixture(scope="module")
def internet() -> Iterator[world.StandinInternet]:
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    with world.standin_internet() as standin:
        yield standin
    if forwarding == "0":  # the server turned it on for sandboxes; leave the machine as found
        Path("/proc/sys/net/ipv4/ip_forward").write_text("0")


NET_ENV = {"AGBOX_NETWORK_DNS": world.DNS_ADDRESS, "AGBOX_NETWORK_INTERNET": "on", "AGBOX_WARM_POOL": "1"}


@pytest.fixture(scope="module")
def net_server(internet: world.StandinInternet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("net") / "data", extra_env=NET_ENV)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def net_agb(net_server: ServerProcess) -> Iterator[Any]:
    from agbox import AGB

    client = AGB(api_key=net_server.api_key, endpoint=net_server.endpoint)
    yield client
    client.close()


@pytest.fixture
def make(net_agb: Any) -> Iterator[Any]:
    from agbox import CreateSessionParams, NetworkPolicy

    made: list[Any] = []

    def create(**policy: Any) -> Any:
        network = NetworkPolicy(**policy) if policy else None
        result = net_agb.create(CreateSessionParams(image_id="agb-code-space-1", network=network))
        assert result.success, result.error_message
        made.append(result.session)
        return result.session

    yield create
    for session in made:
        with contextlib.suppress(Exception):
            session.delete()


WEB = f"http://{world.WEB_ADDRESS}/"
WEB_BY_NAME = "http://www.agbox.test/"
OTHER = f"http://{world.OTHER_ADDRESS}/"
PUB2 = f"http://{world.PUBLIC2_ADDRESS}/"


def test_session_fetches_from_the_standin_by_name_and_address(make: Any) -> None:
    session = make()
    info = session.info().data["network"]
    assert info["internet"] is True and info["dns"] == "127.0.0.53"
    results = probe(session, WEB, WEB_BY_NAME, PUB2)
    for url in (WEB, WEB_BY_NAME, PUB2):
        assert_reached(results, url)
    assert "host=www.agbox.test" in results[WEB_BY_NAME][0]
    curl = session.command.execute("curl -sS -m 5 http://www.agbox.test/", timeout_ms=10000)
    assert curl.exit_code == 0 and curl.stdout.startswith("stand-in"), curl.stderr


def test_official_sdk_session_gets_the_server_default(net_server: ServerProcess) -> None:
    from agb import AGB as OfficialAGB
    from agb.config import Config
    from agb.session_params import CreateSessionParams as OfficialParams

    official = OfficialAGB(api_key=net_server.api_key, cfg=Config(endpoint=net_server.endpoint, timeout_ms=60000))
    session = official.create(OfficialParams(image_id="agb-code-space-1")).session
    try:
        result = session.command.execute(f"curl -sS -m 5 {WEB}", timeout_ms=10000)
        assert "stand-in" in result.output
    finally:
        official.delete(session)


def test_deny_all_blocks_everything_but_links_still_work(make: Any, net_server: ServerProcess) -> None:
    session = make(internet=False)
    assert session.info().data["network"]["internet"] is False
    results = probe(session, WEB, PUB2, WEB_BY_NAME)
    assert_refused(results, WEB)
    assert_refused(results, PUB2)
    assert "gaierror" in results[WEB_BY_NAME][0]  # no name resolves under deny-all
    # A server inside the session is still reachable through its link (setns into its namespace).
    session.command.execute("nohup python3 -m http.server 30150 --bind 127.0.0.1 >/dev/null 2>&1 &", timeout_ms=5000)
    url = session.get_link(port=30150).data

    def served() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url, timeout=2).status_code == 200
        return False

    wait_for(served, 15, what="the session's server through its link")


def test_cidr_allow_and_deny_lists(make: Any) -> None:
    allow_only = make(allow_out=[f"{world.PUBLIC2_ADDRESS}/24"])  # internet left out: an allow-list
    results = probe(allow_only, PUB2, WEB)
    assert_reached(results, PUB2)
    assert_refused(results, WEB)
    deny = make(deny_out=["203.0.113.0/24"], internet=True)
    results = probe(deny, PUB2, WEB, OTHER)
    assert_reached(results, PUB2)
    assert_refused(results, WEB)
    assert_refused(results, OTHER)
    allow_beats_deny = make(allow_out=[world.WEB_ADDRESS], deny_out=["203.0.113.0/24"], internet=True)
    results = probe(allow_beats_deny, WEB, OTHER)
    assert_reached(results, WEB)
    assert_refused(results, OTHER)


def test_domain_allow_list_admits_only_what_its_names_resolve_to(make: Any) -> None:
    session = make(allow_out=["www.agbox.test", "private.agbox.test"])
    # The name first: its lookup is what admits its address.
    results = probe(session, WEB_BY_NAME, WEB, "http://other.agbox.test/", OTHER, PUB2, "http://private.agbox.test/")
    assert_reached(results, WEB_BY_NAME)
    assert_reached(results, WEB)  # the address the allowed name resolved to is admitted ...
    assert "gaierror" in results["http://other.agbox.test/"][0]  # ... other names do not resolve ...
    assert_refused(results, OTHER)  # ... and their addresses stay closed
    assert_refused(results, PUB2)
    # An allowed name that resolves to a private address (DNS rebinding) is still refused.
    assert_refused(results, "http://private.agbox.test/")
    denied_name = make(deny_out=["other.agbox.test"], internet=True)
    results = probe(denied_name, "http://other.agbox.test/", WEB_BY_NAME)
    assert "gaierror" in results["http://other.agbox.test/"][0]
    assert_reached(results, WEB_BY_NAME)


def test_bad_policies_are_refused_precisely(net_agb: Any) -> None:
    from agbox import CreateSessionParams, NetworkPolicy

    for policy, words in ((NetworkPolicy(allow_out=["not a host"]), "is not an IPv4 address"),
                          (NetworkPolicy(deny_out=["2001:db8::/32"]), "IPv6")):
        result = net_agb.create(CreateSessionParams(image_id="agb-code-space-1", network=policy))
        assert not result.success and words in result.error_message


def test_policy_of_a_running_session_can_change(make: Any) -> None:
    from agbox import NetworkPolicy

    session = make()
    assert_reached(probe(session, WEB), WEB)
    changed = session.set_network_policy(NetworkPolicy(internet=False, allow_out=[world.PUBLIC2_ADDRESS]))
    assert changed.success, changed.error_message
    assert session.info().data["network"]["internet"] is False
    results = probe(session, WEB, PUB2)
    assert_refused(results, WEB)
    assert_reached(results, PUB2)


class _HostServer:
    """An HTTP server of the host on (address, port), in a thread."""

    def __init__(self, address: str) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        server_class = type("Server", (http.server.ThreadingHTTPServer,), {"address_family": family})
        self.httpd = server_class((address, 0), http.server.SimpleHTTPRequestHandler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _host_ipv4_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    return [a for a in re.findall(r"inet (\S+)/", out) if not a.startswith(("127.", "10.201.", "10.202."))]


def test_host_other_sessions_metadata_and_private_ranges_are_unreachable(make: Any) -> None:
    loopback = _HostServer("127.0.0.1")
    anywhere = _HostServer("0.0.0.0")
    anywhere6 = _HostServer("::")
    try:
        neighbour = make()
        neighbour.command.execute("nohup python3 -m http.server 8000 >/dev/null 2>&1 &", timeout_ms=5000)
        neighbour_address = neighbour.info().data["network"]["address"]
        session = make()
        gateway = session.info().data["network"]["gateway"]
        targets = [f"http://127.0.0.1:{loopback.port}/", f"http://{gateway}:{anywhere.port}/",
                   f"http://{neighbour_address}:8000/", f"http://{world.METADATA_ADDRESS}/",
                   f"http://{world.PRIVATE_ADDRESS}/"]
        targets += [f"http://{address}:{anywhere.port}/" for address in _host_ipv4_addresses()]
        wait_for(lambda: neighbour.command.execute("curl -s -o /dev/null localhost:8000", timeout_ms=5000).exit_code == 0,
                 10, what="the neighbour's server")
        results = probe(session, *targets)
        for url in targets:
            assert_refused(results, url)
        # The stand-in does serve metadata and private addresses: the host itself reaches them.
        assert httpx.get(f"http://{world.METADATA_ADDRESS}/", timeout=5).text.startswith("stand-in")
        assert httpx.get(f"http://{world.PRIVATE_ADDRESS}/", timeout=5).text.startswith("stand-in")
        # IPv6: the sandbox has no IPv6 address on eth0, the host end none either; link-local of the host fails.
        host_if = host_ifname(session)
        assert "inet6" not in subprocess.run(["ip", "addr", "show", host_if], capture_output=True, text=True).stdout
        link_locals = re.findall(r"inet6 (fe80::\S+)/", subprocess.run(["ip", "-6", "-o", "addr"], capture_output=True,
                                                                        text=True).stdout)
        script = ("import socket,sys\nfor a in sys.argv[2:]:\n s=socket.socket(socket.AF_INET6)\n s.settimeout(3)\n"
                  " try:\n  s.connect((a,int(sys.argv[1]),0,socket.if_nametoindex('eth0'))); print('CONNECTED',a)\n"
                  " except OSError as e: print('refused',a,e)\n")
        session.file.write("/tmp/v6.py", script)
        out = session.command.execute(f"python3 /tmp/v6.py {anywhere6.port} {' '.join(link_locals)}", timeout_ms=15000)
        assert "CONNECTED" not in out.stdout and out.stdout.count("refused") == len(link_locals), out.stdout + out.stderr
    finally:
        for server in (loopback, anywhere, anywhere6):
            server.close()


def _sandbox_pid(session: Any) -> int:
    inode = session.command.execute("readlink /proc/self/ns/net", timeout_ms=5000).stdout.strip()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "ns" / "net") == inode and entry.stat().st_uid != 0:
                return int(entry.name)
    raise AssertionError(f"no sandbox process in {inode}")


def test_root_inside_the_sandbox_cannot_change_its_network(make: Any) -> None:
    session = make()
    for command in ("nft flush ruleset", "ip link set eth0 down", "ip route del default"):
        result = session.command.execute(command, timeout_ms=5000)
        assert result.exit_code != 0, command
    # Root with every capability of a user namespace of its own, inside the sandbox's network
    # namespace ("root inside"), cannot either: that namespace belongs to the host's user namespace.
    pid = _sandbox_pid(session)
    for command in (["nft", "flush", "ruleset"], ["ip", "link", "set", "eth0", "down"], ["ip", "route", "flush", "all"]):
        entered = subprocess.run(["nsenter", "-t", str(pid), "-n", "--", "unshare", "--user", "--map-root-user",
                                  "--", *command], capture_output=True, text=True)
        assert entered.returncode != 0 and ("not permitted" in entered.stderr.lower()), (command, entered.stderr)
    assert_reached(probe(session, WEB), WEB)
    assert "state UP" in session.command.execute("ip link show eth0", timeout_ms=5000).stdout


def test_metrics_move_by_the_size_of_a_download(make: Any) -> None:
    session = make()
    before = session.get_metrics().metrics
    result = session.command.execute(f"curl -sS -o /dev/null -w '%{{size_download}}' http://{world.WEB_ADDRESS}/big",
                                     timeout_ms=30000)
    assert result.stdout.strip() == str(world.BIG_BYTES), result.stderr
    after = session.get_metrics().metrics
    received_kb = after.rx_used_kbyte - before.rx_used_kbyte
    sent_kb = after.tx_used_kbyte - before.tx_used_kbyte
    assert world.BIG_BYTES / 1024 <= received_kb <= world.BIG_BYTES / 1024 * 1.05, received_kb
    assert 0 < sent_kb < 1024, sent_kb  # requests and ACKs only
    assert after.rx_rate_kbyte_per_s > 0


def _links() -> set[str]:
    return {p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith("agb")}


def _tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout


def _netns_in_use(inodes: set[str]) -> set[str]:
    """Which of these namespaces some process still is in, or holds open."""
    found: set[str] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            found |= {os.readlink(entry / "ns" / "net")} & inodes
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    found |= {os.readlink(fd)} & inodes
    return found


def test_networks_are_gone_after_release_and_after_kill_9_and_restart(
        internet: world.StandinInternet, tmp_path: Path) -> None:
    from agbox import AGB, CreateSessionParams

    data_dir = tmp_path / "data"
    env = {**NET_ENV, "AGBOX_NETWORK_POOL": "10.202.0.0/16"}
    server = start_server(data_dir, extra_env=env)
    try:
        agb = AGB(api_key=API_KEY, endpoint=server.endpoint)
        sessions = [agb.create(CreateSessionParams(image_id="agb-code-space-1")).session for _ in range(3)]
        names = {host_ifname(s) for s in sessions}
        inodes = {s.command.execute("readlink /proc/self/ns/net", timeout_ms=5000).stdout.strip() for s in sessions}
        assert names <= _links() and len(inodes) == 3
        table = next(line.split()[-1] for line in _tables().splitlines() if "agbox_" in line and
                     line.split()[-1] in {f"agbox_{t}" for t in _tags(data_dir)})
        released = sessions[0]
        released_name = host_ifname(released)
        released_inode = released.command.execute("readlink /proc/self/ns/net", timeout_ms=5000).stdout.strip()
        assert released.delete().success
        wait_for(lambda: released_name not in _links(), 10, what="the released session's veth to go")
        assert not _netns_in_use({released_inode})
        agb.close()
        server.stop(signal.SIGKILL)
        wait_for(lambda: not (names & _links()), 10, what="every veth of the killed server to go")
        wait_for(lambda: not _netns_in_use(inodes), 10, what="every namespace of the killed server to go")
        assert table in _tables()  # the host layer survives a kill -9 ...
        server = start_server(data_dir, extra_env=env)
        assert _tables().count(f"{table}\n") == 1  # ... and the restart replaces it
        server.stop()
        assert table not in _tables()  # a graceful stop removes it
    finally:
        server.stop(signal.SIGKILL)


def _tags(data_dir: Path) -> set[str]:
    import hashlib

    return {hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:10]}


def test_networking_off_gives_loopback_only(tmp_path: Path) -> None:
    from agbox import AGB, CreateSessionParams, NetworkPolicy

    server = start_server(tmp_path / "data", extra_env={"AGBOX_NETWORK": "off", "AGBOX_WARM_POOL": "0",
                                                        "AGBOX_PREWARM_IMAGES": ""})
    try:
        agb = AGB(api_key=API_KEY, endpoint=server.endpoint)
        session = agb.create(CreateSessionParams(image_id="agb-code-space-1")).session
        try:
            assert session.info().data["network"] is None
            dev = session.command.execute("cat /proc/net/dev", timeout_ms=5000).stdout.splitlines()[2:]
            assert [line.split(":")[0].strip() for line in dev] == ["lo"]
        finally:
            session.delete()
        refused = agb.create(CreateSessionParams(image_id="agb-code-space-1", network=NetworkPolicy(internet=True)))
        assert not refused.success and "networking is off" in refused.error_message
        agb.close()
    finally:
        server.stop()


@pytest.mark.slow
def test_200_sessions_with_networks_at_once(internet: world.StandinInternet, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from agbox import AGB, CreateSessionParams

    server = start_server(tmp_path / "data", extra_env={**NET_ENV, "AGBOX_NETWORK_POOL": "10.203.0.0/16",
                                                        "AGBOX_WARM_POOL": "0", "AGBOX_PREWARM_IMAGES": ""})
    agb = AGB(api_key=API_KEY, endpoint=server.endpoint)
    sessions: list[Any] = []
    names: set[str] = set()
    clients: list[Any] = []
    try:
        # Four clients, 50 creates each (one client per thread: no connection sits idle long enough for the
        # server's keep-alive timeout to close it under a request).
        clients = [AGB(api_key=API_KEY, endpoint=server.endpoint) for _ in range(4)]

        def fifty(client: Any) -> list[Any]:
            return [client.create(CreateSessionParams(image_id="agb-code-space-1")) for _ in range(50)]

        with ThreadPoolExecutor(4) as pool:
            results = [r for batch in pool.map(fifty, clients) for r in batch]
        sessions = [r.session for r in results if r.success]
        assert len(sessions) == 200, [r.error_message for r in results if not r.success][:3]
        addresses = {s.info().data["network"]["address"] for s in sessions}
        names = {host_ifname(s) for s in sessions}
        assert len(addresses) == 200 and len(names) == 200
        assert names <= _links()
        for session in (sessions[0], sessions[-1]):
            assert_reached(probe(session, WEB), WEB)
        # With 200 sessions the server holds ~800 fds: the firewall still changes and learns from DNS.
        from agbox import NetworkPolicy

        assert sessions[-1].set_network_policy(NetworkPolicy(allow_out=["www.agbox.test"])).success
        results = probe(sessions[-1], WEB_BY_NAME, PUB2)
        assert_reached(results, WEB_BY_NAME)
        assert_refused(results, PUB2)
    finally:
        for client in [agb, *clients]:
            client.close()
        server.stop()  # a graceful stop releases every other session
    wait_for(lambda: not (names & _links()), 30, what="all 200 veths to go")


def test_operator_opens_a_private_range_and_denies_another(make: Any, tmp_path: Path) -> None:
    """Also: two servers on one host with the same (default) pool and different settings."""
    from agbox import AGB, CreateSessionParams, NetworkPolicy

    neighbour = make()  # a session of the module's server, same pool
    env = {**NET_ENV, "AGBOX_NETWORK_OPEN_RANGES": "10.99.0.0/24",
           "AGBOX_NETWORK_DENY_RANGES": "198.51.100.0/24", "AGBOX_PREWARM_IMAGES": ""}
    server = start_server(tmp_path / "data", extra_env=env)
    try:
        agb = AGB(api_key=API_KEY, endpoint=server.endpoint)
        policy = NetworkPolicy(allow_out=[world.PUBLIC2_ADDRESS, world.PRIVATE_ADDRESS, world.WEB_ADDRESS])
        session = agb.create(CreateSessionParams(image_id="agb-code-space-1", network=policy)).session
        try:
            results = probe(session, f"http://{world.PRIVATE_ADDRESS}/", PUB2, WEB, f"http://{world.METADATA_ADDRESS}/")
            assert_reached(results, f"http://{world.PRIVATE_ADDRESS}/")  # opened by the operator
            assert_reached(results, WEB)
            assert_refused(results, PUB2)  # denied by the operator, whatever the session's allow-list says
            assert_refused(results, f"http://{world.METADATA_ADDRESS}/")
            assert session.info().data["network"]["address"] != neighbour.info().data["network"]["address"]
            neighbour_results = probe(neighbour, WEB, f"http://{world.PRIVATE_ADDRESS}/")
            assert_reached(neighbour_results, WEB)
            assert_refused(neighbour_results, f"http://{world.PRIVATE_ADDRESS}/")  # not opened on that server
        finally:
            session.delete()
        agb.close()
    finally:
        server.stop()


def test_a_bad_network_setting_stops_the_server_at_start_with_the_reason(tmp_path: Path) -> None:
    env = {**os.environ, "AGBOX_API_KEY": API_KEY, "AGBOX_NETWORK_POOL": "10.201.0.0/30"}
    result = subprocess.run([sys.executable, "-m", "agbox", "serve", "--port", "0", "--data-dir", str(tmp_path / "d")],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "subnet pool 10.201.0.0/30 is too small" in result.stdout + result.stderr


def test_nft_works_when_the_process_holds_more_than_1024_fds() -> None:
    """libnftables waits with select(), which aborts the process for an fd above 1023: its contexts live
    on a thread with a private fd table, so a busy server's fd count does not matter."""
    from agbox.runtime.nftables import NftWorker

    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    worker = NftWorker()
    try:
        assert max(held) > 1024
        worker.run(None, "add table inet agboxtest_fds\ndelete table inet agboxtest_fds\n")
        assert "agboxtest_fds" not in worker.run(None, "list tables\n")
    finally:
        worker.close()
        for fd in held:
            os.close(fd)
