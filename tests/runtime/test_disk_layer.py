"""Each sandbox's root is its own disk-backed ext4 layer: sized to the disk limit apart from memory, never
in the host's mount table, and gone (mount, loop device, image) when the sandbox ends or the server dies."""

from __future__ import annotations

import asyncio
import glob
import os
import signal
from pathlib import Path

import httpx

from agbox import AGB, CreateSessionParams
from agbox.runtime.base import Limits, SandboxSpec
from agbox.runtime.local import LocalRuntime
from tests.conftest import start_server, wait_for

MIB = 1024 * 1024


def attached_loops(data_dir: Path) -> list[str]:
    """Loop devices whose backing file is an image in this data dir."""
    found = []
    for path in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            backing = Path(path).read_text()
        except OSError:
            continue
        if backing.startswith(f"{data_dir}/"):
            found.append(path.split("/")[3])
    return found


def test_the_layer_is_disk_of_its_own_size_not_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        data_dir = tmp_path / "data"
        runtime = LocalRuntime(data_dir)
        await runtime.start()
        try:
            limits = Limits(memory_bytes=64 * MIB, pids=64, disk_bytes=96 * MIB)
            handles = [await runtime.create(SandboxSpec(f"session-{i}", "img", limits)) for i in range(3)]
            a = handles[0]

            async def sh(command: str) -> dict[str, object]:
                return dict(await runtime.call(a, "shell", {"command": command}, timeout_s=60))

            # 80 MiB on disk in a sandbox with 64 MiB of memory: page cache is reclaimable, tmpfs was not.
            wrote = await sh("dd if=/dev/zero of=/home/user/big bs=1M count=80 2>&1 && stat -c %s /home/user/big")
            assert wrote["exit_code"] == 0, wrote
            assert str(wrote["stdout"]).splitlines()[-1] == str(80 * MIB)
            full = await sh("dd if=/dev/zero of=/tmp/more bs=1M count=64")
            assert full["exit_code"] != 0 and "No space left on device" in str(full["stderr"]), full
            assert (await sh("echo alive"))["stdout"] == "alive\n"
            stats = await runtime.stats(a)
            assert 88 * MIB <= stats.disk_total <= 96 * MIB
            assert stats.disk_used >= 80 * MIB
            # The root is ext4, owned by the sandbox user; other sandboxes do not see a's files.
            root = await sh("stat -f -c %T / && stat -c %U /")
            assert str(root["stdout"]).split() == ["ext2/ext3", "user"]
            other = await runtime.call(handles[1], "shell", {"command": "ls /home/user"}, timeout_s=10)
            assert other["stdout"] == ""
            # Nothing of it is in the host's mount table.
            host_mounts = Path("/proc/self/mountinfo").read_text()
            assert str(runtime.disks.mount_point) not in host_mounts and str(data_dir) not in host_mounts
            assert len(attached_loops(data_dir)) == 3
            for handle in handles:
                await runtime.destroy(handle)
            # The sandbox's end unmounts its layer; autoclear detaches the loop device and frees the image.
            deadline = asyncio.get_running_loop().time() + 10
            while attached_loops(data_dir):
                assert asyncio.get_running_loop().time() < deadline, attached_loops(data_dir)
                await asyncio.sleep(0.01)
            assert os.listdir(data_dir / "disks") == []
        finally:
            await runtime.close()

    asyncio.run(scenario())


def test_a_killed_server_leaves_no_layer_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    quiet = {"AGBOX_WARM_POOL": "0", "AGBOX_PREWARM_IMAGES": ""}
    server = start_server(data_dir, extra_env=quiet)
    try:
        agb = AGB(api_key=server.api_key, endpoint=server.endpoint)
        session = agb.create(CreateSessionParams(image_id="agb-code-space-1")).session
        assert session.command.execute("head -c 10000000 /dev/urandom > /home/user/data").exit_code == 0
        agb.close()
        assert len(attached_loops(data_dir)) == 1
    finally:
        server.stop(signal.SIGKILL)
    # Its sandboxes die with it, and with them their layers: nothing to clean up by hand.
    wait_for(lambda: not attached_loops(data_dir), 20, what="the killed server's loop devices to detach")
    assert str(data_dir) not in Path("/proc/self/mountinfo").read_text()
    server = start_server(data_dir, port=server.port, extra_env=quiet)
    try:
        assert os.listdir(data_dir / "disks") == []
        gone = httpx.post(f"{server.endpoint}/mcp", headers={"authorization": f"Bearer {server.api_key}"},
                          json={"sessionId": session.session_id, "name": "shell", "args": '{"command": "true"}'},
                          timeout=30).json()
        assert not gone["success"] and "not found: it has ended (server restarted)" in gone["message"]
        agb = AGB(api_key=server.api_key, endpoint=server.endpoint)
        fresh = agb.create(CreateSessionParams(image_id="agb-code-space-1")).session
        assert fresh.command.execute("ls /home/user").stdout == ""
        fresh.delete()
        agb.close()
    finally:
        server.stop()
    assert not attached_loops(data_dir)
