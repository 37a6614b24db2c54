"""Disk-backed writable layers: every sandbox's root is a small ext4 filesystem of its own.

Why this shape (measured on the development host, see docs/benchmarks.md "disk"):
- The size limit is the filesystem's size: a write past it fails with ENOSPC inside the sandbox,
  and the layer's page cache is ordinary reclaimable cache, so the memory limit means memory (a
  tmpfs root charged every written byte to the memory cgroup and got the session OOM-killed).
- The image is an unnamed file (``O_TMPFILE``) in ``<data dir>/disks``, copied from a template made
  once per size with ``mkfs.ext4`` (no journal: the layer does not outlive its sandbox), and attached
  to a loop device with direct I/O (no second page cache of the image) and autoclear.
- It is mounted inside a mount namespace made for the sandbox (an unshare on a dedicated thread,
  propagation private), never in the host's mount table; the sandbox's launcher is started inside
  that namespace and bwrap binds the mount as ``/``. Host mounts stay constant with any number of
  sessions, and the image has no path a sandbox (or anyone) could open.
- Teardown needs no bookkeeping: when the sandbox's last process exits, its namespaces go, the
  filesystem is unmounted, the loop device detaches (autoclear) and the unnamed image's blocks are
  freed. The same happens after a crash of the server (sandboxes die with it), so nothing is left
  on disk or in the mount table; ``leftover_devices`` lets the runtime check.

Threads: namespace switches are per thread, so the thread that prepares layers and the thread that
spawns sandboxes each run ``private_fs_context`` first (their own cwd/root, which ``setns`` needs).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import glob
import os
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agbox.errors import SandboxError
from agbox.runtime import sysutil

LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
BLOCK_SIZE = 4096
# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
_LOOP_INFO64 = "=5Q4I64s64s32s2Q"
MKFS_OPTIONS = ["-q", "-F", "-b", str(BLOCK_SIZE), "-O", "^has_journal", "-m", "0",
                "-E", "lazy_itable_init=1,nodiscard", "-L", "agbox-layer"]
# noinit_itable: a fresh filesystem's inode tables are never zeroed in the background (that would
# write tens of MB per session on the host disk for nothing).
MOUNT_OPTIONS = "noinit_itable"
MOUNT_FLAGS = sysutil.MS_NOSUID | sysutil.MS_NODEV | sysutil.MS_NOATIME
MIN_BYTES = 16 * 1024 * 1024
EXT4_SUPER_MAGIC = 0xEF53
EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


def private_fs_context() -> None:
    """Thread initializer: give this thread its own cwd/root, so it may switch mount namespaces."""
    sysutil.unshare(sysutil.CLONE_FS)


@dataclass
class Layer:
    """A mounted layer waiting for its sandbox: the mount namespace that holds it (an fd) and its device."""

    namespace_fd: int
    device: str

    def release(self) -> None:
        """Drop our hold on the namespace; the sandbox's processes keep it (and the mount) alive."""
        if self.namespace_fd >= 0:
            os.close(self.namespace_fd)
            self.namespace_fd = -1


class DiskLayers:
    def __init__(self, images_dir: Path, mount_point: Path) -> None:
        self.images_dir = images_dir.absolute()
        self.mount_point = mount_point.absolute()
        self._templates: dict[int, int] = {}  # size -> fd of an unnamed, formatted template image
        self._lock = threading.Lock()
        self._host_ns = -1
        self._mkfs = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="agbox-disk", initializer=private_fs_context)

    def start(self) -> None:
        if not os.path.exists(LOOP_CONTROL) and shutil.which("modprobe"):
            subprocess.run(["modprobe", "loop"], capture_output=True, check=False)
        if not os.path.exists(LOOP_CONTROL):
            raise SandboxError(f"sandbox disks need loop devices and {LOOP_CONTROL} is missing: "
                               "run `modprobe loop` (or give the container access to loop devices)")
        if not os.path.exists(self._mkfs):
            raise SandboxError("mkfs.ext4 (e2fsprogs) is not installed: run `apt-get install e2fsprogs`")
        self.images_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.images_dir, 0o700)
        for entry in os.scandir(self.images_dir):  # images are unnamed; anything here is stray
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        try:
            os.close(os.open(self.images_dir, os.O_TMPFILE | os.O_RDWR, 0o600))
        except OSError as exc:
            raise SandboxError(f"the data dir's filesystem cannot hold sandbox disks (unnamed files, "
                               f"O_TMPFILE, in {self.images_dir}): {exc.strerror}") from exc
        self.mount_point.mkdir(parents=True, exist_ok=True)
        os.chmod(self.mount_point, 0o755)
        if self._host_ns < 0:
            self._host_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            for fd in self._templates.values():
                os.close(fd)
            self._templates.clear()
        if self._host_ns >= 0:
            os.close(self._host_ns)
            self._host_ns = -1

    # ---- making a layer ----------------------------------------------------------------------------

    async def make(self, size_bytes: int, owner_uid: int) -> Layer:
        """``prepare`` on the disk thread; a layer finished after its caller gave up is released."""
        future = self._executor.submit(self.prepare, size_bytes, owner_uid)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.add_done_callback(_release_unclaimed)
            raise

    def prepare(self, size_bytes: int, owner_uid: int) -> Layer:
        """A fresh filesystem of ``size_bytes`` whose root belongs to ``owner_uid``, mounted at
        ``mount_point`` in a new mount namespace. Runs on a thread set up by ``private_fs_context``."""
        if size_bytes < MIN_BYTES:
            raise SandboxError(f"disk limit of {size_bytes} bytes is too small (at least {MIN_BYTES >> 20} MiB)")
        image = os.open(self.images_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            _copy_extents(self._template(size_bytes), image, size_bytes)
            loop_fd, device = _attach_loop(image)
        finally:
            os.close(image)  # the loop device holds the file now
        try:
            return self._mount_in_new_namespace(device, owner_uid)
        finally:
            os.close(loop_fd)  # from here on the mount holds the device; autoclear frees it after

    def _template(self, size_bytes: int) -> int:
        with self._lock:
            fd = self._templates.get(size_bytes)
            if fd is not None:
                return fd
            fd = os.open(self.images_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, size_bytes)
                made = subprocess.run([self._mkfs, *MKFS_OPTIONS, f"/proc/self/fd/{fd}"], pass_fds=(fd,),
                                      stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
                if made.returncode != 0:
                    raise SandboxError(f"mkfs.ext4 failed: {(made.stderr or made.stdout).strip()[-300:]}")
            except BaseException:
                os.close(fd)
                raise
            self._templates[size_bytes] = fd
            return fd

    def _mount_in_new_namespace(self, device: str, owner_uid: int) -> Layer:
        sysutil.unshare(sysutil.CLONE_NEWNS)
        try:
            # Private first: nothing mounted here may propagate back to the host.
            sysutil.mount(None, "/", None, sysutil.MS_REC | sysutil.MS_PRIVATE)
            target = str(self.mount_point)
            sysutil.mount(device, target, "ext4", MOUNT_FLAGS, MOUNT_OPTIONS)
            os.chown(target, owner_uid, owner_uid)
            os.chmod(target, 0o755)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(os.path.join(target, "lost+found"))
            return Layer(os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC), device)
        finally:
            # Back to the host's namespace; if we failed above, the new one (and its mount) is gone now.
            sysutil.setns(self._host_ns, sysutil.CLONE_NEWNS)

    # ---- using a layer -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def entered(self, layer: Layer) -> Iterator[None]:
        """Run the body (a fork/exec of the sandbox launcher) inside the layer's mount namespace."""
        sysutil.setns(layer.namespace_fd, sysutil.CLONE_NEWNS)
        try:
            yield
        finally:
            sysutil.setns(self._host_ns, sysutil.CLONE_NEWNS)

    @staticmethod
    def discard(device: str, pid: int) -> bool:
        """Shut the layer's filesystem down before its sandbox is killed, so that its end writes nothing:
        without this the unmount would first flush every dirty page (a session's last gigabyte) into an
        image that is about to be freed, and the sandbox's processes would take that long to die.
        ``pid`` is a process of the sandbox; its root must be the layer on ``device`` (checked)."""
        try:
            root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return False  # already gone
        try:
            if os.fstat(root).st_dev != os.stat(device).st_rdev:
                return False
            fcntl.ioctl(root, EXT4_IOC_SHUTDOWN, struct.pack("=I", EXT4_GOING_FLAGS_NOLOGFLUSH))
            return True
        except OSError:
            return False
        finally:
            os.close(root)

    def leftover_devices(self) -> list[str]:
        """Loop devices still attached to an image of this data dir (there should be none once the
        sandboxes using them are gone)."""
        found = []
        for path in glob.glob("/sys/block/loop*/loop/backing_file"):
            with contextlib.suppress(OSError):
                if Path(path).read_text().startswith(f"{self.images_dir}/"):
                    found.append("/dev/" + path.split("/")[3])
        return found


def _release_unclaimed(future: concurrent.futures.Future[Layer]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().release()


def _copy_extents(source: int, target: int, size: int) -> None:
    """Copy a sparse file: only its data extents are read and written (a fresh ext4 is ~1 MB of them)."""
    os.ftruncate(target, size)
    offset = 0
    while offset < size:
        try:
            start = os.lseek(source, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset
                return
            raise
        end = os.lseek(source, start, os.SEEK_HOLE)
        position = start
        while position < end:
            copied = os.copy_file_range(source, target, end - position, position, position)
            if copied <= 0:
                raise OSError(errno.EIO, "copy_file_range copied nothing")
            position += copied
        offset = end


def _attach_loop(image: int) -> tuple[int, str]:
    """Attach ``image`` to a free loop device (direct I/O, autoclear); returns (open device fd, path)."""
    for _ in range(20):  # another process may take the free device between our two calls
        control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        try:
            number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
        finally:
            os.close(control)
        device = f"/dev/loop{number}"
        loop_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        try:
            for flags in (LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO, LO_FLAGS_AUTOCLEAR):
                info = struct.pack(_LOOP_INFO64, 0, 0, 0, 0, 0, 0, 0, 0, flags, b"agbox", b"", b"", 0, 0)
                config = struct.pack("=II", image, BLOCK_SIZE) + info + bytes(64)
                try:
                    fcntl.ioctl(loop_fd, LOOP_CONFIGURE, config)
                    return loop_fd, device
                except OSError as exc:
                    if exc.errno != errno.EINVAL:  # EINVAL: no direct I/O on this filesystem; retry without
                        raise
            raise SandboxError(f"{device} refused the sandbox disk image")
        except OSError as exc:
            os.close(loop_fd)
            if exc.errno == errno.EBUSY:
                continue
            raise SandboxError(f"could not attach the sandbox disk to {device}: {exc.strerror}") from exc
        except BaseException:
            os.close(loop_fd)
            raise
    raise SandboxError("no free loop device for the sandbox disk")
