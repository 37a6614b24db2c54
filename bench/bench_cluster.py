"""The Ray runtime against the local runtime, in the same run, on a real Ray cluster on this machine.

- Tool round trip: ``shell true`` via ``POST /mcp`` on a server with ``--runtime ray`` (one node),
  interleaved with the same call on a server with the local runtime: the delta is what the Ray path
  (control plane -> node service relay -> agent) adds.
- Pooled create (warm pool 2 on both): ``createSession`` through the Ray runtime vs the local one,
  interleaved; each session is released outside the timing.
- Creates per second (create + release, 2 client threads) with one node, then with two nodes (both
  on this 2-core machine, so the second node adds placement choices, not CPU).
- Memory: PSS of the Ray processes (GCS, raylets, agents, workers, node services) before and after
  the second node joins; the difference is what one more node costs, besides its sandboxes.

The cluster runs on 127.0.0.1 only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), usage stats off.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from typing import Any

import benchlib as B
import httpx

FAMILY = "cluster"
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
ARGS = {"command": "true", "timeout_ms": 5000}


def ray_pids(tag: str) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if tag in args or args.startswith("ray::"):
            pids.append(int(pid))
    return pids


def ray_pss_mib(tag: str) -> float:
    return sum(B.pss_kib(pid) for pid in ray_pids(tag)) / 1024


def _create(http: httpx.Client, endpoint: str) -> str:
    body = http.post(f"{endpoint}/mcp/createSession", json={"imageId": B.IMAGE}).json()
    if not body.get("success"):
        raise RuntimeError(f"create failed: {str(body)[:300]}")
    return str(body["data"]["sessionId"])


def _shell(http: httpx.Client, endpoint: str, session_id: str) -> None:
    body = http.post(f"{endpoint}/mcp", json={"sessionId": session_id, "name": "shell",
                                              "args": json.dumps(ARGS)}).json()
    if not body.get("success") or (body.get("data") or {}).get("isError"):
        raise RuntimeError(f"shell failed: {str(body)[:300]}")


def run(quick: bool) -> list[dict[str, Any]]:
    from ray.cluster_utils import Cluster

    n = B.samples(quick, 300, 30)
    creates = B.samples(quick, 60, 12)
    rate_s = 4.0 if quick else 10.0
    rows: list[dict[str, Any]] = []
    tag = f"agbox-ray-bench-{os.getpid()}"
    temp_dir = f"/tmp/{tag}"
    with B.env_set(**RAY_ENV), contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, temp_dir, True)
        cluster = Cluster(initialize_head=False, shutdown_at_exit=True)
        stack.callback(cluster.shutdown)
        B.say("starting a Ray head (agbox node 1)")
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=False, temp_dir=temp_dir,
                         resources={"agbox_slots": 200})
        ray_only_one = ray_pss_mib(tag)
        ray_env = {**RAY_ENV, "AGBOX_RUNTIME": "ray", "AGBOX_RAY_ADDRESS": cluster.address, "AGBOX_WARM_POOL": "2"}
        local = stack.enter_context(B.server("agbox-bench-cluster-local-", {"AGBOX_WARM_POOL": "2"}))
        ray_srv = stack.enter_context(B.server("agbox-bench-cluster-ray-", ray_env))
        http = stack.enter_context(httpx.Client(timeout=120, headers={"authorization": f"Bearer {B.API_KEY}"}))
        ray_one = ray_pss_mib(tag)
        local_sid = _create(http, local.endpoint)
        ray_sid = _create(http, ray_srv.endpoint)

        B.say(f"tool round trip, ray vs local (n={n})")
        measured, base = B.paired(B.timed(lambda: _shell(http, ray_srv.endpoint, ray_sid)),
                                  lambda: _shell(http, local.endpoint, local_sid), n)
        rows.append(B.row(FAMILY, "shell true via POST /mcp, Ray runtime (1 node)", measured, key="cluster.tool_ray",
                          baseline="same call, local runtime (interleaved)", baseline_s=base,
                          note="control plane -> node service relay (TCP, JSON lines) -> agent"))

        B.say(f"pooled create, ray vs local (n={creates})")
        made: list[tuple[str, str]] = []

        def create_on(endpoint: str) -> float:
            start = time.perf_counter()
            sid = _create(http, endpoint)
            elapsed = time.perf_counter() - start
            made.append((endpoint, sid))
            return elapsed

        def release_made() -> None:
            while made:
                endpoint, sid = made.pop()
                B.release_async(http, endpoint, sid)

        def ray_create() -> float:
            elapsed = create_on(ray_srv.endpoint)
            release_made()
            return elapsed

        # Both creates are timed alone; the releases happen after the Ray create's timing ends.
        measured, base = B.paired(ray_create, lambda: create_on(local.endpoint), creates, pace_s=0.25)
        rows.append(B.row(FAMILY, "createSession (warm pool), Ray runtime (1 node)", measured, key="cluster.create_ray",
                          baseline="createSession (warm pool), local runtime (interleaved)", baseline_s=base,
                          note="control plane -> Ray actor call create -> node's warm pool hand-over"))

        def create_release() -> None:
            B.release_async(http, ray_srv.endpoint, _create(http, ray_srv.endpoint))

        def local_create_release() -> None:
            B.release_async(http, local.endpoint, _create(http, local.endpoint))

        B.say(f"creates/s, local runtime ({rate_s:g} s)")
        local_rate, done_local, failed_local = B.rate_for(local_create_release, 2, rate_s)
        B.say(f"creates/s, one node ({rate_s:g} s)")
        one, done_one, failed_one = B.rate_for(create_release, 2, rate_s)
        rows.append(B.row(FAMILY, "creates/s (create + release, 2 clients), Ray runtime, 1 node", key="cluster.rate_one",
                          value=one, baseline_value=local_rate, unit="creates/s", higher_is_better=True,
                          baseline="same, local runtime",
                          note=f"{done_local}/{failed_local} then {done_one}/{failed_one} done/failed"))
        B.say("adding a second node")
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", resources={"agbox_slots": 200})
        deadline = time.monotonic() + 60
        # The new node's service starts on discovery (every 2 s); wait until sessions land on it.
        nodes: set[str] = set()
        while time.monotonic() < deadline and len(nodes) < 2:
            sid = _create(http, ray_srv.endpoint)
            node = http.post(f"{ray_srv.endpoint}/mcp/getMcpResource", json={"sessionId": sid}).json()["data"]["node"]
            nodes.add(node)
            B.release_async(http, ray_srv.endpoint, sid)
            time.sleep(0.2)
        ray_two = ray_pss_mib(tag)
        B.say(f"creates/s, two nodes ({rate_s:g} s)")
        two, done_two, failed_two = B.rate_for(create_release, 2, rate_s)
        rows.append(B.row(FAMILY, "creates/s (create + release, 2 clients), Ray runtime, 2 nodes", key="cluster.rate",
                          value=two, baseline_value=one, unit="creates/s", higher_is_better=True,
                          baseline="same, 1 node",
                          note=f"{done_one}/{failed_one} then {done_two}/{failed_two} done/failed; both nodes share "
                               "this machine's 2 cores"))
        rows.append(B.row(FAMILY, "memory of the Ray processes per extra node (PSS)", key="cluster.node_pss",
                          value=ray_two - ray_one, baseline_value=ray_one, unit="MiB",
                          baseline="head node with its node service and the control plane's driver",
                          note=f"Ray alone before agbox: {ray_only_one:.0f} MiB; sandboxes not counted"))
        for endpoint, sid in ((local.endpoint, local_sid), (ray_srv.endpoint, ray_sid)):
            B.release_async(http, endpoint, sid)
    return rows
