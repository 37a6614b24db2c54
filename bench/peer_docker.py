"""A private Docker daemon and an offline Python image for the peer benchmarks (``bench_peer.py``).

The daemon is Debian's ``dockerd`` (package ``docker.io``, installed by ``scripts/install-bench.sh``), started
with everything under one temp dir: data root, exec root (its containerd's state too), pidfile, Unix socket and
an empty config file, so it never reads or writes the system's Docker state. Containers get no network:
``--bridge=none`` and every container ``--network none``; ``--iptables=false --ip6tables=false
--ip-forward=false --ip-masq=false`` keep it off the host's firewall and sysctls, and a proxy on a closed
loopback port makes any registry request fail on this machine instead of leaving it. At the end (also on an
error or Ctrl-C) the daemon is stopped, anything it left (containerd, shims, mounts, cgroups) is removed, and
so is its dir.

The image ``agbox-peer-python:bookworm`` is a ``debootstrap --variant=minbase`` Debian 12 with ``python3``,
imported with ``docker import``; the root filesystem is kept as a tarball in ``~/.cache/agbox-bench``
(``AGBOX_BENCH_CACHE``) so later runs only import it. Where no Debian mirror answers, the image is made from the
host's own installed packages instead (``python3``'s dependency closure, from ``dpkg -L``), which is said in
the rows' notes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import benchlib as B

IMAGE = "agbox-peer-python:bookworm"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
CACHE = Path(os.environ.get("AGBOX_BENCH_CACHE", Path.home() / ".cache" / "agbox-bench"))
TARBALL = CACHE / f"peer-python-{SUITE}.tar"
HOST_TARBALL = CACHE / "peer-python-host.tar"
# The docker.io CLI matches the daemon's version; a newer CLI elsewhere on PATH would also work (it negotiates).
CLI = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")
DOCKERD = "/usr/sbin/dockerd" if os.path.exists("/usr/sbin/dockerd") else shutil.which("dockerd")
CLOSED_PROXY = "http://127.0.0.1:9"  # the discard port, never listened on here: registry requests fail locally
KEY_FILE = Path("/etc/docker/key.json")  # dockerd 20.10 writes its identity key here whatever its flags


class NotAvailable(RuntimeError):
    """Docker cannot be had on this machine; the message says precisely why."""


@dataclasses.dataclass
class Daemon:
    root: Path
    process: subprocess.Popen[bytes]
    driver: str
    version: str
    cgroup_top: str     # cgroup (every v1 controller) of all the daemon's work: daemon/ and containers/ below it
    tried: list[str]
    placement: str

    @property
    def cgroup_parent(self) -> str:
        """Where dockerd puts its containers' cgroups (its --cgroup-parent)."""
        return f"{self.cgroup_top}/containers"

    def cpu_s(self) -> float | None:
        """CPU seconds of dockerd, containerd, the shims and runc (the daemon/ cgroup) and of every container
        (containers/), from cpuacct, which charges a parent for its children even after they are removed."""
        usage = Path("/sys/fs/cgroup/cpuacct", self.cgroup_top.lstrip("/"), "cpuacct.usage")
        with contextlib.suppress(OSError, ValueError):
            return int(usage.read_text()) / 1e9
        return None

    @property
    def host(self) -> str:
        return f"unix://{self.root}/docker.sock"

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([CLI, "--host", self.host, *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env())
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
        return done

    def log_tail(self, size: int = 400) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "dockerd.log").read_text(errors="replace")[-size:].strip()
        return ""


def _drivers() -> list[str]:
    """Storage drivers to try, best first: overlay2 needs the kernel's overlay filesystem."""
    with contextlib.suppress(OSError):
        filesystems = Path("/proc/filesystems").read_text()
    out = ["overlay2"] if "overlay" in filesystems.split() else []
    if shutil.which("fuse-overlayfs") and os.path.exists("/dev/fuse"):
        out.append("fuse-overlayfs")
    return [*out, "vfs"]


def _data_on_tmpfs(data: Path) -> str:
    """Mount a tmpfs for the data root (unless AGBOX_BENCH_DOCKER_ON_DISK=1); returns where the data root is.

    This disk deletes at about 2 ms a file (18 s for the image's 8,000 files; its I/O, not CPU), which made the
    removal of the data root and the image import a third of the family's time. A tmpfs is also Docker's best
    case for container starts, and agbox's sandbox roots are tmpfs too."""
    data.mkdir(exist_ok=True)
    if os.environ.get("AGBOX_BENCH_DOCKER_ON_DISK") == "1":
        return "data root on disk (AGBOX_BENCH_DOCKER_ON_DISK=1)"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g,mode=0711", "agbox-bench-docker", str(data)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"data root on disk (tmpfs mount failed: {done.stderr.strip()[-120:]})"
    return "data root on a tmpfs"


def _start(root: Path, driver: str, cgroup_top: str) -> subprocess.Popen[bytes]:
    assert DOCKERD is not None
    (root / "daemon.json").write_text("{}")
    env = {**os.environ, "HTTP_PROXY": CLOSED_PROXY, "HTTPS_PROXY": CLOSED_PROXY, "NO_PROXY": ""}
    env.pop("DOCKER_HOST", None)
    # dockerd joins a cpuacct cgroup of its own before it execs, so containerd, shims and runc start in it too.
    join: list[str] = []
    accounting = Path("/sys/fs/cgroup/cpuacct")
    if accounting.is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        daemon_group = accounting / cgroup_top.lstrip("/") / "daemon"
        daemon_group.mkdir(parents=True, exist_ok=True)
        join = ["sh", "-c", f'echo $$ > {daemon_group}/cgroup.procs && exec "$@"', "dockerd"]
    with open(root / "dockerd.log", "ab") as log:
        return subprocess.Popen(
            [*join, DOCKERD, "--config-file", str(root / "daemon.json"), "--data-root", str(root / "data"),
             "--exec-root", str(root / "exec"), "--pidfile", str(root / "docker.pid"),
             "--host", f"unix://{root}/docker.sock", "--storage-driver", driver,
             "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
             "--userland-proxy=false", "--exec-opt", "native.cgroupdriver=cgroupfs",
             "--cgroup-parent", f"{cgroup_top}/containers"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _processes_under(root: Path) -> list[int]:
    """Processes whose command line names ``root`` (the daemon's containerd and shims), found in /proc."""
    needle = str(root).encode()
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in Path(entry.path, "cmdline").read_bytes():
                    out.append(int(entry.name))
    return out


def _stop(process: subprocess.Popen[bytes], root: Path, cgroup_top: str) -> None:
    started = time.monotonic()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # dockerd stops its containers and its containerd, then exits
        try:
            process.wait(45)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    deadline = time.monotonic() + 10
    while (left := _processes_under(root)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    stopped = time.monotonic()
    B.unmount_below(root)
    shutil.rmtree(root, ignore_errors=True)
    B.say(f"dockerd stopped in {stopped - started:.1f} s, its dir removed in {time.monotonic() - stopped:.1f} s")
    _remove_cgroups(cgroup_top)


def _remove_cgroups(cgroup_top: str, timeout_s: float = 10) -> None:
    """rmdir the daemon's cgroup tree (any container cgroup left in it too) in every controller, deepest first;
    a cgroup whose last process is still exiting cannot be removed yet, so this retries for a bounded time."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = []
        for controller in Path("/sys/fs/cgroup").iterdir():
            top = controller / cgroup_top.lstrip("/")
            if not top.is_dir():
                continue
            for dirpath, _, _ in os.walk(top, topdown=False):
                try:
                    os.rmdir(dirpath)
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(dirpath)
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def _answers(root: Path) -> str | None:
    """The server's version and storage driver once the daemon answers on its socket."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = subprocess.run([CLI, "--host", f"unix://{root}/docker.sock", "info", "--format",
                               "{{.ServerVersion}} {{.Driver}}"], capture_output=True, text=True, timeout=10)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    return None


@contextlib.contextmanager
def daemon() -> Iterator[Daemon]:
    """A private dockerd, on the first storage driver that works here; raises NotAvailable with the reasons."""
    if os.geteuid() != 0:
        raise NotAvailable("not available: dockerd needs root")
    if DOCKERD is None:
        raise NotAvailable("not available: no dockerd binary (scripts/install-bench.sh installs Debian's docker.io)")
    if not os.path.exists(CLI) and shutil.which(CLI) is None:
        raise NotAvailable("not available: no docker CLI")
    key_existed = KEY_FILE.exists()
    etc_existed = KEY_FILE.parent.exists()
    tried: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="agbox-bench-docker-"))
    cgroup_top = f"/agbox-bench-docker-{os.getpid()}"
    try:
        for driver in _drivers():
            placement = _data_on_tmpfs(root / "data")
            process = _start(root, driver, cgroup_top)
            answer = None
            deadline = time.monotonic() + 40
            try:
                while process.poll() is None and time.monotonic() < deadline:
                    answer = _answers(root)
                    if answer:
                        break
                    time.sleep(0.2)
                if answer and answer.split()[-1] == driver:
                    B.say(f"private dockerd {answer.split()[0]} on storage driver {driver}, {placement}, in {root}")
                    yield Daemon(root, process, driver, answer.split()[0], cgroup_top, tried, placement)
                    return
                log = (root / "dockerd.log").read_text(errors="replace")
                reason = next((line for line in reversed(log.splitlines()) if "level=error" in line
                               or "failed to start daemon" in line), log.strip()[-200:] or "no output")
                tried.append(f"{driver}: {answer or reason[-200:]}")
            finally:
                _stop(process, root, cgroup_top)
                root.mkdir(exist_ok=True)
        raise NotAvailable("not available: dockerd could not start here with any storage driver ("
                           + "; ".join(tried) + ")")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if not key_existed:
            KEY_FILE.unlink(missing_ok=True)
        if not etc_existed:
            with contextlib.suppress(OSError):
                KEY_FILE.parent.rmdir()


# ---- the image ---------------------------------------------------------------------------------


def _debootstrap_tarball() -> str:
    """Build the root filesystem with debootstrap into the cache; returns how (for the notes)."""
    if shutil.which("debootstrap") is None:
        raise RuntimeError("no debootstrap binary (scripts/install-bench.sh installs it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=CACHE) as build:
        rootfs = Path(build) / "root"
        B.say(f"debootstrap --variant=minbase {SUITE} with python3 (once; cached in {CACHE})")
        started = time.monotonic()
        # python-is-python3 gives `python`, which llm-sandbox runs its code with.
        done = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python-is-python3", SUITE,
                               str(rootfs), MIRROR], capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({done.returncode}): {(done.stdout + done.stderr).strip()[-300:]}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        partial = TARBALL.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.rename(TARBALL)
        return f"debootstrap {SUITE} minbase + python3, built in {time.monotonic() - started:.0f} s"


def _host_packages_tarball() -> str:
    """The fallback without a mirror: python3's dependency closure as installed on this (Debian) host."""
    listed = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                             "--no-breaks", "--no-replaces", "--no-enhances", "--installed", "python3",
                             "python-is-python3", "dash", "coreutils"], capture_output=True, text=True, check=True)
    packages = sorted({line.strip() for line in listed.stdout.splitlines()
                       if line.strip() and not line.startswith(" ") and not line.startswith("<")})
    files = subprocess.run(["dpkg", "-L", *packages], capture_output=True, text=True).stdout.splitlines()
    paths: set[str] = set()
    for name in files:
        if name.startswith("/") and os.path.lexists(name):
            # dpkg names files under /bin, /lib, ...; on a merged-/usr host they live under /usr.
            paths.add(os.path.join(os.path.realpath(os.path.dirname(name)), os.path.basename(name)))
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = HOST_TARBALL.with_suffix(".partial")
    with tarfile.open(partial, "w") as tar:
        for link in ("bin", "sbin", "lib", "lib64"):
            if os.path.islink(f"/{link}"):
                tar.add(f"/{link}", arcname=link, recursive=False)
                paths.discard(f"/{link}")
        for empty in ("tmp", "root", "proc", "sys", "dev", "etc"):
            if f"/{empty}" in paths:
                continue
            info = tarfile.TarInfo(empty)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if empty == "tmp" else 0o755
            tar.addfile(info)
        for name in sorted(paths):
            tar.add(name, arcname=name.lstrip("/"), recursive=False)
        if "/usr/bin/python" not in paths:  # llm-sandbox runs `python FILE`
            info = tarfile.TarInfo("usr/bin/python")
            info.type, info.linkname = tarfile.SYMTYPE, "python3"
            tar.addfile(info)
    partial.rename(HOST_TARBALL)
    return f"host packages ({len(packages)} of python3's closure, from dpkg -L)"


def image(d: Daemon) -> str:
    """Import the cached root filesystem as IMAGE (building it first when not cached); returns how it was made."""
    how = f"debootstrap {SUITE} minbase + python3 (cached {TARBALL})"
    tarball = TARBALL
    if os.environ.get("AGBOX_BENCH_PEER_BUILD") == "host":
        tarball, how = HOST_TARBALL, "host packages (AGBOX_BENCH_PEER_BUILD=host)"
        if not tarball.exists():
            how = _host_packages_tarball()
    elif not tarball.exists():
        try:
            how = _debootstrap_tarball()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            B.say(f"debootstrap did not work ({exc}); building from the host's packages instead")
            tarball = HOST_TARBALL
            how = (f"{_host_packages_tarball() if not tarball.exists() else 'host packages (cached)'}, because "
                   f"debootstrap failed: {str(exc)[:200]}")
    started = time.monotonic()
    d.cli("import", "--change", 'CMD ["/bin/sh"]', "--change",
          "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", str(tarball), IMAGE, timeout=300)
    B.say(f"imported {IMAGE} in {time.monotonic() - started:.1f} s ({how})")
    return how


def container_pids(d: Daemon, container_id: str) -> list[int]:
    """The container's processes (from its memory cgroup) and its containerd shim, found from the kernel."""
    procs = Path("/sys/fs/cgroup/memory", d.cgroup_parent.lstrip("/"), container_id, "cgroup.procs")
    pids = [int(p) for p in procs.read_text().split()] if procs.exists() else []
    needle = f"-id\0{container_id}".encode()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in Path(entry.path, "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def daemon_pss_mib(d: Daemon) -> float:
    """PSS of the daemon itself and its containerd (not the per-container shims)."""
    pids = {d.process.pid}
    for pid in _processes_under(d.root):
        with contextlib.suppress(OSError):
            if b"containerd-shim" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.add(pid)
    return sum(B.pss_kib(pid) for pid in pids) / 1024


def describe(d: Daemon, how: str) -> str:
    return (f"private dockerd {d.version} (Debian docker.io), storage driver {d.driver}, {d.placement}"
            + (f" (tried first: {'; '.join(d.tried)})" if d.tried else "")
            + f", containers --network none; image {IMAGE}: {how}")

