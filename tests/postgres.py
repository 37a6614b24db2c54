"""A throwaway PostgreSQL cluster for tests: Debian's server binaries, initdb into a temp dir owned by
the ``postgres`` user, one server on a free loopback port; stopped and removed at the end."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries are missing: run `make install` (Debian package postgresql)")
    return found[-1]


class PostgresCluster:
    def __init__(self) -> None:
        self.user = pwd.getpwnam("postgres")
        self.dir = Path(tempfile.mkdtemp(prefix="agbox-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()
        self.password = secrets.token_hex(12)
        os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        self._as_postgres([pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--pwfile", str(pwfile),
                           "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C.UTF-8"])
        pwfile.unlink()
        self.url = f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, argv: list[str]) -> None:
        result = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True,
                                timeout=120, cwd=self.dir)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {result.stdout}\n{result.stderr}\n{self.server_log()}")

    def server_log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-4000:]
        return ""

    def start(self) -> None:
        # Durability off: a test cluster trades crash safety for speed.
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._as_postgres([pg_bin("pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
                           "-o", options])

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_postgres([pg_bin("pg_ctl"), "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data)])

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return self.url.rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def running_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
