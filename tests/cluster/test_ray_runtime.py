"""The Ray runtime on a real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head
and a second node, each its own raylet, both on 127.0.0.1), with two `agbox serve --runtime ray`
replicas on one real PostgreSQL store and one shared blob directory, and the unmodified official SDK.

One cluster for the module (Ray is heavy on 2 cores). Every Ray process is stopped at the end, also
when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from agb import AGB as OfficialAGB
from agb.config import Config
from agb.context_sync import ContextSync, SyncPolicy
from agb.session_params import CreateSessionParams

from tests.conftest import ServerProcess, start_server, wait_for

# Loopback only: Ray would otherwise swap 127.0.0.1 for the machine's address; no usage reports.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass
class RayCluster:
    cluster: Any
    head: Any
    second: Any
    server: ServerProcess
    replica: ServerProcess
    store_url: str
    args: list[str]
    env: dict[str, str]

    def sdk(self, server: ServerProcess | None = None) -> Any:
        server = server or self.server
        return OfficialAGB(api_key=server.api_key, cfg=Config(endpoint=server.endpoint, timeout_ms=60000))

    def node_of(self, session_id: str) -> str:
        answer = httpx.post(f"{self.server.endpoint}/mcp/getMcpResource", json={"sessionId": session_id},
                            headers={"authorization": f"Bearer {self.server.api_key}"}, timeout=10).json()
        assert answer["success"], answer
        return str(answer["data"]["node"])

    def session_row(self, session_id: str) -> tuple[str, str]:
        with psycopg.connect(self.store_url) as conn:
            row = conn.execute("SELECT status, finish_reason FROM sessions WHERE id = %s", (session_id,)).fetchone()
        assert row is not None
        return str(row[0]), str(row[1])


def ray_processes(temp_dir: Path) -> list[str]:
    """This cluster's Ray daemons (their arguments name its temp dir; workers die with their raylet)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(temp_dir) in line]


def close_node_services(address: str) -> None:
    """End the node services gracefully (their sandboxes, cgroups and run dirs go with them); the
    control planes leave them running on purpose."""
    import ray

    ray.init(address=address, namespace="agbox", logging_level="ERROR", log_to_driver=False)
    try:
        actors = [ray.get_actor(a["name"], namespace=a["namespace"])
                  for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("agbox-node-")]
        ray.get([actor.close.remote() for actor in actors], timeout=30)
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster(postgres: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    from ray.cluster_utils import Cluster

    # Ray's unix socket paths must stay short: its own temp dir directly under /tmp.
    temp_dir = Path(f"/tmp/agbox-ray-{os.getpid()}")
    cluster = Cluster(initialize_head=False, shutdown_at_exit=True)
    server: ServerProcess | None = None
    replica: ServerProcess | None = None
    state: RayCluster | None = None
    try:
        head = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=False,
                                temp_dir=str(temp_dir), resources={"agbox_slots": 3})
        second = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1",
                                  resources={"agbox_slots": 3, "agbox_memory_mb": 8192})
        store_url = postgres.new_database()
        root = tmp_path_factory.mktemp("ray-serve")
        args = ["--store", store_url, "--runtime", "ray", "--ray-address", cluster.address,
                "--blob-dir", str(root / "shared-blobs")]
        # Nothing warmed at start (the pools fill after the first creates): quicker start-up on 2 cores.
        env = {**RAY_ENV, "AGBOX_WARM_POOL": "1", "AGBOX_PREWARM_IMAGES": ""}
        # A Ray control plane's start joins the cluster and starts the node services: slow on a busy 2-core box.
        server = start_server(root / "a", extra_env=env, extra_args=args, ready_timeout_s=120)
        replica = start_server(root / "b", extra_env=env, extra_args=args, ready_timeout_s=120)
        state = RayCluster(cluster, head, second, server, replica, store_url, args, env)
        yield state
    finally:
        for proc in (server, replica, state.server if state else None):
            if proc is not None:
                proc.stop()
        if cluster.head_node is not None:
            with contextlib.suppress(Exception):
                close_node_services(cluster.address)
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        with contextlib.suppress(Exception):
            wait_for(lambda: not ray_processes(temp_dir), 20, interval_s=0.2, what="every Ray process to exit")
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


def test_sessions_land_on_both_nodes_and_work(ray_cluster: RayCluster) -> None:
    agb = ray_cluster.sdk()
    sessions = []
    try:
        for i in range(4):
            created = agb.create(CreateSessionParams(image_id="agb-code-space-1", labels={"n": str(i)}))
            assert created.success, created.error_message
            sessions.append(created.session)
        nodes = {s.session_id: ray_cluster.node_of(s.session_id) for s in sessions}
        assert len(set(nodes.values())) == 2, nodes  # placed by free slots: both nodes hold sessions
        assert all(n.startswith("ray:") for n in nodes.values())
        for session in sessions:
            result = session.command.execute("echo on-$(hostname) && id -u", timeout_ms=10000)
            assert result.success and result.stdout == "on-sandbox\n1000\n", result.error_message
            assert session.file.write("/tmp/x.txt", session.session_id).success
            assert session.file.read("/tmp/x.txt").content == session.session_id
            # Raw file streams on a Ray node fall back to the agent's file ops (several 4 MiB chunks).
            blob = os.urandom(9 * 1024 * 1024 + 3)
            url = f"{ray_cluster.server.endpoint}/sessions/{session.session_id}/files?path=/tmp/x.bin"
            auth = {"authorization": f"Bearer {ray_cluster.server.api_key}"}
            put = httpx.put(url, content=blob, headers=auth, timeout=60)
            assert put.status_code == 200 and put.json()["data"]["size"] == len(blob), put.text
            assert httpx.get(url, headers=auth, timeout=60).content == blob
            metrics = session.get_metrics()
            assert metrics.success and metrics.metrics.mem_total > 0
        # A link into a sandbox on the second node: bytes through that node's relay.
        remote = next(s for s in sessions if nodes[s.session_id] != nodes[sessions[0].session_id])
        started = remote.command.execute("mkdir -p /tmp/www && head -c 3000000 /dev/urandom > /tmp/www/big.bin && "
                                         "cd /tmp/www && nohup python3 -m http.server 30100 >/tmp/h.log 2>&1 &",
                                         timeout_ms=10000)
        assert started.success
        link = remote.get_link(port=30100)
        assert link.success, link.error_message
        body = wait_for(lambda: _get(link.data + "big.bin"), 15, interval_s=0.1, what="the link to answer")
        digest = remote.command.execute("sha256sum /tmp/www/big.bin", timeout_ms=10000).stdout.split()[0]
        import hashlib

        assert hashlib.sha256(body).hexdigest() == digest and len(body) == 3000000
        # A call that outlives its timeout comes back as a timeout, not a hang.
        slow = remote.command.execute("sleep 5", timeout_ms=1000)
        assert not slow.success
    finally:
        for session in sessions:
            agb.delete(session)
    for session in sessions:
        assert ray_cluster.session_row(session.session_id)[0] == "FINISH"


def _get(url: str) -> bytes | None:
    with contextlib.suppress(httpx.HTTPError):
        response = httpx.get(url, timeout=10)
        if response.status_code == 200:
            return response.content
    return None


def test_any_replica_serves_any_session_and_kill_9_loses_nothing(ray_cluster: RayCluster) -> None:
    a, b = ray_cluster.sdk(), ray_cluster.sdk(ray_cluster.replica)
    context = a.context.create("replicated").context
    # Context files are keyed by their absolute path in the sandbox (as in AGB).
    upload = a.context.get_file_upload_url(context.id, "/home/user/data/seed.txt").url
    # Signed by replica A, honoured by replica B (shared secret on the shared blob path). Object URLs
    # name the replica's bulk port: B's comes from a URL B signs.
    b_base = urlsplit(b.context.get_file_upload_url(context.id, "/home/user/data/other.txt").url).netloc
    via_b = urlsplit(upload)._replace(netloc=b_base).geturl()
    assert via_b != upload and httpx.put(via_b, content=b"seed").status_code == 200
    sync = ContextSync(context_id=context.id, path="/home/user/data", policy=SyncPolicy())
    made = [a.create(CreateSessionParams(image_id="agb-code-space-1", context_syncs=[sync])).session
            for _ in range(2)]
    ids = [s.session_id for s in made]
    try:
        on_b = [b.get(sid).session for sid in ids]
        for session in on_b:
            assert session.command.execute("cat /home/user/data/seed.txt", timeout_ms=10000).stdout == "seed"
        assert made[0].file.write("/tmp/from-a.txt", "written via A").success
        assert on_b[0].file.read("/tmp/from-a.txt").content == "written via A"
        assert on_b[1].command.execute("echo v1 > /home/user/data/v.txt", timeout_ms=10000).success
        assert asyncio.run(on_b[1].context.sync(context_id=context.id, path="/home/user/data", mode="upload",
                                                 retry_interval=100)).success
        assert on_b[0].command.execute("mkdir -p /tmp/www && echo via-b > /tmp/www/b.txt && cd /tmp/www && "
                                       "nohup python3 -m http.server 30100 >/tmp/h.log 2>&1 &", timeout_ms=10000).success
        link = on_b[0].get_link(port=30100)
        assert link.success, link.error_message
        assert wait_for(lambda: _get(link.data + "b.txt"), 15, interval_s=0.1, what="B's link") == b"via-b\n"

        # A call through replica B that outlasts the idle timeout: replica A's sweep sees the session
        # busy on its node (not only B's own count) and leaves it alone.
        short = a.create(CreateSessionParams(image_id="agb-code-space-1", idle_release_timeout=2)).session
        long_call = b.get(short.session_id).session.command.execute("sleep 4; echo done", timeout_ms=20000)
        # (A release mid-call would have ended the sandbox under the call.)
        assert long_call.success and long_call.stdout == "done\n", long_call.error_message
        # ...and once idle, it is released by one replica.
        wait_for(lambda: ray_cluster.session_row(short.session_id)[0] == "FINISH", 15, interval_s=0.2,
                 what="idle release")
        assert ray_cluster.session_row(short.session_id)[1] == "idle for 2 s"

        # kill -9 replica A while it is serving calls.
        stop = threading.Event()
        outcomes: list[bool] = []

        def traffic() -> None:
            while not stop.is_set():
                outcomes.append(bool(made[0].command.execute("echo x", timeout_ms=5000).success))

        worker = threading.Thread(target=traffic, daemon=True)
        worker.start()
        wait_for(lambda: len(outcomes) >= 3, 20, what="traffic through replica A")
        ray_cluster.server.process.send_signal(signal.SIGKILL)
        ray_cluster.server.process.wait(10)
        stop.set()
        worker.join(30)
        assert any(outcomes)

        # Replica B serves the same sessions: they run on their nodes, untouched.
        for sid, session in zip(ids, on_b, strict=True):
            assert ray_cluster.session_row(sid) == ("RUNNING", "")
            assert session.command.execute("echo alive", timeout_ms=10000).stdout == "alive\n"
        assert on_b[0].file.read("/tmp/from-a.txt").content == "written via A"
        files = {e.file_name for e in b.context.list_files(context.id, "/home/user/data").entries}
        assert files == {"seed.txt", "v.txt"}
        assert b.create(CreateSessionParams(image_id="agb-code-space-1")).session.delete().success

        # A restarted replica A re-attaches to the sessions (the node services kept them).
        ray_cluster.server = start_server(ray_cluster.server.data_dir, extra_env=ray_cluster.env,
                                          extra_args=ray_cluster.args, ready_timeout_s=120)
        again = ray_cluster.sdk().get(ids[0])
        assert again.success and again.session.command.execute("echo back", timeout_ms=10000).stdout == "back\n"
    finally:
        for sid in ids:
            with contextlib.suppress(Exception):
                b.delete(b.get(sid).session)
        b.context.delete(context)


def test_lost_node_ends_its_sessions_others_keep_working(ray_cluster: RayCluster) -> None:
    agb = ray_cluster.sdk()
    sessions = [agb.create(CreateSessionParams(image_id="agb-code-space-1")).session for _ in range(4)]
    try:
        nodes = {s.session_id: ray_cluster.node_of(s.session_id) for s in sessions}
        assert len(set(nodes.values())) == 2, nodes
        # Kill the second node's raylet (and with it its workers): whichever sessions end were on it.
        killed_at = time.monotonic()
        ray_cluster.cluster.remove_node(ray_cluster.second, allow_graceful=False)

        def ended() -> list[str]:
            return [sid for sid in nodes if ray_cluster.session_row(sid)[0] == "FINISH"]

        gone = wait_for(lambda: ended() or None, 20, interval_s=0.1, what="the lost node's sessions to end")
        lost_after = time.monotonic() - killed_at
        lost_node = nodes[gone[0]]
        doomed = [sid for sid, node in nodes.items() if node == lost_node]
        wait_for(lambda: set(ended()) == set(doomed), 10, interval_s=0.1, what="all of the node's sessions to end")
        print(f"\nnode lost -> sessions FINISH after {lost_after:.2f} s")
        assert lost_after < 10
        assert all(ray_cluster.session_row(sid) == ("FINISH", "node lost") for sid in doomed)
        survivors = [s for s in sessions if s.session_id not in doomed]
        assert survivors and len(doomed) == 2
        for session in survivors:
            assert session.command.execute("echo still", timeout_ms=10000).stdout == "still\n"
        fresh = agb.create(CreateSessionParams(image_id="agb-code-space-1"))
        assert fresh.success, fresh.error_message
        sessions.append(fresh.session)
        assert ray_cluster.node_of(fresh.session.session_id) != lost_node
        assert fresh.session.command.execute("echo new", timeout_ms=10000).stdout == "new\n"
        lost_call = agb.get(doomed[0])
        assert not lost_call.success

        # A node that (re)joins gets a node service on discovery and takes new sessions.
        ray_cluster.second = ray_cluster.cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1",
                                                          resources={"agbox_slots": 3})
        known = {lost_node, ray_cluster.node_of(survivors[0].session_id)}

        def lands_on_new_node() -> bool:
            made = agb.create(CreateSessionParams(image_id="agb-code-space-1"))
            if not made.success:  # the first node is full until the new one is discovered
                assert "no node has room" in made.error_message, made.error_message
                return False
            sessions.append(made.session)
            return ray_cluster.node_of(made.session.session_id) not in known

        wait_for(lands_on_new_node, 30, interval_s=0.5, what="a create to land on the joined node")
        assert sessions[-1].command.execute("echo joined", timeout_ms=10000).stdout == "joined\n"
    finally:
        for session in sessions:
            with contextlib.suppress(Exception):
                agb.delete(session)


def test_agbox_node_builds_the_ray_start_command() -> None:
    out = subprocess.run([sys.executable, "-m", "agbox", "node", "--address", "10.0.0.1:6379", "--slots", "20",
                          "--memory-mb", "4096", "--images", "agb-browser-use-1,agb-code-space-1", "--dry-run"],
                         check=True, capture_output=True, text=True).stdout
    argv = out.split(" --resources ")
    resources = json.loads(argv[1].split(" --address")[0])
    assert resources == {"agbox_slots": 20.0, "agbox_memory_mb": 4096.0, "agbox_image:agb-browser-use-1": 1.0,
                         "agbox_image:agb-code-space-1": 1.0}
    assert out.strip().endswith("--address 10.0.0.1:6379") and " start --block" in out
    bad = subprocess.run([sys.executable, "-m", "agbox", "node", "--address", "x:1", "--slots", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--slots" in bad.stderr
